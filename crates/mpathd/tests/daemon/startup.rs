//! Start-up never waits on an unreachable portal; a portal that comes up later joins.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iscsi_target::config::AluaState::ActiveOptimized as AO;
use mpathd::Request;

use crate::common::*;

/// A loopback address nobody listens on (yet).
fn unused(ip: [u8; 4]) -> SocketAddr {
    let l = std::net::TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_portal_does_not_block_and_joins_when_it_comes_up() {
    const IQN: &str = "iqn.2026-01.io.mpath:late";
    let dir = testkit::TempDir::new("late");
    // The LU is served through two target servers of one IQN (same WWID): one up now,
    // one that comes up later on a port nobody listens on yet.
    let early = Target::start(IQN, vec![group([127, 0, 0, 2], 0, AO)], &[(1, 4 << 20)]).await;
    let late_addr = unused([127, 0, 0, 4]);
    let cfg = config(&dir, &[late_addr, early.portals[0]]);
    let t0 = Instant::now();
    let (mut d, c) = start(cfg);
    // `start` returned at once; the reachable portal's map is built while the other
    // portal is still refused.
    let map = wait_map_by_wwid(&c, &early.wwid(1), 1, Duration::from_secs(10)).await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    let st = ask(&c, Request::ShowStatus).await;
    assert!(
        st.text.contains(&format!("portal {late_addr} unreachable")),
        "{}",
        st.text
    );
    assert_eq!(
        st.data["unreachable_portals"][0]["portal"],
        late_addr.to_string()
    );
    read_some(&device(&d, &map), 4).await;

    // The portal comes up: its path joins the same map, without a restart.
    let late = Target::start(
        IQN,
        vec![group([127, 0, 0, 4], late_addr.port(), AO)],
        &[(1, 4 << 20)],
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the late portal's path to join",
        || async { active_paths(&c, &map).await == 2 },
    )
    .await;
    let st = ask(&c, Request::ShowStatus).await;
    assert_eq!(st.data["unreachable_portals"].as_array().unwrap().len(), 0);
    let names: Vec<String> = paths_of(&c, &map)
        .await
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with(&late_addr.to_string())),
        "{names:?}"
    );
    d.stop().await;
    early.stop().await;
    late.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_back_with_a_new_lun_gets_its_map_without_reconfigure() {
    const IQN: &str = "iqn.2026-01.io.mpath:grow";
    let dir = testkit::TempDir::new("grow");
    let t = Target::start(IQN, vec![group([127, 0, 0, 9], 0, AO)], &[(1, 1 << 20)]).await;
    let p = t.portals[0];
    let (mut d, c) = start(config(&dir, &[p]));
    let m1 = wait_map_by_wwid(&c, &t.wwid(1), 1, Duration::from_secs(10)).await;
    t.stop().await;
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 9], p.port(), AO)],
        &[(1, 1 << 20), (2, 1 << 20)],
    )
    .await;
    wait_map_by_wwid(&c, &t.wwid(2), 1, Duration::from_secs(10)).await;
    wait_for(Duration::from_secs(5), "LUN 1's path back", || async {
        active_paths(&c, &m1).await == 1
    })
    .await;
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_portal_does_not_hold_up_the_others() {
    const IQN: &str = "iqn.2026-01.io.mpath:silent";
    let dir = testkit::TempDir::new("silent");
    let up = Target::start(IQN, vec![group([127, 0, 0, 2], 0, AO)], &[(1, 1 << 20)]).await;
    // Same LU (same IQN and LUN), another server whose portal accepts and never answers.
    let silent = Target::start(IQN, vec![group([127, 0, 0, 4], 0, AO)], &[(1, 1 << 20)]).await;
    silent
        .ctl
        .set_fault(silent.portals[0], iscsi_target::Fault::Blackhole)
        .unwrap();
    let (mut d, c) = start(config(&dir, &[silent.portals[0], up.portals[0]]));
    let map = wait_map_by_wwid(&c, &up.wwid(1), 1, Duration::from_secs(10)).await;
    // Built while the silent portal's discovery is still waiting for an answer.
    let st = ask(&c, Request::ShowStatus).await;
    assert_eq!(st.data["sessions"], 1, "{}", st.text);
    read_some(&device(&d, &map), 4).await;
    // The portal answers again: its path joins.
    silent
        .ctl
        .set_fault(silent.portals[0], iscsi_target::Fault::None)
        .unwrap();
    wait_for(
        Duration::from_secs(15),
        "the silent portal's path to join",
        || async { active_paths(&c, &map).await == 2 },
    )
    .await;
    d.stop().await;
    up.stop().await;
    silent.stop().await;
}
