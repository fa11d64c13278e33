//! Reconfigure at run time: portals added and removed, LUNs added and removed, policies
//! changed — while a verifying workload runs on a map that does not change.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iscsi_target::config::AluaState::ActiveOptimized as AO;
use mpathd::{Daemon, Listeners, Request};
use workload::verify::{Config as WorkloadConfig, Workload};

use crate::common::*;

const STEADY: &str = "iqn.2026-01.io.mpath:steady";
const MOVING: &str = "iqn.2026-01.io.mpath:moving";

fn write_config(dir: &Path, portals: &[SocketAddr], extra: &str) -> std::path::PathBuf {
    let mut s = format!(
        "control_socket = \"{}\"\n\n[defaults]\nchecker_interval = \"200ms\"\n\
         checker_interval_ok = \"200ms\"\nbindings_file = \"{}\"\n\n[exports]\nnbd = \"off\"\n",
        dir.join("mpath.sock").display(),
        dir.join("bindings").display()
    );
    for p in portals {
        s.push_str(&format!("\n[[portal]]\naddress = \"{p}\"\n"));
    }
    s.push_str(extra);
    let path = dir.join("mpath.toml");
    std::fs::write(&path, s).unwrap();
    path
}

async fn reconfigure(c: &mpathd::Control) -> String {
    ask(c, Request::Reconfigure).await.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_applies_changes_and_leaves_unchanged_maps_alone() {
    let dir = testkit::TempDir::new("reconf");
    let steady = Target::start(
        STEADY,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 8 << 20)],
    )
    .await;
    let moving = Target::start(MOVING, vec![group([127, 0, 0, 5], 0, AO)], &[(1, 4 << 20)]).await;
    let mp = moving.portals[0];

    let file = write_config(dir.path(), &steady.portals[..1], "");
    let cfg = mpathd::config::load_file(&file).unwrap();
    let mut d = Daemon::start(cfg, Listeners::default(), Some(file.clone())).unwrap();
    let c = d.control();
    let steady_map = wait_map_by_wwid(&c, &steady.wwid(1), 2, Duration::from_secs(10)).await;

    // A verifying workload on the map that never changes, for the whole run.
    let dev = device(&d, &steady_map);
    let size = workload::BlockClient::size(&dev);
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

    // 1. A new portal (a new target): its LUN becomes a map.
    write_config(dir.path(), &[steady.portals[0], mp], "");
    let out = reconfigure(&c).await;
    assert!(out.contains("1 portal(s) added"), "{out}");
    let moving_map = wait_map_by_wwid(&c, &moving.wwid(1), 1, Duration::from_secs(10)).await;

    // 2. A changed policy for the new map: applied to it, not to the steady one.
    let extra = format!(
        "\n[[multipath]]\nwwid = \"{}\"\nalias = \"renamed\"\nno_path_retry = \"fail\"\n\
         prioritizer = \"const\"\nselector = \"round-robin\"\n",
        moving.wwid(1)
    );
    write_config(dir.path(), &[steady.portals[0], mp], &extra);
    let out = reconfigure(&c).await;
    assert!(out.contains(&moving_map), "{out}");
    assert!(!out.contains(&steady_map), "{out}");
    // The selector applies to the running map, and so does the alias: the map and its
    // export are renamed at once, and the timeline says so.
    assert!(
        out.contains("applied") && out.contains("selector round-robin"),
        "{out}"
    );
    assert!(
        out.contains(&format!("renamed {moving_map} -> renamed")) && !out.contains("pending"),
        "{out}"
    );
    let renamed_dev = device(&d, "renamed");
    assert!(d.exports().get("renamed").is_some());
    assert!(d.exports().get(&moving_map).is_none());
    assert_eq!(events_of(&c, "map-renamed").await, 1);
    workload::BlockClient::read(&renamed_dev, 0, 4096)
        .await
        .unwrap();
    let moving_map = "renamed".to_string();
    let top = topology_of(&c, &moving_map).await;
    assert_eq!(top["queue_if_no_path"], false, "{top:#}");
    assert_eq!(top["groups"][0]["priority"], 1, "{top:#}");
    let top = topology_of(&c, &steady_map).await;
    assert_eq!(top["queue_if_no_path"], true, "{top:#}");

    // 3. LUNs added and removed on the target (it restarts with LUN 2 and without LUN 1;
    //    its session logs in again by itself): reconfigure rescans.
    let recovered = events_of(&c, "session-recovered").await;
    moving.stop().await;
    let moving = Target::start(
        MOVING,
        vec![group([127, 0, 0, 5], mp.port(), AO)],
        &[(2, 4 << 20)],
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the moving session to log in again",
        || async { events_of(&c, "session-recovered").await > recovered },
    )
    .await;
    reconfigure(&c).await;
    let lun2_map = wait_map_by_wwid(&c, &moving.wwid(2), 1, Duration::from_secs(10)).await;
    wait_for(Duration::from_secs(5), "LUN 1's map to go", || async {
        map_entry(&c, &moving_map).await.is_none()
    })
    .await;
    assert!(d.exports().get(&moving_map).is_none());

    // 4. The portal removed: its paths leave, its map goes.
    write_config(dir.path(), &steady.portals[..1], "");
    let out = reconfigure(&c).await;
    assert!(out.contains("1 removed"), "{out}");
    wait_for(Duration::from_secs(5), "LUN 2's map to go", || async {
        map_entry(&c, &lun2_map).await.is_none()
    })
    .await;

    // The steady map saw none of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    assert_eq!(active_paths(&c, &steady_map).await, 2);
    d.stop().await;
    steady.stop().await;
    moving.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_changes_nothing_and_a_resized_lun_is_noticed() {
    const IQN: &str = "iqn.2026-01.io.mpath:resize";
    let dir = testkit::TempDir::new("resize");
    let t = Target::start(IQN, vec![group([127, 0, 0, 6], 0, AO)], &[(1, 4 << 20)]).await;
    let p = t.portals[0];
    let file = write_config(dir.path(), &[p], "");
    let cfg = mpathd::config::load_file(&file).unwrap();
    let mut d = Daemon::start(cfg, Listeners::default(), Some(file.clone())).unwrap();
    let c = d.control();
    let map = wait_map_by_wwid(&c, &t.wwid(1), 1, Duration::from_secs(10)).await;

    // A broken file: refused with its line and key; the running configuration stays.
    let before = ask(&c, Request::ShowConfig).await.text;
    write_config(dir.path(), &[p, p], "");
    let r = c.handle(Request::Reconfigure).await;
    assert!(!r.ok, "{}", r.text);
    assert!(
        r.text.contains("mpath.toml:") && r.text.contains("portal[1].address: portal"),
        "{}",
        r.text
    );
    assert_eq!(ask(&c, Request::ShowConfig).await.text, before);
    assert_eq!(active_paths(&c, &map).await, 1);

    // The LU grows (the target restarts with it twice the size; same WWID).
    write_config(dir.path(), &[p], "");
    let recovered = events_of(&c, "session-recovered").await;
    t.stop().await;
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 6], p.port(), AO)],
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
    assert!(
        resized["detail"]
            .as_str()
            .unwrap()
            .starts_with("4194304 -> 8388608 bytes"),
        "{resized}"
    );
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_follows_blacklist_portal_settings_and_removed_unreachable_portals() {
    const IQN: &str = "iqn.2026-01.io.mpath:rules";
    let dir = testkit::TempDir::new("rules");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 7], 0, AO)],
        &[(1, 1 << 20), (2, 1 << 20)],
    )
    .await;
    let p = t.portals[0];
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.8:0").unwrap();
        l.local_addr().unwrap()
    };
    let file = write_config(dir.path(), &[p, nowhere], "");
    let cfg = mpathd::config::load_file(&file).unwrap();
    let mut d = Daemon::start(cfg, Listeners::default(), Some(file.clone())).unwrap();
    let c = d.control();
    let m1 = wait_map_by_wwid(&c, &t.wwid(1), 1, Duration::from_secs(10)).await;
    let m2 = wait_map_by_wwid(&c, &t.wwid(2), 1, Duration::from_secs(10)).await;
    let st = ask(&c, Request::ShowStatus).await;
    assert!(
        st.text.contains(&format!("portal {nowhere} unreachable")),
        "{}",
        st.text
    );

    // The unreachable portal leaves the configuration: no longer reported, never tried.
    // LUN 2 is blacklisted: its map goes, LUN 1's stays.
    let bl = format!("\n[blacklist]\nwwid = [\"{}\"]\n", t.wwid(2));
    write_config(dir.path(), &[p], &bl);
    let out = reconfigure(&c).await;
    assert!(out.contains("1 removed"), "{out}");
    let st = ask(&c, Request::ShowStatus).await;
    assert!(!st.text.contains("unreachable"), "{}", st.text);
    assert!(map_entry(&c, &m2).await.is_none());
    assert_eq!(active_paths(&c, &m1).await, 1);
    let row = ask(&c, Request::ShowPaths).await.data["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == format!("{p}/2"))
        .cloned()
        .unwrap();
    assert_eq!(row["map"], "-");
    assert!(row["note"].as_str().unwrap().contains("blacklist"), "{row}");
    // The removed portal comes up: nothing logs in there.
    let late = Target::start(
        "iqn.2026-01.io.mpath:nowhere",
        vec![group([127, 0, 0, 8], nowhere.port(), AO)],
        &[(1, 1 << 20)],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(late.ctl.sessions().is_empty(), "{:?}", late.ctl.sessions());

    // Off the blacklist: LUN 2's map is back under its old name.
    write_config(dir.path(), &[p], "");
    reconfigure(&c).await;
    let again = wait_map_by_wwid(&c, &t.wwid(2), 1, Duration::from_secs(10)).await;
    assert_eq!(again, m2);

    // The portal's settings change (only another target): logged out, its paths leave.
    let mut s = std::fs::read_to_string(&file).unwrap();
    s.push_str("targets = [\"iqn.2026-01.io.mpath:other\"]\n");
    std::fs::write(&file, s).unwrap();
    let out = reconfigure(&c).await;
    assert!(out.contains("1 changed"), "{out}");
    wait_for(Duration::from_secs(5), "both maps to go", || async {
        ask(&c, Request::ShowMaps).await.data["maps"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    // And back.
    write_config(dir.path(), &[p], "");
    let out = reconfigure(&c).await;
    assert!(out.contains("1 changed"), "{out}");
    wait_map_by_wwid(&c, &t.wwid(1), 1, Duration::from_secs(10)).await;
    wait_map_by_wwid(&c, &t.wwid(2), 1, Duration::from_secs(10)).await;
    d.stop().await;
    t.stop().await;
    late.stop().await;
}

/// What the command line gave (an overlay: `--portal`) outlives a reconfigure: the file
/// lists no portal, the reload logs nothing out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_from_the_command_line_survives_a_reconfigure() {
    let dir = testkit::TempDir::new("reconf-overlay");
    let t = Target::start(STEADY, vec![group([127, 0, 0, 2], 0, AO)], &[(1, 4 << 20)]).await;
    let file = write_config(dir.path(), &[], "");
    let portal = t.portals[0];
    let overlay: mpathd::ConfigOverlay = Arc::new(move |c: &mut mpathd::DaemonConfig| {
        if !c.portals.iter().any(|p| p.address == portal) {
            c.portals.push(crate::common::portal(portal));
        }
    });
    let mut cfg = mpathd::config::load_file(&file).unwrap();
    overlay(&mut cfg);
    let mut d =
        Daemon::start_with_overlay(cfg, Listeners::default(), Some(file.clone()), Some(overlay))
            .unwrap();
    let c = d.control();
    let map = wait_map_by_wwid(&c, &t.wwid(1), 1, Duration::from_secs(10)).await;
    let out = reconfigure(&c).await;
    assert!(out.contains("0 portal(s) added, 0 removed"), "{out}");
    assert!(map_entry(&c, &map).await.is_some(), "{out}");
    d.stop().await;
    t.stop().await;
}
