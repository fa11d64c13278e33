//! Prioritizers and grouping: ALUA states from the target become groups; a change of
//! states on the target is noticed and I/O follows.

use std::time::Duration;

use iscsi_target::config::AluaState::{ActiveNonOptimized as ANO, ActiveOptimized as AO};
use mpathd::Request;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alua_groups_follow_the_target_states() {
    const IQN: &str = "iqn.2026-01.io.mpath:alua";
    let dir = testkit::TempDir::new("alua");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, ANO)],
        &[(1, 4 << 20)],
    )
    .await;
    let (ao, ano) = (t.portals[0].to_string(), t.portals[1].to_string());
    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;

    // Two groups, the AO one (prio 50) active, the ANO one (10) enabled.
    let check = |top: serde_json::Value, active: &str, other: &str| {
        let groups = top["groups"].as_array().cloned().unwrap_or_default();
        assert_eq!(groups.len(), 2, "{top:#}");
        let g = |i: usize| &groups[i];
        assert_eq!(g(0)["status"], "active", "{top:#}");
        assert_eq!(g(0)["priority"], 50, "{top:#}");
        assert_eq!(g(1)["priority"], 10, "{top:#}");
        assert!(
            g(0)["paths"][0]["portal"] == active,
            "active group should be {active}: {top:#}"
        );
        assert!(g(1)["paths"][0]["portal"] == other, "{top:#}");
    };
    check(topology_of(&c, &map).await, &ao, &ano);
    let text = ask(&c, Request::ShowTopology).await.text;
    assert!(text.contains("prio=50 status=active"), "{text}");
    assert!(text.contains("prio=10 status=enabled"), "{text}");
    assert!(text.contains("hwhandler='1 alua'"), "{text}");

    // I/O goes to the AO path only.
    let dev = device(&d, &map);
    read_some(&dev, 50).await;
    let ios = path_ios(&c, &map).await;
    let on = |p: &str| {
        ios.iter()
            .find(|(n, _)| n.starts_with(p))
            .map(|x| x.1)
            .unwrap()
    };
    assert!(on(&ao) >= 50 && on(&ano) == 0, "{ios:?}");

    // Swap the states on the target, under a verifying workload: the checker's refresh
    // regroups, I/O follows, and no request fails or reads wrong data.
    let w = std::sync::Arc::new(
        workload::verify::Workload::new(
            dev.clone(),
            workload::verify::Config {
                duration: Duration::from_secs(60),
                depth: 4,
                drain_timeout: Duration::from_secs(5),
                ..workload::verify::Config::for_region(0, 4 << 20)
            },
        )
        .unwrap(),
    );
    let run = tokio::spawn({
        let w = w.clone();
        async move { w.run().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.ctl.set_alua(IQN, 1, ANO).unwrap();
    t.ctl.set_alua(IQN, 2, AO).unwrap();
    wait_for(
        Duration::from_secs(5),
        "the map to switch groups",
        || async {
            let top = topology_of(&c, &map).await;
            top["groups"][0]["status"] == "active"
                && top["groups"][0]["paths"][0]["portal"] == ano
                && top["groups"][0]["priority"] == 50
        },
    )
    .await;
    check(topology_of(&c, &map).await, &ano, &ao);
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.stop();
    let report = run.await.unwrap();
    assert!(
        report.ops > 0 && report.clean() && report.unfinished == 0,
        "{:?}",
        report.messages
    );
    assert!(
        report.longest_gap_ms() < 1000.0,
        "{}",
        report.longest_gap_ms()
    );
    let v = w.verify_all().await;
    assert!(v.clean(), "{:?}", v.messages);
    let before = path_ios(&c, &map).await;
    read_some(&dev, 50).await;
    let after = path_ios(&c, &map).await;
    let delta = |p: &str| {
        let f = |v: &Vec<(String, u64)>| v.iter().find(|(n, _)| n.starts_with(p)).unwrap().1;
        f(&after) - f(&before)
    };
    assert!(delta(&ano) >= 50 && delta(&ao) == 0, "{before:?} {after:?}");
    wait_for(
        Duration::from_secs(5),
        "the switch in the timeline",
        || async { events_of(&c, "group-switched").await > 0 },
    )
    .await;
    d.stop().await;
    t.stop().await;
}

/// A change of ALUA states reaches the map through the UNIT ATTENTION (2A/06 ASYMMETRIC
/// ACCESS STATE CHANGED) the next command meets, not at the checker's next poll: with
/// paths checked every ten minutes, the map still regroups as soon as I/O runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alua_change_is_pushed_by_its_unit_attention_not_polled() {
    const IQN: &str = "iqn.2026-01.io.mpath:alua-ua";
    let dir = testkit::TempDir::new("alua-ua");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, ANO)],
        &[(1, 4 << 20)],
    )
    .await;
    let (ao, ano) = (t.portals[0].to_string(), t.portals[1].to_string());
    let mut cfg = config(&dir, &t.portals[..1]);
    cfg.checker_interval = Duration::from_secs(600);
    cfg.checker_interval_ok = Duration::from_secs(600);
    let (mut d, c) = start(cfg);
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let active = |top: serde_json::Value| {
        let g = &top["groups"][0];
        (g["status"] == "active" && g["priority"] == 50).then(|| {
            g["paths"][0]["portal"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    };
    wait_for(Duration::from_secs(5), "the AO group active", || async {
        active(topology_of(&c, &map).await).as_deref() == Some(ao.as_str())
    })
    .await;
    let dev = device(&d, &map);
    read_some(&dev, 10).await;
    // Past the first checks: the next poll is ten minutes away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events_of(&c, "lu-changed").await, 0);

    t.ctl.set_alua(IQN, 1, ANO).unwrap();
    t.ctl.set_alua(IQN, 2, AO).unwrap();
    // The next read meets the UNIT ATTENTION on the old AO path, is retried there, and
    // the daemon reads the LU's ALUA states again.
    read_some(&dev, 5).await;
    wait_for(
        Duration::from_secs(10),
        "the map to switch groups",
        || async { active(topology_of(&c, &map).await).as_deref() == Some(ano.as_str()) },
    )
    .await;
    assert!(events_of(&c, "lu-changed").await > 0);
    let timeline = ask(
        &c,
        Request::ShowEvents {
            follow: false,
            last: None,
        },
    )
    .await
    .text;
    assert!(
        timeline.contains("asymmetric access state changed"),
        "{timeline}"
    );
    // I/O follows the new AO port.
    let before = path_ios(&c, &map).await;
    read_some(&dev, 20).await;
    let after = path_ios(&c, &map).await;
    let delta = |p: &str| {
        let f = |v: &Vec<(String, u64)>| v.iter().find(|(n, _)| n.starts_with(p)).unwrap().1;
        f(&after) - f(&before)
    };
    assert!(delta(&ano) >= 20 && delta(&ao) == 0, "{before:?} {after:?}");
    d.stop().await;
    t.stop().await;
}

/// Groups of a map as (priority, status, [portals]).
async fn groups(c: &mpathd::Control, map: &str) -> Vec<(u64, String, Vec<String>)> {
    let top = topology_of(c, map).await;
    top["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|g| {
            (
                g["priority"].as_u64().unwrap_or(u64::MAX),
                g["status"].as_str().unwrap_or_default().to_string(),
                g["paths"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| p["portal"].as_str().unwrap_or_default().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn const_prioritizer_puts_every_path_in_one_group() {
    const IQN: &str = "iqn.2026-01.io.mpath:const";
    let dir = testkit::TempDir::new("const");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, ANO)],
        &[(1, 4 << 20)],
    )
    .await;
    let mut cfg = config(&dir, &t.portals[..1]);
    cfg.prioritizer = mpathd::config::PrioritizerKind::Const;
    let (mut d, c) = start(cfg);
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let g = groups(&c, &map).await;
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!((g[0].0, g[0].1.as_str(), g[0].2.len()), (1, "active", 2));
    for p in paths_of(&c, &map).await {
        assert_eq!(p["priority"], 1, "{p}");
    }
    // Both paths carry I/O.
    read_some(&device(&d, &map), 200).await;
    let ios = path_ios(&c, &map).await;
    assert!(ios.iter().all(|(_, n)| *n > 0), "{ios:?}");
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weightedpath_prioritizer_prefers_the_heavier_portal() {
    const IQN: &str = "iqn.2026-01.io.mpath:weighted";
    let dir = testkit::TempDir::new("weighted");
    // ALUA would prefer .2; the weights say .3.
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, ANO)],
        &[(1, 4 << 20)],
    )
    .await;
    let src = format!(
        "[defaults]\nprioritizer = \"weightedpath\"\nprio_args = [[\"127.0.0.3*\", 40], [\"{}\", 5]]\n\
         [[portal]]\naddress = \"{}\"\n",
        t.portals[0], t.portals[0]
    );
    let parsed = mpathd::config::parse_str(&src, None).unwrap();
    let mut cfg = config(&dir, &t.portals[..1]);
    cfg.prioritizer = parsed.prioritizer;
    let (mut d, c) = start(cfg);
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let g = groups(&c, &map).await;
    assert_eq!(g.len(), 2, "{g:?}");
    assert_eq!(g[0].0, 40, "{g:?}");
    assert_eq!(g[0].1, "active", "{g:?}");
    assert_eq!(g[0].2, vec![t.portals[1].to_string()], "{g:?}");
    assert_eq!(g[1].0, 5, "{g:?}");
    read_some(&device(&d, &map), 20).await;
    let ios = path_ios(&c, &map).await;
    for (p, n) in &ios {
        assert_eq!(*n > 0, p.starts_with("127.0.0.3"), "{ios:?}");
    }
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_latency_prioritizer_prefers_the_faster_path() {
    const IQN: &str = "iqn.2026-01.io.mpath:latency";
    let dir = testkit::TempDir::new("latency");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 4 << 20)],
    )
    .await;
    // Every answer through .3 leaves 30 ms late.
    t.ctl
        .set_fault(t.portals[1], iscsi_target::Fault::Delay { ms: 30 })
        .unwrap();
    let mut cfg = config(&dir, &t.portals[..1]);
    cfg.prioritizer = mpathd::config::PrioritizerKind::PathLatency;
    let (mut d, c) = start(cfg);
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    wait_for(
        Duration::from_secs(5),
        "two groups, the fast path's first",
        || async {
            let g = groups(&c, &map).await;
            g.len() == 2 && g[0].1 == "active" && g[0].2 == vec![t.portals[0].to_string()]
        },
    )
    .await;
    let g = groups(&c, &map).await;
    assert!(g[0].0 > g[1].0, "{g:?}");
    // 30 ms is in the 10–100 ms decade: priority 20-30.
    assert!((20..=30).contains(&g[1].0), "{g:?}");
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alua_priorities_per_state_and_preferred_bit() {
    use iscsi_target::config::AluaState::{Standby, Unavailable};
    const IQN: &str = "iqn.2026-01.io.mpath:states";
    let dir = testkit::TempDir::new("states");
    let mut groups_spec = vec![
        group([127, 0, 0, 2], 0, AO),
        group([127, 0, 0, 3], 0, ANO),
        group([127, 0, 0, 4], 0, Standby),
        group([127, 0, 0, 5], 0, Unavailable),
    ];
    groups_spec[0].preferred = true;
    let t = Target::start(IQN, groups_spec, &[(1, 1 << 20)]).await;
    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.handle(Request::ShowPaths).await;
        if r.data["paths"].as_array().is_some_and(|a| a.len() == 4) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let ev = c
                .handle(Request::ShowEvents {
                    follow: false,
                    last: None,
                })
                .await;
            panic!("not four paths:\n{}\n{}", r.text, ev.text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = ask(&c, Request::ShowPaths).await;
    let prio = |ip: &str| {
        r.data["paths"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"].as_str().unwrap().starts_with(ip))
            .map(|p| p["priority"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(prio("127.0.0.2:"), 130, "{}", r.text);
    assert_eq!(prio("127.0.0.3:"), 10, "{}", r.text);
    assert_eq!(prio("127.0.0.4:"), 1, "{}", r.text);
    assert_eq!(prio("127.0.0.5:"), 0, "{}", r.text);
    let map = r.data["paths"][0]["map"].as_str().unwrap().to_string();
    let g = groups(&c, &map).await;
    assert_eq!(g[0].0, 130, "{g:?}");
    assert_eq!(g[0].1, "active", "{g:?}");
    assert_eq!(g[0].2, vec![t.portals[0].to_string()], "{g:?}");
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_paths_wait_for_their_map_and_join_when_a_port_activates() {
    use iscsi_target::config::AluaState::Standby;
    const IQN: &str = "iqn.2026-01.io.mpath:standby";
    let dir = testkit::TempDir::new("standby");
    let t = Target::start(
        IQN,
        vec![
            group([127, 0, 0, 2], 0, Standby),
            group([127, 0, 0, 3], 0, Standby),
        ],
        &[(1, 1 << 20)],
    )
    .await;
    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    // Both ports in standby: the LU's paths are known, waiting (no capacity to build a
    // map from), and said so.
    wait_for(Duration::from_secs(10), "two waiting paths", || async {
        let r = c.handle(Request::ShowPaths).await;
        r.data["paths"].as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter()
                    .all(|p| p["map"] == "-" && p["note"].as_str().unwrap().contains("ALUA port"))
        })
    })
    .await;
    assert!(ask(&c, Request::ShowMaps).await.data["maps"]
        .as_array()
        .unwrap()
        .is_empty());
    // The array activates one port: the map is built, the standby path joins as a ghost.
    t.ctl.set_alua(IQN, 1, AO).unwrap();
    // (A ghost is dm-active: used only when nothing better is.)
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    wait_for(
        Duration::from_secs(5),
        "the standby path checked a ghost",
        || async {
            paths_of(&c, &map).await.iter().any(|p| {
                p["path"]
                    .as_str()
                    .unwrap()
                    .starts_with(&t.portals[1].to_string())
                    && p["checker_state"] == "ghost"
            })
        },
    )
    .await;
    let g = groups(&c, &map).await;
    assert_eq!(g.len(), 2, "{g:?}");
    assert_eq!((g[0].0, g[0].1.as_str()), (50, "active"), "{g:?}");
    assert_eq!(g[0].2, vec![t.portals[0].to_string()], "{g:?}");
    assert_eq!(g[1].0, 1, "{g:?}");
    let size = ask(&c, Request::ShowMaps).await.data["maps"][0]["size"].clone();
    assert_eq!(size, 1 << 20);
    // Then the other way round: the standby port becomes active, the active one standby.
    t.ctl.set_alua(IQN, 2, AO).unwrap();
    t.ctl.set_alua(IQN, 1, Standby).unwrap();
    wait_for(Duration::from_secs(5), "the groups to swap", || async {
        let g = groups(&c, &map).await;
        g.len() == 2 && g[0].1 == "active" && g[0].2 == vec![t.portals[1].to_string()]
    })
    .await;
    read_some(&device(&d, &map), 8).await;
    let ios = path_ios(&c, &map).await;
    let on = |p: &str| ios.iter().find(|(n, _)| n.starts_with(p)).unwrap().1;
    assert!(on(&t.portals[1].to_string()) >= 8, "{ios:?}");
    d.stop().await;
    t.stop().await;
}
