//! One multipath path: a session and a LUN behind `block::PathTransport`.

use std::time::Instant;

use block::{
    DataPhase, EventSink, IoError, IoErrorKind, PathEvent, PathTransport, ScsiRequest, SubmitFuture,
};
use iscsi_pdu::{Lun, TaskAttr};
use iscsi_session::initiator::{Command, DataDir};

use crate::classify::{busy_delay, classify, Verdict};
use crate::config::RetryPolicy;
use crate::session::Session;

/// A path to one LU: commands go to `lun` through `session`; BUSY, TASK SET FULL, UNIT
/// ATTENTION and ALUA transitioning are retried here, so the engine above only sees
/// outcomes it must act on.
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

    /// Execute a command with the retry policy, returning its Data-In.
    pub async fn command(&self, req: ScsiRequest) -> Result<bytes::Bytes, IoError> {
        run(self.session.clone(), self.lun, self.retry.clone(), req).await
    }
}

async fn run(
    session: Session,
    lun: Lun,
    retry: RetryPolicy,
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
    let (mut ua, mut busy) = (0u32, 0u32);
    let mut transition_since: Option<Instant> = None;
    loop {
        match classify(session.execute(cmd.clone()).await) {
            Verdict::Done(d) => return Ok(d),
            Verdict::Fail(e) => return Err(e),
            Verdict::RetryNow { why, change } => {
                if let (Some(change), Some(lun)) = (change, lun.number()) {
                    // Whoever keeps the LU's facts reads them again now.
                    session.notify(PathEvent::LuChanged {
                        lun: u64::from(lun),
                        change,
                    });
                }
                ua += 1;
                if ua > retry.unit_attention_attempts {
                    return Err(IoError::new(
                        IoErrorKind::Path,
                        format!("still {why} after {ua} attempts"),
                    ));
                }
                tracing::debug!(%why, "retrying at once");
            }
            Verdict::RetryBusy { why } => {
                busy += 1;
                if busy > retry.busy_attempts {
                    return Err(IoError::new(
                        IoErrorKind::Path,
                        format!("target {why} after {busy} attempts"),
                    ));
                }
                tokio::time::sleep(busy_delay(retry.busy_delay, busy)).await;
            }
            Verdict::RetryTransition { why } => {
                let since = *transition_since.get_or_insert_with(Instant::now);
                if since.elapsed() > retry.transition_max {
                    return Err(IoError::new(
                        IoErrorKind::Path,
                        format!("{why} for more than {:?}", retry.transition_max),
                    ));
                }
                tokio::time::sleep(retry.transition_delay).await;
            }
        }
    }
}

impl PathTransport for IscsiPath {
    fn submit(&self, req: ScsiRequest) -> SubmitFuture {
        Box::pin(run(self.session.clone(), self.lun, self.retry.clone(), req))
    }

    fn subscribe(&self, sink: EventSink) {
        self.session.subscribe(sink);
    }

    fn is_up(&self) -> bool {
        self.session.is_up()
    }
}
