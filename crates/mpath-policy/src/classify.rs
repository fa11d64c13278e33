//! What a failed command means for the map: the engine's decision table for errors that
//! come back from a path (DESIGN §4).

use block::{IoError, IoErrorKind, PathFailKind, PathFailReason};
use scsi::{AluaState, Sense};

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
    /// ALUA state transition in progress (NOT READY 04/0a): not a path failure; retry in
    /// the same group after a short delay.
    Transitioning,
}

/// Classify an error returned by `PathTransport::submit`.
pub fn classify(err: &IoError) -> ErrorClass {
    classify_with_certainty(err).0
}

/// Whether the reason of [`classify`]'s `PathFailure` for `err` is inferred rather than
/// stated: no sense says why and the transport did not name the failure
/// ([`IoError::path_fail`]), so the kind is a guess (`SocketError`, with the error's
/// text). The transport's own `PathEvent::Failed` reason, when it follows, is the better
/// one (`Multipath::refine_fail_reason`).
pub fn reason_is_inferred(err: &IoError) -> bool {
    classify_with_certainty(err).1
}

fn classify_with_certainty(err: &IoError) -> (ErrorClass, bool) {
    let class = match err.kind {
        IoErrorKind::Target => ErrorClass::Target,
        IoErrorKind::Invalid => ErrorClass::Invalid,
        // A transport that says "no path" for itself (not logged in) is a failed path.
        IoErrorKind::Path | IoErrorKind::NoPath => {
            let sense = err.scsi.as_ref().and_then(|s| Sense::decode(&s.sense).ok());
            match sense {
                Some(s) if s.is_alua_transitioning() => ErrorClass::Transitioning,
                Some(s) if s.is_alua_standby() => ErrorClass::PathFailure {
                    reason: PathFailReason::new(
                        PathFailKind::AluaInaccessible,
                        "target port in standby state (02/04/0b)",
                    ),
                    alua: Some(AluaState::STANDBY),
                },
                Some(s) if s.is_alua_unavailable() => ErrorClass::PathFailure {
                    reason: PathFailReason::new(
                        PathFailKind::AluaInaccessible,
                        "target port in unavailable state (02/04/0c)",
                    ),
                    alua: Some(AluaState::UNAVAILABLE),
                },
                Some(s) if s.is_not_ready() => ErrorClass::PathFailure {
                    reason: PathFailReason::new(
                        PathFailKind::NotReady,
                        format!("NOT READY {}", s.asc),
                    ),
                    alua: None,
                },
                // No sense: the transport failed the command (connection lost, timeout,
                // transport disrupted), and says why when it knows.
                _ => match err.path_fail_reason() {
                    Some(reason) => ErrorClass::PathFailure { reason, alua: None },
                    // It did not: the path's own `Failed` event, when it comes, carries
                    // the precise kind; until then this one says what the I/O saw.
                    None => {
                        return (
                            ErrorClass::PathFailure {
                                reason: PathFailReason::new(
                                    PathFailKind::SocketError,
                                    err.detail.clone(),
                                ),
                                alua: None,
                            },
                            true,
                        )
                    }
                },
            }
        }
    };
    (class, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use scsi::sense::{
        ASYMMETRIC_ACCESS_STATE_TRANSITION, TARGET_PORT_IN_STANDBY_STATE,
        TARGET_PORT_IN_UNAVAILABLE_STATE, UNRECOVERED_READ_ERROR,
    };
    use scsi::{Asc, SenseFormat, SenseKey};

    fn with_sense(kind: IoErrorKind, key: SenseKey, asc: Asc) -> IoError {
        let sense = Sense::new(key, asc).encode(SenseFormat::Fixed);
        IoError::scsi(kind, "x", 0x02, Bytes::copy_from_slice(&sense))
    }

    #[test]
    fn table() {
        assert_eq!(
            classify(&with_sense(
                IoErrorKind::Target,
                SenseKey::MEDIUM_ERROR,
                UNRECOVERED_READ_ERROR
            )),
            ErrorClass::Target
        );
        assert_eq!(
            classify(&IoError::new(IoErrorKind::Invalid, "x")),
            ErrorClass::Invalid
        );
        assert_eq!(
            classify(&with_sense(
                IoErrorKind::Path,
                SenseKey::NOT_READY,
                ASYMMETRIC_ACCESS_STATE_TRANSITION
            )),
            ErrorClass::Transitioning
        );
        assert!(matches!(
            classify(&with_sense(IoErrorKind::Path, SenseKey::NOT_READY, TARGET_PORT_IN_STANDBY_STATE)),
            ErrorClass::PathFailure { alua: Some(AluaState::STANDBY), reason } if reason.kind == PathFailKind::AluaInaccessible
        ));
        assert!(matches!(
            classify(&with_sense(
                IoErrorKind::Path,
                SenseKey::NOT_READY,
                TARGET_PORT_IN_UNAVAILABLE_STATE
            )),
            ErrorClass::PathFailure {
                alua: Some(AluaState::UNAVAILABLE),
                ..
            }
        ));
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
        // Sense decides before the transport's kind, and is never inferred.
        let standby = with_sense(
            IoErrorKind::Path,
            SenseKey::NOT_READY,
            TARGET_PORT_IN_STANDBY_STATE,
        );
        assert!(!reason_is_inferred(&standby));
        assert!(!reason_is_inferred(&IoError::new(IoErrorKind::Target, "x")));
    }
}
