//! A verifying write/read workload: every block it writes says what it is, so every read
//! proves the device returned the right data for the right block at the right time.
//!
//! Each written block starts with a header — magic, the run's id, its LBA, a generation
//! number, a random seed — and a CRC32C over the whole block; the rest is pseudo-random
//! from the seed. Per block the workload keeps the generation of the last *acknowledged*
//! write and the generations whose outcome is unknown (in flight, or failed: a failed write
//! may or may not have reached the medium). A read is then:
//!
//! | what the block holds | verdict |
//! |---|---|
//! | the checksum does not match | **corrupt** (torn or damaged) |
//! | the header names another LBA | **misplaced** (a write landed on the wrong block) |
//! | the last acknowledged generation, or one of unknown outcome | verified |
//! | an older generation, or nothing while a write was acknowledged | **stale** (an acknowledged write was lost, or an old one landed late) |
//! | a generation never issued, or no header at all over acknowledged data | **corrupt** |
//!
//! Workers (the queue depth) each keep one request outstanding and never touch a block
//! another worker is using, so the state a read is checked against cannot change under it.
//! Device errors are counted and their first messages kept; nothing panics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::BlockClient;

/// Identifies a block written by this workload ("MPATHWL" and a format version).
const MAGIC: u64 = u64::from_be_bytes(*b"MPATHWL\x01");

/// magic, run id, LBA, generation, seed: five u64, then the CRC32C.
const HEADER_LEN: usize = 40;
const CRC_END: usize = HEADER_LEN + 4;

/// Smallest block the format fits in with room for pseudo-random payload; also the
/// smallest logical block size of any SCSI disk.
pub const MIN_BLOCK_SIZE: u32 = 512;

/// How many of the longest gaps without a completion a report lists: enough to see a
/// failover's stall next to the run's ordinary hiccups.
const LONGEST_GAPS: usize = 5;

/// Random picks tried before scanning for a block no worker holds: with the region far
/// larger than the queue depth, the first pick almost always succeeds.
const PICK_TRIES: usize = 8;

/// Largest read of the final pass: a few hundred blocks per request keeps a 256 MiB region
/// to a fraction of a second without asking the device for huge transfers.
const VERIFY_CHUNK: u32 = 1 << 20;

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Start of the region, in bytes (a multiple of `block_size`).
    pub region_offset: u64,
    /// Length of the region, in bytes (a multiple of `block_size`).
    pub region_len: u64,
    /// Bytes per request, and the unit of verification.
    pub block_size: u32,
    /// Share of requests that are reads, 0–100.
    pub read_percent: u8,
    /// Share of writes sent with FUA, 0–100.
    pub fua_percent: u8,
    /// Workers, each with one request outstanding.
    pub depth: usize,
    pub duration: Duration,
    /// Seeds every choice (blocks, reads or writes, data): the same seed gives the same
    /// sequence of requests per worker.
    pub seed: u64,
    /// After `duration`, how long requests still in flight may take before they are
    /// reported as unfinished.
    pub drain_timeout: Duration,
    /// How many error and finding messages a report keeps (all are counted).
    pub max_messages: usize,
}

impl Config {
    /// Defaults over a region: 4 KiB blocks, 50 % reads, no FUA, depth 8, 10 s, seed 1.
    /// The drain timeout, 75 s, outlasts the engine's 60 s of no-path queueing, so a
    /// request queued while every path is down is answered rather than abandoned.
    pub fn for_region(offset: u64, len: u64) -> Config {
        Config {
            region_offset: offset,
            region_len: len,
            block_size: 4096,
            read_percent: 50,
            fua_percent: 0,
            depth: 8,
            duration: Duration::from_secs(10),
            seed: 1,
            drain_timeout: Duration::from_secs(75),
            max_messages: 20,
        }
    }

    fn blocks(&self) -> u64 {
        self.region_len / u64::from(self.block_size)
    }
}

/// Why a configuration cannot run on a device.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("workload configuration: {0}")]
pub struct ConfigError(pub String);

/// Counters of a run so far (for status lines while it runs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Requests completed successfully.
    pub ops: u64,
    pub errors: u64,
    pub corrupt: u64,
    pub stale: u64,
    pub misplaced: u64,
    /// Reads that found the expected data.
    pub verified: u64,
    /// Requests outstanding now.
    pub in_flight: u64,
}

/// A stretch of time in which no request completed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Gap {
    /// When it began, in seconds since the start of the run.
    pub at_s: f64,
    pub ms: f64,
}

/// The outcome of [`Workload::run`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub seconds: f64,
    /// Requests completed successfully (whatever their data turned out to be).
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    /// Requests the device failed.
    pub errors: u64,
    /// Requests still unanswered when the drain timeout passed (also counted in `errors`).
    pub unfinished: u64,
    pub corrupt: u64,
    pub stale: u64,
    pub misplaced: u64,
    /// Reads that found the expected data.
    pub verified: u64,
    /// Reads of blocks not written yet (any content is valid there).
    pub unwritten_reads: u64,
    /// Successful completions in each second of the run.
    pub iops: Vec<u64>,
    pub latency_max_ms: f64,
    /// The longest read and the longest write.
    pub read_latency_max_ms: f64,
    pub write_latency_max_ms: f64,
    pub latency_mean_ms: f64,
    /// The longest gaps without any completion, longest first.
    pub longest_gaps: Vec<Gap>,
    /// The first errors and findings, in the order they happened.
    pub messages: Vec<String>,
}

impl Report {
    /// No error, no bad block.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.corrupt == 0 && self.stale == 0 && self.misplaced == 0
    }

    /// Mean completions per second over whole seconds `[from, to)` of the timeline.
    pub fn iops_between(&self, from: usize, to: usize) -> f64 {
        let to = to.min(self.iops.len());
        if from >= to {
            return 0.0;
        }
        self.iops[from..to].iter().sum::<u64>() as f64 / (to - from) as f64
    }

    /// The longest gap without a completion, in milliseconds.
    pub fn longest_gap_ms(&self) -> f64 {
        self.longest_gaps.first().map_or(0.0, |g| g.ms)
    }
}

/// The outcome of [`Workload::verify_all`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    pub seconds: f64,
    /// Blocks in the region.
    pub blocks: u64,
    /// Blocks holding the expected data.
    pub verified: u64,
    /// Blocks never written (any content is valid there).
    pub unwritten: u64,
    pub corrupt: u64,
    pub stale: u64,
    pub misplaced: u64,
    /// Reads the device failed (their blocks are not verified).
    pub errors: u64,
    pub messages: Vec<String>,
}

impl VerifyReport {
    /// Every block read, none bad.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.corrupt == 0 && self.stale == 0 && self.misplaced == 0
    }
}

/// A verifying workload over one region of a device.
pub struct Workload<C> {
    shared: Arc<Shared<C>>,
}

impl<C: BlockClient> Workload<C> {
    /// Check `config` against the device. Nothing is sent yet.
    pub fn new(client: C, config: Config) -> Result<Workload<C>, ConfigError> {
        let bs = config.block_size;
        let err = |m: String| Err(ConfigError(m));
        if !bs.is_power_of_two() || bs < MIN_BLOCK_SIZE {
            return err(format!(
                "block size {bs} must be a power of two of at least {MIN_BLOCK_SIZE}"
            ));
        }
        if !bs.is_multiple_of(client.block_size()) || bs > client.max_transfer() {
            return err(format!(
                "block size {bs} must be a multiple of the device's {} and at most its maximum transfer {}",
                client.block_size(),
                client.max_transfer()
            ));
        }
        let b = u64::from(bs);
        if !config.region_offset.is_multiple_of(b)
            || !config.region_len.is_multiple_of(b)
            || config.region_len == 0
        {
            return err(format!(
                "region {}+{} must be non-empty and aligned to the block size {bs}",
                config.region_offset, config.region_len
            ));
        }
        if config
            .region_offset
            .checked_add(config.region_len)
            .is_none_or(|e| e > client.size())
        {
            return err(format!(
                "region {}+{} goes beyond the device's {} bytes",
                config.region_offset,
                config.region_len,
                client.size()
            ));
        }
        if config.depth == 0 || config.blocks() < 2 * config.depth as u64 {
            return err(format!(
                "depth {} needs a region of at least twice as many blocks ({} here)",
                config.depth,
                config.blocks()
            ));
        }
        if config.read_percent > 100 || config.fua_percent > 100 {
            return err("read_percent and fua_percent are percentages (0-100)".into());
        }
        let run_id = splitmix(
            config.seed
                ^ SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
        );
        let blocks = (0..config.blocks())
            .map(|_| BlockState::default())
            .collect();
        Ok(Workload {
            shared: Arc::new(Shared {
                client,
                run_id,
                blocks: Mutex::new(blocks),
                stats: Mutex::new(Stats::new(Instant::now(), config.max_messages)),
                counters: Counters::default(),
                stop: AtomicBool::new(false),
                config,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Counters of the run in progress (or the last one).
    pub fn progress(&self) -> Progress {
        self.shared.counters.snapshot()
    }

    /// End the run in progress early (workers finish their current request).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }

    /// Run for the configured duration, then wait (up to the drain timeout) for the
    /// requests in flight. Block state carries over between runs.
    pub async fn run(&self) -> Report {
        let sh = &self.shared;
        let start = Instant::now();
        *lock(&sh.stats) = Stats::new(start, sh.config.max_messages);
        sh.counters.reset();
        sh.stop.store(false, Ordering::Relaxed);
        for b in lock(&sh.blocks).iter_mut() {
            b.busy = false;
        }
        let deadline = start + sh.config.duration;
        let mut workers = tokio::task::JoinSet::new();
        for i in 0..sh.config.depth {
            workers.spawn(worker(sh.clone(), i, deadline));
        }
        let drained = tokio::time::timeout_at((deadline + sh.config.drain_timeout).into(), async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        let mut unfinished = 0;
        if drained.is_err() {
            unfinished = sh.counters.in_flight.load(Ordering::Relaxed);
            workers.abort_all();
            let mut st = lock(&sh.stats);
            st.errors += unfinished;
            st.message(format!(
                "{unfinished} request(s) still unanswered {:?} after the end of the run",
                sh.config.drain_timeout
            ));
        }
        let end = Instant::now();
        let st = lock(&sh.stats);
        let mut gaps = st.gaps.clone();
        push_gap(&mut gaps, st.last_completion, end, start);
        let done = st.reads + st.writes;
        Report {
            seconds: end.duration_since(start).as_secs_f64(),
            ops: done,
            reads: st.reads,
            writes: st.writes,
            errors: st.errors,
            unfinished,
            corrupt: st.corrupt,
            stale: st.stale,
            misplaced: st.misplaced,
            verified: st.verified,
            unwritten_reads: st.unwritten_reads,
            iops: st.iops.clone(),
            latency_max_ms: st.latency_max.as_secs_f64() * 1e3,
            read_latency_max_ms: st.read_latency_max.as_secs_f64() * 1e3,
            write_latency_max_ms: st.write_latency_max.as_secs_f64() * 1e3,
            latency_mean_ms: if done + st.errors == 0 {
                0.0
            } else {
                st.latency_sum.as_secs_f64() * 1e3 / (done + st.errors) as f64
            },
            longest_gaps: gaps,
            messages: st.messages.clone(),
        }
    }

    /// Read back the whole region and check every block against the acknowledged state.
    /// Run it when no run is in progress.
    pub async fn verify_all(&self) -> VerifyReport {
        let sh = &self.shared;
        let start = Instant::now();
        let bs = sh.config.block_size;
        let chunk = (VERIFY_CHUNK.min(sh.client.max_transfer()) / bs).max(1) * bs;
        let chunks = sh.config.region_len.div_ceil(u64::from(chunk));
        let next = Arc::new(AtomicU64::new(0));
        let report = Arc::new(Mutex::new(VerifyReport {
            blocks: sh.config.blocks(),
            ..VerifyReport::default()
        }));
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..sh.config.depth {
            let (sh, next, report) = (sh.clone(), next.clone(), report.clone());
            readers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks {
                        return;
                    }
                    let at = i * u64::from(chunk);
                    let len = (sh.config.region_len - at).min(u64::from(chunk)) as u32;
                    let result = sh.client.read(sh.config.region_offset + at, len).await;
                    sh.check_chunk(at / u64::from(bs), len, result, &report);
                }
            });
        }
        while let Some(r) = readers.join_next().await {
            if let Err(e) = r {
                let mut rep = lock(&report);
                rep.errors += 1;
                push_message(
                    &mut rep.messages,
                    sh.config.max_messages,
                    format!("a verifying reader ended: {e}"),
                );
            }
        }
        let mut rep = lock(&report).clone();
        rep.seconds = start.elapsed().as_secs_f64();
        rep
    }
}

/// What one block of the region may legitimately hold.
#[derive(Clone, Debug, Default)]
struct BlockState {
    /// Generation of the last acknowledged write; 0: none yet (any content is valid).
    acked: u64,
    /// The last generation issued.
    issued: u64,
    /// Generations issued after `acked` whose outcome is unknown: in flight, or failed (a
    /// failed write may still have reached the medium).
    unknown: Vec<u64>,
    /// A worker has a request on this block.
    busy: bool,
}

impl BlockState {
    fn may_hold(&self, generation: u64) -> bool {
        generation == self.acked || self.unknown.contains(&generation)
    }
}

struct Shared<C> {
    client: C,
    config: Config,
    /// Written into every block: data of an earlier run is told apart from this one's.
    run_id: u64,
    blocks: Mutex<Vec<BlockState>>,
    stats: Mutex<Stats>,
    counters: Counters,
    stop: AtomicBool,
}

/// Lock-free counters for [`Progress`].
#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
    corrupt: AtomicU64,
    stale: AtomicU64,
    misplaced: AtomicU64,
    verified: AtomicU64,
    in_flight: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Progress {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Progress {
            ops: l(&self.ops),
            errors: l(&self.errors),
            corrupt: l(&self.corrupt),
            stale: l(&self.stale),
            misplaced: l(&self.misplaced),
            verified: l(&self.verified),
            in_flight: l(&self.in_flight),
        }
    }

    fn reset(&self) {
        for a in [
            &self.ops,
            &self.errors,
            &self.corrupt,
            &self.stale,
            &self.misplaced,
            &self.verified,
            &self.in_flight,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// Everything a report needs, updated at each completion.
struct Stats {
    start: Instant,
    last_completion: Instant,
    reads: u64,
    writes: u64,
    errors: u64,
    corrupt: u64,
    stale: u64,
    misplaced: u64,
    verified: u64,
    unwritten_reads: u64,
    iops: Vec<u64>,
    latency_max: Duration,
    read_latency_max: Duration,
    write_latency_max: Duration,
    latency_sum: Duration,
    gaps: Vec<Gap>,
    messages: Vec<String>,
    max_messages: usize,
}

impl Stats {
    fn new(start: Instant, max_messages: usize) -> Stats {
        Stats {
            start,
            last_completion: start,
            reads: 0,
            writes: 0,
            errors: 0,
            corrupt: 0,
            stale: 0,
            misplaced: 0,
            verified: 0,
            unwritten_reads: 0,
            iops: Vec::new(),
            latency_max: Duration::ZERO,
            read_latency_max: Duration::ZERO,
            write_latency_max: Duration::ZERO,
            latency_sum: Duration::ZERO,
            gaps: Vec::new(),
            messages: Vec::new(),
            max_messages,
        }
    }

    fn message(&mut self, m: String) {
        push_message(&mut self.messages, self.max_messages, m);
    }

    fn completed(&mut self, now: Instant, latency: Duration, ok: bool, write: bool) {
        push_gap(&mut self.gaps, self.last_completion, now, self.start);
        self.last_completion = self.last_completion.max(now);
        self.latency_max = self.latency_max.max(latency);
        let per_op = if write {
            &mut self.write_latency_max
        } else {
            &mut self.read_latency_max
        };
        *per_op = (*per_op).max(latency);
        self.latency_sum += latency;
        if ok {
            let second = now.saturating_duration_since(self.start).as_secs() as usize;
            if self.iops.len() <= second {
                self.iops.resize(second + 1, 0);
            }
            self.iops[second] += 1;
        }
    }
}

/// Keep `from..to` among the longest gaps (longest first).
fn push_gap(gaps: &mut Vec<Gap>, from: Instant, to: Instant, start: Instant) {
    let ms = to.saturating_duration_since(from).as_secs_f64() * 1e3;
    if gaps.len() == LONGEST_GAPS && gaps.last().is_some_and(|g| g.ms >= ms) {
        return;
    }
    let gap = Gap {
        at_s: from.saturating_duration_since(start).as_secs_f64(),
        ms,
    };
    let at = gaps.partition_point(|g| g.ms >= ms);
    gaps.insert(at, gap);
    gaps.truncate(LONGEST_GAPS);
}

fn push_message(messages: &mut Vec<String>, max: usize, m: String) {
    if messages.len() < max {
        messages.push(m);
    }
}

/// What a read found in one block, before comparing with the block's state.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    /// Our format, checksum good.
    Ours {
        run_id: u64,
        lba: u64,
        generation: u64,
    },
    /// Our magic, checksum bad: torn or damaged.
    Torn {
        lba: u64,
        generation: u64,
    },
    Zeroes,
    /// Anything else.
    Foreign,
}

/// The verdict on one block.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Verified,
    Unwritten,
    Corrupt(String),
    Stale(String),
    Misplaced(String),
}

impl<C: BlockClient> Shared<C> {
    /// Pick a block no worker holds and take it; for a write, issue its generation.
    fn claim(&self, rng: &mut Rng, write: bool) -> (u64, u64) {
        let mut blocks = lock(&self.blocks);
        let n = blocks.len() as u64;
        let mut lba = rng.below(n);
        let mut tries = 1;
        while blocks[lba as usize].busy {
            lba = if tries < PICK_TRIES {
                rng.below(n)
            } else {
                (lba + 1) % n
            };
            tries += 1;
        }
        let b = &mut blocks[lba as usize];
        b.busy = true;
        let mut generation = 0;
        if write {
            b.issued += 1;
            generation = b.issued;
            b.unknown.push(generation);
        }
        (lba, generation)
    }

    fn judge(&self, lba: u64, content: &Content) -> Verdict {
        let blocks = lock(&self.blocks);
        let b = &blocks[lba as usize];
        judge(b, self.run_id, lba, content)
    }

    fn check_chunk(
        &self,
        first_lba: u64,
        len: u32,
        result: Result<Bytes, C::Error>,
        report: &Mutex<VerifyReport>,
    ) {
        let bs = self.config.block_size as usize;
        let max = self.config.max_messages;
        let data = match result {
            Ok(d) if d.len() == len as usize => d,
            Ok(d) => {
                let mut r = lock(report);
                r.errors += 1;
                push_message(
                    &mut r.messages,
                    max,
                    format!(
                        "read of LBA {first_lba}+{} returned {} bytes, not {len}",
                        len as usize / bs,
                        d.len()
                    ),
                );
                return;
            }
            Err(e) => {
                let mut r = lock(report);
                r.errors += 1;
                push_message(
                    &mut r.messages,
                    max,
                    format!("read of LBA {first_lba}+{}: {e}", len as usize / bs),
                );
                return;
            }
        };
        let contents: Vec<Content> = data.chunks(bs).map(parse).collect();
        let verdicts: Vec<Verdict> = {
            let blocks = lock(&self.blocks);
            contents
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let lba = first_lba + i as u64;
                    judge(&blocks[lba as usize], self.run_id, lba, c)
                })
                .collect()
        };
        let mut r = lock(report);
        for (i, v) in verdicts.into_iter().enumerate() {
            let lba = first_lba + i as u64;
            match v {
                Verdict::Verified => r.verified += 1,
                Verdict::Unwritten => r.unwritten += 1,
                Verdict::Corrupt(m) => {
                    r.corrupt += 1;
                    push_message(&mut r.messages, max, format!("LBA {lba} corrupt: {m}"));
                }
                Verdict::Stale(m) => {
                    r.stale += 1;
                    push_message(&mut r.messages, max, format!("LBA {lba} stale: {m}"));
                }
                Verdict::Misplaced(m) => {
                    r.misplaced += 1;
                    push_message(&mut r.messages, max, format!("LBA {lba} misplaced: {m}"));
                }
            }
        }
    }

    fn release(&self, lba: u64, acked: Option<u64>) {
        let mut blocks = lock(&self.blocks);
        let b = &mut blocks[lba as usize];
        b.busy = false;
        if let Some(g) = acked {
            // Generations are issued in order and one at a time per block: everything up
            // to this one is superseded.
            b.acked = b.acked.max(g);
            let acked = b.acked;
            b.unknown.retain(|&x| x > acked);
        }
    }
}

/// Compare what a block holds with what it may hold.
fn judge(b: &BlockState, run_id: u64, lba: u64, content: &Content) -> Verdict {
    match *content {
        Content::Torn { lba: l, generation } => Verdict::Corrupt(format!(
            "checksum mismatch (torn or damaged; its header says LBA {l} generation {generation})"
        )),
        Content::Ours {
            run_id: r,
            lba: l,
            generation,
        } if r == run_id => {
            if l != lba {
                Verdict::Misplaced(format!(
                    "holds the block written for LBA {l} (generation {generation})"
                ))
            } else if b.may_hold(generation) {
                Verdict::Verified
            } else if generation > b.issued {
                Verdict::Corrupt(format!(
                    "generation {generation} was never issued (last {})",
                    b.issued
                ))
            } else {
                Verdict::Stale(format!(
                    "generation {generation}, but generation {} was acknowledged{}",
                    b.acked,
                    unknown_note(b)
                ))
            }
        }
        // Zeroes, an earlier run's data or anything else: fine until this run writes.
        _ if b.acked == 0 => Verdict::Unwritten,
        Content::Zeroes => Verdict::Stale(format!(
            "reads as never written (zeroes), but generation {} was acknowledged{}",
            b.acked,
            unknown_note(b)
        )),
        Content::Ours { .. } => Verdict::Stale(format!(
            "holds an earlier run's data, but generation {} was acknowledged",
            b.acked
        )),
        Content::Foreign => Verdict::Corrupt(format!(
            "no valid header, but generation {} was acknowledged",
            b.acked
        )),
    }
}

fn unknown_note(b: &BlockState) -> String {
    if b.unknown.is_empty() {
        String::new()
    } else {
        format!(" (outcome unknown: {:?})", b.unknown)
    }
}

async fn worker<C: BlockClient>(sh: Arc<Shared<C>>, index: usize, deadline: Instant) {
    let cfg = &sh.config;
    let mut rng = Rng::new(cfg.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let bs = cfg.block_size;
    while Instant::now() < deadline && !sh.stop.load(Ordering::Relaxed) {
        let write = rng.below(100) >= u64::from(cfg.read_percent);
        let fua = write && rng.below(100) < u64::from(cfg.fua_percent);
        let (lba, generation) = sh.claim(&mut rng, write);
        let offset = cfg.region_offset + lba * u64::from(bs);
        let data = write.then(|| make_block(sh.run_id, lba, generation, rng.next(), bs as usize));
        sh.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let outcome = match data {
            Some(d) => sh.client.write(offset, d, fua).await.map(|()| None),
            None => sh.client.read(offset, bs).await.map(Some),
        };
        let now = Instant::now();
        sh.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        let verdict = match &outcome {
            Ok(Some(d)) if d.len() == bs as usize => Some(sh.judge(lba, &parse(d))),
            Ok(Some(d)) => Some(Verdict::Corrupt(format!(
                "the read returned {} bytes, not {bs}",
                d.len()
            ))),
            _ => None,
        };
        sh.release(lba, (write && outcome.is_ok()).then_some(generation));
        let mut st = lock(&sh.stats);
        st.completed(now, now - t0, outcome.is_ok(), write);
        match outcome {
            Err(e) => {
                st.errors += 1;
                sh.counters.errors.fetch_add(1, Ordering::Relaxed);
                let what = if write { "write" } else { "read" };
                st.message(format!("{what} of LBA {lba} failed: {e}"));
            }
            Ok(_) => {
                sh.counters.ops.fetch_add(1, Ordering::Relaxed);
                if write {
                    st.writes += 1;
                } else {
                    st.reads += 1;
                }
            }
        }
        match verdict {
            None => {}
            Some(Verdict::Verified) => {
                st.verified += 1;
                sh.counters.verified.fetch_add(1, Ordering::Relaxed);
            }
            Some(Verdict::Unwritten) => st.unwritten_reads += 1,
            Some(Verdict::Corrupt(m)) => {
                st.corrupt += 1;
                sh.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                st.message(format!("LBA {lba} corrupt: {m}"));
            }
            Some(Verdict::Stale(m)) => {
                st.stale += 1;
                sh.counters.stale.fetch_add(1, Ordering::Relaxed);
                st.message(format!("LBA {lba} stale: {m}"));
            }
            Some(Verdict::Misplaced(m)) => {
                st.misplaced += 1;
                sh.counters.misplaced.fetch_add(1, Ordering::Relaxed);
                st.message(format!("LBA {lba} misplaced: {m}"));
            }
        }
    }
}

/// A block of this workload's format: header, CRC32C, pseudo-random payload.
fn make_block(run_id: u64, lba: u64, generation: u64, seed: u64, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    for v in [MAGIC, run_id, lba, generation, seed] {
        b.put_u64_le(v);
    }
    b.put_u32_le(0);
    let mut rng = Rng::new(seed);
    while b.len() + 8 <= len {
        b.put_u64_le(rng.next());
    }
    b.put_bytes(0, len - b.len());
    let crc = checksum(&b);
    b[HEADER_LEN..CRC_END].copy_from_slice(&crc.to_le_bytes());
    b.freeze()
}

/// CRC32C of the block with its CRC field left out.
fn checksum(b: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&b[..HEADER_LEN]), &b[CRC_END..])
}

fn parse(b: &[u8]) -> Content {
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_le_bytes(a)
    };
    if b.len() < CRC_END || u64_at(0) != MAGIC {
        return if b.iter().all(|&x| x == 0) {
            Content::Zeroes
        } else {
            Content::Foreign
        };
    }
    let (r, lba, generation) = (u64_at(1), u64_at(2), u64_at(3));
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[HEADER_LEN..CRC_END]);
    if u32::from_le_bytes(crc) != checksum(b) {
        return Content::Torn { lba, generation };
    }
    Content::Ours {
        run_id: r,
        lba,
        generation,
    }
}

/// SplitMix64: small, fast, and good enough to pick blocks and fill payloads.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.0)
    }

    /// Uniform enough in `0..n` for n far below 2^64.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// No code panics while holding these locks; the state is still consistent if one did.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(acked: u64, issued: u64, unknown: &[u64]) -> BlockState {
        BlockState {
            acked,
            issued,
            unknown: unknown.to_vec(),
            busy: false,
        }
    }

    #[test]
    fn block_format_round_trip() {
        let b = make_block(7, 42, 3, 99, 4096);
        assert_eq!(b.len(), 4096);
        assert_eq!(
            parse(&b),
            Content::Ours {
                run_id: 7,
                lba: 42,
                generation: 3
            }
        );
        let mut torn = b.to_vec();
        torn[2000] ^= 1;
        assert_eq!(
            parse(&torn),
            Content::Torn {
                lba: 42,
                generation: 3
            }
        );
        assert_eq!(parse(&[0u8; 512]), Content::Zeroes);
        assert_eq!(parse(&[1u8; 512]), Content::Foreign);
    }

    #[test]
    fn verdicts() {
        let ours = |lba, generation| Content::Ours {
            run_id: 7,
            lba,
            generation,
        };
        let v = |b: &BlockState, c: &Content| judge(b, 7, 5, c);
        // Never written: anything goes.
        assert_eq!(v(&state(0, 0, &[]), &Content::Foreign), Verdict::Unwritten);
        assert_eq!(v(&state(0, 1, &[1]), &Content::Zeroes), Verdict::Unwritten);
        assert_eq!(v(&state(0, 1, &[1]), &ours(5, 1)), Verdict::Verified);
        // Acknowledged 2, 3 in flight or failed: either.
        let b = state(2, 3, &[3]);
        assert_eq!(v(&b, &ours(5, 2)), Verdict::Verified);
        assert_eq!(v(&b, &ours(5, 3)), Verdict::Verified);
        assert!(matches!(v(&b, &ours(5, 1)), Verdict::Stale(_)));
        assert!(matches!(v(&b, &Content::Zeroes), Verdict::Stale(_)));
        assert!(matches!(v(&b, &ours(5, 4)), Verdict::Corrupt(_)));
        assert!(matches!(v(&b, &ours(6, 2)), Verdict::Misplaced(_)));
        assert!(matches!(v(&b, &Content::Foreign), Verdict::Corrupt(_)));
        assert!(matches!(
            v(
                &b,
                &Content::Torn {
                    lba: 5,
                    generation: 2
                }
            ),
            Verdict::Corrupt(_)
        ));
        // Another run's block over acknowledged data.
        assert!(matches!(judge(&b, 8, 5, &ours(5, 2)), Verdict::Stale(_)));
    }

    #[test]
    fn longest_gaps_are_kept_in_order() {
        let start = Instant::now();
        let mut gaps = Vec::new();
        for ms in [5u64, 50, 1, 20, 30, 10, 40] {
            push_gap(&mut gaps, start, start + Duration::from_millis(ms), start);
        }
        let got: Vec<u64> = gaps.iter().map(|g| g.ms.round() as u64).collect();
        assert_eq!(got, vec![50, 40, 30, 20, 10]);
    }
}
