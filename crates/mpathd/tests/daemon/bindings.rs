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

/// A name, once given, is never given to another WWID: with LUN 1 blacklisted, LUN 2
/// keeps `mpathb` (it does not move up to `mpatha`), and a new LUN takes the next free
/// name. The blacklist is a regular expression with an exception, as multipath-tools
/// writes them: everything out, but LUN 2 and 3 back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_hold_across_blacklist_changes_and_regex_exceptions() {
    let dir = testkit::TempDir::new("bind-bl");
    let x = Target::start(
        "iqn.2026-01.io.mpath:bind-bl",
        vec![group([127, 0, 0, 2], 0, AO)],
        &[(1, 1 << 20), (2, 1 << 20), (3, 1 << 20)],
    )
    .await;
    let (w1, w2, w3) = (x.wwid(1), x.wwid(2), x.wwid(3));
    let mut cfg = config(&dir, &x.portals);
    cfg.blacklist = mpathd::config::parse_str(&format!("[blacklist]\nwwid = [\"{w3}\"]\n"), None)
        .unwrap()
        .blacklist;
    let (mut d, c) = start(cfg.clone());
    wait_map_by_wwid(&c, &w1, 1, Duration::from_secs(10)).await;
    wait_map_by_wwid(&c, &w2, 1, Duration::from_secs(10)).await;
    let first = names(&c).await;
    assert_eq!(first.len(), 2, "LUN 3 is blacklisted: {first:?}");
    assert_eq!(
        (first[&w1].as_str(), first[&w2].as_str()),
        ("mpatha", "mpathb")
    );
    d.stop().await;

    // Everything blacklisted by a regex, LUNs 2 and 3 excepted by another: LUN 1 has no
    // map, LUN 2 keeps its name, LUN 3 gets the next free one.
    let regex = mpathd::config::parse_str(
        &format!(
            "[blacklist]\nwwid = [\".*\"]\n[blacklist_exceptions]\nwwid = [\"^({}|{})$\"]\n",
            regex_escape(&w2),
            regex_escape(&w3)
        ),
        None,
    )
    .unwrap();
    cfg.blacklist = regex.blacklist;
    let (mut d, c) = start(cfg);
    wait_map_by_wwid(&c, &w2, 1, Duration::from_secs(10)).await;
    wait_map_by_wwid(&c, &w3, 1, Duration::from_secs(10)).await;
    let second = names(&c).await;
    assert_eq!(
        second.get(&w2).map(String::as_str),
        Some("mpathb"),
        "{second:?}"
    );
    assert_eq!(
        second.get(&w3).map(String::as_str),
        Some("mpathc"),
        "{second:?}"
    );
    assert!(!second.contains_key(&w1), "{second:?}");
    // LUN 1's path is known and says why it has no map.
    let r = ask(&c, Request::ShowPaths).await;
    let text = r.text;
    assert!(
        text.contains("matches blacklist entry \".*\""),
        "the excluded path names its rule: {text}"
    );
    d.stop().await;
    x.stop().await;
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
