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

    // Swap the states on the target: the checker's refresh regroups and I/O follows.
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
    let before = path_ios(&c, &map).await;
    read_some(&dev, 50).await;
    let after = path_ios(&c, &map).await;
    let delta = |p: &str| {
        let f = |v: &Vec<(String, u64)>| v.iter().find(|(n, _)| n.starts_with(p)).unwrap().1;
        f(&after) - f(&before)
    };
    assert!(delta(&ano) >= 50 && delta(&ao) == 0, "{before:?} {after:?}");
    let ev = ask(
        &c,
        Request::ShowEvents {
            follow: false,
            last: None,
        },
    )
    .await;
    assert!(ev.text.contains("group-switched"), "{}", ev.text);
    d.stop().await;
    t.stop().await;
}
