//! What a multipath device is built from: its name, the LU's facts, its limits and the
//! policy.

use std::sync::Arc;
use std::time::Duration;

use block::{DeviceInfo, PathTransport};
use mpath_policy::{MapConfig, PathInfo};

/// LIO's default MAXIMUM WRITE SAME LENGTH (VPD 0xB0), in blocks: a value every target we
/// know accepts. The daemon replaces it with what the LU reports.
pub const DEFAULT_MAX_WRITE_SAME_BLOCKS: u32 = 0xffff;

/// Blocks per UNMAP descriptor when the LU's MAXIMUM UNMAP LBA COUNT is not known: the
/// same conservative order as [`DEFAULT_MAX_WRITE_SAME_BLOCKS`]; larger discards are
/// split.
pub const DEFAULT_MAX_UNMAP_BLOCKS: u32 = 0xffff;

/// Limits of the LU beyond [`DeviceInfo`] (from VPD 0xB0 and MODE SENSE), which decide
/// how block operations become SCSI commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoLimits {
    /// MAXIMUM UNMAP LBA COUNT: blocks per UNMAP command.
    pub max_unmap_blocks: u32,
    /// MAXIMUM WRITE SAME LENGTH: blocks per WRITE SAME command.
    pub max_write_same_blocks: u32,
    /// The LU takes WRITE SAME(16) with NDOB (no Data-Out buffer) for zeroing.
    pub write_same_ndob: bool,
    /// The LU honours FUA (MODE SENSE DPOFUA). Without it a FUA write to a volatile
    /// cache is followed by SYNCHRONIZE CACHE over its range.
    pub fua: bool,
}

impl Default for IoLimits {
    fn default() -> IoLimits {
        IoLimits {
            max_unmap_blocks: DEFAULT_MAX_UNMAP_BLOCKS,
            max_write_same_blocks: DEFAULT_MAX_WRITE_SAME_BLOCKS,
            write_same_ndob: false,
            fua: true,
        }
    }
}

/// A multipath device's configuration.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The map's name (alias or WWID), for logs and events.
    pub name: String,
    /// Capacity, block size, maximum transfer, write cache: probed by the daemon.
    pub device: DeviceInfo,
    pub limits: IoLimits,
    pub policy: MapConfig,
    /// Reinstate a failed path as soon as its transport logs in again
    /// (`PathEvent::Recovered`), subject to flap damping. Without it only the checker
    /// (`checker_report`) or an operator reinstates.
    pub reinstate_on_recovery: bool,
    /// Count every I/O and time it into the latency histograms (like a Linux block
    /// device's `queue/iostats`). Off, the fast path neither reads the clock (unless the
    /// selector is historical-service-time) nor counts successes; errors, requeues and
    /// no-path time are still counted.
    pub io_stats: bool,
    /// Hold new writes that overlap blocks whose earlier write is in doubt (its attempt
    /// left a failed path with no outcome) until that path logs in again, or at most this
    /// long. `None` (the default) issues every write at once and only counts the exposure;
    /// see `docs/engine.md`, "The stale-write hazard".
    pub stale_write_fence: Option<Duration>,
    /// Hedged reads: a READ outstanding on one path longer than that path's deadline is
    /// issued again on another usable path, and the first good answer completes it. `None`
    /// turns them off. See `docs/engine.md`, "Hedged reads".
    pub hedge: Option<HedgeConfig>,
}

/// When a read is hedged (issued again on a second path while the first attempt is
/// still outstanding), and how often at most.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HedgeConfig {
    /// The deadline is the path's high-latency estimate (smoothed read latency plus four
    /// mean deviations, as TCP's retransmission timeout) times `factor`...
    pub factor: u32,
    /// ...but never below `floor`...
    pub floor: Duration,
    /// ...nor above `ceiling` (also the deadline of a path with no read answered yet).
    pub ceiling: Duration,
    /// Hedges allowed per thousand reads, over time (a token bucket)...
    pub per_mille: u32,
    /// ...with at most this many in a burst: enough for every read a queue of usual depth
    /// has stuck on a path that just went silent (the reads a hedge abandoned stay counted
    /// in that path's load, so new ones go elsewhere: one burst covers a failure).
    pub burst: u32,
}

impl Default for HedgeConfig {
    fn default() -> HedgeConfig {
        HedgeConfig {
            factor: 2,
            floor: Duration::from_millis(5),
            ceiling: Duration::from_millis(100),
            per_mille: 20,
            burst: 64,
        }
    }
}

impl EngineConfig {
    /// Defaults for everything but the name and the device facts.
    pub fn new(name: impl Into<String>, device: DeviceInfo) -> EngineConfig {
        EngineConfig {
            name: name.into(),
            device,
            limits: IoLimits::default(),
            policy: MapConfig::default(),
            reinstate_on_recovery: true,
            io_stats: true,
            stale_write_fence: None,
            hedge: Some(HedgeConfig::default()),
        }
    }
}

/// One path of a map: what the policy knows about it and how to reach it.
#[derive(Clone)]
pub struct PathSpec {
    pub info: PathInfo,
    pub transport: Arc<dyn PathTransport>,
}

impl PathSpec {
    pub fn new(info: PathInfo, transport: Arc<dyn PathTransport>) -> PathSpec {
        PathSpec { info, transport }
    }
}
