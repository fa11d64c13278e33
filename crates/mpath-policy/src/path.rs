//! One path's state: the engine's view (dm-mpath's `A`/`F`) and the checker's view
//! (multipathd's `up`, `down`, `ghost`, `pending`, `shaky`, `delayed`), changed only through
//! [`next_state`], the one checked transition table.

use std::fmt;

use block::{PathFailKind, PathFailReason};
use scsi::AluaState;

/// A path's identity in its map. The paths a map starts with are numbered in the order
/// given (`PathId(0)`...); a path added later gets the next number. A number is never
/// given twice in a map's life, so an event, a counter or an operator's command that
/// names a removed path can never reach another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PathId(pub u32);

impl PathId {
    /// The number as an index: the path's position in the map's lists while no path has
    /// been removed (removed paths leave no hole in views; look paths up by id, e.g.
    /// [`MapView::path`](crate::MapView::path)).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path{}", self.0)
    }
}

/// Static and prioritizer facts about a path: what the grouping policies and the
/// service-time selector read. The daemon fills them from INQUIRY VPD 0x80/0x83 and REPORT
/// TARGET PORT GROUPS; tests write them directly.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PathInfo {
    /// How operators name the path (`iqn...,10.0.0.1:3260` or `sdb`).
    pub name: String,
    /// The prioritizer's value; when `None` it is derived from `alua` (see
    /// [`alua_priority`]), and without ALUA a path counts as active/optimized
    /// ([`UNKNOWN_PRIORITY`]).
    pub priority: Option<u32>,
    /// The asymmetric access state of the path's target port group, when known.
    pub alua: Option<AluaState>,
    /// The PREF bit of the path's target port group (RTPG).
    pub preferred: bool,
    /// UNIT SERIAL NUMBER (VPD 0x80), for `group_by_serial`.
    pub serial: String,
    /// The target's node name (iSCSI target name), for `group_by_node_name`.
    pub node_name: String,
    /// TARGET PORT GROUP, for `group_by_tpg`.
    pub tpg: Option<u16>,
    /// The service-time selector's relative throughput of this path, 0..=100; 0 means
    /// "unknown" (dm-service-time's semantics), 1 is the default for every path.
    pub relative_throughput: u32,
}

/// The priority of a path with neither a prioritizer value nor an ALUA state: that of an
/// active/optimized port. A path found in standby (from its sense data) then drops below
/// the paths nothing is known about, instead of tying with them.
pub const UNKNOWN_PRIORITY: u32 = 50;

/// The largest relative throughput dm-service-time accepts.
pub const MAX_RELATIVE_THROUGHPUT: u32 = 100;

impl PathInfo {
    pub fn new(name: impl Into<String>) -> PathInfo {
        PathInfo {
            name: name.into(),
            relative_throughput: 1,
            ..PathInfo::default()
        }
    }

    /// The priority grouping and failback use.
    pub fn effective_priority(&self) -> u32 {
        match (self.priority, self.alua) {
            (Some(p), _) => p,
            (None, Some(state)) => alua_priority(state, self.preferred),
            (None, None) => UNKNOWN_PRIORITY,
        }
    }

    /// Whether the ALUA state says I/O through this path is refused (standby, unavailable,
    /// offline): such a path is a `ghost` when it answers the checker.
    pub fn alua_inaccessible(&self) -> bool {
        self.alua.is_some_and(|s| {
            s == AluaState::STANDBY || s == AluaState::UNAVAILABLE || s == AluaState::OFFLINE
        })
    }
}

/// multipath-tools' `alua` prioritizer: active/optimized 50, active/non-optimized 10,
/// LBA-dependent 5, standby 1, everything else 0; the PREF bit adds 80.
pub fn alua_priority(state: AluaState, preferred: bool) -> u32 {
    let base = match state {
        AluaState::ACTIVE_OPTIMIZED => 50,
        AluaState::ACTIVE_NON_OPTIMIZED => 10,
        AluaState::LBA_DEPENDENT => 5,
        AluaState::STANDBY => 1,
        _ => 0,
    };
    base + if preferred { 80 } else { 0 }
}

/// The engine's view of a path, as dm-mpath shows it (`A`ctive / `F`ailed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmState {
    /// I/O may be sent to it.
    Active,
    /// No I/O goes to it until it is reinstated.
    Failed,
}

/// The checker's view of a path, as multipathd shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckerState {
    /// The path answers.
    Up,
    /// The path does not answer (or its transport is gone).
    Down,
    /// The path answers but the LU is not accessible through it (ALUA standby): usable only
    /// when nothing better is.
    Ghost,
    /// Not checked yet since the last change (e.g. the transport just logged in again).
    Pending,
    /// The path answers but has been flaky; used after up paths.
    Shaky,
    /// The path answers but its reinstatement is held back (flap damping).
    Delayed,
}

impl CheckerState {
    /// The checker states a path may have while the engine sends it I/O.
    pub fn may_be_active(self) -> bool {
        matches!(
            self,
            CheckerState::Up | CheckerState::Ghost | CheckerState::Pending | CheckerState::Shaky
        )
    }

    /// The checker says the path answers.
    pub fn answers(self) -> bool {
        matches!(
            self,
            CheckerState::Up | CheckerState::Ghost | CheckerState::Shaky | CheckerState::Delayed
        )
    }

    /// Selection tier inside a group: the lowest non-empty tier is used (up and pending
    /// paths first, then shaky ones, ghosts last).
    pub fn tier(self) -> u8 {
        match self {
            CheckerState::Up | CheckerState::Pending => 0,
            CheckerState::Shaky => 1,
            CheckerState::Ghost => 2,
            CheckerState::Down | CheckerState::Delayed => u8::MAX,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CheckerState::Up => "up",
            CheckerState::Down => "down",
            CheckerState::Ghost => "ghost",
            CheckerState::Pending => "pending",
            CheckerState::Shaky => "shaky",
            CheckerState::Delayed => "delayed",
        }
    }
}

impl fmt::Display for CheckerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Both views of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathState {
    pub dm: DmState,
    pub checker: CheckerState,
}

impl PathState {
    pub const ACTIVE_UP: PathState = PathState {
        dm: DmState::Active,
        checker: CheckerState::Up,
    };
    pub const FAILED_DOWN: PathState = PathState {
        dm: DmState::Failed,
        checker: CheckerState::Down,
    };

    pub fn new(dm: DmState, checker: CheckerState) -> PathState {
        PathState { dm, checker }
    }

    /// The state a path enters the map in (at start or when added): active when its
    /// transport is up — a ghost if ALUA says its port refuses I/O — else failed/down.
    /// Membership is not a transition of the table: a path enters in this state and
    /// leaves the map from any state, with nothing left behind to transition.
    pub fn initial(up: bool, alua_inaccessible: bool) -> PathState {
        match (up, alua_inaccessible) {
            (false, _) => PathState::FAILED_DOWN,
            (true, false) => PathState::ACTIVE_UP,
            (true, true) => PathState::new(DmState::Active, CheckerState::Ghost),
        }
    }

    /// The invariant every reachable state keeps: an active path's checker state allows
    /// I/O (never `down` or `delayed`).
    pub fn is_valid(self) -> bool {
        self.dm == DmState::Failed || self.checker.may_be_active()
    }

    /// The engine may send I/O to the path.
    pub fn is_usable(self) -> bool {
        self.dm == DmState::Active
    }
}

impl fmt::Display for PathState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dm = match self.dm {
            DmState::Active => "active",
            DmState::Failed => "failed",
        };
        write!(f, "{dm}/{}", self.checker)
    }
}

/// Who reinstated a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReinstateCause {
    /// The `reinstate path` message.
    Operator,
    /// The daemon's checker found the path answering again.
    Checker,
    /// The transport logged in again (`PathEvent::Recovered`).
    TransportRecovered,
    /// A flap-damping hold ran out with the checker still reporting the path up.
    HoldElapsed,
}

impl fmt::Display for ReinstateCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReinstateCause::Operator => "operator",
            ReinstateCause::Checker => "checker",
            ReinstateCause::TransportRecovered => "transport recovered",
            ReinstateCause::HoldElapsed => "flap hold elapsed",
        })
    }
}

/// What may happen to a path: the rows of the transition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathTransition {
    /// Stop sending I/O to the path.
    Fail(PathFailReason),
    /// Send I/O to the path again; the checker view becomes `checker`.
    Reinstate {
        cause: ReinstateCause,
        checker: CheckerState,
    },
    /// A checker result. On an active path `down` fails it; other results only change
    /// the checker view (reinstating is a separate decision).
    Check(CheckerState),
    /// Hold back the reinstatement of a failed path that answers (flap damping).
    Delay,
}

/// Why a transition was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the path is already failed")]
    AlreadyFailed,
    #[error("the path is already active")]
    AlreadyActive,
    #[error("{from} cannot become {to}")]
    Invalid { from: PathState, to: PathState },
    #[error("nothing changes")]
    NoChange,
}

/// The transition table: the state `t` leads to from `from`, or why it does not apply.
///
/// | from | transition | to |
/// |---|---|---|
/// | active/x | fail (administrative) | failed/x — the path itself still answers |
/// | active/x | fail (any other reason) | failed/down |
/// | failed/x | fail | refused: already failed |
/// | failed/x | reinstate(c) | active/c, c ∈ {up, ghost, pending, shaky} |
/// | active/x | reinstate | refused: already active |
/// | active/x | check(down) | failed/down |
/// | active/x | check(c), c ∈ {up, ghost, pending, shaky} | active/c |
/// | active/x | check(delayed) | refused |
/// | failed/x | check(c) | failed/c (failed/delayed stays delayed unless c is down) |
/// | failed/x, x answers | delay | failed/delayed |
///
/// Every result is checked against [`PathState::is_valid`]; a transition to the same
/// state is refused as [`TransitionError::NoChange`] so that events mean change.
///
/// Membership is outside the table: a path enters a map in [`PathState::initial`] (at
/// start or when added) and is removed from whatever state it is in.
pub fn next_state(from: PathState, t: &PathTransition) -> Result<PathState, TransitionError> {
    use CheckerState as C;
    use DmState::{Active, Failed};
    let to = match (from.dm, t) {
        (Active, PathTransition::Fail(reason)) => {
            if reason.kind == PathFailKind::Administrative {
                PathState::new(Failed, from.checker)
            } else {
                PathState::FAILED_DOWN
            }
        }
        (Failed, PathTransition::Fail(_)) => return Err(TransitionError::AlreadyFailed),
        (Failed, PathTransition::Reinstate { checker, .. }) => PathState::new(Active, *checker),
        (Active, PathTransition::Reinstate { .. }) => return Err(TransitionError::AlreadyActive),
        (Active, PathTransition::Check(C::Down)) => PathState::FAILED_DOWN,
        (Active, PathTransition::Check(c)) => PathState::new(Active, *c),
        (Failed, PathTransition::Check(c)) => {
            if from.checker == C::Delayed && *c != C::Down {
                from
            } else {
                PathState::new(Failed, *c)
            }
        }
        (Failed, PathTransition::Delay) if from.checker.answers() || from.checker == C::Pending => {
            PathState::new(Failed, C::Delayed)
        }
        (_, PathTransition::Delay) => {
            return Err(TransitionError::Invalid {
                from,
                to: PathState::new(Failed, C::Delayed),
            })
        }
    };
    if !to.is_valid() {
        return Err(TransitionError::Invalid { from, to });
    }
    if to == from {
        return Err(TransitionError::NoChange);
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CHECKER: [CheckerState; 6] = [
        CheckerState::Up,
        CheckerState::Down,
        CheckerState::Ghost,
        CheckerState::Pending,
        CheckerState::Shaky,
        CheckerState::Delayed,
    ];

    fn all_states() -> Vec<PathState> {
        let mut v = Vec::new();
        for dm in [DmState::Active, DmState::Failed] {
            for c in ALL_CHECKER {
                let s = PathState::new(dm, c);
                if s.is_valid() {
                    v.push(s);
                }
            }
        }
        v
    }

    fn all_transitions() -> Vec<PathTransition> {
        let mut v = vec![
            PathTransition::Fail(PathFailReason::new(PathFailKind::Stalled, "")),
            PathTransition::Fail(PathFailReason::new(PathFailKind::Administrative, "")),
            PathTransition::Delay,
        ];
        for c in ALL_CHECKER {
            v.push(PathTransition::Check(c));
            v.push(PathTransition::Reinstate {
                cause: ReinstateCause::Operator,
                checker: c,
            });
        }
        v
    }

    #[test]
    fn every_reachable_state_is_valid() {
        for from in all_states() {
            for t in all_transitions() {
                if let Ok(to) = next_state(from, &t) {
                    assert!(to.is_valid(), "{from} --{t:?}--> {to}");
                    assert_ne!(to, from);
                }
            }
        }
    }

    #[test]
    fn table_rows() {
        let stalled = PathTransition::Fail(PathFailReason::new(PathFailKind::Stalled, "x"));
        let admin = PathTransition::Fail(PathFailReason::new(PathFailKind::Administrative, ""));
        let ghost = PathState::new(DmState::Active, CheckerState::Ghost);
        assert_eq!(
            next_state(PathState::ACTIVE_UP, &stalled),
            Ok(PathState::FAILED_DOWN)
        );
        assert_eq!(
            next_state(ghost, &admin),
            Ok(PathState::new(DmState::Failed, CheckerState::Ghost))
        );
        assert_eq!(
            next_state(PathState::FAILED_DOWN, &stalled),
            Err(TransitionError::AlreadyFailed)
        );
        assert_eq!(
            next_state(
                PathState::ACTIVE_UP,
                &PathTransition::Reinstate {
                    cause: ReinstateCause::Checker,
                    checker: CheckerState::Up
                }
            ),
            Err(TransitionError::AlreadyActive)
        );
        assert!(matches!(
            next_state(
                PathState::FAILED_DOWN,
                &PathTransition::Reinstate {
                    cause: ReinstateCause::Checker,
                    checker: CheckerState::Delayed
                }
            ),
            Err(TransitionError::Invalid { .. })
        ));
        assert_eq!(
            next_state(
                PathState::ACTIVE_UP,
                &PathTransition::Check(CheckerState::Down)
            ),
            Ok(PathState::FAILED_DOWN)
        );
        // A checker report does not cut a flap hold short; only `down` ends it.
        let delayed = PathState::new(DmState::Failed, CheckerState::Delayed);
        assert_eq!(
            next_state(delayed, &PathTransition::Check(CheckerState::Up)),
            Err(TransitionError::NoChange)
        );
        assert_eq!(
            next_state(delayed, &PathTransition::Check(CheckerState::Down)),
            Ok(PathState::FAILED_DOWN)
        );
        assert!(next_state(PathState::FAILED_DOWN, &PathTransition::Delay).is_err());
        assert!(next_state(PathState::ACTIVE_UP, &PathTransition::Delay).is_err());
    }

    #[test]
    fn priorities() {
        let mut p = PathInfo::new("a");
        assert_eq!(p.effective_priority(), UNKNOWN_PRIORITY);
        p.alua = Some(AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(p.effective_priority(), 50);
        p.preferred = true;
        assert_eq!(p.effective_priority(), 130);
        p.alua = Some(AluaState::STANDBY);
        p.preferred = false;
        assert_eq!(p.effective_priority(), 1);
        assert!(p.alua_inaccessible());
        p.priority = Some(7);
        assert_eq!(p.effective_priority(), 7);
    }
}
