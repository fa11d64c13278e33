//! What operators see: the Prometheus scrape and the `show` commands, text and JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use iscsi_target::config::AluaState::ActiveOptimized as AO;
use mpathd::{Daemon, Listeners, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const IQN: &str = "iqn.2026-01.io.mpath:observe";

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parse the text format strictly enough to catch malformed output: every sample line is
/// `name{labels} value`, every family is declared with HELP and TYPE before its samples
/// and its samples are contiguous.
fn parse(body: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut types = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{line}");
            helps.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap(), it.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "family declared twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (name, labels, value) = match line.find('{') {
            Some(i) => {
                let j = line.rfind('}').expect("closing brace");
                (&line[..i], &line[i + 1..j], line[j + 1..].trim())
            }
            None => {
                let (n, v) = line.split_once(' ').expect("a value");
                (n, "", v.trim())
            }
        };
        assert!(valid_name(name), "{line}");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let mut lm = BTreeMap::new();
        if !labels.is_empty() {
            for kv in split_labels(labels) {
                let (k, v) = kv.split_once('=').expect("k=v");
                assert!(valid_name(k), "{line}");
                assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                lm.insert(k.to_string(), v[1..v.len() - 1].to_string());
            }
        }
        // The family: histograms' samples carry a suffix.
        let fam = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name)
            .to_string();
        assert!(types.contains_key(&fam), "no TYPE for {name}");
        assert!(helps.contains(&fam), "no HELP for {name}");
        if current.as_deref() != Some(&fam) {
            assert!(done.insert(fam.clone()), "family {fam} is split");
            current = Some(fam);
        }
        samples.push((name.to_string(), lm, v));
    }
    (samples, types)
}

fn split_labels(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quoted, mut escaped) = (String::new(), false, false);
    for ch in s.chars() {
        match ch {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `le` values of every latency histogram: 100 µs to 10 s, then +Inf.
const LE: [&str; 9] = [
    "0.0001", "0.00025", "0.001", "0.0025", "0.01", "0.1", "1", "10", "+Inf",
];

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The exposition of known latencies, without a daemon: well-formed, buckets cumulative up
/// to `+Inf` == `_count`, `_sum` exact, one series per operation seen, label values escaped,
/// the gzip form the same text.
#[test]
fn exposition_of_known_latencies_is_exact() {
    use mpath_engine::{Histogram, IoStats, LatencyHistogram};
    use mpathd::metrics::{encode, gzip, MapMetrics, PathMetrics, Scrape};
    use std::io::Read as _;

    let hist = |ns: &[u64]| {
        let h = LatencyHistogram::default();
        for &n in ns {
            h.record_ns(n);
        }
        h.snapshot()
    };
    // Reads: two below 100 µs, one in (100, 250] µs, one in (2.5, 10] ms, one above 10 s.
    // Writes: two at or below 1 ms (the bound is inclusive), one in (2.5, 10] ms.
    let reads = [30_000, 50_000, 120_000, 7_000_000, 12_000_000_000];
    let writes = [999_999, 1_000_000, 2_600_000];
    let by_op = [hist(&reads), hist(&writes), Histogram::default()];
    let mut latency = Histogram::default();
    for h in &by_op {
        latency.add(h);
    }
    let stats = IoStats {
        ios: latency.count(),
        bytes: 8 * 4096,
        latency,
        by_op,
        ..IoStats::default()
    };
    let name = "odd \"map\"\\x";
    let scrape = Scrape {
        maps: vec![MapMetrics {
            name: name.into(),
            paths: vec![PathMetrics {
                name: "10.0.0.1:3260/1".into(),
                up: true,
                priority: 50,
                stats: stats.clone(),
                ..PathMetrics::default()
            }],
            stats,
            ..MapMetrics::default()
        }],
    };
    let text = encode(std::sync::Arc::new(scrape));
    let (samples, types) = parse(&text);
    assert_eq!(types["mpath_path_latency_seconds"], "histogram");
    assert_eq!(types["mpath_map_latency_seconds"], "histogram");
    assert_eq!(types["mpath_path_ios_total"], "counter");
    let escaped = "odd \\\"map\\\"\\\\x";
    assert!(
        samples.iter().all(|(_, l, _)| l["map"] == escaped),
        "{text}"
    );

    let series = |name: &str, op: Option<&str>| -> Vec<(String, f64)> {
        samples
            .iter()
            .filter(|(n, l, _)| n == name && l.get("op").map(String::as_str) == op)
            .map(|(_, l, v)| (l.get("le").cloned().unwrap_or_default(), *v))
            .collect()
    };
    let check = |fam: &str, op: Option<&str>, ns: &[u64], cumulative: [f64; 9]| {
        let buckets = series(&format!("{fam}_bucket"), op);
        let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
        assert_eq!(les, LE, "{fam} {op:?}\n{text}");
        let counts: Vec<f64> = buckets.iter().map(|(_, v)| *v).collect();
        assert_eq!(counts, cumulative, "{fam} {op:?}\n{text}");
        let count = series(&format!("{fam}_count"), op);
        assert_eq!(count.len(), 1);
        assert_eq!(count[0].1, ns.len() as f64);
        assert_eq!(count[0].1, *counts.last().unwrap());
        let sum = series(&format!("{fam}_sum"), op);
        assert_eq!(sum.len(), 1);
        assert_eq!(sum[0].1, ns.iter().sum::<u64>() as f64 / 1e9, "{text}");
    };
    let all: Vec<u64> = reads.iter().chain(&writes).copied().collect();
    check(
        "mpath_path_latency_seconds",
        None,
        &all,
        [2., 3., 5., 5., 7., 7., 7., 7., 8.],
    );
    let read = Some("read");
    check(
        "mpath_map_latency_seconds",
        read,
        &reads,
        [2., 3., 3., 3., 4., 4., 4., 4., 5.],
    );
    let write = Some("write");
    check(
        "mpath_map_latency_seconds",
        write,
        &writes,
        [0., 0., 2., 2., 3., 3., 3., 3., 3.],
    );
    // The read sum is 12.0072 s, to the nanosecond.
    let read_sum = series("mpath_map_latency_seconds_sum", Some("read"))[0].1;
    assert!((read_sum - 12.0072).abs() < 1e-12, "{read_sum}");
    // An operation never seen has no series.
    assert!(series("mpath_map_latency_seconds_count", Some("other")).is_empty());

    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gzip(&text)[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, text);
}

/// A daemon's scrape at every size the bench measures: well-formed.
#[test]
fn synthetic_scrapes_are_well_formed() {
    for (maps, paths) in [(1, 1), (32, 2), (30, 4)] {
        let s = mpathd::metrics::Scrape::synthetic(maps, paths);
        let text = mpathd::metrics::encode(std::sync::Arc::new(s));
        let (samples, _) = parse(&text);
        // Per path 10 samples and a histogram of 11 (9 buckets, sum, count), per map 11 and
        // three histograms.
        assert_eq!(
            samples.len(),
            maps * paths * (10 + 11) + maps * (11 + 3 * 11)
        );
        // Compressed as it is written: the same text.
        let gz = mpathd::metrics::encode_gzip(std::sync::Arc::new(
            mpathd::metrics::Scrape::synthetic(maps, paths),
        ));
        let mut unzipped = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped)
            .unwrap();
        assert_eq!(unzipped, text);
        // Every engine bucket exposed: 18 of them.
        let s = std::sync::Arc::new(mpathd::metrics::Scrape::synthetic(maps, paths));
        let text = mpathd::metrics::encode_with_bounds(s, &mpath_engine::LATENCY_BOUNDS_NS);
        let (samples, _) = parse(&text);
        assert_eq!(
            samples.len(),
            maps * paths * (10 + 20) + maps * (11 + 3 * 20)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_is_well_formed_and_complete() {
    let dir = testkit::TempDir::new("metrics");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 4 << 20)],
    )
    .await;
    let mut cfg = config(&dir, &t.portals[..1]);
    cfg.policy.flap = None;
    let ml = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = ml.local_addr().unwrap();
    let listeners = Listeners {
        metrics: Some(ml),
        ..Listeners::default()
    };
    let mut d = Daemon::start(cfg, listeners, None).unwrap();
    let c = d.control();
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    read_some(&device(&d, &map), 40).await;
    // Both paths fail (the LU goes offline) and come back: failures, failovers and time
    // without a usable path.
    t.ctl.set_lun_online(IQN, 1, false).unwrap();
    wait_for(Duration::from_secs(5), "no usable path", || async {
        active_paths(&c, &map).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.ctl.set_lun_online(IQN, 1, true).unwrap();
    wait_for(Duration::from_secs(5), "both paths back", || async {
        active_paths(&c, &map).await == 2
    })
    .await;

    let body = scrape(maddr).await;
    let (samples, types) = parse(&body);
    let get = |name: &str, path: Option<&str>| -> Vec<f64> {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.get("map") == Some(&map)
                    && path.is_none_or(|p| l.get("path").is_some_and(|x| x.starts_with(p)))
            })
            .map(|(_, _, v)| *v)
            .collect()
    };
    let one = |name: &str, path: Option<&str>| -> f64 {
        let v = get(name, path);
        assert_eq!(v.len(), 1, "{name} {path:?}: {v:?}\n{body}");
        v[0]
    };
    for f in [
        "mpath_path_up",
        "mpath_path_failed",
        "mpath_path_priority",
        "mpath_map_queued",
        "mpath_map_paths",
    ] {
        assert_eq!(types[f], "gauge", "{f}");
    }
    for f in [
        "mpath_path_ios_total",
        "mpath_path_bytes_total",
        "mpath_path_errors_total",
        "mpath_path_failures_total",
        "mpath_map_failovers_total",
        "mpath_map_no_path_seconds_total",
    ] {
        assert_eq!(types[f], "counter", "{f}");
    }
    assert_eq!(types["mpath_path_latency_seconds"], "histogram");
    let (p0, p1) = (t.portals[0].to_string(), t.portals[1].to_string());
    for p in [&p0, &p1] {
        assert_eq!(one("mpath_path_up", Some(p)), 1.0);
        assert_eq!(one("mpath_path_failed", Some(p)), 0.0);
        assert!(one("mpath_path_failures_total", Some(p)) >= 1.0);
        // Histogram: cumulative buckets ending in +Inf == count.
        let buckets: Vec<(String, f64)> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == "mpath_path_latency_seconds_bucket"
                    && l["path"].starts_with(p.as_str())
                    && l["map"] == map
            })
            .map(|(_, l, v)| (l["le"].clone(), *v))
            .collect();
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert_eq!(buckets.last().unwrap().0, "+Inf");
        assert_eq!(
            buckets.last().unwrap().1,
            one("mpath_path_latency_seconds_count", Some(p))
        );
        assert_eq!(
            one("mpath_path_latency_seconds_count", Some(p)),
            one("mpath_path_ios_total", Some(p))
        );
        assert!(one("mpath_path_latency_seconds_sum", Some(p)) > 0.0);
        // The storage-sized buckets.
        let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
        assert_eq!(les, LE, "{body}");
    }
    let ios: f64 = get("mpath_path_ios_total", None).iter().sum();
    assert!(ios >= 40.0, "{body}");
    assert!(get("mpath_path_bytes_total", None).iter().sum::<f64>() >= 40.0 * 4096.0);
    assert!(one("mpath_map_ios_total", None) >= 40.0);
    assert_eq!(one("mpath_map_queued", None), 0.0);
    assert_eq!(one("mpath_map_paths", None), 2.0);
    assert_eq!(one("mpath_map_active_paths", None), 2.0);
    assert!(one("mpath_map_failovers_total", None) >= 2.0);
    assert!(one("mpath_map_no_path_seconds_total", None) > 0.0);
    // The map's latency per operation: only reads were issued here.
    let ops: BTreeSet<String> = samples
        .iter()
        .filter(|(n, l, _)| n == "mpath_map_latency_seconds_count" && l["map"] == map)
        .map(|(_, l, _)| l["op"].clone())
        .collect();
    assert!(ops.contains("read"), "{ops:?}");
    assert!(
        ops.iter()
            .all(|o| ["read", "write", "other"].contains(&o.as_str())),
        "{ops:?}"
    );
    let map_count: f64 = get("mpath_map_latency_seconds_count", None).iter().sum();
    assert_eq!(map_count, one("mpath_map_ios_total", None));
    assert!(map_count >= 40.0);
    // The sum is exact: the mean lies between the bounds of the lowest and the highest
    // bucket that counted anything (an estimate from midpoints would not have to).
    for op in &ops {
        let series = |suffix: &str| -> Vec<(BTreeMap<String, String>, f64)> {
            samples
                .iter()
                .filter(|(n, l, _)| {
                    *n == format!("mpath_map_latency_seconds{suffix}")
                        && l["map"] == map
                        && l["op"] == *op
                })
                .map(|(_, l, v)| (l.clone(), *v))
                .collect()
        };
        let count = series("_count")[0].1;
        let sum = series("_sum")[0].1;
        let buckets = series("_bucket");
        let le = |l: &BTreeMap<String, String>| -> f64 {
            match l["le"].as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            }
        };
        let mut prev = (0.0, 0.0);
        let (mut lowest, mut highest) = (None, 0.0);
        for (l, cum) in &buckets {
            if *cum > prev.1 {
                lowest.get_or_insert(prev.0);
                highest = le(l);
            }
            prev = (le(l), *cum);
        }
        let mean = sum / count;
        assert!(
            mean >= lowest.unwrap() && mean <= highest,
            "{op}: mean {mean} outside [{lowest:?}, {highest}]\n{body}"
        );
    }

    // Compressed when the client accepts it, as Prometheus does: the same families.
    let mut s = tokio::net::TcpStream::connect(maddr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..at]).to_string();
    assert!(head.contains("Content-Encoding: gzip"), "{head}");
    let mut unzipped = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&resp[at + 4..]),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(parse(&unzipped).1, types);

    // Anything else: 404.
    let mut s = tokio::net::TcpStream::connect(maddr).await.unwrap();
    s.write_all(b"GET /other HTTP/1.1\r\n\r\n").await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    d.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_answer_in_text_and_json() {
    const IQN2: &str = "iqn.2026-01.io.mpath:show";
    let dir = testkit::TempDir::new("show");
    let t = Target::start(
        IQN2,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 4 << 20)],
    )
    .await;
    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    let wwid = t.wwid(1);
    let map = wait_map_by_wwid(&c, &wwid, 2, Duration::from_secs(10)).await;
    assert_eq!(map, "mpatha");
    read_some(&device(&d, &map), 20).await;
    let (p0, p1) = (t.portals[0].to_string(), t.portals[1].to_string());

    // show paths
    let r = ask(&c, Request::ShowPaths).await;
    let header = r.text.lines().next().unwrap();
    for col in [
        "path",
        "target",
        "pri",
        "dm_st",
        "chk_st",
        "conn_st",
        "next_check",
        "map",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let rows = r.data["paths"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", r.text);
    for (row, p) in rows.iter().zip([&p0, &p1]) {
        assert_eq!(row["path"], format!("{p}/1"));
        assert_eq!(row["target"], IQN2);
        assert_eq!(row["priority"], 50);
        assert_eq!(row["dm_state"], "active");
        assert_eq!(row["checker_state"], "ready");
        assert_eq!(row["connection"], "running");
        assert_eq!(row["map"], map);
        assert!(r.text.contains(&format!("{p}/1")), "{}", r.text);
    }

    // show maps
    let r = ask(&c, Request::ShowMaps).await;
    let m = &r.data["maps"][0];
    assert_eq!(m["name"], map);
    assert_eq!(m["wwid"], wwid);
    assert_eq!(m["size"], 4 << 20);
    assert_eq!(m["block_size"], 512);
    assert_eq!(
        (m["active_paths"].clone(), m["paths"].clone()),
        (2.into(), 2.into())
    );
    assert_eq!(m["state"], "ok");
    let line = r.text.lines().find(|l| l.starts_with(&map)).unwrap();
    for w in [wwid.as_str(), "4M", "2/2", "ok"] {
        assert!(line.contains(w), "{line}");
    }

    // show status
    let r = ask(&c, Request::ShowStatus).await;
    assert!(
        r.text.contains("1 maps, 2 paths, 2/2 sessions up"),
        "{}",
        r.text
    );
    assert!(r.text.contains("paths ready: 2"), "{}", r.text);
    assert_eq!(r.data["maps"], 1);
    assert_eq!(r.data["sessions_up"], 2);
    assert_eq!(r.data["paths_by_checker"]["ready"], 2);

    // show stats
    let r = ask(&c, Request::ShowStats).await;
    let s = &r.data["maps"][0];
    assert_eq!(s["map"], map);
    assert!(s["ios"].as_u64().unwrap() >= 20, "{s}");
    assert_eq!(
        s["bytes"].as_u64().unwrap(),
        s["ios"].as_u64().unwrap() * 4096
    );
    assert_eq!(s["errors"], 0);
    assert_eq!(s["paths"].as_array().unwrap().len(), 2);
    assert!(r.text.starts_with(&format!("{map}: ios ")), "{}", r.text);
    assert!(r.text.contains("p99"), "{}", r.text);
    // Latency: quantiles interpolated (said so), the mean exact, reads apart.
    assert!(r.text.contains(" mean "), "{}", r.text);
    assert!(r.text.contains("\n  read: ios "), "{}", r.text);
    assert!(
        r.text.contains("latency: mean exact; p50/p99 interpolated"),
        "{}",
        r.text
    );
    assert!(r.data["latency_resolution"]
        .as_str()
        .unwrap()
        .contains("50us"));
    let l = &s["latency"];
    assert_eq!(l["count"], s["ios"]);
    assert_eq!(s["latency_by_op"]["read"]["count"], s["ios"]);
    assert_eq!(s["latency_by_op"]["write"]["count"], 0);
    let (p50, p99, mean) = (
        l["p50_us"].as_f64().unwrap(),
        l["p99_us"].as_f64().unwrap(),
        l["mean_us"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && mean > 0.0, "{l}");
    let sum_us = l["sum_seconds"].as_f64().unwrap() * 1e6;
    assert!(
        (mean * l["count"].as_f64().unwrap() - sum_us).abs() <= sum_us * 1e-3 + 1.0,
        "{l}"
    );
    for p in s["paths"].as_array().unwrap() {
        assert_eq!(p["latency"]["count"], p["ios"], "{p}");
    }

    // show config: the effective values, parseable again.
    let r = ask(&c, Request::ShowConfig).await;
    assert!(r.text.contains("checker = \"tur\""), "{}", r.text);
    assert!(
        r.text.contains("checker_interval = \"200ms\""),
        "{}",
        r.text
    );
    assert!(
        r.text.contains(&format!("address = \"{p0}\"")),
        "{}",
        r.text
    );
    assert_eq!(r.data["text"], r.text);
    assert_eq!(r.data["config"]["defaults"]["checker"], "tur");
    assert_eq!(r.data["config"]["portal"][0]["address"], p0);
    // It is a configuration file the daemon reads back.
    mpathd::config::parse_str(&r.text, None).unwrap();

    // show topology
    let r = ask(&c, Request::ShowTopology).await;
    assert!(
        r.text
            .starts_with(&format!("{map} ({wwid}) MPATH,VIRTUAL-DISK")),
        "{}",
        r.text
    );
    assert!(r.text.contains("size=4M"), "{}", r.text);
    assert_eq!(
        r.data["maps"][0]["groups"][0]["paths"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // An operator fails a path: said in show paths, the timeline, and refused twice.
    ask(&c, Request::FailPath { path: p1.clone() }).await;
    let row = paths_of(&c, &map)
        .await
        .into_iter()
        .find(|p| p["path"] == format!("{p1}/1"))
        .unwrap();
    assert_eq!(row["dm_state"], "failed");
    assert_eq!(row["note"], "failed by operator");
    ask(&c, Request::ReinstatePath { path: p1.clone() }).await;
    assert_eq!(active_paths(&c, &map).await, 2);

    // Errors are answers, not panics.
    let e = c
        .handle(Request::FailPath {
            path: "nope".into(),
        })
        .await;
    assert!(!e.ok && e.text.contains("no path"), "{}", e.text);
    let e = c
        .handle(Request::FailPath {
            path: "127.0.0.".into(),
        })
        .await;
    assert!(!e.ok && e.text.contains("matches 2 paths"), "{}", e.text);
    let e = c
        .handle(Request::SwitchGroup {
            map: map.clone(),
            group: 0,
        })
        .await;
    assert!(!e.ok, "{}", e.text);
    let e = c
        .handle(Request::Queueing {
            map: "nomap".into(),
            on: true,
        })
        .await;
    assert!(!e.ok && e.text.contains("mpatha"), "{}", e.text);
    let e = c.handle(Request::Reconfigure).await;
    assert!(
        !e.ok && e.text.contains("without a configuration file"),
        "{}",
        e.text
    );

    // show events: the story so far, newest last; `last` bounds it. (The map's own
    // events reach the timeline through a task of their own.)
    wait_for(
        Duration::from_secs(5),
        "the reinstatement in the timeline",
        || async { events_of(&c, "path-reinstated").await > 0 },
    )
    .await;
    let r = ask(
        &c,
        Request::ShowEvents {
            follow: false,
            last: None,
        },
    )
    .await;
    let kinds: Vec<&str> = r.data["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "daemon-started",
        "portal-discovered",
        "session-up",
        "map-created",
        "path-added",
        "operator",
        "path-failed",
        "path-reinstated",
    ] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let ts: Vec<u64> = r.data["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["t_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(r.text.lines().count(), ts.len());
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    assert!(r.text.contains("path-failed"), "{}", r.text);
    let r = ask(
        &c,
        Request::ShowEvents {
            follow: false,
            last: Some(2),
        },
    )
    .await;
    assert_eq!(r.data["events"].as_array().unwrap().len(), 2);
    assert_eq!(r.text.lines().count(), 2);
    d.stop().await;
    t.stop().await;
}
