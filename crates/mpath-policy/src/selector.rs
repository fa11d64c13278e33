//! Path selectors: which usable path of the active group gets the next I/O, with the
//! semantics of dm-mpath's `round-robin`, `queue-length`, `service-time` and
//! `historical-service-time`.
//!
//! The selectors run on the engine's I/O fast path, from whatever task submits, so they
//! work on shared per-path [`PathLoad`]s made of atomics (as the kernel's `atomic_t
//! in_flight_size` is) and take `&self`: selecting takes no lock. Time is passed in as
//! nanoseconds from an epoch the caller chooses (`now_ns`); nothing here reads a clock.
//!
//! A selector is built for one set of candidate paths (the usable paths of the active
//! group, published by the engine after every change) and is told how many there are at
//! each call; per-path load outlives the selector, because I/O started under one
//! candidate set may end under another.

use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::path::MAX_RELATIVE_THROUGHPUT;

/// Which selector a map uses, with its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SelectorKind {
    /// Each path in turn, `repeat_count` I/Os at a time (dm's default repeat count for
    /// request-based multipath is 1).
    RoundRobin { repeat_count: u32 },
    /// The path with the fewest I/Os in flight.
    QueueLength,
    /// The path with the least estimated service time: bytes in flight (plus this I/O) /
    /// relative throughput. The default, and the seed's choice.
    #[default]
    ServiceTime,
    /// The path with the least estimated service time from a decaying average of measured
    /// service times, probing paths whose estimate went stale.
    HistoricalServiceTime(HstParams),
}

impl SelectorKind {
    /// Whether the selector reads time: `now_ns` in [`Selector::select`] and
    /// [`PathLoad::record_service_time`] at each completion. The others ignore both, and
    /// their callers may skip reading the clock for them.
    pub fn needs_time(&self) -> bool {
        matches!(self, SelectorKind::HistoricalServiceTime(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            SelectorKind::RoundRobin { .. } => "round-robin",
            SelectorKind::QueueLength => "queue-length",
            SelectorKind::ServiceTime => "service-time",
            SelectorKind::HistoricalServiceTime(_) => "historical-service-time",
        }
    }
}

impl fmt::Display for SelectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Arguments of `historical-service-time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HstParams {
    /// Each new sample weighs 1/2^`decay_shift` in the average.
    pub decay_shift: u32,
    /// Two averages within this percentage of each other are "the same": then only the
    /// number of I/Os in flight decides (dm-historical-service-time's threshold).
    pub similar_percent: u32,
}

impl Default for HstParams {
    fn default() -> HstParams {
        // 1/8: a path's estimate follows a change within a few dozen I/Os without one slow
        // I/O swinging it; 120 %: measured latencies jitter by more than 10 %, and paths
        // within 20 % are better balanced by queue depth than by noisy averages.
        HstParams {
            decay_shift: 3,
            similar_percent: 120,
        }
    }
}

/// dm-historical-service-time caps the in-flight count used in its products so that they
/// cannot overflow; ours are u128, but a cap also keeps one deep queue from dominating.
const HST_MAX_INFLIGHT: u64 = 1024;

/// `PathLoad::in_flight` packs the I/Os in flight above the bytes in flight, so that
/// `start_io` and `end_io` are one atomic operation each instead of two. 40 bits of bytes
/// is 1 TiB in flight on one path (a thousand 1 GiB commands: far beyond any queue),
/// and leaves 24 bits, 16 million, for the I/O count.
const IN_FLIGHT_BYTES_BITS: u32 = 40;
const IN_FLIGHT_BYTES_MASK: u64 = (1 << IN_FLIGHT_BYTES_BITS) - 1;

/// The load on one path, shared by every selector that lists it.
#[derive(Debug)]
pub struct PathLoad {
    /// I/Os in flight (high 24 bits) and their bytes (low 40 bits).
    in_flight: AtomicU64,
    /// Of those, the ones *stranded*: attempts the map gave up waiting for (a hedged
    /// read answered by another path) that the path still holds, in the same packing.
    stranded: AtomicU64,
    relative_throughput: AtomicU32,
    /// Decaying average service time in ns (0: none measured yet).
    hst_ns: AtomicU64,
    last_finish_ns: AtomicU64,
    /// After this time without a completion the average is not trusted (the path may
    /// have become faster): an idle stale path gets probed.
    stale_after_ns: AtomicU64,
    /// Weight of a new service-time sample: 1/2^`decay_shift` (changes when the map's
    /// selector does).
    decay_shift: AtomicU32,
}

impl PathLoad {
    pub fn new(relative_throughput: u32) -> PathLoad {
        PathLoad::with_decay_shift(relative_throughput, HstParams::default().decay_shift)
    }

    /// A load whose service-time average uses `decay_shift` (from the map's
    /// [`HstParams`]).
    pub fn with_decay_shift(relative_throughput: u32, decay_shift: u32) -> PathLoad {
        PathLoad {
            decay_shift: AtomicU32::new(decay_shift.min(16)),
            in_flight: AtomicU64::new(0),
            stranded: AtomicU64::new(0),
            relative_throughput: AtomicU32::new(relative_throughput.min(MAX_RELATIVE_THROUGHPUT)),
            hst_ns: AtomicU64::new(0),
            last_finish_ns: AtomicU64::new(0),
            stale_after_ns: AtomicU64::new(0),
        }
    }

    /// A new weight for later service-time samples (the map's [`HstParams`] changed).
    pub fn set_decay_shift(&self, decay_shift: u32) {
        self.decay_shift
            .store(decay_shift.min(16), Ordering::Relaxed);
    }

    pub fn set_relative_throughput(&self, rt: u32) {
        self.relative_throughput
            .store(rt.min(MAX_RELATIVE_THROUGHPUT), Ordering::Relaxed);
    }

    pub fn relative_throughput(&self) -> u32 {
        self.relative_throughput.load(Ordering::Relaxed)
    }

    pub fn in_flight_ios(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) >> IN_FLIGHT_BYTES_BITS
    }

    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) & IN_FLIGHT_BYTES_MASK
    }

    /// The decaying average service time, in ns (0 before the first completion).
    pub fn historical_service_time_ns(&self) -> u64 {
        self.hst_ns.load(Ordering::Relaxed)
    }

    /// An I/O of `bytes` was sent on this path (dm's `start_io`).
    #[inline]
    pub fn start_io(&self, bytes: u64) {
        self.in_flight
            .fetch_add(Self::packed(bytes), Ordering::Relaxed);
    }

    /// An I/O started with [`start_io`](Self::start_io) ended (dm's `end_io`).
    #[inline]
    pub fn end_io(&self, bytes: u64) {
        self.in_flight
            .fetch_sub(Self::packed(bytes), Ordering::Relaxed);
    }

    /// An attempt of `bytes` was abandoned while the path still holds it (its own
    /// `end_io` has run or will): it stays counted as in flight until
    /// [`clear_stranded`](Self::clear_stranded), so that the path does not look idle.
    pub fn strand(&self, bytes: u64) {
        let p = Self::packed(bytes);
        // In this order: `in_flight` never holds less than `stranded` says.
        self.in_flight.fetch_add(p, Ordering::Relaxed);
        self.stranded.fetch_add(p, Ordering::Relaxed);
    }

    /// One attempt of `bytes` stranded earlier is no longer counted (its time is up),
    /// unless [`clear_stranded`](Self::clear_stranded) already took it.
    pub fn unstrand(&self, bytes: u64) {
        let p = Self::packed(bytes);
        if self
            .stranded
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(p))
            .is_ok()
        {
            self.in_flight.fetch_sub(p, Ordering::Relaxed);
        }
    }

    /// The path answered (or is a new connection): nothing it holds is stranded any more.
    #[inline]
    pub fn clear_stranded(&self) {
        if self.stranded.load(Ordering::Relaxed) != 0 {
            let s = self.stranded.swap(0, Ordering::Relaxed);
            self.in_flight.fetch_sub(s, Ordering::Relaxed);
        }
    }

    /// One I/O of `bytes`, as added to `in_flight`. A single I/O larger than the bytes
    /// field counts as its maximum, so that it can never carry into the I/O count.
    #[inline]
    fn packed(bytes: u64) -> u64 {
        (1 << IN_FLIGHT_BYTES_BITS) | bytes.min(IN_FLIGHT_BYTES_MASK)
    }

    /// For `historical-service-time` (see [`SelectorKind::needs_time`]): an I/O started at
    /// `started_ns` ended at `now_ns`. The sample is the time the path spent on it after
    /// its previous completion (queueing behind other I/O is not service). `candidates` is
    /// how many paths the selector chose among: the average goes stale after that many
    /// service times without a completion.
    pub fn record_service_time(&self, started_ns: u64, now_ns: u64, candidates: usize) {
        let shift = self.decay_shift.load(Ordering::Relaxed);
        let last = self.last_finish_ns.load(Ordering::Relaxed);
        let sample = now_ns.saturating_sub(started_ns.max(last));
        let old = self.hst_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else if sample >= old {
            old + ((sample - old) >> shift)
        } else {
            old - ((old - sample) >> shift)
        }
        .max(1);
        // Races between concurrent completions lose a sample at worst; the kernel takes a
        // per-path spinlock here, which the fast path must not.
        self.hst_ns.store(new, Ordering::Relaxed);
        if now_ns > last {
            self.last_finish_ns.store(now_ns, Ordering::Relaxed);
        }
        let window = new.saturating_mul(candidates.max(1) as u64);
        self.stale_after_ns
            .store(now_ns.saturating_add(window), Ordering::Relaxed);
    }
}

/// A path selector over one set of candidate paths.
#[derive(Debug)]
pub struct Selector {
    kind: SelectorKind,
    /// Round-robin: I/Os issued. Others: where the next scan starts, so that ties rotate
    /// (the kernel moves the chosen path to the tail of its list for the same effect).
    cursor: AtomicUsize,
}

impl Selector {
    pub fn new(kind: SelectorKind) -> Selector {
        Selector {
            kind,
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn kind(&self) -> SelectorKind {
        self.kind
    }

    /// Choose among `n` candidates for an I/O of `bytes`; `load(i)` is candidate `i`'s
    /// load. `None` only when `n` is 0.
    #[inline]
    pub fn select<'a, F>(&self, n: usize, load: F, bytes: u64, now_ns: u64) -> Option<usize>
    where
        F: Fn(usize) -> &'a PathLoad,
    {
        if n <= 1 {
            return (n == 1).then_some(0);
        }
        match self.kind {
            SelectorKind::RoundRobin { repeat_count } => {
                let issued = self.cursor.fetch_add(1, Ordering::Relaxed);
                Some((issued / repeat_count.max(1) as usize) % n)
            }
            SelectorKind::QueueLength => self.scan(n, |i| load(i).in_flight_ios(), |a, b| a < b),
            SelectorKind::ServiceTime => self.scan(
                n,
                |i| StLoad::of(load(i)),
                |a, b| st_cmp(a, b, bytes) == CmpOrdering::Less,
            ),
            SelectorKind::HistoricalServiceTime(p) => self.scan(
                n,
                |i| HstLoad::of(load(i)),
                |a, b| hst_better(a, b, now_ns, p),
            ),
        }
    }

    /// The candidate no other candidate is `better` than, scanning from the cursor so
    /// that the first of equal candidates changes from one call to the next.
    /// Each candidate's load is read once (`key`), then compared with the best so far.
    #[inline]
    fn scan<K>(
        &self,
        n: usize,
        key: impl Fn(usize) -> K,
        better: impl Fn(&K, &K) -> bool,
    ) -> Option<usize> {
        let start = self.cursor.load(Ordering::Relaxed) % n;
        let mut best = start;
        let mut best_key = key(start);
        for k in 1..n {
            let i = start + k;
            let i = if i >= n { i - n } else { i };
            let ki = key(i);
            if better(&ki, &best_key) {
                best = i;
                best_key = ki;
            }
        }
        self.cursor
            .store(if best + 1 == n { 0 } else { best + 1 }, Ordering::Relaxed);
        Some(best)
    }
}

/// dm-service-time's `st_compare_load`: `Less` when path `a` would serve an I/O of
/// `incoming` bytes sooner than `b`.
pub fn st_compare(a: &PathLoad, b: &PathLoad, incoming: u64) -> CmpOrdering {
    st_cmp(&StLoad::of(a), &StLoad::of(b), incoming)
}

/// What service-time reads of a path.
struct StLoad {
    bytes: u64,
    rt: u32,
}

impl StLoad {
    #[inline]
    fn of(l: &PathLoad) -> StLoad {
        StLoad {
            bytes: l.in_flight_bytes(),
            rt: l.relative_throughput(),
        }
    }
}

#[inline]
fn st_cmp(a: &StLoad, b: &StLoad, incoming: u64) -> CmpOrdering {
    let (sz1, sz2) = (a.bytes, b.bytes);
    let (rt1, rt2) = (a.rt, b.rt);
    // Case 1: same throughput: the less loaded path.
    if rt1 == rt2 {
        return sz1.cmp(&sz2);
    }
    // Case 2a: same load: the faster path. 2b: one throughput unknown: the other path.
    if sz1 == sz2 || rt1 == 0 || rt2 == 0 {
        return rt2.cmp(&rt1);
    }
    // Case 3: (sz1 + incoming) / rt1 against (sz2 + incoming) / rt2, cross-multiplied
    // (u128: the kernel shifts sizes down to avoid the overflow instead).
    let st1 = u128::from(sz1 + incoming) * u128::from(rt2);
    let st2 = u128::from(sz2 + incoming) * u128::from(rt1);
    match st1.cmp(&st2) {
        // Case 4: equal service time: the faster path.
        CmpOrdering::Equal => rt2.cmp(&rt1),
        o => o,
    }
}

/// dm-historical-service-time's `hst_compare`, as "is `a` better than `b`".
/// What historical-service-time reads of a path.
struct HstLoad {
    hst: u64,
    out: u64,
    stale_after: u64,
}

impl HstLoad {
    #[inline]
    fn of(l: &PathLoad) -> HstLoad {
        HstLoad {
            hst: l.historical_service_time_ns(),
            out: l.in_flight_ios(),
            stale_after: l.stale_after_ns.load(Ordering::Relaxed),
        }
    }
}

#[inline]
fn hst_better(a: &HstLoad, b: &HstLoad, now_ns: u64, p: HstParams) -> bool {
    let (h1, o1, s1) = (a.hst, a.out, a.stale_after);
    let (h2, o2, s2) = (b.hst, b.out, b.stale_after);
    let (hi, lo) = if h1 > h2 { (h1, h2) } else { (h2, h1) };
    let over_threshold = u128::from(hi) * 100 > u128::from(lo) * u128::from(p.similar_percent);
    if !over_threshold {
        // Estimates too close to tell apart: the less loaded path.
        return o1 < o2;
    }
    // An idle stale path is probed; of two idle paths the most stale one is.
    if (o1 == 0 && s1 < now_ns) || (o2 == 0 && s2 < now_ns) || (o1 == 0 && o2 == 0) {
        let v1 = if o2 == 0 { s1 } else { 0 };
        let v2 = if o1 == 0 { s2 } else { 0 };
        return v1 < v2;
    }
    let b_better = if o1 == o2 {
        h1 > h2
    } else {
        let (o1, o2) = (o1.min(HST_MAX_INFLIGHT), o2.min(HST_MAX_INFLIGHT));
        u128::from(1 + o1) * u128::from(h1) > u128::from(1 + o2) * u128::from(h2)
    };
    // A stale winner is trusted no further than equal queue depth.
    if b_better {
        if s2 < now_ns {
            return o1 < o2;
        }
        false
    } else {
        if s1 < now_ns {
            return o1 < o2;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(n: usize) -> Vec<PathLoad> {
        (0..n).map(|_| PathLoad::new(1)).collect()
    }

    fn pick(s: &Selector, l: &[PathLoad], bytes: u64, now: u64) -> usize {
        s.select(l.len(), |i| &l[i], bytes, now).unwrap()
    }

    #[test]
    fn in_flight_ios_and_bytes_are_kept_apart() {
        let l = PathLoad::new(1);
        l.start_io(4096);
        l.start_io(1 << 20);
        l.start_io(0);
        assert_eq!(
            (l.in_flight_ios(), l.in_flight_bytes()),
            (3, 4096 + (1 << 20))
        );
        l.end_io(1 << 20);
        assert_eq!((l.in_flight_ios(), l.in_flight_bytes()), (2, 4096));
        l.start_io(u64::MAX);
        l.end_io(u64::MAX);
        assert_eq!((l.in_flight_ios(), l.in_flight_bytes()), (2, 4096));
    }

    #[test]
    fn round_robin_repeats() {
        let l = loads(3);
        let s = Selector::new(SelectorKind::RoundRobin { repeat_count: 2 });
        let seq: Vec<usize> = (0..8).map(|_| pick(&s, &l, 4096, 0)).collect();
        assert_eq!(seq, [0, 0, 1, 1, 2, 2, 0, 0]);
        assert_eq!(s.select(0, |i| &l[i], 1, 0), None);
        assert_eq!(s.select(1, |i| &l[i], 1, 0), Some(0));
    }

    #[test]
    fn queue_length_prefers_shortest_and_rotates_ties() {
        let l = loads(3);
        let s = Selector::new(SelectorKind::QueueLength);
        l[0].start_io(1);
        l[0].start_io(1);
        l[1].start_io(1);
        assert_eq!(pick(&s, &l, 1, 0), 2);
        l[2].start_io(1);
        // 1 and 2 tie at one I/O each; the scan starts after the last choice.
        let a = pick(&s, &l, 1, 0);
        let b = pick(&s, &l, 1, 0);
        assert!([a, b].contains(&1) && [a, b].contains(&2), "{a} {b}");
    }

    #[test]
    fn service_time_cases() {
        let (a, b) = (PathLoad::new(1), PathLoad::new(1));
        a.start_io(8192);
        b.start_io(4096);
        // Case 1: equal throughput: less in flight wins.
        assert_eq!(st_compare(&a, &b, 4096), CmpOrdering::Greater);
        // Case 2a: equal load, different throughput: faster wins.
        let (c, d) = (PathLoad::new(1), PathLoad::new(2));
        assert_eq!(st_compare(&c, &d, 4096), CmpOrdering::Greater);
        // Case 2b: unknown throughput loses.
        let (e, f) = (PathLoad::new(0), PathLoad::new(1));
        e.start_io(1);
        assert_eq!(st_compare(&e, &f, 1), CmpOrdering::Greater);
        // Case 3: 3x the throughput carries 2x the load sooner: (8k+4k)/3 < (4k+4k)/1.
        let (g, h) = (PathLoad::new(3), PathLoad::new(1));
        g.start_io(8192);
        h.start_io(4096);
        assert_eq!(st_compare(&g, &h, 4096), CmpOrdering::Less);
        // ...but not 6x: (24k+4k)/3 > (4k+4k)/1.
        g.start_io(16384);
        assert_eq!(st_compare(&g, &h, 4096), CmpOrdering::Greater);
        // Case 4: equal service time: faster wins. (2k+2k)/2 == (0+2k)/1.
        let (i, j) = (PathLoad::new(2), PathLoad::new(1));
        i.start_io(2048);
        assert_eq!(st_compare(&i, &j, 2048), CmpOrdering::Less);
    }

    #[test]
    fn service_time_balances_bytes() {
        let l = loads(2);
        let s = Selector::new(SelectorKind::ServiceTime);
        let mut sent = [0u64; 2];
        for k in 0..100u64 {
            let bytes = if k % 3 == 0 { 65536 } else { 4096 };
            let p = pick(&s, &l, bytes, 0);
            l[p].start_io(bytes);
            sent[p] += bytes;
        }
        let diff = sent[0].abs_diff(sent[1]);
        assert!(diff <= 65536, "{sent:?}");
    }

    #[test]
    fn historical_service_time_prefers_fast_and_probes_stale() {
        let p = HstParams::default();
        let l = loads(2);
        let s = Selector::new(SelectorKind::HistoricalServiceTime(p));
        // Path 0 serves in 100 µs, path 1 in 1 ms.
        for k in 0..20u64 {
            let t = k * 2_000_000;
            l[0].start_io(1);
            l[0].end_io(1);
            l[0].record_service_time(t, t + 100_000, 2);
            l[1].start_io(1);
            l[1].end_io(1);
            l[1].record_service_time(t, t + 1_000_000, 2);
        }
        // Path 0 last finished at 38.1 ms and is trusted until 38.3 ms; path 1 until 41 ms.
        let now = 38_200_000;
        assert!(l[1].historical_service_time_ns() > 5 * l[0].historical_service_time_ns());
        // With 2 in flight path 0 still wins: 3 x 100 µs < 1 x 1 ms.
        l[0].start_io(1);
        l[0].start_io(1);
        assert_eq!(pick(&s, &l, 1, now), 0);
        // Far in the future path 1's estimate is stale and it is idle: probe it.
        assert_eq!(pick(&s, &l, 1, now + 1_000_000_000), 1);
    }

    #[test]
    fn hst_similar_paths_balance_by_depth() {
        let l = loads(2);
        for load in &l {
            load.end_io_for_test(100_000, 10_000_000);
        }
        let s = Selector::new(SelectorKind::HistoricalServiceTime(HstParams::default()));
        l[0].start_io(1);
        assert_eq!(pick(&s, &l, 1, 10_000_001), 1);
    }

    impl PathLoad {
        fn end_io_for_test(&self, service: u64, now: u64) {
            self.record_service_time(now - service, now, 2);
        }
    }
}
