//! Hedged reads through real iSCSI paths: a silently blackholed path's reads are answered
//! by the other path, counted, and never cost a read its data.

use mpathd::Request;

use crate::common::*;

const IQN: &str = "iqn.2026-01.io.mpath:hedge";

/// Readers at depth 8 while one path is blackholed: reads stuck on it are hedged (and the
/// other path wins), no read fails, and the blackholed path is still failed by its
/// transport — a hedge is not a path failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stuck_on_a_blackholed_path_are_hedged() {
    use iscsi_target::Fault;
    let r = TwoPaths::start("hedge-blackhole", IQN, |_| {}).await;
    let (t, c, map) = (&r.t, &r.c, r.map.clone());
    let readers: Vec<_> = (0..8).map(|_| reader(r.device(), 3)).collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    t.ctl.set_fault(t.portals[0], Fault::Blackhole).unwrap();
    for h in readers {
        assert!(h.await.expect("no read failed") > 0);
    }
    let stats: mpathd::reply::Stats = ask(c, Request::ShowStats).await.parse().unwrap();
    let m = stats.maps.iter().find(|m| m.map == map).unwrap();
    assert!(m.hedged_reads > 0, "{m:?}");
    assert!(m.hedges_won > 0, "{m:?}");
    assert_eq!(m.errors, 0);
    let slow = format!("{}/1", t.portals[0]);
    let p = m.paths.iter().find(|p| p.path == slow).unwrap();
    assert!(
        p.hedged_reads > 0,
        "hedged away from the blackholed path: {p:?}"
    );
    let path: mpathd::reply::PathRecord = ask(c, Request::ShowPath { path: slow })
        .await
        .parse()
        .unwrap();
    assert_eq!(path.dm_state, "failed", "the transport still fails it");
    t.ctl.set_fault(t.portals[0], Fault::None).unwrap();
    r.stop().await;
}

/// `hedge_reads = false`: the same blackhole, no hedge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedge_reads_off_hedges_nothing() {
    use iscsi_target::Fault;
    let r = TwoPaths::start("hedge-off", IQN, |c| c.hedge_reads = false).await;
    let (t, c, map) = (&r.t, &r.c, r.map.clone());
    let readers: Vec<_> = (0..8).map(|_| reader(r.device(), 2)).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    t.ctl.set_fault(t.portals[0], Fault::Blackhole).unwrap();
    for h in readers {
        assert!(h.await.expect("no read failed") > 0);
    }
    let stats: mpathd::reply::Stats = ask(c, Request::ShowStats).await.parse().unwrap();
    let m = stats.maps.iter().find(|m| m.map == map).unwrap();
    assert_eq!(m.hedged_reads, 0);
    let cfg = ask(c, Request::ShowConfig).await;
    assert!(cfg.text.contains("hedge_reads = false"), "{}", cfg.text);
    t.ctl.set_fault(t.portals[0], Fault::None).unwrap();
    r.stop().await;
}
