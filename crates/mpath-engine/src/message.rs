//! The control plane's messages to a map (what `dmsetup message` is to dm-mpath), each
//! answered on a oneshot by the owner task.

use std::time::Instant;

use mpath_policy::{
    CheckerState, Event, MapConfig, MapView, PathId, PathInfo, PolicyError, Reinstatement,
};

/// A request to a map's owner task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Stop sending I/O to a path (`fail_path`). I/O in flight on it completes there.
    FailPath {
        path: PathId,
    },
    /// Send I/O to a failed path again (`reinstate_path`); refused while its transport is
    /// down.
    ReinstatePath {
        path: PathId,
    },
    /// Make a group active and keep it (`switch_group`): failback does not undo it.
    SwitchGroup {
        group: usize,
    },
    EnableGroup {
        group: usize,
    },
    /// Bypass a group: used only when no enabled group has a usable path.
    DisableGroup {
        group: usize,
    },
    /// `queue_if_no_path` / `fail_if_no_path`: turning it off fails queued I/O now.
    QueueIfNoPath {
        on: bool,
    },
    /// A checker result for a path (the daemon's checker loop).
    CheckerReport {
        path: PathId,
        state: CheckerState,
        /// What the check saw, for a path it fails.
        reason: Option<block::PathFailReason>,
    },
    /// New facts (priority, ALUA state, serial...) for a path: the groups are rebuilt.
    UpdatePath {
        path: PathId,
        info: PathInfo,
    },
    /// Take a path out of the map: it is no longer selected, its commands in flight are
    /// issued again on other paths at once, and it is forgotten (see
    /// [`MultipathDevice::remove_path`](crate::MultipathDevice::remove_path)).
    RemovePath {
        path: PathId,
    },
    /// Change the map's capacity to `size` bytes (a multiple of the block size): the LU
    /// was resized. Requests after the answer are checked against it; I/O in flight is
    /// not disturbed.
    Resize {
        size: u64,
    },
    /// A new policy (selector, grouping, failback, no-path queueing, flap damping, ALUA
    /// transition timings) for the running map.
    SetConfig {
        config: Box<MapConfig>,
    },
    /// Whether a path whose transport logged in again is reinstated at once (`true`, the
    /// default) or waits for the checker (`false`: what a daemon needs when something —
    /// a persistent-reservation key — must be put on the path before it carries I/O).
    ReinstateOnRecovery {
        on: bool,
    },
    /// The map's state.
    Status,
}

/// The answer to a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    Reinstated(Reinstatement),
    Status(Box<MapStatus>),
}

/// Why a message did not apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}: its transport is down")]
    PathDown(PathId),
    #[error("size {size} is not a multiple of the block size {block_size}")]
    BadSize { size: u64, block_size: u32 },
    #[error("the map's owner task has stopped")]
    Stopped,
}

/// The serialisable projection of a map for the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapStatus {
    pub name: String,
    pub view: MapView,
    /// The policy in force (changed by `SetConfig`).
    pub config: MapConfig,
    /// Capacity now, in bytes (changed by `Resize`).
    pub size: u64,
    /// Commands waiting on each path now, in the order of `view.paths` (id order; while
    /// no path has been removed, index `i` is `PathId(i)`).
    pub in_flight: Vec<usize>,
    /// Requests waiting for a usable path.
    pub queued: usize,
    /// Block ranges the stale-write fence holds in doubt.
    pub in_doubt: usize,
    pub recent_events: Vec<Event>,
    pub at: Instant,
}
