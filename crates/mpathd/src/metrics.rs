//! Prometheus text exposition on an opt-in HTTP address (`GET /metrics`): per path its
//! state, priority, I/Os, bytes, errors, requeues, failures and a latency histogram; per
//! map the same totals, queue depth, failovers, group switches and seconds with no usable
//! path. A tiny HTTP/1.1 responder: one GET, one answer, close.
//!
//! Every family is written once, with its `# HELP` and `# TYPE`, all its samples together
//! (the text format requires it).

use std::fmt::Write as _;
use std::sync::Arc;

use mpath_policy::{CheckerState, DmState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::daemon::Shared;

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
            let (status, body) = if req.starts_with("GET /metrics") || req.starts_with("GET / ") {
                ("200 OK", render(&shared).await)
            } else {
                ("404 Not Found", "GET /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

/// Families in exposition order: name, type, help.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "mpath_path_up",
        "gauge",
        "1 when the path is active in its map and its checker sees it up",
    ),
    (
        "mpath_path_failed",
        "gauge",
        "1 when the map has failed the path (dm state failed)",
    ),
    (
        "mpath_path_priority",
        "gauge",
        "The path's priority from the prioritizer",
    ),
    (
        "mpath_path_ios_total",
        "counter",
        "I/Os completed through the path",
    ),
    (
        "mpath_path_bytes_total",
        "counter",
        "Bytes moved through the path",
    ),
    (
        "mpath_path_errors_total",
        "counter",
        "I/Os that failed on the path",
    ),
    (
        "mpath_path_requeues_total",
        "counter",
        "I/Os taken off the path and issued again on another",
    ),
    (
        "mpath_path_busy_total",
        "counter",
        "Answers BUSY, TASK SET FULL or ABORTED COMMAND through the path (retried; never a path failure)",
    ),
    (
        "mpath_path_failures_total",
        "counter",
        "Times the map failed the path",
    ),
    (
        "mpath_path_latency_seconds",
        "histogram",
        "I/O latency through the path (sum estimated from the buckets)",
    ),
    ("mpath_map_paths", "gauge", "Paths in the map"),
    (
        "mpath_map_active_paths",
        "gauge",
        "Paths of the map that may carry I/O",
    ),
    (
        "mpath_map_ios_total",
        "counter",
        "I/Os completed by the map",
    ),
    ("mpath_map_bytes_total", "counter", "Bytes moved by the map"),
    (
        "mpath_map_errors_total",
        "counter",
        "I/Os the map completed with an error",
    ),
    (
        "mpath_map_queued",
        "gauge",
        "Requests waiting for a usable path",
    ),
    (
        "mpath_map_failovers_total",
        "counter",
        "Path failures that moved the map's I/O to its other paths",
    ),
    (
        "mpath_map_group_switches_total",
        "counter",
        "Changes of the map's active path group",
    ),
    (
        "mpath_map_no_path_seconds_total",
        "counter",
        "Seconds the map had no usable path",
    ),
    (
        "mpath_map_latency_seconds",
        "histogram",
        "I/O latency of the map (sum estimated from the buckets)",
    ),
];

/// Samples gathered per family, then written family by family.
struct Out {
    fams: Vec<String>,
}

impl Out {
    fn new() -> Out {
        Out {
            fams: vec![String::new(); FAMILIES.len()],
        }
    }

    fn fam(&mut self, name: &str) -> &mut String {
        let i = FAMILIES
            .iter()
            .position(|(n, _, _)| *n == name)
            .expect("a declared metric family");
        &mut self.fams[i]
    }

    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.fam(name), "{name}{{{labels}}} {v}");
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &mpath_engine::Histogram) {
        let o = self.fam(name);
        let mut cum = 0u64;
        let mut sum = 0f64;
        for (i, n) in h.buckets.iter().enumerate() {
            cum += n;
            // Bucket i holds [2^i, 2^(i+1)) ns; the last one is open-ended. The sum takes
            // each bucket's midpoint (the engine keeps no exact sum).
            sum += *n as f64 * 1.5 * (1u64 << i.min(62)) as f64 / 1e9;
            let le = if i + 1 < mpath_engine::LATENCY_BUCKETS {
                format!("{:.9}", (1u64 << (i + 1)) as f64 / 1e9)
            } else {
                "+Inf".into()
            };
            let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(o, "{name}_sum{{{labels}}} {sum:.9}");
        let _ = writeln!(o, "{name}_count{{{labels}}} {cum}");
    }

    fn finish(self) -> String {
        let mut s = String::new();
        for ((name, ty, help), body) in FAMILIES.iter().zip(self.fams) {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {ty}");
            s.push_str(&body);
        }
        s
    }
}

/// A label value, escaped per the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text.
pub(crate) async fn render(shared: &Shared) -> String {
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
    let counts = shared.counts();
    let count = |map: &str, path: &str, kind: &str| {
        counts
            .get(&(map.to_string(), path.to_string(), kind.to_string()))
            .copied()
            .unwrap_or(0)
    };
    let mut o = Out::new();
    for (name, dev, paths, prios) in &maps {
        let c = dev.counters();
        let status = dev.status().await.ok();
        let mut active = 0;
        for ((id, pname), prio) in paths.iter().zip(prios) {
            let l = format!("map=\"{}\",path=\"{}\"", esc(name), esc(pname));
            let pv = status
                .as_ref()
                .and_then(|s| s.view.paths.iter().find(|p| p.id == *id));
            let dm_active = pv.is_some_and(|p| p.state.dm == DmState::Active);
            active += usize::from(dm_active);
            let up = dm_active && pv.is_some_and(|p| p.state.checker == CheckerState::Up);
            o.sample("mpath_path_up", &l, u8::from(up));
            o.sample("mpath_path_failed", &l, u8::from(!dm_active));
            o.sample("mpath_path_priority", &l, prio);
            let s = c
                .paths
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, s)| s.clone())
                .unwrap_or(mpath_engine::IoStats {
                    ios: 0,
                    bytes: 0,
                    errors: 0,
                    requeues: 0,
                    busy: 0,
                    latency: mpath_engine::Histogram {
                        buckets: [0; mpath_engine::LATENCY_BUCKETS],
                    },
                });
            o.sample("mpath_path_ios_total", &l, s.ios);
            o.sample("mpath_path_bytes_total", &l, s.bytes);
            o.sample("mpath_path_errors_total", &l, s.errors);
            o.sample("mpath_path_requeues_total", &l, s.requeues);
            o.sample("mpath_path_busy_total", &l, s.busy);
            o.sample(
                "mpath_path_failures_total",
                &l,
                count(name, pname, "path-failed"),
            );
            o.histogram("mpath_path_latency_seconds", &l, &s.latency);
        }
        let l = format!("map=\"{}\"", esc(name));
        o.sample("mpath_map_paths", &l, paths.len());
        o.sample("mpath_map_active_paths", &l, active);
        o.sample("mpath_map_ios_total", &l, c.map.ios);
        o.sample("mpath_map_bytes_total", &l, c.map.bytes);
        o.sample("mpath_map_errors_total", &l, c.map.errors);
        o.sample(
            "mpath_map_queued",
            &l,
            status.as_ref().map(|s| s.queued).unwrap_or(0),
        );
        o.sample(
            "mpath_map_failovers_total",
            &l,
            count(name, "", "path-failed"),
        );
        o.sample(
            "mpath_map_group_switches_total",
            &l,
            count(name, "", "group-switched"),
        );
        o.sample(
            "mpath_map_no_path_seconds_total",
            &l,
            format!("{:.3}", c.no_path_time.as_secs_f64()),
        );
        o.histogram("mpath_map_latency_seconds", &l, &c.map.latency);
    }
    o.finish()
}
