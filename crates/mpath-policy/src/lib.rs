//! The multipath policy: what dm-mpath decides, without doing any I/O.
//!
//! Pure: no tokio, sockets, files or clocks. Time is a parameter (`now: Instant`, or
//! `now_ns` on the selectors' fast path); outputs are returned or polled, never performed.
//! The engine (`mpath-engine`) drives it from its owner task and its I/O fast path.
//!
//! - [`path`]: a path's two views (engine: active/failed; checker: up, down, ghost,
//!   pending, shaky, delayed) and the one checked transition table, [`next_state`].
//! - [`group`]: priority groups and the grouping policies (`failover`, `multibus`,
//!   `group_by_prio`, `group_by_serial`, `group_by_node_name`, `group_by_tpg`).
//! - [`selector`]: `round-robin`, `queue-length`, `service-time`,
//!   `historical-service-time`, over lock-free per-path loads.
//! - [`map`]: one map's state machine — failover, failback (`immediate`, `manual`,
//!   `followover`, deferred), operator pinning, flap damping, the no-path policy
//!   (`fail`, bounded `queue`, `queue` forever) and the messages that change them.
//! - [`mod@classify`]: what an error returned by a path means (target error, path failure,
//!   ALUA transitioning).
//! - [`event`]: every state change, with a timestamp and a reason.

pub mod classify;
pub mod event;
pub mod group;
pub mod map;
pub mod path;
pub mod selector;

pub use classify::{classify, reason_is_inferred, ErrorClass};
pub use event::{Event, EventKind, QueueEndCause, RequeueCause, SwitchCause};
pub use group::{group_paths, GroupStatus, Grouping, PriorityGroup};
pub use map::{
    Failback, FlapDamping, GroupView, MapConfig, MapView, Multipath, NoPathPolicy, NoPathReason,
    NoPathVerdict, PathView, PolicyError, QueueingView, Reinstatement, DEFAULT_NO_PATH_QUEUE,
};
pub use path::{
    alua_priority, next_state, CheckerState, DmState, PathId, PathInfo, PathState, PathTransition,
    ReinstateCause, TransitionError, UNKNOWN_PRIORITY,
};
pub use selector::{HstParams, PathLoad, Selector, SelectorKind};
