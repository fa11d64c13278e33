//! The target side of one connection in full feature phase (RFC 7143, ERL 0), sans-IO.
//!
//! [`TargetConnection`] is fed PDUs ([`TargetConnection::handle_pdu`]), completions of SCSI
//! tasks ([`TargetConnection::complete`]) and the passage of time
//! ([`TargetConnection::handle_timeout`]); it returns PDUs to send
//! ([`TargetConnection::poll_transmit`]) and events for its owner
//! ([`TargetConnection::poll_event`]). It never performs I/O and never reads a clock.
//!
//! What it does for its owner:
//! - orders commands by CmdSN and keeps the command window (ExpCmdSN/MaxCmdSN) open as far
//!   as the queue depth allows, silently ignoring commands outside it (RFC 7143 §4.2.2.1);
//! - collects write data from immediate data, unsolicited Data-Out and R2T-solicited
//!   Data-Out (honouring InitialR2T, ImmediateData, FirstBurstLength, MaxBurstLength and
//!   MaxOutstandingR2T), checking TTT, DataSN and buffer offsets; hands the whole command to
//!   the owner only when all its data is in;
//! - turns a completion into Data-In PDUs (DataSN, MaxBurstLength sequences, peer's
//!   MaxRecvDataSegmentLength) with the status collapsed into the last one when there is no
//!   sense, or a SCSI Response, with residual counts;
//! - answers NOP-Out pings, pings an idle initiator with NOP-In and fails the connection when
//!   the answer does not come; task management; logout; Text framing; Reject for what it
//!   cannot accept.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use iscsi_pdu::*;

use crate::params::{ConnectionParams, SessionParams};

/// Tunables of the target side of a connection.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// Commands the session may have outstanding (the CmdSN window). 128 keeps a QD-128
    /// initiator busy while bounding what one session can make us buffer.
    pub queue_depth: u32,
    /// Send a NOP-In ping after this much silence from the initiator; `None` disables.
    pub nop_in_interval: Option<Duration>,
    /// Fail the connection when a ping is not answered (by anything) within this time.
    pub nop_in_timeout: Duration,
    /// Largest ExpectedDataTransferLength we buffer for one write. Larger writes are refused
    /// with CHECK CONDITION rather than letting one command claim unbounded memory; 32 MiB is
    /// four times the MAXIMUM TRANSFER LENGTH the target advertises in VPD 0xB0.
    pub max_write_buffer: u32,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            queue_depth: 128,
            nop_in_interval: Some(Duration::from_secs(10)),
            nop_in_timeout: Duration::from_secs(10),
            max_write_buffer: 32 << 20,
        }
    }
}

/// A SCSI command ready to execute: all its Data-Out has arrived.
#[derive(Clone, Debug)]
pub struct ScsiTask {
    pub itt: Itt,
    pub lun: Lun,
    /// The whole CDB (16 bytes of the BHS plus any Extended CDB AHS).
    pub cdb: Bytes,
    pub attr: TaskAttr,
    pub cmd_sn: SerialNumber,
    pub immediate: bool,
    /// The initiator's ExpectedDataTransferLength.
    pub expected_data_transfer_length: u32,
    /// R bit.
    pub read: bool,
    /// W bit.
    pub write: bool,
    /// Everything the initiator sent for a write (ExpectedDataTransferLength bytes).
    pub data_out: Bytes,
}

/// The result of executing a SCSI task.
#[derive(Clone, Debug, Default)]
pub struct ScsiOutcome {
    /// SCSI status byte.
    pub status: u8,
    /// Sense data (fixed or descriptor format), sent in a SCSI Response.
    pub sense: Option<Bytes>,
    /// Data for the initiator; truncated to ExpectedDataTransferLength with an overflow
    /// residual if longer, an underflow residual if shorter.
    pub data_in: Bytes,
    /// For writes: the byte count the CDB asked to transfer (SPDTL), from which the write
    /// residual is computed against ExpectedDataTransferLength.
    pub data_out_wanted: Option<u32>,
}

/// Something the owner of the connection must act on.
#[derive(Debug)]
pub enum TargetEvent {
    /// Execute this command and call [`TargetConnection::complete`] with the outcome.
    Execute(ScsiTask),
    /// These tasks were aborted (by ABORT TASK, ABORT TASK SET, CLEAR TASK SET, a reset, or
    /// logout); their completions, if they come, are dropped.
    Aborted { itts: Vec<Itt> },
    /// A LOGICAL UNIT RESET or TARGET WARM/COLD RESET to perform; answer with
    /// [`TargetConnection::task_management_done`]. This connection's tasks on the LU are
    /// already aborted.
    Reset {
        itt: Itt,
        function: TmfFunction,
        lun: Lun,
    },
    /// A Text Request (e.g. SendTargets) to answer with [`TargetConnection::text_response`].
    Text { itt: Itt, params: TextParams },
    /// The initiator logged out; close the connection once the transmit queue is drained.
    LoggedOut { reason: LogoutReason },
    /// The connection must be closed now.
    Failed(ConnectionFailure),
    /// A PDU was dropped or refused; the reason is for the log.
    Discarded { opcode: Opcode, reason: String },
}

/// Why a connection cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionFailure {
    #[error("no answer to NOP-In ping within {0:?}")]
    PingTimeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Sense for "write data arrived wrong": ABORTED COMMAND / DATA PHASE ERROR (0x4b/0x00).
const SENSE_DATA_PHASE_ERROR: [u8; 18] = fixed_sense(0x0b, 0x4b, 0x00);
/// ABORTED COMMAND / PROTOCOL SERVICE CRC ERROR (0x47/0x05): a Data-Out failed its digest.
const SENSE_DATA_DIGEST: [u8; 18] = fixed_sense(0x0b, 0x47, 0x05);
/// ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION UNIT (0x0e/0x03): the CDB asks
/// for more write data than ExpectedDataTransferLength (FCP-4 and SAM-5 option (b)).
const SENSE_INVALID_FIELD_IN_IU: [u8; 18] = fixed_sense(0x05, 0x0e, 0x03);

impl ScsiOutcome {
    /// The answer to a write whose CDB asks for `wanted` bytes, more than the initiator's
    /// ExpectedDataTransferLength: nothing is written, CHECK CONDITION with ILLEGAL REQUEST /
    /// INVALID FIELD IN COMMAND INFORMATION UNIT and an overflow residual (FCP-4 option b,
    /// which libiscsi's residual tests accept).
    pub fn write_overflow(wanted: u32) -> ScsiOutcome {
        ScsiOutcome {
            status: CHECK_CONDITION,
            sense: Some(Bytes::from_static(&SENSE_INVALID_FIELD_IN_IU)),
            data_in: Bytes::new(),
            data_out_wanted: Some(wanted),
        }
    }
}
/// ILLEGAL REQUEST / INVALID FIELD IN CDB: an ExpectedDataTransferLength we will not buffer.
const SENSE_INVALID_FIELD_IN_CDB: [u8; 18] = fixed_sense(0x05, 0x24, 0x00);

const fn fixed_sense(key: u8, asc: u8, ascq: u8) -> [u8; 18] {
    let mut s = [0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

/// SCSI status CHECK CONDITION.
const CHECK_CONDITION: u8 = 0x02;
/// SCSI status GOOD.
const GOOD: u8 = 0x00;

/// The target side of one full-feature connection.
pub struct TargetConnection {
    cfg: TargetConfig,
    session: SessionParams,
    conn: ConnectionParams,
    exp_cmd_sn: SerialNumber,
    max_cmd_sn: SerialNumber,
    /// StatSN of the next status-bearing PDU.
    stat_sn: SerialNumber,
    tasks: HashMap<Itt, Task>,
    next_ttt: u32,
    text: Option<TextExchange>,
    last_rx: Instant,
    ping: Option<Ping>,
    state: State,
    transmit: VecDeque<Pdu>,
    events: VecDeque<TargetEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    LoggedOut,
    Failed,
}

struct Ping {
    deadline: Instant,
}

struct Task {
    lun: Lun,
    /// ExpectedDataTransferLength, against which residuals are computed.
    edtl: u32,
    phase: TaskPhase,
}

enum TaskPhase {
    /// Waiting for Data-Out.
    Collecting(Box<WriteState>),
    /// Handed to the owner; waiting for `complete`.
    Executing,
    /// A reset is in progress for this TMF.
    TaskMgmt,
}

struct WriteState {
    cmd: ScsiTask,
    buf: BytesMut,
    received: u32,
    /// Unsolicited Data-Out (TTT 0xffffffff) may cover [unsol_next, unsol_end).
    unsol_next: u32,
    unsol_end: u32,
    unsol_data_sn: SerialNumber,
    /// Next offset not yet solicited by an R2T.
    solicit_next: u32,
    r2t_sn: SerialNumber,
    r2ts: Vec<R2tState>,
}

struct R2tState {
    ttt: Ttt,
    next_offset: u32,
    end: u32,
    data_sn: SerialNumber,
}

struct TextExchange {
    itt: Itt,
    /// Request text accumulated over C-bit continuations.
    request: Vec<u8>,
    /// Response text still to send, with the TTT the initiator must echo to get it.
    pending: Option<(Ttt, Bytes)>,
}

impl TargetConnection {
    /// Start full feature phase. `exp_cmd_sn` is the CmdSN of the last Login Request (login
    /// PDUs are immediate, so the first command carries it); `stat_sn` is the StatSN after
    /// the last Login Response; `max_cmd_sn` what that response advertised.
    pub fn new(
        cfg: TargetConfig,
        session: SessionParams,
        conn: ConnectionParams,
        exp_cmd_sn: SerialNumber,
        max_cmd_sn: SerialNumber,
        stat_sn: SerialNumber,
        now: Instant,
    ) -> TargetConnection {
        let mut c = TargetConnection {
            cfg,
            session,
            conn,
            exp_cmd_sn,
            max_cmd_sn,
            stat_sn,
            tasks: HashMap::new(),
            next_ttt: 1,
            text: None,
            last_rx: now,
            ping: None,
            state: State::Running,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        };
        c.refresh_window();
        c
    }

    pub fn session(&self) -> &SessionParams {
        &self.session
    }

    pub fn connection(&self) -> &ConnectionParams {
        &self.conn
    }

    /// Decoding limits for received PDUs.
    pub fn decode_config(&self) -> DecodeConfig {
        DecodeConfig {
            digests: self.conn.digests(),
            max_recv_data_segment_length: self.conn.max_recv_data_segment_length,
        }
    }

    /// Tasks received and not yet answered.
    pub fn outstanding_tasks(&self) -> usize {
        self.tasks.len()
    }

    pub fn exp_cmd_sn(&self) -> SerialNumber {
        self.exp_cmd_sn
    }

    pub fn max_cmd_sn(&self) -> SerialNumber {
        self.max_cmd_sn
    }

    /// Next PDU to send.
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        self.transmit.pop_front()
    }

    /// Next event for the owner.
    pub fn poll_event(&mut self) -> Option<TargetEvent> {
        self.events.pop_front()
    }

    /// When [`TargetConnection::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Running {
            return None;
        }
        match (&self.ping, self.cfg.nop_in_interval) {
            (Some(p), _) => Some(p.deadline),
            (None, Some(iv)) => Some(self.last_rx + iv),
            (None, None) => None,
        }
    }

    /// Let time pass: send a keepalive ping, or fail the connection if one went unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Running {
            return;
        }
        if let Some(p) = &self.ping {
            if now >= p.deadline {
                self.fail(ConnectionFailure::PingTimeout(self.cfg.nop_in_timeout));
            }
            return;
        }
        if let Some(iv) = self.cfg.nop_in_interval {
            if now >= self.last_rx + iv {
                let ttt = self.alloc_ttt();
                self.ping = Some(Ping {
                    deadline: now + self.cfg.nop_in_timeout,
                });
                let h = NopIn {
                    lun: Lun::default(),
                    itt: Itt::RESERVED,
                    ttt,
                    stat_sn: self.stat_sn,
                    exp_cmd_sn: self.exp_cmd_sn,
                    max_cmd_sn: self.max_cmd_sn,
                };
                self.transmit.push_back(Pdu::new(Bhs::NopIn(h)));
            }
        }
    }

    /// The owner stopped reading the connection for a while and reads again (a silenced
    /// portal, under fault injection). The silence was ours, not the initiator's: the
    /// keepalive starts over as if the initiator had just been heard from, since an answer
    /// to a ping sent before may be waiting unread in the socket.
    pub fn resume(&mut self, now: Instant) {
        if self.state != State::Running {
            return;
        }
        self.last_rx = now;
        self.ping = None;
    }

    /// A PDU arrived.
    pub fn handle_pdu(&mut self, pdu: Pdu, now: Instant) {
        if self.state != State::Running {
            return;
        }
        // Any PDU proves the initiator alive; a pending ping need not be answered to count.
        self.last_rx = now;
        self.ping = None;

        let opcode = pdu.opcode();
        if !pdu.bhs.is_immediate() && self.takes_cmd_sn(&pdu.bhs) {
            let cmd_sn = cmd_sn_of(&pdu.bhs);
            // With every slot taken ExpCmdSN is MaxCmdSN + 1: the next CmdSN is outside the
            // window too, and taking it anyway would let an initiator that ignores MaxCmdSN
            // queue commands (and their write buffers) past the queue depth.
            if cmd_sn != self.exp_cmd_sn || cmd_sn > self.max_cmd_sn {
                // RFC 7143 §4.2.2.1: outside [ExpCmdSN, MaxCmdSN] or a duplicate → silently
                // ignore. Inside the window but ahead of ExpCmdSN can only come from a
                // connection we do not have (MaxConnections=1): nothing will fill the gap.
                self.discard(
                    opcode,
                    format!(
                        "CmdSN {} is not ExpCmdSN {} (window up to MaxCmdSN {})",
                        cmd_sn, self.exp_cmd_sn, self.max_cmd_sn
                    ),
                );
                return;
            }
            self.exp_cmd_sn = self.exp_cmd_sn.next();
        }

        match pdu.bhs {
            Bhs::ScsiCommand(_) => self.on_scsi_command(pdu),
            Bhs::DataOut(ref h) => {
                let h = h.clone();
                self.on_data_out(h, pdu);
            }
            Bhs::NopOut(ref h) => {
                let h = h.clone();
                self.on_nop_out(h, pdu.data);
            }
            Bhs::TaskMgmtRequest(h) => self.on_task_mgmt(h),
            Bhs::TextRequest(ref h) => {
                let h = h.clone();
                self.on_text(h, pdu.data);
            }
            Bhs::LogoutRequest(h) => self.on_logout(h),
            Bhs::SnackRequest(_) => self.reject(
                RejectReason::SNACK_REJECT,
                &pdu,
                "SNACK at ErrorRecoveryLevel 0",
            ),
            Bhs::LoginRequest(_) => self.reject(
                RejectReason::PROTOCOL_ERROR,
                &pdu,
                "Login Request in full feature phase",
            ),
            Bhs::Unknown(_) => {
                self.reject(RejectReason::COMMAND_NOT_SUPPORTED, &pdu, "unknown opcode")
            }
            _ => self.reject(
                RejectReason::PROTOCOL_ERROR,
                &pdu,
                "target opcode sent by an initiator",
            ),
        }
        self.refresh_window();
    }

    /// A PDU failed to decode in a way that leaves the stream usable (data digest error,
    /// malformed AHS): answer with a Reject quoting its header, and fail the write it
    /// belonged to.
    pub fn handle_decode_error(&mut self, err: &iscsi_pdu::DecodeError, now: Instant) {
        if self.state != State::Running {
            return;
        }
        self.last_rx = now;
        let Some(header) = err.rejected_header() else {
            self.fail(ConnectionFailure::Protocol(err.to_string()));
            return;
        };
        let reason = match err {
            DecodeError::DataDigest { .. } => RejectReason::DATA_DIGEST_ERROR,
            _ => RejectReason::INVALID_PDU_FIELD,
        };
        let bhs = Bhs::decode(header);
        self.send_reject(reason, Bytes::copy_from_slice(header));
        self.discard(bhs.opcode(), err.to_string());
        // ERL 0 cannot re-request the data: the task it belonged to cannot complete well.
        if let (Bhs::DataOut(h), DecodeError::DataDigest { .. }) = (&bhs, err) {
            self.fail_write(h.itt, &SENSE_DATA_DIGEST);
        }
        // A command whose own PDU was lost never entered the task table; its CmdSN is
        // consumed so the window does not stall behind it. The same holds for every other
        // PDU that takes a CmdSN (a NOP-Out ping or Text Request with data): with one
        // connection nothing else could fill the gap, and every later command would be
        // ignored as out of order.
        let cmd_sn = cmd_sn_of(&bhs);
        if !bhs.is_immediate()
            && self.takes_cmd_sn(&bhs)
            && cmd_sn == self.exp_cmd_sn
            && cmd_sn <= self.max_cmd_sn
        {
            self.exp_cmd_sn = self.exp_cmd_sn.next();
        }
        self.refresh_window();
    }

    /// A task finished executing. Completions of unknown or aborted tasks are dropped.
    pub fn complete(&mut self, itt: Itt, outcome: ScsiOutcome) {
        let Some(task) = self.tasks.remove(&itt) else {
            return;
        };
        if !matches!(task.phase, TaskPhase::Executing) {
            // Completion for a task still collecting data: the owner cannot know it; keep it.
            self.tasks.insert(itt, task);
            return;
        }
        if self.state != State::Running {
            return;
        }
        // The freed slot is advertised in this very response.
        self.refresh_window();
        self.send_completion(itt, task.lun, task.edtl, outcome);
    }

    /// The owner finished a reset it was asked for by [`TargetEvent::Reset`].
    pub fn task_management_done(&mut self, itt: Itt, response: TmfResponse) {
        if self.tasks.remove(&itt).is_none() || self.state != State::Running {
            return;
        }
        self.send_tmf_response(itt, response);
    }

    /// Answer a [`TargetEvent::Text`]. Long answers are split into Text Responses with the C
    /// bit; the initiator collects the rest with empty Text Requests echoing our TTT.
    pub fn text_response(&mut self, itt: Itt, params: TextParams) {
        let Some(ex) = self.text.as_mut() else {
            return;
        };
        if ex.itt != itt || self.state != State::Running {
            return;
        }
        let body = Bytes::from(params.encode());
        self.send_text_chunk(itt, body);
    }

    /// Abort every task (connection closing). Returns the ITTs the owner may still be
    /// executing.
    pub fn abort_all(&mut self) -> Vec<Itt> {
        let itts: Vec<Itt> = self.tasks.keys().copied().collect();
        self.tasks.clear();
        itts
    }

    // ---- receive paths ---------------------------------------------------------------

    fn takes_cmd_sn(&self, bhs: &Bhs) -> bool {
        matches!(
            bhs,
            Bhs::ScsiCommand(_)
                | Bhs::NopOut(_)
                | Bhs::TaskMgmtRequest(_)
                | Bhs::TextRequest(_)
                | Bhs::LogoutRequest(_)
        ) && !matches!(bhs, Bhs::NopOut(n) if n.itt == Itt::RESERVED)
    }

    fn on_scsi_command(&mut self, pdu: Pdu) {
        let cdb = match pdu.full_cdb() {
            Some(c) => Bytes::from(c),
            None => return,
        };
        let Bhs::ScsiCommand(h) = &pdu.bhs else {
            return;
        };
        let itt = h.itt;
        if itt == Itt::RESERVED || self.tasks.contains_key(&itt) {
            self.reject(
                RejectReason::TASK_IN_PROGRESS,
                &pdu,
                &format!("{:?} is already in use", itt),
            );
            return;
        }
        let edtl = h.expected_data_transfer_length;
        let immediate_len = pdu.data.len() as u32;
        let task = ScsiTask {
            itt,
            lun: h.lun,
            cdb,
            attr: h.attr,
            cmd_sn: h.cmd_sn,
            immediate: h.immediate,
            expected_data_transfer_length: edtl,
            read: h.read,
            write: h.write,
            data_out: Bytes::new(),
        };

        if !h.write {
            if immediate_len > 0 {
                self.reject(
                    RejectReason::PROTOCOL_ERROR,
                    &pdu,
                    "immediate data on a command without the W bit",
                );
                return;
            }
            self.start(task);
            return;
        }

        if immediate_len > 0 && !self.session.immediate_data {
            self.reject(
                RejectReason::PROTOCOL_ERROR,
                &pdu,
                "immediate data when ImmediateData=No",
            );
            return;
        }
        let first_burst = self.session.first_burst_length.min(edtl);
        if immediate_len > first_burst {
            self.reject(
                RejectReason::PROTOCOL_ERROR,
                &pdu,
                &format!(
                    "{} bytes of immediate data exceed FirstBurstLength/EDTL {}",
                    immediate_len, first_burst
                ),
            );
            return;
        }
        if edtl > self.cfg.max_write_buffer {
            // Refuse without buffering; late unsolicited Data-Out for it will be ignored.
            self.tasks.insert(
                itt,
                Task {
                    lun: h.lun,
                    edtl,
                    phase: TaskPhase::Executing,
                },
            );
            self.complete(
                itt,
                ScsiOutcome {
                    status: CHECK_CONDITION,
                    sense: Some(Bytes::from_static(&SENSE_INVALID_FIELD_IN_CDB)),
                    ..Default::default()
                },
            );
            return;
        }
        if immediate_len == edtl {
            let mut task = task;
            task.data_out = pdu.data;
            self.start(task);
            return;
        }
        // Unsolicited Data-Out follows only when InitialR2T=No and the F bit is clear.
        let unsol_end = if !self.session.initial_r2t && !h.final_bit {
            first_burst
        } else {
            immediate_len
        };
        let mut buf = BytesMut::zeroed(edtl as usize);
        buf[..immediate_len as usize].copy_from_slice(&pdu.data);
        let ws = WriteState {
            cmd: task,
            buf,
            received: immediate_len,
            unsol_next: immediate_len,
            unsol_end,
            unsol_data_sn: SerialNumber(0),
            solicit_next: unsol_end,
            r2t_sn: SerialNumber(0),
            r2ts: Vec::new(),
        };
        self.tasks.insert(
            itt,
            Task {
                lun: h.lun,
                edtl,
                phase: TaskPhase::Collecting(Box::new(ws)),
            },
        );
        self.issue_r2ts(itt);
    }

    fn start(&mut self, task: ScsiTask) {
        self.tasks.insert(
            task.itt,
            Task {
                lun: task.lun,
                edtl: task.expected_data_transfer_length,
                phase: TaskPhase::Executing,
            },
        );
        self.events.push_back(TargetEvent::Execute(task));
    }

    fn on_data_out(&mut self, h: DataOut, pdu: Pdu) {
        let len = pdu.data.len() as u32;
        let Some(task) = self.tasks.get_mut(&h.itt) else {
            // Late data of an aborted or already-failed task: RFC 7143 lets us drop it.
            self.discard(
                Opcode::DATA_OUT,
                format!("Data-Out for unknown {:?}", h.itt),
            );
            return;
        };
        let TaskPhase::Collecting(ws) = &mut task.phase else {
            self.discard(
                Opcode::DATA_OUT,
                format!("Data-Out for {:?} which is not collecting data", h.itt),
            );
            return;
        };
        let end = h.buffer_offset.checked_add(len);
        let check = if h.ttt == Ttt::RESERVED {
            if h.buffer_offset != ws.unsol_next {
                Err(format!(
                    "unsolicited Data-Out at offset {} where {} was expected",
                    h.buffer_offset, ws.unsol_next
                ))
            } else if end.is_none_or(|e| e > ws.unsol_end) {
                Err(format!(
                    "unsolicited Data-Out ends past FirstBurstLength ({})",
                    ws.unsol_end
                ))
            } else if h.data_sn != ws.unsol_data_sn {
                Err(format!(
                    "unsolicited Data-Out DataSN {} where {} was expected",
                    h.data_sn, ws.unsol_data_sn
                ))
            } else {
                ws.unsol_next += len;
                ws.unsol_data_sn = ws.unsol_data_sn.next();
                Ok(None)
            }
        } else {
            match ws.r2ts.iter().position(|r| r.ttt == h.ttt) {
                None => Err(format!("Data-Out with unknown {:?}", h.ttt)),
                Some(i) => {
                    let r = &mut ws.r2ts[i];
                    if h.buffer_offset != r.next_offset {
                        Err(format!(
                            "Data-Out at offset {} where {} was expected",
                            h.buffer_offset, r.next_offset
                        ))
                    } else if end.is_none_or(|e| e > r.end) {
                        Err(format!("Data-Out runs past its R2T (end {})", r.end))
                    } else if h.data_sn != r.data_sn {
                        Err(format!(
                            "Data-Out DataSN {} where {} was expected",
                            h.data_sn, r.data_sn
                        ))
                    } else {
                        r.next_offset += len;
                        r.data_sn = r.data_sn.next();
                        Ok((r.next_offset == r.end).then_some(i))
                    }
                }
            }
        };
        match check {
            Err(reason) => {
                self.send_reject(RejectReason::PROTOCOL_ERROR, header_bytes(&pdu));
                self.discard(Opcode::DATA_OUT, reason);
                self.fail_write(h.itt, &SENSE_DATA_PHASE_ERROR);
            }
            Ok(done_r2t) => {
                let off = h.buffer_offset as usize;
                ws.buf[off..off + len as usize].copy_from_slice(&pdu.data);
                ws.received += len;
                if let Some(i) = done_r2t {
                    ws.r2ts.swap_remove(i);
                }
                let all_in = ws.received == ws.cmd.expected_data_transfer_length;
                if all_in {
                    let Some(Task {
                        phase: TaskPhase::Collecting(ws),
                        ..
                    }) = self.tasks.remove(&h.itt)
                    else {
                        return;
                    };
                    let mut cmd = ws.cmd;
                    cmd.data_out = ws.buf.freeze();
                    self.start(cmd);
                } else if done_r2t.is_some() {
                    self.issue_r2ts(h.itt);
                }
            }
        }
    }

    fn on_nop_out(&mut self, h: NopOut, data: Bytes) {
        if h.itt == Itt::RESERVED {
            // An answer to our ping (or a bare keepalive): nothing to send.
            return;
        }
        let nop = NopIn {
            lun: h.lun,
            itt: h.itt,
            ttt: Ttt::RESERVED,
            stat_sn: self.take_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        };
        // The ping data comes back; it is bounded by our MaxRecvDataSegmentLength already,
        // and must fit the initiator's.
        let n = data
            .len()
            .min(self.conn.max_send_data_segment_length as usize);
        self.transmit
            .push_back(Pdu::with_data(Bhs::NopIn(nop), data.slice(..n)));
    }

    fn on_task_mgmt(&mut self, h: TaskMgmtRequest) {
        match h.function {
            TmfFunction::ABORT_TASK => {
                let found = self
                    .tasks
                    .get(&h.referenced_task_tag)
                    .is_some_and(|t| !matches!(t.phase, TaskPhase::TaskMgmt));
                let response = if found {
                    self.tasks.remove(&h.referenced_task_tag);
                    self.events.push_back(TargetEvent::Aborted {
                        itts: vec![h.referenced_task_tag],
                    });
                    TmfResponse::COMPLETE
                } else {
                    TmfResponse::NO_TASK
                };
                self.send_tmf_response(h.itt, response);
            }
            TmfFunction::ABORT_TASK_SET | TmfFunction::CLEAR_TASK_SET => {
                self.abort_lun(h.lun);
                self.send_tmf_response(h.itt, TmfResponse::COMPLETE);
            }
            TmfFunction::LOGICAL_UNIT_RESET
            | TmfFunction::TARGET_WARM_RESET
            | TmfFunction::TARGET_COLD_RESET => {
                if h.function == TmfFunction::LOGICAL_UNIT_RESET {
                    self.abort_lun(h.lun);
                } else {
                    let itts = self.abort_all();
                    if !itts.is_empty() {
                        self.events.push_back(TargetEvent::Aborted { itts });
                    }
                }
                self.tasks.insert(
                    h.itt,
                    Task {
                        lun: h.lun,
                        edtl: 0,
                        phase: TaskPhase::TaskMgmt,
                    },
                );
                self.events.push_back(TargetEvent::Reset {
                    itt: h.itt,
                    function: h.function,
                    lun: h.lun,
                });
            }
            TmfFunction::TASK_REASSIGN => {
                self.send_tmf_response(h.itt, TmfResponse::REASSIGN_UNSUPPORTED)
            }
            _ => self.send_tmf_response(h.itt, TmfResponse::NOT_SUPPORTED),
        }
    }

    fn on_text(&mut self, h: TextRequest, data: Bytes) {
        // Continuation of a long answer we are sending.
        if h.ttt != Ttt::RESERVED {
            let pending = self
                .text
                .as_mut()
                .filter(|t| t.itt == h.itt)
                .and_then(|t| t.pending.take());
            match pending {
                Some((ttt, rest)) if ttt == h.ttt => self.send_text_chunk(h.itt, rest),
                _ => {
                    let pdu = Pdu::new(Bhs::TextRequest(h));
                    self.reject(
                        RejectReason::PROTOCOL_ERROR,
                        &pdu,
                        "Text Request with a TTT we did not give",
                    );
                }
            }
            return;
        }
        let ex = match self.text.as_mut() {
            Some(t) if t.itt == h.itt && t.pending.is_none() => t,
            _ => self.text.insert(TextExchange {
                itt: h.itt,
                request: Vec::new(),
                pending: None,
            }),
        };
        ex.request.extend_from_slice(&data);
        if h.continue_bit {
            // More request text follows: acknowledge with an empty response.
            let r = TextResponse {
                final_bit: false,
                continue_bit: false,
                lun: h.lun,
                itt: h.itt,
                ttt: self.alloc_ttt(),
                stat_sn: self.take_stat_sn(),
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
            };
            self.transmit.push_back(Pdu::new(Bhs::TextResponse(r)));
            return;
        }
        let request = std::mem::take(&mut ex.request);
        match TextParams::decode(&request) {
            Ok(params) => self
                .events
                .push_back(TargetEvent::Text { itt: h.itt, params }),
            Err(e) => {
                self.text = None;
                let pdu = Pdu::new(Bhs::TextRequest(h));
                self.reject(RejectReason::PROTOCOL_ERROR, &pdu, &e.to_string());
            }
        }
    }

    fn on_logout(&mut self, h: LogoutRequest) {
        let response = match h.reason {
            LogoutReason::CLOSE_SESSION => LogoutResponseCode::SUCCESS,
            LogoutReason::CLOSE_CONNECTION => LogoutResponseCode::SUCCESS,
            LogoutReason::REMOVE_FOR_RECOVERY => LogoutResponseCode::RECOVERY_UNSUPPORTED,
            _ => LogoutResponseCode::CLEANUP_FAILED,
        };
        let r = LogoutResponse {
            response,
            itt: h.itt,
            stat_sn: self.take_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            // ERL 0 keeps no state for connection recovery.
            time2wait: 0,
            time2retain: 0,
        };
        self.transmit.push_back(Pdu::new(Bhs::LogoutResponse(r)));
        if response == LogoutResponseCode::SUCCESS {
            let itts = self.abort_all();
            if !itts.is_empty() {
                self.events.push_back(TargetEvent::Aborted { itts });
            }
            self.state = State::LoggedOut;
            self.events
                .push_back(TargetEvent::LoggedOut { reason: h.reason });
        }
    }

    // ---- send paths ------------------------------------------------------------------

    fn issue_r2ts(&mut self, itt: Itt) {
        let max_burst = self.session.max_burst_length.max(512);
        let max_out = self.session.max_outstanding_r2t.max(1) as usize;
        let mut ttts = Vec::new();
        if let Some(Task {
            phase: TaskPhase::Collecting(ws),
            ..
        }) = self.tasks.get(&itt)
        {
            let mut next = ws.solicit_next;
            let edtl = ws.cmd.expected_data_transfer_length;
            let mut n = ws.r2ts.len();
            while next < edtl && n < max_out {
                let len = (edtl - next).min(max_burst);
                ttts.push((next, len));
                next += len;
                n += 1;
            }
        }
        for (offset, len) in ttts {
            let ttt = self.alloc_ttt();
            let stat_sn = self.stat_sn;
            let (exp, max) = (self.exp_cmd_sn, self.max_cmd_sn);
            let Some(Task {
                phase: TaskPhase::Collecting(ws),
                lun,
                ..
            }) = self.tasks.get_mut(&itt)
            else {
                return;
            };
            ws.r2ts.push(R2tState {
                ttt,
                next_offset: offset,
                end: offset + len,
                data_sn: SerialNumber(0),
            });
            ws.solicit_next = offset + len;
            let r2t = R2t {
                lun: *lun,
                itt,
                ttt,
                stat_sn,
                exp_cmd_sn: exp,
                max_cmd_sn: max,
                r2t_sn: ws.r2t_sn,
                buffer_offset: offset,
                desired_data_transfer_length: len,
            };
            ws.r2t_sn = ws.r2t_sn.next();
            self.transmit.push_back(Pdu::new(Bhs::R2t(r2t)));
        }
    }

    fn send_completion(&mut self, itt: Itt, lun: Lun, edtl: u32, outcome: ScsiOutcome) {
        let mut data = outcome.data_in;
        // Residuals (RFC 7143 §11.4.5): for reads from the data the LU produced, for writes
        // from what the CDB asked to transfer.
        let wanted = match outcome.data_out_wanted {
            Some(w) => w,
            None => data.len() as u32,
        };
        let (overflow, underflow, residual) = if wanted > edtl {
            (true, false, wanted - edtl)
        } else if wanted < edtl {
            (false, true, edtl - wanted)
        } else {
            (false, false, 0)
        };
        if data.len() as u32 > edtl {
            data.truncate(edtl as usize);
        }

        let collapse = outcome.status == GOOD && outcome.sense.is_none() && !data.is_empty();
        let mut data_sn = SerialNumber(0);
        if !data.is_empty() {
            let seg = self.conn.max_send_data_segment_length.max(512) as usize;
            let burst = self.session.max_burst_length.max(512) as usize;
            let total = data.len();
            let mut off = 0usize;
            while off < total {
                let burst_end = (off / burst + 1) * burst;
                let end = (off + seg).min(total).min(burst_end);
                let last = end == total;
                let status_here = last && collapse;
                let h = DataIn {
                    final_bit: last || end == burst_end,
                    acknowledge: false,
                    overflow: status_here && overflow,
                    underflow: status_here && underflow,
                    status_present: status_here,
                    status: if status_here { outcome.status } else { 0 },
                    lun,
                    itt,
                    ttt: Ttt::RESERVED,
                    stat_sn: if status_here {
                        self.take_stat_sn()
                    } else {
                        SerialNumber(0)
                    },
                    exp_cmd_sn: self.exp_cmd_sn,
                    max_cmd_sn: self.max_cmd_sn,
                    data_sn,
                    buffer_offset: off as u32,
                    residual_count: if status_here { residual } else { 0 },
                };
                data_sn = data_sn.next();
                self.transmit
                    .push_back(Pdu::with_data(Bhs::DataIn(h), data.slice(off..end)));
                off = end;
            }
        }
        if collapse {
            return;
        }
        let data_seg = match &outcome.sense {
            Some(s) => {
                let mut v = Vec::with_capacity(2 + s.len());
                v.extend_from_slice(&(s.len() as u16).to_be_bytes());
                v.extend_from_slice(s);
                Bytes::from(v)
            }
            None => Bytes::new(),
        };
        let r = ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow,
            underflow,
            response: ScsiResponseCode::COMPLETED,
            status: outcome.status,
            itt,
            snack_tag: 0,
            stat_sn: self.take_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            exp_data_sn: data_sn,
            bidi_read_residual_count: 0,
            residual_count: residual,
        };
        self.transmit
            .push_back(Pdu::with_data(Bhs::ScsiResponse(r), data_seg));
    }

    fn send_tmf_response(&mut self, itt: Itt, response: TmfResponse) {
        let r = TaskMgmtResponse {
            response,
            itt,
            stat_sn: self.take_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        };
        self.transmit.push_back(Pdu::new(Bhs::TaskMgmtResponse(r)));
    }

    fn send_text_chunk(&mut self, itt: Itt, body: Bytes) {
        let max = self.conn.max_send_data_segment_length.max(512) as usize;
        let (now, rest) = if body.len() > max {
            (body.slice(..max), Some(body.slice(max..)))
        } else {
            (body, None)
        };
        let ttt = if rest.is_some() {
            self.alloc_ttt()
        } else {
            Ttt::RESERVED
        };
        let r = TextResponse {
            final_bit: rest.is_none(),
            continue_bit: rest.is_some(),
            lun: Lun::default(),
            itt,
            ttt,
            stat_sn: self.take_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        };
        self.transmit
            .push_back(Pdu::with_data(Bhs::TextResponse(r), now));
        match rest {
            Some(rest) => {
                if let Some(ex) = self.text.as_mut() {
                    ex.pending = Some((ttt, rest));
                }
            }
            None => self.text = None,
        }
    }

    fn reject(&mut self, reason: RejectReason, pdu: &Pdu, why: &str) {
        self.send_reject(reason, header_bytes(pdu));
        self.discard(pdu.opcode(), why.to_string());
    }

    fn send_reject(&mut self, reason: RejectReason, header: Bytes) {
        let r = Reject {
            reason,
            stat_sn: self.take_stat_sn(),
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            data_sn_or_r2t_sn: SerialNumber(0),
        };
        self.transmit
            .push_back(Pdu::with_data(Bhs::Reject(r), header));
    }

    /// Fail a write whose data went wrong: answer it now and forget it. The status ends the
    /// task for the initiator, which may reuse its ITT at once (a task kept in the table
    /// would refuse that with Reject "task in progress" and hold a slot of the command
    /// window forever); the rest of its data is then dropped as Data-Out for an unknown ITT.
    fn fail_write(&mut self, itt: Itt, sense: &'static [u8]) {
        if !matches!(
            self.tasks.get(&itt).map(|t| &t.phase),
            Some(TaskPhase::Collecting(_))
        ) {
            return;
        }
        let Some(task) = self.tasks.remove(&itt) else {
            return;
        };
        let (lun, edtl) = (task.lun, task.edtl);
        self.refresh_window();
        self.send_completion(
            itt,
            lun,
            edtl,
            ScsiOutcome {
                status: CHECK_CONDITION,
                sense: Some(Bytes::from_static(sense)),
                ..Default::default()
            },
        );
    }

    fn abort_lun(&mut self, lun: Lun) {
        let itts: Vec<Itt> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.lun == lun && !matches!(t.phase, TaskPhase::TaskMgmt))
            .map(|(i, _)| *i)
            .collect();
        for i in &itts {
            self.tasks.remove(i);
        }
        if !itts.is_empty() {
            self.events.push_back(TargetEvent::Aborted { itts });
        }
    }

    fn fail(&mut self, f: ConnectionFailure) {
        self.state = State::Failed;
        self.events.push_back(TargetEvent::Failed(f));
    }

    fn discard(&mut self, opcode: Opcode, reason: String) {
        self.events
            .push_back(TargetEvent::Discarded { opcode, reason });
    }

    fn take_stat_sn(&mut self) -> SerialNumber {
        let s = self.stat_sn;
        self.stat_sn = s.next();
        s
    }

    fn alloc_ttt(&mut self) -> Ttt {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == Ttt::RESERVED.0 {
            self.next_ttt = 1;
        }
        Ttt(t)
    }

    /// Open the window as far as the queue depth allows; MaxCmdSN never moves back
    /// (initiators ignore a smaller one anyway).
    fn refresh_window(&mut self) {
        let free = self.cfg.queue_depth.saturating_sub(self.tasks.len() as u32);
        let candidate = SerialNumber(self.exp_cmd_sn.0.wrapping_add(free).wrapping_sub(1));
        if candidate > self.max_cmd_sn {
            self.max_cmd_sn = candidate;
        }
    }
}

fn cmd_sn_of(bhs: &Bhs) -> SerialNumber {
    match bhs {
        Bhs::ScsiCommand(h) => h.cmd_sn,
        Bhs::NopOut(h) => h.cmd_sn,
        Bhs::TaskMgmtRequest(h) => h.cmd_sn,
        Bhs::TextRequest(h) => h.cmd_sn,
        Bhs::LogoutRequest(h) => h.cmd_sn,
        _ => SerialNumber(0),
    }
}

/// The 48-byte header of `pdu` as a Reject's data segment.
fn header_bytes(pdu: &Pdu) -> Bytes {
    let mut b = BytesMut::with_capacity(pdu.encoded_len(Digests::NONE));
    pdu.encode_header(Digests::NONE, &mut b);
    b.truncate(48);
    b.freeze()
}
