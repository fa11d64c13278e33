//! The views an operator and a script read: one map or one path, formats, NDJSON events,
//! sessions, and views that agree with each other during a failure.

use tokio::io::AsyncBufReadExt;

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

type Lines = tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>;

/// The next response of a followed stream: one event.
async fn next_event(lines: &mut Lines) -> Value {
    let l = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line within 10 s")
        .unwrap()
        .expect("the stream goes on");
    let resp: mpathd::Response = serde_json::from_str(&l).unwrap();
    assert!(resp.ok, "{l}");
    assert_eq!(resp.text.lines().count(), 1, "one event per response: {l}");
    resp.data
}

/// `show events --follow` on the socket: one response per line, each one event — the
/// backlog's and the live ones alike, with the same fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_events_are_one_event_per_line() {
    use tokio::io::{AsyncWriteExt, BufReader};

    let dir = testkit::TempDir::new("views-follow");
    let t = Target::start(
        IQN,
        vec![
            group(
                [127, 0, 0, 2],
                0,
                iscsi_target::config::AluaState::ActiveOptimized,
            ),
            group(
                [127, 0, 0, 3],
                0,
                iscsi_target::config::AluaState::ActiveOptimized,
            ),
        ],
        &[(1, 4 << 20)],
    )
    .await;
    let cfg = config(&dir, &t.portals[..1]);
    let listeners = mpathd::Listeners::bind(&cfg).await.unwrap();
    let mut d = mpathd::Daemon::start(cfg.clone(), listeners, None).unwrap();
    let c = d.control();
    wait_map_by_wwid(&c, &t.wwid(1), 2, std::time::Duration::from_secs(10)).await;
    let backlog = c.backlog(None).len();
    assert!(backlog >= 3, "a backlog to replay: {backlog}");

    let s = tokio::net::UnixStream::connect(&cfg.control_socket)
        .await
        .unwrap();
    let (r, mut w) = s.into_split();
    w.write_all(b"{\"cmd\":\"show-events\",\"follow\":true,\"last\":100}\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(r).lines();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        k.sort();
        k
    };
    let want = ["detail", "kind", "map", "path", "t_ms", "time"];
    for _ in 0..backlog {
        let e = next_event(&mut lines).await;
        assert_eq!(keys(&e), want, "backlog entry {e}");
    }
    // Live: an operator's failure and reinstatement arrive as the same shape.
    let first = t.portals[0].to_string();
    ask(
        &c,
        Request::FailPath {
            path: first.clone(),
        },
    )
    .await;
    ask(&c, Request::ReinstatePath { path: first }).await;
    let mut operator = 0;
    while operator < 2 {
        let e = next_event(&mut lines).await;
        assert_eq!(keys(&e), want, "live entry {e}");
        if e["kind"] == "operator" {
            operator += 1;
        }
    }
    d.stop().await;
    t.stop().await;
}
