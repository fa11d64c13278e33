//! The initiator's reading of a command's outcome (DESIGN §4): a transport failure becomes
//! a `Path` error that says how the path failed; a SCSI status is decoded, once, into a
//! [`Condition`] (`IoError::from_scsi_status`). The only retry owned here is the
//! transport's: a command the target did not execute (UNIT ATTENTION, TASK ABORTED) is sent
//! again at once. BUSY, TASK SET FULL and ALUA transitioning go up as they are: the
//! multipath engine owns their back-off (`IscsiPath::command` does, for callers without an
//! engine).

use block::{Condition, IoError, IoErrorKind, LuChange};
use bytes::Bytes;
use iscsi_session::initiator::{CommandError, CommandResponse};

use crate::session::SessionError;

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
    /// `error`: what to report if the retries run out.
    RetryNow {
        error: IoError,
        change: Option<LuChange>,
    },
}

pub fn classify(r: Result<CommandResponse, SessionError>) -> Verdict {
    let resp = match r {
        Ok(resp) => resp,
        Err(SessionError::PathDown(reason)) => {
            return Verdict::Fail(IoError::path_failed(reason.kind, reason.detail))
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
    if matches!(
        resp.status,
        block::status::GOOD | block::status::CONDITION_MET
    ) {
        return Verdict::Done(resp.data);
    }
    let error = IoError::from_scsi_status(resp.status, resp.sense);
    match error.condition() {
        Some(Condition::UnitAttention { change }) => Verdict::RetryNow { error, change },
        Some(Condition::TaskAborted) => Verdict::RetryNow {
            error,
            change: None,
        },
        _ => Verdict::Fail(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::{PathFailKind, PathFailReason};
    use scsi::{Sense, SenseFormat, SenseKey};
    use std::time::Duration;

    const CHECK_CONDITION: u8 = 0x02;

    fn check(s: Sense) -> Result<CommandResponse, SessionError> {
        Ok(CommandResponse {
            status: CHECK_CONDITION,
            sense: Bytes::copy_from_slice(s.encode(SenseFormat::Fixed).as_bytes()),
            data: Bytes::new(),
            residual: 0,
        })
    }

    fn failed(v: Verdict) -> IoError {
        match v {
            Verdict::Fail(e) => e,
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn design_section_4() {
        use scsi::sense as s;
        let nr = |asc| failed(classify(check(Sense::new(SenseKey::NOT_READY, asc))));
        let e = nr(s::TARGET_PORT_IN_STANDBY_STATE);
        assert_eq!(
            (e.kind, e.condition()),
            (IoErrorKind::Path, Some(Condition::AluaStandby))
        );
        assert_eq!(e.detail, "NOT READY 04/0b");
        assert_eq!(
            nr(s::TARGET_PORT_IN_UNAVAILABLE_STATE).kind,
            IoErrorKind::Path
        );
        assert_eq!(
            nr(s::LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED).kind,
            IoErrorKind::Path
        );
        // Transitioning goes up as it is: the engine owns its retries.
        assert_eq!(
            nr(s::ASYMMETRIC_ACCESS_STATE_TRANSITION).condition(),
            Some(Condition::AluaTransitioning)
        );
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
                failed(classify(check(Sense::new(key, asc)))).kind,
                IoErrorKind::Target,
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
        // BUSY and TASK SET FULL: the target's condition, not the path's.
        for (st, c) in [(0x08, Condition::Busy), (0x28, Condition::TaskSetFull)] {
            let e = failed(status(st));
            assert_eq!((e.kind, e.condition()), (IoErrorKind::Target, Some(c)));
        }
        assert!(matches!(status(0x40), Verdict::RetryNow { .. }));
        assert_eq!(failed(status(0x18)).kind, IoErrorKind::Target);
        // A transport failure says how the path failed: no guessing above.
        let down = failed(classify(Err(SessionError::PathDown(PathFailReason::new(
            PathFailKind::Stalled,
            "x",
        )))));
        assert_eq!(
            (down.kind, down.path_fail),
            (IoErrorKind::Path, Some(PathFailKind::Stalled))
        );
        assert_eq!(
            failed(classify(Err(SessionError::Command(
                CommandError::TimedOut(Duration::from_secs(30))
            ))))
            .kind,
            IoErrorKind::Path
        );
    }
}
