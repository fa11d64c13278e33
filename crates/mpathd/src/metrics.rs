//! Prometheus text exposition on an opt-in HTTP address (`GET /metrics`): per path its
//! state, priority, I/Os, bytes, errors, requeues, failures and a latency histogram; per
//! map the same totals, queue depth, failovers, group switches, seconds with no usable path
//! and a latency histogram per operation (`op` = read, write, other). A tiny HTTP/1.1
//! responder: one GET, one answer, close.
//!
//! Sized for thousands of paths: a handful of latency buckets from 100 µs to 10 s
//! ([`EXPOSED_BOUNDS_NS`]), an exact `_sum`, and the text encoded by the
//! `prometheus-client` crate (its Prometheus text format 0.0.4 encoder, from a collector
//! that reads the engine's atomics at scrape time: the crate's own histogram takes a lock
//! per observation, which the I/O path must not). A client that accepts gzip gets the text
//! compressed (Prometheus asks for it by default). `BENCHMARKS.md`, "Metrics", has the size
//! and time of a scrape at 1024 maps × 4 paths.

use std::sync::Arc;

use mpath_engine::{Histogram, IoOp, IoStats, LATENCY_BOUNDS_NS, LATENCY_BUCKETS};
use mpath_policy::{CheckerState, DmState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::daemon::Shared;
use crate::timeline::EventKind;

pub(crate) async fn serve(l: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        let (mut s, _) = tokio::select! {
            r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
                .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            if !(req.starts_with("GET /metrics") || req.starts_with("GET / ")) {
                let body = "GET /metrics\n";
                let head = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
                return;
            }
            let gz = accepts_gzip(&req);
            let scrape = Arc::new(gather(&shared).await);
            // Encoding thousands of series is milliseconds of CPU: off the runtime's threads.
            let Ok((body, encoding)) = tokio::task::spawn_blocking(move || {
                if gz {
                    (encode_gzip(scrape), "Content-Encoding: gzip\r\n")
                } else {
                    (encode(scrape).into_bytes(), "")
                }
            })
            .await
            else {
                return;
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{encoding}Content-Length: {}\r\nConnection: close\r\n\r\n",
                prometheus_text::CONTENT_TYPE,
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        });
    }
}

/// What one scrape shows: every counter and state, copied once.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub maps: Vec<MapMetrics>,
}

/// One map's part of a scrape.
#[derive(Clone, Debug, Default)]
pub struct MapMetrics {
    pub name: String,
    pub paths: Vec<PathMetrics>,
    /// The callers' requests (latency per operation in `stats.by_op`).
    pub stats: IoStats,
    pub queued: usize,
    pub failovers: u64,
    pub group_switches: u64,
    pub no_path_seconds: f64,
}

/// One path's part of a scrape.
#[derive(Clone, Debug, Default)]
pub struct PathMetrics {
    pub name: String,
    /// Active in its map and seen up by its checker.
    pub up: bool,
    /// Failed by the map (dm state failed).
    pub failed: bool,
    pub priority: u32,
    pub stats: IoStats,
    pub failures: u64,
}

impl Scrape {
    /// A scrape of `maps` maps of `paths` paths each, every counter and every bucket
    /// non-zero (the largest text such a daemon can produce, bar longer names): for
    /// measuring the exposition and testing its form without a daemon.
    pub fn synthetic(maps: usize, paths: usize) -> Scrape {
        let hist = |seed: u64| {
            let mut h = Histogram::default();
            for (i, b) in h.buckets.iter_mut().enumerate() {
                *b = 1_000_003 * (seed + 1) / (i as u64 + 1);
            }
            // A plausible sum: each bucket's count at its bound.
            h.sum_ns = h
                .buckets
                .iter()
                .zip(LATENCY_BOUNDS_NS.iter().chain([&20_000_000_000]))
                .map(|(n, b)| n * b)
                .sum();
            h
        };
        let stats = |seed: u64| {
            let by_op = [hist(seed), hist(seed + 1), hist(seed + 2)];
            let mut latency = Histogram::default();
            for h in &by_op {
                latency.add(h);
            }
            IoStats {
                ios: latency.count(),
                bytes: latency.count() * 4096,
                errors: seed * 7,
                requeues: seed * 3,
                busy: seed,
                hedged: seed / 2,
                hedges_won: seed / 4,
                latency,
                by_op,
            }
        };
        Scrape {
            maps: (0..maps)
                .map(|m| MapMetrics {
                    name: map_name(m),
                    paths: (0..paths)
                        .map(|p| PathMetrics {
                            name: format!("192.168.{}.{}:3260/{}", 100 + p / 200, p % 200 + 1, m),
                            up: p % 3 != 2,
                            failed: p % 3 == 2,
                            priority: if p % 2 == 0 { 50 } else { 10 },
                            stats: stats((m * paths + p) as u64),
                            failures: p as u64,
                        })
                        .collect(),
                    stats: stats(m as u64),
                    queued: m % 5,
                    failovers: m as u64 % 11,
                    group_switches: m as u64 % 3,
                    no_path_seconds: m as f64 * 0.125,
                })
                .collect(),
        }
    }
}

/// `mpatha`, …, `mpathz`, `mpathaa`, … as the daemon names maps.
fn map_name(mut i: usize) -> String {
    let mut suffix = Vec::new();
    loop {
        suffix.push(b'a' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    suffix.reverse();
    format!("mpath{}", String::from_utf8_lossy(&suffix))
}

/// Copy what a scrape shows from the daemon.
pub(crate) async fn gather(shared: &Shared) -> Scrape {
    let maps: Vec<_> = {
        let st = shared.state();
        st.maps
            .values()
            .map(|m| {
                let prios: Vec<u32> = m
                    .paths
                    .iter()
                    .map(|(_, n)| st.paths.get(n).map(|p| p.priority).unwrap_or(0))
                    .collect();
                (m.name.clone(), m.device.clone(), m.paths.clone(), prios)
            })
            .collect()
    };
    let counts = shared.timeline.counts();
    let count = |map: &str, path: &str, kind: EventKind| {
        counts
            .get(&(map.to_string(), path.to_string(), kind))
            .copied()
            .unwrap_or(0)
    };
    let mut out = Scrape::default();
    for (name, dev, paths, prios) in maps {
        let mut c = dev.counters();
        let status = dev.status().await.ok();
        let paths = paths
            .iter()
            .zip(prios)
            .map(|((id, pname), priority)| {
                let pv = status
                    .as_ref()
                    .and_then(|s| s.view.paths.iter().find(|p| p.id == *id));
                let dm_active = pv.is_some_and(|p| p.state.dm == DmState::Active);
                let stats = c
                    .paths
                    .iter_mut()
                    .find(|(i, _)| i == id)
                    .map(|(_, s)| std::mem::take(s))
                    .unwrap_or_default();
                PathMetrics {
                    up: dm_active && pv.is_some_and(|p| p.state.checker == CheckerState::Up),
                    failed: !dm_active,
                    priority,
                    stats,
                    failures: count(&name, pname, EventKind::PathFailed),
                    name: pname.clone(),
                }
            })
            .collect();
        out.maps.push(MapMetrics {
            paths,
            stats: c.map,
            queued: status.as_ref().map(|s| s.queued).unwrap_or(0),
            failovers: count(&name, "", EventKind::PathFailed),
            group_switches: count(&name, "", EventKind::GroupSwitched),
            no_path_seconds: c.no_path_time.as_secs_f64(),
            name,
        });
    }
    out
}

/// Whether the request's `Accept-Encoding` names gzip (without `;q=0`).
fn accepts_gzip(req: &str) -> bool {
    req.lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("accept-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .any(|e| {
            let mut parts = e.split(';').map(str::trim);
            parts.next().is_some_and(|c| c.eq_ignore_ascii_case("gzip"))
                && parts.all(|p| p.replace(' ', "") != "q=0")
        })
}

/// The text gzip-compressed at the fastest level: exposition text is repetitive enough that
/// it still shrinks about tenfold, in a fraction of the time a higher level takes.
pub fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 8),
        flate2::Compression::fast(),
    );
    z.write_all(text.as_bytes()).expect("writing to a Vec");
    z.finish().expect("writing to a Vec")
}

/// The `le` bounds (ns) of the exposed latency histograms: a handful of the engine's 17
/// ([`LATENCY_BOUNDS_NS`]), each exposed bucket the sum of the engine's below it. Flash
/// answers within 100–250 µs, a loaded array within 1–2.5 ms, a disk within 10 ms; 100 ms
/// is trouble, 1 s a stall, 10 s a command timeout's order. Every bound more costs a line
/// per series — 7168 lines at 1024 maps × 4 paths — and all 17 would make that scrape
/// 16 MB and 70 ms (`BENCHMARKS.md`, "Metrics"); `show stats` interpolates within all 17.
pub const EXPOSED_BOUNDS_NS: [u64; 8] = [
    100_000,
    250_000,
    1_000_000,
    2_500_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// The Prometheus text (format 0.0.4) of a scrape.
pub fn encode(scrape: Arc<Scrape>) -> String {
    encode_with_bounds(scrape, &EXPOSED_BOUNDS_NS)
}

/// [`encode`] with other `le` bounds, each one of [`LATENCY_BOUNDS_NS`] (to measure the
/// cost of more or fewer).
pub fn encode_with_bounds(scrape: Arc<Scrape>, bounds: &'static [u64]) -> String {
    // Sized at once: growing a String of megabytes copies it over and over.
    let mut text = String::with_capacity(estimate(&scrape, bounds));
    encode_into(&mut text, scrape, bounds);
    text
}

/// [`encode`], gzip-compressed as it is written (the text is never whole in memory).
pub fn encode_gzip(scrape: Arc<Scrape>) -> Vec<u8> {
    encode_gzip_with_bounds(scrape, &EXPOSED_BOUNDS_NS)
}

/// [`encode_gzip`] with other `le` bounds.
pub fn encode_gzip_with_bounds(scrape: Arc<Scrape>, bounds: &'static [u64]) -> Vec<u8> {
    struct Gz(flate2::write::GzEncoder<Vec<u8>>);
    impl std::fmt::Write for Gz {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            use std::io::Write as _;
            self.0.write_all(s.as_bytes()).map_err(|_| std::fmt::Error)
        }
    }
    let out = Vec::with_capacity(estimate(&scrape, bounds) / 8);
    let mut gz = Gz(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::fast(),
    ));
    encode_into(&mut gz, scrape, bounds);
    gz.0.finish().expect("writing to a Vec")
}

/// About the size of a scrape's text: lines of about 80 bytes.
fn estimate(scrape: &Scrape, bounds: &[u64]) -> usize {
    let hist = bounds.len() + 3;
    let paths: usize = scrape.maps.iter().map(|m| m.paths.len()).sum();
    (paths * (PATH_FAMILIES.len() + hist) + scrape.maps.len() * (MAP_FAMILIES.len() + 3 * hist))
        * 80
}

fn encode_into<W: std::fmt::Write>(out: &mut W, scrape: Arc<Scrape>, bounds: &'static [u64]) {
    assert!(
        bounds.iter().all(|b| LATENCY_BOUNDS_NS.contains(b)),
        "exposed bounds are engine bounds"
    );
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collect(scrape, bounds)));
    prometheus_text::encode(out, &registry).expect("writing to memory");
}

/// The collector the registry calls once per scrape: one family after the other, every
/// sample of a family together (the text format requires it).
#[derive(Debug)]
struct Collect(Arc<Scrape>, &'static [u64]);

type Fam<'a> = prometheus_client::encoding::MetricEncoder<'a>;

/// One sample of a path family.
type PathValue = fn(&PathMetrics) -> Value;
/// One sample of a map family.
type MapValue = fn(&MapMetrics) -> Value;

#[derive(Clone, Copy)]
enum Value {
    U(u64),
    F(f64),
}

/// Path families in exposition order: name (a counter's without `_total`, which the
/// encoder adds), type, help, value.
const PATH_FAMILIES: &[(&str, MetricType, &str, PathValue)] = &[
    (
        "mpath_path_up",
        MetricType::Gauge,
        "1 when the path is active in its map and its checker sees it up",
        |p| Value::U(p.up.into()),
    ),
    (
        "mpath_path_failed",
        MetricType::Gauge,
        "1 when the map has failed the path (dm state failed)",
        |p| Value::U(p.failed.into()),
    ),
    (
        "mpath_path_priority",
        MetricType::Gauge,
        "The path's priority from the prioritizer",
        |p| Value::U(p.priority.into()),
    ),
    (
        "mpath_path_ios",
        MetricType::Counter,
        "I/Os completed through the path",
        |p| Value::U(p.stats.ios),
    ),
    (
        "mpath_path_bytes",
        MetricType::Counter,
        "Bytes moved through the path",
        |p| Value::U(p.stats.bytes),
    ),
    (
        "mpath_path_errors",
        MetricType::Counter,
        "I/Os that failed on the path",
        |p| Value::U(p.stats.errors),
    ),
    (
        "mpath_path_requeues",
        MetricType::Counter,
        "I/Os taken off the path and issued again on another",
        |p| Value::U(p.stats.requeues),
    ),
    (
        "mpath_path_busy",
        MetricType::Counter,
        "Answers BUSY, TASK SET FULL or ABORTED COMMAND through the path (retried; never a path failure)",
        |p| Value::U(p.stats.busy),
    ),
    (
        "mpath_path_failures",
        MetricType::Counter,
        "Times the map failed the path",
        |p| Value::U(p.failures),
    ),
    (
        "mpath_path_hedged_reads",
        MetricType::Counter,
        "Reads that waited past the path's hedge deadline and were issued on another path too",
        |p| Value::U(p.stats.hedged),
    ),
];

const MAP_FAMILIES: &[(&str, MetricType, &str, MapValue)] = &[
    (
        "mpath_map_paths",
        MetricType::Gauge,
        "Paths in the map",
        |m| Value::U(m.paths.len() as u64),
    ),
    (
        "mpath_map_active_paths",
        MetricType::Gauge,
        "Paths of the map that may carry I/O",
        |m| Value::U(m.paths.iter().filter(|p| !p.failed).count() as u64),
    ),
    (
        "mpath_map_ios",
        MetricType::Counter,
        "I/Os completed by the map",
        |m| Value::U(m.stats.ios),
    ),
    (
        "mpath_map_bytes",
        MetricType::Counter,
        "Bytes moved by the map",
        |m| Value::U(m.stats.bytes),
    ),
    (
        "mpath_map_errors",
        MetricType::Counter,
        "I/Os the map completed with an error",
        |m| Value::U(m.stats.errors),
    ),
    (
        "mpath_map_hedged_reads",
        MetricType::Counter,
        "Reads issued on a second path while the first attempt was outstanding",
        |m| Value::U(m.stats.hedged),
    ),
    (
        "mpath_map_hedges_won",
        MetricType::Counter,
        "Hedged reads the second path answered first",
        |m| Value::U(m.stats.hedges_won),
    ),
    (
        "mpath_map_queued",
        MetricType::Gauge,
        "Requests waiting for a usable path",
        |m| Value::U(m.queued as u64),
    ),
    (
        "mpath_map_failovers",
        MetricType::Counter,
        "Path failures that moved the map's I/O to its other paths",
        |m| Value::U(m.failovers),
    ),
    (
        "mpath_map_group_switches",
        MetricType::Counter,
        "Changes of the map's active path group",
        |m| Value::U(m.group_switches),
    ),
    (
        "mpath_map_no_path_seconds",
        MetricType::Counter,
        "Seconds the map had no usable path",
        |m| Value::F(m.no_path_seconds),
    ),
];

fn value(e: &mut Fam<'_>, ty: MetricType, v: Value) -> std::fmt::Result {
    match (ty, v) {
        (MetricType::Counter, Value::U(v)) => e.encode_counter::<NoLabelSet, _, u64>(&v, None),
        (MetricType::Counter, Value::F(v)) => e.encode_counter::<NoLabelSet, _, u64>(&v, None),
        (_, Value::U(v)) => e.encode_gauge(&v),
        (_, Value::F(v)) => e.encode_gauge(&v),
    }
}

/// A histogram's samples: the engine's buckets summed into the exposed ones (not
/// cumulative; the encoder sums them and ends with `+Inf`), the exact sum in seconds, the
/// count.
fn histogram(e: &mut Fam<'_>, h: &Histogram, bounds: &[u64]) -> std::fmt::Result {
    let mut buckets = [(f64::INFINITY, 0u64); LATENCY_BUCKETS];
    for (b, &ns) in buckets.iter_mut().zip(bounds) {
        b.0 = ns as f64 / 1e9;
    }
    let mut j = 0;
    for (i, &n) in h.buckets.iter().enumerate() {
        // Engine bucket i ends at LATENCY_BOUNDS_NS[i] (the last one is open).
        let end = LATENCY_BOUNDS_NS.get(i).copied().unwrap_or(u64::MAX);
        while j < bounds.len() && bounds[j] < end {
            j += 1;
        }
        buckets[j].1 += n;
    }
    e.encode_histogram::<NoLabelSet>(
        h.sum_ns as f64 / 1e9,
        h.count(),
        &buckets[..=bounds.len()],
        None,
    )
}

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let (maps, bounds) = (&self.0.maps, self.1);
        for &(name, ty, help, f) in PATH_FAMILIES {
            let mut fam = enc.encode_descriptor(name, help, None, ty)?;
            for m in maps {
                for p in &m.paths {
                    let labels = [("map", m.name.as_str()), ("path", p.name.as_str())];
                    value(&mut fam.encode_family(&labels)?, ty, f(p))?;
                }
            }
        }
        let mut fam = enc.encode_descriptor(
            "mpath_path_latency_seconds",
            "I/O latency through the path, every operation",
            None,
            MetricType::Histogram,
        )?;
        for m in maps {
            for p in &m.paths {
                let labels = [("map", m.name.as_str()), ("path", p.name.as_str())];
                histogram(&mut fam.encode_family(&labels)?, &p.stats.latency, bounds)?;
            }
        }
        for &(name, ty, help, f) in MAP_FAMILIES {
            let mut fam = enc.encode_descriptor(name, help, None, ty)?;
            for m in maps {
                value(
                    &mut fam.encode_family(&[("map", m.name.as_str())])?,
                    ty,
                    f(m),
                )?;
            }
        }
        let mut fam = enc.encode_descriptor(
            "mpath_map_latency_seconds",
            "I/O latency of the map's requests, per operation (series appear when the operation is first seen)",
            None,
            MetricType::Histogram,
        )?;
        for m in maps {
            for op in IoOp::ALL {
                let h = m.stats.op(op);
                if h.count() == 0 {
                    continue;
                }
                let labels = [("map", m.name.as_str()), ("op", op.as_str())];
                histogram(&mut fam.encode_family(&labels)?, h, bounds)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_only_when_the_client_accepts_it() {
        let req = |enc: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{enc}\r\n\r\n");
        // What Prometheus sends.
        assert!(accepts_gzip(&req("Accept-Encoding: gzip")));
        assert!(accepts_gzip(&req("accept-encoding: deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(&req("Accept-Encoding: identity")));
        assert!(!accepts_gzip(&req("Accept-Encoding: gzip;q=0")));
        assert!(!accepts_gzip(&req("X-Other: gzip")));
        assert!(!accepts_gzip(
            "GET /metrics HTTP/1.1\r\n\r\nAccept-Encoding: gzip\r\n"
        ));
    }

    #[test]
    fn exposed_bounds_are_engine_bounds() {
        assert!(EXPOSED_BOUNDS_NS
            .iter()
            .all(|b| LATENCY_BOUNDS_NS.contains(b)));
        assert!(EXPOSED_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }
}
