//! Counters per path and per map: I/Os, bytes, errors, requeues, latency histograms (per
//! kind of operation, with their exact sum), and time spent with no usable path. Atomics,
//! updated from the I/O fast path: no lock, two or three `fetch_add`s per completion.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mpath_policy::PathId;

/// Upper bounds (inclusive, in ns) of the latency buckets, chosen for storage: 50 µs (a
/// fast SSD over a LAN) to 10 s (a SCSI command timeout's order), 1–2.5–5 per decade.
/// The last bucket, above 10 s, is open (`+Inf`).
pub const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets of a histogram: one per bound, and the open one above the last.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// What an I/O did, for the per-operation latency histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IoOp {
    /// Data in: READ (a map's `Read`).
    Read,
    /// Data out: WRITE, COMPARE AND WRITE (a map's `Write`).
    Write,
    /// No data moved: SYNCHRONIZE CACHE, UNMAP, WRITE SAME and the like (a map's flushes,
    /// discards and zeroing).
    Other,
}

impl IoOp {
    pub const ALL: [IoOp; 3] = [IoOp::Read, IoOp::Write, IoOp::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Other => "other",
        }
    }

    /// The operation of a command by its data phase.
    #[inline]
    pub fn of_data(data: &block::DataPhase) -> IoOp {
        match data {
            block::DataPhase::In { .. } => IoOp::Read,
            block::DataPhase::Out(_) => IoOp::Write,
            block::DataPhase::None => IoOp::Other,
        }
    }

    /// The operation of a caller's request.
    #[inline]
    pub fn of_block(op: &block::BlockOp) -> IoOp {
        match op {
            block::BlockOp::Read { .. } => IoOp::Read,
            block::BlockOp::Write { .. } => IoOp::Write,
            _ => IoOp::Other,
        }
    }
}

/// The bounds, and above the last one that no latency exceeds.
const PADDED_BOUNDS_NS: [u64; LATENCY_BUCKETS] = {
    let mut p = [u64::MAX; LATENCY_BUCKETS];
    let mut i = 0;
    while i < LATENCY_BOUNDS_NS.len() {
        p[i] = LATENCY_BOUNDS_NS[i];
        i += 1;
    }
    p
};

/// By bit length `o` of a latency (it is in [2^(o-1), 2^o)): how many bounds lie below
/// 2^(o-1), all of them below the latency.
const BOUNDS_BELOW_OCTAVE: [u8; 65] = {
    let mut t = [0u8; 65];
    let mut o = 1;
    while o <= 64 {
        let floor = 1u64 << (o - 1);
        let mut n = 0;
        while n < LATENCY_BOUNDS_NS.len() && LATENCY_BOUNDS_NS[n] < floor {
            n += 1;
        }
        t[o] = n as u8;
        o += 1;
    }
    t
};

/// The bucket of a latency: the first whose bound is not below it. Each bound is at least
/// twice the one before, so an octave holds at most one: a table look-up by the bit length
/// and one comparison, without branches.
#[inline]
fn bucket_of(ns: u64) -> usize {
    let i = BOUNDS_BELOW_OCTAVE[(64 - ns.leading_zeros()) as usize] as usize;
    i + usize::from(ns > PADDED_BOUNDS_NS[i])
}

/// A lock-free latency histogram with the exact sum of what it counted.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
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
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a [`LatencyHistogram`]: counts per bucket (not cumulative) and the exact sum.
///
/// Read while I/O goes on, the sum and the buckets may be one completion apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS],
    /// The sum of every latency counted, in ns (wraps after 584 years of latency).
    pub sum_ns: u64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The exact sum of the latencies counted.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// The exact mean latency.
    pub fn mean(&self) -> Option<Duration> {
        let n = self.count();
        (n > 0).then(|| Duration::from_nanos(self.sum_ns / n))
    }

    /// Add another histogram's counts (the operations of a map or path together).
    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }

    /// An estimate of the `q` quantile (0..=1), interpolated linearly within its bucket
    /// (as Prometheus' `histogram_quantile` does): exact to the bucket, so it lies between
    /// two of [`LATENCY_BOUNDS_NS`]. A quantile in the open bucket above the last bound is
    /// given as that bound (10 s), a quantile in the first bucket as a share of 50 µs.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BOUNDS_NS.get(i) else {
                    return Some(Duration::from_nanos(LATENCY_BOUNDS_NS[i - 1]));
                };
                let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_NS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                let ns = lower as f64 + (upper - lower) as f64 * within;
                return Some(Duration::from_nanos(ns.round() as u64));
            }
            below += n;
        }
        None
    }
}

/// Counters of one path (commands on it) or of the map (requests of its callers).
///
/// Every completion goes into the latency histogram of its operation, so the I/O count is
/// the histograms' total: one atomic update per completion fewer than a separate count.
#[derive(Debug, Default)]
pub struct IoCounters {
    bytes: AtomicU64,
    errors: AtomicU64,
    requeues: AtomicU64,
    busy: AtomicU64,
    hedged: AtomicU64,
    hedges_won: AtomicU64,
    /// Indexed by [`IoOp`].
    latency: [LatencyHistogram; 3],
}

impl IoCounters {
    #[inline]
    pub(crate) fn completed(&self, op: IoOp, bytes: u64, latency_ns: u64) {
        if bytes > 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.latency[op as usize].record_ns(latency_ns);
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

    pub(crate) fn hedged(&self) {
        self.hedged.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn hedge_won(&self) {
        self.hedges_won.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IoStats {
        let by_op: [Histogram; 3] = std::array::from_fn(|i| self.latency[i].snapshot());
        let mut latency = Histogram::default();
        for h in &by_op {
            latency.add(h);
        }
        IoStats {
            ios: latency.count(),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            requeues: self.requeues.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            hedged: self.hedged.load(Ordering::Relaxed),
            hedges_won: self.hedges_won.load(Ordering::Relaxed),
            latency,
            by_op,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub requeues: u64,
    pub busy: u64,
    /// Reads hedged: for a path, reads that waited too long on it and were issued on
    /// another path too; for the map, its hedged reads.
    pub hedged: u64,
    /// Of those, how many the second attempt answered first.
    pub hedges_won: u64,
    /// Every operation's latencies together.
    pub latency: Histogram,
    /// Latencies per operation, indexed by [`IoOp`] (`by_op[IoOp::Write as usize]`).
    pub by_op: [Histogram; 3],
}

impl IoStats {
    pub fn op(&self, op: IoOp) -> &Histogram {
        &self.by_op[op as usize]
    }
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
    fn buckets_are_inclusive_upper_bounds() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_nanos(0));
        h.record(Duration::from_micros(50)); // on the bound: le="0.00005"
        h.record(Duration::from_nanos(50_001));
        h.record(Duration::from_secs(10));
        h.record(Duration::from_secs(100_000));
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.buckets[0], 2);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[LATENCY_BUCKETS - 2], 1);
        assert_eq!(s.buckets[LATENCY_BUCKETS - 1], 1);
        assert!(LATENCY_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(LATENCY_BUCKETS, 18);
    }

    #[test]
    fn the_bucket_is_the_first_bound_not_below() {
        assert!(LATENCY_BOUNDS_NS.windows(2).all(|w| w[1] >= 2 * w[0]));
        let mut probes = vec![0, 1, u64::MAX, u64::MAX - 1];
        for &b in &LATENCY_BOUNDS_NS {
            probes.extend([b - 1, b, b + 1, b / 2, b * 2 - 1]);
        }
        for o in 0..64 {
            let p = 1u64 << o;
            probes.extend([p - 1, p, p + 1, p + p / 3]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            probes.push(x >> (x % 64));
        }
        for ns in probes {
            let expected = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
            assert_eq!(bucket_of(ns), expected, "{ns}");
        }
    }

    #[test]
    fn the_sum_is_exact() {
        let h = LatencyHistogram::default();
        let samples = [
            1u64,
            73_421,
            999_999,
            1_000_001,
            2_345_678_901,
            31_000_000_000,
        ];
        for ns in samples {
            h.record_ns(ns);
        }
        let s = h.snapshot();
        assert_eq!(s.sum_ns, samples.iter().sum::<u64>());
        assert_eq!(s.count(), samples.len() as u64);
        assert_eq!(
            s.mean(),
            Some(Duration::from_nanos(samples.iter().sum::<u64>() / 6))
        );
    }

    #[test]
    fn quantiles_are_interpolated_within_their_bucket() {
        assert_eq!(Histogram::default().quantile(0.5), None);
        // 100 samples between 1 ms and 2.5 ms: p50 half-way, p99 near the top, neither a
        // bucket bound nor a power of two.
        let h = LatencyHistogram::default();
        for i in 0..100u64 {
            h.record_ns(1_000_001 + i * 14_999);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets[5], 100);
        assert_eq!(s.quantile(0.5), Some(Duration::from_micros(1750)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_micros(2485)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_micros(2500)));
        assert_eq!(s.quantile(0.0), Some(Duration::from_micros(1000)));

        // Across buckets: 90 fast (≤ 50 µs), 10 slow (in (250 ms, 500 ms]). The 50th sample
        // is in the first bucket, the 99th the 9th of the ten slow ones.
        let h = LatencyHistogram::default();
        for _ in 0..90 {
            h.record(Duration::from_micros(20));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(300));
        }
        let s = h.snapshot();
        assert_eq!(s.quantile(0.5), Some(Duration::from_nanos(27_778)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_millis(475)));
        assert_eq!(s.mean(), Some(Duration::from_nanos(30_018_000)));

        // Beyond the last bound: the bound, as Prometheus answers.
        let h = LatencyHistogram::default();
        h.record(Duration::from_secs(60));
        assert_eq!(h.snapshot().quantile(0.5), Some(Duration::from_secs(10)));
    }

    #[test]
    fn counters_keep_operations_apart_and_total_them() {
        let c = IoCounters::default();
        c.completed(IoOp::Read, 4096, 200_000);
        c.completed(IoOp::Read, 4096, 300_000);
        c.completed(IoOp::Write, 8192, 3_000_000);
        c.completed(IoOp::Other, 0, 7_000_000);
        let s = c.snapshot();
        assert_eq!(s.ios, 4);
        assert_eq!(s.bytes, 16384);
        assert_eq!(s.op(IoOp::Read).count(), 2);
        assert_eq!(s.op(IoOp::Read).sum_ns, 500_000);
        assert_eq!(s.op(IoOp::Write).count(), 1);
        assert_eq!(s.op(IoOp::Other).sum_ns, 7_000_000);
        assert_eq!(s.latency.sum_ns, 10_500_000);
        assert_eq!(s.latency.count(), 4);
        let mut total = Histogram::default();
        for op in IoOp::ALL {
            total.add(s.op(op));
        }
        assert_eq!(total, s.latency);
    }
}
