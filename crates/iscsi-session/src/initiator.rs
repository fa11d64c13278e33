//! The initiator side of one connection in full feature phase (RFC 7143, ERL 0), sans-IO,
//! with mpath's failure detector.
//!
//! [`InitiatorConnection`] takes commands ([`InitiatorConnection::submit`]), received PDUs
//! ([`InitiatorConnection::handle_pdu`]), news that bytes arrived
//! ([`InitiatorConnection::on_bytes_received`]) and the passage of time
//! ([`InitiatorConnection::handle_timeout`]); it returns PDUs to send, completions and
//! events. It never performs I/O and never reads a clock.
//!
//! ## Failure detection
//! A connection is declared dead, with the reason kept, when:
//! - **idle** (no command outstanding) and silent for `keepalive_interval`, a NOP-Out ping is
//!   sent; no byte back within `keepalive_timeout` → [`FailureKind::KeepaliveTimeout`];
//! - **busy** (commands outstanding) and silent for `stall_silence` — no byte at all, not a
//!   whole PDU — a NOP-Out ping is sent (immediate: it needs no CmdSN window); no byte back
//!   within the *stall ping timeout* → [`FailureKind::Stalled`]. The ping timeout adapts to
//!   the link: `max(stall_ping_floor, stall_rtt_factor × SRTT)`, SRTT being the smoothed
//!   round trip of the login and of ping answers. A slow command on a healthy target is
//!   proven alive by the ping answer; a busy-but-slow link is proven alive by any byte; a
//!   link that suddenly gets slower than the floor is caught by the floor's margin, and
//!   then SRTT adapts. At the defaults a silent blackhole is declared within
//!   `stall_silence + stall_ping_floor` = 350 ms.
//! - a command outlives `command_timeout`: ABORT TASK is sent; unanswered within
//!   `abort_timeout`, LOGICAL UNIT RESET follows; that unanswered within `abort_timeout` too
//!   → [`FailureKind::CommandTimeout`];
//! - commands wait for a CmdSN window the target keeps closed for `window_timeout` with
//!   nothing outstanding at the target → [`FailureKind::Protocol`];
//! - the target breaks the protocol (wrong ITT, DataSN gap, data beyond the expected
//!   length or offset, a Data-In for a write, malformed sense...) → [`FailureKind::Protocol`].
//!
//! On failure every outstanding command is handed back ([`InitiatorConnection::take_all`])
//! so the layer above can complete it with a path error at once.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use iscsi_pdu::*;

use crate::params::{ConnectionParams, SessionParams};

/// Tunables of the initiator side of a connection.
#[derive(Clone, Debug)]
pub struct InitiatorConfig {
    /// Ping an idle connection after this much silence.
    pub keepalive_interval: Duration,
    /// Declare an idle connection dead when its ping is not answered in this time.
    pub keepalive_timeout: Duration,
    /// With commands outstanding, this much silence makes us ping.
    pub stall_silence: Duration,
    /// The least time a stall ping is given to be answered. It must exceed the round trip of
    /// any link we do not want to fail, including a link that just got slower.
    pub stall_ping_floor: Duration,
    /// The stall ping timeout is at least this many smoothed round trips.
    pub stall_rtt_factor: u32,
    /// A command older than this is aborted (ABORT TASK).
    pub command_timeout: Duration,
    /// Time for an ABORT TASK (or any sign of life) before the connection is failed.
    pub abort_timeout: Duration,
    /// How long queued commands may wait for a CmdSN window the target keeps closed while
    /// nothing is outstanding at the target.
    pub window_timeout: Duration,
}

impl Default for InitiatorConfig {
    fn default() -> Self {
        InitiatorConfig {
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            stall_silence: Duration::from_millis(100),
            stall_ping_floor: Duration::from_millis(250),
            stall_rtt_factor: 4,
            command_timeout: Duration::from_secs(30),
            abort_timeout: Duration::from_secs(5),
            window_timeout: Duration::from_secs(10),
        }
    }
}

/// Direction and size of a command's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDir {
    None,
    /// Read up to this many bytes (ExpectedDataTransferLength).
    Read(u32),
    /// Write these bytes.
    Write(Bytes),
}

/// A SCSI command to send.
#[derive(Clone, Debug)]
pub struct Command {
    pub lun: Lun,
    /// CDB; up to 16 bytes go in the BHS, the rest in an Extended CDB AHS.
    pub cdb: Bytes,
    pub data: DataDir,
    pub attr: TaskAttr,
}

/// What the target answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandResponse {
    /// SCSI status (GOOD, CHECK CONDITION, BUSY...).
    pub status: u8,
    /// Sense data, if any.
    pub sense: Bytes,
    /// Data-In received (its length is EDTL minus an underflow residual).
    pub data: Bytes,
    /// Residual reported by the target: positive = underflow, negative = overflow.
    pub residual: i64,
}

/// How a command ended without a SCSI status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The target rejected the command PDU.
    #[error("rejected by the target: {0}")]
    Rejected(RejectReason),
    /// iSCSI response "target failure" (not a SCSI status).
    #[error("iSCSI target failure response")]
    TargetFailure,
    /// The command timed out and was aborted.
    #[error("timed out after {0:?} and was aborted")]
    TimedOut(Duration),
    /// Aborted by a LOGICAL UNIT RESET we sent for another command that timed out; it never
    /// reached the medium, or did before the reset — it may be retried.
    #[error("aborted by a LOGICAL UNIT RESET")]
    Aborted,
    /// The command was too large to send (CDB, data).
    #[error("invalid command: {0}")]
    Invalid(&'static str),
}

/// Why a connection failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    KeepaliveTimeout,
    Stalled,
    CommandTimeout,
    Protocol,
    /// The target asked us to log out or said it drops the connection.
    TargetRequest,
}

/// A connection failure with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = match self.kind {
            FailureKind::KeepaliveTimeout => "keepalive timeout",
            FailureKind::Stalled => "stalled with commands outstanding",
            FailureKind::CommandTimeout => "command timeout",
            FailureKind::Protocol => "protocol error",
            FailureKind::TargetRequest => "target request",
        };
        write!(f, "{k}: {}", self.detail)
    }
}

/// Something for the owner of the connection.
#[derive(Debug)]
pub enum InitiatorEvent {
    /// A command finished.
    Completed {
        itt: Itt,
        result: Result<CommandResponse, CommandError>,
    },
    /// The connection is dead; call [`InitiatorConnection::take_all`] and close it.
    Failed(Failure),
    /// SCSI asynchronous event (sense data from the target, e.g. a capacity change).
    ScsiAsyncEvent { lun: Lun, sense: Bytes },
    /// The logout we asked for completed.
    LoggedOut,
    /// A round trip measured by a ping or the login (for observability).
    RoundTrip(Duration),
}

/// One command waiting for or in flight at the target.
struct Task {
    cmd: Command,
    /// Assigned when sent.
    cmd_sn: Option<SerialNumber>,
    sent_at: Option<Instant>,
    /// Read data gathered so far.
    data_in: BytesMut,
    expected_data_sn: SerialNumber,
    /// R2Ts are answered by offset; R2TSN must increase.
    next_r2t_sn: SerialNumber,
    /// ABORT TASK sent at.
    aborting: Option<Instant>,
}

/// A liveness probe: satisfied by any byte received after it was sent.
struct Ping {
    sent: Instant,
    deadline: Instant,
    /// True: a stall ping (commands outstanding); false: an idle keepalive.
    stall: bool,
    /// Its timeout was started over once because this process was starved while it was
    /// out ([`InitiatorConnection::starved`]); a second starvation does not extend it.
    extended: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Running,
    LoggingOut,
    Done,
}

/// A duration for a failure reason, to the millisecond: "352 ms".
fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// How long a command round trip counts for the stall detector's estimate (it keeps the
/// fastest of the current and the previous window).
const CMD_RTT_WINDOW: Duration = Duration::from_secs(10);

/// The initiator side of one full-feature connection.
pub struct InitiatorConnection {
    cfg: InitiatorConfig,
    session: SessionParams,
    conn: ConnectionParams,
    cmd_sn: SerialNumber,
    exp_cmd_sn: SerialNumber,
    max_cmd_sn: SerialNumber,
    exp_stat_sn: SerialNumber,
    next_itt: u32,
    tasks: HashMap<Itt, Task>,
    /// Commands not yet sent (CmdSN window closed), in order.
    waiting: VecDeque<Itt>,
    /// Since when the window has been closed with commands waiting.
    window_closed_since: Option<Instant>,
    /// ABORT TASK requests in flight: TMF ITT → the task it aborts.
    aborts: HashMap<Itt, Itt>,
    /// LOGICAL UNIT RESET requests in flight: TMF ITT → (LUN, sent at).
    lu_resets: HashMap<Itt, (Lun, Instant)>,
    ping: Option<Ping>,
    /// The last ping's ITT and send time, kept until its NOP-In measures the round trip
    /// (the probe itself may be satisfied earlier by other bytes).
    rtt_probe: Option<(Itt, Instant)>,
    last_rx: Instant,
    srtt: Option<Duration>,
    /// The fastest command round trips (send to status) of the current and the previous
    /// [`CMD_RTT_WINDOW`]: an upper bound of the network's round trip that steady load
    /// keeps fresh, where pings (sent only on silence) do not. It corrects a seed taken
    /// from a login that waited on a silent portal.
    cmd_rtt_min: [Option<Duration>; 2],
    cmd_rtt_window: Instant,
    logout_itt: Option<Itt>,
    state: State,
    transmit: VecDeque<Pdu>,
    events: VecDeque<InitiatorEvent>,
}

impl InitiatorConnection {
    /// Start full feature phase after a successful login. `cmd_sn` is the CmdSN of the last
    /// Login Request (the first command carries it), `exp_stat_sn` the StatSN after the
    /// final Login Response's; `login_rtt` seeds the round-trip estimate.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: InitiatorConfig,
        session: SessionParams,
        conn: ConnectionParams,
        cmd_sn: SerialNumber,
        exp_cmd_sn: SerialNumber,
        max_cmd_sn: SerialNumber,
        exp_stat_sn: SerialNumber,
        login_rtt: Option<Duration>,
        now: Instant,
    ) -> InitiatorConnection {
        InitiatorConnection {
            cfg,
            session,
            conn,
            cmd_sn,
            exp_cmd_sn,
            max_cmd_sn,
            exp_stat_sn,
            next_itt: 1,
            tasks: HashMap::new(),
            waiting: VecDeque::new(),
            window_closed_since: None,
            aborts: HashMap::new(),
            lu_resets: HashMap::new(),
            ping: None,
            rtt_probe: None,
            last_rx: now,
            srtt: login_rtt,
            cmd_rtt_min: [None, None],
            cmd_rtt_window: now,
            logout_itt: None,
            state: State::Running,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn session(&self) -> &SessionParams {
        &self.session
    }

    pub fn connection(&self) -> &ConnectionParams {
        &self.conn
    }

    /// Decoding limits for PDUs from the target.
    pub fn decode_config(&self) -> DecodeConfig {
        DecodeConfig {
            digests: self.conn.digests(),
            max_recv_data_segment_length: self.conn.max_recv_data_segment_length,
        }
    }

    /// Commands submitted and not completed.
    pub fn outstanding(&self) -> usize {
        self.tasks.len()
    }

    /// The smoothed round-trip estimate.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Whether the connection still accepts commands.
    pub fn is_running(&self) -> bool {
        self.state == State::Running
    }

    /// Queue a command. Returns its ITT, under which it completes.
    pub fn submit(&mut self, cmd: Command, now: Instant) -> Itt {
        let itt = self.alloc_itt();
        let ok = match &cmd.data {
            DataDir::Read(n) => *n <= MAX_TRANSFER,
            DataDir::Write(b) => b.len() as u64 <= MAX_TRANSFER as u64,
            DataDir::None => true,
        };
        if self.state != State::Running || !ok || cmd.cdb.is_empty() || cmd.cdb.len() > 260 {
            let err = if ok && !cmd.cdb.is_empty() && cmd.cdb.len() <= 260 {
                CommandError::Invalid("connection is not running")
            } else {
                CommandError::Invalid("CDB or data length out of range")
            };
            self.events.push_back(InitiatorEvent::Completed {
                itt,
                result: Err(err),
            });
            return itt;
        }
        self.tasks.insert(
            itt,
            Task {
                cmd,
                cmd_sn: None,
                sent_at: None,
                data_in: BytesMut::new(),
                expected_data_sn: SerialNumber(0),
                next_r2t_sn: SerialNumber(0),
                aborting: None,
            },
        );
        self.waiting.push_back(itt);
        self.flush_waiting(now);
        itt
    }

    /// Log out (close the session). Commands still outstanding are left to complete.
    pub fn logout(&mut self, now: Instant) {
        if self.state != State::Running {
            return;
        }
        let itt = self.alloc_itt();
        self.logout_itt = Some(itt);
        self.state = State::LoggingOut;
        let h = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CLOSE_SESSION,
            itt,
            cid: Cid(0),
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.transmit.push_back(Pdu::new(Bhs::LogoutRequest(h)));
        let _ = now;
    }

    /// Every command not yet completed, with its command, in submission order of ITT. Use
    /// after a failure to complete them all with a path error.
    pub fn take_all(&mut self) -> Vec<(Itt, Command)> {
        self.waiting.clear();
        self.aborts.clear();
        self.lu_resets.clear();
        let mut v: Vec<(Itt, Command)> = self.tasks.drain().map(|(i, t)| (i, t.cmd)).collect();
        v.sort_by_key(|(i, _)| *i);
        v
    }

    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<InitiatorEvent> {
        self.events.pop_front()
    }

    /// Bytes arrived (any number, even part of a PDU): the connection is alive.
    pub fn on_bytes_received(&mut self, now: Instant) {
        self.last_rx = now;
        if self.ping.as_ref().is_some_and(|p| now >= p.sent) {
            // Proof of life. The ping's answer, when it comes, still measures the round trip.
            self.ping = None;
        }
    }

    /// The layer above suspects this connection: a command on it has gone unanswered well
    /// past its usual latency while another path answered the same request. With commands
    /// outstanding and no ping out, the stall ping goes now instead of after
    /// `stall_silence`; its timeout is the usual one, and any byte that arrives answers it.
    /// It only starts the check earlier: it never fails the connection by itself.
    pub fn probe(&mut self, now: Instant) {
        if self.state != State::Done && self.sent_count() > 0 && self.ping.is_none() {
            self.send_ping(now);
        }
    }

    /// When [`InitiatorConnection::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Done {
            return None;
        }
        let mut t = None;
        let mut at = |x: Instant| {
            t = Some(match t {
                Some(y) if y < x => y,
                _ => x,
            })
        };
        match &self.ping {
            Some(p) => at(p.deadline),
            None => at(self.last_rx + self.silence_limit()),
        }
        for task in self.tasks.values() {
            if let Some(s) = task.aborting {
                at(s + self.cfg.abort_timeout);
            } else if let Some(s) = task.sent_at {
                at(s + self.cfg.command_timeout);
            }
        }
        for (_, s) in self.lu_resets.values() {
            at(*s + self.cfg.abort_timeout);
        }
        if let Some(s) = self.window_closed_since {
            at(s + self.cfg.window_timeout);
        }
        t
    }

    /// Let time pass: pings, command timeouts, failure.
    /// When the outstanding ping (if any) was sent: the caller asks its scheduling-lag
    /// monitor whether this process was starved since then (see [`starved`](Self::starved)).
    pub fn ping_sent(&self) -> Option<Instant> {
        self.ping.as_ref().map(|p| p.sent)
    }

    /// This process did not get the CPU for `lag` since the outstanding stall ping was sent
    /// (the caller measured its own scheduling lag). The silence may then be ours, not the
    /// peer's — our reader or writer did not run, or a target on this host did not: when
    /// `lag` is at least a quarter of the ping's timeout, the ping gets its whole timeout
    /// again from `now`, once. A real stall is still declared, one ping timeout later; a
    /// starved machine no longer fails a healthy path. Returns whether it was extended.
    pub fn starved(&mut self, lag: Duration, now: Instant) -> bool {
        let Some(p) = self.ping.as_mut().filter(|p| p.stall && !p.extended) else {
            return false;
        };
        let timeout = p.deadline.saturating_duration_since(p.sent);
        if lag < timeout / 4 {
            return false;
        }
        p.deadline = p.deadline.max(now + timeout);
        p.extended = true;
        true
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        // A ping outstanding and nothing heard since it was sent.
        if let Some(p) = &self.ping {
            if now >= p.deadline {
                let (kind, what) = if p.stall {
                    (
                        FailureKind::Stalled,
                        format!(
                            "{} commands outstanding, nothing received for {}, NOP-Out unanswered for {}{}",
                            self.sent_count(),
                            ms(now - self.last_rx),
                            ms(now - p.sent),
                            if p.extended {
                                " (given a second timeout: this process was starved for CPU)"
                            } else {
                                ""
                            }
                        ),
                    )
                } else {
                    (
                        FailureKind::KeepaliveTimeout,
                        format!("NOP-Out unanswered for {}", ms(now - p.sent)),
                    )
                };
                self.fail(kind, what);
                return;
            }
        }
        if self.ping.is_none() && now >= self.last_rx + self.silence_limit() {
            self.send_ping(now);
        }
        // Escalation: command timeout → ABORT TASK → LOGICAL UNIT RESET → failure.
        if let Some((lun, _)) = self
            .lu_resets
            .values()
            .find(|(_, s)| now >= *s + self.cfg.abort_timeout)
        {
            let detail = format!(
                "a command on {lun:?} timed out after {:?}; neither ABORT TASK nor LOGICAL UNIT RESET was answered within {:?}",
                self.cfg.command_timeout, self.cfg.abort_timeout
            );
            self.fail(FailureKind::CommandTimeout, detail);
            return;
        }
        let mut to_abort = Vec::new();
        let mut to_reset = Vec::new();
        for (itt, t) in &self.tasks {
            match (t.aborting, t.sent_at) {
                (Some(s), _) if now >= s + self.cfg.abort_timeout => to_reset.push(t.cmd.lun),
                (None, Some(s)) if now >= s + self.cfg.command_timeout => to_abort.push(*itt),
                _ => {}
            }
        }
        to_abort.sort();
        for itt in to_abort {
            self.send_abort(itt, now);
        }
        to_reset.dedup();
        for lun in to_reset {
            if !self.lu_resets.values().any(|(l, _)| *l == lun) {
                self.send_lu_reset(lun, now);
            }
        }
        if let Some(s) = self.window_closed_since {
            if now >= s + self.cfg.window_timeout && self.sent_count() == 0 {
                let detail = format!(
                    "CmdSN window closed for {:?} (CmdSN {} > MaxCmdSN {}) with nothing outstanding",
                    now - s,
                    self.cmd_sn,
                    self.max_cmd_sn
                );
                self.fail(FailureKind::Protocol, detail);
            }
        }
    }

    /// A PDU from the target arrived (its bytes were already counted by
    /// [`InitiatorConnection::on_bytes_received`]).
    pub fn handle_pdu(&mut self, pdu: Pdu, now: Instant) {
        if self.state == State::Done {
            return;
        }
        self.last_rx = now;
        let r = match pdu.bhs {
            Bhs::DataIn(ref h) => {
                let h = h.clone();
                self.update_window(h.exp_cmd_sn, h.max_cmd_sn);
                if h.status_present {
                    self.check_stat_sn(h.stat_sn);
                }
                self.on_data_in(h, pdu.data)
            }
            Bhs::ScsiResponse(ref h) => {
                let h = h.clone();
                self.update_window(h.exp_cmd_sn, h.max_cmd_sn);
                self.check_stat_sn(h.stat_sn);
                self.on_scsi_response(h, pdu.data)
            }
            Bhs::R2t(ref h) => {
                let h = h.clone();
                self.update_window(h.exp_cmd_sn, h.max_cmd_sn);
                self.on_r2t(h)
            }
            Bhs::NopIn(ref h) => {
                let h = h.clone();
                self.update_window(h.exp_cmd_sn, h.max_cmd_sn);
                if h.itt != Itt::RESERVED {
                    self.check_stat_sn(h.stat_sn);
                }
                self.on_nop_in(h, pdu.data, now)
            }
            Bhs::TaskMgmtResponse(ref h) => {
                let h = h.clone();
                self.update_window(h.exp_cmd_sn, h.max_cmd_sn);
                self.check_stat_sn(h.stat_sn);
                self.on_tmf_response(h)
            }
            Bhs::Reject(ref h) => {
                let h = h.clone();
                self.update_window(h.exp_cmd_sn, h.max_cmd_sn);
                self.check_stat_sn(h.stat_sn);
                self.on_reject(h, &pdu.data)
            }
            Bhs::AsyncMessage(ref h) => {
                let h = h.clone();
                self.update_window(h.exp_cmd_sn, h.max_cmd_sn);
                self.check_stat_sn(h.stat_sn);
                self.on_async(h, pdu.data)
            }
            Bhs::LogoutResponse(ref h) => {
                let h = h.clone();
                self.update_window(h.exp_cmd_sn, h.max_cmd_sn);
                self.on_logout_response(h)
            }
            Bhs::TextResponse(_) => Err("Text Response we did not ask for".to_string()),
            ref other => Err(format!("unexpected {} from the target", other.opcode())),
        };
        if let Err(detail) = r {
            self.fail(FailureKind::Protocol, detail);
            return;
        }
        self.flush_waiting(now);
    }

    /// A PDU from the target failed to decode but the stream is usable (data digest error):
    /// its data cannot be trusted, so the command it belonged to cannot complete correctly
    /// at ERL 0 — fail the connection and let the layer above retry.
    pub fn handle_decode_error(&mut self, err: &DecodeError) {
        self.fail(
            FailureKind::Protocol,
            format!("undecodable PDU from the target: {err}"),
        );
    }

    // ---- receive paths ---------------------------------------------------------------

    fn on_data_in(&mut self, h: DataIn, data: Bytes) -> Result<(), String> {
        let task = self
            .tasks
            .get_mut(&h.itt)
            .ok_or_else(|| format!("Data-In for unknown {:?}", h.itt))?;
        if task.cmd_sn.is_none() {
            return Err(format!("Data-In for {:?} which was never sent", h.itt));
        }
        let DataDir::Read(edtl) = task.cmd.data else {
            return Err(format!("Data-In for {:?}, which is not a read", h.itt));
        };
        if h.data_sn != task.expected_data_sn {
            return Err(format!(
                "Data-In DataSN {} for {:?} where {} was expected",
                h.data_sn, h.itt, task.expected_data_sn
            ));
        }
        let have = task.data_in.len() as u64;
        if u64::from(h.buffer_offset) != have {
            return Err(format!(
                "Data-In for {:?} at offset {} where {} was expected",
                h.itt, h.buffer_offset, have
            ));
        }
        if have + data.len() as u64 > u64::from(edtl) {
            return Err(format!(
                "Data-In for {:?} runs to {} bytes, beyond the expected {}",
                h.itt,
                have + data.len() as u64,
                edtl
            ));
        }
        task.expected_data_sn = task.expected_data_sn.next();
        if task.data_in.capacity() == 0 {
            task.data_in.reserve(edtl as usize);
        }
        task.data_in.extend_from_slice(&data);
        if h.status_present {
            if !h.final_bit {
                return Err(format!("Data-In with status but without F for {:?}", h.itt));
            }
            let residual = residual(h.underflow, h.overflow, h.residual_count);
            self.finish_with_status(h.itt, h.status, Bytes::new(), residual)?;
        }
        Ok(())
    }

    fn on_scsi_response(&mut self, h: ScsiResponse, data: Bytes) -> Result<(), String> {
        if !self.tasks.contains_key(&h.itt) {
            return Err(format!("SCSI Response for unknown {:?}", h.itt));
        }
        if self.tasks[&h.itt].cmd_sn.is_none() {
            return Err(format!(
                "SCSI Response for {:?} which was never sent",
                h.itt
            ));
        }
        if h.response != ScsiResponseCode::COMPLETED {
            self.complete(h.itt, Err(CommandError::TargetFailure));
            return Ok(());
        }
        let sense = if data.len() >= 2 {
            let n = u16::from_be_bytes([data[0], data[1]]) as usize;
            if 2 + n > data.len() {
                return Err(format!(
                    "SCSI Response for {:?}: SenseLength {} exceeds its data segment ({})",
                    h.itt,
                    n,
                    data.len()
                ));
            }
            data.slice(2..2 + n)
        } else {
            Bytes::new()
        };
        let residual = residual(h.underflow, h.overflow, h.residual_count);
        self.finish_with_status(h.itt, h.status, sense, residual)
    }

    /// Complete a command with its status, checking the data received against what the
    /// target says it sent.
    fn finish_with_status(
        &mut self,
        itt: Itt,
        status: u8,
        sense: Bytes,
        residual: i64,
    ) -> Result<(), String> {
        let Some(task) = self.tasks.get(&itt) else {
            return Ok(());
        };
        if let DataDir::Read(edtl) = task.cmd.data {
            let got = task.data_in.len() as i64;
            // GOOD status promises the data: the bytes received must be exactly what the
            // target says it transferred.
            if status == 0 {
                let expected = if residual > 0 {
                    i64::from(edtl) - residual
                } else {
                    i64::from(edtl)
                };
                if got != expected {
                    return Err(format!(
                        "{itt:?} completed GOOD with {got} bytes of Data-In where {expected} were due"
                    ));
                }
            }
        }
        let Some(mut task) = self.tasks.remove(&itt) else {
            return Ok(());
        };
        if let Some(sent) = task.sent_at {
            self.note_cmd_rtt(self.last_rx.saturating_duration_since(sent));
        }
        let data = std::mem::take(&mut task.data_in).freeze();
        self.events.push_back(InitiatorEvent::Completed {
            itt,
            result: Ok(CommandResponse {
                status,
                sense,
                data,
                residual,
            }),
        });
        Ok(())
    }

    fn on_r2t(&mut self, h: R2t) -> Result<(), String> {
        let max_seg = self.conn.max_send_data_segment_length.max(512) as usize;
        let exp_stat_sn = self.exp_stat_sn;
        let task = self
            .tasks
            .get_mut(&h.itt)
            .ok_or_else(|| format!("R2T for unknown {:?}", h.itt))?;
        let DataDir::Write(data) = &task.cmd.data else {
            return Err(format!("R2T for {:?}, which is not a write", h.itt));
        };
        if h.r2t_sn != task.next_r2t_sn {
            return Err(format!(
                "R2T R2TSN {} for {:?} where {} was expected",
                h.r2t_sn, h.itt, task.next_r2t_sn
            ));
        }
        let end = u64::from(h.buffer_offset) + u64::from(h.desired_data_transfer_length);
        if end > data.len() as u64 || h.desired_data_transfer_length == 0 {
            return Err(format!(
                "R2T for {:?} asks for bytes {}..{} of a {}-byte write",
                h.itt,
                h.buffer_offset,
                end,
                data.len()
            ));
        }
        if h.desired_data_transfer_length > self.session.max_burst_length {
            return Err(format!(
                "R2T for {:?} asks for {} bytes, over MaxBurstLength {}",
                h.itt, h.desired_data_transfer_length, self.session.max_burst_length
            ));
        }
        task.next_r2t_sn = task.next_r2t_sn.next();
        let data = data.clone();
        let lun = task.cmd.lun;
        let mut off = h.buffer_offset as usize;
        let end = end as usize;
        let mut data_sn = SerialNumber(0);
        while off < end {
            let n = (end - off).min(max_seg);
            let d = DataOut {
                final_bit: off + n == end,
                lun,
                itt: h.itt,
                ttt: h.ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset: off as u32,
            };
            data_sn = data_sn.next();
            self.transmit
                .push_back(Pdu::with_data(Bhs::DataOut(d), data.slice(off..off + n)));
            off += n;
        }
        Ok(())
    }

    fn on_nop_in(&mut self, h: NopIn, data: Bytes, now: Instant) -> Result<(), String> {
        if h.ttt != Ttt::RESERVED {
            // The target pings us: answer at once (immediate, no CmdSN consumed).
            let out = NopOut {
                immediate: true,
                lun: h.lun,
                itt: Itt::RESERVED,
                ttt: h.ttt,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            };
            let n = data
                .len()
                .min(self.conn.max_send_data_segment_length as usize);
            self.transmit
                .push_back(Pdu::with_data(Bhs::NopOut(out), data.slice(..n)));
            return Ok(());
        }
        if h.itt == Itt::RESERVED {
            // Unsolicited NOP-In: a window update.
            return Ok(());
        }
        match self.rtt_probe {
            Some((itt, sent)) if itt == h.itt => {
                let rtt = now.saturating_duration_since(sent);
                self.rtt_probe = None;
                self.sample_rtt(rtt);
                self.events.push_back(InitiatorEvent::RoundTrip(rtt));
                Ok(())
            }
            // An answer to a ping we already gave up waiting for (alive anyway).
            _ if h.itt.0 < self.next_itt => Ok(()),
            _ => Err(format!("NOP-In for {:?} we never sent", h.itt)),
        }
    }

    fn on_tmf_response(&mut self, h: TaskMgmtResponse) -> Result<(), String> {
        if let Some((lun, _)) = self.lu_resets.remove(&h.itt) {
            // Every task on the LU is gone: the timed-out ones end as such, the rest were
            // collateral and may be retried.
            let mut on_lun: Vec<(Itt, bool)> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.cmd.lun == lun && t.cmd_sn.is_some())
                .map(|(i, t)| (*i, t.aborting.is_some()))
                .collect();
            on_lun.sort();
            self.aborts
                .retain(|_, t| !on_lun.iter().any(|(i, _)| i == t));
            for (itt, timed_out) in on_lun {
                let e = if timed_out {
                    CommandError::TimedOut(self.cfg.command_timeout)
                } else {
                    CommandError::Aborted
                };
                self.complete(itt, Err(e));
            }
            return Ok(());
        }
        let Some(target) = self.aborts.remove(&h.itt) else {
            return Err(format!("Task Management Response for unknown {:?}", h.itt));
        };
        if h.response != TmfResponse::COMPLETE && h.response != TmfResponse::NO_TASK {
            // The abort did not happen: leave the task aborting; the escalation timer
            // resets the LU if it does not complete.
            return Ok(());
        }
        // FUNCTION COMPLETE: the task is gone and gets no response. TASK DOES NOT EXIST:
        // its response crossed our abort — if it is still here, it is lost; either way it
        // ends now.
        let _ = h.response;
        self.complete(
            target,
            Err(CommandError::TimedOut(self.cfg.command_timeout)),
        );
        Ok(())
    }

    fn on_reject(&mut self, h: Reject, data: &[u8]) -> Result<(), String> {
        let Some(hdr) = data.get(..48) else {
            return Err(format!("Reject ({}) without the rejected header", h.reason));
        };
        let mut b = [0u8; 48];
        b.copy_from_slice(hdr);
        let rejected = Bhs::decode(&b);
        match rejected {
            Bhs::ScsiCommand(c) if self.tasks.contains_key(&c.itt) => {
                self.complete(c.itt, Err(CommandError::Rejected(h.reason)));
                Ok(())
            }
            // A rejected Data-Out, NOP or TMF leaves a command that cannot finish cleanly.
            other => Err(format!(
                "target rejected our {} ({})",
                other.opcode(),
                h.reason
            )),
        }
    }

    fn on_async(&mut self, h: AsyncMessage, data: Bytes) -> Result<(), String> {
        match h.event {
            AsyncEvent::SCSI_EVENT => {
                let sense = if data.len() >= 2 {
                    let n = (u16::from_be_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
                    data.slice(2..2 + n)
                } else {
                    Bytes::new()
                };
                self.events
                    .push_back(InitiatorEvent::ScsiAsyncEvent { lun: h.lun, sense });
                Ok(())
            }
            AsyncEvent::LOGOUT_REQUEST
            | AsyncEvent::CONNECTION_DROP
            | AsyncEvent::SESSION_DROP
            | AsyncEvent::NEGOTIATION_REQUEST => {
                let what = match h.event {
                    AsyncEvent::LOGOUT_REQUEST => "asks for logout",
                    AsyncEvent::NEGOTIATION_REQUEST => "asks for renegotiation",
                    _ => "drops the connection",
                };
                self.fail(
                    FailureKind::TargetRequest,
                    format!("the target {what} (asynchronous event {})", h.event.0),
                );
                Ok(())
            }
            // Task termination and vendor events need nothing from us.
            _ => Ok(()),
        }
    }

    fn on_logout_response(&mut self, h: LogoutResponse) -> Result<(), String> {
        if Some(h.itt) != self.logout_itt {
            return Err(format!("Logout Response for {:?} we never sent", h.itt));
        }
        self.state = State::Done;
        self.events.push_back(InitiatorEvent::LoggedOut);
        Ok(())
    }

    // ---- send paths ------------------------------------------------------------------

    /// Send waiting commands while the CmdSN window allows.
    fn flush_waiting(&mut self, now: Instant) {
        if self.state != State::Running {
            return;
        }
        while let Some(&itt) = self.waiting.front() {
            if self.cmd_sn > self.max_cmd_sn {
                if self.window_closed_since.is_none() {
                    self.window_closed_since = Some(now);
                }
                return;
            }
            self.waiting.pop_front();
            self.send_command(itt, now);
        }
        self.window_closed_since = None;
    }

    fn send_command(&mut self, itt: Itt, now: Instant) {
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.next();
        let exp_stat_sn = self.exp_stat_sn;
        let max_seg = self.conn.max_send_data_segment_length.max(512) as usize;
        let first_burst = self.session.first_burst_length as usize;
        let immediate_data = self.session.immediate_data;
        let initial_r2t = self.session.initial_r2t;
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        task.cmd_sn = Some(cmd_sn);
        task.sent_at = Some(now);
        let (read, write, edtl, payload) = match &task.cmd.data {
            DataDir::None => (false, false, 0u32, None),
            DataDir::Read(n) => (true, false, *n, None),
            DataDir::Write(d) => (false, true, d.len() as u32, Some(d.clone())),
        };
        let mut cdb = [0u8; 16];
        let n = task.cmd.cdb.len().min(16);
        cdb[..n].copy_from_slice(&task.cmd.cdb[..n]);
        let ahs = if task.cmd.cdb.len() > 16 {
            Pdu::build_ahs(&[(AhsType::EXTENDED_CDB, &task.cmd.cdb[16..])])
        } else {
            Bytes::new()
        };
        // Unsolicited data: immediate data in the command PDU, then unsolicited Data-Out,
        // together at most FirstBurstLength.
        let (immediate, unsolicited_end) = match &payload {
            Some(d) => {
                let unsol = if initial_r2t && !immediate_data {
                    0
                } else {
                    d.len().min(first_burst)
                };
                let imm = if immediate_data {
                    unsol.min(max_seg)
                } else {
                    0
                };
                let unsol_end = if initial_r2t { imm } else { unsol };
                (imm, unsol_end)
            }
            None => (0, 0),
        };
        let h = ScsiCommand {
            immediate: false,
            final_bit: unsolicited_end == immediate,
            read,
            write,
            attr: task.cmd.attr,
            lun: task.cmd.lun,
            itt,
            expected_data_transfer_length: edtl,
            cmd_sn,
            exp_stat_sn,
            cdb,
        };
        let lun = task.cmd.lun;
        let mut pdu = Pdu::new(Bhs::ScsiCommand(h));
        pdu.ahs = ahs;
        if let Some(d) = &payload {
            pdu.data = d.slice(..immediate);
        }
        self.transmit.push_back(pdu);
        if let Some(d) = payload {
            let mut off = immediate;
            let mut data_sn = SerialNumber(0);
            while off < unsolicited_end {
                let n = (unsolicited_end - off).min(max_seg);
                let h = DataOut {
                    final_bit: off + n == unsolicited_end,
                    lun,
                    itt,
                    ttt: Ttt::RESERVED,
                    exp_stat_sn,
                    data_sn,
                    buffer_offset: off as u32,
                };
                data_sn = data_sn.next();
                self.transmit
                    .push_back(Pdu::with_data(Bhs::DataOut(h), d.slice(off..off + n)));
                off += n;
            }
        }
    }

    fn note_cmd_rtt(&mut self, rtt: Duration) {
        if self.last_rx.saturating_duration_since(self.cmd_rtt_window) >= CMD_RTT_WINDOW {
            self.cmd_rtt_min = [None, self.cmd_rtt_min[0]];
            self.cmd_rtt_window = self.last_rx;
        }
        let m = &mut self.cmd_rtt_min[0];
        *m = Some(m.map_or(rtt, |m| m.min(rtt)));
    }

    /// The round trip the stall detector scales: the smoothed ping estimate, or a recent
    /// command's round trip if that was faster (a command's includes the target's service
    /// time, so it can only be longer than the network's).
    fn rtt_estimate(&self) -> Option<Duration> {
        let recent = match self.cmd_rtt_min {
            [Some(a), Some(b)] => Some(a.min(b)),
            [a, b] => a.or(b),
        };
        match (self.srtt, recent) {
            (Some(s), Some(r)) => Some(s.min(r)),
            (s, r) => s.or(r),
        }
    }

    fn send_ping(&mut self, now: Instant) {
        let stall = self.sent_count() > 0;
        let timeout = if stall {
            let adaptive = self
                .rtt_estimate()
                .map(|r| r * self.cfg.stall_rtt_factor)
                .unwrap_or_default();
            adaptive.max(self.cfg.stall_ping_floor)
        } else {
            self.cfg.keepalive_timeout
        };
        let itt = self.alloc_itt();
        self.ping = Some(Ping {
            sent: now,
            deadline: now + timeout,
            stall,
            extended: false,
        });
        self.rtt_probe = Some((itt, now));
        let h = NopOut {
            immediate: true,
            lun: Lun::default(),
            itt,
            ttt: Ttt::RESERVED,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.transmit.push_back(Pdu::new(Bhs::NopOut(h)));
    }

    fn send_lu_reset(&mut self, lun: Lun, now: Instant) {
        let itt = self.alloc_itt();
        self.lu_resets.insert(itt, (lun, now));
        let h = TaskMgmtRequest {
            immediate: true,
            function: TmfFunction::LOGICAL_UNIT_RESET,
            lun,
            itt,
            referenced_task_tag: Itt::RESERVED,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn: SerialNumber(0),
            exp_data_sn: SerialNumber(0),
        };
        self.transmit.push_back(Pdu::new(Bhs::TaskMgmtRequest(h)));
    }

    fn send_abort(&mut self, target: Itt, now: Instant) {
        let Some(task) = self.tasks.get_mut(&target) else {
            return;
        };
        task.aborting = Some(now);
        let (lun, ref_cmd_sn) = (task.cmd.lun, task.cmd_sn.unwrap_or(self.cmd_sn));
        let itt = self.alloc_itt();
        self.aborts.insert(itt, target);
        let h = TaskMgmtRequest {
            immediate: true,
            function: TmfFunction::ABORT_TASK,
            lun,
            itt,
            referenced_task_tag: target,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: SerialNumber(0),
        };
        self.transmit.push_back(Pdu::new(Bhs::TaskMgmtRequest(h)));
    }

    // ---- bookkeeping -----------------------------------------------------------------

    /// How long silence may last before a ping: short with commands outstanding.
    fn silence_limit(&self) -> Duration {
        if self.sent_count() > 0 {
            self.cfg.stall_silence
        } else {
            self.cfg.keepalive_interval
        }
    }

    fn sent_count(&self) -> usize {
        self.tasks.len() - self.waiting.len()
    }

    fn sample_rtt(&mut self, rtt: Duration) {
        // RFC 6298's smoothing (alpha = 1/8).
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    fn update_window(&mut self, exp: SerialNumber, max: SerialNumber) {
        // RFC 7143 §4.2.2.1: a MaxCmdSN below ExpCmdSN - 1 is invalid and ignored; neither
        // number ever moves back.
        if max.plus(1) < exp {
            return;
        }
        if exp > self.exp_cmd_sn {
            self.exp_cmd_sn = exp;
        }
        if max > self.max_cmd_sn {
            self.max_cmd_sn = max;
        }
    }

    fn check_stat_sn(&mut self, stat_sn: SerialNumber) {
        // ERL 0 over TCP cannot lose a status; ahead of what we expect means we missed
        // nothing we could recover anyway. Track it for ExpStatSN.
        if stat_sn >= self.exp_stat_sn {
            self.exp_stat_sn = stat_sn.next();
        }
    }

    fn complete(&mut self, itt: Itt, result: Result<CommandResponse, CommandError>) {
        if self.tasks.remove(&itt).is_some() {
            self.waiting.retain(|i| *i != itt);
            self.events
                .push_back(InitiatorEvent::Completed { itt, result });
        }
    }

    fn fail(&mut self, kind: FailureKind, detail: String) {
        if self.state == State::Done {
            return;
        }
        self.state = State::Done;
        self.ping = None;
        self.events
            .push_back(InitiatorEvent::Failed(Failure { kind, detail }));
    }

    fn alloc_itt(&mut self) -> Itt {
        let i = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == Itt::RESERVED.0 {
            self.next_itt = 1;
        }
        Itt(i)
    }
}

/// Largest data transfer of one command: 2^24 - 1 would be the DataSegmentLength limit of
/// one PDU; commands span many PDUs, and 64 MiB bounds what one command may buffer.
const MAX_TRANSFER: u32 = 64 << 20;

fn residual(underflow: bool, overflow: bool, count: u32) -> i64 {
    if underflow {
        i64::from(count)
    } else if overflow {
        -i64::from(count)
    } else {
        0
    }
}
