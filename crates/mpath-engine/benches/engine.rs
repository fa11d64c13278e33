//! Two numbers, measured in one run (`cargo bench -p mpath-engine --bench engine`):
//!
//! 1. Path selection cost per I/O for each selector with 2, 8 and 64 candidate paths:
//!    select + start_io + end_io, with 32 I/Os kept in flight so that loads differ.
//! 2. Engine overhead over a null path (every command completes at once): IOPS of 4 KiB
//!    reads through the engine against calling the path directly — building the same
//!    READ(16) and awaiting `PathTransport::submit` — on one core (a current-thread
//!    runtime).
//!
//! Prints a Markdown table (the one in BENCHMARKS.md). Each figure is the best of seven
//! runs, the variants interleaved.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{BlockDevice, BlockOp, ByteOffset, DataPhase, DeviceInfo, PathTransport, ScsiRequest};
use bytes::Bytes;
use mpath_engine::mpath_policy::{
    HstParams, MapConfig, PathInfo, PathLoad, Selector, SelectorKind,
};
use mpath_engine::{EngineConfig, MultipathDevice, PathSpec};
use scsi::cdb::build;
use testkit::fake_path::FakePath;

/// In-flight I/Os in the selector benchmark: a typical queue depth per map.
const QUEUE_DEPTH: usize = 32;
const IO: u64 = 4096;

fn selector_ns(kind: SelectorKind, n: usize, iters: u64) -> f64 {
    let loads: Vec<PathLoad> = (0..n).map(|i| PathLoad::new(1 + (i % 3) as u32)).collect();
    let sel = Selector::new(kind);
    let mut inflight: VecDeque<(usize, u64)> = VecDeque::with_capacity(QUEUE_DEPTH + 1);
    let mut now = 0u64;
    let start = Instant::now();
    for _ in 0..iters {
        now += 1_000;
        let i = sel.select(n, |i| &loads[i], IO, now).unwrap_or_default();
        loads[i].start_io(IO);
        inflight.push_back((i, now));
        if inflight.len() > QUEUE_DEPTH {
            if let Some((j, started)) = inflight.pop_front() {
                loads[j].end_io(IO);
                if kind.needs_time() {
                    loads[j].record_service_time(started, now, n);
                }
            }
        }
    }
    black_box(&inflight);
    start.elapsed().as_nanos() as f64 / iters as f64
}

fn device() -> DeviceInfo {
    DeviceInfo {
        size: 1 << 40,
        block_size: 512,
        physical_block_size: 512,
        max_transfer: 1 << 20,
        supports_discard: true,
        supports_write_zeroes: true,
        volatile_write_cache: true,
    }
}

/// Reads per second calling the path directly, as a single-path device would.
async fn direct(path: Arc<FakePath>, ops: u64) -> f64 {
    let start = Instant::now();
    for i in 0..ops {
        let lba = (i * 8) % (1 << 30);
        let req = ScsiRequest {
            cdb: Bytes::copy_from_slice(&build::read_16(lba, 8, false)),
            data: DataPhase::In { len: IO as u32 },
        };
        let data = path.submit(req).await.expect("null path");
        black_box(data);
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Reads per second through the engine.
async fn engine(dev: MultipathDevice, ops: u64) -> f64 {
    let start = Instant::now();
    for i in 0..ops {
        let op = BlockOp::Read {
            offset: ByteOffset(((i * 8) % (1 << 30)) * 512),
            len: IO as u32,
        };
        let data = dev.submit(op).await.expect("null path");
        black_box(data);
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

fn null_device(paths: usize, selector: SelectorKind, io_stats: bool) -> MultipathDevice {
    null_device_hedged(paths, selector, io_stats, true)
}

fn null_device_hedged(
    paths: usize,
    selector: SelectorKind,
    io_stats: bool,
    hedge: bool,
) -> MultipathDevice {
    let specs = (0..paths)
        .map(|i| {
            PathSpec::new(
                PathInfo::new(format!("null{i}")),
                Arc::new(FakePath::null(format!("null{i}"))) as Arc<dyn PathTransport>,
            )
        })
        .collect();
    let config = EngineConfig {
        policy: MapConfig {
            selector,
            ..MapConfig::default()
        },
        io_stats,
        hedge: hedge.then(Default::default),
        ..EngineConfig::new("bench", device())
    };
    MultipathDevice::start(config, specs).expect("start")
}

/// The machine is shared: other work only ever slows a run down, so the best of several
/// runs is the measurement (lowest time, highest rate).
fn lowest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

fn highest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(0.0, f64::max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only_engine = args.iter().any(|a| a == "--engine-only");
    let iters = if quick { 200_000 } else { 5_000_000 };
    if !only_engine {
        selectors(iters);
    }
    engine_overhead(quick);
    if !only_engine {
        primitives(iters);
    }
}

/// What the fast path's building blocks cost on this machine, to read the overhead by.
fn primitives(iters: u64) {
    let time = |f: &mut dyn FnMut()| {
        let runs = (0..7)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..iters / 5 {
                    f();
                }
                start.elapsed().as_nanos() as f64 / (iters / 5) as f64
            })
            .collect();
        lowest(runs)
    };
    let counter = std::sync::atomic::AtomicU64::new(0);
    let lock = std::sync::RwLock::new(vec![0usize; 8]);
    println!("\n### Primitives on this machine\n");
    println!("| operation | cost |");
    println!("|---|---:|");
    let clock = time(&mut || {
        black_box(Instant::now());
    });
    println!("| `Instant::now()` (monotonic clock) | {clock:.1} ns |");
    let tsc = quanta::Clock::new();
    let counter_clock = time(&mut || {
        black_box(tsc.raw());
    });
    println!("| time-stamp counter read (`quanta`, the engine's clock when the kernel's is `tsc`) | {counter_clock:.1} ns |");
    let add = time(&mut || {
        counter.fetch_add(black_box(1), std::sync::atomic::Ordering::Relaxed);
    });
    println!("| atomic `fetch_add` (uncontended) | {add:.1} ns |");
    let read = time(&mut || {
        let g = lock.read().unwrap_or_else(|e| e.into_inner());
        black_box(g[black_box(1)]);
    });
    println!("| `RwLock` read lock + unlock (uncontended) | {read:.1} ns |");
    let boxed = time(&mut || {
        black_box(Box::new(black_box(5u64)));
    });
    println!("| heap allocation + free (small) | {boxed:.1} ns |");
}

fn selectors(iters: u64) {
    let kinds = [
        SelectorKind::RoundRobin { repeat_count: 1 },
        SelectorKind::QueueLength,
        SelectorKind::ServiceTime,
        SelectorKind::HistoricalServiceTime(HstParams::default()),
    ];
    println!(
        "### Path selection cost per I/O (select + start_io + end_io, {QUEUE_DEPTH} in flight)\n"
    );
    println!("| selector | 2 paths | 8 paths | 64 paths |");
    println!("|---|---:|---:|---:|");
    for kind in kinds {
        let cells: Vec<String> = [2, 8, 64]
            .iter()
            .map(|&n| {
                let runs = (0..7).map(|_| selector_ns(kind, n, iters / 5)).collect();
                format!("{:.1} ns", lowest(runs))
            })
            .collect();
        println!("| {kind} | {} |", cells.join(" | "));
    }
}

fn engine_overhead(quick: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ops = if quick { 200_000 } else { 2_000_000 };
    rt.block_on(async {
        let path = Arc::new(FakePath::null("direct"));
        let dev1 = null_device(1, SelectorKind::ServiceTime, true);
        let dev2 = null_device(2, SelectorKind::ServiceTime, true);
        let dev8 = null_device(8, SelectorKind::ServiceTime, true);
        let dev2q = null_device(2, SelectorKind::ServiceTime, false);
        let dev2h = null_device_hedged(2, SelectorKind::ServiceTime, true, false);
        // Warm up, then alternate the variants so that drift hits them alike.
        direct(path.clone(), ops / 10).await;
        engine(dev1.clone(), ops / 10).await;
        let (mut d, mut e1, mut e2, mut e8, mut e2q, mut e2h) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..7 {
            d.push(direct(path.clone(), ops / 5).await);
            e1.push(engine(dev1.clone(), ops / 5).await);
            e2.push(engine(dev2.clone(), ops / 5).await);
            e8.push(engine(dev8.clone(), ops / 5).await);
            e2q.push(engine(dev2q.clone(), ops / 5).await);
            e2h.push(engine(dev2h.clone(), ops / 5).await);
        }
        let (d, e1, e2, e8, e2q, e2h) = (
            highest(d),
            highest(e1),
            highest(e2),
            highest(e8),
            highest(e2q),
            highest(e2h),
        );
        println!("\n### Engine overhead over a null path (4 KiB reads, one core)\n");
        println!("| variant | IOPS | ns/IO | vs direct |");
        println!("|---|---:|---:|---:|");
        let row = |name: &str, iops: f64| {
            println!(
                "| {name} | {:.2} M | {:.0} | {:.2}x |",
                iops / 1e6,
                1e9 / iops,
                iops / d
            );
        };
        row("path called directly", d);
        row("engine, 1 path", e1);
        row("engine, 2 paths (service-time)", e2);
        row("engine, 8 paths (service-time)", e8);
        row("engine, 2 paths, io_stats off", e2q);
        row("engine, 2 paths, hedged reads off", e2h);
        tokio::time::sleep(Duration::from_millis(1)).await;
    });
}
