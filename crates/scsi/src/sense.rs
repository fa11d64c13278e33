//! Sense data (SPC-4 4.5): sense keys, additional sense codes, and the fixed
//! (0x70/0x71) and descriptor (0x72/0x73) formats.
//!
//! The device server builds a [`Sense`] and encodes it in the format the
//! control mode page's D_SENSE bit selects; the initiator decodes whatever a
//! target sent and classifies it with the `is_*` helpers (path error versus
//! target error is decided from these).

use std::fmt;

use crate::codec::{be32, be64, u8_at};

/// SENSE KEY (SPC-4 table 27). A newtype so unknown values survive decoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SenseKey(pub u8);

impl SenseKey {
    pub const NO_SENSE: SenseKey = SenseKey(0x0);
    pub const RECOVERED_ERROR: SenseKey = SenseKey(0x1);
    pub const NOT_READY: SenseKey = SenseKey(0x2);
    pub const MEDIUM_ERROR: SenseKey = SenseKey(0x3);
    pub const HARDWARE_ERROR: SenseKey = SenseKey(0x4);
    pub const ILLEGAL_REQUEST: SenseKey = SenseKey(0x5);
    pub const UNIT_ATTENTION: SenseKey = SenseKey(0x6);
    pub const DATA_PROTECT: SenseKey = SenseKey(0x7);
    pub const BLANK_CHECK: SenseKey = SenseKey(0x8);
    pub const VENDOR_SPECIFIC: SenseKey = SenseKey(0x9);
    pub const COPY_ABORTED: SenseKey = SenseKey(0xa);
    pub const ABORTED_COMMAND: SenseKey = SenseKey(0xb);
    pub const VOLUME_OVERFLOW: SenseKey = SenseKey(0xd);
    pub const MISCOMPARE: SenseKey = SenseKey(0xe);
    pub const COMPLETED: SenseKey = SenseKey(0xf);

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0x8 => "BLANK CHECK",
            0x9 => "VENDOR SPECIFIC",
            0xa => "COPY ABORTED",
            0xb => "ABORTED COMMAND",
            0xd => "VOLUME OVERFLOW",
            0xe => "MISCOMPARE",
            0xf => "COMPLETED",
            _ => return None,
        })
    }
}

impl fmt::Debug for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({:#x})", self.0),
            None => write!(f, "SenseKey({:#x})", self.0),
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

/// ADDITIONAL SENSE CODE and ADDITIONAL SENSE CODE QUALIFIER (SPC-4 table
/// 28). Prints as `ASC/ASCQ` in hex, the way the standard lists them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Asc {
    pub code: u8,
    pub qualifier: u8,
}

impl Asc {
    pub const fn new(code: u8, qualifier: u8) -> Asc {
        Asc { code, qualifier }
    }
}

impl fmt::Debug for Asc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}/{:02x}", self.code, self.qualifier)
    }
}

impl fmt::Display for Asc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// Named additional sense codes, after their SPC-4 Annex D names.
pub const NO_ADDITIONAL_SENSE_INFORMATION: Asc = Asc::new(0x00, 0x00);
pub const LOGICAL_UNIT_NOT_READY_CAUSE_NOT_REPORTABLE: Asc = Asc::new(0x04, 0x00);
pub const LOGICAL_UNIT_IS_IN_PROCESS_OF_BECOMING_READY: Asc = Asc::new(0x04, 0x01);
pub const LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED: Asc = Asc::new(0x04, 0x03);
/// LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION.
pub const ASYMMETRIC_ACCESS_STATE_TRANSITION: Asc = Asc::new(0x04, 0x0a);
/// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
pub const TARGET_PORT_IN_STANDBY_STATE: Asc = Asc::new(0x04, 0x0b);
/// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
pub const TARGET_PORT_IN_UNAVAILABLE_STATE: Asc = Asc::new(0x04, 0x0c);
pub const WRITE_ERROR: Asc = Asc::new(0x0c, 0x00);
pub const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc::new(0x0e, 0x03);
pub const UNRECOVERED_READ_ERROR: Asc = Asc::new(0x11, 0x00);
pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc::new(0x1a, 0x00);
pub const MISCOMPARE_DURING_VERIFY_OPERATION: Asc = Asc::new(0x1d, 0x00);
pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc::new(0x20, 0x00);
pub const LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE: Asc = Asc::new(0x21, 0x00);
pub const INVALID_FIELD_IN_CDB: Asc = Asc::new(0x24, 0x00);
pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc::new(0x25, 0x00);
pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc::new(0x26, 0x00);
pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Asc = Asc::new(0x26, 0x04);
pub const WRITE_PROTECTED: Asc = Asc::new(0x27, 0x00);
pub const NOT_READY_TO_READY_CHANGE_MEDIUM_MAY_HAVE_CHANGED: Asc = Asc::new(0x28, 0x00);
pub const POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED: Asc = Asc::new(0x29, 0x00);
pub const POWER_ON_OCCURRED: Asc = Asc::new(0x29, 0x01);
pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: Asc = Asc::new(0x29, 0x03);
pub const I_T_NEXUS_LOSS_OCCURRED: Asc = Asc::new(0x29, 0x07);
pub const PARAMETERS_CHANGED: Asc = Asc::new(0x2a, 0x00);
pub const MODE_PARAMETERS_CHANGED: Asc = Asc::new(0x2a, 0x01);
pub const RESERVATIONS_PREEMPTED: Asc = Asc::new(0x2a, 0x03);
pub const RESERVATIONS_RELEASED: Asc = Asc::new(0x2a, 0x04);
pub const REGISTRATIONS_PREEMPTED: Asc = Asc::new(0x2a, 0x05);
pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc::new(0x2a, 0x06);
pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc::new(0x2a, 0x09);
pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc::new(0x2f, 0x00);
pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc::new(0x39, 0x00);
pub const MEDIUM_NOT_PRESENT: Asc = Asc::new(0x3a, 0x00);
pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc::new(0x3f, 0x0e);
pub const INTERNAL_TARGET_FAILURE: Asc = Asc::new(0x44, 0x00);

/// The SENSE-KEY SPECIFIC field pointer of ILLEGAL REQUEST sense (SPC-4
/// 4.5.2.4.2): which byte (and bit) of the CDB or parameter list is wrong.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FieldPointer {
    /// C/D bit: the error is in the CDB (true) or the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// BIT POINTER, only when BPV is set.
    pub bit: Option<u8>,
}

/// Which sense data format to build; chosen per LU by the control mode
/// page's D_SENSE bit, or per REQUEST SENSE by its DESC bit.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SenseFormat {
    #[default]
    Fixed,
    Descriptor,
}

/// Decoded or to-be-encoded sense data.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: Asc,
    /// INFORMATION field (for example the offset of the first miscompare).
    pub info: Option<u64>,
    pub field_pointer: Option<FieldPointer>,
    /// Deferred error (response code 0x71/0x73) rather than current.
    pub deferred: bool,
}

/// Why sense bytes could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum SenseDecodeError {
    #[error("sense data is empty")]
    Empty,
    #[error("unsupported sense response code {0:#04x}")]
    UnknownResponseCode(u8),
    #[error("sense data truncated at {0} bytes")]
    Truncated(usize),
}

/// The largest sense we build: descriptor header (8) + information
/// descriptor (12) + sense-key specific descriptor (8).
const SENSE_BUF_LEN: usize = 32;

/// Encoded sense bytes kept inline so error responses need no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SenseData {
    len: u8,
    buf: [u8; SENSE_BUF_LEN],
}

impl SenseData {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Copy arbitrary sense bytes (up to 32) received from a peer.
    pub fn from_slice(b: &[u8]) -> SenseData {
        let n = b.len().min(SENSE_BUF_LEN);
        let mut buf = [0u8; SENSE_BUF_LEN];
        buf[..n].copy_from_slice(&b[..n]);
        SenseData { len: n as u8, buf }
    }
}

impl std::ops::Deref for SenseData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for SenseData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SenseData(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

impl Sense {
    pub const fn new(key: SenseKey, asc: Asc) -> Sense {
        Sense {
            key,
            asc,
            info: None,
            field_pointer: None,
            deferred: false,
        }
    }

    pub const fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::ILLEGAL_REQUEST,
            asc: INVALID_FIELD_IN_CDB,
            info: None,
            field_pointer: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            deferred: false,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST at `byte` (`bit`).
    pub const fn invalid_field_in_parameter_list(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::ILLEGAL_REQUEST,
            asc: INVALID_FIELD_IN_PARAMETER_LIST,
            info: None,
            field_pointer: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            deferred: false,
        }
    }

    pub const fn illegal_request(asc: Asc) -> Sense {
        Sense::new(SenseKey::ILLEGAL_REQUEST, asc)
    }

    pub const fn unit_attention(asc: Asc) -> Sense {
        Sense::new(SenseKey::UNIT_ATTENTION, asc)
    }

    pub const fn not_ready(asc: Asc) -> Sense {
        Sense::new(SenseKey::NOT_READY, asc)
    }

    /// Encode in the requested format.
    pub fn encode(&self, format: SenseFormat) -> SenseData {
        match format {
            SenseFormat::Fixed => self.encode_fixed(),
            SenseFormat::Descriptor => self.encode_descriptor(),
        }
    }

    fn sks_bytes(&self) -> Option<[u8; 3]> {
        let fp = self.field_pointer?;
        let mut b0 = 0x80; // SKSV
        if fp.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = fp.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = fp.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Fixed format, 18 bytes (SPC-4 4.5.3).
    pub fn encode_fixed(&self) -> SenseData {
        let mut buf = [0u8; SENSE_BUF_LEN];
        buf[0] = if self.deferred { 0x71 } else { 0x70 };
        buf[2] = self.key.0 & 0x0f;
        // The fixed INFORMATION field is four bytes; a larger value cannot
        // be represented, so VALID stays clear (descriptor format can).
        if let Some(info) = self.info.and_then(|i| u32::try_from(i).ok()) {
            buf[0] |= 0x80;
            buf[3..7].copy_from_slice(&info.to_be_bytes());
        }
        buf[7] = 10; // ADDITIONAL SENSE LENGTH: bytes 8..18
        buf[12] = self.asc.code;
        buf[13] = self.asc.qualifier;
        if let Some(sks) = self.sks_bytes() {
            buf[15..18].copy_from_slice(&sks);
        }
        SenseData { len: 18, buf }
    }

    /// Descriptor format (SPC-4 4.5.2) with information and sense-key
    /// specific descriptors when present.
    pub fn encode_descriptor(&self) -> SenseData {
        let mut buf = [0u8; SENSE_BUF_LEN];
        buf[0] = if self.deferred { 0x73 } else { 0x72 };
        buf[1] = self.key.0 & 0x0f;
        buf[2] = self.asc.code;
        buf[3] = self.asc.qualifier;
        let mut n = 8;
        if let Some(info) = self.info {
            buf[n] = 0x00; // information descriptor
            buf[n + 1] = 0x0a;
            buf[n + 2] = 0x80; // VALID
            buf[n + 4..n + 12].copy_from_slice(&info.to_be_bytes());
            n += 12;
        }
        if let Some(sks) = self.sks_bytes() {
            buf[n] = 0x02; // sense key specific descriptor
            buf[n + 1] = 0x06;
            buf[n + 4..n + 7].copy_from_slice(&sks);
            n += 8;
        }
        buf[7] = (n - 8) as u8;
        SenseData { len: n as u8, buf }
    }

    /// Decode either format. Total: any byte slice yields `Ok` or `Err`.
    pub fn decode(b: &[u8]) -> Result<Sense, SenseDecodeError> {
        let rc = *b.first().ok_or(SenseDecodeError::Empty)?;
        match rc & 0x7f {
            0x70 | 0x71 => Self::decode_fixed(b, rc),
            0x72 | 0x73 => Self::decode_descriptor(b, rc),
            other => Err(SenseDecodeError::UnknownResponseCode(other)),
        }
    }

    fn decode_fixed(b: &[u8], rc: u8) -> Result<Sense, SenseDecodeError> {
        let key = u8_at(b, 2).ok_or(SenseDecodeError::Truncated(b.len()))? & 0x0f;
        let add_len = usize::from(u8_at(b, 7).unwrap_or(0));
        // Only trust bytes both present and covered by ADDITIONAL SENSE LENGTH.
        let end = b.len().min(8 + add_len);
        let within = |at: usize| if at < end { b.get(at).copied() } else { None };
        let info = if rc & 0x80 != 0 {
            be32(b, 3).map(u64::from)
        } else {
            None
        };
        let asc = Asc::new(within(12).unwrap_or(0), within(13).unwrap_or(0));
        let key = SenseKey(key);
        let field_pointer = match (within(15), within(16), within(17)) {
            (Some(b0), Some(hi), Some(lo)) if b0 & 0x80 != 0 => {
                sks_field_pointer(key, [b0, hi, lo])
            }
            _ => None,
        };
        Ok(Sense {
            key,
            asc,
            info,
            field_pointer,
            deferred: rc & 0x7f == 0x71,
        })
    }

    fn decode_descriptor(b: &[u8], rc: u8) -> Result<Sense, SenseDecodeError> {
        if b.len() < 4 {
            return Err(SenseDecodeError::Truncated(b.len()));
        }
        let key = SenseKey(b[1] & 0x0f);
        let asc = Asc::new(b[2], b[3]);
        let add_len = usize::from(u8_at(b, 7).unwrap_or(0));
        let end = b.len().min(8 + add_len);
        let mut sense = Sense {
            key,
            asc,
            info: None,
            field_pointer: None,
            deferred: rc & 0x7f == 0x73,
        };
        let mut at = 8;
        while at + 2 <= end {
            let dtype = b[at];
            let dlen = usize::from(b[at + 1]);
            let body_end = at + 2 + dlen;
            if body_end > end {
                break;
            }
            match dtype {
                0x00 if dlen >= 0x0a && b[at + 2] & 0x80 != 0 => {
                    sense.info = be64(b, at + 4);
                }
                0x02 if dlen >= 0x06 && b[at + 4] & 0x80 != 0 => {
                    sense.field_pointer = sks_field_pointer(key, [b[at + 4], b[at + 5], b[at + 6]]);
                }
                _ => {}
            }
            at = body_end;
        }
        Ok(sense)
    }

    /// UNIT ATTENTION of any kind: the command was not executed and may be
    /// retried on the same path.
    pub fn is_unit_attention(&self) -> bool {
        self.key == SenseKey::UNIT_ATTENTION
    }

    /// NOT READY 04/0b: this path's target port group is in standby.
    pub fn is_alua_standby(&self) -> bool {
        self.key == SenseKey::NOT_READY && self.asc == TARGET_PORT_IN_STANDBY_STATE
    }

    /// NOT READY 04/0c: this path's target port group is unavailable.
    pub fn is_alua_unavailable(&self) -> bool {
        self.key == SenseKey::NOT_READY && self.asc == TARGET_PORT_IN_UNAVAILABLE_STATE
    }

    /// NOT READY 04/0a: an ALUA state transition is in progress.
    pub fn is_alua_transitioning(&self) -> bool {
        self.key == SenseKey::NOT_READY && self.asc == ASYMMETRIC_ACCESS_STATE_TRANSITION
    }

    /// Any "LU not accessible through this port" condition: the multipath
    /// layer treats these as path errors and retries elsewhere.
    pub fn is_alua_inaccessible(&self) -> bool {
        self.is_alua_standby() || self.is_alua_unavailable() || self.is_alua_transitioning()
    }

    /// UNIT ATTENTION 2a/06: re-read target port group states.
    pub fn is_alua_state_changed(&self) -> bool {
        self.is_unit_attention() && self.asc == ASYMMETRIC_ACCESS_STATE_CHANGED
    }

    /// UNIT ATTENTION 29/xx: power on, reset or I_T nexus loss.
    pub fn is_power_on_or_reset(&self) -> bool {
        self.is_unit_attention() && self.asc.code == 0x29
    }

    /// UNIT ATTENTION 2a/09: re-read the capacity.
    pub fn is_capacity_changed(&self) -> bool {
        self.is_unit_attention() && self.asc == CAPACITY_DATA_HAS_CHANGED
    }

    pub fn is_not_ready(&self) -> bool {
        self.key == SenseKey::NOT_READY
    }

    /// NOT READY 04/03: the LU was taken offline by an operator.
    pub fn is_manual_intervention_required(&self) -> bool {
        self.key == SenseKey::NOT_READY
            && self.asc == LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED
    }

    pub fn is_medium_not_present(&self) -> bool {
        self.key == SenseKey::NOT_READY && self.asc.code == MEDIUM_NOT_PRESENT.code
    }

    pub fn is_medium_error(&self) -> bool {
        self.key == SenseKey::MEDIUM_ERROR
    }

    pub fn is_illegal_request(&self) -> bool {
        self.key == SenseKey::ILLEGAL_REQUEST
    }

    pub fn is_invalid_opcode(&self) -> bool {
        self.is_illegal_request() && self.asc == INVALID_COMMAND_OPERATION_CODE
    }

    pub fn is_lba_out_of_range(&self) -> bool {
        self.is_illegal_request() && self.asc == LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE
    }

    pub fn is_miscompare(&self) -> bool {
        self.key == SenseKey::MISCOMPARE
    }

    pub fn is_write_protected(&self) -> bool {
        self.key == SenseKey::DATA_PROTECT && self.asc.code == WRITE_PROTECTED.code
    }

    pub fn is_aborted_command(&self) -> bool {
        self.key == SenseKey::ABORTED_COMMAND
    }
}

/// Interpret SENSE-KEY SPECIFIC bytes as a field pointer; only ILLEGAL
/// REQUEST carries one (other keys use the bytes for progress indication or
/// retry counts).
fn sks_field_pointer(key: SenseKey, sks: [u8; 3]) -> Option<FieldPointer> {
    if key != SenseKey::ILLEGAL_REQUEST {
        return None;
    }
    Some(FieldPointer {
        in_cdb: sks[0] & 0x40 != 0,
        byte: u16::from_be_bytes([sks[1], sks[2]]),
        bit: (sks[0] & 0x08 != 0).then_some(sks[0] & 0x07),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_invalid_field_fixture() {
        let s = Sense::invalid_field_in_cdb(2, Some(1));
        let d = s.encode(SenseFormat::Fixed);
        assert_eq!(
            d.as_bytes(),
            &[0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x24, 0x00, 0, 0xc9, 0x00, 0x02]
        );
        assert_eq!(Sense::decode(&d).unwrap(), s);
    }

    #[test]
    fn descriptor_miscompare_fixture() {
        let s = Sense::new(SenseKey::MISCOMPARE, MISCOMPARE_DURING_VERIFY_OPERATION)
            .with_info(0x1_0000_0001);
        let d = s.encode(SenseFormat::Descriptor);
        assert_eq!(
            d.as_bytes(),
            &[
                0x72, 0x0e, 0x1d, 0x00, 0, 0, 0, 12, // header
                0x00, 0x0a, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 1, // information
            ]
        );
        assert_eq!(Sense::decode(&d).unwrap(), s);
        // In fixed format the 4-byte INFORMATION cannot hold it: VALID clear.
        let f = Sense::decode(&s.encode(SenseFormat::Fixed)).unwrap();
        assert_eq!(f.info, None);
        assert!(f.is_miscompare());
    }

    #[test]
    fn decodes_real_alua_standby_sense() {
        // As tgtd/LIO send it: fixed format, NOT READY, 04/0b.
        let b = [
            0x70, 0, 0x02, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x04, 0x0b, 0, 0, 0, 0,
        ];
        let s = Sense::decode(&b).unwrap();
        assert!(s.is_alua_standby());
        assert!(s.is_alua_inaccessible());
        assert!(!s.is_unit_attention());
    }

    #[test]
    fn short_and_odd_sense_is_handled() {
        assert_eq!(Sense::decode(&[]), Err(SenseDecodeError::Empty));
        assert_eq!(
            Sense::decode(&[0x7f]),
            Err(SenseDecodeError::UnknownResponseCode(0x7f))
        );
        // Header only: key known, no ASC.
        let s = Sense::decode(&[0x70, 0, 0x06, 0, 0, 0, 0, 0]).unwrap();
        assert!(s.is_unit_attention());
        assert_eq!(s.asc, NO_ADDITIONAL_SENSE_INFORMATION);
    }

    #[test]
    fn display_formats() {
        assert_eq!(format!("{:?}", ASYMMETRIC_ACCESS_STATE_CHANGED), "2a/06");
        assert_eq!(format!("{}", SenseKey::UNIT_ATTENTION), "UNIT ATTENTION");
        assert_eq!(format!("{:?}", SenseKey(0xc)), "SenseKey(0xc)");
    }

    fn arb_sense() -> impl Strategy<Value = Sense> {
        (
            0u8..16,
            any::<u8>(),
            any::<u8>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of((any::<bool>(), any::<u16>(), proptest::option::of(0u8..8))),
            any::<bool>(),
        )
            .prop_map(|(k, a, q, info, fp, deferred)| {
                let key = SenseKey(k);
                Sense {
                    key,
                    asc: Asc::new(a, q),
                    info,
                    // Field pointers only survive for ILLEGAL REQUEST.
                    field_pointer: if key == SenseKey::ILLEGAL_REQUEST {
                        fp.map(|(in_cdb, byte, bit)| FieldPointer { in_cdb, byte, bit })
                    } else {
                        None
                    },
                    deferred,
                }
            })
    }

    proptest! {
        #[test]
        fn decode_is_total(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Sense::decode(&b);
        }

        #[test]
        fn descriptor_round_trip(s in arb_sense()) {
            prop_assert_eq!(Sense::decode(&s.encode(SenseFormat::Descriptor)).unwrap(), s);
        }

        #[test]
        fn fixed_round_trip(s in arb_sense()) {
            let mut expect = s;
            expect.info = s.info.filter(|&i| i <= u64::from(u32::MAX));
            prop_assert_eq!(Sense::decode(&s.encode(SenseFormat::Fixed)).unwrap(), expect);
        }
    }
}
