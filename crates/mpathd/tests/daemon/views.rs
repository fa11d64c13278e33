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

/// What each view says of the map and of `path`, taken together.
struct Views {
    /// `show topology`: (dm, checker) of the path.
    topology: (String, String),
    /// `show paths`: (dm, checker) of the path.
    paths: (String, String),
    /// `show path`: (dm, checker).
    path: (String, String),
    /// `show maps`: (state, active paths).
    map: (String, u64),
    /// `show status`: paths by checker state, paths by dm state.
    status: Value,
}

async fn views(c: &mpathd::Control, map: &str, path: &str) -> Views {
    let topo = topology_of(c, map).await;
    let tp = topo["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["paths"].as_array().unwrap().clone())
        .find(|p| p["path"] == path)
        .unwrap_or_else(|| panic!("{path} in {topo}"));
    let pr = paths_of(c, map)
        .await
        .into_iter()
        .find(|p| p["path"] == path)
        .unwrap();
    let one = ask(c, Request::ShowPath { path: path.into() }).await.data;
    let m = map_entry(c, map).await.unwrap();
    let st = ask(c, Request::ShowStatus).await.data;
    let pair = |v: &Value| {
        (
            v["dm_state"].as_str().unwrap().to_string(),
            v["checker_state"].as_str().unwrap().to_string(),
        )
    };
    Views {
        topology: pair(&tp),
        paths: pair(&pr),
        path: pair(&one),
        map: (
            m["state"].as_str().unwrap().to_string(),
            m["active_paths"].as_u64().unwrap(),
        ),
        status: st,
    }
}

/// Wait until every view says `dm`/`checker` of `path` at the same moment (taken twice in
/// a row, so that a change between two views is not taken for a disagreement); the views.
async fn settled(c: &mpathd::Control, map: &str, path: &str, dm: &str) -> Views {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = views(c, map, path).await;
        if v.topology.0 == dm && v.topology == v.paths && v.paths == v.path {
            let again = views(c, map, path).await;
            if again.topology == v.topology {
                return again;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "views of {path} never agreed on {dm}: topology {:?}, paths {:?}, path {:?}",
            v.topology,
            v.paths,
            v.path
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A blackholed path, then every path: `show maps` and `show status` say what `show
/// topology` and `show paths` say — no `ok` and no `ready` for a failed path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_agree_during_a_blackhole() {
    use iscsi_target::Fault;
    // Healthy paths checked once a minute: the failure is found by I/O, not by a check.
    let r = TwoPaths::start("views-agree", IQN, |cfg| {
        cfg.checker_interval_ok = std::time::Duration::from_secs(60);
    })
    .await;
    let (t, c, map) = (&r.t, &r.c, r.map.as_str());
    let dev = r.device();
    let (p0, p1) = (format!("{}/1", t.portals[0]), format!("{}/1", t.portals[1]));
    let v = settled(c, map, &p0, "active").await;
    assert_eq!(v.map, ("ok".into(), 2));
    assert_eq!(v.status["paths_by_checker"]["ready"], 2);

    // One path blackholed; reads find it out.
    t.ctl.set_fault(t.portals[0], Fault::Blackhole).unwrap();
    let reads = reader(dev.clone(), 3);
    let v = settled(c, map, &p0, "failed").await;
    assert_ne!(v.topology.1, "ready", "{:?}", v.topology);
    assert_eq!(v.map, ("degraded (1 failed)".into(), 1), "show maps");
    assert_eq!(v.status["paths_by_dm_state"]["failed"], 1, "{}", v.status);
    assert_eq!(v.status["paths_by_dm_state"]["active"], 1, "{}", v.status);
    assert_eq!(
        v.status["paths_by_checker"]["ready"], 1,
        "show status counts the blackholed path as ready: {}",
        v.status
    );
    let text = ask(c, Request::ShowStatus).await.text;
    assert!(text.contains("paths ready: 1"), "{text}");
    assert!(reads.await.unwrap() > 0);

    // Every path down: no view calls anything ready or ok.
    t.ctl.set_fault(t.portals[1], Fault::Blackhole).unwrap();
    let probe = tokio::spawn({
        let dev = dev.clone();
        async move {
            use workload::BlockClient;
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(30), dev.read(0, 4096)).await;
        }
    });
    let v = settled(c, map, &p1, "failed").await;
    let w = settled(c, map, &p0, "failed").await;
    assert_eq!(v.map.1, 0);
    assert!(
        v.map.0.contains("no path"),
        "show maps with every path down: {:?}",
        v.map
    );
    assert_eq!(w.status["paths_by_dm_state"]["failed"], 2, "{}", w.status);
    assert!(
        w.status["paths_by_checker"].get("ready").is_none(),
        "{}",
        w.status
    );

    // Back: every view agrees again.
    t.ctl.set_fault(t.portals[0], Fault::None).unwrap();
    t.ctl.set_fault(t.portals[1], Fault::None).unwrap();
    settled(c, map, &p0, "active").await;
    settled(c, map, &p1, "active").await;
    // A reinstated path may be `i/o pending` until its checker confirms it: if so, in
    // every view, and `show status` counts it so.
    wait_for(
        std::time::Duration::from_secs(10),
        "both paths active, the same in every view",
        || async {
            let (a, b) = (views(c, map, &p0).await, views(c, map, &p1).await);
            let agree = a.topology == a.paths
                && a.paths == a.path
                && b.topology == b.paths
                && b.paths == b.path;
            let mut tally = std::collections::BTreeMap::new();
            for (_, chk) in [&a.topology, &b.topology] {
                *tally.entry(chk.clone()).or_insert(0u64) += 1;
            }
            agree
                && a.topology.0 == "active"
                && b.topology.0 == "active"
                && b.map == ("ok".into(), 2)
                && tally
                    .iter()
                    .all(|(k, n)| b.status["paths_by_checker"][k] == *n)
        },
    )
    .await;
    let _ = probe.await;
    r.stop().await;
}

/// `show paths format` / `show maps format`: multipathd's wildcards, a header line, one
/// aligned line per row; `raw` leaves the header out; a wildcard with no meaning here or
/// an unknown one is refused with the list of known ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_maps_in_multipathds_formats() {
    let r = TwoPaths::start("views-format", IQN, |_| {}).await;
    let (t, c, map) = (&r.t, &r.c, r.map.as_str());
    let wwid = t.wwid(1);
    let fmt = |format: &str, raw| Request::ShowPathsFormat {
        format: format.into(),
        raw,
    };

    let p = ask(c, fmt("%d %w %t %T %p %o %m %s %P %L", false)).await;
    let lines: Vec<&str> = p.text.lines().collect();
    assert_eq!(lines.len(), 3, "{}", p.text);
    let head: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        head,
        [
            "dev",
            "uuid",
            "dm_st",
            "chk_st",
            "pri",
            "dev_st",
            "multipath",
            "vend/prod/rev",
            "protocol",
            "LUN",
            "hex"
        ],
        "{}",
        p.text
    );
    for (line, portal) in lines[1..].iter().zip(&t.portals) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], format!("{portal}/1"), "{line}");
        assert_eq!(cols[1], wwid);
        assert_eq!(cols[2..7], ["active", "ready", "50", "running", map]);
        assert!(cols[7].starts_with("MPATH,VIRTUAL-DISK,"), "{line}");
        assert_eq!(cols[8..], ["iscsi", "0x0001"]);
    }
    // Columns line up: the second column starts at the same place on every line.
    let at: Vec<usize> = lines
        .iter()
        .map(|l| {
            l.find(" uuid")
                .unwrap_or_else(|| l.find(&wwid).unwrap() - 1)
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] == w[1]), "{}", p.text);
    // The data is `show paths`'s.
    assert_eq!(p.data["paths"].as_array().unwrap().len(), 2);
    assert_eq!(p.data["paths"][0]["dm_state"], "active");

    let raw = ask(c, fmt("%d|%T", true)).await;
    assert_eq!(
        raw.text,
        format!("{}/1|ready\n{}/1|ready\n", t.portals[0], t.portals[1])
    );
    let pct = ask(c, fmt("%d 100%%", true)).await;
    assert!(
        pct.text.lines().all(|l| l.ends_with(" 100%")),
        "{}",
        pct.text
    );

    let m = ask(
        c,
        Request::ShowMapsFormat {
            format: "%n %w %d %N %t %F %Q %S %f %h %v %p".into(),
            raw: false,
        },
    )
    .await;
    let lines: Vec<&str> = m.text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", m.text);
    assert!(lines[0].starts_with("name "), "{}", m.text);
    for h in [
        "uuid", "sysfs", "paths", "dm-st", "failback", "queueing", "size",
    ] {
        assert!(lines[0].contains(h), "{h} in {}", lines[0]);
    }
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cols,
        [
            map,
            wwid.as_str(),
            "-",
            "2",
            "ok",
            "immediate",
            "60s",
            "4M",
            "1",
            "queue_if_no_path",
            "1",
            "alua",
            "MPATH",
            "VIRTUAL-DISK"
        ],
        "{}",
        m.text
    );
    assert_eq!(m.data["maps"][0]["name"], map);

    // Refusals name the wildcard and list the known ones.
    let no = c.handle(fmt("%d %D", false)).await;
    assert!(!no.ok);
    assert!(no.text.contains("%D has no meaning"), "{}", no.text);
    assert!(
        no.text.contains("%w uuid") && no.text.contains("%T chk_st"),
        "{}",
        no.text
    );
    let no = c.handle(fmt("%d %Y", false)).await;
    assert!(!no.ok);
    assert!(no.text.contains("unknown wildcard %Y"), "{}", no.text);
    let no = c
        .handle(Request::ShowMapsFormat {
            format: "%n %G".into(),
            raw: false,
        })
        .await;
    assert!(!no.ok);
    assert!(
        no.text.contains("%G has no meaning for mpath's maps"),
        "{}",
        no.text
    );
    assert!(no.text.contains("%n name"), "{}", no.text);
    r.stop().await;
}

/// `show sessions`: iscsiadm's one line per session, and with `verbose` its `-P 3` view —
/// ISID, TSIH, state, every negotiated parameter, logins and the last failure, the paths and
/// maps the session serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_their_negotiated_parameters() {
    use iscsi_target::Fault;
    let r = TwoPaths::start("views-sessions", IQN, |cfg| {
        cfg.portals[0].header_digest = true;
    })
    .await;
    let (t, c, map) = (&r.t, &r.c, r.map.as_str());

    let s = ask(c, Request::ShowSessions { verbose: false }).await;
    let lines: Vec<&str> = s.text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", s.text);
    for (l, p) in lines.iter().zip(&t.portals) {
        assert!(l.starts_with("tcp: ["), "{l}");
        assert!(l.contains(&format!("] {p},")), "{l}");
        assert!(l.ends_with(&format!(" {IQN} (running)")), "{l}");
    }
    let v = ask(c, Request::ShowSessions { verbose: true }).await;
    for w in [
        "ISID: 0x",
        "iSCSI Session State: running",
        "HeaderDigest: CRC32C",
        "DataDigest: None",
        "MaxRecvDataSegmentLength: ",
        "MaxXmitDataSegmentLength: ",
        "FirstBurstLength: ",
        "MaxBurstLength: ",
        "ImmediateData: ",
        "InitialR2T: ",
        "MaxOutstandingR2T: ",
        "Logins: 1, connection failures: 0, last failure: -",
        &format!("LUN 1: path {}/1, map {map}, active ready", t.portals[0]),
        &format!("LUN 1: path {}/1, map {map}, active ready", t.portals[1]),
    ] {
        assert!(v.text.contains(w), "{w:?} in\n{}", v.text);
    }
    let sessions = v.data["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    for s in sessions {
        assert_eq!(s["target"], IQN);
        assert_eq!(s["state"], "running");
        assert!(s["tsih"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["isid"].as_str().unwrap().len(), 14, "{s}");
        let n = &s["negotiated"];
        assert_eq!(n["header_digest"], "CRC32C", "{n}");
        assert_eq!(n["data_digest"], "None");
        for k in [
            "max_recv_data_segment_length",
            "max_xmit_data_segment_length",
            "first_burst_length",
            "max_burst_length",
            "max_outstanding_r2t",
        ] {
            assert!(n[k].as_u64().unwrap() > 0, "{k}: {n}");
        }
        assert!(
            n["first_burst_length"].as_u64() <= n["max_burst_length"].as_u64(),
            "{n}"
        );
        assert!(n["immediate_data"].is_boolean() && n["initial_r2t"].is_boolean());
        assert_eq!(s["paths"][0]["map"], map);
        assert_eq!(s["logins"], 1);
    }
    // The two sessions have their own ISIDs.
    assert_ne!(sessions[0]["isid"], sessions[1]["isid"]);

    // A blackhole ends the first session's connection; it logs in again once it clears:
    // two logins, and the failure is said.
    t.ctl.set_fault(t.portals[0], Fault::Blackhole).unwrap();
    read_some(&r.device(), 4).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    t.ctl.set_fault(t.portals[0], Fault::None).unwrap();
    let first = t.portals[0].to_string();
    wait_for(
        std::time::Duration::from_secs(20),
        "the first session logged in again, its failure said",
        || async {
            let v = ask(c, Request::ShowSessions { verbose: true }).await;
            v.data["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["portal"] == first)
                .is_some_and(|s| {
                    s["logins"] == 2
                        && s["state"] == "running"
                        && s["connection_failures"] == 1
                        && s["last_failure"]["reason"].as_str().is_some()
                })
                && v.text
                    .contains("Logins: 2, connection failures: 1, last failure: ")
        },
    )
    .await;
    r.stop().await;
}

/// `logout` / `login` of one portal (or one target of it) at run time: its paths leave
/// their map and come back, reads go on all along; a portal that does not answer is
/// refused and leaves no trace; logging out what is not logged in is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_logout_of_one_portal() {
    let r = TwoPaths::start("views-login", IQN, |_| {}).await;
    let (t, c, map) = (&r.t, &r.c, r.map.as_str());
    let second = t.portals[1].to_string();
    let sessions = |c: &mpathd::Control| {
        let c = c.clone();
        async move {
            ask(&c, Request::ShowSessions { verbose: false }).await.data["sessions"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert!(Request::Login {
        portal: second.clone(),
        target: None,
        chap: None,
        mutual_chap: None,
    }
    .mutates());
    assert!(Request::Logout {
        portal: second.clone(),
        target: None
    }
    .mutates());

    let reads = reader(r.device(), 4);
    let out = ask(
        c,
        Request::Logout {
            portal: second.clone(),
            target: None,
        },
    )
    .await;
    assert!(
        out.text
            .contains(&format!("logged out of {second}: 1 session(s), 1 path(s)")),
        "{}",
        out.text
    );
    assert_eq!(active_paths(c, map).await, 1);
    assert_eq!(paths_of(c, map).await.len(), 1);
    assert_eq!(sessions(c).await, 1);
    let again = c
        .handle(Request::Logout {
            portal: second.clone(),
            target: None,
        })
        .await;
    assert!(!again.ok);
    assert!(
        again.text.contains(&format!("no session to {second}")),
        "{}",
        again.text
    );

    // Back, for this target only.
    let back = ask(
        c,
        Request::Login {
            portal: second.clone(),
            target: Some(IQN.into()),
            chap: None,
            mutual_chap: None,
        },
    )
    .await;
    assert!(
        back.text.contains(&format!("logged in to {second}: {IQN}")),
        "{}",
        back.text
    );
    wait_for(
        std::time::Duration::from_secs(10),
        "the path back in its map",
        || async { active_paths(c, map).await == 2 },
    )
    .await;
    assert!(reads.await.expect("no read failed") > 0);

    // One target of the configured portal: its path leaves, the other stays.
    let first = t.portals[0].to_string();
    ask(
        c,
        Request::Logout {
            portal: first.clone(),
            target: Some(IQN.into()),
        },
    )
    .await;
    assert_eq!(active_paths(c, map).await, 1);
    let left = paths_of(c, map).await;
    assert_eq!(left[0]["path"], format!("{second}/1"));
    let ev = ask(
        c,
        Request::ShowEvents {
            follow: false,
            last: None,
        },
    )
    .await;
    assert!(
        ev.text.contains("logged out by an operator") && ev.text.contains("logout "),
        "{}",
        ev.text
    );

    // A portal that does not answer: refused, and nothing left configured.
    let dead = "127.0.0.1:9".to_string();
    let no = c
        .handle(Request::Login {
            portal: dead.clone(),
            target: None,
            chap: None,
            mutual_chap: None,
        })
        .await;
    assert!(!no.ok);
    assert!(
        no.text.contains("127.0.0.1:9 does not answer"),
        "{}",
        no.text
    );
    let cfg = ask(c, Request::ShowConfig).await;
    assert!(!cfg.text.contains(&dead), "{}", cfg.text);
    let status = ask(c, Request::ShowStatus).await;
    assert!(!status.text.contains("unreachable"), "{}", status.text);
    let bad = c
        .handle(Request::Login {
            portal: "not-a-portal".into(),
            target: None,
            chap: None,
            mutual_chap: None,
        })
        .await;
    assert!(
        !bad.ok && bad.text.contains("is not a portal"),
        "{}",
        bad.text
    );
    r.stop().await;
}

/// Every reply's data is exactly its type in `mpathd::reply`: parsed and serialized again
/// it is the same JSON (no field the type does not name, none it names missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_is_its_type() {
    use mpathd::persist::PersistOp;
    use mpathd::reply;
    use serde::{de::DeserializeOwned, Serialize};

    async fn typed<T: DeserializeOwned + Serialize>(c: &mpathd::Control, r: Request) -> T {
        let resp = ask(c, r.clone()).await;
        let parsed: T = resp
            .parse()
            .unwrap_or_else(|e| panic!("{r:?}: {e}\n{}", resp.data));
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            resp.data,
            "{r:?}: the type and the reply differ"
        );
        parsed
    }

    let r = TwoPaths::start("views-typed", IQN, |_| {}).await;
    let (t, c, map) = (&r.t, &r.c, r.map.clone());
    let p0 = format!("{}/1", t.portals[0]);

    let topo: reply::Topology = typed(c, Request::ShowTopology).await;
    assert_eq!(topo.maps.len(), 1);
    assert_eq!(
        topo.maps[0]
            .groups
            .iter()
            .map(|g| g.paths.len())
            .sum::<usize>(),
        2
    );
    let paths: reply::Paths = typed(c, Request::ShowPaths).await;
    assert_eq!(paths.paths.len(), 2);
    let maps: reply::Maps = typed(c, Request::ShowMaps).await;
    assert_eq!(maps.maps[0].name, map);
    let status: reply::Status = typed(c, Request::ShowStatus).await;
    assert_eq!((status.maps, status.paths), (1, 2));
    let stats: reply::Stats = typed(c, Request::ShowStats).await;
    assert_eq!(stats.maps[0].map, map);
    let sessions: reply::Sessions = typed(c, Request::ShowSessions { verbose: true }).await;
    assert_eq!(sessions.sessions.len(), 2);
    assert!(sessions.sessions.iter().all(|s| s.negotiated.is_some()));
    let one: reply::MapRecord = typed(c, Request::ShowMap { map: map.clone() }).await;
    assert_eq!(
        (one.topology.name.as_str(), one.active_paths),
        (map.as_str(), 2)
    );
    let path: reply::PathRecord = typed(c, Request::ShowPath { path: p0.clone() }).await;
    assert_eq!(path.map.as_deref(), Some(map.as_str()));
    let _: reply::Config = typed(c, Request::ShowConfig).await;
    let keys: reply::PrKeys = typed(
        c,
        Request::Persist {
            map: map.clone(),
            op: PersistOp::ReadKeys,
        },
    )
    .await;
    assert!(keys.keys.is_empty());
    let _: reply::PrCapabilities = typed(
        c,
        Request::Persist {
            map: map.clone(),
            op: PersistOp::Capabilities,
        },
    )
    .await;
    let _: reply::PathDone = typed(c, Request::FailPath { path: p0.clone() }).await;
    let _: reply::PathDone = typed(c, Request::ReinstatePath { path: p0.clone() }).await;
    let events: reply::Events = typed(
        c,
        Request::ShowEvents {
            follow: false,
            last: None,
        },
    )
    .await;
    let kinds: Vec<mpathd::EventKind> = events.events.iter().map(|e| e.kind).collect();
    for k in [
        mpathd::EventKind::DaemonStarted,
        mpathd::EventKind::MapCreated,
        mpathd::EventKind::Operator,
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    let no = c
        .handle(Request::ShowMap {
            map: "nosuch".into(),
        })
        .await;
    let err: reply::Error = serde_json::from_value(no.data).unwrap();
    assert!(err.error.contains("no map"), "{}", err.error);
}

/// `login --chap-user`: a target that wants CHAP refuses a login without it or with the
/// wrong secret (nothing left behind), and takes the right one; the secret is never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_chap() {
    use iscsi_target::config::Chap;
    use mpathd::control::ChapSecret;
    const CHAP_IQN: &str = "iqn.2026-01.io.mpath:views-chap";
    let dir = testkit::TempDir::new("views-chap");
    let t = Target::start_tuned(
        CHAP_IQN,
        vec![group(
            [127, 0, 0, 4],
            0,
            iscsi_target::AluaState::ActiveOptimized,
        )],
        &[(
            1,
            iscsi_target::backend::BackingSpec::parse("mem:1048576").unwrap(),
        )],
        |spec| {
            spec.chap = Some(Chap {
                user: "alice".into(),
                secret: "a-12-byte-secret".into(),
            })
        },
    )
    .await;
    let (mut d, c) = start(config(&dir, &[]));
    let portal = t.portals[0].to_string();
    let login = |chap: Option<ChapSecret>| Request::Login {
        portal: portal.clone(),
        target: None,
        chap,
        mutual_chap: None,
    };
    let secret = |s: &str| {
        Some(ChapSecret {
            user: "alice".into(),
            secret: s.into(),
        })
    };
    assert!(!format!("{:?}", login(secret("a-12-byte-secret"))).contains("a-12-byte"));

    for (chap, why) in [
        (None, "without CHAP"),
        (secret("wrong-secret-00"), "wrong secret"),
    ] {
        let no = c.handle(login(chap)).await;
        assert!(!no.ok, "{why}: {}", no.text);
        assert!(
            no.text.contains("refused") && no.text.contains("Authentication failure"),
            "{why}: {}",
            no.text
        );
        let cfg = ask(&c, Request::ShowConfig).await;
        assert!(!cfg.text.contains(&portal), "{why}: {}", cfg.text);
        let s = ask(&c, Request::ShowSessions { verbose: false }).await;
        assert_eq!(s.data["sessions"].as_array().unwrap().len(), 0, "{why}");
    }

    let ok = ask(&c, login(secret("a-12-byte-secret"))).await;
    assert!(ok.text.contains(CHAP_IQN), "{}", ok.text);
    wait_map_by_wwid(&c, &t.wwid(1), 1, std::time::Duration::from_secs(10)).await;
    let cfg = ask(&c, Request::ShowConfig).await;
    assert!(cfg.text.contains("user = \"alice\""), "{}", cfg.text);
    assert!(!cfg.text.contains("a-12-byte-secret"), "{}", cfg.text);

    let mutual_alone = c
        .handle(Request::Login {
            portal: portal.clone(),
            target: None,
            chap: None,
            mutual_chap: secret("another-secret"),
        })
        .await;
    assert!(!mutual_alone.ok);
    assert!(
        mutual_alone.text.contains("needs CHAP"),
        "{}",
        mutual_alone.text
    );
    d.stop().await;
    t.stop().await;
}
