//! What a command's outcome means for the layer above (DESIGN §4), and what to retry here.

use std::time::Duration;

use block::{IoError, IoErrorKind, LuChange};
use bytes::Bytes;
use iscsi_session::initiator::{CommandError, CommandResponse};
use scsi::{Sense, SenseKey};

use crate::session::SessionError;

/// SCSI status codes (SAM-5).
const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const CONDITION_MET: u8 = 0x04;
const BUSY: u8 = 0x08;
const RESERVATION_CONFLICT: u8 = 0x18;
const TASK_SET_FULL: u8 = 0x28;
const TASK_ABORTED: u8 = 0x40;

/// What to do with an outcome.
#[derive(Debug)]
pub enum Verdict {
    /// Success, with the Data-In.
    Done(Bytes),
    /// Give the caller this error.
    Fail(IoError),
    /// The command was not executed (UNIT ATTENTION, or aborted by another initiator):
    /// send it again now. `change`: what the UNIT ATTENTION said changed about the LU,
    /// when it is something its users keep (capacity, ALUA states, the LUN inventory).
    RetryNow {
        why: String,
        change: Option<LuChange>,
    },
    /// The target is busy: send it again after a short delay.
    RetryBusy { why: String },
    /// ALUA transitioning or the LU becoming ready: retry after a delay, for a while.
    RetryTransition { why: String },
}

pub fn classify(r: Result<CommandResponse, SessionError>) -> Verdict {
    let resp = match r {
        Ok(resp) => resp,
        Err(SessionError::PathDown(reason)) => {
            return Verdict::Fail(IoError::new(IoErrorKind::Path, reason.to_string()))
        }
        Err(SessionError::Closed) => {
            return Verdict::Fail(IoError::new(IoErrorKind::Path, "session closed"))
        }
        Err(SessionError::Command(e)) => {
            let kind = match e {
                // Our PDU was refused: retrying elsewhere would be refused again.
                CommandError::Rejected(_) | CommandError::Invalid(_) => IoErrorKind::Target,
                // Timeouts, aborts and iSCSI-level target failures say the path is suspect.
                CommandError::TimedOut(_) | CommandError::Aborted | CommandError::TargetFailure => {
                    IoErrorKind::Path
                }
            };
            return Verdict::Fail(IoError::new(kind, e.to_string()));
        }
    };
    match resp.status {
        GOOD | CONDITION_MET => Verdict::Done(resp.data),
        BUSY => Verdict::RetryBusy { why: "BUSY".into() },
        TASK_SET_FULL => Verdict::RetryBusy {
            why: "TASK SET FULL".into(),
        },
        TASK_ABORTED => Verdict::RetryNow {
            why: "TASK ABORTED (by another initiator)".into(),
            change: None,
        },
        RESERVATION_CONFLICT => Verdict::Fail(IoError::scsi(
            IoErrorKind::Target,
            "RESERVATION CONFLICT",
            resp.status,
            resp.sense,
        )),
        CHECK_CONDITION => classify_sense(resp.status, resp.sense),
        other => Verdict::Fail(IoError::scsi(
            IoErrorKind::Target,
            format!("SCSI status {other:#04x}"),
            other,
            resp.sense,
        )),
    }
}

fn classify_sense(status: u8, raw: Bytes) -> Verdict {
    let Ok(s) = Sense::decode(&raw) else {
        return Verdict::Fail(IoError::scsi(
            IoErrorKind::Target,
            "CHECK CONDITION with undecodable sense",
            status,
            raw,
        ));
    };
    let text = format!("{:?} {}", s.key, s.asc);
    if s.is_unit_attention() {
        let change = if s.is_capacity_changed() {
            Some(LuChange::Capacity)
        } else if s.is_alua_state_changed() {
            Some(LuChange::AccessStates)
        } else if s.asc == scsi::sense::REPORTED_LUNS_DATA_HAS_CHANGED {
            Some(LuChange::Inventory)
        } else {
            None
        };
        return Verdict::RetryNow { why: text, change };
    }
    if s.is_alua_transitioning() {
        return Verdict::RetryTransition { why: text };
    }
    if s.is_alua_inaccessible() {
        return Verdict::Fail(IoError::scsi(
            IoErrorKind::Path,
            format!("ALUA: {text}"),
            status,
            raw,
        ));
    }
    if s.key == SenseKey::NOT_READY {
        if s.asc == scsi::sense::LOGICAL_UNIT_IS_IN_PROCESS_OF_BECOMING_READY {
            return Verdict::RetryTransition { why: text };
        }
        // Not ready through this path (offline LU, no medium...): another path may serve.
        return Verdict::Fail(IoError::scsi(IoErrorKind::Path, text, status, raw));
    }
    if s.key == SenseKey::ABORTED_COMMAND {
        return Verdict::RetryBusy { why: text };
    }
    Verdict::Fail(IoError::scsi(IoErrorKind::Target, text, status, raw))
}

/// How long to wait before the next busy retry (linear: a busy target is usually busy
/// for milliseconds).
pub fn busy_delay(base: Duration, attempt: u32) -> Duration {
    base * attempt.clamp(1, 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::{PathFailKind, PathFailReason};
    use scsi::SenseFormat;

    fn check(s: Sense) -> Result<CommandResponse, SessionError> {
        Ok(CommandResponse {
            status: CHECK_CONDITION,
            sense: Bytes::copy_from_slice(s.encode(SenseFormat::Fixed).as_bytes()),
            data: Bytes::new(),
            residual: 0,
        })
    }

    fn kind(v: Verdict) -> Option<IoErrorKind> {
        match v {
            Verdict::Fail(e) => Some(e.kind),
            _ => None,
        }
    }

    #[test]
    fn design_section_4() {
        use scsi::sense as s;
        let path = |asc| kind(classify(check(Sense::new(SenseKey::NOT_READY, asc))));
        assert_eq!(
            path(s::TARGET_PORT_IN_STANDBY_STATE),
            Some(IoErrorKind::Path)
        );
        assert_eq!(
            path(s::TARGET_PORT_IN_UNAVAILABLE_STATE),
            Some(IoErrorKind::Path)
        );
        assert_eq!(
            path(s::LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED),
            Some(IoErrorKind::Path)
        );
        assert!(matches!(
            classify(check(Sense::new(
                SenseKey::NOT_READY,
                s::ASYMMETRIC_ACCESS_STATE_TRANSITION
            ))),
            Verdict::RetryTransition { .. }
        ));
        for (key, asc) in [
            (SenseKey::MEDIUM_ERROR, s::UNRECOVERED_READ_ERROR),
            (
                SenseKey::ILLEGAL_REQUEST,
                s::LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE,
            ),
            (SenseKey::DATA_PROTECT, s::WRITE_PROTECTED),
            (SenseKey::MISCOMPARE, s::MISCOMPARE_DURING_VERIFY_OPERATION),
        ] {
            assert_eq!(
                kind(classify(check(Sense::new(key, asc)))),
                Some(IoErrorKind::Target),
                "{key:?}"
            );
        }
        let ua = |asc| match classify(check(Sense::new(SenseKey::UNIT_ATTENTION, asc))) {
            Verdict::RetryNow { change, .. } => change,
            other => panic!("UNIT ATTENTION {asc:?}: {other:?}"),
        };
        assert_eq!(ua(s::POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED), None);
        assert_eq!(ua(s::CAPACITY_DATA_HAS_CHANGED), Some(LuChange::Capacity));
        assert_eq!(
            ua(s::ASYMMETRIC_ACCESS_STATE_CHANGED),
            Some(LuChange::AccessStates)
        );
        assert_eq!(
            ua(s::REPORTED_LUNS_DATA_HAS_CHANGED),
            Some(LuChange::Inventory)
        );
        let status = |st| {
            classify(Ok(CommandResponse {
                status: st,
                sense: Bytes::new(),
                data: Bytes::new(),
                residual: 0,
            }))
        };
        assert!(matches!(status(BUSY), Verdict::RetryBusy { .. }));
        assert!(matches!(status(TASK_SET_FULL), Verdict::RetryBusy { .. }));
        assert_eq!(
            kind(status(RESERVATION_CONFLICT)),
            Some(IoErrorKind::Target)
        );
        let down = classify(Err(SessionError::PathDown(PathFailReason::new(
            PathFailKind::Stalled,
            "x",
        ))));
        assert_eq!(kind(down), Some(IoErrorKind::Path));
        assert_eq!(
            kind(classify(Err(SessionError::Command(
                CommandError::TimedOut(Duration::from_secs(30))
            )))),
            Some(IoErrorKind::Path)
        );
    }
}
