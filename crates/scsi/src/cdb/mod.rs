//! Command descriptor blocks, parsed in two steps as vhost-device-scsi does:
//! [`OpCode`] → [`CommandType`] (which command, including its service
//! action) → [`Command`] (its fields, validated).
//!
//! Parsing is total: any byte slice yields a command or a [`CdbError`],
//! and every error maps to the CHECK CONDITION sense SPC requires (with a
//! field pointer where one is cheap to give).
//!
//! The initiator side builds CDBs with the functions in [`build`].

pub mod build;

use std::fmt;

use crate::codec::{cdb16, cdb32, cdb64, cdb8};
use crate::pr::{PrInAction, PrOutAction, PrType};
use crate::sense::{self, FieldPointer, Sense};

pub use build::Cdb;

/// OPERATION CODE, byte 0 of every CDB. Prints in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpCode(pub u8);

impl OpCode {
    pub const TEST_UNIT_READY: OpCode = OpCode(0x00);
    pub const REQUEST_SENSE: OpCode = OpCode(0x03);
    pub const READ_6: OpCode = OpCode(0x08);
    pub const WRITE_6: OpCode = OpCode(0x0a);
    pub const INQUIRY: OpCode = OpCode(0x12);
    pub const MODE_SELECT_6: OpCode = OpCode(0x15);
    pub const RESERVE_6: OpCode = OpCode(0x16);
    pub const RELEASE_6: OpCode = OpCode(0x17);
    pub const MODE_SENSE_6: OpCode = OpCode(0x1a);
    pub const START_STOP_UNIT: OpCode = OpCode(0x1b);
    pub const READ_CAPACITY_10: OpCode = OpCode(0x25);
    pub const READ_10: OpCode = OpCode(0x28);
    pub const WRITE_10: OpCode = OpCode(0x2a);
    pub const WRITE_AND_VERIFY_10: OpCode = OpCode(0x2e);
    pub const VERIFY_10: OpCode = OpCode(0x2f);
    pub const PRE_FETCH_10: OpCode = OpCode(0x34);
    pub const SYNCHRONIZE_CACHE_10: OpCode = OpCode(0x35);
    pub const READ_DEFECT_DATA_10: OpCode = OpCode(0x37);
    pub const WRITE_SAME_10: OpCode = OpCode(0x41);
    pub const UNMAP: OpCode = OpCode(0x42);
    pub const MODE_SELECT_10: OpCode = OpCode(0x55);
    pub const RESERVE_10: OpCode = OpCode(0x56);
    pub const RELEASE_10: OpCode = OpCode(0x57);
    pub const MODE_SENSE_10: OpCode = OpCode(0x5a);
    pub const PERSISTENT_RESERVE_IN: OpCode = OpCode(0x5e);
    pub const PERSISTENT_RESERVE_OUT: OpCode = OpCode(0x5f);
    pub const READ_16: OpCode = OpCode(0x88);
    pub const COMPARE_AND_WRITE: OpCode = OpCode(0x89);
    pub const WRITE_16: OpCode = OpCode(0x8a);
    pub const ORWRITE_16: OpCode = OpCode(0x8b);
    pub const WRITE_AND_VERIFY_16: OpCode = OpCode(0x8e);
    pub const VERIFY_16: OpCode = OpCode(0x8f);
    pub const PRE_FETCH_16: OpCode = OpCode(0x90);
    pub const SYNCHRONIZE_CACHE_16: OpCode = OpCode(0x91);
    pub const WRITE_SAME_16: OpCode = OpCode(0x93);
    pub const SERVICE_ACTION_IN_16: OpCode = OpCode(0x9e);
    pub const REPORT_LUNS: OpCode = OpCode(0xa0);
    pub const MAINTENANCE_IN: OpCode = OpCode(0xa3);
    pub const MAINTENANCE_OUT: OpCode = OpCode(0xa4);
    pub const READ_12: OpCode = OpCode(0xa8);
    pub const WRITE_12: OpCode = OpCode(0xaa);
    pub const WRITE_AND_VERIFY_12: OpCode = OpCode(0xae);
    pub const VERIFY_12: OpCode = OpCode(0xaf);
    pub const READ_DEFECT_DATA_12: OpCode = OpCode(0xb7);

    /// CDB length implied by the opcode's group code (SPC-4 4.2.5.1);
    /// `None` for groups with vendor-specific or variable lengths.
    pub const fn group_cdb_len(self) -> Option<usize> {
        match self.0 >> 5 {
            0 => Some(6),
            1 | 2 => Some(10),
            4 => Some(16),
            5 => Some(12),
            _ => None,
        }
    }
}

impl fmt::Debug for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpCode({:#04x})", self.0)
    }
}

impl fmt::Display for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0)
    }
}

// Service action codes.
pub(crate) const SA_READ_CAPACITY_16: u8 = 0x10;
pub(crate) const SA_GET_LBA_STATUS: u8 = 0x12;
pub(crate) const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
pub(crate) const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
pub(crate) const SA_SET_TARGET_PORT_GROUPS: u8 = 0x0a;

/// A CDB that could not be accepted; [`CdbError::sense`] gives the CHECK
/// CONDITION sense to return.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum CdbError {
    /// 20/00: the opcode is not implemented.
    #[error("invalid command operation code {0}")]
    InvalidOpcode(OpCode),
    /// 24/00 pointing at the SERVICE ACTION field: an unimplemented service
    /// action of an implemented opcode.
    #[error("unsupported service action {sa:#04x} of {opcode}")]
    UnsupportedServiceAction { opcode: OpCode, sa: u8 },
    /// 24/00: a reserved, unsupported or inconsistent field.
    #[error("invalid field in CDB at byte {byte}")]
    InvalidField { byte: u16, bit: Option<u8> },
}

impl CdbError {
    pub fn sense(&self) -> Sense {
        match *self {
            CdbError::InvalidOpcode(_) => {
                Sense::illegal_request(sense::INVALID_COMMAND_OPERATION_CODE)
            }
            // Field pointer 1 is what initiators (libiscsi among them) take
            // as "this service action is not implemented".
            CdbError::UnsupportedServiceAction { .. } => Sense::invalid_field_in_cdb(1, Some(4)),
            CdbError::InvalidField { byte, bit } => Sense::invalid_field_in_cdb(byte, bit),
        }
    }

    pub(crate) const fn field(byte: u16, bit: u8) -> CdbError {
        CdbError::InvalidField {
            byte,
            bit: Some(bit),
        }
    }

    pub(crate) const fn byte(byte: u16) -> CdbError {
        CdbError::InvalidField { byte, bit: None }
    }
}

impl From<CdbError> for Sense {
    fn from(e: CdbError) -> Sense {
        e.sense()
    }
}

/// Every command this crate parses, one variant per opcode or
/// opcode+service action.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CommandType {
    TestUnitReady,
    RequestSense,
    Read6,
    Write6,
    Inquiry,
    ModeSelect6,
    Reserve6,
    Release6,
    ModeSense6,
    StartStopUnit,
    ReadCapacity10,
    Read10,
    Write10,
    WriteAndVerify10,
    Verify10,
    PreFetch10,
    SynchronizeCache10,
    ReadDefectData10,
    WriteSame10,
    Unmap,
    ModeSelect10,
    Reserve10,
    Release10,
    ModeSense10,
    PersistentReserveIn(PrInAction),
    PersistentReserveOut(PrOutAction),
    Read16,
    CompareAndWrite,
    Write16,
    OrWrite16,
    WriteAndVerify16,
    Verify16,
    PreFetch16,
    SynchronizeCache16,
    WriteSame16,
    ReadCapacity16,
    GetLbaStatus,
    ReportLuns,
    ReportTargetPortGroups,
    ReportSupportedOperationCodes,
    SetTargetPortGroups,
    Read12,
    Write12,
    WriteAndVerify12,
    Verify12,
    ReadDefectData12,
}

/// How a command interacts with reservations (SPC-4 table 63, SBC-3
/// table 13): whether a non-holder may run it under each reservation type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AccessClass {
    /// Allowed under every reservation type (INQUIRY, TEST UNIT READY, ...).
    Unrestricted,
    /// Reads the medium or LU state: allowed under Write Exclusive types.
    Read,
    /// Modifies the medium or LU state.
    Write,
}

/// CDB USAGE DATA control byte: we act on no control-byte bits.
const CTL: u8 = 0x00;

impl CommandType {
    /// Every supported command, in REPORT SUPPORTED OPERATION CODES order.
    pub const ALL: &'static [CommandType] = &[
        CommandType::TestUnitReady,
        CommandType::RequestSense,
        CommandType::Read6,
        CommandType::Write6,
        CommandType::Inquiry,
        CommandType::ModeSelect6,
        CommandType::Reserve6,
        CommandType::Release6,
        CommandType::ModeSense6,
        CommandType::StartStopUnit,
        CommandType::ReadCapacity10,
        CommandType::Read10,
        CommandType::Write10,
        CommandType::WriteAndVerify10,
        CommandType::Verify10,
        CommandType::PreFetch10,
        CommandType::SynchronizeCache10,
        CommandType::ReadDefectData10,
        CommandType::WriteSame10,
        CommandType::Unmap,
        CommandType::ModeSelect10,
        CommandType::Reserve10,
        CommandType::Release10,
        CommandType::ModeSense10,
        CommandType::PersistentReserveIn(PrInAction::READ_KEYS),
        CommandType::PersistentReserveIn(PrInAction::READ_RESERVATION),
        CommandType::PersistentReserveIn(PrInAction::REPORT_CAPABILITIES),
        CommandType::PersistentReserveIn(PrInAction::READ_FULL_STATUS),
        CommandType::PersistentReserveOut(PrOutAction::REGISTER),
        CommandType::PersistentReserveOut(PrOutAction::RESERVE),
        CommandType::PersistentReserveOut(PrOutAction::RELEASE),
        CommandType::PersistentReserveOut(PrOutAction::CLEAR),
        CommandType::PersistentReserveOut(PrOutAction::PREEMPT),
        CommandType::PersistentReserveOut(PrOutAction::PREEMPT_AND_ABORT),
        CommandType::PersistentReserveOut(PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY),
        CommandType::PersistentReserveOut(PrOutAction::REGISTER_AND_MOVE),
        CommandType::Read16,
        CommandType::CompareAndWrite,
        CommandType::Write16,
        CommandType::OrWrite16,
        CommandType::WriteAndVerify16,
        CommandType::Verify16,
        CommandType::PreFetch16,
        CommandType::SynchronizeCache16,
        CommandType::WriteSame16,
        CommandType::ReadCapacity16,
        CommandType::GetLbaStatus,
        CommandType::ReportLuns,
        CommandType::ReportTargetPortGroups,
        CommandType::ReportSupportedOperationCodes,
        CommandType::SetTargetPortGroups,
        CommandType::Read12,
        CommandType::Write12,
        CommandType::WriteAndVerify12,
        CommandType::Verify12,
        CommandType::ReadDefectData12,
    ];

    /// Step one of parsing: which command is this? Looks only at the
    /// opcode and, for opcodes with service actions, byte 1.
    pub fn classify(cdb: &[u8]) -> Result<CommandType, CdbError> {
        let op = OpCode(*cdb.first().ok_or(CdbError::InvalidOpcode(OpCode(0)))?);
        let sa = cdb8(cdb, 1) & 0x1f;
        use CommandType as T;
        let t = match op {
            OpCode::TEST_UNIT_READY => T::TestUnitReady,
            OpCode::REQUEST_SENSE => T::RequestSense,
            OpCode::READ_6 => T::Read6,
            OpCode::WRITE_6 => T::Write6,
            OpCode::INQUIRY => T::Inquiry,
            OpCode::MODE_SELECT_6 => T::ModeSelect6,
            OpCode::RESERVE_6 => T::Reserve6,
            OpCode::RELEASE_6 => T::Release6,
            OpCode::MODE_SENSE_6 => T::ModeSense6,
            OpCode::START_STOP_UNIT => T::StartStopUnit,
            OpCode::READ_CAPACITY_10 => T::ReadCapacity10,
            OpCode::READ_10 => T::Read10,
            OpCode::WRITE_10 => T::Write10,
            OpCode::WRITE_AND_VERIFY_10 => T::WriteAndVerify10,
            OpCode::VERIFY_10 => T::Verify10,
            OpCode::PRE_FETCH_10 => T::PreFetch10,
            OpCode::SYNCHRONIZE_CACHE_10 => T::SynchronizeCache10,
            OpCode::READ_DEFECT_DATA_10 => T::ReadDefectData10,
            OpCode::WRITE_SAME_10 => T::WriteSame10,
            OpCode::UNMAP => T::Unmap,
            OpCode::MODE_SELECT_10 => T::ModeSelect10,
            OpCode::RESERVE_10 => T::Reserve10,
            OpCode::RELEASE_10 => T::Release10,
            OpCode::MODE_SENSE_10 => T::ModeSense10,
            OpCode::PERSISTENT_RESERVE_IN => {
                let a = PrInAction(sa);
                if !a.is_known() {
                    return Err(CdbError::UnsupportedServiceAction { opcode: op, sa });
                }
                T::PersistentReserveIn(a)
            }
            OpCode::PERSISTENT_RESERVE_OUT => {
                let a = PrOutAction(sa);
                if !a.is_known() {
                    return Err(CdbError::UnsupportedServiceAction { opcode: op, sa });
                }
                T::PersistentReserveOut(a)
            }
            OpCode::READ_16 => T::Read16,
            OpCode::COMPARE_AND_WRITE => T::CompareAndWrite,
            OpCode::WRITE_16 => T::Write16,
            OpCode::ORWRITE_16 => T::OrWrite16,
            OpCode::WRITE_AND_VERIFY_16 => T::WriteAndVerify16,
            OpCode::VERIFY_16 => T::Verify16,
            OpCode::PRE_FETCH_16 => T::PreFetch16,
            OpCode::SYNCHRONIZE_CACHE_16 => T::SynchronizeCache16,
            OpCode::WRITE_SAME_16 => T::WriteSame16,
            OpCode::SERVICE_ACTION_IN_16 => match sa {
                SA_READ_CAPACITY_16 => T::ReadCapacity16,
                SA_GET_LBA_STATUS => T::GetLbaStatus,
                _ => return Err(CdbError::UnsupportedServiceAction { opcode: op, sa }),
            },
            OpCode::REPORT_LUNS => T::ReportLuns,
            OpCode::MAINTENANCE_IN => match sa {
                SA_REPORT_TARGET_PORT_GROUPS => T::ReportTargetPortGroups,
                SA_REPORT_SUPPORTED_OPCODES => T::ReportSupportedOperationCodes,
                _ => return Err(CdbError::UnsupportedServiceAction { opcode: op, sa }),
            },
            OpCode::MAINTENANCE_OUT => match sa {
                SA_SET_TARGET_PORT_GROUPS => T::SetTargetPortGroups,
                _ => return Err(CdbError::UnsupportedServiceAction { opcode: op, sa }),
            },
            OpCode::READ_12 => T::Read12,
            OpCode::WRITE_12 => T::Write12,
            OpCode::WRITE_AND_VERIFY_12 => T::WriteAndVerify12,
            OpCode::VERIFY_12 => T::Verify12,
            OpCode::READ_DEFECT_DATA_12 => T::ReadDefectData12,
            _ => return Err(CdbError::InvalidOpcode(op)),
        };
        Ok(t)
    }

    /// CDB USAGE DATA (SPC-4 6.35.3): byte 0 is the opcode, the service
    /// action sits where the CDB has it, every other byte is the mask of
    /// bits the device server honours. Its length is the CDB length.
    pub fn usage_data(self) -> &'static [u8] {
        use CommandType as T;
        const FF: u8 = 0xff;
        match self {
            T::TestUnitReady => &[0x00, 0, 0, 0, 0, CTL],
            T::RequestSense => &[0x03, 0x01, 0, 0, FF, CTL],
            T::Read6 => &[0x08, 0x1f, FF, FF, FF, CTL],
            T::Write6 => &[0x0a, 0x1f, FF, FF, FF, CTL],
            T::Inquiry => &[0x12, 0x01, FF, FF, FF, CTL],
            T::ModeSelect6 => &[0x15, 0x11, 0, 0, FF, CTL],
            T::Reserve6 => &[0x16, 0, 0, 0, 0, CTL],
            T::Release6 => &[0x17, 0, 0, 0, 0, CTL],
            T::ModeSense6 => &[0x1a, 0x08, FF, FF, FF, CTL],
            T::StartStopUnit => &[0x1b, 0x01, 0, 0x0f, 0xf7, CTL],
            T::ReadCapacity10 => &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, CTL],
            T::Read10 => &[0x28, 0x18, FF, FF, FF, FF, 0, FF, FF, CTL],
            T::Write10 => &[0x2a, 0x18, FF, FF, FF, FF, 0, FF, FF, CTL],
            T::WriteAndVerify10 => &[0x2e, 0x12, FF, FF, FF, FF, 0, FF, FF, CTL],
            T::Verify10 => &[0x2f, 0x16, FF, FF, FF, FF, 0, FF, FF, CTL],
            T::PreFetch10 => &[0x34, 0x02, FF, FF, FF, FF, 0, FF, FF, CTL],
            T::SynchronizeCache10 => &[0x35, 0x02, FF, FF, FF, FF, 0, FF, FF, CTL],
            T::ReadDefectData10 => &[0x37, 0, 0x1f, 0, 0, 0, 0, FF, FF, CTL],
            T::WriteSame10 => &[0x41, 0x18, FF, FF, FF, FF, 0, FF, FF, CTL],
            T::Unmap => &[0x42, 0x01, 0, 0, 0, 0, 0, FF, FF, CTL],
            T::ModeSelect10 => &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, CTL],
            T::Reserve10 => &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, CTL],
            T::Release10 => &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, CTL],
            T::ModeSense10 => &[0x5a, 0x18, FF, FF, 0, 0, 0, FF, FF, CTL],
            T::PersistentReserveIn(a) => match a.0 {
                0 => &[0x5e, 0x00, 0, 0, 0, 0, 0, FF, FF, CTL],
                1 => &[0x5e, 0x01, 0, 0, 0, 0, 0, FF, FF, CTL],
                2 => &[0x5e, 0x02, 0, 0, 0, 0, 0, FF, FF, CTL],
                _ => &[0x5e, 0x03, 0, 0, 0, 0, 0, FF, FF, CTL],
            },
            T::PersistentReserveOut(a) => match a.0 {
                0 => &[0x5f, 0x00, FF, 0, 0, FF, FF, FF, FF, CTL],
                1 => &[0x5f, 0x01, FF, 0, 0, FF, FF, FF, FF, CTL],
                2 => &[0x5f, 0x02, FF, 0, 0, FF, FF, FF, FF, CTL],
                3 => &[0x5f, 0x03, FF, 0, 0, FF, FF, FF, FF, CTL],
                4 => &[0x5f, 0x04, FF, 0, 0, FF, FF, FF, FF, CTL],
                5 => &[0x5f, 0x05, FF, 0, 0, FF, FF, FF, FF, CTL],
                6 => &[0x5f, 0x06, FF, 0, 0, FF, FF, FF, FF, CTL],
                _ => &[0x5f, 0x07, FF, 0, 0, FF, FF, FF, FF, CTL],
            },
            T::Read16 => &[
                0x88, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::CompareAndWrite => &[
                0x89, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0, CTL,
            ],
            T::Write16 => &[
                0x8a, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::OrWrite16 => &[
                0x8b, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::WriteAndVerify16 => &[
                0x8e, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::Verify16 => &[
                0x8f, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::PreFetch16 => &[
                0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::SynchronizeCache16 => &[
                0x91, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::WriteSame16 => &[
                0x93, 0x19, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::ReadCapacity16 => &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
            T::GetLbaStatus => &[
                0x9e, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL,
            ],
            T::ReportLuns => &[0xa0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
            T::ReportTargetPortGroups => &[0xa3, 0xea, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
            T::ReportSupportedOperationCodes => {
                &[0xa3, 0x0c, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, CTL]
            }
            T::SetTargetPortGroups => &[0xa4, 0x0a, 0, 0, 0, 0, FF, FF, FF, FF, 0, CTL],
            T::Read12 => &[0xa8, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
            T::Write12 => &[0xaa, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
            T::WriteAndVerify12 => &[0xae, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
            T::Verify12 => &[0xaf, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
            T::ReadDefectData12 => &[0xb7, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, 0, CTL],
        }
    }

    pub fn opcode(self) -> OpCode {
        OpCode(self.usage_data()[0])
    }

    /// The service action, for commands whose opcode has service actions.
    pub fn service_action(self) -> Option<u8> {
        match self {
            CommandType::PersistentReserveIn(a) => Some(a.0),
            CommandType::PersistentReserveOut(a) => Some(a.0),
            CommandType::ReadCapacity16
            | CommandType::GetLbaStatus
            | CommandType::ReportTargetPortGroups
            | CommandType::ReportSupportedOperationCodes
            | CommandType::SetTargetPortGroups => Some(self.usage_data()[1] & 0x1f),
            _ => None,
        }
    }

    pub fn cdb_len(self) -> usize {
        self.usage_data().len()
    }

    /// Whether INQUIRY-style rules apply: SPC-4 5.14 exempts these three
    /// from reporting a pending unit attention.
    pub fn reports_unit_attention(self) -> bool {
        !matches!(
            self,
            CommandType::Inquiry | CommandType::ReportLuns | CommandType::RequestSense
        )
    }

    /// Commands that touch the medium: refused while the LU is offline.
    pub fn is_media_access(self) -> bool {
        use CommandType as T;
        matches!(
            self,
            T::TestUnitReady
                | T::Read6
                | T::Read10
                | T::Read12
                | T::Read16
                | T::Write6
                | T::Write10
                | T::Write12
                | T::Write16
                | T::WriteAndVerify10
                | T::WriteAndVerify12
                | T::WriteAndVerify16
                | T::Verify10
                | T::Verify12
                | T::Verify16
                | T::PreFetch10
                | T::PreFetch16
                | T::SynchronizeCache10
                | T::SynchronizeCache16
                | T::WriteSame10
                | T::WriteSame16
                | T::Unmap
                | T::CompareAndWrite
                | T::OrWrite16
                | T::ReadCapacity10
                | T::ReadCapacity16
                | T::GetLbaStatus
                | T::ReadDefectData10
                | T::ReadDefectData12
        )
    }

    /// Commands that modify the medium: refused when the LU is write
    /// protected (read-only configuration or SWP).
    pub fn writes_medium(self) -> bool {
        use CommandType as T;
        matches!(
            self,
            T::Write6
                | T::Write10
                | T::Write12
                | T::Write16
                | T::WriteAndVerify10
                | T::WriteAndVerify12
                | T::WriteAndVerify16
                | T::WriteSame10
                | T::WriteSame16
                | T::Unmap
                | T::CompareAndWrite
                | T::OrWrite16
        )
    }

    /// Reservation access class (SPC-4 table 63 and SBC-3 table 13).
    pub fn access_class(self) -> AccessClass {
        use CommandType as T;
        match self {
            T::TestUnitReady
            | T::RequestSense
            | T::Inquiry
            | T::ReadCapacity10
            | T::ReadCapacity16
            | T::ReportLuns
            | T::ReportTargetPortGroups
            | T::ReportSupportedOperationCodes
            | T::PersistentReserveIn(_)
            | T::PersistentReserveOut(_)
            | T::Release6
            | T::Release10 => AccessClass::Unrestricted,
            T::Read6
            | T::Read10
            | T::Read12
            | T::Read16
            | T::Verify10
            | T::Verify12
            | T::Verify16
            | T::PreFetch10
            | T::PreFetch16
            | T::ModeSense6
            | T::ModeSense10
            | T::GetLbaStatus
            | T::ReadDefectData10
            | T::ReadDefectData12 => AccessClass::Read,
            T::Write6
            | T::Write10
            | T::Write12
            | T::Write16
            | T::WriteAndVerify10
            | T::WriteAndVerify12
            | T::WriteAndVerify16
            | T::WriteSame10
            | T::WriteSame16
            | T::Unmap
            | T::CompareAndWrite
            | T::OrWrite16
            | T::SynchronizeCache10
            | T::SynchronizeCache16
            | T::ModeSelect6
            | T::ModeSelect10
            | T::StartStopUnit
            | T::SetTargetPortGroups
            | T::Reserve6
            | T::Reserve10 => AccessClass::Write,
        }
    }
}

/// Fields shared by READ, WRITE and ORWRITE.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReadWrite {
    pub lba: u64,
    /// TRANSFER LENGTH in logical blocks (READ(6)/WRITE(6) 0 already
    /// converted to 256).
    pub blocks: u32,
    pub dpo: bool,
    pub fua: bool,
}

/// VERIFY / WRITE AND VERIFY fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct VerifyParams {
    pub lba: u64,
    pub blocks: u32,
    pub dpo: bool,
    /// BYTCHK: 0 medium verification only, 1 compare Data-Out with the
    /// medium, 3 compare one Data-Out block against every block.
    pub bytchk: u8,
}

/// WRITE SAME (10/16) fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct WriteSameParams {
    pub lba: u64,
    /// NUMBER OF LOGICAL BLOCKS; zero means "to the end of the medium"
    /// (we report WSNZ=0).
    pub blocks: u32,
    pub unmap: bool,
    pub anchor: bool,
    /// No Data-Out buffer: write zeroes (WRITE SAME(16) only).
    pub ndob: bool,
}

/// MODE SENSE page control (PC).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
    Saved,
}

/// MODE SENSE (6/10) fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ModeSenseParams {
    /// MODE SENSE(10) (longer header) rather than MODE SENSE(6).
    pub ten: bool,
    pub dbd: bool,
    pub llbaa: bool,
    pub pc: PageControl,
    pub page: u8,
    pub subpage: u8,
    pub alloc_len: u16,
}

/// MODE SELECT (6/10) fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ModeSelectParams {
    pub ten: bool,
    pub pf: bool,
    pub param_len: u16,
}

/// A parsed, validated command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc_len: u8,
    },
    Inquiry {
        evpd: bool,
        page_code: u8,
        alloc_len: u16,
    },
    ReportLuns {
        select_report: u8,
        alloc_len: u32,
    },
    ReadCapacity10 {
        lba: u32,
        pmi: bool,
    },
    ReadCapacity16 {
        alloc_len: u32,
    },
    Read(ReadWrite),
    Write(ReadWrite),
    OrWrite(ReadWrite),
    Verify(VerifyParams),
    WriteAndVerify(VerifyParams),
    SynchronizeCache {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    PreFetch {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    WriteSame(WriteSameParams),
    CompareAndWrite {
        lba: u64,
        /// NUMBER OF LOGICAL BLOCKS to compare and then write.
        blocks: u8,
        dpo: bool,
        fua: bool,
    },
    Unmap {
        anchor: bool,
        param_len: u16,
    },
    GetLbaStatus {
        lba: u64,
        alloc_len: u32,
    },
    ModeSense(ModeSenseParams),
    ModeSelect(ModeSelectParams),
    StartStopUnit {
        immed: bool,
        power_condition: u8,
        no_flush: bool,
        loej: bool,
        start: bool,
    },
    ReportSupportedOperationCodes {
        rctd: bool,
        options: u8,
        opcode: OpCode,
        service_action: u16,
        alloc_len: u32,
    },
    ReportTargetPortGroups {
        /// PARAMETER DATA FORMAT 001b: extended header.
        extended: bool,
        alloc_len: u32,
    },
    SetTargetPortGroups {
        param_len: u32,
    },
    PersistentReserveIn {
        action: PrInAction,
        alloc_len: u16,
    },
    PersistentReserveOut {
        action: PrOutAction,
        scope: u8,
        pr_type: PrType,
        param_len: u32,
    },
    Reserve,
    Release,
    ReadDefectData {
        long: bool,
        plist: bool,
        glist: bool,
        format: u8,
        alloc_len: u32,
    },
}

impl Command {
    /// Parse a whole CDB: classify, then validate the fields.
    pub fn parse(cdb: &[u8]) -> Result<Command, CdbError> {
        Command::parse_as(CommandType::classify(cdb)?, cdb)
    }

    /// Step two of parsing, once the command type is known.
    pub fn parse_as(ty: CommandType, c: &[u8]) -> Result<Command, CdbError> {
        let len = ty.cdb_len();
        if c.len() < len {
            // The transport gave fewer bytes than the opcode's CDB needs.
            return Err(CdbError::byte(c.len() as u16));
        }
        // SAM-5 5.2: NACA=1 asks for ACA, which we do not support.
        if c[len - 1] & 0x04 != 0 {
            return Err(CdbError::field((len - 1) as u16, 2));
        }
        use CommandType as T;
        let cmd = match ty {
            T::TestUnitReady => Command::TestUnitReady,
            T::RequestSense => Command::RequestSense {
                desc: c[1] & 0x01 != 0,
                alloc_len: c[4],
            },
            T::Inquiry => {
                if c[1] & 0x02 != 0 {
                    // CMDDT is obsolete since SPC-3.
                    return Err(CdbError::field(1, 1));
                }
                let evpd = c[1] & 0x01 != 0;
                if !evpd && c[2] != 0 {
                    return Err(CdbError::byte(2));
                }
                Command::Inquiry {
                    evpd,
                    page_code: c[2],
                    alloc_len: cdb16(c, 3),
                }
            }
            T::ReportLuns => Command::ReportLuns {
                select_report: c[2],
                alloc_len: cdb32(c, 6),
            },
            T::ReadCapacity10 => {
                let pmi = c[8] & 0x01 != 0;
                let lba = cdb32(c, 2);
                if !pmi && lba != 0 {
                    return Err(CdbError::byte(2));
                }
                Command::ReadCapacity10 { lba, pmi }
            }
            T::ReadCapacity16 => Command::ReadCapacity16 {
                alloc_len: cdb32(c, 10),
            },
            T::Read6 | T::Write6 => {
                let lba = (u64::from(c[1] & 0x1f) << 16) | u64::from(cdb16(c, 2));
                // SBC-3 5.13: a TRANSFER LENGTH of zero means 256 blocks.
                let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
                let rw = ReadWrite {
                    lba,
                    blocks,
                    dpo: false,
                    fua: false,
                };
                if ty == T::Read6 {
                    Command::Read(rw)
                } else {
                    Command::Write(rw)
                }
            }
            T::Read10 | T::Write10 => {
                let rw = rw_flags(c, u64::from(cdb32(c, 2)), u32::from(cdb16(c, 7)))?;
                if ty == T::Read10 {
                    Command::Read(rw)
                } else {
                    Command::Write(rw)
                }
            }
            T::Read12 | T::Write12 => {
                let rw = rw_flags(c, u64::from(cdb32(c, 2)), cdb32(c, 6))?;
                if ty == T::Read12 {
                    Command::Read(rw)
                } else {
                    Command::Write(rw)
                }
            }
            T::Read16 | T::Write16 | T::OrWrite16 => {
                let rw = rw_flags(c, cdb64(c, 2), cdb32(c, 10))?;
                match ty {
                    T::Read16 => Command::Read(rw),
                    T::Write16 => Command::Write(rw),
                    _ => Command::OrWrite(rw),
                }
            }
            T::Verify10 => Command::Verify(verify_flags(
                c,
                u64::from(cdb32(c, 2)),
                u32::from(cdb16(c, 7)),
                true,
            )?),
            T::Verify12 => {
                Command::Verify(verify_flags(c, u64::from(cdb32(c, 2)), cdb32(c, 6), true)?)
            }
            T::Verify16 => Command::Verify(verify_flags(c, cdb64(c, 2), cdb32(c, 10), true)?),
            T::WriteAndVerify10 => Command::WriteAndVerify(verify_flags(
                c,
                u64::from(cdb32(c, 2)),
                u32::from(cdb16(c, 7)),
                false,
            )?),
            T::WriteAndVerify12 => Command::WriteAndVerify(verify_flags(
                c,
                u64::from(cdb32(c, 2)),
                cdb32(c, 6),
                false,
            )?),
            T::WriteAndVerify16 => {
                Command::WriteAndVerify(verify_flags(c, cdb64(c, 2), cdb32(c, 10), false)?)
            }
            T::SynchronizeCache10 => Command::SynchronizeCache {
                lba: u64::from(cdb32(c, 2)),
                blocks: u32::from(cdb16(c, 7)),
                immed: c[1] & 0x02 != 0,
            },
            T::SynchronizeCache16 => Command::SynchronizeCache {
                lba: cdb64(c, 2),
                blocks: cdb32(c, 10),
                immed: c[1] & 0x02 != 0,
            },
            T::PreFetch10 => Command::PreFetch {
                lba: u64::from(cdb32(c, 2)),
                blocks: u32::from(cdb16(c, 7)),
                immed: c[1] & 0x02 != 0,
            },
            T::PreFetch16 => Command::PreFetch {
                lba: cdb64(c, 2),
                blocks: cdb32(c, 10),
                immed: c[1] & 0x02 != 0,
            },
            T::WriteSame10 | T::WriteSame16 => {
                protect_field(c)?;
                let anchor = c[1] & 0x10 != 0;
                let unmap = c[1] & 0x08 != 0;
                if anchor && !unmap {
                    // SBC-3 5.45: ANCHOR without UNMAP is invalid.
                    return Err(CdbError::field(1, 4));
                }
                let (lba, blocks, ndob) = if ty == T::WriteSame10 {
                    (u64::from(cdb32(c, 2)), u32::from(cdb16(c, 7)), false)
                } else {
                    (cdb64(c, 2), cdb32(c, 10), c[1] & 0x01 != 0)
                };
                Command::WriteSame(WriteSameParams {
                    lba,
                    blocks,
                    unmap,
                    anchor,
                    ndob,
                })
            }
            T::CompareAndWrite => {
                protect_field(c)?;
                Command::CompareAndWrite {
                    lba: cdb64(c, 2),
                    blocks: c[13],
                    dpo: c[1] & 0x10 != 0,
                    fua: c[1] & 0x08 != 0,
                }
            }
            T::Unmap => Command::Unmap {
                anchor: c[1] & 0x01 != 0,
                param_len: cdb16(c, 7),
            },
            T::GetLbaStatus => Command::GetLbaStatus {
                lba: cdb64(c, 2),
                alloc_len: cdb32(c, 10),
            },
            T::ModeSense6 | T::ModeSense10 => {
                let ten = ty == T::ModeSense10;
                let pc = match c[2] >> 6 {
                    0 => PageControl::Current,
                    1 => PageControl::Changeable,
                    2 => PageControl::Default,
                    _ => PageControl::Saved,
                };
                Command::ModeSense(ModeSenseParams {
                    ten,
                    dbd: c[1] & 0x08 != 0,
                    llbaa: ten && c[1] & 0x10 != 0,
                    pc,
                    page: c[2] & 0x3f,
                    subpage: c[3],
                    alloc_len: if ten { cdb16(c, 7) } else { u16::from(c[4]) },
                })
            }
            T::ModeSelect6 | T::ModeSelect10 => {
                let ten = ty == T::ModeSelect10;
                if c[1] & 0x01 != 0 {
                    // SP: we cannot save parameters.
                    return Err(CdbError::field(1, 0));
                }
                Command::ModeSelect(ModeSelectParams {
                    ten,
                    pf: c[1] & 0x10 != 0,
                    param_len: if ten { cdb16(c, 7) } else { u16::from(c[4]) },
                })
            }
            T::StartStopUnit => Command::StartStopUnit {
                immed: c[1] & 0x01 != 0,
                power_condition: c[4] >> 4,
                no_flush: c[4] & 0x04 != 0,
                loej: c[4] & 0x02 != 0,
                start: c[4] & 0x01 != 0,
            },
            T::ReportSupportedOperationCodes => {
                let options = c[2] & 0x07;
                if options > 3 {
                    return Err(CdbError::field(2, 2));
                }
                Command::ReportSupportedOperationCodes {
                    rctd: c[2] & 0x80 != 0,
                    options,
                    opcode: OpCode(c[3]),
                    service_action: cdb16(c, 4),
                    alloc_len: cdb32(c, 6),
                }
            }
            T::ReportTargetPortGroups => {
                let format = c[1] >> 5;
                if format > 1 {
                    return Err(CdbError::field(1, 7));
                }
                Command::ReportTargetPortGroups {
                    extended: format == 1,
                    alloc_len: cdb32(c, 6),
                }
            }
            T::SetTargetPortGroups => Command::SetTargetPortGroups {
                param_len: cdb32(c, 6),
            },
            T::PersistentReserveIn(action) => Command::PersistentReserveIn {
                action,
                alloc_len: cdb16(c, 7),
            },
            T::PersistentReserveOut(action) => Command::PersistentReserveOut {
                action,
                scope: c[2] >> 4,
                pr_type: PrType(c[2] & 0x0f),
                param_len: cdb32(c, 5),
            },
            T::Reserve6 | T::Release6 => {
                // Third-party and extent reservations are obsolete.
                if c[1] & 0x1f != 0 {
                    return Err(CdbError::byte(1));
                }
                if ty == T::Reserve6 {
                    Command::Reserve
                } else {
                    Command::Release
                }
            }
            T::Reserve10 | T::Release10 => {
                if c[1] & 0x10 != 0 {
                    // 3RDPTY is not supported.
                    return Err(CdbError::field(1, 4));
                }
                if ty == T::Reserve10 {
                    Command::Reserve
                } else {
                    Command::Release
                }
            }
            T::ReadDefectData10 => Command::ReadDefectData {
                long: false,
                plist: c[2] & 0x10 != 0,
                glist: c[2] & 0x08 != 0,
                format: c[2] & 0x07,
                alloc_len: u32::from(cdb16(c, 7)),
            },
            T::ReadDefectData12 => Command::ReadDefectData {
                long: true,
                plist: c[1] & 0x10 != 0,
                glist: c[1] & 0x08 != 0,
                format: c[1] & 0x07,
                alloc_len: cdb32(c, 6),
            },
        };
        Ok(cmd)
    }

    /// How many bytes of Data-Out this command expects, so the transport
    /// knows what to collect before calling the device server.
    pub fn data_out_len(&self, block_size: u32) -> u64 {
        let bs = u64::from(block_size);
        match *self {
            Command::Write(rw) | Command::OrWrite(rw) => u64::from(rw.blocks) * bs,
            Command::WriteAndVerify(v) => u64::from(v.blocks) * bs,
            Command::Verify(v) => match v.bytchk {
                0 => 0,
                3 => bs,
                _ => u64::from(v.blocks) * bs,
            },
            Command::WriteSame(ws) => {
                if ws.ndob {
                    0
                } else {
                    bs
                }
            }
            Command::CompareAndWrite { blocks, .. } => 2 * u64::from(blocks) * bs,
            Command::Unmap { param_len, .. } => u64::from(param_len),
            Command::ModeSelect(p) => u64::from(p.param_len),
            Command::PersistentReserveOut { param_len, .. } => u64::from(param_len),
            Command::SetTargetPortGroups { param_len } => u64::from(param_len),
            _ => 0,
        }
    }
}

/// RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT (byte 1 bits 7:5): we have no
/// protection information, so any non-zero value is invalid (SBC-3 5.13).
fn protect_field(c: &[u8]) -> Result<(), CdbError> {
    if c[1] & 0xe0 != 0 {
        return Err(CdbError::field(1, 7));
    }
    Ok(())
}

fn rw_flags(c: &[u8], lba: u64, blocks: u32) -> Result<ReadWrite, CdbError> {
    protect_field(c)?;
    Ok(ReadWrite {
        lba,
        blocks,
        dpo: c[1] & 0x10 != 0,
        fua: c[1] & 0x08 != 0,
    })
}

fn verify_flags(c: &[u8], lba: u64, blocks: u32, verify: bool) -> Result<VerifyParams, CdbError> {
    protect_field(c)?;
    let bytchk = (c[1] >> 1) & 0x03;
    // VERIFY: 10b is reserved. WRITE AND VERIFY: only 0 and 1 defined.
    if (verify && bytchk == 2) || (!verify && bytchk > 1) {
        return Err(CdbError::field(1, 2));
    }
    Ok(VerifyParams {
        lba,
        blocks,
        dpo: c[1] & 0x10 != 0,
        bytchk,
    })
}

/// The field pointer sense for a CDB error, for callers holding a pointer.
pub fn field_pointer(byte: u16, bit: Option<u8>) -> FieldPointer {
    FieldPointer {
        in_cdb: true,
        byte,
        bit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn read10_fixture() {
        let cdb = [0x28, 0x08, 0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0x08, 0x00];
        assert_eq!(CommandType::classify(&cdb), Ok(CommandType::Read10));
        assert_eq!(
            Command::parse(&cdb),
            Ok(Command::Read(ReadWrite {
                lba: 0x1234,
                blocks: 8,
                dpo: false,
                fua: true
            }))
        );
    }

    #[test]
    fn read6_zero_means_256() {
        let cdb = [0x08, 0x01, 0x02, 0x03, 0x00, 0x00];
        assert_eq!(
            Command::parse(&cdb),
            Ok(Command::Read(ReadWrite {
                lba: 0x10203,
                blocks: 256,
                dpo: false,
                fua: false
            }))
        );
    }

    #[test]
    fn errors_map_to_sense() {
        let e = Command::parse(&[0xff, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(e, CdbError::InvalidOpcode(OpCode(0xff)));
        assert_eq!(e.sense().asc, sense::INVALID_COMMAND_OPERATION_CODE);

        // RDPROTECT=1 without protection information.
        let e = Command::parse(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        let s = e.sense();
        assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
        assert_eq!(s.field_pointer, Some(field_pointer(1, Some(7))));

        // Unknown SERVICE ACTION IN(16) service action points at byte 1.
        let e =
            Command::parse(&[0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(e.sense().field_pointer.map(|f| f.byte), Some(1));

        // INQUIRY with EVPD=0 and a page code.
        let e = Command::parse(&[0x12, 0, 1, 0, 0xff, 0]).unwrap_err();
        assert_eq!(e, CdbError::byte(2));

        // Short CDB.
        assert!(Command::parse(&[0x28, 0, 0]).is_err());
        assert!(Command::parse(&[]).is_err());
    }

    #[test]
    fn usage_data_lengths_match_group_codes() {
        for &t in CommandType::ALL {
            let u = t.usage_data();
            assert_eq!(Some(u.len()), t.opcode().group_cdb_len(), "{t:?}");
            if let Some(sa) = t.service_action() {
                let mut cdb = [0u8; 16];
                cdb[0] = u[0];
                cdb[1] = sa;
                assert_eq!(CommandType::classify(&cdb), Ok(t));
            } else {
                assert_eq!(CommandType::classify(u), Ok(t));
            }
        }
    }

    #[test]
    fn data_out_lengths() {
        let ws = Command::parse(&[0x93, 0x09, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0]).unwrap();
        assert_eq!(ws.data_out_len(512), 0, "NDOB");
        let caw = Command::parse(&[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0]).unwrap();
        assert_eq!(caw.data_out_len(512), 2048);
    }

    proptest! {
        #[test]
        fn parse_is_total(b in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(cmd) = Command::parse(&b) {
                let _ = cmd.data_out_len(4096);
            }
        }

        #[test]
        fn parse_is_total_for_every_known_opcode(
            t in proptest::sample::select(CommandType::ALL.to_vec()),
            rest in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut b = vec![t.opcode().0];
            b.extend(rest);
            let _ = Command::parse(&b);
        }
    }
}
