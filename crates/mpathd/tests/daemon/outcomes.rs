//! What SCSI outcomes do to paths, end to end: a target that answers BUSY or TASK SET FULL
//! through one portal, or whose ALUA group is in transition, fails no path and no I/O.

use std::time::{Duration, Instant};

use iscsi_target::config::AluaState::{ActiveOptimized as AO, Transitioning};
use iscsi_target::Fault;

use crate::common::*;

const IQN: &str = "iqn.2026-01.io.mpath:outcomes";

/// Reads through the map for `secs` seconds; every one must succeed. Returns how many.
fn reader(
    dev: std::sync::Arc<mpath_engine::MultipathDevice>,
    secs: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        use workload::BlockClient;
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(secs) {
            dev.read((n % 64) * 4096, 4096)
                .await
                .unwrap_or_else(|e| panic!("read {n} failed: {e}"));
            n += 1;
        }
        n
    })
}

/// A storm of `fault` through the first of two portals for 20 s: no path fails, no read
/// fails, and the reads go on through the other path all along.
async fn storm_on_one_path_of_two(fault: Fault, tag: &str) {
    let dir = testkit::TempDir::new(tag);
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 4 << 20)],
    )
    .await;
    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let dev = device(&d, &map);
    read_some(&dev, 8).await;

    t.ctl.set_fault(t.portals[0], fault).unwrap();
    let reads = reader(dev.clone(), 20);
    // Halfway, the other path is carrying the reads.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = path_ios(&c, &map).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = path_ios(&c, &map).await;
    let moved: u64 = after
        .iter()
        .zip(&before)
        .map(|((_, a), (_, b))| a - b)
        .sum();
    assert!(
        moved > 0,
        "reads went on during the storm: {before:?} -> {after:?}"
    );
    let n = reads.await.expect("no read failed");
    t.ctl.set_fault(t.portals[0], Fault::None).unwrap();
    assert!(n > 0);
    assert_eq!(
        events_of(&c, "path-failed").await,
        0,
        "{fault} failed a path"
    );
    assert_eq!(active_paths(&c, &map).await, 2);
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_storm_on_one_path_fails_nothing() {
    storm_on_one_path_of_two(Fault::Busy, "busy-storm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_set_full_storm_on_one_path_fails_nothing() {
    storm_on_one_path_of_two(Fault::TaskSetFull, "tsf-storm").await;
}

/// Both ports of the LU in ALUA transition for 3 s (within `alua_transition_timeout`):
/// reads wait and complete, no path fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alua_transition_within_its_timeout_fails_nothing() {
    let dir = testkit::TempDir::new("transition");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 4 << 20)],
    )
    .await;
    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let dev = device(&d, &map);
    read_some(&dev, 8).await;

    t.ctl.set_alua(IQN, 1, Transitioning).unwrap();
    t.ctl.set_alua(IQN, 2, Transitioning).unwrap();
    let reads = reader(dev.clone(), 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.ctl.set_alua(IQN, 1, AO).unwrap();
    t.ctl.set_alua(IQN, 2, AO).unwrap();
    assert!(reads.await.expect("no read failed") > 0);
    assert_eq!(
        events_of(&c, "path-failed").await,
        0,
        "a transition failed a path"
    );
    d.stop().await;
    t.stop().await;
}

/// A wrong CHAP secret: the timeline says so within one login attempt, with the target's
/// reason, and `show status` names the session and why it is down — before any path exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_chap_secret_is_an_event_with_its_reason() {
    let dir = testkit::TempDir::new("chap");
    let backing = iscsi_target::backend::BackingSpec::parse("mem:4194304").unwrap();
    let t = Target::start_tuned(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO)],
        &[(1, backing)],
        |spec| {
            spec.chap = Some(iscsi_target::config::Chap::parse("alice:alice-secret-1").unwrap());
        },
    )
    .await;
    let mut cfg = config(&dir, &t.portals);
    cfg.portals[0].chap = Some(("alice".into(), "not-the-secret".into()));
    let started = Instant::now();
    let (mut d, c) = start(cfg);
    wait_for(
        Duration::from_secs(5),
        "a session event with the login's reason",
        || async {
            let r = c
                .handle(mpathd::Request::ShowEvents {
                    follow: false,
                    last: None,
                })
                .await;
            r.data["events"].as_array().is_some_and(|evs| {
                evs.iter().any(|e| {
                    e["kind"] == "session-recovering"
                        && e["detail"].as_str().is_some_and(|d| d.contains("0x0201"))
                })
            })
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let status = ask(&c, mpathd::Request::ShowStatus).await;
    assert!(
        status.text.contains("down: retrying") && status.text.contains("0x0201"),
        "{}",
        status.text
    );
    d.stop().await;
    t.stop().await;
}

/// `switchgroup` counts groups as `show topology` does, in its errors too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchgroup_names_groups_as_show_topology_does() {
    let dir = testkit::TempDir::new("switchgroup");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 4 << 20)],
    )
    .await;
    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let r = c
        .handle(mpathd::Request::SwitchGroup {
            map: map.clone(),
            group: 9,
        })
        .await;
    assert!(
        !r.ok && r.text.contains("no group 9 (it has 1"),
        "{}",
        r.text
    );
    // An operator's fail and reinstate: said in words, not in Rust's debug text.
    let path = t.portals[0].to_string();
    ask(&c, mpathd::Request::FailPath { path: path.clone() }).await;
    let r = ask(&c, mpathd::Request::ReinstatePath { path }).await;
    assert!(
        r.text.ends_with("reinstated\n") && !r.text.contains("Now"),
        "{}",
        r.text
    );
    d.stop().await;
    t.stop().await;
}
