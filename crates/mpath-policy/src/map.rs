//! One multipath map's policy state: its paths, priority groups, the active group,
//! failover and failback, flap damping and the no-path (queueing) state.
//!
//! [`Multipath`] is a sans-IO state machine in the style of `quinn-proto`'s `Connection`:
//! inputs are method calls with `now` passed in (`fail_path`, `reinstate_path`,
//! `checker_report`, `switch_group`, `add_path`, `remove_path`, `handle_timeout`...);
//! outputs are polled
//! ([`Multipath::poll_event`], [`Multipath::poll_timeout`]) or read ([`Multipath::routing`],
//! [`Multipath::no_path_verdict`]). It never reads a clock and performs nothing.
//!
//! Whenever what the I/O path may use changes, [`Multipath::generation`] grows: the
//! engine republishes its routing then.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use block::{PathFailKind, PathFailReason};
use scsi::AluaState;

use crate::event::{Event, EventKind, QueueEndCause, SwitchCause};
use crate::group::{group_paths, GroupStatus, Grouping, PriorityGroup};
use crate::path::{
    next_state, CheckerState, DmState, PathId, PathInfo, PathState, PathTransition, ReinstateCause,
    TransitionError,
};
use crate::selector::SelectorKind;

/// How long I/O queues with no usable path before it fails (DESIGN §6: bounded, never an
/// unkillable hang; 60 s covers a controller failover or a switch reboot, and is what
/// LIO's 12 x 5 s comes to).
pub const DEFAULT_NO_PATH_QUEUE: Duration = Duration::from_secs(60);

/// Delay before retrying an I/O that met an ALUA transition (NOT READY 04/0a). Arrays
/// finish a transition in tens of milliseconds to seconds; 100 ms keeps a transitioning LU
/// from being hammered while adding little latency to short transitions.
pub const DEFAULT_ALUA_TRANSITION_RETRY: Duration = Duration::from_millis(100);

/// How long an I/O may keep meeting an ALUA transition before its path is failed: the
/// Linux ALUA handler's default transition timeout.
pub const DEFAULT_ALUA_TRANSITION_TIMEOUT: Duration = Duration::from_secs(60);

/// Default [`MapConfig::busy_timeout`]: Linux's default SCSI command timeout, within which
/// its midlayer retries BUSY and TASK SET FULL.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Events kept for a consumer that does not poll: older ones are dropped, so a map that
/// nobody watches does not grow without bound. A flapping map makes a few events per
/// second; this holds minutes of them.
const EVENT_BACKLOG_MAX: usize = 4096;

/// What to do when a better group than the active one becomes usable
/// (multipath.conf `failback`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Failback {
    /// Switch at once. The default (DESIGN §6).
    #[default]
    Immediate,
    /// Never switch back by itself; only an operator's `switch group` or a failover moves
    /// the map.
    Manual,
    /// Switch back only when the first path of the better group comes back — not when
    /// another host (or an operator) moved the map away while that group was usable.
    Followover,
    /// Switch back when the better group has been usable this long.
    Deferred(Duration),
}

/// What I/O does when no path is usable (multipath.conf `no_path_retry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoPathPolicy {
    /// Fail at once.
    Fail,
    /// Queue for this long after the last path went away, then fail.
    Queue(Duration),
    /// Queue until a path comes back, however long (`queue`); only when asked for.
    QueueForever,
}

impl Default for NoPathPolicy {
    fn default() -> NoPathPolicy {
        NoPathPolicy::Queue(DEFAULT_NO_PATH_QUEUE)
    }
}

impl NoPathPolicy {
    fn queues(self) -> bool {
        self != NoPathPolicy::Fail
    }
}

/// Hold back the automatic reinstatement of a path that keeps failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlapDamping {
    /// This many failures...
    pub failures: u32,
    /// ...within this window make a path flapping...
    pub window: Duration,
    /// ...and its next automatic reinstatement waits this long (operators bypass it).
    pub hold: Duration,
}

impl Default for FlapDamping {
    fn default() -> FlapDamping {
        // Three failures in a minute is not a one-off network blip; thirty seconds of
        // hold lets a bad link settle (or the operator look) while the other paths carry
        // the load. multipathd's san_path_err_* defaults are of the same order.
        FlapDamping {
            failures: 3,
            window: Duration::from_secs(60),
            hold: Duration::from_secs(30),
        }
    }
}

/// A map's policy configuration. Defaults per DESIGN §6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapConfig {
    pub grouping: Grouping,
    pub selector: SelectorKind,
    pub failback: Failback,
    pub no_path: NoPathPolicy,
    /// `None` disables flap damping.
    pub flap: Option<FlapDamping>,
    pub alua_transition_retry: Duration,
    pub alua_transition_timeout: Duration,
    /// How long a command the target answers BUSY, TASK SET FULL or ABORTED COMMAND is
    /// retried (with a back-off of 10 ms doubling to 100 ms, on another path when there is
    /// one) before the caller gets the target's error. A busy target never fails a path.
    pub busy_timeout: Duration,
}

impl Default for MapConfig {
    fn default() -> MapConfig {
        MapConfig {
            grouping: Grouping::GroupByPrio,
            selector: SelectorKind::ServiceTime,
            failback: Failback::Immediate,
            no_path: NoPathPolicy::default(),
            flap: Some(FlapDamping::default()),
            alua_transition_retry: DEFAULT_ALUA_TRANSITION_RETRY,
            alua_transition_timeout: DEFAULT_ALUA_TRANSITION_TIMEOUT,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }
}

/// Why a message or input did not apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("no {0} in this map")]
    NoSuchPath(PathId),
    #[error("no group {0} in this map")]
    NoSuchGroup(usize),
    #[error("{0} is already failed")]
    PathAlreadyFailed(PathId),
    #[error("{0} is already active")]
    PathAlreadyActive(PathId),
    #[error("{path}: {error}")]
    Transition {
        path: PathId,
        error: TransitionError,
    },
    #[error("group {0} is disabled")]
    GroupDisabled(usize),
    #[error("group {0} is not disabled")]
    GroupNotDisabled(usize),
    #[error("group {0} has no usable path")]
    GroupHasNoUsablePath(usize),
    #[error("{0} was failed by an operator: only an operator reinstates it")]
    HeldByOperator(PathId),
    #[error("queue_if_no_path is already {}", if *.0 { "on" } else { "off" })]
    QueueIfNoPathAlready(bool),
}

/// What a request with no usable path does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoPathVerdict {
    /// A path is usable: issue it.
    Retry,
    /// Wait for a path, until `until` (`None`: however long it takes).
    Queue { until: Option<Instant> },
    /// Fail it, for this reason.
    Fail(NoPathReason),
}

/// Why I/O fails for want of a path: the policy's reason, which the engine puts in the
/// `NoPath` error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoPathReason {
    /// `no_path_retry fail`.
    PolicyFail,
    /// The queueing window ran out.
    QueueExpired { after: Duration },
    /// Queueing was turned off at run time.
    QueueingDisabled,
}

impl fmt::Display for NoPathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoPathReason::PolicyFail => f.write_str("no usable path (no-path policy: fail)"),
            NoPathReason::QueueExpired { after } => {
                write!(f, "no usable path for {after:?}: queueing window expired")
            }
            NoPathReason::QueueingDisabled => {
                f.write_str("no usable path and queue_if_no_path is off")
            }
        }
    }
}

/// Whether queueing follows the configuration or an operator's override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueMode {
    Configured,
    /// `queue_if_no_path` off.
    Off,
    /// `queue_if_no_path` on while the configuration says fail: queue for the default
    /// window.
    On,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoPathState {
    Usable,
    Queueing {
        since: Instant,
        until: Option<Instant>,
    },
    Failing {
        since: Instant,
        reason: NoPathReason,
    },
}

/// What prompted a refresh of the group choice (followover failback needs to know).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Initial,
    Other,
    /// The path became usable: reinstated, or added up.
    Reinstated(PathId),
}

#[derive(Clone, Debug)]
struct PathEntry {
    id: PathId,
    info: PathInfo,
    state: PathState,
    since: Instant,
    last_failure: Option<PathFailReason>,
    /// The current failure's reason was inferred from a command's error that did not say
    /// why; the transport's own reason replaces it (once) while the path stays failed.
    reason_inferred: bool,
    failures: u64,
    /// Failure times within the flap window (at most `FlapDamping::failures` kept).
    recent_failures: VecDeque<Instant>,
    /// A held-back reinstatement happens at this time.
    reinstate_at: Option<Instant>,
    /// Failed by an operator (an `Administrative` reason): no automatic cause reinstates
    /// it, so that a transport coming back does not silently undo the operator.
    operator_failed: bool,
}

/// A read-only view of one path, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathView {
    pub id: PathId,
    pub info: PathInfo,
    pub state: PathState,
    /// When the state last changed.
    pub since: Instant,
    pub group: Option<usize>,
    pub last_failure: Option<PathFailReason>,
    pub failures: u64,
    pub reinstate_at: Option<Instant>,
    /// Failed by an operator; only an operator reinstates it.
    pub operator_failed: bool,
}

/// A read-only view of one priority group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub index: usize,
    pub status: GroupStatus,
    pub priority: u32,
    pub paths: Vec<PathId>,
    /// Chosen by an operator's `switch group`: failback leaves it alone.
    pub pinned: bool,
}

/// Whether the map queues or fails for want of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueingView {
    /// Some path is usable.
    Usable,
    Queueing {
        since: Instant,
        until: Option<Instant>,
    },
    Failing {
        since: Instant,
        reason: NoPathReason,
    },
}

/// The serialisable projection of a map's policy state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapView {
    /// The map's paths in id order; removed paths are not shown.
    pub paths: Vec<PathView>,
    pub groups: Vec<GroupView>,
    pub active_group: Option<usize>,
    pub queueing: QueueingView,
    pub queue_if_no_path: bool,
    pub failback_at: Option<Instant>,
    pub generation: u64,
}

impl MapView {
    /// The view of path `id` (`paths` is in id order and leaves removed paths out, so
    /// after a removal a path's position is not its id).
    pub fn path(&self, id: PathId) -> Option<&PathView> {
        self.paths
            .binary_search_by_key(&id, |p| p.id)
            .ok()
            .map(|i| &self.paths[i])
    }
}

/// A held-back or immediate reinstatement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reinstatement {
    Now,
    /// Flap damping holds the path failed until then.
    Delayed {
        until: Instant,
    },
}

/// One map's policy state machine (see the module docs).
#[derive(Clone, Debug)]
pub struct Multipath {
    config: MapConfig,
    paths: Vec<PathEntry>,
    groups: Vec<PriorityGroup>,
    current: Option<usize>,
    /// The group an operator switched to; failback does not undo it (multipath-tools #154:
    /// `switchgroup` followed by an immediate failback silently switching back).
    pinned: Option<usize>,
    /// Deferred failback: (target group, when).
    failback_at: Option<(usize, Instant)>,
    queue_mode: QueueMode,
    no_path: NoPathState,
    no_path_total: Duration,
    generation: u64,
    events: VecDeque<Event>,
    /// The id the next added path gets: ids are never given twice.
    next_id: u32,
}

impl Multipath {
    /// A map over `paths` (facts, and whether the transport is up now). Paths that are not
    /// up start failed.
    pub fn new(config: MapConfig, paths: Vec<(PathInfo, bool)>, now: Instant) -> Multipath {
        let paths: Vec<PathEntry> = paths
            .into_iter()
            .enumerate()
            .map(|(i, (info, up))| {
                PathEntry::new(PathId(i as u32), info, up, now, "not connected at start")
            })
            .collect();
        let next_id = paths.len() as u32;
        let mut m = Multipath {
            config,
            paths,
            groups: Vec::new(),
            current: None,
            pinned: None,
            failback_at: None,
            queue_mode: QueueMode::Configured,
            no_path: NoPathState::Usable,
            no_path_total: Duration::ZERO,
            generation: 0,
            events: VecDeque::new(),
            next_id,
        };
        m.groups = m.build_groups();
        m.refresh(now, Trigger::Initial);
        m
    }

    pub fn config(&self) -> &MapConfig {
        &self.config
    }

    /// Grows whenever the routing (or anything a status display shows) changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn path_count(&self) -> usize {
        self.paths.len()
    }

    pub fn path_state(&self, id: PathId) -> Option<PathState> {
        self.entry(id).map(|p| p.state)
    }

    pub fn path_info(&self, id: PathId) -> Option<&PathInfo> {
        self.entry(id).map(|p| &p.info)
    }

    /// The map's paths, in id order.
    pub fn path_ids(&self) -> Vec<PathId> {
        self.paths.iter().map(|p| p.id).collect()
    }

    /// Whether `id` is a path of the map (not removed, not unknown).
    pub fn contains_path(&self, id: PathId) -> bool {
        self.pos(id).is_some()
    }

    /// The id [`add_path`](Self::add_path) gives the next path, for a caller that must
    /// name the path before adding it (to subscribe to its events first).
    pub fn next_path_id(&self) -> PathId {
        PathId(self.next_id)
    }

    pub fn active_group(&self) -> Option<usize> {
        self.current
    }

    pub fn groups(&self) -> &[PriorityGroup] {
        &self.groups
    }

    pub fn group_status(&self, g: usize) -> Option<GroupStatus> {
        let group = self.groups.get(g)?;
        Some(if self.current == Some(g) {
            GroupStatus::Active
        } else if group.disabled {
            GroupStatus::Disabled
        } else {
            GroupStatus::Enabled
        })
    }

    /// The paths I/O may be sent to now: the usable paths of the active group, of its best
    /// checker tier (up before shaky before ghost). Empty when no path is usable.
    pub fn routing(&self) -> Vec<PathId> {
        let Some(g) = self.current else {
            return Vec::new();
        };
        let usable = || {
            self.groups[g]
                .paths
                .iter()
                .filter_map(|&p| self.entry(p))
                .filter(|p| p.state.is_usable())
        };
        let Some(tier) = usable().map(|p| p.state.checker.tier()).min() else {
            return Vec::new();
        };
        usable()
            .filter(|p| p.state.checker.tier() == tier)
            .map(|p| p.id)
            .collect()
    }

    pub fn has_usable_path(&self) -> bool {
        self.current.is_some()
    }

    /// What a request that found no usable path does now.
    pub fn no_path_verdict(&self) -> NoPathVerdict {
        match self.no_path {
            NoPathState::Usable => NoPathVerdict::Retry,
            NoPathState::Queueing { until, .. } => NoPathVerdict::Queue { until },
            NoPathState::Failing { reason, .. } => NoPathVerdict::Fail(reason),
        }
    }

    /// Whether `queue_if_no_path` is in effect (configured or switched on).
    pub fn queue_if_no_path(&self) -> bool {
        self.effective_no_path().queues()
    }

    /// Total time the map has had no usable path, up to `now`.
    pub fn no_path_time(&self, now: Instant) -> Duration {
        self.no_path_total
            + match self.no_path {
                NoPathState::Usable => Duration::ZERO,
                NoPathState::Queueing { since, .. } | NoPathState::Failing { since, .. } => {
                    now.saturating_duration_since(since)
                }
            }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let queue = match self.no_path {
            NoPathState::Queueing { until, .. } => until,
            _ => None,
        };
        let holds = self.paths.iter().filter_map(|p| p.reinstate_at).min();
        [self.failback_at.map(|(_, at)| at), queue, holds]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fire the timers that are due: deferred failback, queueing window, flap holds.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut changed = false;
        for i in 0..self.paths.len() {
            let p = &self.paths[i];
            if p.reinstate_at.is_some_and(|at| at <= now) {
                self.paths[i].reinstate_at = None;
                if self.paths[i].state.checker == CheckerState::Delayed {
                    let checker = self.reinstated_checker(i, CheckerState::Up);
                    self.apply_reinstate(
                        self.paths[i].id,
                        ReinstateCause::HoldElapsed,
                        checker,
                        now,
                    );
                    changed = true;
                }
            }
        }
        if let NoPathState::Queueing {
            since,
            until: Some(until),
        } = self.no_path
        {
            if until <= now {
                let after = now.saturating_duration_since(since);
                self.no_path = NoPathState::Failing {
                    since,
                    reason: NoPathReason::QueueExpired { after },
                };
                self.push(
                    now,
                    EventKind::QueueingEnded {
                        cause: QueueEndCause::Expired { after },
                    },
                );
                changed = true;
            }
        }
        if let Some((target, at)) = self.failback_at {
            if at <= now {
                self.failback_at = None;
                if self.failback_applies(target) {
                    self.switch_to(Some(target), SwitchCause::Failback, now);
                }
                changed = true;
            }
        }
        if changed {
            self.refresh(now, Trigger::Other);
        }
    }

    /// Stop sending I/O to a path. With an `Administrative` reason it is an operator's
    /// decision: only the operator's `reinstate_path` undoes it.
    pub fn fail_path(
        &mut self,
        id: PathId,
        reason: PathFailReason,
        now: Instant,
    ) -> Result<(), PolicyError> {
        let i = self.index(id)?;
        let to = self.transition(id, &PathTransition::Fail(reason.clone()))?;
        self.record_failure(i, to, reason, now);
        self.refresh(now, Trigger::Other);
        Ok(())
    }

    /// [`fail_path`](Self::fail_path) on the evidence of a command's error that did not
    /// say why the path failed (see `classify::reason_is_inferred`): `reason` is a guess,
    /// which [`refine_fail_reason`](Self::refine_fail_reason) replaces when the
    /// transport's own report arrives.
    pub fn fail_path_inferred(
        &mut self,
        id: PathId,
        reason: PathFailReason,
        now: Instant,
    ) -> Result<(), PolicyError> {
        self.fail_path(id, reason, now)?;
        let i = self.index(id)?;
        self.paths[i].reason_inferred = true;
        Ok(())
    }

    /// The transport's own reason for the failure of a path that is failed. When the
    /// recorded reason was inferred from an I/O error ([`fail_path_inferred`](
    /// Self::fail_path_inferred)) and the path has not been reinstated since, `reason`
    /// replaces it — in the path's view and as a `PathFailReasonUpdated` event, the
    /// `PathFailed` event before it staying as it was — and `true` is returned. A stated
    /// reason is never replaced: it is the first account of this failure.
    pub fn refine_fail_reason(
        &mut self,
        id: PathId,
        reason: PathFailReason,
        now: Instant,
    ) -> Result<bool, PolicyError> {
        let i = self.index(id)?;
        let p = &mut self.paths[i];
        if p.state.dm != DmState::Failed || !p.reason_inferred {
            return Ok(false);
        }
        p.reason_inferred = false;
        let Some(from) = p.last_failure.replace(reason.clone()) else {
            return Ok(false);
        };
        if from == reason {
            return Ok(false);
        }
        self.push(
            now,
            EventKind::PathFailReasonUpdated {
                path: id,
                from,
                to: reason,
            },
        );
        self.generation += 1;
        Ok(true)
    }

    /// Send I/O to a failed path again. Automatic causes are subject to flap damping; the
    /// operator's is not.
    pub fn reinstate_path(
        &mut self,
        id: PathId,
        cause: ReinstateCause,
        now: Instant,
    ) -> Result<Reinstatement, PolicyError> {
        let i = self.index(id)?;
        let p = &self.paths[i];
        if p.state.dm == DmState::Active {
            return Err(PolicyError::PathAlreadyActive(id));
        }
        if cause != ReinstateCause::Operator {
            if p.operator_failed {
                return Err(PolicyError::HeldByOperator(id));
            }
            if let Some(until) = p.reinstate_at {
                return Ok(Reinstatement::Delayed { until });
            }
            let checker = p.state.checker;
            if !checker.answers() && checker != CheckerState::Pending {
                // An automatic cause means the path answers again, before any checker has
                // said how well.
                self.paths[i].state =
                    self.transition(id, &PathTransition::Check(CheckerState::Pending))?;
            }
            if let Some(until) = self.flap_hold(i, now) {
                self.transition(id, &PathTransition::Delay)?;
                let p = &mut self.paths[i];
                p.state = PathState::new(DmState::Failed, CheckerState::Delayed);
                p.since = now;
                p.reinstate_at = Some(until);
                let recent_failures = p.recent_failures.len() as u32;
                self.push(
                    now,
                    EventKind::PathReinstateDelayed {
                        path: id,
                        until,
                        recent_failures,
                    },
                );
                self.generation += 1;
                return Ok(Reinstatement::Delayed { until });
            }
        }
        let default = if cause == ReinstateCause::Operator && !self.paths[i].state.checker.answers()
        {
            // The operator vouches for a path no checker has seen answer.
            CheckerState::Pending
        } else {
            CheckerState::Up
        };
        let checker = self.reinstated_checker(i, default);
        self.apply_reinstate(id, cause, checker, now);
        self.refresh(now, Trigger::Reinstated(id));
        Ok(Reinstatement::Now)
    }

    /// A checker result for a path. `down` fails an active path; an answering result
    /// reinstates a failed one (subject to flap damping; not one an operator failed);
    /// otherwise only the checker view changes. Repeating the current state is not an
    /// error and changes nothing.
    pub fn checker_report(
        &mut self,
        id: PathId,
        checker: CheckerState,
        now: Instant,
    ) -> Result<(), PolicyError> {
        self.checker_report_because(id, checker, None, now)
    }

    /// [`checker_report`](Self::checker_report), with what the check saw: the reason a path
    /// it fails is recorded with (without one, "checker reported the path down").
    pub fn checker_report_because(
        &mut self,
        id: PathId,
        checker: CheckerState,
        reason: Option<PathFailReason>,
        now: Instant,
    ) -> Result<(), PolicyError> {
        let i = self.index(id)?;
        let from = self.paths[i].state;
        let automatic = !self.paths[i].operator_failed;
        if from.dm == DmState::Failed
            && automatic
            && checker.answers()
            && checker != CheckerState::Delayed
        {
            if from.checker == CheckerState::Delayed {
                return Ok(());
            }
            // Record what the checker saw, then reinstate (or hold) the path.
            match next_state(from, &PathTransition::Check(checker)) {
                Ok(to) => self.paths[i].state = to,
                Err(TransitionError::NoChange) => {}
                Err(error) => return Err(PolicyError::Transition { path: id, error }),
            }
            self.reinstate_path(id, ReinstateCause::Checker, now)?;
            return Ok(());
        }
        let to = match next_state(from, &PathTransition::Check(checker)) {
            Ok(to) => to,
            Err(TransitionError::NoChange) => return Ok(()),
            Err(error) => return Err(PolicyError::Transition { path: id, error }),
        };
        if from.dm == DmState::Active && to.dm == DmState::Failed {
            let reason = reason.unwrap_or_else(|| {
                PathFailReason::new(PathFailKind::CheckFailed, "checker reported the path down")
            });
            self.record_failure(i, to, reason, now);
        } else {
            let p = &mut self.paths[i];
            p.state = to;
            p.since = now;
            if checker == CheckerState::Down {
                p.reinstate_at = None;
            }
            self.push(
                now,
                EventKind::PathCheckerChanged {
                    path: id,
                    from: from.checker,
                    to: to.checker,
                },
            );
        }
        self.refresh(now, Trigger::Other);
        Ok(())
    }

    /// Make `g` the active group and keep it there: failback leaves an operator's choice
    /// alone until that group loses its last usable path.
    pub fn switch_group(&mut self, g: usize, now: Instant) -> Result<(), PolicyError> {
        let group = self.groups.get(g).ok_or(PolicyError::NoSuchGroup(g))?;
        if group.disabled {
            return Err(PolicyError::GroupDisabled(g));
        }
        if !self.group_usable(g) {
            return Err(PolicyError::GroupHasNoUsablePath(g));
        }
        self.pinned = Some(g);
        self.failback_at = None;
        if self.current != Some(g) {
            self.switch_to(Some(g), SwitchCause::Operator, now);
        }
        self.refresh(now, Trigger::Other);
        Ok(())
    }

    /// Bypass group `g`: it is used only when no enabled group has a usable path.
    pub fn disable_group(&mut self, g: usize, now: Instant) -> Result<(), PolicyError> {
        let group = self.groups.get_mut(g).ok_or(PolicyError::NoSuchGroup(g))?;
        if group.disabled {
            return Err(PolicyError::GroupDisabled(g));
        }
        group.disabled = true;
        if self.pinned == Some(g) {
            self.pinned = None;
        }
        self.push(now, EventKind::GroupDisabled { group: g });
        self.refresh(now, Trigger::Other);
        Ok(())
    }

    pub fn enable_group(&mut self, g: usize, now: Instant) -> Result<(), PolicyError> {
        let group = self.groups.get_mut(g).ok_or(PolicyError::NoSuchGroup(g))?;
        if !group.disabled {
            return Err(PolicyError::GroupNotDisabled(g));
        }
        group.disabled = false;
        self.push(now, EventKind::GroupEnabled { group: g });
        self.refresh(now, Trigger::Other);
        Ok(())
    }

    /// Turn queueing with no usable path off (queued and new I/O fails) or back on (the
    /// configured policy; when that is `fail`, queue for [`DEFAULT_NO_PATH_QUEUE`]).
    pub fn set_queue_if_no_path(&mut self, on: bool, now: Instant) -> Result<(), PolicyError> {
        if self.queue_if_no_path() == on {
            return Err(PolicyError::QueueIfNoPathAlready(on));
        }
        self.queue_mode = match (on, self.config.no_path.queues()) {
            (false, _) => QueueMode::Off,
            (true, true) => QueueMode::Configured,
            (true, false) => QueueMode::On,
        };
        self.push(now, EventKind::QueueIfNoPath { on });
        match (on, self.no_path) {
            (false, NoPathState::Queueing { since, .. }) => {
                self.no_path = NoPathState::Failing {
                    since,
                    reason: NoPathReason::QueueingDisabled,
                };
                self.push(
                    now,
                    EventKind::QueueingEnded {
                        cause: QueueEndCause::Disabled,
                    },
                );
            }
            (false, NoPathState::Failing { since, .. }) => {
                self.no_path = NoPathState::Failing {
                    since,
                    reason: NoPathReason::QueueingDisabled,
                };
            }
            (true, NoPathState::Failing { since, .. }) => {
                // A fresh window from now: turning queueing on means "wait for a path".
                let until = self.queue_until(now);
                self.no_path = NoPathState::Queueing { since, until };
                self.push(now, EventKind::QueueingStarted { until });
            }
            _ => {}
        }
        self.generation += 1;
        Ok(())
    }

    /// A new policy for the running map (`reconfigure`). Each changed setting is
    /// announced (`PolicyChanged`) and takes effect as follows:
    ///
    /// - **grouping**: the groups are rebuilt at once (`Regrouped`); the active, pinned and
    ///   disabled groups follow their paths as after a priority change, and failback
    ///   applies under the new failback policy.
    /// - **selector**: the routing is republished (the generation grows) with a fresh
    ///   selector; the engine keeps the per-path load, so I/O in flight ends where it was.
    /// - **failback**: a scheduled deferred failback is dropped and the choice of group is
    ///   made again under the new policy (an `immediate` failback may switch now).
    /// - **no_path_retry**: future decisions follow it. While the map queues under the
    ///   configured policy, the window is re-anchored at the loss of the last path (a
    ///   shorter window that is over already ends now; `queue` removes the end; `fail`
    ///   fails the queued I/O now); while it fails because the policy said `fail`, a queueing policy starts
    ///   a window from now. An operator's `queue_if_no_path` off stays in force.
    /// - **flap damping**: later failures and reinstatements use it; holds already running
    ///   keep their end.
    ///
    /// Returns the names of the settings that changed (empty: nothing to do).
    pub fn set_config(&mut self, config: MapConfig, now: Instant) -> Vec<&'static str> {
        let old = std::mem::replace(&mut self.config, config);
        let new = self.config.clone();
        let mut changed = Vec::new();
        let mut note = |m: &mut Multipath, setting: &'static str, from: String, to: String| {
            changed.push(setting);
            m.push(now, EventKind::PolicyChanged { setting, from, to });
        };
        if old.selector != new.selector {
            note(
                self,
                "selector",
                selector_text(&old.selector),
                selector_text(&new.selector),
            );
        }
        if old.grouping != new.grouping {
            note(
                self,
                "grouping",
                old.grouping.to_string(),
                new.grouping.to_string(),
            );
        }
        if old.failback != new.failback {
            note(
                self,
                "failback",
                failback_text(old.failback),
                failback_text(new.failback),
            );
        }
        if old.no_path != new.no_path {
            note(
                self,
                "no_path_retry",
                no_path_text(old.no_path),
                no_path_text(new.no_path),
            );
        }
        if old.flap != new.flap {
            note(
                self,
                "flap_damping",
                flap_text(old.flap),
                flap_text(new.flap),
            );
        }
        if (old.alua_transition_retry, old.alua_transition_timeout)
            != (new.alua_transition_retry, new.alua_transition_timeout)
        {
            note(
                self,
                "alua_transition",
                format!(
                    "retry {:?}, timeout {:?}",
                    old.alua_transition_retry, old.alua_transition_timeout
                ),
                format!(
                    "retry {:?}, timeout {:?}",
                    new.alua_transition_retry, new.alua_transition_timeout
                ),
            );
        }
        if old.busy_timeout != new.busy_timeout {
            note(
                self,
                "busy_timeout",
                format!("{:?}", old.busy_timeout),
                format!("{:?}", new.busy_timeout),
            );
        }
        if changed.is_empty() {
            return changed;
        }
        if old.no_path != new.no_path {
            self.reapply_no_path(now);
        }
        if old.grouping != new.grouping {
            self.regroup(now, Trigger::Other);
        } else {
            if old.failback != new.failback {
                self.failback_at = None;
            }
            self.refresh(now, Trigger::Other);
        }
        changed
    }

    /// The configured no-path policy changed: bring the no-path state in line with it.
    fn reapply_no_path(&mut self, now: Instant) {
        let queues = self.config.no_path.queues();
        self.queue_mode = match (self.queue_mode, queues) {
            (QueueMode::Off, _) => QueueMode::Off,
            (_, true) => QueueMode::Configured,
            // `queue_if_no_path` on while the new configuration says fail: keep queueing.
            (QueueMode::On, false) => QueueMode::On,
            (QueueMode::Configured, false) => QueueMode::Configured,
        };
        if self.queue_mode != QueueMode::Configured {
            return;
        }
        match (self.no_path, self.config.no_path) {
            (NoPathState::Queueing { since, .. }, NoPathPolicy::Fail) => {
                self.no_path = NoPathState::Failing {
                    since,
                    reason: NoPathReason::PolicyFail,
                };
                self.push(
                    now,
                    EventKind::QueueingEnded {
                        cause: QueueEndCause::Disabled,
                    },
                );
            }
            (NoPathState::Queueing { since, .. }, NoPathPolicy::Queue(d)) => {
                let until = since + d;
                if until > now {
                    self.no_path = NoPathState::Queueing {
                        since,
                        until: Some(until),
                    };
                } else {
                    // The shorter window is over already.
                    let after = now.saturating_duration_since(since);
                    self.no_path = NoPathState::Failing {
                        since,
                        reason: NoPathReason::QueueExpired { after },
                    };
                    self.push(
                        now,
                        EventKind::QueueingEnded {
                            cause: QueueEndCause::Expired { after },
                        },
                    );
                }
            }
            (NoPathState::Queueing { since, .. }, NoPathPolicy::QueueForever) => {
                self.no_path = NoPathState::Queueing { since, until: None };
            }
            (
                NoPathState::Failing {
                    since,
                    reason: NoPathReason::PolicyFail,
                },
                _,
            ) if queues => {
                let until = self.queue_until(now);
                self.no_path = NoPathState::Queueing { since, until };
                self.push(now, EventKind::QueueingStarted { until });
            }
            _ => {}
        }
    }

    /// New facts about a path (priority, ALUA state, serial...): the groups are rebuilt.
    pub fn update_path(
        &mut self,
        id: PathId,
        info: PathInfo,
        now: Instant,
    ) -> Result<(), PolicyError> {
        let i = self.index(id)?;
        if self.paths[i].info == info {
            return Ok(());
        }
        self.paths[i].info = info;
        self.regroup(now, Trigger::Other);
        Ok(())
    }

    /// A path joins the running map, with its facts and whether its transport is up now
    /// (up: active, else failed/down until it recovers). The groups are rebuilt; an up
    /// path in a better group than the active one is failed back to per the failback
    /// policy, as a path coming back would be (`followover` counts it as the first path
    /// of its group coming back). Returns its id, [`next_path_id`](Self::next_path_id).
    pub fn add_path(&mut self, info: PathInfo, up: bool, now: Instant) -> PathId {
        let id = PathId(self.next_id);
        // Four billion additions to one map: the id space is not a limit in practice, and
        // saturating keeps ids from wrapping onto paths that still exist.
        self.next_id = self.next_id.saturating_add(1);
        let name = info.name.clone();
        let usable = PathState::initial(up, info.alua_inaccessible()).is_usable();
        self.paths.push(PathEntry::new(
            id,
            info,
            up,
            now,
            "not connected when added",
        ));
        self.push(now, EventKind::PathAdded { path: id, name });
        let trigger = if usable {
            Trigger::Reinstated(id)
        } else {
            Trigger::Other
        };
        self.regroup(now, trigger);
        id
    }

    /// A path leaves the map, from whatever state it is in; its facts are returned. The
    /// groups are rebuilt without it: if it was the active group's last usable path the
    /// map fails over, and if it was the map's last usable path the no-path policy
    /// applies (queue or fail), as when a path fails. Its id is never given again.
    pub fn remove_path(&mut self, id: PathId, now: Instant) -> Result<PathInfo, PolicyError> {
        let i = self.index(id)?;
        let entry = self.paths.remove(i);
        let name = entry.info.name.clone();
        self.push(now, EventKind::PathRemoved { path: id, name });
        self.regroup(now, Trigger::Other);
        Ok(entry.info)
    }

    /// The ALUA access state a path's sense data revealed; regroups when it changed.
    pub fn set_path_alua(
        &mut self,
        id: PathId,
        state: AluaState,
        now: Instant,
    ) -> Result<(), PolicyError> {
        let i = self.index(id)?;
        let mut info = self.paths[i].info.clone();
        info.alua = Some(state);
        self.update_path(id, info, now)
    }

    /// The projection for status displays and the control plane.
    pub fn view(&self) -> MapView {
        let group_of = |id: PathId| self.groups.iter().position(|g| g.paths.contains(&id));
        MapView {
            paths: self
                .paths
                .iter()
                .map(|p| PathView {
                    id: p.id,
                    info: p.info.clone(),
                    state: p.state,
                    since: p.since,
                    group: group_of(p.id),
                    last_failure: p.last_failure.clone(),
                    failures: p.failures,
                    reinstate_at: p.reinstate_at,
                    operator_failed: p.operator_failed,
                })
                .collect(),
            groups: self
                .groups
                .iter()
                .enumerate()
                .map(|(g, group)| GroupView {
                    index: g,
                    status: self.group_status(g).unwrap_or(GroupStatus::Enabled),
                    priority: group.priority,
                    paths: group.paths.clone(),
                    pinned: self.pinned == Some(g),
                })
                .collect(),
            active_group: self.current,
            queueing: match self.no_path {
                NoPathState::Usable => QueueingView::Usable,
                NoPathState::Queueing { since, until } => QueueingView::Queueing { since, until },
                NoPathState::Failing { since, reason } => QueueingView::Failing { since, reason },
            },
            queue_if_no_path: self.queue_if_no_path(),
            failback_at: self.failback_at.map(|(_, at)| at),
            generation: self.generation,
        }
    }

    // --- internals ---

    /// Where path `id` is in `paths` (kept in id order: ids only grow, removal keeps the
    /// order).
    fn pos(&self, id: PathId) -> Option<usize> {
        self.paths.binary_search_by_key(&id, |p| p.id).ok()
    }

    fn entry(&self, id: PathId) -> Option<&PathEntry> {
        self.pos(id).map(|i| &self.paths[i])
    }

    fn usable(&self, id: PathId) -> bool {
        self.entry(id).is_some_and(|p| p.state.is_usable())
    }

    fn index(&self, id: PathId) -> Result<usize, PolicyError> {
        self.pos(id).ok_or(PolicyError::NoSuchPath(id))
    }

    fn transition(&self, id: PathId, t: &PathTransition) -> Result<PathState, PolicyError> {
        let from = self.entry(id).ok_or(PolicyError::NoSuchPath(id))?.state;
        next_state(from, t).map_err(|error| match error {
            TransitionError::AlreadyFailed => PolicyError::PathAlreadyFailed(id),
            TransitionError::AlreadyActive => PolicyError::PathAlreadyActive(id),
            error => PolicyError::Transition { path: id, error },
        })
    }

    fn push(&mut self, at: Instant, kind: EventKind) {
        if self.events.len() >= EVENT_BACKLOG_MAX {
            self.events.pop_front();
        }
        self.events.push_back(Event { at, kind });
    }

    fn record_failure(&mut self, i: usize, to: PathState, reason: PathFailReason, now: Instant) {
        let p = &mut self.paths[i];
        p.state = to;
        p.since = now;
        p.last_failure = Some(reason.clone());
        p.reason_inferred = false;
        p.failures += 1;
        p.reinstate_at = None;
        p.operator_failed = reason.kind == PathFailKind::Administrative;
        if let Some(flap) = self.config.flap {
            p.recent_failures.push_back(now);
            while p.recent_failures.len() > flap.failures as usize
                || p.recent_failures
                    .front()
                    .is_some_and(|&t| now.saturating_duration_since(t) > flap.window)
            {
                p.recent_failures.pop_front();
            }
        }
        let path = self.paths[i].id;
        self.push(now, EventKind::PathFailed { path, reason });
    }

    /// When the path is flapping, the end of its hold.
    fn flap_hold(&self, i: usize, now: Instant) -> Option<Instant> {
        let flap = self.config.flap?;
        let recent = self.paths[i]
            .recent_failures
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) <= flap.window)
            .count();
        (recent >= flap.failures as usize && flap.failures > 0).then_some(now + flap.hold)
    }

    /// The checker view a reinstated path gets: ghost when ALUA says the port refuses I/O.
    fn reinstated_checker(&self, i: usize, default: CheckerState) -> CheckerState {
        let p = &self.paths[i];
        if p.info.alua_inaccessible() {
            CheckerState::Ghost
        } else if p.state.checker.may_be_active() {
            p.state.checker
        } else {
            default
        }
    }

    fn apply_reinstate(
        &mut self,
        id: PathId,
        cause: ReinstateCause,
        checker: CheckerState,
        now: Instant,
    ) {
        let Some(i) = self.pos(id) else {
            return;
        };
        let Ok(to) = next_state(
            self.paths[i].state,
            &PathTransition::Reinstate { cause, checker },
        ) else {
            return;
        };
        let p = &mut self.paths[i];
        p.state = to;
        p.since = now;
        p.reinstate_at = None;
        p.operator_failed = false;
        p.reason_inferred = false;
        self.push(now, EventKind::PathReinstated { path: id, cause });
    }

    fn group_usable(&self, g: usize) -> bool {
        self.groups[g].paths.iter().any(|&p| self.usable(p))
    }

    /// The highest-priority enabled group with a usable path; a disabled one only when no
    /// enabled group has one.
    fn best_group(&self) -> Option<usize> {
        let usable = |g: &usize| self.group_usable(*g);
        (0..self.groups.len())
            .filter(|&g| !self.groups[g].disabled)
            .find(usable)
            .or_else(|| (0..self.groups.len()).find(usable))
    }

    fn switch_to(&mut self, to: Option<usize>, cause: SwitchCause, now: Instant) {
        let from = self.current;
        self.current = to;
        self.failback_at = None;
        self.push(now, EventKind::GroupSwitched { from, to, cause });
    }

    /// Whether an automatic failback to `target` is right now.
    fn failback_applies(&self, target: usize) -> bool {
        let Some(cur) = self.current else {
            return false;
        };
        self.pinned != Some(cur)
            && target != cur
            && target < self.groups.len()
            && self.best_group() == Some(target)
            && self.groups[target].priority > self.groups[cur].priority
    }

    /// Restore the invariants after any input: the active group is usable (failover),
    /// failback per policy, the no-path state follows usability.
    fn refresh(&mut self, now: Instant, trigger: Trigger) {
        self.choose_group(now, trigger);
        self.update_no_path(now);
        self.generation += 1;
    }

    fn choose_group(&mut self, now: Instant, trigger: Trigger) {
        if let Some(p) = self.pinned {
            if !self.group_usable(p) || self.groups[p].disabled {
                self.pinned = None;
            }
        }
        let best = self.best_group();
        let current_ok = self
            .current
            .is_some_and(|g| self.group_usable(g) && (!self.groups[g].disabled || best == Some(g)));
        if !current_ok {
            if best != self.current {
                let cause = if trigger == Trigger::Initial {
                    SwitchCause::Initial
                } else {
                    SwitchCause::Failover
                };
                self.switch_to(best, cause, now);
            }
            self.failback_at = None;
            return;
        }
        let Some(best) = best else {
            return;
        };
        if !self.failback_applies(best) {
            self.failback_at = None;
            return;
        }
        match self.config.failback {
            Failback::Immediate => self.switch_to(Some(best), SwitchCause::Failback, now),
            Failback::Manual => {}
            Failback::Followover => {
                if let Trigger::Reinstated(p) = trigger {
                    let first_back = self.groups[best].paths.contains(&p)
                        && self.groups[best]
                            .paths
                            .iter()
                            .filter(|&&q| self.usable(q))
                            .count()
                            == 1;
                    if first_back {
                        self.switch_to(Some(best), SwitchCause::Failback, now);
                    }
                }
            }
            Failback::Deferred(delay) => {
                if self.failback_at.map(|(g, _)| g) != Some(best) {
                    let at = now + delay;
                    self.failback_at = Some((best, at));
                    self.push(now, EventKind::FailbackScheduled { group: best, at });
                }
            }
        }
    }

    fn effective_no_path(&self) -> NoPathPolicy {
        match self.queue_mode {
            QueueMode::Configured => self.config.no_path,
            QueueMode::Off => NoPathPolicy::Fail,
            QueueMode::On => NoPathPolicy::Queue(DEFAULT_NO_PATH_QUEUE),
        }
    }

    fn queue_until(&self, now: Instant) -> Option<Instant> {
        match self.effective_no_path() {
            NoPathPolicy::Queue(d) => Some(now + d),
            _ => None,
        }
    }

    fn update_no_path(&mut self, now: Instant) {
        let usable = self.current.is_some();
        match (self.no_path, usable) {
            (NoPathState::Usable, false) => {
                self.no_path = match self.effective_no_path() {
                    NoPathPolicy::Fail => NoPathState::Failing {
                        since: now,
                        reason: if self.queue_mode == QueueMode::Off {
                            NoPathReason::QueueingDisabled
                        } else {
                            NoPathReason::PolicyFail
                        },
                    },
                    _ => {
                        let until = self.queue_until(now);
                        self.push(now, EventKind::QueueingStarted { until });
                        NoPathState::Queueing { since: now, until }
                    }
                };
            }
            (NoPathState::Queueing { since, .. }, true) => {
                self.no_path_total += now.saturating_duration_since(since);
                self.no_path = NoPathState::Usable;
                self.push(
                    now,
                    EventKind::QueueingEnded {
                        cause: QueueEndCause::PathAvailable,
                    },
                );
            }
            (NoPathState::Failing { since, .. }, true) => {
                self.no_path_total += now.saturating_duration_since(since);
                self.no_path = NoPathState::Usable;
            }
            _ => {}
        }
    }

    fn build_groups(&self) -> Vec<PriorityGroup> {
        let v: Vec<(PathId, &PathInfo)> = self.paths.iter().map(|p| (p.id, &p.info)).collect();
        group_paths(self.config.grouping, &v)
    }

    /// Rebuild the groups from the paths' facts. The active group, the pinned group and
    /// disabled groups follow their paths: a new group takes over the role of the old
    /// group its first usable path (else its first path) belonged to.
    fn regroup(&mut self, now: Instant, trigger: Trigger) {
        let new = self.build_groups();
        let old = std::mem::replace(&mut self.groups, new);
        // A removed path is in the old groups but no longer in the map: it leads nothing.
        let first = |g: &PriorityGroup| g.paths.iter().copied().find(|&p| self.contains_path(p));
        let lead = |g: &PriorityGroup| {
            g.paths
                .iter()
                .copied()
                .find(|&p| self.usable(p))
                .or_else(|| first(g))
        };
        let find = |groups: &[PriorityGroup], p: Option<PathId>| {
            p.and_then(|p| groups.iter().position(|g| g.paths.contains(&p)))
        };
        let cur_lead = self.current.and_then(|g| lead(&old[g]));
        let pin_lead = self.pinned.and_then(|g| lead(&old[g]));
        let disabled: Vec<PathId> = old
            .iter()
            .filter(|g| g.disabled)
            .filter_map(first)
            .collect();
        for g in &mut self.groups {
            g.disabled = g.paths.first().is_some_and(|p| disabled.contains(p));
        }
        self.current = find(&self.groups, cur_lead);
        self.pinned = find(&self.groups, pin_lead);
        self.failback_at = None;
        let groups = self.groups.len();
        self.push(now, EventKind::Regrouped { groups });
        self.refresh(now, trigger);
    }
}

impl PathEntry {
    fn new(id: PathId, info: PathInfo, up: bool, now: Instant, down_why: &str) -> PathEntry {
        PathEntry {
            id,
            state: PathState::initial(up, info.alua_inaccessible()),
            info,
            since: now,
            last_failure: (!up).then(|| PathFailReason::new(PathFailKind::LoginFailed, down_why)),
            reason_inferred: false,
            failures: 0,
            recent_failures: VecDeque::new(),
            reinstate_at: None,
            operator_failed: false,
        }
    }
}

fn selector_text(s: &SelectorKind) -> String {
    match s {
        SelectorKind::RoundRobin { repeat_count } if *repeat_count != 1 => {
            format!("round-robin (repeat {repeat_count})")
        }
        s => s.to_string(),
    }
}

fn failback_text(f: Failback) -> String {
    match f {
        Failback::Immediate => "immediate".into(),
        Failback::Manual => "manual".into(),
        Failback::Followover => "followover".into(),
        Failback::Deferred(d) => format!("after {d:?}"),
    }
}

fn no_path_text(p: NoPathPolicy) -> String {
    match p {
        NoPathPolicy::Fail => "fail".into(),
        NoPathPolicy::Queue(d) => format!("queue {d:?}"),
        NoPathPolicy::QueueForever => "queue".into(),
    }
}

fn flap_text(f: Option<FlapDamping>) -> String {
    match f {
        None => "off".into(),
        Some(f) => format!(
            "{} failures in {:?}, hold {:?}",
            f.failures, f.window, f.hold
        ),
    }
}
