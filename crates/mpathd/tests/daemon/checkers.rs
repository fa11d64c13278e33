//! Checkers: a LU taken offline is found failed by the checker (its connection stays up,
//! so the transport says nothing), and reinstated when it comes back.

use std::time::Duration;

use iscsi_target::config::AluaState::ActiveOptimized as AO;
use mpathd::config::CheckerKind;

use crate::common::*;

const IQN: &str = "iqn.2026-01.io.mpath:checkers";

async fn offline_then_online(kind: CheckerKind) {
    let dir = testkit::TempDir::new("chk");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 4 << 20)],
    )
    .await;
    let mut cfg = config(&dir, &t.portals[..1]);
    cfg.checker = kind;
    cfg.policy.flap = None;
    let (mut d, c) = start(cfg);
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;

    // Offline: TEST UNIT READY and reads both fail with NOT READY; no connection drops.
    t.ctl.set_lun_online(IQN, 1, false).unwrap();
    wait_for(
        Duration::from_secs(5),
        "both paths failed by the checker",
        || async {
            let ps = paths_of(&c, &map).await;
            ps.len() == 2
                && ps
                    .iter()
                    .all(|p| p["dm_state"] == "failed" && p["checker_state"] == "faulty")
        },
    )
    .await;
    for p in paths_of(&c, &map).await {
        assert_eq!(p["connection"], "running", "{p}");
    }

    // Online again: the checker reinstates both.
    t.ctl.set_lun_online(IQN, 1, true).unwrap();
    wait_for(Duration::from_secs(5), "both paths reinstated", || async {
        active_paths(&c, &map).await == 2
    })
    .await;
    for p in paths_of(&c, &map).await {
        assert_eq!(p["checker_state"], "ready", "{p}");
    }
    read_some(&device(&d, &map), 8).await;
    wait_for(
        Duration::from_secs(5),
        "reinstatements in the timeline",
        || async { events_of(&c, "path-reinstated").await >= 2 },
    )
    .await;
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tur_checker_fails_and_reinstates_an_offline_lun() {
    offline_then_online(CheckerKind::Tur).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readsector0_checker_fails_and_reinstates_an_offline_lun() {
    offline_then_online(CheckerKind::Readsector0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directio_checker_fails_and_reinstates_an_offline_lun() {
    offline_then_online(CheckerKind::Directio).await;
}

/// A target that answers BUSY for 5 s (longer than the 4.6 s that once failed paths) under
/// I/O: reads wait it out, no path fails, the checker keeps the paths up, and the busy
/// answers are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_target_fails_no_path_and_no_io() {
    let r = TwoPaths::start("busy", IQN, |cfg| {
        cfg.checker_interval_ok = Duration::from_millis(500)
    })
    .await;
    let dev = r.device();
    read_some(&dev, 4).await;

    r.t.ctl.set_lun_busy(IQN, 1, true).unwrap();
    let reads = reader(dev.clone(), 6);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.t.ctl.set_lun_busy(IQN, 1, false).unwrap();
    let reads = reads.await.expect("no read through the busy target failed");
    assert!(
        reads >= 1,
        "reads went on after the target stopped being busy"
    );

    assert_eq!(
        events_of(&r.c, "path-failed").await,
        0,
        "a busy target failed a path"
    );
    assert_eq!(active_paths(&r.c, &r.map).await, 2);
    let stats = ask(&r.c, mpathd::control::Request::ShowStats).await;
    let busy: u64 = stats.data["maps"][0]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["busy"].as_u64().unwrap_or(0))
        .sum();
    assert!(busy > 0, "busy answers counted: {}", stats.data);
    r.stop().await;
}
