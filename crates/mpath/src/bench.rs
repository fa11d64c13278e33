//! `mpath bench`: the figures of `BENCHMARKS.md` that need nothing but this binary, each
//! measured against its baseline in the same run, on the whole stack in one process
//! (`stack.rs`: target, daemon, NBD export on loopback).
//!
//! - `failover`: how long I/O stalls when a path is silently blackholed (P1) or reset (P2)
//!   under a verifying load, over many trials; `--plot` draws IOPS around one failure.
//! - `paths`: 4 KiB random reads at queue depth 32 through NBD, two paths against one (P3).
//! - `scale`: LUNs × portals paths (4096 by default): assembly time, idle CPU, memory,
//!   `show topology` latency (P7).
//! - `seqread`: 1 MiB sequential reads through the whole stack against plain loopback TCP
//!   moving the same bytes (P8).
//! - `engine`: the engine's cost on a real path — 4 KiB random reads on one iSCSI session
//!   to the in-process target, through a one-path map against the path called directly.
//! - `metrics`: the Prometheus scrape's size and encoding time at 32 × 2 and 1024 × 4
//!   paths, on synthetic counters with every series populated, against every engine bucket
//!   exposed and the layout before (40 log2 buckets, estimated sum), all from the same
//!   counters; and the cost of recording a latency against the log2 histogram it replaced.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iscsi_target::Fault;
use mpathd::Request;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use workload::nbd::NbdClient;
use workload::verify::{Config as WorkloadConfig, Workload};

use crate::stack::Stack;
use crate::{BenchCmd, BenchWhat};

/// The LUN every benchmark runs on.
const LUN_SIZE: u64 = 256 << 20;

pub async fn run(b: BenchCmd) -> Result<()> {
    let out = match &b.what {
        BenchWhat::Failover {
            trials,
            fault,
            depth,
            read_pct,
            no_hedge,
            plot,
        } => {
            failover(
                *trials,
                fault,
                *depth,
                *read_pct,
                !*no_hedge,
                plot.as_deref(),
            )
            .await?
        }
        BenchWhat::Starved {
            minutes,
            depth,
            burn,
            trials,
        } => starved(*minutes, *depth, *burn, *trials).await?,
        BenchWhat::Paths { seconds, depth } => paths(*seconds, *depth).await?,
        BenchWhat::Seqread { seconds, depth } => seqread(*seconds, *depth).await?,
        BenchWhat::Engine { seconds, depth } => engine(*seconds, *depth).await?,
        BenchWhat::Scale { luns, portals } => scale(*luns, *portals).await?,
        BenchWhat::Metrics { rounds } => metrics(*rounds)?,
    };
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs, {model}")
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// P1/P2: per trial, a verifying 50/50 read/write load at `depth` runs 2.5 s; 0.7 s in, one
/// path (alternating) is blackholed or reset; the trial's stall is the longest any request
/// waited. Between trials the fault is cleared and the path comes back. Flap damping is
/// off, so every trial starts with both paths in service. The same-run baseline is the
/// longest wait of trials with no fault.
async fn failover(
    trials: usize,
    fault: &str,
    depth: usize,
    read_pct: u8,
    hedge: bool,
    plot: Option<&str>,
) -> Result<Value> {
    let faults: Vec<&str> = match fault {
        "both" => vec!["blackhole", "reset"],
        "blackhole" | "reset" => vec![fault],
        other => bail!("--fault {other}: blackhole, reset or both"),
    };
    if trials == 0 {
        bail!("--trials: at least 1");
    }
    let stack = Stack::start(LUN_SIZE, 2, |c| {
        c.policy.flap = None;
        c.hedge_reads = hedge;
    })
    .await?;
    let client = NbdClient::connect_tcp(stack.nbd, &stack.map)
        .await
        .context("NBD client")?;
    let cfg = WorkloadConfig {
        duration: Duration::from_millis(2500),
        depth,
        read_percent: read_pct,
        drain_timeout: Duration::from_secs(90),
        ..WorkloadConfig::for_region(0, client.size())
    };
    let workload = Workload::new(client.clone(), cfg)?;
    println!("# mpath bench failover — {}", machine());
    println!(
        "# {trials} trials per fault, verifying 4 KiB load ({read_pct} % reads) at depth {depth} through NBD, 2 paths, hedged reads {}",
        if hedge { "on" } else { "off" }
    );

    // Same-run baseline: trials without a fault.
    let mut baseline = Vec::new();
    for _ in 0..3 {
        let r = workload.run().await;
        if !r.clean() {
            bail!("the load failed without any fault: {:?}", r.messages);
        }
        baseline.push(r.latency_max_ms);
    }
    baseline.sort_by(f64::total_cmp);
    let base_max = baseline.last().copied().unwrap_or(0.0);
    println!("no fault: longest wait {base_max:.1} ms (max of 3 runs)");

    let mut results = serde_json::Map::new();
    for f in faults {
        let (mut worst_reads, mut worst_writes) = (Vec::new(), Vec::new());
        let hedged_before = hedged_reads(&stack).await;
        let mut stalls = Vec::new();
        let mut detect = Vec::new();
        let mut errors = 0;
        let mut bad = 0;
        for t in 0..trials {
            let portal = stack.portals[t % 2];
            let (report, found) = fault_trial(&stack, &workload, portal, f)
                .await
                .with_context(|| format!("{f} trial {}", t + 1))?;
            errors += report.errors;
            bad += report.corrupt + report.stale + report.misplaced;
            for m in &report.messages {
                eprintln!("  {f} trial {:>2}: ! {m}", t + 1);
            }
            stalls.push(report.latency_max_ms);
            worst_reads.push(report.read_latency_max_ms);
            worst_writes.push(report.write_latency_max_ms);
            detect.extend(found);
            eprintln!(
                "  {f} trial {:>2}: stall {:>7.1} ms (worst read {:.1} ms, worst write {:.1} ms), errors {}",
                t + 1,
                report.latency_max_ms,
                report.read_latency_max_ms,
                report.write_latency_max_ms,
                report.errors
            );
        }
        worst_reads.sort_by(f64::total_cmp);
        worst_writes.sort_by(f64::total_cmp);
        let hedged = hedged_reads(&stack).await.saturating_sub(hedged_before);
        stalls.sort_by(f64::total_cmp);
        detect.sort_by(f64::total_cmp);
        let (p50, p99, max) = (
            quantile(&stalls, 0.5),
            quantile(&stalls, 0.99),
            *stalls.last().unwrap(),
        );
        println!(
            "{f}: stall p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms over {trials} trials; \
             path failed after p50 {:.1} ms; workload errors {errors}, bad blocks {bad}",
            quantile(&detect, 0.5)
        );
        println!(
            "{f}: worst read per trial p50 {:.1} ms, p99 {:.1} ms; worst write per trial p50 {:.1} ms, p99 {:.1} ms; {hedged} reads hedged",
            quantile(&worst_reads, 0.5),
            quantile(&worst_reads, 0.99),
            quantile(&worst_writes, 0.5),
            quantile(&worst_writes, 0.99),
        );
        results.insert(
            f.to_string(),
            json!({
                "trials": trials, "stall_ms": { "p50": p50, "p99": p99, "max": max, "all": stalls },
                "worst_read_ms": { "p50": quantile(&worst_reads, 0.5), "p99": quantile(&worst_reads, 0.99), "all": worst_reads },
                "worst_write_ms": { "p50": quantile(&worst_writes, 0.5), "p99": quantile(&worst_writes, 0.99), "all": worst_writes },
                "hedged_reads": hedged,
                "path_failed_after_ms": { "p50": quantile(&detect, 0.5), "p99": quantile(&detect, 0.99) },
                "workload_errors": errors, "bad_blocks": bad,
            }),
        );
    }
    let check = workload.verify_all().await;
    println!(
        "verify: {} blocks checked, {} corrupt, {} stale, {} misplaced, {} errors",
        check.verified, check.corrupt, check.stale, check.misplaced, check.errors
    );
    if let Some(path) = plot {
        plot_failover(&stack, &client, depth, path).await?;
        println!("plot: {path}");
    }
    let _ = client.disconnect().await;
    stack.stop().await;
    Ok(json!({
        "machine": machine(), "depth": depth, "read_percent": read_pct, "hedged_reads": hedge,
        "baseline_no_fault_max_ms": base_max,
        "faults": results, "verify_clean": check.clean(),
    }))
}

/// Threads that spin until dropped: a machine whose CPUs are all taken, as `stress-ng
/// --cpu N` would make it, without the package.
struct Burners {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burners {
    fn start(n: usize) -> Burners {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for i in 0..100_000u64 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(i),
                            );
                        }
                    }
                })
            })
            .collect();
        Burners { stop, threads }
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The map's hedged reads so far, and its I/Os.
async fn hedge_counts(stack: &Stack) -> (u64, u64) {
    let r = stack.control.handle(Request::ShowStats).await;
    r.parse::<mpathd::reply::Stats>()
        .ok()
        .and_then(|s| s.maps.into_iter().find(|m| m.map == stack.map))
        .map_or((0, 0), |m| (m.hedged_reads, m.ios))
}

async fn hedged_reads(stack: &Stack) -> u64 {
    hedge_counts(stack).await.0
}

/// How many `path-failed` events the timeline holds.
async fn path_failures(stack: &Stack) -> usize {
    let evs = stack
        .control
        .handle(Request::ShowEvents {
            follow: false,
            last: None,
        })
        .await;
    evs.parse::<mpathd::reply::Events>().map_or(0, |r| {
        r.events
            .iter()
            .filter(|e| e.kind == mpathd::EventKind::PathFailed)
            .count()
    })
}

/// R3: false failovers on a starved machine, and blackhole detection on it.
async fn starved(minutes: f64, depth: usize, burn: Option<usize>, trials: usize) -> Result<Value> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let burn = burn.unwrap_or(2 * cpus);
    if minutes.is_nan() || minutes <= 0.0 || trials == 0 {
        bail!("--minutes and --trials must be more than 0");
    }
    let stack = Stack::start(LUN_SIZE, 2, |c| c.policy.flap = None).await?;
    let client = NbdClient::connect_tcp(stack.nbd, &stack.map)
        .await
        .context("NBD client")?;
    println!("# mpath bench starved — {}", machine());
    println!(
        "# verifying 4 KiB 50/50 load at depth {depth} through NBD, 2 paths; {burn} busy threads"
    );
    // Two verifying loads, each on its own half: one's writes would be the other's bad
    // blocks.
    let half = client.size() / 2;
    let trial_cfg = WorkloadConfig {
        duration: Duration::from_millis(2500),
        depth,
        drain_timeout: Duration::from_secs(90),
        ..WorkloadConfig::for_region(0, half)
    };
    let trial_load = Workload::new(client.clone(), trial_cfg)?;
    // Blackhole trials: how long after the fault the path is failed.
    let detect = |label: &'static str| {
        let stack = &stack;
        let w = &trial_load;
        async move {
            let mut detect = Vec::new();
            let mut errors = 0;
            for t in 0..trials {
                let (report, found) = fault_trial(stack, w, stack.portals[t % 2], "blackhole")
                    .await
                    .with_context(|| format!("{label} trial {}", t + 1))?;
                errors += report.errors + report.corrupt + report.stale + report.misplaced;
                detect.extend(found);
            }
            detect.sort_by(f64::total_cmp);
            println!(
                "{label}: blackhole found after p50 {:.1} ms, p99 {:.1} ms ({} of {trials} trials), {errors} errors",
                quantile(&detect, 0.5),
                quantile(&detect, 0.99),
                detect.len()
            );
            Ok::<Value, anyhow::Error>(json!({
                "p50_ms": quantile(&detect, 0.5), "p99_ms": quantile(&detect, 0.99),
                "found": detect.len(), "trials": trials, "errors": errors,
            }))
        }
    };
    let baseline = detect("not starved").await?;

    let burners = Burners::start(burn);
    let long = Workload::new(
        client.clone(),
        WorkloadConfig {
            duration: Duration::from_secs_f64(minutes * 60.0),
            depth,
            drain_timeout: Duration::from_secs(90),
            seed: 7,
            ..WorkloadConfig::for_region(half, half)
        },
    )?;
    let before = path_failures(&stack).await;
    let report = long.run().await;
    let false_failovers = path_failures(&stack).await - before;
    let ops_per_s = report.ops as f64 / report.seconds.max(0.001);
    println!(
        "starved, no fault: {:.1} min, {} ops ({ops_per_s:.0}/s), {} errors, {} bad blocks, max latency {:.0} ms: {false_failovers} paths failed",
        report.seconds / 60.0,
        report.ops,
        report.errors,
        report.corrupt + report.stale + report.misplaced,
        report.latency_max_ms
    );
    let under = detect("starved").await?;
    drop(burners);
    let _ = client.disconnect().await;
    stack.stop().await;
    Ok(json!({
        "machine": machine(), "depth": depth, "burn_threads": burn,
        "no_fault": { "minutes": report.seconds / 60.0, "ops": report.ops, "errors": report.errors,
            "bad_blocks": report.corrupt + report.stale + report.misplaced,
            "max_latency_ms": report.latency_max_ms, "false_failovers": false_failovers },
        "blackhole_not_starved": baseline, "blackhole_starved": under,
    }))
}

/// One failover trial: `workload` runs; 0.7 s in, `portal` is blackholed or reset
/// (`fault`); then the fault is cleared and the path waited for. The run's report, and how
/// long after the fault the path was failed.
async fn fault_trial(
    stack: &Stack,
    workload: &Workload<NbdClient>,
    portal: std::net::SocketAddr,
    fault: &str,
) -> Result<(workload::verify::Report, Option<f64>)> {
    let inject = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let at = Instant::now();
        match fault {
            "blackhole" => stack.target.set_fault(portal, Fault::Blackhole),
            _ => stack.target.reset_portal(portal),
        }
        .map_err(anyhow::Error::msg)?;
        Ok::<Instant, anyhow::Error>(at)
    };
    let (report, at) = tokio::join!(workload.run(), inject);
    let at = at?;
    stack
        .target
        .set_fault(portal, Fault::None)
        .map_err(anyhow::Error::msg)?;
    let found = first_event_after(stack, at, mpathd::EventKind::PathFailed).await;
    stack
        .wait_for_paths(2, Duration::from_secs(30))
        .await
        .context("the path did not come back")?;
    Ok((report, found))
}

/// Milliseconds from `at` to the first timeline event of `kind` at or after it.
async fn first_event_after(stack: &Stack, at: Instant, kind: mpathd::EventKind) -> Option<f64> {
    let evs = stack
        .control
        .handle(Request::ShowEvents {
            follow: false,
            last: Some(200),
        })
        .await;
    crate::stack::ms_to_event(
        &evs.parse::<mpathd::reply::Events>().ok()?.events,
        stack.daemon_started,
        at,
        kind,
    )
}

/// IOPS in 50 ms buckets over 6 s: blackhole at 2 s, restore at 4 s; an SVG with the
/// events marked.
async fn plot_failover(stack: &Stack, client: &NbdClient, depth: usize, path: &str) -> Result<()> {
    const BUCKET_MS: u64 = 50;
    const TOTAL_MS: u64 = 6000;
    let cfg = WorkloadConfig {
        duration: Duration::from_millis(TOTAL_MS),
        depth,
        seed: 99,
        ..WorkloadConfig::for_region(0, client.size())
    };
    let w = Workload::new(client.clone(), cfg)?;
    let portal = stack.portals[0];
    let start = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sample = async {
        let mut tick = tokio::time::interval(Duration::from_millis(BUCKET_MS));
        let mut marks = Vec::new();
        let mut last = 0;
        for i in 0..=(TOTAL_MS / BUCKET_MS) {
            tick.tick().await;
            let t = i * BUCKET_MS;
            if t == 2000 {
                marks.push((start.elapsed().as_secs_f64(), "blackhole"));
                let _ = stack.target.set_fault(portal, Fault::Blackhole);
            }
            if t == 4000 {
                marks.push((start.elapsed().as_secs_f64(), "restore"));
                let _ = stack.target.set_fault(portal, Fault::None);
            }
            let ops = w.progress().ops;
            samples
                .lock()
                .unwrap()
                .push((start.elapsed().as_secs_f64(), ops.saturating_sub(last)));
            last = ops;
        }
        marks
    };
    let (_, mut marks) = tokio::join!(w.run(), sample);
    let daemon_offset = start.duration_since(stack.daemon_started).as_secs_f64();
    let evs = stack
        .control
        .handle(Request::ShowEvents {
            follow: false,
            last: Some(50),
        })
        .await;
    let mut event_marks = Vec::new();
    let evs = evs.parse::<mpathd::reply::Events>().unwrap_or_default();
    for e in evs.events {
        let t = e.t_ms as f64 / 1e3 - daemon_offset;
        let kind = e.kind;
        if (0.0..=TOTAL_MS as f64 / 1e3).contains(&t)
            && matches!(
                kind,
                mpathd::EventKind::PathFailed | mpathd::EventKind::PathReinstated
            )
        {
            event_marks.push((
                t,
                if kind == mpathd::EventKind::PathFailed {
                    "path failed"
                } else {
                    "path reinstated"
                },
            ));
        }
    }
    marks.extend(event_marks);
    let samples = samples.lock().unwrap().clone();
    let svg = render_svg(&samples, BUCKET_MS, &marks);
    std::fs::write(path, svg).with_context(|| format!("writing {path}"))?;
    stack.wait_for_paths(2, Duration::from_secs(30)).await?;
    Ok(())
}

fn render_svg(samples: &[(f64, u64)], bucket_ms: u64, marks: &[(f64, &str)]) -> String {
    let (w, h, left, bottom, top) = (800.0, 320.0, 70.0, 40.0, 30.0);
    let total = samples.last().map_or(1.0, |s| s.0).max(1.0);
    let per_s = 1000.0 / bucket_ms as f64;
    let ymax = samples
        .iter()
        .map(|s| s.1 as f64 * per_s)
        .fold(1.0, f64::max)
        * 1.15;
    let x = |t: f64| left + (w - left - 20.0) * t / total;
    let y = |v: f64| h - bottom - (h - bottom - top) * v / ymax;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18" font-size="14">mpath: IOPS through NBD around a silent blackhole of one of two paths ({bucket_ms} ms buckets)</text>"#
    );
    // Axes and grid.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - bottom,
        w - 20.0,
        h - bottom
    );
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        h - bottom
    );
    for i in 0..=4 {
        let v = ymax / 1.15 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4:.0}k</text>"##,
            y(v),
            w - 20.0,
            left - 6.0,
            y(v) + 4.0,
            v / 1000.0
        );
    }
    for t in 0..=(total as u64) {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t} s</text>"#,
            x(t as f64),
            h - bottom + 16.0
        );
    }
    let pts: Vec<String> = samples
        .iter()
        .map(|(t, n)| format!("{:.1},{:.1}", x(*t), y(*n as f64 * per_s)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
        pts.join(" ")
    );
    for (i, (t, label)) in marks.iter().enumerate() {
        let color = match *label {
            "blackhole" => "#d62728",
            "restore" => "#2ca02c",
            _ => "#7f7f7f",
        };
        let ly = top + 14.0 + 14.0 * (i % 4) as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1}" stroke="{color}" stroke-dasharray="4,3"/><text x="{2:.1}" y="{ly}" fill="{color}">{label} ({t:.2} s)</text>"#,
            x(*t),
            h - bottom,
            x(*t) + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Completed reads per second of a read-only load at `depth` through the stack's export.
async fn randread_iops(stack: &Stack, seconds: u64, depth: usize) -> Result<f64> {
    let client = NbdClient::connect_tcp(stack.nbd, &stack.map).await?;
    let cfg = WorkloadConfig {
        duration: Duration::from_secs(seconds),
        depth,
        read_percent: 100,
        ..WorkloadConfig::for_region(0, client.size())
    };
    let w = Workload::new(client.clone(), cfg)?;
    let r = w.run().await;
    let _ = client.disconnect().await;
    if r.errors > 0 {
        bail!("read errors: {:?}", r.messages);
    }
    Ok(r.ops as f64 / r.seconds)
}

/// P3: 4 KiB random reads at `depth` through NBD, a map with two paths against one with a
/// single path; five alternating rounds, the median of the per-round ratios.
async fn paths(seconds: u64, depth: usize) -> Result<Value> {
    println!("# mpath bench paths — {}", machine());
    println!("# 4 KiB random reads, depth {depth}, {seconds} s per round, through NBD");
    let mut one = Vec::new();
    let mut two = Vec::new();
    let mut two_unhedged = Vec::new();
    let mut hedged_pct = Vec::new();
    for round in 0..5 {
        for (n, hedge) in [(1usize, true), (2, true), (2, false)] {
            let stack = Stack::start(LUN_SIZE, n, |c| c.hedge_reads = hedge).await?;
            let iops = randread_iops(&stack, seconds, depth).await?;
            let (hedged, ios) = hedge_counts(&stack).await;
            stack.stop().await;
            let pct = 100.0 * hedged as f64 / ios.max(1) as f64;
            eprintln!(
                "  round {}: {n} path(s), hedging {}: {iops:.0} IOPS, {hedged} of {ios} reads hedged ({pct:.3} %)",
                round + 1,
                if hedge { "on" } else { "off" }
            );
            match (n, hedge) {
                (1, _) => one.push(iops),
                (_, true) => {
                    two.push(iops);
                    hedged_pct.push(pct);
                }
                _ => two_unhedged.push(iops),
            }
        }
    }
    let mut hedge_ratios: Vec<f64> = two_unhedged.iter().zip(&two).map(|(a, b)| b / a).collect();
    hedge_ratios.sort_by(f64::total_cmp);
    let hedge_ratio = quantile(&hedge_ratios, 0.5);
    hedged_pct.sort_by(f64::total_cmp);
    println!(
        "2 paths, hedging on / off = {hedge_ratio:.3} (median of the rounds' ratios {hedge_ratios:.3?}); \
         reads hedged without a fault: max {:.3} % of reads",
        hedged_pct.last().copied().unwrap_or(0.0)
    );
    // Each round's two runs share the machine's conditions of the moment: the figure is
    // the median of the per-round ratios.
    let mut ratios: Vec<f64> = one.iter().zip(&two).map(|(a, b)| b / a).collect();
    ratios.sort_by(f64::total_cmp);
    let r = quantile(&ratios, 0.5);
    let (mut a, mut b) = (one.clone(), two.clone());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    println!(
        "1 path {:.0} IOPS, 2 paths {:.0} IOPS (medians); 2 paths / 1 path = {r:.3} \
         (median of the rounds' ratios {ratios:.3?}; overhead {:.1} %)",
        quantile(&a, 0.5),
        quantile(&b, 0.5),
        (1.0 - r).max(0.0) * 100.0
    );
    Ok(json!({
        "machine": machine(), "depth": depth, "seconds": seconds,
        "one_path_iops": one, "two_paths_iops": two, "ratio": r,
        "two_paths_unhedged_iops": two_unhedged, "hedge_on_off_ratio": hedge_ratio,
        "hedged_percent": hedged_pct,
    }))
}

/// `depth` workers each issuing random reads with `read(lba)` one after another for
/// `duration`: LBAs are multiples of `per` within `blocks`. The reads completed and the
/// seconds they took (`mpath bench engine`, `mpath iscsi perf`).
pub(crate) async fn random_reads<F, Fut>(
    duration: Duration,
    depth: usize,
    blocks: u64,
    per: u64,
    read: F,
) -> Result<(u64, f64)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), block::IoError>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    let slots = blocks / per.max(1);
    if slots == 0 {
        bail!("the LU has {blocks} blocks, fewer than one read of {per}");
    }
    for w in 0..depth.max(1) as u64 {
        let (read, done, stop) = (read.clone(), done.clone(), stop.clone());
        workers.spawn(async move {
            let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                read((x % slots) * per).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), block::IoError>(())
        });
    }
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let n = done.load(Ordering::Relaxed);
    let took = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = workers.join_next().await {
        r.context("worker")?.context("read failed")?;
    }
    Ok((n, took))
}

/// Reads per second of [`random_reads`] for `seconds`.
async fn random_read_rate<F, Fut>(
    seconds: u64,
    depth: usize,
    blocks: u64,
    per: u64,
    read: F,
) -> Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), block::IoError>> + Send,
{
    let (n, took) = random_reads(
        Duration::from_secs(seconds.max(1)),
        depth,
        blocks,
        per,
        read,
    )
    .await?;
    Ok(n as f64 / took)
}

/// The engine over a real path: 4 KiB random reads at `depth` on one iSCSI session to the
/// in-process target (memory LUN, loopback) — the path called directly, as `mpath iscsi
/// perf` does, against a one-path map over the same session; five alternating rounds,
/// the median of the per-round ratios. The null-path figure (`cargo bench -p mpath-engine`)
/// is the engine's cost alone; this is what it costs an application.
async fn engine(seconds: u64, depth: usize) -> Result<Value> {
    use block::{BlockDevice, BlockOp, ByteOffset, DataPhase, PathTransport, ScsiRequest};
    use iscsi_initiator::{probe, IscsiPath, RetryPolicy, Session, SessionConfig};
    use mpath_engine::mpath_policy::PathInfo;
    use mpath_engine::{EngineConfig, MultipathDevice, PathSpec};

    println!("# mpath bench engine — {}", machine());
    println!("# 4 KiB random reads, depth {depth}, {seconds} s per round, one iSCSI session");
    let target = iscsi_target::Server::bind(crate::stack::target_config(LUN_SIZE, 1, 1)?)
        .await
        .context("in-process target")?;
    let portal = target.portals()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let target_task = tokio::spawn(target.run(async {
        let _ = stopped.await;
    }));
    let session = Session::open(SessionConfig::new(portal, crate::stack::IQN)).await?;
    let path = IscsiPath::new(session.clone(), 1, RetryPolicy::default());
    let lu = probe::probe_lu(&path).await.context("probing the LU")?;
    let blocks = lu.blocks;
    let bs = u64::from(lu.block_size);
    if bs == 0 || 4096 % bs != 0 {
        bail!("block size {bs}: 4 KiB reads need a block size dividing 4096");
    }
    let per = 4096 / bs;
    let device = block::DeviceInfo {
        size: lu.blocks * u64::from(lu.block_size),
        block_size: lu.block_size,
        physical_block_size: lu.block_size,
        max_transfer: 1 << 20,
        supports_discard: lu.thin,
        supports_write_zeroes: true,
        volatile_write_cache: lu.write_cache,
    };
    let map = MultipathDevice::start(
        EngineConfig::new("bench", device),
        vec![PathSpec::new(
            PathInfo::new("p0"),
            Arc::new(path.clone()) as Arc<dyn PathTransport>,
        )],
    )?;
    let mut direct = Vec::new();
    let mut through = Vec::new();
    for round in 0..5 {
        let p = path.clone();
        let direct_run = random_read_rate(seconds, depth, blocks, per, move |lba| {
            let p = p.clone();
            async move {
                let req = ScsiRequest {
                    cdb: bytes::Bytes::copy_from_slice(
                        scsi::cdb::build::read_16(lba, per as u32, false).as_bytes(),
                    ),
                    data: DataPhase::In { len: 4096 },
                };
                p.submit(req).await.map(|_| ())
            }
        });
        let m = map.clone();
        let engine_run = random_read_rate(seconds, depth, blocks, per, move |lba| {
            let m = m.clone();
            async move {
                m.submit(BlockOp::Read {
                    offset: ByteOffset(lba * bs),
                    len: 4096,
                })
                .await
                .map(|_| ())
            }
        });
        // Which goes first alternates: neither gets the warmer machine every round.
        let (d, e) = if round % 2 == 0 {
            let d = direct_run.await?;
            (d, engine_run.await?)
        } else {
            let e = engine_run.await?;
            (direct_run.await?, e)
        };
        eprintln!(
            "  round {}: path directly {d:.0} IOPS, through the engine {e:.0} IOPS ({:.3})",
            round + 1,
            e / d
        );
        direct.push(d);
        through.push(e);
    }
    map.shutdown();
    session.logout().await;
    let _ = stop.send(());
    let _ = target_task.await;
    let mut ratios: Vec<f64> = direct.iter().zip(&through).map(|(d, e)| e / d).collect();
    ratios.sort_by(f64::total_cmp);
    let r = quantile(&ratios, 0.5);
    let (mut a, mut b) = (direct.clone(), through.clone());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    println!(
        "path directly {:.0} IOPS, through the engine {:.0} IOPS (medians); engine / direct = \
         {r:.3} (median of the rounds' ratios {ratios:.3?})",
        quantile(&a, 0.5),
        quantile(&b, 0.5),
    );
    Ok(json!({
        "machine": machine(), "depth": depth, "seconds": seconds,
        "direct_iops": direct, "engine_iops": through, "ratio": r,
    }))
}

/// Bytes per second of 1 MiB sequential reads through the stack's export, `depth` at once.
async fn seq_read_rate(stack: &Stack, seconds: u64, depth: usize) -> Result<f64> {
    let client = NbdClient::connect_tcp(stack.nbd, &stack.map).await?;
    let chunk = (1u32 << 20).min(client.info().max_block.max(4096));
    let size = client.size();
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..depth {
        let (client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            let mut bytes = 0u64;
            while Instant::now() < deadline {
                let off = next.fetch_add(u64::from(chunk), Ordering::Relaxed) % size;
                let len = u64::from(chunk).min(size - off) as u32;
                let b = client.read(off, len).await?;
                bytes += b.len() as u64;
            }
            Ok::<u64, workload::nbd::NbdError>(bytes)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let _ = client.disconnect().await;
    Ok(rate)
}

/// Bytes per second over one loopback TCP connection, 1 MiB writes into a reader that
/// discards: the ceiling any TCP-based stack on this machine works under.
async fn tcp_ceiling(seconds: u64) -> Result<f64> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = l.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok::<u64, std::io::Error>(total);
            }
            total += n as u64;
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await?;
    drop(s);
    let total = reader.await??;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// P8: 1 MiB sequential reads through target, initiator, engine and NBD, against one
/// loopback TCP stream; alternating rounds, the median of the per-round ratios.
async fn seqread(seconds: u64, depth: usize) -> Result<Value> {
    println!("# mpath bench seqread — {}", machine());
    println!(
        "# 1 MiB sequential reads, depth {depth}, {seconds} s per round, 2 paths, through NBD"
    );
    let stack = Stack::start(LUN_SIZE, 2, |_| {}).await?;
    let mut stackr = Vec::new();
    let mut tcp = Vec::new();
    for round in 0..5 {
        let t = tcp_ceiling(seconds).await?;
        let m = seq_read_rate(&stack, seconds, depth).await?;
        eprintln!(
            "  round {}: loopback TCP {:.0} MiB/s, mpath {:.0} MiB/s",
            round + 1,
            t / 1048576.0,
            m / 1048576.0
        );
        tcp.push(t);
        stackr.push(m);
    }
    stack.stop().await;
    let mut ratios: Vec<f64> = stackr.iter().zip(&tcp).map(|(m, t)| m / t).collect();
    ratios.sort_by(f64::total_cmp);
    let r = quantile(&ratios, 0.5);
    println!("ratio mpath / loopback TCP = {r:.3} (median of the rounds' ratios {ratios:.3?})");
    Ok(json!({
        "machine": machine(), "depth": depth, "seconds": seconds,
        "tcp_bytes_per_s": tcp, "mpath_bytes_per_s": stackr, "ratio": r,
    }))
}

/// Resident memory of this process, in bytes (`VmRSS`).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// P7: a target with `luns` small LUNs behind `portals` portals (the target runs in this
/// process too: its share is measured before the daemon starts and taken out), the daemon
/// assembling every map; then 10 s idle, and `show topology` timed.
async fn scale(luns: u16, portals: usize) -> Result<Value> {
    println!("# mpath bench scale — {}", machine());
    println!(
        "# {luns} LUNs x {portals} portals = {} paths, in-process target",
        luns as usize * portals
    );
    let before = rss();
    let started = Instant::now();
    let stack = Stack::start_luns(1 << 20, portals, luns, |_| {}, Duration::from_secs(300)).await?;
    let assembly = started.elapsed();
    let after = rss();
    // Idle: checkers and keepalives only.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let mut topo = Vec::new();
    let mut lines = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = stack.control.handle(Request::ShowTopology).await;
        topo.push(t.elapsed().as_secs_f64() * 1e3);
        lines = r.text.lines().count();
    }
    topo.sort_by(f64::total_cmp);
    let rss_total = rss();
    stack.stop().await;
    println!(
        "assembly {:.1} s; idle CPU {:.1} % of a core (target and host side together); \
         RSS {} MiB in all, {} MiB added by the host side; show topology {:.1} ms median \
         ({lines} lines)",
        assembly.as_secs_f64(),
        idle_cpu * 100.0,
        rss_total >> 20,
        after.saturating_sub(before) >> 20,
        topo[2]
    );
    Ok(json!({
        "machine": machine(), "luns": luns, "portals": portals,
        "paths": luns as usize * portals, "assembly_s": assembly.as_secs_f64(),
        "idle_cpu_core_fraction": idle_cpu, "rss_bytes": rss_total,
        "rss_host_side_bytes": after.saturating_sub(before), "show_topology_ms": topo,
    }))
}

/// CPU time the calling thread has used: the work of a step, without the waits for a
/// CPU that other processes on a shared machine add to its wall time.
fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime fills the struct it is given; the clock id is valid on Linux.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The median and the range of some timings (ms), sorted in place.
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (quantile(v, 0.5), v[0], v[v.len() - 1])
}

/// The exposition as it was before the storage-sized histograms: one family after the
/// other, per path and per map a histogram of 40 log2 buckets from 2 ns with a sum
/// estimated from the buckets' midpoints, written by hand with `format!`. Kept here, on
/// the same synthetic counters, as the baseline of `mpath bench metrics`.
fn metrics_before(s: &mpathd::metrics::Scrape) -> String {
    const BUCKETS: usize = 40;
    // The old histograms' counts, spread over 40 buckets from the new ones' total.
    let log2 = |h: &mpath_engine::Histogram| -> [u64; BUCKETS] {
        let n = h.count();
        std::array::from_fn(|i| n / (i as u64 + 2))
    };
    let hist = |o: &mut String, name: &str, labels: &str, b: &[u64; BUCKETS]| {
        let (mut cum, mut sum) = (0u64, 0f64);
        for (i, n) in b.iter().enumerate() {
            cum += n;
            sum += *n as f64 * 1.5 * (1u64 << i) as f64 / 1e9;
            let le = if i + 1 < BUCKETS {
                format!("{:.9}", (1u64 << (i + 1)) as f64 / 1e9)
            } else {
                "+Inf".into()
            };
            let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(o, "{name}_sum{{{labels}}} {sum:.9}");
        let _ = writeln!(o, "{name}_count{{{labels}}} {cum}");
    };
    type PathF = fn(&mpathd::metrics::PathMetrics) -> u64;
    type MapF = fn(&mpathd::metrics::MapMetrics) -> String;
    let path_fams: [(&str, &str, PathF); 9] = [
        ("mpath_path_up", "gauge", |p| p.up.into()),
        ("mpath_path_failed", "gauge", |p| p.failed.into()),
        ("mpath_path_priority", "gauge", |p| p.priority.into()),
        ("mpath_path_ios_total", "counter", |p| p.stats.ios),
        ("mpath_path_bytes_total", "counter", |p| p.stats.bytes),
        ("mpath_path_errors_total", "counter", |p| p.stats.errors),
        ("mpath_path_requeues_total", "counter", |p| p.stats.requeues),
        ("mpath_path_busy_total", "counter", |p| p.stats.busy),
        ("mpath_path_failures_total", "counter", |p| p.failures),
    ];
    let map_fams: [(&str, &str, MapF); 9] = [
        ("mpath_map_paths", "gauge", |m| m.paths.len().to_string()),
        ("mpath_map_active_paths", "gauge", |m| {
            m.paths.iter().filter(|p| !p.failed).count().to_string()
        }),
        ("mpath_map_ios_total", "counter", |m| {
            m.stats.ios.to_string()
        }),
        ("mpath_map_bytes_total", "counter", |m| {
            m.stats.bytes.to_string()
        }),
        ("mpath_map_errors_total", "counter", |m| {
            m.stats.errors.to_string()
        }),
        ("mpath_map_queued", "gauge", |m| m.queued.to_string()),
        ("mpath_map_failovers_total", "counter", |m| {
            m.failovers.to_string()
        }),
        ("mpath_map_group_switches_total", "counter", |m| {
            m.group_switches.to_string()
        }),
        ("mpath_map_no_path_seconds_total", "counter", |m| {
            format!("{:.3}", m.no_path_seconds)
        }),
    ];
    let mut o = String::new();
    for (name, ty, f) in path_fams {
        let _ = writeln!(o, "# HELP {name} help\n# TYPE {name} {ty}");
        for m in &s.maps {
            for p in &m.paths {
                let _ = writeln!(
                    o,
                    "{name}{{map=\"{}\",path=\"{}\"}} {}",
                    m.name,
                    p.name,
                    f(p)
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "# HELP mpath_path_latency_seconds help\n# TYPE mpath_path_latency_seconds histogram"
    );
    for m in &s.maps {
        for p in &m.paths {
            let l = format!("map=\"{}\",path=\"{}\"", m.name, p.name);
            hist(
                &mut o,
                "mpath_path_latency_seconds",
                &l,
                &log2(&p.stats.latency),
            );
        }
    }
    for (name, ty, f) in map_fams {
        let _ = writeln!(o, "# HELP {name} help\n# TYPE {name} {ty}");
        for m in &s.maps {
            let _ = writeln!(o, "{name}{{map=\"{}\"}} {}", m.name, f(m));
        }
    }
    let _ = writeln!(
        o,
        "# HELP mpath_map_latency_seconds help\n# TYPE mpath_map_latency_seconds histogram"
    );
    for m in &s.maps {
        let l = format!("map=\"{}\"", m.name);
        hist(
            &mut o,
            "mpath_map_latency_seconds",
            &l,
            &log2(&m.stats.latency),
        );
    }
    o
}

/// The log2 histogram the storage-sized one replaced: one `fetch_add`, bucket by
/// `leading_zeros` (the baseline of the recording cost).
struct Log2Histogram([AtomicU64; 40]);

impl Log2Histogram {
    #[inline]
    fn record_ns(&self, ns: u64) {
        let bucket = (63 - (ns | 1).leading_zeros() as usize).min(39);
        self.0[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// `mpath bench metrics`: the scrape at 32 × 2 and 1024 × 4 paths, every series populated
/// (synthetic counters: no target, no daemon), encoded `rounds` times each, now and in
/// the layout before; then the recording cost per I/O completion.
fn metrics(rounds: usize) -> Result<Value> {
    let rounds = rounds.max(1);
    println!("# mpath bench metrics — {}", machine());
    println!(
        "# synthetic counters, every series non-zero; {rounds} encodings per size; \
         times in ms, wall and the thread's CPU: median [min–max]"
    );
    let mut out = Vec::new();
    for (maps, paths) in [(32usize, 2usize), (1024, 4)] {
        let scrape = Arc::new(mpathd::metrics::Scrape::synthetic(maps, paths));
        // Three layouts of the same counters, `rounds` times each as text and gzipped: now (a
        // handful of buckets), every engine bucket (17 bounds), and before (it served only
        // text; its gzip is the text compressed after).
        type Text = Box<dyn Fn(&Arc<mpathd::metrics::Scrape>) -> String>;
        type Gz = Box<dyn Fn(&Arc<mpathd::metrics::Scrape>) -> Vec<u8>>;
        let all = &mpath_engine::LATENCY_BOUNDS_NS;
        let layouts: [(&str, Text, Gz); 3] = [
            (
                "now",
                Box::new(|s| mpathd::metrics::encode(s.clone())),
                Box::new(|s| mpathd::metrics::encode_gzip(s.clone())),
            ),
            (
                "all_engine_buckets",
                Box::new(|s| mpathd::metrics::encode_with_bounds(s.clone(), all)),
                Box::new(|s| mpathd::metrics::encode_gzip_with_bounds(s.clone(), all)),
            ),
            (
                "before",
                Box::new(|s| metrics_before(s)),
                Box::new(|s| mpathd::metrics::gzip(&metrics_before(s))),
            ),
        ];
        let mut row = serde_json::Map::new();
        for (name, text_of, gz_of) in &layouts {
            let (mut t_text, mut t_gz, mut c_text, mut c_gz) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut text, mut gz) = (String::new(), Vec::new());
            for _ in 0..rounds {
                let (t, c) = (Instant::now(), thread_cpu_time());
                text = text_of(&scrape);
                t_text.push(t.elapsed().as_secs_f64() * 1e3);
                c_text.push((thread_cpu_time() - c).as_secs_f64() * 1e3);
                let (t, c) = (Instant::now(), thread_cpu_time());
                gz = gz_of(&scrape);
                t_gz.push(t.elapsed().as_secs_f64() * 1e3);
                c_gz.push((thread_cpu_time() - c).as_secs_f64() * 1e3);
            }
            let (e, e_lo, e_hi) = spread(&mut t_text);
            let (g, g_lo, g_hi) = spread(&mut t_gz);
            let (ce, ce_lo, ce_hi) = spread(&mut c_text);
            let (cg, cg_lo, cg_hi) = spread(&mut c_gz);
            println!(
                "{maps} maps x {paths} paths, {name}: text {} bytes, {} lines, {e:.2} ms [{e_lo:.2}–{e_hi:.2}] \
                 (CPU {ce:.2} [{ce_lo:.2}–{ce_hi:.2}]); gzip {} bytes, {g:.2} ms [{g_lo:.2}–{g_hi:.2}] \
                 (CPU {cg:.2} [{cg_lo:.2}–{cg_hi:.2}])",
                text.len(),
                text.lines().count(),
                gz.len(),
            );
            row.insert(
                name.to_string(),
                json!({ "bytes": text.len(), "lines": text.lines().count(), "gzip_bytes": gz.len(),
                        "text_ms": { "median": e, "min": e_lo, "max": e_hi },
                        "text_cpu_ms": { "median": ce, "min": ce_lo, "max": ce_hi },
                        "gzip_ms": { "median": g, "min": g_lo, "max": g_hi },
                        "gzip_cpu_ms": { "median": cg, "min": cg_lo, "max": cg_hi } }),
            );
        }
        row.insert("maps".into(), json!(maps));
        row.insert("paths_per_map".into(), json!(paths));
        out.push(Value::Object(row));
    }
    // Recording: one thread, latencies spread over 1 µs..17 s, 10^7 per round.
    let samples: Vec<u64> = (0..4096u64)
        .map(|i| (1_000u64 << (i % 25)) | ((i * 7919) % 1_000))
        .collect();
    const N: usize = 10_000_000;
    let now = mpath_engine::LatencyHistogram::default();
    let before = Log2Histogram(std::array::from_fn(|_| AtomicU64::new(0)));
    let (mut r_now, mut r_before) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..N {
            now.record_ns(std::hint::black_box(samples[i & 4095]));
        }
        r_now.push(t.elapsed().as_secs_f64() * 1e9 / N as f64);
        let t = Instant::now();
        for i in 0..N {
            before.record_ns(std::hint::black_box(samples[i & 4095]));
        }
        r_before.push(t.elapsed().as_secs_f64() * 1e9 / N as f64);
    }
    let (rn, rn_lo, rn_hi) = spread(&mut r_now);
    let (rb, rb_lo, rb_hi) = spread(&mut r_before);
    println!(
        "record one latency: now {rn:.2} ns [{rn_lo:.2}–{rn_hi:.2}] (table look-up, 2 fetch_add), \
         before {rb:.2} ns [{rb_lo:.2}–{rb_hi:.2}] (1 fetch_add), 5 rounds of 10^7"
    );
    Ok(json!({
        "machine": machine(), "rounds": rounds, "scrapes": out,
        "record_ns": { "now": { "median": rn, "min": rn_lo, "max": rn_hi },
                       "before": { "median": rb, "min": rb_lo, "max": rb_hi } },
    }))
}
