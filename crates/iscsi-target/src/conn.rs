//! One TCP connection: login, then full feature phase, with faults applied.
//!
//! The protocol decisions are made by `iscsi_session` (`TargetLogin`, `TargetConnection`)
//! and the SCSI ones by `scsi::LogicalUnit`; this task reads PDUs, feeds them in, executes
//! the commands that come out (inline for memory LUs, on a blocking thread for files) and
//! writes what is to be sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iscsi_pdu::*;
use iscsi_session::login::{
    LoginDirectory, LoginIdentity, LoginRefusal, TargetLogin, TargetLoginConfig,
    TargetLoginOutcome, TargetLoginPolicy,
};
use iscsi_session::negotiate::Proposal;
use iscsi_session::target::{ScsiOutcome, ScsiTask, TargetConfig, TargetConnection, TargetEvent};
use iscsi_session::{ChapCredentials, SessionParams, SessionType};
use scsi::{Nexus, Request, TaskAttribute};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::config::Chap;
use crate::faults::{ConnFaults, Verdict};
use crate::registry::{Admitted, Candidate, Kill};
use crate::wire::{PduReader, PduWriter};
use crate::{Inner, TargetRuntime};

/// A login that has not reached full feature phase by then is dropped: it holds a socket
/// and a task, and no real initiator needs more than a few round trips.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a reinstating login waits for the old session's in-flight commands to finish.
/// Commands against a healthy backend finish in milliseconds; past this the backend is
/// stuck and the new session is refused rather than risk old writes landing after new ones.
const REINSTATEMENT_DRAIN: Duration = Duration::from_secs(10);

pub(crate) async fn serve(
    inner: Arc<Inner>,
    stream: TcpStream,
    portal: SocketAddr,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("conn", %portal, %peer);
    async move {
        let _ = stream.set_nodelay(true);
        let Some(faults) = inner.faults.get(&portal).cloned() else {
            return;
        };
        let mut cf = ConnFaults::new(&faults);
        let (rd, wr) = stream.into_split();
        let mut reader = PduReader::new(rd);
        let (writer, writer_task) = PduWriter::spawn(wr);
        let mut stop = stop;

        let login = tokio::time::timeout(
            LOGIN_TIMEOUT,
            login(&inner, &mut reader, &writer, &mut cf, portal, peer),
        )
        .await;
        let reset = match login {
            Err(_) => {
                info!("login did not complete within {LOGIN_TIMEOUT:?}; closing");
                false
            }
            Ok(Err(end)) => end.reset,
            Ok(Ok(session)) => {
                let mut ffp = FullFeature::new(&inner, session, portal, writer.clone());
                let end = ffp.run(&mut reader, &mut cf, &mut stop).await;
                ffp.finish().await;
                end.reset
            }
        };
        writer.close(reset);
        let _ = writer_task.await;
    }
    .instrument(span)
    .await
}

/// How a phase ended.
struct End {
    /// Close with RST (fault injection) rather than FIN.
    reset: bool,
}

impl End {
    fn close() -> End {
        End { reset: false }
    }
}

/// A completed login.
struct Session {
    admitted: Admitted,
    target: Option<Arc<TargetRuntime>>,
    identity: LoginIdentity,
    conn: TargetConnection,
    tag: u16,
}

/// The login directory seen from one portal.
struct PortalDirectory<'a> {
    inner: &'a Inner,
    portal: SocketAddr,
    peer: SocketAddr,
    /// Filled by `admit`, taken by the login loop once the login completes.
    admitted: Mutex<Option<(Admitted, Option<Arc<TargetRuntime>>)>>,
}

fn creds(c: &Chap) -> ChapCredentials {
    ChapCredentials::new(c.user.clone(), c.secret.clone().into_bytes())
}

impl PortalDirectory<'_> {
    fn proposal(&self) -> Proposal {
        let n = &self.inner.cfg.negotiation;
        let mut p = Proposal::target();
        p.max_recv_data_segment_length = n.max_recv_data_segment_length;
        p.max_burst_length = n.max_burst_length;
        p.first_burst_length = n.first_burst_length;
        p.immediate_data = n.immediate_data;
        p.initial_r2t = n.initial_r2t;
        p.max_outstanding_r2t = n.max_outstanding_r2t;
        p
    }

    fn portal_tag(&self) -> u16 {
        self.inner
            .targets
            .iter()
            .find_map(|t| t.group_of(self.portal))
            .unwrap_or(1)
    }
}

impl LoginDirectory for PortalDirectory<'_> {
    fn authorize(&self, id: &LoginIdentity) -> Result<TargetLoginPolicy, LoginRefusal> {
        if id.session_type == SessionType::Discovery {
            return Ok(TargetLoginPolicy {
                chap: self.inner.cfg.discovery_chap.as_ref().map(creds),
                mutual_chap: None,
                proposal: self.proposal(),
                target_portal_group_tag: self.portal_tag(),
                target_alias: None,
            });
        }
        let name = id.target_name.as_deref().unwrap_or("");
        let Some(t) = self.inner.target(name) else {
            return Err(LoginRefusal::new(
                LoginStatus::NOT_FOUND,
                format!("no target {name}"),
            ));
        };
        let Some(tag) = t.group_of(self.portal) else {
            return Err(LoginRefusal::new(
                LoginStatus::NOT_FOUND,
                format!("target {name} is not served on portal {}", self.portal),
            ));
        };
        if !t.allows(&id.initiator_name) {
            return Err(LoginRefusal::new(
                LoginStatus::AUTHORIZATION_FAILURE,
                format!(
                    "initiator {} is not in the ACL of {name}",
                    id.initiator_name
                ),
            ));
        }
        Ok(TargetLoginPolicy {
            chap: t.spec.chap.as_ref().map(creds),
            mutual_chap: t.spec.mutual_chap.as_ref().map(creds),
            proposal: self.proposal(),
            target_portal_group_tag: tag,
            target_alias: t.spec.alias.clone(),
        })
    }

    fn admit(&self, id: &LoginIdentity, _params: &SessionParams) -> Result<Tsih, LoginRefusal> {
        let target = match id.session_type {
            SessionType::Discovery => None,
            SessionType::Normal => self
                .inner
                .target(id.target_name.as_deref().unwrap_or(""))
                .cloned(),
        };
        let mut sessions = self.inner.sessions();
        if id.tsih.0 != 0 {
            // MaxConnections is 1: a connection may not join an existing session.
            return Err(if sessions.has_tsih(id.tsih) {
                LoginRefusal::new(
                    LoginStatus::TOO_MANY_CONNECTIONS,
                    format!("session TSIH {} already has its one connection", id.tsih.0),
                )
            } else {
                LoginRefusal::new(
                    LoginStatus::SESSION_DOES_NOT_EXIST,
                    format!("no session with TSIH {}", id.tsih.0),
                )
            });
        }
        let tpgt = target
            .as_ref()
            .and_then(|t| t.group_of(self.portal))
            .unwrap_or_else(|| self.portal_tag());
        let a = sessions.admit(Candidate {
            initiator: &id.initiator_name,
            isid: id.isid,
            target: target.as_ref().map(|t| t.spec.iqn.as_str()),
            tpgt,
            portal: self.portal,
            peer: self.peer,
            header_digest: false,
            data_digest: false,
        });
        let tsih = a.tsih;
        *self.admitted.lock().unwrap_or_else(|e| e.into_inner()) = Some((a, target));
        Ok(tsih)
    }
}

fn random_bytes(b: &mut [u8]) {
    if getrandom::getrandom(b).is_err() {
        // No OS randomness: fall back to the clock so CHAP challenges still differ.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
}

/// Wait while the portal is silenced; `Err` when the connection must close.
async fn obey(cf: &mut ConnFaults) -> Result<(), End> {
    loop {
        match cf.verdict() {
            Verdict::Normal => return Ok(()),
            Verdict::Reset => return Err(End { reset: true }),
            Verdict::Silent => cf.changed().await,
        }
    }
}

async fn login(
    inner: &Inner,
    reader: &mut PduReader,
    writer: &PduWriter,
    cf: &mut ConnFaults,
    portal: SocketAddr,
    peer: SocketAddr,
) -> Result<Session, End> {
    let dir = PortalDirectory {
        inner,
        portal,
        peer,
        admitted: Mutex::new(None),
    };
    let mut sn = [0u8; 4];
    random_bytes(&mut sn);
    let mut login = TargetLogin::new(
        &dir,
        TargetLoginConfig {
            initial_stat_sn: SerialNumber(u32::from_be_bytes(sn)),
            cmd_window: inner.cfg.queue_depth,
        },
        &mut random_bytes,
    );
    let decode = DecodeConfig {
        digests: Digests::NONE,
        max_recv_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
    };
    loop {
        obey(cf).await?;
        let pdu = match reader.next(&decode).await {
            Ok(Some(Ok(p))) => p,
            Ok(Some(Err(e))) => {
                info!("login: undecodable PDU: {e}");
                return Err(End::close());
            }
            Ok(None) => return Err(End::close()),
            Err(e) => {
                debug!("login: read failed: {e}");
                return Err(End::close());
            }
        };
        cf.on_pdu();
        let out = login.handle(pdu);
        let final_response = out.response;
        match out.outcome {
            None => {
                if let Some(r) = final_response {
                    send(writer, cf, &[r], Digests::NONE);
                }
            }
            Some(TargetLoginOutcome::Failed { status, reason }) => {
                if let Some(r) = final_response {
                    send(writer, cf, &[r], Digests::NONE);
                }
                info!(%status, "login refused: {reason}");
                return Err(End::close());
            }
            Some(TargetLoginOutcome::Complete(c)) => {
                let Some((admitted, target)) = dir
                    .admitted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                else {
                    return Err(End::close());
                };
                // Reinstatement: the old session's in-flight commands finish before the new
                // session hears it may start.
                for mut old in admitted.replaced.iter().cloned() {
                    let drained =
                        tokio::time::timeout(REINSTATEMENT_DRAIN, old.wait_for(|d| *d)).await;
                    if drained.is_err() {
                        warn!("reinstated session did not drain within {REINSTATEMENT_DRAIN:?}; refusing the new login");
                        inner.sessions().remove(admitted.id);
                        return Err(End::close());
                    }
                }
                if let Some(r) = final_response {
                    send(writer, cf, &[r], Digests::NONE);
                }
                let tag = dir.portal_tag();
                let target_tag = target
                    .as_ref()
                    .and_then(|t| t.group_of(portal))
                    .unwrap_or(tag);
                let c = *c;
                info!(
                    initiator = %c.identity.initiator_name,
                    isid = %c.identity.isid,
                    tsih = c.tsih.0,
                    target = c.identity.target_name.as_deref().unwrap_or("(discovery)"),
                    header_digest = c.connection.header_digest,
                    data_digest = c.connection.data_digest,
                    "login complete"
                );
                inner.sessions().set_digests(
                    admitted.id,
                    c.connection.header_digest,
                    c.connection.data_digest,
                );
                let cfg = TargetConfig {
                    queue_depth: inner.cfg.queue_depth,
                    nop_in_interval: inner.cfg.nop_in_interval,
                    nop_in_timeout: inner.cfg.nop_in_timeout,
                    ..TargetConfig::default()
                };
                let next_stat_sn = c.next_stat_sn();
                let conn = TargetConnection::new(
                    cfg,
                    c.session,
                    c.connection,
                    c.exp_cmd_sn,
                    c.max_cmd_sn,
                    next_stat_sn,
                    std::time::Instant::now(),
                );
                return Ok(Session {
                    admitted,
                    target,
                    identity: c.identity,
                    conn,
                    tag: target_tag,
                });
            }
        }
    }
}

/// Encode PDUs and hand them to the writer.
fn send(writer: &PduWriter, cf: &ConnFaults, pdus: &[Pdu], digests: Digests) {
    let mut out = BytesMut::new();
    for p in pdus {
        p.encode(digests, &mut out);
    }
    writer.send(out.freeze(), cf.delay());
}

struct FullFeature<'a> {
    inner: &'a Inner,
    session: Session,
    nexus: Arc<Nexus>,
    writer: PduWriter,
    blocking: JoinSet<(Itt, ScsiOutcome)>,
    /// Output held back while the portal is silenced, sent when it clears (TCP would
    /// retransmit it after a network blackhole lifts).
    held: BytesMut,
    close_after_flush: bool,
    portal: SocketAddr,
}

impl<'a> FullFeature<'a> {
    fn new(inner: &'a Inner, session: Session, portal: SocketAddr, writer: PduWriter) -> Self {
        let isid = session.identity.isid.0;
        let isid = isid.iter().fold(0u64, |a, b| (a << 8) | *b as u64);
        let nexus = Arc::new(Nexus::iscsi(
            &session.identity.initiator_name,
            isid,
            session.tag,
        ));
        FullFeature {
            inner,
            session,
            nexus,
            writer,
            blocking: JoinSet::new(),
            held: BytesMut::new(),
            close_after_flush: false,
            portal,
        }
    }

    async fn run(
        &mut self,
        reader: &mut PduReader,
        cf: &mut ConnFaults,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let mut kill = self.session.admitted.kill.clone();
        let mut was_silent = false;
        loop {
            let silent = match cf.verdict() {
                Verdict::Reset => {
                    info!("portal reset: closing with RST");
                    return End { reset: true };
                }
                Verdict::Silent => true,
                Verdict::Normal => false,
            };
            // A silenced connection hears nothing, so its keepalive is suspended: it would
            // otherwise time out and leave a connection that never answers again once the
            // fault is cleared.
            if was_silent && !silent {
                // A blackhole is a network that drops packets: what the initiator sent into
                // it never arrives. An initiator that gave up on the connection meanwhile
                // (closed or reset it) must not have those commands executed now, after it
                // has issued them again elsewhere — that would undo newer writes.
                if reader.peer_gone() {
                    info!("the initiator left the connection during the blackhole: closing without executing what it sent into it");
                    return End { reset: true };
                }
                self.session.conn.resume(std::time::Instant::now());
            }
            was_silent = silent;
            if !silent {
                // Everything already buffered goes in before we wait again.
                let decode = self.session.conn.decode_config();
                loop {
                    match reader.buffered(&decode) {
                        Ok(Some(pdu)) => {
                            cf.on_pdu();
                            self.session.conn.handle_pdu(pdu, std::time::Instant::now());
                            if cf.verdict() != Verdict::Normal {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) if e.is_fatal() => {
                            warn!("closing: {e}");
                            return End::close();
                        }
                        Err(e) => self
                            .session
                            .conn
                            .handle_decode_error(&e, std::time::Instant::now()),
                    }
                }
                if let Some(end) = self.process(cf) {
                    return end;
                }
                if !self.held.is_empty() {
                    let held = std::mem::take(&mut self.held).freeze();
                    self.writer.send(held, cf.delay());
                }
            }
            let deadline = self.session.conn.poll_timeout().map(|t| {
                let now = std::time::Instant::now();
                Instant::now() + t.saturating_duration_since(now)
            });
            tokio::select! {
                _ = kill.changed() => {
                    let why = *kill.borrow();
                    info!("closing: {:?}", why.unwrap_or(Kill::Shutdown));
                    return End::close();
                }
                _ = stop.changed() => return End::close(),
                _ = cf.changed() => {}
                Some(done) = self.blocking.join_next(), if !self.blocking.is_empty() => {
                    if let Ok((itt, outcome)) = done {
                        self.session.conn.complete(itt, outcome);
                    }
                }
                r = reader.fill(), if !silent => match r {
                    Ok(true) => {}
                    Ok(false) => {
                        debug!("initiator closed the connection");
                        return End::close();
                    }
                    Err(e) => {
                        debug!("read failed: {e}");
                        return End::close();
                    }
                },
                _ = sleep_until_opt(deadline), if !silent => {
                    self.session.conn.handle_timeout(std::time::Instant::now());
                }
            }
            if silent {
                // Completions still arrive; their PDUs are held.
                let _ = self.process(cf);
            }
        }
    }

    /// Handle events and queue output. `Some` when the connection must end.
    fn process(&mut self, cf: &mut ConnFaults) -> Option<End> {
        let mut end = None;
        while let Some(ev) = self.session.conn.poll_event() {
            match ev {
                TargetEvent::Execute(task) => match cf.refused_status() {
                    // Fault injection: the portal answers BUSY / TASK SET FULL.
                    Some(status) => self.session.conn.complete(
                        task.itt,
                        outcome(scsi::Response::with_status(scsi::lu::Status(status)), None),
                    ),
                    None => self.dispatch(task),
                },
                TargetEvent::Aborted { itts } => debug!(?itts, "tasks aborted"),
                TargetEvent::Reset { itt, function, lun } => {
                    let r = self.reset(function, lun);
                    self.session.conn.task_management_done(itt, r);
                }
                TargetEvent::Text { itt, params } => {
                    let answer = self.text(&params);
                    self.session.conn.text_response(itt, answer);
                }
                TargetEvent::LoggedOut { reason } => {
                    info!(%reason, "logout");
                    end = Some(End::close());
                }
                TargetEvent::Failed(f) => {
                    warn!("connection failed: {f}");
                    end = Some(End::close());
                }
                TargetEvent::Discarded { opcode, reason } => {
                    debug!(%opcode, "discarded: {reason}");
                }
            }
        }
        let digests = self.session.conn.connection().digests();
        let mut out = BytesMut::new();
        while let Some(p) = self.session.conn.poll_transmit() {
            p.encode(digests, &mut out);
        }
        if !out.is_empty() {
            if cf.verdict() == Verdict::Normal && self.held.is_empty() {
                self.writer.send(out.freeze(), cf.delay());
            } else {
                self.held.extend_from_slice(&out);
            }
        }
        self.session.admitted.stats.outstanding.store(
            self.session.conn.outstanding_tasks(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if self.close_after_flush {
            return Some(End::close());
        }
        end
    }

    fn dispatch(&mut self, task: ScsiTask) {
        let itt = task.itt;
        let Some(target) = self.session.target.clone() else {
            // Discovery sessions carry no SCSI traffic.
            let r = scsi::lu::lun_not_supported(&task.cdb);
            self.session.conn.complete(itt, outcome(r, None));
            return;
        };
        // REPORT LUNS is answered for the target, whichever LUN it is addressed to.
        if task.cdb.first() == Some(&0xa0) {
            let r = scsi::lu::report_luns(&task.cdb, &target.lun_list);
            self.session.conn.complete(itt, outcome(r, None));
            return;
        }
        let Some(lun) = task.lun.number().and_then(|n| target.luns.get(&n)) else {
            let r = scsi::lu::lun_not_supported(&task.cdb);
            self.session.conn.complete(itt, outcome(r, None));
            return;
        };
        let lu = lun.lu.clone();
        let edtl = task.expected_data_transfer_length;
        // What the CDB itself asks to transfer out (SPDTL): residuals are computed against
        // it, and a CDB asking for more than the initiator sends writes nothing.
        let wanted = lu
            .data_out_len(&task.cdb)
            .ok()
            .map(|n| n.min(u32::MAX as u64) as u32);
        let data_out_wanted = match wanted {
            Some(n) if task.write || n > 0 => Some(n),
            _ => None,
        };
        let mut cdb = task.cdb.clone();
        // COMPARE AND WRITE must carry exactly its compare and write data: a different
        // Data-Out length (including a NUMBER OF LOGICAL BLOCKS of 0 with data) cannot be
        // a residual, since half the buffer would be compared against the other half's
        // blocks (libiscsi CompareAndWrite.InvalidDataOutSize).
        if cdb.first() == Some(&0x89) && data_out_wanted != Some(edtl) {
            let r = scsi::Response::check_condition(
                &scsi::Sense::invalid_field_in_cdb(13, None),
                scsi::SenseFormat::Fixed,
            );
            self.session.conn.complete(itt, outcome(r, None));
            return;
        }
        if let Some(n) = data_out_wanted {
            if n > edtl {
                // FCP-4 option (a): process the command, transferring only what the
                // initiator sent, when that is whole blocks; a partial block cannot be
                // written, so option (b): refuse it, writing nothing.
                let bs = lu.config().block_size;
                match shrink_write_cdb(&cdb, edtl / bs).filter(|_| edtl.is_multiple_of(bs)) {
                    Some(shorter) => cdb = shorter,
                    None => {
                        self.session
                            .conn
                            .complete(itt, ScsiOutcome::write_overflow(n));
                        return;
                    }
                }
            }
        }
        let data = match data_out_wanted {
            Some(n) => task
                .data_out
                .slice(..(n.min(edtl) as usize).min(task.data_out.len())),
            None => task.data_out.clone(),
        };
        let attr = TaskAttribute(task.attr.0);
        let req = Request {
            nexus: &self.nexus,
            cdb: &cdb,
            data_out: &data,
            task_attr: attr,
        };
        // Memory LUs run here. For files, page-cache hits are served here too; only reads
        // that must wait for the device, and writes, go to a blocking thread.
        let quick = if lun.may_block {
            lun.lu.try_execute(&req)
        } else {
            Some(lun.lu.execute(&req))
        };
        match quick {
            Some(r) => self.session.conn.complete(itt, outcome(r, data_out_wanted)),
            None => {
                let nexus = self.nexus.clone();
                self.blocking.spawn_blocking(move || {
                    let r = lu.execute(&Request {
                        nexus: &nexus,
                        cdb: &cdb,
                        data_out: &data,
                        task_attr: attr,
                    });
                    (itt, outcome(r, data_out_wanted))
                });
            }
        }
    }

    fn reset(&mut self, function: TmfFunction, lun: Lun) -> TmfResponse {
        let Some(target) = self.session.target.clone() else {
            return TmfResponse::NOT_SUPPORTED;
        };
        match function {
            TmfFunction::LOGICAL_UNIT_RESET => {
                match lun.number().and_then(|n| target.luns.get(&n)) {
                    Some(l) => {
                        info!(lun = ?lun, "LOGICAL UNIT RESET");
                        l.lu.reset();
                        TmfResponse::COMPLETE
                    }
                    None => TmfResponse::NO_LUN,
                }
            }
            TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET => {
                info!(%function, "target reset");
                for l in target.luns.values() {
                    l.lu.reset();
                }
                if function == TmfFunction::TARGET_COLD_RESET {
                    // A cold reset also drops the connection, after the response.
                    self.close_after_flush = true;
                }
                TmfResponse::COMPLETE
            }
            _ => TmfResponse::NOT_SUPPORTED,
        }
    }

    fn text(&self, params: &TextParams) -> TextParams {
        let mut answer = TextParams::new();
        for (k, v) in params.iter() {
            if k == "SendTargets" {
                answer.extend(send_targets(
                    self.inner,
                    &self.session.identity.initiator_name,
                    self.session.target.as_deref(),
                    v,
                ));
            } else {
                answer.push(k, "NotUnderstood");
            }
        }
        answer
    }

    /// Wait for commands still executing, then release the session.
    async fn finish(&mut self) {
        let itts = self.session.conn.abort_all();
        if !itts.is_empty() {
            debug!(count = itts.len(), "aborting tasks at connection end");
        }
        while self.blocking.join_next().await.is_some() {}
        if let Some(t) = &self.session.target {
            for l in t.luns.values() {
                l.lu.nexus_lost(&self.nexus);
            }
        }
        self.inner.sessions().remove(self.session.admitted.id);
        let _ = self.session.admitted.done.send(true);
        debug!(portal = %self.portal, "session released");
    }
}

/// The same write CDB with its TRANSFER LENGTH set to `blocks`, for the block-write
/// commands (WRITE, WRITE AND VERIFY); `None` for other commands, or when `blocks` cannot be
/// expressed (WRITE(6) reads 0 as 256 blocks).
fn shrink_write_cdb(cdb: &Bytes, blocks: u32) -> Option<Bytes> {
    let mut c = cdb.to_vec();
    match c.first()? {
        // WRITE(6)
        0x0a if (1..=255).contains(&blocks) && c.len() >= 6 => c[4] = blocks as u8,
        // WRITE(10), WRITE AND VERIFY(10)
        0x2a | 0x2e if blocks <= 0xffff && c.len() >= 10 => {
            c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes())
        }
        // WRITE(12), WRITE AND VERIFY(12)
        0xaa | 0xae if c.len() >= 12 => c[6..10].copy_from_slice(&blocks.to_be_bytes()),
        // WRITE(16), WRITE AND VERIFY(16)
        0x8a | 0x8e if c.len() >= 16 => c[10..14].copy_from_slice(&blocks.to_be_bytes()),
        _ => return None,
    }
    Some(Bytes::from(c))
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn outcome(r: scsi::Response, data_out_wanted: Option<u32>) -> ScsiOutcome {
    ScsiOutcome {
        status: r.status.0,
        sense: r.sense.map(|s| Bytes::copy_from_slice(s.as_bytes())),
        data_in: r.data_in,
        data_out_wanted,
    }
}

/// The SendTargets answer (RFC 7143 §6.3 and Appendix C): every target the initiator may
/// see, each with every one of its portals — not only the portal that was asked.
fn send_targets(
    inner: &Inner,
    initiator: &str,
    current: Option<&TargetRuntime>,
    value: &str,
) -> TextParams {
    let mut out = TextParams::new();
    let chosen: Vec<&TargetRuntime> = match value {
        "All" => inner
            .targets
            .iter()
            .map(|t| t.as_ref())
            .filter(|t| t.allows(initiator))
            .collect(),
        "" => current.into_iter().collect(),
        name => inner
            .target(name)
            .map(|t| t.as_ref())
            .filter(|t| t.allows(initiator))
            .into_iter()
            .collect(),
    };
    for t in chosen {
        out.push("TargetName", t.spec.iqn.clone());
        for g in &t.spec.portal_groups {
            for p in &g.portals {
                let addr = match p {
                    SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                    SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                };
                out.push("TargetAddress", format!("{addr},{}", g.tag));
            }
        }
    }
    out
}
