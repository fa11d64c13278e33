//! What SCSI outcomes do to paths, end to end: a target that answers BUSY or TASK SET FULL
//! through one portal, or whose ALUA group is in transition, fails no path and no I/O.

use std::time::{Duration, Instant};

use iscsi_target::config::AluaState::{ActiveOptimized as AO, Transitioning};
use iscsi_target::Fault;

use crate::common::*;

const IQN: &str = "iqn.2026-01.io.mpath:outcomes";

/// A storm of `fault` through the first of two portals for 20 s: no path fails, no read
/// fails, and the reads go on through the other path all along.
async fn storm_on_one_path_of_two(fault: Fault, tag: &str) {
    let r = TwoPaths::start(tag, IQN, |_| {}).await;
    let (t, c, map) = (&r.t, &r.c, &r.map);
    let dev = r.device();
    read_some(&dev, 8).await;

    t.ctl.set_fault(t.portals[0], fault).unwrap();
    let reads = reader(dev.clone(), 20);
    // Halfway, the other path is carrying the reads.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = path_ios(c, map).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = path_ios(c, map).await;
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
        events_of(c, "path-failed").await,
        0,
        "{fault} failed a path"
    );
    assert_eq!(active_paths(c, map).await, 2);
    r.stop().await;
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
    let r = TwoPaths::start("transition", IQN, |_| {}).await;
    let dev = r.device();
    read_some(&dev, 8).await;

    r.t.ctl.set_alua(IQN, 1, Transitioning).unwrap();
    r.t.ctl.set_alua(IQN, 2, Transitioning).unwrap();
    let reads = reader(dev.clone(), 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.t.ctl.set_alua(IQN, 1, AO).unwrap();
    r.t.ctl.set_alua(IQN, 2, AO).unwrap();
    assert!(reads.await.expect("no read failed") > 0);
    assert_eq!(
        events_of(&r.c, "path-failed").await,
        0,
        "a transition failed a path"
    );
    r.stop().await;
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
    cfg.portals[0].chap = Some(mpathd::config::ChapSecret {
        user: "alice".into(),
        secret: "not-the-secret".into(),
    });
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
    let r = TwoPaths::start("switchgroup", IQN, |_| {}).await;
    let resp =
        r.c.handle(mpathd::Request::SwitchGroup {
            map: r.map.clone(),
            group: 9,
        })
        .await;
    assert!(
        !resp.ok && resp.text.contains("no group 9 (it has 1"),
        "{}",
        resp.text
    );
    // An operator's fail and reinstate: said in words, not in Rust's debug text.
    let path = r.t.portals[0].to_string();
    ask(&r.c, mpathd::Request::FailPath { path: path.clone() }).await;
    let resp = ask(&r.c, mpathd::Request::ReinstatePath { path }).await;
    assert!(
        resp.text.ends_with("reinstated\n") && !resp.text.contains("Now"),
        "{}",
        resp.text
    );
    r.stop().await;
}
