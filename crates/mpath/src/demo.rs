//! `mpath demo`: the whole product on embedded defaults, in one process.
//!
//! An iSCSI target with two portals on loopback (free ports) serves a memory LUN with
//! ALUA; the daemon logs in through one portal, discovers the other, builds the map and
//! exports it over NBD; a verifying workload reads and writes through the export while
//! one portal is blackholed (silently: no reset, no error) and later restored. The run
//! ends with the topology, the event timeline and a summary; it fails (non-zero exit) if
//! the workload saw an error or a bad block, or if the map did not get both paths back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iscsi_target::Fault;
use mpathd::Request;
use serde_json::json;
use workload::nbd::NbdClient;
use workload::verify::{Config as WorkloadConfig, Workload};

use crate::stack::{ms_to_event, Stack, IQN};
use crate::DemoCmd;

/// When the phases of the run begin and end, in seconds from the workload's start.
struct Plan {
    blackhole_at: u64,
    restore_at: u64,
    end_at: u64,
}

impl Plan {
    fn new(d: &DemoCmd) -> Result<Plan> {
        let p = Plan {
            blackhole_at: d.blackhole_at,
            restore_at: d.restore_at,
            end_at: d.duration,
        };
        if !(0 < p.blackhole_at && p.blackhole_at < p.restore_at && p.restore_at < p.end_at) {
            bail!(
                "--blackhole-at {} < --restore-at {} < --duration {} must hold, each after the start",
                p.blackhole_at,
                p.restore_at,
                p.end_at
            );
        }
        Ok(p)
    }
}

pub async fn run(d: DemoCmd) -> Result<()> {
    let plan = Plan::new(&d)?;
    let size = d.size;
    // Quiet without --json: the demo's own lines go to stdout, the log only says warnings.
    let say = |s: String| {
        if !d.json {
            println!("{s}");
        }
    };

    // The array (two portal groups, one portal each, both active/optimized) and the host
    // side: the daemon, told about one portal (SendTargets finds the other), exporting
    // over NBD on a free loopback port.
    let stack = Stack::start(size, 2, |_| {}).await?;
    let (portals, tctl, control, map, nbd_addr, daemon_started) = (
        stack.portals.clone(),
        stack.target.clone(),
        stack.control.clone(),
        stack.map.clone(),
        stack.nbd,
        stack.daemon_started,
    );
    say(format!(
        "target {IQN}: portals {} and {}, LUN 1 = {} MiB in memory, ALUA",
        portals[0],
        portals[1],
        size >> 20
    ));
    say(format!(
        "daemon: map {map} with 2 paths in {} ms, exported at nbd://{nbd_addr}/{map}",
        daemon_started.elapsed().as_millis()
    ));

    // The workload, through the export as any NBD client would.
    let client = NbdClient::connect_tcp(nbd_addr, &map)
        .await
        .context("NBD client")?;
    let wcfg = WorkloadConfig {
        duration: Duration::from_secs(plan.end_at),
        depth: d.depth,
        ..WorkloadConfig::for_region(0, client.size())
    };
    let workload = Arc::new(Workload::new(client.clone(), wcfg)?);
    say(format!(
        "workload: verifying 4 KiB reads and writes, 50 % each, depth {}, {} s; portal {} \
         is blackholed at {} s and restored at {} s",
        d.depth, plan.end_at, portals[0], plan.blackhole_at, plan.restore_at
    ));
    let run = tokio::spawn({
        let w = workload.clone();
        async move { w.run().await }
    });

    // One status line a second; the fault at its time.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last_ops = 0;
    let mut blackholed_at = None;
    let mut restored_at = None;
    for second in 1..=plan.end_at {
        tick.tick().await;
        let p = workload.progress();
        let (active, total, queued) = stack.paths().await;
        let mut note = String::new();
        if second == plan.blackhole_at {
            blackholed_at = Some(Instant::now());
            tctl.set_fault(portals[0], Fault::Blackhole)
                .map_err(anyhow::Error::msg)?;
            note = format!("  <- portal {} blackholed", portals[0]);
        } else if second == plan.restore_at {
            restored_at = Some(Instant::now());
            tctl.set_fault(portals[0], Fault::None)
                .map_err(anyhow::Error::msg)?;
            note = format!("  <- portal {} restored", portals[0]);
        }
        say(format!(
            "[{second:>3}s] {:>7} IOPS  paths {active}/{total}  queued {queued}  errors {}{note}",
            p.ops - last_ops,
            p.errors
        ));
        last_ops = p.ops;
    }
    let report = run.await.context("workload task")?;

    // The restored path comes back on its own; give it the time a reconnect takes.
    let recovered = stack
        .wait_for_paths(2, Duration::from_secs(10))
        .await
        .is_ok();
    let check = workload.verify_all().await;
    let _ = client.disconnect().await;

    let topology = control.handle(Request::ShowTopology).await;
    let stats = control.handle(Request::ShowStats).await;
    let map_stats = stats
        .parse::<mpathd::reply::Stats>()
        .ok()
        .and_then(|s| s.maps.into_iter().find(|m| m.map == map))
        .unwrap_or_default();
    let (requeues, in_doubt, fenced) = (
        map_stats.requeues,
        map_stats.in_doubt_writes,
        map_stats.fenced_writes,
    );
    let events = control
        .handle(Request::ShowEvents {
            follow: false,
            last: None,
        })
        .await;
    let evs = events
        .parse::<mpathd::reply::Events>()
        .unwrap_or_default()
        .events;
    // Milliseconds from the blackhole to the path's failure, and from the restore to its
    // reinstatement, from the daemon's own timeline.
    let since = |at: Option<Instant>, kind| ms_to_event(&evs, daemon_started, at?, kind);
    let failed_after_ms = since(blackholed_at, mpathd::EventKind::PathFailed);
    let reinstated_after_ms = since(restored_at, mpathd::EventKind::PathReinstated);

    let before = report.iops_between(0, plan.blackhole_at as usize);
    let during = report.iops_between(plan.blackhole_at as usize, plan.restore_at as usize);
    let after = report.iops_between(plan.restore_at as usize, plan.end_at as usize);
    let ok = report.clean() && report.unfinished == 0 && check.clean() && recovered;
    let summary = json!({
        "ok": ok,
        "map": map,
        "target_portals": portals.iter().map(SocketAddr::to_string).collect::<Vec<_>>(),
        "nbd": format!("nbd://{nbd_addr}/{map}"),
        "iops": { "before": before.round(), "during": during.round(), "after": after.round() },
        "iops_per_second": report.iops,
        "longest_stall_ms": round1(report.longest_gap_ms()),
        "path_failed_after_ms": failed_after_ms.map(round1),
        "path_reinstated_after_ms": reinstated_after_ms.map(round1),
        "paths_recovered": recovered,
        "requeued_ios": requeues,
        "in_doubt_writes": in_doubt,
        "fenced_writes": fenced,
        "workload": {
            "ops": report.ops, "reads": report.reads, "writes": report.writes,
            "errors": report.errors, "unfinished": report.unfinished,
            "corrupt": report.corrupt, "stale": report.stale, "misplaced": report.misplaced,
            "latency_max_ms": round1(report.latency_max_ms),
            "messages": report.messages,
        },
        "verify": {
            "blocks": check.blocks, "verified": check.verified, "unwritten": check.unwritten,
            "corrupt": check.corrupt, "stale": check.stale, "misplaced": check.misplaced,
            "errors": check.errors, "messages": check.messages,
        },
        "events": evs,
    });

    if d.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("\n{}", topology.text.trim_end());
        println!("\nevents:");
        for line in events.text.lines() {
            println!("  {line}");
        }
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
        println!("\nsummary:");
        println!(
            "  IOPS              before {before:.0}, during the blackhole {during:.0}, after {after:.0}"
        );
        println!(
            "  longest stall     {:.0} ms (path failed {} after the blackhole, reinstated {} after the restore)",
            report.longest_gap_ms(),
            ms(failed_after_ms),
            ms(reinstated_after_ms)
        );
        println!(
            "  I/O errors        {} (unfinished {})",
            report.errors, report.unfinished
        );
        println!(
            "  re-issued         {requeues} I/Os issued again on the other path, {in_doubt} of them \
             writes whose first attempt was left on the failed path{}",
            if fenced > 0 {
                format!("; {fenced} later writes held until that path's old session was gone")
            } else {
                String::new()
            }
        );
        println!(
            "  blocks            {} verified, {} never written, {} corrupt, {} stale, {} misplaced, {} unreadable",
            check.verified, check.unwritten, check.corrupt + report.corrupt,
            check.stale + report.stale, check.misplaced + report.misplaced, check.errors
        );
        println!(
            "  paths             {}",
            if recovered {
                "both back in service"
            } else {
                "NOT both back in service"
            }
        );
        for m in report.messages.iter().chain(&check.messages) {
            println!("  ! {m}");
        }
        println!("  result            {}", if ok { "PASS" } else { "FAIL" });
    }

    stack.stop().await;
    if !ok {
        bail!("the demo failed: see the summary above");
    }
    Ok(())
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
