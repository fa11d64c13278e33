//! What a failed command means for the map: the engine's decision table for errors that
//! come back from a path (DESIGN §4). It reads the [`Condition`] the transport decoded
//! once; it never parses sense.

use block::{Condition, IoError, IoErrorKind, PathFailKind, PathFailReason};
use scsi::AluaState;

/// What to do with a command that failed on a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The storage answered with an error: complete it to the caller; no path is at fault.
    Target,
    /// The request itself is wrong: complete it to the caller.
    Invalid,
    /// The path is at fault: fail it and issue the same request on another path. `alua`
    /// is the access state the sense revealed (standby, unavailable), for regrouping.
    PathFailure {
        reason: PathFailReason,
        alua: Option<AluaState>,
    },
    /// ALUA state transition in progress (NOT READY 04/0a, or becoming ready 04/01): not a
    /// path failure; retry in the same group after a short delay, up to
    /// `alua_transition_timeout`.
    Transitioning,
    /// The target is busy (BUSY, TASK SET FULL, ABORTED COMMAND): not a path failure;
    /// retry after a back-off, on another path when there is one, within the command's
    /// busy budget.
    Busy(Condition),
}

/// Classify an error returned by `PathTransport::submit`.
pub fn classify(err: &IoError) -> ErrorClass {
    classify_with_certainty(err).0
}

/// Whether the reason of [`classify`]'s `PathFailure` for `err` is inferred rather than
/// stated: no condition says why and the transport did not name the failure
/// ([`IoError::path_fail`]), so the kind is a guess (`SocketError`, with the error's
/// text). The transport's own `PathEvent::Failed` reason, when it follows, is the better
/// one (`Multipath::refine_fail_reason`).
pub fn reason_is_inferred(err: &IoError) -> bool {
    classify_with_certainty(err).1
}

fn classify_with_certainty(err: &IoError) -> (ErrorClass, bool) {
    let path = |kind, detail: String, alua| ErrorClass::PathFailure {
        reason: PathFailReason::new(kind, detail),
        alua,
    };
    let class = match err.condition() {
        Some(c) if c.is_transitioning() => ErrorClass::Transitioning,
        Some(c) if c.is_busy() => ErrorClass::Busy(c),
        Some(Condition::AluaStandby) => path(
            PathFailKind::AluaInaccessible,
            "target port in standby state (02/04/0b)".into(),
            Some(AluaState::STANDBY),
        ),
        Some(Condition::AluaUnavailable) => path(
            PathFailKind::AluaInaccessible,
            "target port in unavailable state (02/04/0c)".into(),
            Some(AluaState::UNAVAILABLE),
        ),
        Some(c @ Condition::NotReady { .. }) => path(PathFailKind::NotReady, c.to_string(), None),
        _ => match err.kind {
            IoErrorKind::Target => ErrorClass::Target,
            IoErrorKind::Invalid => ErrorClass::Invalid,
            // No condition: the transport failed the command (connection lost, timeout,
            // transport disrupted), and says why when it knows. A transport that says "no
            // path" for itself (not logged in) is a failed path.
            IoErrorKind::Path | IoErrorKind::NoPath => match err.path_fail_reason() {
                Some(reason) => ErrorClass::PathFailure { reason, alua: None },
                // It did not: the path's own `Failed` event, when it comes, carries the
                // precise kind; until then this one says what the I/O saw.
                None => {
                    return (
                        path(PathFailKind::SocketError, err.detail.clone(), None),
                        true,
                    )
                }
            },
        },
    };
    (class, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use scsi::sense::{
        ASYMMETRIC_ACCESS_STATE_TRANSITION, LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED,
        TARGET_PORT_IN_STANDBY_STATE, TARGET_PORT_IN_UNAVAILABLE_STATE, UNRECOVERED_READ_ERROR,
    };
    use scsi::{Asc, Sense, SenseFormat, SenseKey};

    fn with_sense(key: SenseKey, asc: Asc) -> IoError {
        let sense = Sense::new(key, asc).encode(SenseFormat::Fixed);
        IoError::from_scsi_status(0x02, Bytes::copy_from_slice(&sense))
    }

    #[test]
    fn table() {
        assert_eq!(
            classify(&with_sense(SenseKey::MEDIUM_ERROR, UNRECOVERED_READ_ERROR)),
            ErrorClass::Target
        );
        assert_eq!(
            classify(&IoError::new(IoErrorKind::Invalid, "x")),
            ErrorClass::Invalid
        );
        assert_eq!(
            classify(&with_sense(
                SenseKey::NOT_READY,
                ASYMMETRIC_ACCESS_STATE_TRANSITION
            )),
            ErrorClass::Transitioning
        );
        assert!(matches!(
            classify(&with_sense(SenseKey::NOT_READY, TARGET_PORT_IN_STANDBY_STATE)),
            ErrorClass::PathFailure { alua: Some(AluaState::STANDBY), reason } if reason.kind == PathFailKind::AluaInaccessible
        ));
        assert!(matches!(
            classify(&with_sense(
                SenseKey::NOT_READY,
                TARGET_PORT_IN_UNAVAILABLE_STATE
            )),
            ErrorClass::PathFailure {
                alua: Some(AluaState::UNAVAILABLE),
                ..
            }
        ));
        assert!(matches!(
            classify(&with_sense(
                SenseKey::NOT_READY,
                LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED
            )),
            ErrorClass::PathFailure { alua: None, reason }
                if reason.kind == PathFailKind::NotReady && reason.detail == "NOT READY 04/03"
        ));
        // Busy is the target's condition: never a path failure.
        for (status, c) in [(0x08, Condition::Busy), (0x28, Condition::TaskSetFull)] {
            assert_eq!(
                classify(&IoError::from_scsi_status(status, Bytes::new())),
                ErrorClass::Busy(c)
            );
        }
        assert_eq!(
            classify(&with_sense(SenseKey::ABORTED_COMMAND, Asc::new(0, 0))),
            ErrorClass::Busy(Condition::AbortedCommand)
        );
        assert_eq!(
            classify(&IoError::from_scsi_status(0x18, Bytes::new())),
            ErrorClass::Target
        );
        let generic = IoError::new(IoErrorKind::Path, "connection reset");
        assert!(matches!(
            classify(&generic),
            ErrorClass::PathFailure { alua: None, reason } if reason.detail == "connection reset"
                && reason.kind == PathFailKind::SocketError
        ));
        assert!(reason_is_inferred(&generic));
    }

    #[test]
    fn a_transport_that_says_why_is_believed() {
        let e = IoError::path_failed(PathFailKind::Stalled, "no answer for 500 ms");
        assert_eq!(
            classify(&e),
            ErrorClass::PathFailure {
                reason: PathFailReason::new(PathFailKind::Stalled, "no answer for 500 ms"),
                alua: None
            }
        );
        assert!(!reason_is_inferred(&e));
        // The condition decides before the transport's kind, and is never inferred.
        let standby = with_sense(SenseKey::NOT_READY, TARGET_PORT_IN_STANDBY_STATE);
        assert!(!reason_is_inferred(&standby));
        assert!(!reason_is_inferred(&IoError::new(IoErrorKind::Target, "x")));
    }
}
