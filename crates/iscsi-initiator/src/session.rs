//! A session: one supervisor task that owns the connection, re-logs in after failures, and
//! completes commands.
//!
//! The supervisor is the only owner of the `InitiatorConnection` state machine. Callers talk
//! to it through a channel ([`Session::execute`]); it talks back through one-shot replies
//! and pushed [`PathEvent`]s. When the connection fails, every command in flight is answered
//! at once with a path error carrying the reason — nothing waits for the re-login — and
//! then the supervisor reconnects with back-off, reinstating the session (same ISID,
//! TSIH 0) so the target discards whatever the old connection left.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use block::{EventSink, PathEvent, PathFailKind, PathFailReason};
use bytes::{Bytes, BytesMut};
use iscsi_pdu::{Itt, Tsih};
use iscsi_session::initiator::{
    Command, CommandError, CommandResponse, FailureKind, InitiatorConnection, InitiatorEvent,
};
use iscsi_session::login::InitiatorLoginConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::config::SessionConfig;
use crate::connect::{establish, Established, LoginError};

/// Why a command did not get a SCSI status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The connection failed while the command was in flight, or no connection came back
    /// within the replacement timeout. The command may be retried on another path.
    #[error("path down: {0}")]
    PathDown(PathFailReason),
    /// The command ended at the iSCSI level without a SCSI status.
    #[error("{0}")]
    Command(CommandError),
    /// The session was closed (logout, shutdown).
    #[error("session closed")]
    Closed,
}

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// First login in progress.
    Connecting,
    /// Logged in; commands go out.
    Up,
    /// The connection failed; re-login attempt `attempt` is pending.
    Recovering {
        attempt: u32,
        reason: PathFailReason,
    },
    /// Recovery stopped (attempt limit).
    GaveUp(PathFailReason),
    /// Logged out or shut down.
    Closed,
}

/// Counters of a session.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub commands: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub failures: AtomicU64,
    pub logins: AtomicU64,
    /// Smoothed round trip in microseconds (0 until measured).
    pub srtt_us: AtomicU64,
    /// Stall pings given a second timeout because this process was starved for CPU.
    pub starved: AtomicU64,
}

enum Msg {
    Command {
        cmd: Command,
        reply: oneshot::Sender<Result<CommandResponse, SessionError>>,
    },
    Logout {
        done: oneshot::Sender<()>,
    },
    /// Check the connection now (`Session::probe`).
    Probe,
}

struct Shared {
    tx: mpsc::UnboundedSender<Msg>,
    /// Wakes a re-login back-off (`Session::hurry`); shared with the supervisor without
    /// keeping `Shared` (and so the command channel) alive.
    hurry: Arc<tokio::sync::Notify>,
    state: watch::Sender<SessionState>,
    sinks: Mutex<Vec<EventSink>>,
    stats: SessionStats,
    portal: std::net::SocketAddr,
    target: String,
    tsih: Mutex<Option<Tsih>>,
    /// What the current (or last) login negotiated.
    negotiated: Mutex<Option<Negotiated>>,
}

/// The parameters a login negotiated: session-wide and of its connection, and the ISID it
/// logged in with.
#[derive(Clone, Debug)]
pub struct Negotiated {
    pub isid: iscsi_pdu::Isid,
    pub session: iscsi_session::SessionParams,
    pub connection: iscsi_session::ConnectionParams,
}

impl Shared {
    fn emit(&self, ev: PathEvent) {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        for s in sinks.iter() {
            s(ev.clone());
        }
    }
}

/// A handle to a session. Cloning is cheap; the session lives until every handle is dropped
/// or [`Session::logout`] is called.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("portal", &self.shared.portal)
            .field("target", &self.shared.target)
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

impl Session {
    /// Log in now and return the session, or the reason the first login failed. Later
    /// failures are recovered in the background.
    pub async fn open(cfg: SessionConfig) -> Result<Session, LoginError> {
        let first = establish(
            cfg.portal,
            login_config(&cfg),
            cfg.connect_timeout,
            cfg.login_timeout,
        )
        .await?;
        Ok(Session::start(cfg, Some(first)))
    }

    /// Start the session in the background: it logs in when it can, retrying with back-off,
    /// and never blocks the caller (a daemon must not wait on an unreachable portal).
    pub fn spawn(cfg: SessionConfig) -> Session {
        Session::start(cfg, None)
    }

    fn start(cfg: SessionConfig, first: Option<Established>) -> Session {
        let (tx, rx) = mpsc::unbounded_channel();
        let hurry = Arc::new(tokio::sync::Notify::new());
        let shared = Arc::new(Shared {
            tx,
            hurry: Arc::clone(&hurry),
            state: watch::Sender::new(SessionState::Connecting),
            sinks: Mutex::new(Vec::new()),
            stats: SessionStats::default(),
            portal: cfg.portal,
            target: cfg.target.clone(),
            tsih: Mutex::new(None),
            negotiated: Mutex::new(None),
        });
        let span = tracing::info_span!("session", portal = %cfg.portal, target = %cfg.target);
        let sup = Supervisor {
            shared: Arc::downgrade(&shared),
            cfg,
            rx,
            queued: VecDeque::new(),
            last_failure: None,
            hurry,
            hurried: false,
        };
        crate::lag::ensure_running();
        tokio::spawn(sup.run(first).instrument(span));
        Session { shared }
    }

    /// Execute one SCSI command, waiting for its completion.
    pub async fn execute(&self, cmd: Command) -> Result<CommandResponse, SessionError> {
        let (reply, rx) = oneshot::channel();
        if self.shared.tx.send(Msg::Command { cmd, reply }).is_err() {
            return Err(SessionError::Closed);
        }
        rx.await.unwrap_or(Err(SessionError::Closed))
    }

    /// Check the connection now: with commands outstanding and no ping out, the stall
    /// ping goes at once instead of after `stall_silence` (see
    /// `iscsi_session::InitiatorConnection::probe`). Nothing happens while logged out.
    pub fn probe(&self) {
        let _ = self.shared.tx.send(Msg::Probe);
    }

    /// Log out and stop. Commands in flight are completed first by the target or, if it
    /// does not answer, fail with the session.
    pub async fn logout(&self) {
        let (done, rx) = oneshot::channel();
        if self.shared.tx.send(Msg::Logout { done }).is_ok() {
            let _ = rx.await;
        }
    }

    /// While the session is waiting to log in again, try now, and start the back-off over
    /// from its first step. A multipath daemon calls this while a map has no usable path:
    /// the outage then ends within a back-off step (200 ms) of the target's return, not
    /// up to `backoff_max` after it. Nothing happens when the session is up or a login is
    /// already under way.
    pub fn hurry(&self) {
        self.shared.hurry.notify_waiters();
    }

    /// Receive this session's events from now on (called from the session task; must not
    /// block).
    pub fn subscribe(&self, sink: EventSink) {
        self.shared
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }

    /// Tell this session's subscribers something a command learned (a LU changed).
    pub(crate) fn notify(&self, ev: PathEvent) {
        self.shared.emit(ev);
    }

    pub fn state(&self) -> SessionState {
        self.shared.state.borrow().clone()
    }

    /// Watch the state change.
    pub fn watch_state(&self) -> watch::Receiver<SessionState> {
        self.shared.state.subscribe()
    }

    pub fn is_up(&self) -> bool {
        matches!(*self.shared.state.borrow(), SessionState::Up)
    }

    pub fn stats(&self) -> &SessionStats {
        &self.shared.stats
    }

    pub fn portal(&self) -> std::net::SocketAddr {
        self.shared.portal
    }

    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// The TSIH of the current (or last) login.
    pub fn tsih(&self) -> Option<Tsih> {
        *self.shared.tsih.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The parameters the current (or last) login negotiated; `None` before the first.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.shared
            .negotiated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait until the session is up, or `timeout` passes (false).
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let mut w = self.watch_state();
        tokio::time::timeout(timeout, w.wait_for(|s| matches!(s, SessionState::Up)))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

pub(crate) fn login_config(cfg: &SessionConfig) -> InitiatorLoginConfig {
    let mut l = InitiatorLoginConfig::normal(&cfg.initiator_name, &cfg.target, cfg.isid);
    l.chap = cfg.chap.clone();
    l.mutual_chap = cfg.mutual_chap.clone();
    l.proposal = cfg.proposal.clone();
    l
}

/// A command waiting for a connection.
struct Queued {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandResponse, SessionError>>,
    deadline: Instant,
}

struct Supervisor {
    /// Weak: when every handle is gone the session logs out and ends.
    shared: std::sync::Weak<Shared>,
    cfg: SessionConfig,
    rx: mpsc::UnboundedReceiver<Msg>,
    queued: VecDeque<Queued>,
    last_failure: Option<PathFailReason>,
    hurry: Arc<tokio::sync::Notify>,
    /// A back-off wait was cut short by `Session::hurry`: the next one starts over.
    hurried: bool,
}

/// How a connection ended.
enum Ended {
    Failed(PathFailReason),
    LoggedOut(Option<oneshot::Sender<()>>),
}

impl Supervisor {
    async fn run(mut self, mut first: Option<Established>) {
        let mut ever_up = false;
        let mut attempt: u32 = 0;
        loop {
            let est = match first.take() {
                Some(e) => e,
                None => match self.reconnect(&mut attempt, ever_up).await {
                    Some(e) => e,
                    None => return,
                },
            };
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            *shared.tsih.lock().unwrap_or_else(|e| e.into_inner()) = Some(est.complete.tsih);
            *shared.negotiated.lock().unwrap_or_else(|e| e.into_inner()) = Some(Negotiated {
                isid: self.cfg.isid,
                session: est.complete.session.clone(),
                connection: est.complete.connection.clone(),
            });
            shared.stats.logins.fetch_add(1, Ordering::Relaxed);
            shared.state.send_replace(SessionState::Up);
            if ever_up {
                info!(tsih = est.complete.tsih.0, "session recovered");
                shared.emit(PathEvent::Recovered);
            } else {
                info!(tsih = est.complete.tsih.0, "session up");
                shared.emit(PathEvent::Connected);
            }
            drop(shared);
            ever_up = true;
            attempt = 0;
            match self.serve(est).await {
                Ended::LoggedOut(done) => {
                    self.close_all();
                    if let Some(d) = done {
                        let _ = d.send(());
                    }
                    return;
                }
                Ended::Failed(reason) => {
                    warn!(%reason, "connection failed");
                    if let Some(shared) = self.shared.upgrade() {
                        shared.stats.failures.fetch_add(1, Ordering::Relaxed);
                        shared.state.send_replace(SessionState::Recovering {
                            attempt: 1,
                            reason: reason.clone(),
                        });
                        shared.emit(PathEvent::Failed {
                            reason: reason.clone(),
                        });
                    }
                    self.last_failure = Some(reason);
                }
            }
        }
    }

    /// Log in again with back-off, serving (queueing or failing) commands meanwhile.
    /// `None` when the session is over (gave up, or every handle dropped).
    async fn reconnect(&mut self, attempt: &mut u32, ever_up: bool) -> Option<Established> {
        let mut backoff = self.cfg.backoff_initial;
        loop {
            *attempt += 1;
            if *attempt > 1 || ever_up {
                // Back off before every attempt but the very first login.
                let wait = if *attempt == 1 {
                    Duration::ZERO
                } else {
                    backoff
                };
                if *attempt > 1 {
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                }
                if let Some(shared) = self.shared.upgrade() {
                    if let Some(reason) = &self.last_failure {
                        shared.state.send_replace(SessionState::Recovering {
                            attempt: *attempt,
                            reason: reason.clone(),
                        });
                    }
                    shared.emit(PathEvent::Recovering {
                        attempt: *attempt,
                        next_try_in: wait,
                        last_failure: self.last_failure.clone(),
                    });
                }
                if !self.idle_for(wait).await {
                    return None;
                }
                if std::mem::take(&mut self.hurried) {
                    backoff = self.cfg.backoff_initial;
                }
            }
            let connect = establish(
                self.cfg.portal,
                login_config(&self.cfg),
                self.cfg.connect_timeout,
                self.cfg.login_timeout,
            );
            tokio::pin!(connect);
            let r = loop {
                tokio::select! {
                    r = &mut connect => break r,
                    msg = self.rx.recv() => match msg {
                        Some(m) => { if !self.queue(m) { return None; } }
                        None => return None,
                    },
                    _ = sleep_until_opt(self.queued.front().map(|q| q.deadline)) => self.expire(),
                }
            };
            match r {
                Ok(e) => return Some(e),
                Err(e) => {
                    let reason = e.as_reason();
                    // A new reason is worth a warning; the same one again, retried with
                    // back-off, only a debug line.
                    if self.last_failure.as_ref() != Some(&reason) {
                        warn!(attempt = *attempt, "login failed: {e}");
                    } else {
                        debug!(attempt = *attempt, "login failed: {e}");
                    }
                    self.last_failure = Some(reason.clone());
                    if self.cfg.max_attempts.is_some_and(|m| *attempt >= m) {
                        warn!(attempts = *attempt, "giving up: {e}");
                        if let Some(shared) = self.shared.upgrade() {
                            shared
                                .state
                                .send_replace(SessionState::GaveUp(reason.clone()));
                            shared.emit(PathEvent::GaveUp {
                                reason: reason.clone(),
                            });
                        }
                        self.fail_queued(&reason);
                        // Keep answering callers with the reason until every handle is gone.
                        while let Some(m) = self.rx.recv().await {
                            match m {
                                Msg::Command { reply, .. } => {
                                    let _ = reply.send(Err(SessionError::PathDown(reason.clone())));
                                }
                                Msg::Logout { done } => {
                                    let _ = done.send(());
                                    return None;
                                }
                                Msg::Probe => {}
                            }
                        }
                        return None;
                    }
                }
            }
        }
    }

    /// Wait `d` while serving the channel; cut short by `Session::hurry` (then `hurried`).
    /// False when the session is over.
    async fn idle_for(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let hurry = Arc::clone(&self.hurry);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                _ = hurry.notified() => {
                    self.hurried = true;
                    return true;
                }
                msg = self.rx.recv() => match msg {
                    Some(m) => { if !self.queue(m) { return false; } }
                    None => return false,
                },
                _ = sleep_until_opt(self.queued.front().map(|q| q.deadline)) => self.expire(),
            }
        }
    }

    /// A message while there is no connection. False when it ends the session.
    fn queue(&mut self, m: Msg) -> bool {
        match m {
            Msg::Command { cmd, reply } => {
                let reason = self.down_reason();
                if self.cfg.replacement_timeout.is_zero() {
                    let _ = reply.send(Err(SessionError::PathDown(reason)));
                } else {
                    self.queued.push_back(Queued {
                        cmd,
                        reply,
                        deadline: Instant::now() + self.cfg.replacement_timeout,
                    });
                }
                true
            }
            // No connection to check.
            Msg::Probe => true,
            Msg::Logout { done } => {
                self.close_all();
                if let Some(shared) = self.shared.upgrade() {
                    shared.state.send_replace(SessionState::Closed);
                }
                let _ = done.send(());
                false
            }
        }
    }

    fn down_reason(&self) -> PathFailReason {
        self.last_failure
            .clone()
            .unwrap_or_else(|| PathFailReason::new(PathFailKind::SocketError, "not logged in yet"))
    }

    /// Fail queued commands whose replacement timeout passed.
    fn expire(&mut self) {
        let now = Instant::now();
        let reason = self.down_reason();
        while self.queued.front().is_some_and(|q| q.deadline <= now) {
            if let Some(q) = self.queued.pop_front() {
                let r = PathFailReason::new(
                    reason.kind.clone(),
                    format!(
                        "no connection within the replacement timeout ({:?}): {}",
                        self.cfg.replacement_timeout, reason.detail
                    ),
                );
                let _ = q.reply.send(Err(SessionError::PathDown(r)));
            }
        }
    }

    fn fail_queued(&mut self, reason: &PathFailReason) {
        for q in self.queued.drain(..) {
            let _ = q.reply.send(Err(SessionError::PathDown(reason.clone())));
        }
    }

    fn close_all(&mut self) {
        for q in self.queued.drain(..) {
            let _ = q.reply.send(Err(SessionError::Closed));
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.state.send_replace(SessionState::Closed);
        }
    }

    /// Run one connection in full feature phase until it fails or logs out.
    async fn serve(&mut self, est: Established) -> Ended {
        let Established {
            stream,
            leftover,
            complete,
            cmd_sn,
            login_rtt,
        } = est;
        let (mut rd, wr) = stream.into_split();
        let (writer, writer_task) = spawn_writer(wr);
        let mut conn = InitiatorConnection::new(
            self.cfg.timers.clone(),
            complete.session,
            complete.connection,
            cmd_sn,
            complete.exp_cmd_sn,
            complete.max_cmd_sn,
            complete.stat_sn.next(),
            Some(login_rtt),
            std::time::Instant::now(),
        );
        let digests = conn.connection().digests();
        let decode = conn.decode_config();
        let mut inflight: HashMap<Itt, oneshot::Sender<Result<CommandResponse, SessionError>>> =
            HashMap::new();
        let mut buf = leftover;
        let mut logout_done: Option<oneshot::Sender<()>> = None;
        let mut rx_closed = false;
        let shared = self.shared.clone();

        // Commands that waited for this connection go first, in order.
        for q in std::mem::take(&mut self.queued) {
            let itt = conn.submit(q.cmd, std::time::Instant::now());
            inflight.insert(itt, q.reply);
        }

        let ended = 'conn: loop {
            // Everything the state machine wants to send leaves in one write.
            let mut out = BytesMut::new();
            while let Some(p) = conn.poll_transmit() {
                p.encode(digests, &mut out);
            }
            if !out.is_empty() {
                if let Some(s) = shared.upgrade() {
                    s.stats
                        .bytes_out
                        .fetch_add(out.len() as u64, Ordering::Relaxed);
                }
                if writer.send(out.freeze()).is_err() {
                    break 'conn Ended::Failed(PathFailReason::new(
                        PathFailKind::SocketError,
                        "the connection's writer stopped",
                    ));
                }
            }
            // Events: completions, failure, logout.
            while let Some(ev) = conn.poll_event() {
                match ev {
                    InitiatorEvent::Completed { itt, result } => {
                        if let Some(r) = inflight.remove(&itt) {
                            let _ = r.send(result.map_err(SessionError::Command));
                        }
                    }
                    InitiatorEvent::Failed(f) => {
                        let kind = match f.kind {
                            FailureKind::KeepaliveTimeout => PathFailKind::KeepaliveTimeout,
                            FailureKind::Stalled => PathFailKind::Stalled,
                            FailureKind::CommandTimeout => PathFailKind::CommandTimeout,
                            FailureKind::Protocol => PathFailKind::ProtocolError,
                            FailureKind::TargetRequest => PathFailKind::ConnectionClosed,
                        };
                        break 'conn Ended::Failed(PathFailReason::new(kind, f.detail));
                    }
                    InitiatorEvent::LoggedOut => break 'conn Ended::LoggedOut(logout_done.take()),
                    InitiatorEvent::ScsiAsyncEvent { lun, sense } => {
                        info!(?lun, sense = ?&sense[..sense.len().min(18)], "asynchronous event from the target");
                    }
                    InitiatorEvent::RoundTrip(rtt) => {
                        if let (Some(s), Some(srtt)) = (shared.upgrade(), conn.srtt()) {
                            s.stats
                                .srtt_us
                                .store(srtt.as_micros() as u64, Ordering::Relaxed);
                        }
                        debug!(?rtt, "round trip");
                    }
                }
            }
            let due = conn.poll_timeout();
            let deadline = due
                .map(|t| Instant::now() + t.saturating_duration_since(std::time::Instant::now()));
            tokio::select! {
                biased;
                r = rd.read_buf(&mut buf) => {
                    let now = std::time::Instant::now();
                    match r {
                        Ok(0) => break 'conn Ended::Failed(PathFailReason::new(
                            PathFailKind::ConnectionClosed,
                            format!("{} closed the connection", self.cfg.portal),
                        )),
                        Ok(n) => {
                            if let Some(s) = shared.upgrade() {
                                s.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            conn.on_bytes_received(now);
                            loop {
                                match iscsi_pdu::Pdu::decode(&mut buf, &decode) {
                                    Ok(Some(p)) => conn.handle_pdu(p, now),
                                    Ok(None) => break,
                                    Err(e) if e.is_fatal() => break 'conn Ended::Failed(PathFailReason::new(
                                        PathFailKind::ProtocolError,
                                        format!("undecodable PDU from the target: {e}"),
                                    )),
                                    Err(e) => conn.handle_decode_error(&e),
                                }
                            }
                            if buf.capacity() - buf.len() < 4096 {
                                buf.reserve(256 << 10);
                            }
                        }
                        Err(e) => {
                            let kind = if e.kind() == std::io::ErrorKind::ConnectionReset {
                                PathFailKind::ConnectionReset
                            } else {
                                PathFailKind::SocketError
                            };
                            break 'conn Ended::Failed(PathFailReason::new(kind, format!("{}: {e}", self.cfg.portal)));
                        }
                    }
                }
                msg = self.rx.recv(), if !rx_closed => match msg {
                    Some(Msg::Command { cmd, reply }) => {
                        if let Some(s) = shared.upgrade() {
                            s.stats.commands.fetch_add(1, Ordering::Relaxed);
                        }
                        let itt = conn.submit(cmd, std::time::Instant::now());
                        inflight.insert(itt, reply);
                        // Take every command already waiting: one write for the batch.
                        while let Ok(m) = self.rx.try_recv() {
                            match m {
                                Msg::Command { cmd, reply } => {
                                    let itt = conn.submit(cmd, std::time::Instant::now());
                                    inflight.insert(itt, reply);
                                }
                                Msg::Logout { done } => {
                                    logout_done = Some(done);
                                    conn.logout(std::time::Instant::now());
                                }
                                Msg::Probe => conn.probe(std::time::Instant::now()),
                            }
                        }
                    }
                    Some(Msg::Probe) => conn.probe(std::time::Instant::now()),
                    Some(Msg::Logout { done }) => {
                        logout_done = Some(done);
                        conn.logout(std::time::Instant::now());
                    }
                    None => {
                        // Every handle dropped: log out politely.
                        rx_closed = true;
                        conn.logout(std::time::Instant::now());
                    }
                },
                _ = sleep_until_opt(deadline) => {
                    let now = std::time::Instant::now();
                    // Before blaming the target for silence: was it this process that did
                    // not run (this timer late, or any other)?
                    if let Some(sent) = conn.ping_sent() {
                        let own = due.map(|d| now.saturating_duration_since(d)).unwrap_or_default();
                        let lag = crate::lag::max_since(sent).max(own);
                        if conn.starved(lag, now) {
                            warn!(lag_ms = lag.as_millis() as u64, "this process was starved for CPU while a stall ping was out: the ping gets one more timeout");
                            if let Some(s) = shared.upgrade() {
                                s.stats.starved.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    conn.handle_timeout(now)
                }
            }
        };

        // Whatever is still in flight is answered now, with the reason.
        let reason = match &ended {
            Ended::Failed(r) => r.clone(),
            Ended::LoggedOut(_) => {
                PathFailReason::new(PathFailKind::ConnectionClosed, "logged out")
            }
        };
        let back = conn.take_all();
        if !back.is_empty() {
            info!(count = back.len(), %reason, "completing in-flight commands with a path error");
        }
        for (itt, _) in back {
            if let Some(r) = inflight.remove(&itt) {
                let _ = r.send(Err(SessionError::PathDown(reason.clone())));
            }
        }
        for (_, r) in inflight.drain() {
            let _ = r.send(Err(SessionError::PathDown(reason.clone())));
        }
        let reset = matches!(ended, Ended::Failed(_));
        if reset {
            // Close with RST from here too, not only from the writer: a writer stuck on a
            // full send buffer (blackhole) never gets to it, and a plain close would leave
            // the kernel retransmitting our unsent commands — which would then execute at
            // the target when the network heals, after we issued them again elsewhere.
            #[allow(deprecated)]
            let _ = rd.as_ref().set_linger(Some(Duration::ZERO));
        }
        let _ = writer.close(reset);
        drop(writer);
        // The writer may be stuck on a full send buffer (blackhole): do not wait for it.
        writer_task.abort();
        drop(rd);
        ended
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

enum WriterMsg {
    Data(Bytes),
    Close { reset: bool },
}

struct Writer {
    tx: mpsc::UnboundedSender<WriterMsg>,
}

impl Writer {
    fn send(&self, b: Bytes) -> Result<(), ()> {
        self.tx.send(WriterMsg::Data(b)).map_err(|_| ())
    }
    fn close(&self, reset: bool) -> Result<(), ()> {
        self.tx.send(WriterMsg::Close { reset }).map_err(|_| ())
    }
}

/// The socket's write half in a task of its own, so a full send buffer never stops us
/// reading (the target may be blocked sending us Data-In while we send it Data-Out).
fn spawn_writer(mut wr: OwnedWriteHalf) -> (Writer, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            match m {
                WriterMsg::Data(b) => {
                    if wr.write_all(&b).await.is_err() {
                        return;
                    }
                }
                WriterMsg::Close { reset } => {
                    if reset {
                        #[allow(deprecated)]
                        let _ = wr.as_ref().set_linger(Some(Duration::ZERO));
                    } else {
                        let _ = wr.shutdown().await;
                    }
                    return;
                }
            }
        }
    });
    (Writer { tx }, h)
}
