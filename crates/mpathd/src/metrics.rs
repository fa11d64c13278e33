//! Prometheus text exposition on an opt-in HTTP address (`GET /metrics`): per path its
//! state, I/Os, bytes, errors, latency histogram; per map queue depth, failovers, seconds
//! with no usable path. A tiny HTTP/1.1 responder: one GET, one answer, close.

use std::fmt::Write as _;
use std::sync::Arc;

use mpath_policy::{CheckerState, DmState, EventKind};
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

/// The exposition text.
pub(crate) async fn render(shared: &Shared) -> String {
    let maps: Vec<_> = {
        let st = shared.state();
        st.maps
            .values()
            .map(|m| (m.name.clone(), m.device.clone(), m.paths.clone()))
            .collect()
    };
    let failovers: std::collections::BTreeMap<String, u64> = {
        let t = shared.timeline.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = std::collections::BTreeMap::new();
        for e in t.iter().filter(|e| e.kind == "path-failed") {
            *m.entry(e.map.clone().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP mpath_path_up 1 when the path is active and its checker sees it up"
    );
    let _ = writeln!(o, "# TYPE mpath_path_up gauge");
    let mut rest = String::new();
    for (name, dev, paths) in &maps {
        let c = dev.counters();
        let status = dev.status().await.ok();
        for (id, pname) in paths {
            let up = status
                .as_ref()
                .and_then(|s| s.view.paths.iter().find(|p| p.id == *id))
                .map(|p| p.state.dm == DmState::Active && p.state.checker == CheckerState::Up)
                .unwrap_or(false);
            let _ = writeln!(
                o,
                "mpath_path_up{{map=\"{name}\",path=\"{pname}\"}} {}",
                u8::from(up)
            );
            if let Some((_, s)) = c.paths.iter().find(|(i, _)| i == id) {
                let l = format!("map=\"{name}\",path=\"{pname}\"");
                let _ = writeln!(rest, "mpath_path_ios_total{{{l}}} {}", s.ios);
                let _ = writeln!(rest, "mpath_path_bytes_total{{{l}}} {}", s.bytes);
                let _ = writeln!(rest, "mpath_path_errors_total{{{l}}} {}", s.errors);
                let _ = writeln!(rest, "mpath_path_requeues_total{{{l}}} {}", s.requeues);
                histogram(&mut rest, "mpath_path_latency_seconds", &l, &s.latency);
            }
        }
        let l = format!("map=\"{name}\"");
        let _ = writeln!(rest, "mpath_map_ios_total{{{l}}} {}", c.map.ios);
        let _ = writeln!(rest, "mpath_map_bytes_total{{{l}}} {}", c.map.bytes);
        let _ = writeln!(rest, "mpath_map_errors_total{{{l}}} {}", c.map.errors);
        let _ = writeln!(
            rest,
            "mpath_map_no_path_seconds_total{{{l}}} {:.3}",
            c.no_path_time.as_secs_f64()
        );
        let _ = writeln!(
            rest,
            "mpath_map_queued{{{l}}} {}",
            status.as_ref().map(|s| s.queued).unwrap_or(0)
        );
        let _ = writeln!(
            rest,
            "mpath_map_failovers_total{{{l}}} {}",
            failovers.get(name).copied().unwrap_or(0)
        );
        histogram(&mut rest, "mpath_map_latency_seconds", &l, &c.map.latency);
    }
    o.push_str(&rest);
    let _ = EventKind::QueueIfNoPath { on: true };
    o
}

fn histogram(o: &mut String, name: &str, labels: &str, h: &mpath_engine::Histogram) {
    let mut cum = 0u64;
    for (i, n) in h.buckets.iter().enumerate() {
        cum += n;
        // Bucket i holds [2^i, 2^(i+1)) ns; the last one is open-ended.
        let le = if i + 1 < mpath_engine::LATENCY_BUCKETS {
            format!("{:.9}", (1u64 << (i + 1)) as f64 / 1e9)
        } else {
            "+Inf".into()
        };
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(o, "{name}_count{{{labels}}} {cum}");
}
