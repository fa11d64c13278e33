//! User-friendly names stay bound to their WWIDs across daemon restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use iscsi_target::config::AluaState::ActiveOptimized as AO;
use mpathd::Request;

use crate::common::*;

async fn names(c: &mpathd::Control) -> BTreeMap<String, String> {
    let r = ask(c, Request::ShowMaps).await;
    r.data["maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["wwid"].as_str().unwrap().to_string(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_survive_a_restart_and_new_luns_get_new_ones() {
    let dir = testkit::TempDir::new("bind");
    let x = Target::start(
        "iqn.2026-01.io.mpath:bind-x",
        vec![group([127, 0, 0, 2], 0, AO)],
        &[(1, 1 << 20), (2, 1 << 20)],
    )
    .await;
    let y = Target::start(
        "iqn.2026-01.io.mpath:bind-y",
        vec![group([127, 0, 0, 3], 0, AO)],
        &[(1, 1 << 20)],
    )
    .await;

    let (mut d, c) = start(config(&dir, &x.portals));
    wait_map_by_wwid(&c, &x.wwid(1), 1, Duration::from_secs(10)).await;
    wait_map_by_wwid(&c, &x.wwid(2), 1, Duration::from_secs(10)).await;
    let first = names(&c).await;
    let mut given: Vec<&String> = first.values().collect();
    given.sort();
    assert_eq!(given, ["mpatha", "mpathb"]);
    d.stop().await;
    let file = std::fs::read_to_string(dir.path().join("bindings")).unwrap();
    for (w, n) in &first {
        assert!(file.lines().any(|l| l == format!("{n} {w}")), "{file}");
    }

    // Again, with another target's LUN found first: the old names hold, the new LUN
    // takes the next free one.
    let (mut d, c) = start(config(&dir, &[y.portals[0], x.portals[0]]));
    wait_map_by_wwid(&c, &y.wwid(1), 1, Duration::from_secs(10)).await;
    wait_map_by_wwid(&c, &x.wwid(1), 1, Duration::from_secs(10)).await;
    wait_map_by_wwid(&c, &x.wwid(2), 1, Duration::from_secs(10)).await;
    let second = names(&c).await;
    for (w, n) in &first {
        assert_eq!(second.get(w), Some(n), "{second:?}");
    }
    assert_eq!(second[&y.wwid(1)], "mpathc", "{second:?}");
    d.stop().await;
    x.stop().await;
    y.stop().await;
}
