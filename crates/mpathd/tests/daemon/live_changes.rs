//! Changes a running map takes without being re-created: a new selector and grouping from
//! `reconfigure` under a verifying workload, and a LUN resize.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iscsi_target::config::AluaState::ActiveOptimized as AO;
use mpathd::{Daemon, Listeners, Request};
use workload::verify::{Config as WorkloadConfig, Workload};
use workload::BlockClient;

use crate::common::*;

/// The selector `show topology` names (`service-time 0`, dm style), without its argument.
fn selector(top: &serde_json::Value) -> &str {
    top["selector"]
        .as_str()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
}

/// The daemon's file: short checker intervals, `defaults` added to `[defaults]`, NBD on a
/// unix socket in `dir` only.
fn write_config(dir: &Path, portals: &[std::net::SocketAddr], defaults: &str) -> PathBuf {
    let mut s = format!(
        "control_socket = \"{}\"\n\n[defaults]\nchecker_interval = \"200ms\"\n\
         checker_interval_ok = \"200ms\"\nbindings_file = \"{}\"\n{defaults}\n\
         [exports]\nnbd = \"off\"\nnbd_unix = \"{}\"\n",
        dir.join("mpath.sock").display(),
        dir.join("bindings").display(),
        dir.join("nbd.sock").display(),
    );
    for p in portals {
        s.push_str(&format!("\n[[portal]]\naddress = \"{p}\"\n"));
    }
    let path = dir.join("mpath.toml");
    std::fs::write(&path, s).unwrap();
    path
}

async fn reconfigure(c: &mpathd::Control) -> String {
    ask(c, Request::Reconfigure).await.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_changes_selector_and_grouping_of_a_running_map_under_io() {
    const IQN: &str = "iqn.2026-01.io.mpath:live";
    let dir = testkit::TempDir::new("live");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 8], 0, AO), group([127, 0, 0, 9], 0, AO)],
        &[(1, 8 << 20)],
    )
    .await;
    let file = write_config(dir.path(), &t.portals, "");
    let cfg = mpathd::config::load_file(&file).unwrap();
    let mut d = Daemon::start(cfg, Listeners::default(), Some(file.clone())).unwrap();
    let c = d.control();
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let top = topology_of(&c, &map).await;
    assert_eq!(selector(&top), "service-time", "{top:#}");
    assert_eq!(top["groups"].as_array().unwrap().len(), 1, "{top:#}");

    let dev = device(&d, &map);
    let size = dev.size();
    let w = Arc::new(
        Workload::new(
            dev.clone(),
            WorkloadConfig {
                duration: Duration::from_secs(60),
                depth: 4,
                drain_timeout: Duration::from_secs(5),
                ..WorkloadConfig::for_region(0, size)
            },
        )
        .unwrap(),
    );
    let run = tokio::spawn({
        let w = w.clone();
        async move { w.run().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. A new selector: applied to the running map, nothing pending.
    write_config(dir.path(), &t.portals, "selector = \"round-robin\"\n");
    let out = reconfigure(&c).await;
    assert!(
        out.contains(&format!("map {map}: applied")) && out.contains("selector round-robin"),
        "{out}"
    );
    assert!(!out.contains("pending"), "{out}");
    let top = topology_of(&c, &map).await;
    assert_eq!(selector(&top), "round-robin", "{top:#}");
    assert!(top["pending_policy"].is_null(), "{top:#}");
    let text = ask(&c, Request::ShowTopology).await.text;
    assert!(text.contains("policy='round-robin"), "{text}");
    assert!(!text.contains("pending"), "{text}");
    // Round-robin spreads the workload over both paths from now on.
    let before = path_ios(&c, &map).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = path_ios(&c, &map).await;
    assert_eq!(after.len(), 2, "{after:?}");
    for ((p, a), (_, b)) in after.iter().zip(&before) {
        assert!(
            a > b,
            "{p} took no I/O after the switch: {before:?} -> {after:?}"
        );
    }

    // 2. A new grouping (one path per group) and failback: regrouped under the workload.
    write_config(
        dir.path(),
        &t.portals,
        "selector = \"queue-length\"\ngrouping = \"failover\"\nfailback = \"manual\"\n",
    );
    let out = reconfigure(&c).await;
    assert!(
        out.contains("selector queue-length")
            && out.contains("grouping failover")
            && out.contains("failback \"manual\""),
        "{out}"
    );
    let top = topology_of(&c, &map).await;
    assert_eq!(selector(&top), "queue-length", "{top:#}");
    assert_eq!(top["groups"].as_array().unwrap().len(), 2, "{top:#}");
    assert_eq!(active_paths(&c, &map).await, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 3. Back to the defaults.
    write_config(dir.path(), &t.portals, "");
    let out = reconfigure(&c).await;
    assert!(out.contains("selector service-time"), "{out}");
    let top = topology_of(&c, &map).await;
    assert_eq!(selector(&top), "service-time", "{top:#}");
    assert_eq!(top["groups"].as_array().unwrap().len(), 1, "{top:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The timeline says what changed, setting by setting.
    assert!(events_of(&c, "policy-applied").await >= 6);
    assert!(events_of(&c, "regrouped").await >= 2);

    w.stop();
    let report = run.await.unwrap();
    assert!(report.ops > 100, "{report:?}");
    assert!(
        report.clean() && report.unfinished == 0,
        "{:?}",
        report.messages
    );
    assert!(
        report.longest_gap_ms() < 1000.0,
        "gap of {} ms",
        report.longest_gap_ms()
    );
    let check = w.verify_all().await;
    assert!(check.clean(), "{:?}", check.messages);
    let stats = dev.counters();
    assert_eq!(stats.map.errors, 0, "{stats:?}");
    d.stop().await;
    t.stop().await;
}

/// The in-process target cannot resize a LUN while it runs (its `Control` has no such
/// request): the LUN grows (then shrinks) by restarting the target with a larger (then
/// smaller) one under the same WWID; the session logs in again and the rescan finds the
/// new capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resized_lun_resizes_its_running_map_and_its_exports() {
    const IQN: &str = "iqn.2026-01.io.mpath:grow";
    let dir = testkit::TempDir::new("grow");
    let t = Target::start(IQN, vec![group([127, 0, 0, 10], 0, AO)], &[(1, 4 << 20)]).await;
    let p = t.portals[0];
    let file = write_config(dir.path(), &[p], "");
    let cfg = mpathd::config::load_file(&file).unwrap();
    // The NBD listener on the unix socket the file names.
    let listeners = Listeners::bind(&cfg).await.expect("bind");
    let mut d = Daemon::start(cfg, listeners, Some(file.clone())).unwrap();
    let c = d.control();
    let map = wait_map_by_wwid(&c, &t.wwid(1), 1, Duration::from_secs(10)).await;
    let dev = device(&d, &map);
    assert_eq!(dev.size(), 4 << 20);
    let err = dev
        .write(4 << 20, bytes::Bytes::from(vec![1u8; 4096]), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind, block::IoErrorKind::Invalid, "{err}");

    let recovered = events_of(&c, "session-recovered").await;
    t.stop().await;
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 10], p.port(), AO)],
        &[(1, 8 << 20)],
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the session to log in again",
        || async { events_of(&c, "session-recovered").await > recovered },
    )
    .await;
    reconfigure(&c).await;
    wait_for(Duration::from_secs(10), "the map to grow", || async {
        map_entry(&c, &map)
            .await
            .is_some_and(|m| m["size"] == 8 << 20)
    })
    .await;
    assert_eq!(topology_of(&c, &map).await["size"], 8 << 20);
    let text = ask(&c, Request::ShowTopology).await.text;
    assert!(text.contains("size=8"), "{text}");
    let ev = ask(
        &c,
        Request::ShowEvents {
            follow: false,
            last: None,
        },
    )
    .await;
    let resized = ev.data["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "capacity-changed")
        .unwrap_or_else(|| panic!("no capacity-changed event:\n{}", ev.text));
    assert_eq!(resized["map"], map);
    let detail = resized["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("4194304 -> 8388608 bytes") && detail.contains("resized"),
        "{resized}"
    );
    assert!(events_of(&c, "map-resized").await >= 1);

    // The map, the export registry and a new NBD connection see the new size; the new
    // end takes I/O.
    assert_eq!(dev.size(), 8 << 20);
    assert_eq!(d.exports().get(&map).unwrap().info().size, 8 << 20);
    let nbd = workload::nbd::NbdClient::connect_unix(dir.path().join("nbd.sock"), &map)
        .await
        .expect("NBD connection");
    assert_eq!(nbd.size(), 8 << 20);
    let end = (8 << 20) - 4096;
    nbd.write(end, bytes::Bytes::from(vec![0x5a; 4096]), false)
        .await
        .expect("write at the new end");
    let back = dev.read(end, 4096).await.expect("read at the new end");
    assert_eq!(&back[..], &[0x5a; 4096][..]);

    // The LU shrinks to 2 MiB: the map follows; the connected NBD client keeps the size
    // it negotiated (the protocol cannot tell it), and its write beyond the new end is
    // refused by the export.
    let recovered = events_of(&c, "session-recovered").await;
    t.stop().await;
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 10], p.port(), AO)],
        &[(1, 2 << 20)],
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the session to log in again",
        || async { events_of(&c, "session-recovered").await > recovered },
    )
    .await;
    reconfigure(&c).await;
    wait_for(Duration::from_secs(10), "the map to shrink", || async {
        map_entry(&c, &map)
            .await
            .is_some_and(|m| m["size"] == 2 << 20)
    })
    .await;
    assert_eq!(dev.size(), 2 << 20);
    let err = dev.read(2 << 20, 4096).await.unwrap_err();
    assert_eq!(err.kind, block::IoErrorKind::Invalid, "{err}");
    dev.read((2 << 20) - 4096, 4096)
        .await
        .expect("read at the new end");
    assert_eq!(nbd.size(), 8 << 20, "a connected client keeps its size");
    nbd.write(end, bytes::Bytes::from(vec![0x5a; 4096]), false)
        .await
        .expect_err("a write beyond the shrunk end");
    let nbd2 = workload::nbd::NbdClient::connect_unix(dir.path().join("nbd.sock"), &map)
        .await
        .expect("NBD connection");
    assert_eq!(nbd2.size(), 2 << 20, "a new connection sees the new size");
    drop((nbd, nbd2));
    d.stop().await;
    t.stop().await;
}

/// An array grows a LUN under I/O and says so (UNIT ATTENTION 2A/09 CAPACITY DATA HAS
/// CHANGED): the daemon rescans the session when a command meets it and the running map
/// takes the new size — no `reconfigure`, no re-login, no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lun_grown_under_io_resizes_its_map_when_the_target_says_so() {
    const IQN: &str = "iqn.2026-01.io.mpath:grow-ua";
    let dir = testkit::TempDir::new("grow-ua");
    let backing = dir.path().join("lun1.img");
    let t = Target::start_backed(
        IQN,
        vec![group([127, 0, 0, 11], 0, AO)],
        &[(
            1,
            iscsi_target::backend::BackingSpec::parse(&format!(
                "sparse:{}:{}",
                backing.display(),
                4 << 20
            ))
            .unwrap(),
        )],
    )
    .await;
    let mut cfg = config(&dir, &t.portals);
    // No poll finds it: paths are checked every ten minutes.
    cfg.checker_interval = Duration::from_secs(600);
    cfg.checker_interval_ok = Duration::from_secs(600);
    let (mut d, c) = start(cfg);
    let map = wait_map_by_wwid(&c, &t.wwid(1), 1, Duration::from_secs(10)).await;
    let dev = device(&d, &map);
    assert_eq!(dev.size(), 4 << 20);
    read_some(&dev, 10).await;

    // The operator grows the file and tells the target, which tells the initiators.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&backing)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    assert_eq!(t.ctl.rescan_lun(IQN, 1), Ok(8 << 20));
    // The next read meets the UNIT ATTENTION; it is retried and succeeds.
    read_some(&dev, 5).await;
    wait_for(Duration::from_secs(10), "the map to grow", || async {
        map_entry(&c, &map)
            .await
            .is_some_and(|m| m["size"] == 8 << 20)
    })
    .await;
    assert_eq!(dev.size(), 8 << 20);
    assert!(events_of(&c, "lu-changed").await > 0);
    assert!(events_of(&c, "capacity-changed").await > 0);
    // The new blocks are there, through the map.
    dev.write(6 << 20, bytes::Bytes::from(vec![7u8; 4096]), false)
        .await
        .unwrap();
    let back = dev.read(6 << 20, 4096).await.unwrap();
    assert!(back.iter().all(|&b| b == 7));
    d.stop().await;
    t.stop().await;
}
