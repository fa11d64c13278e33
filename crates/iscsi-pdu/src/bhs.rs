//! The 48-byte Basic Header Segment, typed per opcode (RFC 7143 §11).
//!
//! `TotalAHSLength` and `DataSegmentLength` are not fields here: they are derived from the
//! PDU's AHS and data segment when it is encoded, so they can never disagree with them.
//! Reserved fields and fixed bits are not fields either; whatever a peer sent in them is kept
//! by [`crate::Pdu`] so that decode → encode gives back the same bytes.

use crate::serial::SerialNumber;
use crate::types::*;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Byte 0 bit 6: the I (immediate delivery) bit of initiator PDUs.
const IMMEDIATE: u8 = 0x40;
/// Byte 1 bit 7: the F (final) bit.
const FINAL: u8 = 0x80;
/// Byte 1 bit 6: the C (continue) bit of Login and Text PDUs.
const CONTINUE: u8 = 0x40;
/// Byte 1 bit 7 of Login PDUs: the T (transit) bit.
const TRANSIT: u8 = 0x80;

/// A typed Basic Header Segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
    /// An opcode RFC 7143 does not define (vendor opcodes 0x1c-0x1e / 0x3c-0x3e, or garbage).
    /// The whole header is kept so it can be echoed in a Reject.
    Unknown(UnknownBhs),
}

/// NOP-Out (RFC 7143 §11.18).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: Ttt,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
}

/// SCSI Command (RFC 7143 §11.3).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    /// F: no unsolicited non-immediate Data-Out follows.
    pub final_bit: bool,
    /// R: data will be read (Data-In).
    pub read: bool,
    /// W: data will be written (Data-Out).
    pub write: bool,
    pub attr: TaskAttr,
    pub lun: Lun,
    pub itt: Itt,
    pub expected_data_transfer_length: u32,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    /// The first 16 bytes of the CDB (longer CDBs continue in an Extended CDB AHS).
    pub cdb: [u8; 16],
}

/// Task Management Function Request (RFC 7143 §11.5).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: Lun,
    pub itt: Itt,
    pub referenced_task_tag: Itt,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub ref_cmd_sn: SerialNumber,
    pub exp_data_sn: SerialNumber,
}

/// Login Request (RFC 7143 §11.12). Always immediate.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: Isid,
    pub tsih: Tsih,
    pub itt: Itt,
    pub cid: Cid,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
}

/// Text Request (RFC 7143 §11.10).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: Ttt,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
}

/// SCSI Data-Out (RFC 7143 §11.7).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: Ttt,
    pub exp_stat_sn: SerialNumber,
    pub data_sn: SerialNumber,
    pub buffer_offset: u32,
}

/// Logout Request (RFC 7143 §11.14).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: LogoutReason,
    pub itt: Itt,
    pub cid: Cid,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
}

/// SNACK Request (RFC 7143 §11.16). Decoded so it can be rejected precisely at ERL 0.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnackRequest {
    pub kind: SnackType,
    pub lun: Lun,
    pub itt: Itt,
    /// Target Transfer Tag, or SNACK Tag for R-Data SNACK.
    pub ttt_or_snack_tag: u32,
    pub exp_stat_sn: SerialNumber,
    pub beg_run: u32,
    pub run_length: u32,
}

/// NOP-In (RFC 7143 §11.19).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: Ttt,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
}

/// SCSI Response (RFC 7143 §11.4).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    /// o: bidirectional read residual overflow.
    pub bidi_overflow: bool,
    /// u: bidirectional read residual underflow.
    pub bidi_underflow: bool,
    /// O: residual overflow.
    pub overflow: bool,
    /// U: residual underflow.
    pub underflow: bool,
    pub response: ScsiResponseCode,
    /// SCSI status byte (valid when `response` is COMPLETED).
    pub status: u8,
    pub itt: Itt,
    pub snack_tag: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub exp_data_sn: SerialNumber,
    pub bidi_read_residual_count: u32,
    pub residual_count: u32,
}

/// Task Management Function Response (RFC 7143 §11.6).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: TmfResponse,
    pub itt: Itt,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
}

/// Login Response (RFC 7143 §11.13).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: Isid,
    pub tsih: Tsih,
    pub itt: Itt,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub status: LoginStatus,
}

/// Text Response (RFC 7143 §11.11).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: Ttt,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
}

/// SCSI Data-In (RFC 7143 §11.7). With the S bit it also carries the command's status
/// ("phase collapse"), and no SCSI Response follows.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_bit: bool,
    /// A: the target asks for a DataACK SNACK (only at ERL > 0).
    pub acknowledge: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S: `status` and `stat_sn` are valid.
    pub status_present: bool,
    pub status: u8,
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: Ttt,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub data_sn: SerialNumber,
    pub buffer_offset: u32,
    pub residual_count: u32,
}

/// Logout Response (RFC 7143 §11.15).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: LogoutResponseCode,
    pub itt: Itt,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer (RFC 7143 §11.8).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: Ttt,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub r2t_sn: SerialNumber,
    pub buffer_offset: u32,
    pub desired_data_transfer_length: u32,
}

/// Asynchronous Message (RFC 7143 §11.9). Its ITT is always 0xffffffff.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: Lun,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub event: AsyncEvent,
    pub vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
}

/// Reject (RFC 7143 §11.17). The data segment holds the rejected PDU's header.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: RejectReason,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub data_sn_or_r2t_sn: SerialNumber,
}

/// A header with an opcode RFC 7143 does not define, kept whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownBhs {
    pub raw: [u8; BHS_LEN],
}

impl UnknownBhs {
    pub fn opcode(&self) -> Opcode {
        Opcode(self.raw[0] & 0x3f)
    }
}

// ---- field access ----------------------------------------------------------------------

fn u16_at(b: &[u8; BHS_LEN], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8; BHS_LEN], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn sn_at(b: &[u8; BHS_LEN], off: usize) -> SerialNumber {
    SerialNumber(u32_at(b, off))
}
fn lun_at(b: &[u8; BHS_LEN]) -> Lun {
    let mut l = [0u8; 8];
    l.copy_from_slice(&b[8..16]);
    Lun(l)
}
fn itt_at(b: &[u8; BHS_LEN]) -> Itt {
    Itt(u32_at(b, 16))
}
fn ttt_at(b: &[u8; BHS_LEN]) -> Ttt {
    Ttt(u32_at(b, 20))
}
fn isid_at(b: &[u8; BHS_LEN]) -> Isid {
    let mut i = [0u8; 6];
    i.copy_from_slice(&b[8..14]);
    Isid(i)
}

fn put16(b: &mut [u8; BHS_LEN], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8; BHS_LEN], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
fn put_sn(b: &mut [u8; BHS_LEN], off: usize, v: SerialNumber) {
    put32(b, off, v.0)
}
fn put_lun(b: &mut [u8; BHS_LEN], l: Lun) {
    b[8..16].copy_from_slice(&l.0);
}
fn put_isid(b: &mut [u8; BHS_LEN], i: Isid) {
    b[8..14].copy_from_slice(&i.0);
}
fn bit(b: u8, mask: u8) -> bool {
    b & mask != 0
}
fn flag(v: bool, mask: u8) -> u8 {
    if v {
        mask
    } else {
        0
    }
}

impl Bhs {
    /// The opcode of this header.
    pub fn opcode(&self) -> Opcode {
        match self {
            Bhs::NopOut(_) => Opcode::NOP_OUT,
            Bhs::ScsiCommand(_) => Opcode::SCSI_COMMAND,
            Bhs::TaskMgmtRequest(_) => Opcode::TASK_MGMT_REQUEST,
            Bhs::LoginRequest(_) => Opcode::LOGIN_REQUEST,
            Bhs::TextRequest(_) => Opcode::TEXT_REQUEST,
            Bhs::DataOut(_) => Opcode::DATA_OUT,
            Bhs::LogoutRequest(_) => Opcode::LOGOUT_REQUEST,
            Bhs::SnackRequest(_) => Opcode::SNACK_REQUEST,
            Bhs::NopIn(_) => Opcode::NOP_IN,
            Bhs::ScsiResponse(_) => Opcode::SCSI_RESPONSE,
            Bhs::TaskMgmtResponse(_) => Opcode::TASK_MGMT_RESPONSE,
            Bhs::LoginResponse(_) => Opcode::LOGIN_RESPONSE,
            Bhs::TextResponse(_) => Opcode::TEXT_RESPONSE,
            Bhs::DataIn(_) => Opcode::DATA_IN,
            Bhs::LogoutResponse(_) => Opcode::LOGOUT_RESPONSE,
            Bhs::R2t(_) => Opcode::R2T,
            Bhs::AsyncMessage(_) => Opcode::ASYNC_MESSAGE,
            Bhs::Reject(_) => Opcode::REJECT,
            Bhs::Unknown(u) => u.opcode(),
        }
    }

    /// The Initiator Task Tag, for PDUs that carry one.
    pub fn itt(&self) -> Option<Itt> {
        Some(match self {
            Bhs::NopOut(h) => h.itt,
            Bhs::ScsiCommand(h) => h.itt,
            Bhs::TaskMgmtRequest(h) => h.itt,
            Bhs::LoginRequest(h) => h.itt,
            Bhs::TextRequest(h) => h.itt,
            Bhs::DataOut(h) => h.itt,
            Bhs::LogoutRequest(h) => h.itt,
            Bhs::SnackRequest(h) => h.itt,
            Bhs::NopIn(h) => h.itt,
            Bhs::ScsiResponse(h) => h.itt,
            Bhs::TaskMgmtResponse(h) => h.itt,
            Bhs::LoginResponse(h) => h.itt,
            Bhs::TextResponse(h) => h.itt,
            Bhs::DataIn(h) => h.itt,
            Bhs::LogoutResponse(h) => h.itt,
            Bhs::R2t(h) => h.itt,
            Bhs::AsyncMessage(_) | Bhs::Reject(_) | Bhs::Unknown(_) => return None,
        })
    }

    /// Whether the I (immediate) bit is set (initiator PDUs only).
    pub fn is_immediate(&self) -> bool {
        match self {
            Bhs::NopOut(h) => h.immediate,
            Bhs::ScsiCommand(h) => h.immediate,
            Bhs::TaskMgmtRequest(h) => h.immediate,
            Bhs::LoginRequest(_) => true,
            Bhs::TextRequest(h) => h.immediate,
            Bhs::LogoutRequest(h) => h.immediate,
            _ => false,
        }
    }

    /// Decode the typed fields of a BHS. Never fails: unknown opcodes become `Unknown`.
    pub fn decode(b: &[u8; BHS_LEN]) -> Bhs {
        let imm = bit(b[0], IMMEDIATE);
        let f = b[1];
        match Opcode(b[0] & 0x3f) {
            Opcode::NOP_OUT => Bhs::NopOut(NopOut {
                immediate: imm,
                lun: lun_at(b),
                itt: itt_at(b),
                ttt: ttt_at(b),
                cmd_sn: sn_at(b, 24),
                exp_stat_sn: sn_at(b, 28),
            }),
            Opcode::SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Bhs::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_bit: bit(f, FINAL),
                    read: bit(f, 0x40),
                    write: bit(f, 0x20),
                    attr: TaskAttr(f & 0x07),
                    lun: lun_at(b),
                    itt: itt_at(b),
                    expected_data_transfer_length: u32_at(b, 20),
                    cmd_sn: sn_at(b, 24),
                    exp_stat_sn: sn_at(b, 28),
                    cdb,
                })
            }
            Opcode::TASK_MGMT_REQUEST => Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: imm,
                function: TmfFunction(f & 0x7f),
                lun: lun_at(b),
                itt: itt_at(b),
                referenced_task_tag: Itt(u32_at(b, 20)),
                cmd_sn: sn_at(b, 24),
                exp_stat_sn: sn_at(b, 28),
                ref_cmd_sn: sn_at(b, 32),
                exp_data_sn: sn_at(b, 36),
            }),
            Opcode::LOGIN_REQUEST => Bhs::LoginRequest(LoginRequest {
                transit: bit(f, TRANSIT),
                continue_bit: bit(f, CONTINUE),
                csg: Stage((f >> 2) & 0x3),
                nsg: Stage(f & 0x3),
                version_max: b[2],
                version_min: b[3],
                isid: isid_at(b),
                tsih: Tsih(u16_at(b, 14)),
                itt: itt_at(b),
                cid: Cid(u16_at(b, 20)),
                cmd_sn: sn_at(b, 24),
                exp_stat_sn: sn_at(b, 28),
            }),
            Opcode::TEXT_REQUEST => Bhs::TextRequest(TextRequest {
                immediate: imm,
                final_bit: bit(f, FINAL),
                continue_bit: bit(f, CONTINUE),
                lun: lun_at(b),
                itt: itt_at(b),
                ttt: ttt_at(b),
                cmd_sn: sn_at(b, 24),
                exp_stat_sn: sn_at(b, 28),
            }),
            Opcode::DATA_OUT => Bhs::DataOut(DataOut {
                final_bit: bit(f, FINAL),
                lun: lun_at(b),
                itt: itt_at(b),
                ttt: ttt_at(b),
                exp_stat_sn: sn_at(b, 28),
                data_sn: sn_at(b, 36),
                buffer_offset: u32_at(b, 40),
            }),
            Opcode::LOGOUT_REQUEST => Bhs::LogoutRequest(LogoutRequest {
                immediate: imm,
                reason: LogoutReason(f & 0x7f),
                itt: itt_at(b),
                cid: Cid(u16_at(b, 20)),
                cmd_sn: sn_at(b, 24),
                exp_stat_sn: sn_at(b, 28),
            }),
            Opcode::SNACK_REQUEST => Bhs::SnackRequest(SnackRequest {
                kind: SnackType(f & 0x0f),
                lun: lun_at(b),
                itt: itt_at(b),
                ttt_or_snack_tag: u32_at(b, 20),
                exp_stat_sn: sn_at(b, 28),
                beg_run: u32_at(b, 40),
                run_length: u32_at(b, 44),
            }),
            Opcode::NOP_IN => Bhs::NopIn(NopIn {
                lun: lun_at(b),
                itt: itt_at(b),
                ttt: ttt_at(b),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
            }),
            Opcode::SCSI_RESPONSE => Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: bit(f, 0x10),
                bidi_underflow: bit(f, 0x08),
                overflow: bit(f, 0x04),
                underflow: bit(f, 0x02),
                response: ScsiResponseCode(b[2]),
                status: b[3],
                itt: itt_at(b),
                snack_tag: u32_at(b, 20),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
                exp_data_sn: sn_at(b, 36),
                bidi_read_residual_count: u32_at(b, 40),
                residual_count: u32_at(b, 44),
            }),
            Opcode::TASK_MGMT_RESPONSE => Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: TmfResponse(b[2]),
                itt: itt_at(b),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
            }),
            Opcode::LOGIN_RESPONSE => Bhs::LoginResponse(LoginResponse {
                transit: bit(f, TRANSIT),
                continue_bit: bit(f, CONTINUE),
                csg: Stage((f >> 2) & 0x3),
                nsg: Stage(f & 0x3),
                version_max: b[2],
                version_active: b[3],
                isid: isid_at(b),
                tsih: Tsih(u16_at(b, 14)),
                itt: itt_at(b),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
                status: LoginStatus(u16_at(b, 36)),
            }),
            Opcode::TEXT_RESPONSE => Bhs::TextResponse(TextResponse {
                final_bit: bit(f, FINAL),
                continue_bit: bit(f, CONTINUE),
                lun: lun_at(b),
                itt: itt_at(b),
                ttt: ttt_at(b),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
            }),
            Opcode::DATA_IN => Bhs::DataIn(DataIn {
                final_bit: bit(f, FINAL),
                acknowledge: bit(f, 0x40),
                overflow: bit(f, 0x04),
                underflow: bit(f, 0x02),
                status_present: bit(f, 0x01),
                status: b[3],
                lun: lun_at(b),
                itt: itt_at(b),
                ttt: ttt_at(b),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
                data_sn: sn_at(b, 36),
                buffer_offset: u32_at(b, 40),
                residual_count: u32_at(b, 44),
            }),
            Opcode::LOGOUT_RESPONSE => Bhs::LogoutResponse(LogoutResponse {
                response: LogoutResponseCode(b[2]),
                itt: itt_at(b),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
                time2wait: u16_at(b, 40),
                time2retain: u16_at(b, 42),
            }),
            Opcode::R2T => Bhs::R2t(R2t {
                lun: lun_at(b),
                itt: itt_at(b),
                ttt: ttt_at(b),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
                r2t_sn: sn_at(b, 36),
                buffer_offset: u32_at(b, 40),
                desired_data_transfer_length: u32_at(b, 44),
            }),
            Opcode::ASYNC_MESSAGE => Bhs::AsyncMessage(AsyncMessage {
                lun: lun_at(b),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
                event: AsyncEvent(b[36]),
                vcode: b[37],
                parameter1: u16_at(b, 38),
                parameter2: u16_at(b, 40),
                parameter3: u16_at(b, 42),
            }),
            Opcode::REJECT => Bhs::Reject(Reject {
                reason: RejectReason(b[2]),
                stat_sn: sn_at(b, 24),
                exp_cmd_sn: sn_at(b, 28),
                max_cmd_sn: sn_at(b, 32),
                data_sn_or_r2t_sn: sn_at(b, 36),
            }),
            _ => Bhs::Unknown(UnknownBhs { raw: *b }),
        }
    }

    /// Encode into `b`, which must be zeroed, with the given TotalAHSLength (in 4-byte words)
    /// and DataSegmentLength. Reserved fields stay zero; fixed bits are set.
    pub fn encode(&self, b: &mut [u8; BHS_LEN], total_ahs_words: u8, data_len: u32) {
        if let Bhs::Unknown(u) = self {
            *b = u.raw;
            b[4] = total_ahs_words;
            b[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
            return;
        }
        b[0] = self.opcode().0 | flag(self.is_immediate(), IMMEDIATE);
        b[4] = total_ahs_words;
        b[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
        match self {
            Bhs::NopOut(h) => {
                b[1] = FINAL;
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.ttt.0);
                put_sn(b, 24, h.cmd_sn);
                put_sn(b, 28, h.exp_stat_sn);
            }
            Bhs::ScsiCommand(h) => {
                b[1] = flag(h.final_bit, FINAL)
                    | flag(h.read, 0x40)
                    | flag(h.write, 0x20)
                    | (h.attr.0 & 0x07);
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.expected_data_transfer_length);
                put_sn(b, 24, h.cmd_sn);
                put_sn(b, 28, h.exp_stat_sn);
                b[32..48].copy_from_slice(&h.cdb);
            }
            Bhs::TaskMgmtRequest(h) => {
                b[1] = 0x80 | (h.function.0 & 0x7f);
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.referenced_task_tag.0);
                put_sn(b, 24, h.cmd_sn);
                put_sn(b, 28, h.exp_stat_sn);
                put_sn(b, 32, h.ref_cmd_sn);
                put_sn(b, 36, h.exp_data_sn);
            }
            Bhs::LoginRequest(h) => {
                b[1] = flag(h.transit, TRANSIT)
                    | flag(h.continue_bit, CONTINUE)
                    | ((h.csg.0 & 0x3) << 2)
                    | (h.nsg.0 & 0x3);
                b[2] = h.version_max;
                b[3] = h.version_min;
                put_isid(b, h.isid);
                put16(b, 14, h.tsih.0);
                put32(b, 16, h.itt.0);
                put16(b, 20, h.cid.0);
                put_sn(b, 24, h.cmd_sn);
                put_sn(b, 28, h.exp_stat_sn);
            }
            Bhs::TextRequest(h) => {
                b[1] = flag(h.final_bit, FINAL) | flag(h.continue_bit, CONTINUE);
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.ttt.0);
                put_sn(b, 24, h.cmd_sn);
                put_sn(b, 28, h.exp_stat_sn);
            }
            Bhs::DataOut(h) => {
                b[1] = flag(h.final_bit, FINAL);
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.ttt.0);
                put_sn(b, 28, h.exp_stat_sn);
                put_sn(b, 36, h.data_sn);
                put32(b, 40, h.buffer_offset);
            }
            Bhs::LogoutRequest(h) => {
                b[1] = 0x80 | (h.reason.0 & 0x7f);
                put32(b, 16, h.itt.0);
                put16(b, 20, h.cid.0);
                put_sn(b, 24, h.cmd_sn);
                put_sn(b, 28, h.exp_stat_sn);
            }
            Bhs::SnackRequest(h) => {
                b[1] = 0x80 | (h.kind.0 & 0x0f);
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.ttt_or_snack_tag);
                put_sn(b, 28, h.exp_stat_sn);
                put32(b, 40, h.beg_run);
                put32(b, 44, h.run_length);
            }
            Bhs::NopIn(h) => {
                b[1] = FINAL;
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.ttt.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
            }
            Bhs::ScsiResponse(h) => {
                b[1] = 0x80
                    | flag(h.bidi_overflow, 0x10)
                    | flag(h.bidi_underflow, 0x08)
                    | flag(h.overflow, 0x04)
                    | flag(h.underflow, 0x02);
                b[2] = h.response.0;
                b[3] = h.status;
                put32(b, 16, h.itt.0);
                put32(b, 20, h.snack_tag);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
                put_sn(b, 36, h.exp_data_sn);
                put32(b, 40, h.bidi_read_residual_count);
                put32(b, 44, h.residual_count);
            }
            Bhs::TaskMgmtResponse(h) => {
                b[1] = 0x80;
                b[2] = h.response.0;
                put32(b, 16, h.itt.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
            }
            Bhs::LoginResponse(h) => {
                b[1] = flag(h.transit, TRANSIT)
                    | flag(h.continue_bit, CONTINUE)
                    | ((h.csg.0 & 0x3) << 2)
                    | (h.nsg.0 & 0x3);
                b[2] = h.version_max;
                b[3] = h.version_active;
                put_isid(b, h.isid);
                put16(b, 14, h.tsih.0);
                put32(b, 16, h.itt.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
                put16(b, 36, h.status.0);
            }
            Bhs::TextResponse(h) => {
                b[1] = flag(h.final_bit, FINAL) | flag(h.continue_bit, CONTINUE);
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.ttt.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
            }
            Bhs::DataIn(h) => {
                b[1] = flag(h.final_bit, FINAL)
                    | flag(h.acknowledge, 0x40)
                    | flag(h.overflow, 0x04)
                    | flag(h.underflow, 0x02)
                    | flag(h.status_present, 0x01);
                b[3] = h.status;
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.ttt.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
                put_sn(b, 36, h.data_sn);
                put32(b, 40, h.buffer_offset);
                put32(b, 44, h.residual_count);
            }
            Bhs::LogoutResponse(h) => {
                b[1] = 0x80;
                b[2] = h.response.0;
                put32(b, 16, h.itt.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
                put16(b, 40, h.time2wait);
                put16(b, 42, h.time2retain);
            }
            Bhs::R2t(h) => {
                b[1] = 0x80;
                put_lun(b, h.lun);
                put32(b, 16, h.itt.0);
                put32(b, 20, h.ttt.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
                put_sn(b, 36, h.r2t_sn);
                put32(b, 40, h.buffer_offset);
                put32(b, 44, h.desired_data_transfer_length);
            }
            Bhs::AsyncMessage(h) => {
                b[1] = 0x80;
                put_lun(b, h.lun);
                put32(b, 16, Itt::RESERVED.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
                b[36] = h.event.0;
                b[37] = h.vcode;
                put16(b, 38, h.parameter1);
                put16(b, 40, h.parameter2);
                put16(b, 42, h.parameter3);
            }
            Bhs::Reject(h) => {
                b[1] = 0x80;
                b[2] = h.reason.0;
                put32(b, 16, Itt::RESERVED.0);
                put_sn(b, 24, h.stat_sn);
                put_sn(b, 28, h.exp_cmd_sn);
                put_sn(b, 32, h.max_cmd_sn);
                put_sn(b, 36, h.data_sn_or_r2t_sn);
            }
            Bhs::Unknown(_) => unreachable!("handled above"),
        }
    }
}
