//! What a SCSI command's status and sense mean — decoded once, where the response arrives
//! (the transport), so that no layer above parses sense bytes again.
//!
//! Every layer that judges an outcome (the multipath policy and engine, the checker, probe,
//! the exports' errno) matches on [`Condition`]; the raw status and sense stay in
//! [`ScsiFailure`](crate::ScsiFailure) for display.

use std::fmt;

use scsi::sense::{self as s, Sense, SenseKey};

use crate::{IoErrorKind, LuChange};

/// SCSI status codes (SAM-5) the decoder tells apart.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// What a command's non-GOOD outcome means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    // --- Path conditions: this path cannot serve the LU now; another one may.
    /// NOT READY 04/0b: the target port is in ALUA standby.
    AluaStandby,
    /// NOT READY 04/0c: the target port is in ALUA unavailable.
    AluaUnavailable,
    /// NOT READY 04/0a: an ALUA state transition is in progress. Retried by the engine for
    /// up to its `alua_transition_timeout`, then a path failure.
    AluaTransitioning,
    /// NOT READY 04/01: the LU is becoming ready; retried as a transition.
    BecomingReady,
    /// NOT READY for another reason (offline, manual intervention, no medium…): the LU does
    /// not serve through this path.
    NotReady {
        asc: u8,
        ascq: u8,
    },

    // --- Conditions the transport retries at once: the command was not executed.
    /// UNIT ATTENTION; what it said changed, when the LU's keepers care.
    UnitAttention {
        change: Option<LuChange>,
    },
    /// TASK ABORTED status: another initiator's task management aborted it.
    TaskAborted,

    // --- Target conditions: the LU answered; no path is at fault.
    /// BUSY status: retried with back-off by the engine within the command's time budget;
    /// never a path failure.
    Busy,
    /// TASK SET FULL status: as BUSY.
    TaskSetFull,
    /// ABORTED COMMAND sense key: the target gave up on this attempt; retried as BUSY.
    AbortedCommand,
    ReservationConflict,
    MediumError,
    HardwareError,
    /// ILLEGAL REQUEST; `lba_out_of_range` for 21/00.
    IllegalRequest {
        lba_out_of_range: bool,
    },
    /// DATA PROTECT; `space_allocation_failed` for 27/07 (a thin LU out of space).
    DataProtect {
        space_allocation_failed: bool,
    },
    Miscompare,
    /// Any other status or CHECK CONDITION (including sense that cannot be decoded).
    Other,
}

/// The three kinds of [`Condition`], which say whose problem it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionClass {
    /// The path cannot serve the LU now.
    Path,
    /// The command was not executed; the transport sends it again at once.
    RetryNow,
    /// The storage answered; no path is at fault.
    Target,
}

impl Condition {
    /// Decode a command's SCSI status and sense (fixed or descriptor format). Total: sense
    /// that cannot be decoded is [`Condition::Other`]. Not meant for GOOD / CONDITION MET.
    pub fn decode(status: u8, sense: &[u8]) -> Condition {
        Condition::decode_described(status, sense).0
    }

    /// [`decode`](Self::decode), and a line for people: the sense key and code as the
    /// standard names them (`NOT READY 04/0b`), or the status.
    pub fn decode_described(status: u8, sense: &[u8]) -> (Condition, String) {
        if status == status::CHECK_CONDITION {
            return match Sense::decode(sense) {
                Ok(sense) => (
                    Condition::from_sense(&sense),
                    format!("{} {}", sense.key, sense.asc),
                ),
                Err(_) if sense.is_empty() => {
                    (Condition::Other, "CHECK CONDITION without sense".into())
                }
                Err(_) => (
                    Condition::Other,
                    "CHECK CONDITION with undecodable sense".into(),
                ),
            };
        }
        let c = match status {
            status::BUSY => Condition::Busy,
            status::TASK_SET_FULL => Condition::TaskSetFull,
            status::TASK_ABORTED => Condition::TaskAborted,
            status::RESERVATION_CONFLICT => Condition::ReservationConflict,
            other => return (Condition::Other, format!("SCSI status {other:#04x}")),
        };
        (c, c.to_string())
    }

    fn from_sense(sense: &Sense) -> Condition {
        let asc = sense.asc;
        match sense.key {
            SenseKey::UNIT_ATTENTION => Condition::UnitAttention {
                change: if asc == s::CAPACITY_DATA_HAS_CHANGED {
                    Some(LuChange::Capacity)
                } else if asc == s::ASYMMETRIC_ACCESS_STATE_CHANGED {
                    Some(LuChange::AccessStates)
                } else if asc == s::REPORTED_LUNS_DATA_HAS_CHANGED {
                    Some(LuChange::Inventory)
                } else {
                    None
                },
            },
            SenseKey::NOT_READY => match asc {
                s::TARGET_PORT_IN_STANDBY_STATE => Condition::AluaStandby,
                s::TARGET_PORT_IN_UNAVAILABLE_STATE => Condition::AluaUnavailable,
                s::ASYMMETRIC_ACCESS_STATE_TRANSITION => Condition::AluaTransitioning,
                s::LOGICAL_UNIT_IS_IN_PROCESS_OF_BECOMING_READY => Condition::BecomingReady,
                _ => Condition::NotReady {
                    asc: asc.code,
                    ascq: asc.qualifier,
                },
            },
            SenseKey::ABORTED_COMMAND => Condition::AbortedCommand,
            SenseKey::MEDIUM_ERROR => Condition::MediumError,
            SenseKey::HARDWARE_ERROR => Condition::HardwareError,
            SenseKey::ILLEGAL_REQUEST => Condition::IllegalRequest {
                lba_out_of_range: asc == s::LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE,
            },
            SenseKey::DATA_PROTECT => Condition::DataProtect {
                space_allocation_failed: asc.code == 0x27 && asc.qualifier == 0x07,
            },
            SenseKey::MISCOMPARE => Condition::Miscompare,
            _ => Condition::Other,
        }
    }

    pub fn class(self) -> ConditionClass {
        match self {
            Condition::AluaStandby
            | Condition::AluaUnavailable
            | Condition::AluaTransitioning
            | Condition::BecomingReady
            | Condition::NotReady { .. } => ConditionClass::Path,
            Condition::UnitAttention { .. } | Condition::TaskAborted => ConditionClass::RetryNow,
            _ => ConditionClass::Target,
        }
    }

    /// The [`IoErrorKind`] an error with this condition has.
    pub fn kind(self) -> IoErrorKind {
        match self.class() {
            ConditionClass::Path => IoErrorKind::Path,
            // A retry-now condition that reaches a caller ran out of retries: the target
            // keeps answering, the path is fine.
            ConditionClass::RetryNow | ConditionClass::Target => IoErrorKind::Target,
        }
    }

    /// BUSY, TASK SET FULL, ABORTED COMMAND: the target could not take the command now;
    /// it says nothing about the path.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            Condition::Busy | Condition::TaskSetFull | Condition::AbortedCommand
        )
    }

    /// ALUA transitioning or becoming ready: the path will serve shortly.
    pub fn is_transitioning(self) -> bool {
        matches!(
            self,
            Condition::AluaTransitioning | Condition::BecomingReady
        )
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::AluaStandby => f.write_str("ALUA standby (02/04/0b)"),
            Condition::AluaUnavailable => f.write_str("ALUA unavailable (02/04/0c)"),
            Condition::AluaTransitioning => f.write_str("ALUA transitioning (02/04/0a)"),
            Condition::BecomingReady => f.write_str("becoming ready (02/04/01)"),
            Condition::NotReady { asc, ascq } => write!(f, "NOT READY {asc:02x}/{ascq:02x}"),
            Condition::UnitAttention { change: Some(c) } => write!(f, "UNIT ATTENTION: {c}"),
            Condition::UnitAttention { change: None } => f.write_str("UNIT ATTENTION"),
            Condition::TaskAborted => f.write_str("TASK ABORTED"),
            Condition::Busy => f.write_str("BUSY"),
            Condition::TaskSetFull => f.write_str("TASK SET FULL"),
            Condition::AbortedCommand => f.write_str("ABORTED COMMAND"),
            Condition::ReservationConflict => f.write_str("RESERVATION CONFLICT"),
            Condition::MediumError => f.write_str("MEDIUM ERROR"),
            Condition::HardwareError => f.write_str("HARDWARE ERROR"),
            Condition::IllegalRequest {
                lba_out_of_range: true,
            } => f.write_str("ILLEGAL REQUEST: LBA out of range"),
            Condition::IllegalRequest { .. } => f.write_str("ILLEGAL REQUEST"),
            Condition::DataProtect {
                space_allocation_failed: true,
            } => f.write_str("DATA PROTECT: space allocation failed"),
            Condition::DataProtect { .. } => f.write_str("DATA PROTECT"),
            Condition::Miscompare => f.write_str("MISCOMPARE"),
            Condition::Other => f.write_str("SCSI error"),
        }
    }
}

/// The wait before retrying a command the target answered BUSY, TASK SET FULL or ABORTED
/// COMMAND, after `answers` such answers: 10 ms, doubling up to 100 ms — a busy target is
/// usually busy for milliseconds, and a long storm is asked ten times a second.
pub fn busy_delay(answers: u32) -> std::time::Duration {
    std::time::Duration::from_millis(10u64 << answers.saturating_sub(1).min(4))
        .min(std::time::Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scsi::{Asc, SenseFormat};

    fn check(key: SenseKey, asc: Asc, format: SenseFormat) -> Condition {
        let sense = Sense::new(key, asc).encode(format);
        Condition::decode(status::CHECK_CONDITION, sense.as_bytes())
    }

    #[test]
    fn busy_back_off() {
        let d: Vec<u128> = (1..=7).map(|a| busy_delay(a).as_millis()).collect();
        assert_eq!(d, [10, 20, 40, 80, 100, 100, 100]);
    }

    #[test]
    fn statuses() {
        assert_eq!(Condition::decode(status::BUSY, &[]), Condition::Busy);
        assert_eq!(
            Condition::decode(status::TASK_SET_FULL, &[]),
            Condition::TaskSetFull
        );
        assert_eq!(
            Condition::decode(status::TASK_ABORTED, &[]),
            Condition::TaskAborted
        );
        assert_eq!(
            Condition::decode(status::RESERVATION_CONFLICT, &[]),
            Condition::ReservationConflict
        );
        assert_eq!(Condition::decode(status::ACA_ACTIVE, &[]), Condition::Other);
        // CHECK CONDITION without (or with garbage) sense.
        assert_eq!(
            Condition::decode(status::CHECK_CONDITION, &[]),
            Condition::Other
        );
        assert_eq!(
            Condition::decode(status::CHECK_CONDITION, &[0x70]),
            Condition::Other
        );
        assert!(Condition::Busy.is_busy() && Condition::TaskSetFull.is_busy());
        assert_eq!(Condition::Busy.kind(), IoErrorKind::Target);
    }

    #[test]
    fn senses_in_both_formats() {
        for f in [SenseFormat::Fixed, SenseFormat::Descriptor] {
            let c = |k, a| check(k, a, f);
            assert_eq!(
                c(SenseKey::NOT_READY, s::TARGET_PORT_IN_STANDBY_STATE),
                Condition::AluaStandby
            );
            assert_eq!(
                c(SenseKey::NOT_READY, s::TARGET_PORT_IN_UNAVAILABLE_STATE),
                Condition::AluaUnavailable
            );
            assert_eq!(
                c(SenseKey::NOT_READY, s::ASYMMETRIC_ACCESS_STATE_TRANSITION),
                Condition::AluaTransitioning
            );
            assert_eq!(
                c(
                    SenseKey::NOT_READY,
                    s::LOGICAL_UNIT_IS_IN_PROCESS_OF_BECOMING_READY
                ),
                Condition::BecomingReady
            );
            assert_eq!(
                c(
                    SenseKey::NOT_READY,
                    s::LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED
                ),
                Condition::NotReady {
                    asc: 0x04,
                    ascq: 0x03
                }
            );
            assert_eq!(
                c(SenseKey::UNIT_ATTENTION, s::CAPACITY_DATA_HAS_CHANGED),
                Condition::UnitAttention {
                    change: Some(LuChange::Capacity)
                }
            );
            assert_eq!(
                c(SenseKey::UNIT_ATTENTION, s::POWER_ON_OCCURRED),
                Condition::UnitAttention { change: None }
            );
            assert_eq!(
                c(
                    SenseKey::ILLEGAL_REQUEST,
                    s::LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE
                ),
                Condition::IllegalRequest {
                    lba_out_of_range: true
                }
            );
            assert_eq!(
                c(SenseKey::DATA_PROTECT, Asc::new(0x27, 0x07)),
                Condition::DataProtect {
                    space_allocation_failed: true
                }
            );
            assert_eq!(
                c(SenseKey::DATA_PROTECT, s::WRITE_PROTECTED),
                Condition::DataProtect {
                    space_allocation_failed: false
                }
            );
            assert_eq!(
                c(
                    SenseKey::ABORTED_COMMAND,
                    s::NO_ADDITIONAL_SENSE_INFORMATION
                ),
                Condition::AbortedCommand
            );
            assert_eq!(
                c(SenseKey::MEDIUM_ERROR, s::UNRECOVERED_READ_ERROR),
                Condition::MediumError
            );
            assert_eq!(
                c(SenseKey::MISCOMPARE, s::MISCOMPARE_DURING_VERIFY_OPERATION),
                Condition::Miscompare
            );
        }
        assert_eq!(Condition::AluaStandby.class(), ConditionClass::Path);
        assert_eq!(Condition::MediumError.class(), ConditionClass::Target);
    }
}
