//! Events: every state change of a map, with when and why.

use std::fmt;
use std::time::{Duration, Instant};

use block::{IoErrorKind, PathFailReason};

use crate::path::{CheckerState, PathId, ReinstateCause};

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: Instant,
    pub kind: EventKind,
}

/// What changed. The policy produces the path, group and queueing events; the engine adds
/// the I/O events (`IoRequeued`, `IoFailed`) and `PathGaveUp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    PathFailed {
        path: PathId,
        reason: PathFailReason,
    },
    PathReinstated {
        path: PathId,
        cause: ReinstateCause,
    },
    /// A flapping path answers again, but is held failed until `until`.
    PathReinstateDelayed {
        path: PathId,
        until: Instant,
        recent_failures: u32,
    },
    PathCheckerChanged {
        path: PathId,
        from: CheckerState,
        to: CheckerState,
    },
    /// A path joined the map while it runs (the paths it starts with are not announced).
    PathAdded {
        path: PathId,
        name: String,
    },
    /// A path left the map; its id is never given to another path.
    PathRemoved {
        path: PathId,
        name: String,
    },
    /// The reason recorded for a path's current failure was replaced by a more precise
    /// one: the failure was first seen through a command's transport error that did not
    /// say why (`from`), and the transport's own report (`to`) followed.
    PathFailReasonUpdated {
        path: PathId,
        from: PathFailReason,
        to: PathFailReason,
    },
    /// The transport stopped trying to recover the path.
    PathGaveUp {
        path: PathId,
        reason: PathFailReason,
    },
    /// The active group changed (`None`: no group has a usable path).
    GroupSwitched {
        from: Option<usize>,
        to: Option<usize>,
        cause: SwitchCause,
    },
    /// Deferred failback to `group` will happen at `at` if it is still better then.
    FailbackScheduled {
        group: usize,
        at: Instant,
    },
    GroupEnabled {
        group: usize,
    },
    GroupDisabled {
        group: usize,
    },
    /// Path facts changed (priority, ALUA state) and the groups were rebuilt.
    Regrouped {
        groups: usize,
    },
    /// No usable path: I/O queues until `until` (`None`: until a path comes back).
    QueueingStarted {
        until: Option<Instant>,
    },
    QueueingEnded {
        cause: QueueEndCause,
    },
    /// The `queue_if_no_path` switch was turned on or off.
    QueueIfNoPath {
        on: bool,
    },
    /// A policy setting of the running map changed (`Multipath::set_config`): `setting`
    /// is `selector`, `grouping`, `failback`, `no_path_retry`, `flap_damping` or
    /// `alua_transition`.
    PolicyChanged {
        setting: &'static str,
        from: String,
        to: String,
    },
    /// The map's capacity changed while it runs (the engine's resize), in bytes.
    Resized {
        from: u64,
        to: u64,
    },
    /// An I/O left `path` and is issued again.
    IoRequeued {
        path: PathId,
        cause: RequeueCause,
    },
    /// An I/O was completed to its caller with an error.
    IoFailed {
        kind: IoErrorKind,
        detail: String,
    },
}

/// Why the active group changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SwitchCause {
    /// The map was created.
    Initial,
    /// The active group lost its last usable path (or was disabled).
    Failover,
    /// A better group became usable and the failback policy allowed the switch.
    Failback,
    /// The `switch group` message.
    Operator,
}

/// Why queueing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueEndCause {
    /// A path became usable: queued I/O is issued.
    PathAvailable,
    /// The queueing window ran out: queued and new I/O fails until a path comes back.
    Expired { after: Duration },
    /// Queueing was turned off: queued and new I/O fails.
    Disabled,
}

/// Why an I/O is issued again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequeueCause {
    /// It failed with a path error.
    PathError,
    /// Its path failed while it was in flight; it was not waited for.
    PathFailed,
    /// The LU was in an ALUA transition; retried after a delay.
    Transitioning,
    /// Its path was removed from the map while it was in flight; it was not waited for.
    PathRemoved,
}

impl fmt::Display for SwitchCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwitchCause::Initial => "initial",
            SwitchCause::Failover => "failover",
            SwitchCause::Failback => "failback",
            SwitchCause::Operator => "operator",
        })
    }
}

impl fmt::Display for RequeueCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequeueCause::PathError => "path error",
            RequeueCause::PathFailed => "path failed with the I/O in flight",
            RequeueCause::Transitioning => "ALUA transitioning",
            RequeueCause::PathRemoved => "path removed with the I/O in flight",
        })
    }
}

fn group(g: &Option<usize>) -> String {
    g.map_or_else(|| "none".to_string(), |g| g.to_string())
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::PathFailed { path, reason } => write!(f, "{path} failed: {reason}"),
            EventKind::PathReinstated { path, cause } => {
                write!(f, "{path} reinstated ({cause})")
            }
            EventKind::PathReinstateDelayed {
                path,
                recent_failures,
                ..
            } => write!(
                f,
                "{path} flapping ({recent_failures} recent failures): reinstatement held back"
            ),
            EventKind::PathCheckerChanged { path, from, to } => {
                write!(f, "{path} checker {from} -> {to}")
            }
            EventKind::PathAdded { path, name } => write!(f, "{path} ({name}) added"),
            EventKind::PathRemoved { path, name } => write!(f, "{path} ({name}) removed"),
            EventKind::PathFailReasonUpdated { path, from, to } => {
                write!(f, "{path} failure reason: {to} (was: {from})")
            }
            EventKind::PathGaveUp { path, reason } => {
                write!(f, "{path} recovery gave up: {reason}")
            }
            EventKind::GroupSwitched { from, to, cause } => {
                write!(
                    f,
                    "switched group {} -> {} ({cause})",
                    group(from),
                    group(to)
                )
            }
            EventKind::FailbackScheduled { group, .. } => {
                write!(f, "failback to group {group} scheduled")
            }
            EventKind::GroupEnabled { group } => write!(f, "group {group} enabled"),
            EventKind::GroupDisabled { group } => write!(f, "group {group} disabled"),
            EventKind::Regrouped { groups } => write!(f, "regrouped into {groups} groups"),
            EventKind::QueueingStarted { until: Some(_) } => {
                f.write_str("no usable path: queueing I/O (bounded)")
            }
            EventKind::QueueingStarted { until: None } => {
                f.write_str("no usable path: queueing I/O until a path returns")
            }
            EventKind::QueueingEnded { cause } => match cause {
                QueueEndCause::PathAvailable => f.write_str("queueing ended: a path is usable"),
                QueueEndCause::Expired { after } => {
                    write!(f, "queueing ended after {after:?}: failing I/O")
                }
                QueueEndCause::Disabled => f.write_str("queueing disabled: failing I/O"),
            },
            EventKind::QueueIfNoPath { on } => write!(f, "queue_if_no_path {on}"),
            EventKind::PolicyChanged { setting, from, to } => {
                write!(f, "{setting} changed: {from} -> {to}")
            }
            EventKind::Resized { from, to } => write!(f, "resized: {from} -> {to} bytes"),
            EventKind::IoRequeued { path, cause } => write!(f, "I/O requeued from {path}: {cause}"),
            EventKind::IoFailed { kind, detail } => write!(f, "I/O failed: {kind}: {detail}"),
        }
    }
}
