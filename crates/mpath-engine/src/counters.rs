//! Counters per path and per map: I/Os, bytes, errors, requeues, a latency histogram,
//! and time spent with no usable path. Atomics, updated from the I/O fast path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mpath_policy::PathId;

/// Histogram buckets: bucket `i` counts latencies in [2^i, 2^(i+1)) ns; 40 buckets reach
/// 2^40 ns (18 minutes), beyond any I/O that has not been failed by a timeout.
pub const LATENCY_BUCKETS: usize = 40;

/// A lock-free log2 latency histogram.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    #[inline]
    pub fn record(&self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    #[inline]
    pub fn record_ns(&self, ns: u64) {
        let bucket = (63 - (ns | 1).leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

/// A copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// An upper bound of the `q` quantile (0..=1): the top of its bucket.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_nanos(1u64 << (i + 1).min(63)));
            }
        }
        None
    }
}

/// Counters of one path (commands on it) or of the map (requests of its callers).
///
/// Every completion goes into the latency histogram, so the I/O count is the histogram's
/// total: one atomic update per completion fewer than a separate count.
#[derive(Debug, Default)]
pub struct IoCounters {
    bytes: AtomicU64,
    errors: AtomicU64,
    requeues: AtomicU64,
    busy: AtomicU64,
    latency: LatencyHistogram,
}

impl IoCounters {
    #[inline]
    pub(crate) fn completed(&self, bytes: u64, latency_ns: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.latency.record_ns(latency_ns);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requeue(&self) {
        self.requeues.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IoStats {
        let latency = self.latency.snapshot();
        IoStats {
            ios: latency.count(),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            requeues: self.requeues.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            latency,
        }
    }
}

/// A copy of the counters of a path or a map.
///
/// For a path: `ios`/`bytes` count commands that completed on it (success or target
/// error), `errors` its failed commands (path and target errors), `requeues` the commands
/// that left it to be issued elsewhere, `busy` the answers BUSY, TASK SET FULL or ABORTED
/// COMMAND it got (each retried after a back-off). For the map: the callers' requests — completed,
/// failed (the error reached the caller), and re-issued attempts in total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoStats {
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub requeues: u64,
    pub busy: u64,
    pub latency: Histogram,
}

/// Every counter of a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapCounters {
    pub map: IoStats,
    pub paths: Vec<(PathId, IoStats)>,
    /// Total time with no usable path (queueing or failing), up to now.
    pub no_path_time: Duration,
    /// Writes issued again while an earlier attempt of theirs, on a failed path, had no
    /// known outcome: each a possible stale write (see `docs/engine.md`).
    pub in_doubt_writes: u64,
    /// Writes held back by the stale-write fence.
    pub fenced_writes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_nanos(0));
        h.record(Duration::from_micros(100));
        h.record(Duration::from_micros(100));
        h.record(Duration::from_secs(100_000));
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[LATENCY_BUCKETS - 1], 1);
        let p50 = s.quantile(0.5).unwrap();
        assert!(p50 >= Duration::from_micros(100) && p50 < Duration::from_micros(200));
        assert_eq!(LatencyHistogram::default().snapshot().quantile(0.5), None);
    }
}
