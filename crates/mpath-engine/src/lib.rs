//! The multipath engine: the role of the kernel's dm-mpath, in user space.
//!
//! A [`MultipathDevice`] is one map: several [`block::PathTransport`]s to one logical
//! unit, presented as one [`block::BlockDevice`]. Block operations become SCSI commands
//! (READ(16), WRITE(16) with FUA, SYNCHRONIZE CACHE(16), UNMAP, WRITE SAME(16)), split at
//! the LU's limits, and each command is sent on the path the map's selector picks in the
//! active priority group.
//!
//! - **Fast path** (in the submitting task): read the published routing, select, submit,
//!   await. A path error hands the command back: the owner fails the path and the same
//!   command is issued on another path at once. A target error completes to the caller
//!   and fails no path.
//! - **Owner task** (one per map, `select` → `apply` → `sync`): path events, control
//!   messages ([`Message`]), timers, and requests that found no usable path (queued or
//!   failed per the no-path policy). When a path fails, every command in flight on it is
//!   handed back at once, without waiting for the failed connection to complete them.
//! - **Policy**: everything decided lives in the pure crate `mpath-policy`.
//!
//! `docs/engine.md` tells the life of an I/O and of a path failure, and the stale-write
//! hazard.

mod clock;
mod config;
mod counters;
mod device;
mod fence;
mod inflight;
mod message;
mod owner;
mod plan;

pub use config::{
    EngineConfig, HedgeConfig, IoLimits, PathSpec, DEFAULT_MAX_UNMAP_BLOCKS,
    DEFAULT_MAX_WRITE_SAME_BLOCKS,
};
pub use counters::{
    Histogram, IoOp, IoStats, LatencyHistogram, MapCounters, LATENCY_BOUNDS_NS, LATENCY_BUCKETS,
};
pub use device::{MultipathDevice, StartError};
pub use message::{MapStatus, Message, MessageError, Reply};
pub use mpath_policy;
