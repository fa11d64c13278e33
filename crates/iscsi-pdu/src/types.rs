//! Wire vocabulary: newtypes over the raw integers of RFC 7143. Unknown values survive as the
//! integer they arrived as and print in hex.

use std::fmt;

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident($t:ty) { $($(#[$cm:meta])* $c:ident = $v:expr => $s:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub $t);
        impl $name {
            $($(#[$cm])* pub const $c: $name = $name($v);)*
            /// The RFC name of this value, if it is one we know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($v => Some($s),)*
                    _ => None,
                }
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(s) => write!(f, "{}", s),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

wire_enum! {
    /// The 6-bit opcode of byte 0 (RFC 7143 §11.1.1.2).
    Opcode(u8) {
        NOP_OUT = 0x00 => "NOP-Out",
        SCSI_COMMAND = 0x01 => "SCSI Command",
        TASK_MGMT_REQUEST = 0x02 => "Task Management Function Request",
        LOGIN_REQUEST = 0x03 => "Login Request",
        TEXT_REQUEST = 0x04 => "Text Request",
        DATA_OUT = 0x05 => "SCSI Data-Out",
        LOGOUT_REQUEST = 0x06 => "Logout Request",
        SNACK_REQUEST = 0x10 => "SNACK Request",
        NOP_IN = 0x20 => "NOP-In",
        SCSI_RESPONSE = 0x21 => "SCSI Response",
        TASK_MGMT_RESPONSE = 0x22 => "Task Management Function Response",
        LOGIN_RESPONSE = 0x23 => "Login Response",
        TEXT_RESPONSE = 0x24 => "Text Response",
        DATA_IN = 0x25 => "SCSI Data-In",
        LOGOUT_RESPONSE = 0x26 => "Logout Response",
        R2T = 0x31 => "Ready To Transfer (R2T)",
        ASYNC_MESSAGE = 0x32 => "Asynchronous Message",
        REJECT = 0x3f => "Reject",
    }
}

impl Opcode {
    /// Opcodes 0x00-0x1f are sent by initiators, 0x20-0x3f by targets.
    pub fn is_initiator(self) -> bool {
        self.0 < 0x20
    }
}

wire_enum! {
    /// SCSI task attribute, byte 1 bits 0-2 of a SCSI Command (RFC 7143 §11.3.1).
    TaskAttr(u8) {
        UNTAGGED = 0 => "Untagged",
        SIMPLE = 1 => "Simple",
        ORDERED = 2 => "Ordered",
        HEAD_OF_QUEUE = 3 => "Head of Queue",
        ACA = 4 => "ACA",
    }
}

wire_enum! {
    /// Task management function (RFC 7143 §11.5.1).
    TmfFunction(u8) {
        ABORT_TASK = 1 => "ABORT TASK",
        ABORT_TASK_SET = 2 => "ABORT TASK SET",
        CLEAR_ACA = 3 => "CLEAR ACA",
        CLEAR_TASK_SET = 4 => "CLEAR TASK SET",
        LOGICAL_UNIT_RESET = 5 => "LOGICAL UNIT RESET",
        TARGET_WARM_RESET = 6 => "TARGET WARM RESET",
        TARGET_COLD_RESET = 7 => "TARGET COLD RESET",
        TASK_REASSIGN = 8 => "TASK REASSIGN",
    }
}

wire_enum! {
    /// Task management response (RFC 7143 §11.6.1).
    TmfResponse(u8) {
        COMPLETE = 0 => "Function complete",
        NO_TASK = 1 => "Task does not exist",
        NO_LUN = 2 => "LUN does not exist",
        STILL_ALLEGIANT = 3 => "Task still allegiant",
        REASSIGN_UNSUPPORTED = 4 => "Task allegiance reassignment not supported",
        NOT_SUPPORTED = 5 => "Task management function not supported",
        AUTHORIZATION_FAILED = 6 => "Function authorization failed",
        REJECTED = 255 => "Function rejected",
    }
}

wire_enum! {
    /// Logout reason code (RFC 7143 §11.14.1).
    LogoutReason(u8) {
        CLOSE_SESSION = 0 => "close the session",
        CLOSE_CONNECTION = 1 => "close the connection",
        REMOVE_FOR_RECOVERY = 2 => "remove the connection for recovery",
    }
}

wire_enum! {
    /// Logout response (RFC 7143 §11.15.1).
    LogoutResponseCode(u8) {
        SUCCESS = 0 => "connection or session closed successfully",
        CID_NOT_FOUND = 1 => "CID not found",
        RECOVERY_UNSUPPORTED = 2 => "connection recovery is not supported",
        CLEANUP_FAILED = 3 => "cleanup failed for various reasons",
    }
}

wire_enum! {
    /// Reject reason (RFC 7143 §11.17.1).
    RejectReason(u8) {
        DATA_DIGEST_ERROR = 0x02 => "Data (payload) digest error",
        SNACK_REJECT = 0x03 => "SNACK Reject",
        PROTOCOL_ERROR = 0x04 => "Protocol Error",
        COMMAND_NOT_SUPPORTED = 0x05 => "Command not supported",
        IMMEDIATE_COMMAND_REJECT = 0x06 => "Immediate command reject - too many immediate commands",
        TASK_IN_PROGRESS = 0x07 => "Task in progress",
        INVALID_DATA_ACK = 0x08 => "Invalid data ack",
        INVALID_PDU_FIELD = 0x09 => "Invalid PDU field",
        OUT_OF_RESOURCES = 0x0a => "Long op reject - out of resources",
        NEGOTIATION_RESET = 0x0b => "Deprecated (negotiation reset)",
        WAITING_FOR_LOGOUT = 0x0c => "Waiting for Logout",
    }
}

wire_enum! {
    /// Asynchronous event code (RFC 7143 §11.9.1).
    AsyncEvent(u8) {
        SCSI_EVENT = 0 => "SCSI asynchronous event",
        LOGOUT_REQUEST = 1 => "target requests logout",
        CONNECTION_DROP = 2 => "target will drop the connection",
        SESSION_DROP = 3 => "target will drop all connections of the session",
        NEGOTIATION_REQUEST = 4 => "target requests parameter negotiation",
        TASK_TERMINATION = 5 => "all active tasks for a LU with a matching LUN will be terminated",
        VENDOR = 255 => "vendor-specific event",
    }
}

wire_enum! {
    /// SNACK type (RFC 7143 §11.16.1). At error recovery level 0 every SNACK is rejected.
    SnackType(u8) {
        DATA_R2T = 0 => "Data/R2T SNACK",
        STATUS = 1 => "Status SNACK",
        DATA_ACK = 2 => "DataACK",
        R_DATA = 3 => "R-Data SNACK",
    }
}

wire_enum! {
    /// Login stage (CSG/NSG, RFC 7143 §11.12.3).
    Stage(u8) {
        SECURITY = 0 => "SecurityNegotiation",
        OPERATIONAL = 1 => "LoginOperationalNegotiation",
        FULL_FEATURE = 3 => "FullFeaturePhase",
    }
}

wire_enum! {
    /// iSCSI response code of a SCSI Response (RFC 7143 §11.4.3).
    ScsiResponseCode(u8) {
        COMPLETED = 0x00 => "Command Completed at Target",
        TARGET_FAILURE = 0x01 => "Target Failure",
    }
}

wire_enum! {
    /// AHS type (RFC 7143 §11.2.2).
    AhsType(u8) {
        EXTENDED_CDB = 1 => "Extended CDB",
        BIDI_READ_LENGTH = 2 => "Bidirectional Read Expected Data Transfer Length",
    }
}

/// Login status: class in the high byte, detail in the low byte (RFC 7143 §11.13.5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LoginStatus(pub u16);

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus(0x0000);
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus(0x0101);
    pub const TARGET_MOVED_PERMANENTLY: LoginStatus = LoginStatus(0x0102);
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus(0x0200);
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus(0x0201);
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus(0x0202);
    pub const NOT_FOUND: LoginStatus = LoginStatus(0x0203);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus(0x0204);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus(0x0205);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus(0x0206);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus(0x0207);
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus(0x0208);
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus(0x0209);
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus(0x020a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus(0x020b);
    pub const TARGET_ERROR: LoginStatus = LoginStatus(0x0300);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus(0x0301);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus(0x0302);

    pub fn class(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn detail(self) -> u8 {
        self.0 as u8
    }
    pub fn is_success(self) -> bool {
        self.class() == 0
    }

    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SUCCESS => "Success",
            Self::TARGET_MOVED_TEMPORARILY => "Target moved temporarily",
            Self::TARGET_MOVED_PERMANENTLY => "Target moved permanently",
            Self::INITIATOR_ERROR => "Initiator error",
            Self::AUTHENTICATION_FAILURE => "Authentication failure",
            Self::AUTHORIZATION_FAILURE => "Authorization failure",
            Self::NOT_FOUND => "Not found",
            Self::TARGET_REMOVED => "Target removed",
            Self::UNSUPPORTED_VERSION => "Unsupported version",
            Self::TOO_MANY_CONNECTIONS => "Too many connections",
            Self::MISSING_PARAMETER => "Missing parameter",
            Self::CANT_INCLUDE_IN_SESSION => "Can't include in session",
            Self::SESSION_TYPE_NOT_SUPPORTED => "Session type not supported",
            Self::SESSION_DOES_NOT_EXIST => "Session does not exist",
            Self::INVALID_DURING_LOGIN => "Invalid request during login",
            Self::TARGET_ERROR => "Target error",
            Self::SERVICE_UNAVAILABLE => "Service unavailable",
            Self::OUT_OF_RESOURCES => "Out of resources",
            _ => return None,
        })
    }
}

impl fmt::Debug for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} ({:#06x})", n, self.0),
            None => write!(f, "LoginStatus({:#06x})", self.0),
        }
    }
}

impl fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Initiator Task Tag. `Itt::RESERVED` (0xffffffff) marks PDUs that belong to no task.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Itt(pub u32);

impl Itt {
    pub const RESERVED: Itt = Itt(0xffff_ffff);
}

impl fmt::Debug for Itt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ITT({:#x})", self.0)
    }
}

/// Target Transfer Tag. `Ttt::RESERVED` (0xffffffff) when the target asks for nothing back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Ttt(pub u32);

impl Ttt {
    pub const RESERVED: Ttt = Ttt(0xffff_ffff);
}

impl fmt::Debug for Ttt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TTT({:#x})", self.0)
    }
}

/// The 8-byte SAM LUN field, kept as sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lun(pub [u8; 8]);

impl Lun {
    /// Encode a LU number with SAM single-level addressing: peripheral device addressing for
    /// LUN < 256 (what every initiator expects for small LUNs), flat space addressing above.
    pub fn from_number(n: u16) -> Lun {
        let mut b = [0u8; 8];
        if n < 256 {
            b[1] = n as u8;
        } else {
            b[0] = 0x40 | ((n >> 8) as u8 & 0x3f);
            b[1] = n as u8;
        }
        Lun(b)
    }

    /// The LU number for single-level peripheral or flat addressing; `None` for other
    /// addressing methods or non-zero lower levels.
    pub fn number(self) -> Option<u16> {
        if self.0[2..].iter().any(|b| *b != 0) {
            return None;
        }
        match self.0[0] >> 6 {
            0b00 if self.0[0] & 0x3f == 0 => Some(self.0[1] as u16),
            0b01 => Some((((self.0[0] & 0x3f) as u16) << 8) | self.0[1] as u16),
            _ => None,
        }
    }
}

impl fmt::Debug for Lun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.number() {
            Some(n) => write!(f, "LUN {}", n),
            None => write!(f, "LUN {:02x?}", self.0),
        }
    }
}

/// Initiator Session ID: 6 bytes (type/OUI/qualifier, RFC 7143 §11.12.5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Isid(pub [u8; 6]);

impl fmt::Debug for Isid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ISID(0x")?;
        for b in self.0 {
            write!(f, "{:02x}", b)?;
        }
        write!(f, ")")
    }
}

impl fmt::Display for Isid {
    /// `0x` + 12 hex digits: the form used in SCSI initiator port names (`iqn...,i,0x...`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x")?;
        for b in self.0 {
            write!(f, "{:02x}", b)?;
        }
        Ok(())
    }
}

/// Target Session Identifying Handle. Zero in a Login Request means "new session" (or
/// session reinstatement when the ISID is already in use).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug, PartialOrd, Ord)]
pub struct Tsih(pub u16);

/// Connection ID within a session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug, PartialOrd, Ord)]
pub struct Cid(pub u16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_addressing() {
        assert_eq!(Lun::from_number(1).0, [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::from_number(1).number(), Some(1));
        assert_eq!(Lun::from_number(300).0[0], 0x41);
        assert_eq!(Lun::from_number(300).number(), Some(300));
        assert_eq!(Lun([0x80, 0, 0, 0, 0, 0, 0, 0]).number(), None);
    }

    #[test]
    fn unknown_values_print_in_hex() {
        assert_eq!(format!("{:?}", Opcode(0x1b)), "Opcode(0x1b)");
        assert_eq!(format!("{:?}", Opcode::R2T), "Ready To Transfer (R2T)");
        assert_eq!(
            format!("{:?}", LoginStatus(0x0201)),
            "Authentication failure (0x0201)"
        );
        assert_eq!(
            format!("{}", Isid([0x40, 0, 1, 0x37, 0, 0])),
            "0x400001370000"
        );
    }
}
