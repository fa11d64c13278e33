//! One multipath path: a session and a LUN behind `block::PathTransport`.

use std::time::Instant;

use block::{DataPhase, EventSink, IoError, PathEvent, PathTransport, ScsiRequest, SubmitFuture};
use iscsi_pdu::{Lun, TaskAttr};
use iscsi_session::initiator::{Command, DataDir};

use crate::classify::{classify, Verdict};
use crate::config::RetryPolicy;
use crate::session::Session;

/// A path to one LU: commands go to `lun` through `session`. What the target did not
/// execute (UNIT ATTENTION, TASK ABORTED) is sent again here; everything else goes up as
/// decoded. Through [`PathTransport::submit`] — the multipath engine — BUSY, TASK SET FULL
/// and ALUA transitioning are the engine's to retry; [`IscsiPath::command`], for callers
/// without an engine (probe, diagnostics), retries them itself within the policy's budgets.
#[derive(Clone, Debug)]
pub struct IscsiPath {
    session: Session,
    lun: Lun,
    retry: RetryPolicy,
}

impl IscsiPath {
    pub fn new(session: Session, lun: u16, retry: RetryPolicy) -> IscsiPath {
        IscsiPath {
            session,
            lun: Lun::from_number(lun),
            retry,
        }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn lun(&self) -> u16 {
        self.lun.number().unwrap_or(0)
    }

    /// Execute a command, retrying BUSY, TASK SET FULL (for up to the policy's
    /// `busy_timeout`) and ALUA transitioning (`transition_timeout`) here; returns its
    /// Data-In. For callers that have no multipath engine to own those retries.
    pub async fn command(&self, req: ScsiRequest) -> Result<bytes::Bytes, IoError> {
        let started = Instant::now();
        let mut busy = 0u32;
        loop {
            let e = match self.command_once(req.clone()).await {
                Ok(d) => return Ok(d),
                Err(e) => e,
            };
            let (budget, delay) = match e.condition() {
                Some(c) if c.is_busy() => {
                    busy += 1;
                    (self.retry.busy_timeout, block::busy_delay(busy))
                }
                Some(c) if c.is_transitioning() => {
                    (self.retry.transition_timeout, self.retry.transition_delay)
                }
                _ => return Err(e),
            };
            if started.elapsed() + delay > budget {
                return Err(IoError {
                    detail: format!(
                        "{}, still after {} ms",
                        e.detail,
                        started.elapsed().as_millis()
                    ),
                    ..e
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Execute a command once (UNIT ATTENTIONs aside): what the engine gets, for callers
    /// that judge BUSY or transitioning themselves (the checker: a busy target answers).
    pub async fn command_once(&self, req: ScsiRequest) -> Result<bytes::Bytes, IoError> {
        run(
            self.session.clone(),
            self.lun,
            self.retry.unit_attention_attempts,
            req,
        )
        .await
    }
}

async fn run(
    session: Session,
    lun: Lun,
    unit_attention_attempts: u32,
    req: ScsiRequest,
) -> Result<bytes::Bytes, IoError> {
    let data = match req.data {
        DataPhase::None => DataDir::None,
        DataPhase::In { len } => DataDir::Read(len),
        DataPhase::Out(b) => DataDir::Write(b),
    };
    let cmd = Command {
        lun,
        cdb: req.cdb,
        data,
        attr: TaskAttr::SIMPLE,
    };
    let mut ua = 0u32;
    loop {
        match classify(session.execute(cmd.clone()).await) {
            Verdict::Done(d) => return Ok(d),
            Verdict::Fail(e) => return Err(e),
            Verdict::RetryNow { error, change } => {
                if let (Some(change), Some(lun)) = (change, lun.number()) {
                    // Whoever keeps the LU's facts reads them again now.
                    session.notify(PathEvent::LuChanged {
                        lun: u64::from(lun),
                        change,
                    });
                }
                ua += 1;
                if ua > unit_attention_attempts {
                    return Err(IoError {
                        detail: format!("{}, still after {ua} attempts", error.detail),
                        ..error
                    });
                }
                tracing::debug!(why = %error.detail, "not executed, sending again");
            }
        }
    }
}

impl PathTransport for IscsiPath {
    fn submit(&self, req: ScsiRequest) -> SubmitFuture {
        Box::pin(run(
            self.session.clone(),
            self.lun,
            self.retry.unit_attention_attempts,
            req,
        ))
    }

    fn subscribe(&self, sink: EventSink) {
        self.session.subscribe(sink);
    }

    fn is_up(&self) -> bool {
        self.session.is_up()
    }

    fn suspect(&self) {
        self.session.probe();
    }
}
