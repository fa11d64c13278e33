//! The views an operator and a script read: one map or one path, formats, NDJSON events,
//! sessions, and views that agree with each other during a failure.

use mpathd::Request;
use serde_json::Value;

use crate::common::*;

const IQN: &str = "iqn.2026-01.io.mpath:views";

/// `show map` and `show path`: one record, by name (or WWID / unique prefix); a clear
/// refusal for one that does not exist or is ambiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_map_and_one_path_by_name() {
    let r = TwoPaths::start("views-one", IQN, |_| {}).await;
    let (t, c, map) = (&r.t, &r.c, &r.map);
    let wwid = t.wwid(1);

    for q in [map.as_str(), wwid.as_str()] {
        let m = ask(c, Request::ShowMap { map: q.into() }).await;
        assert_eq!(m.data["name"], *map, "{q}");
        assert_eq!(m.data["wwid"], wwid);
        assert_eq!(m.data["size"], 4 << 20);
        assert_eq!(m.data["block_size"], 512);
        assert_eq!(m.data["state"], "ok");
        assert_eq!(m.data["active_paths"], 2);
        assert_eq!(m.data["failback"], "immediate");
        let paths: Vec<&Value> = m.data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["paths"].as_array().unwrap())
            .collect();
        assert_eq!(paths.len(), 2, "{}", m.text);
        for w in [
            format!("name: {map}"),
            format!("wwid: {wwid}"),
            "state: ok (2/2 paths active".into(),
            "policy: selector service-time".into(),
            "size=4M features=".into(),
        ] {
            assert!(m.text.contains(&w), "{w:?} in\n{}", m.text);
        }
    }
    let no = c
        .handle(Request::ShowMap {
            map: "nosuch".into(),
        })
        .await;
    assert!(!no.ok);
    assert!(no.text.contains("no map \"nosuch\""), "{}", no.text);
    assert!(
        no.text.contains(map.as_str()),
        "lists the maps: {}",
        no.text
    );

    let first = t.portals[0];
    let name = format!("{first}/1");
    for q in [name.clone(), first.ip().to_string()] {
        let p = ask(c, Request::ShowPath { path: q.clone() }).await;
        assert_eq!(p.data["path"], name, "{q}");
        assert_eq!(p.data["portal"], first.to_string());
        assert_eq!(p.data["target"], IQN);
        assert_eq!(p.data["lun"], 1);
        assert_eq!(p.data["map"], *map);
        assert_eq!(p.data["dm_state"], "active");
        assert_eq!(p.data["checker_state"], "ready");
        assert_eq!(p.data["connection"], "running");
        assert_eq!(p.data["wwid"], wwid);
        assert_eq!(p.data["group"], 1);
        assert!(p.data["tsih"].as_u64().unwrap() > 0);
        assert_eq!(p.data["session_logins"], 1);
        for w in [
            format!("path: {name}"),
            format!("map: {map}"),
            "dm_state: active".into(),
            "checker_state: ready".into(),
            format!("wwid: {wwid}"),
        ] {
            assert!(p.text.contains(&w), "{w:?} in\n{}", p.text);
        }
    }
    let many = c
        .handle(Request::ShowPath {
            path: "127.0.0.".into(),
        })
        .await;
    assert!(!many.ok);
    assert!(many.text.contains("matches 2 paths"), "{}", many.text);
    let none = c
        .handle(Request::ShowPath {
            path: "10.9.9.9".into(),
        })
        .await;
    assert!(!none.ok);
    assert!(none.text.contains("no path \"10.9.9.9\""), "{}", none.text);
    r.stop().await;
}
