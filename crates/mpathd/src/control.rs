//! The control plane: [`Request`] is every command the CLI can send; [`Control::handle`]
//! answers it from the daemon's state and the maps' owner tasks. The socket server only
//! forwards (one JSON request per line, one JSON [`Response`] per line; `show events
//! --follow` streams one response per event).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use iscsi_initiator::SessionState;
use mpath_policy::{CheckerState, DmState, GroupStatus, NoPathPolicy, QueueingView};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

pub use crate::config::ChapSecret;
use crate::config::{self, selector_name, PortalConfig};
use crate::daemon::Shared;
use crate::reply;
use crate::timeline::EventKind;

/// A command to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Maps, groups and paths in the `multipath -ll` layout.
    ShowTopology,
    /// Every path with multipathd's columns.
    ShowPaths,
    ShowMaps,
    /// `show paths format FMT`: multipathd's wildcards (`%d %w %t %T %p`...), a header
    /// line (none when `raw`), one line per path.
    ShowPathsFormat {
        format: String,
        raw: bool,
    },
    /// `show maps format FMT` (`%n %w %d %N`...), as `ShowPathsFormat`.
    ShowMapsFormat {
        format: String,
        raw: bool,
    },
    /// iSCSI sessions, as `iscsiadm -m session` (`verbose`: `-P 3`, with the negotiated
    /// parameters and the paths and maps each serves).
    ShowSessions {
        verbose: bool,
    },
    /// One map's full record: its topology block, state, devices and policy.
    ShowMap {
        map: String,
    },
    /// One path's full record (PATH as `show paths` names it, or a unique prefix).
    ShowPath {
        path: String,
    },
    ShowStatus,
    /// I/O counters and latency per map and path.
    ShowStats,
    /// The effective configuration.
    ShowConfig,
    /// The event timeline (the last `last` events); `follow` keeps streaming.
    ShowEvents {
        follow: bool,
        last: Option<usize>,
    },
    /// Stop I/O to a path (an operator's failure: only an operator reinstates it).
    FailPath {
        path: String,
    },
    ReinstatePath {
        path: String,
    },
    /// Make group `group` (1-based, as multipathd counts) of a map active.
    SwitchGroup {
        map: String,
        group: usize,
    },
    /// `restorequeueing` (on) / `disablequeueing` (off).
    Queueing {
        map: String,
        on: bool,
    },
    /// Log in to a portal's targets (or to one of them) without editing the file.
    Login {
        portal: String,
        target: Option<String>,
        /// CHAP credentials for the portal's sessions (node.session.auth.*): they replace
        /// the configured ones until a reconfigure re-reads the file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chap: Option<ChapSecret>,
        /// Mutual CHAP (the target proves itself too); needs `chap`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mutual_chap: Option<ChapSecret>,
    },
    /// Log out of a portal (or of one target of it): its paths leave their maps.
    Logout {
        portal: String,
        target: Option<String>,
    },
    /// Re-read the configuration file and apply it.
    Reconfigure,
    Shutdown,
    /// Persistent reservations through a map (`mpath persist`, mpathpersist's job).
    Persist {
        map: String,
        #[serde(flatten)]
        op: crate::persist::PersistOp,
    },
}

impl Request {
    /// Whether it changes anything (only root or the daemon's own user may send those).
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Request::FailPath { .. }
                | Request::ReinstatePath { .. }
                | Request::SwitchGroup { .. }
                | Request::Queueing { .. }
                | Request::Login { .. }
                | Request::Logout { .. }
                | Request::Reconfigure
                | Request::Shutdown
        ) || matches!(self, Request::Persist { op, .. } if op.mutates())
    }
}

/// Whether a peer may send `req`: reading is for everyone who can open the socket;
/// changes only for root or the daemon's own user. `peer_uid` is the SO_PEERCRED uid
/// (`None`: unknown, which is refused for changes).
pub fn permitted(req: &Request, peer_uid: Option<u32>, daemon_uid: u32) -> bool {
    !req.mutates() || matches!(peer_uid, Some(u) if u == 0 || u == daemon_uid)
}

/// The answer: text for people, data for `--json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub text: String,
    pub data: Value,
}

impl Response {
    /// A reply whose data is one of [`reply`]'s types.
    fn ok(text: String, data: impl serde::Serialize) -> Response {
        Response {
            ok: true,
            text,
            data: serde_json::to_value(data).unwrap_or(Value::Null),
        }
    }

    fn err(msg: impl Into<String>) -> Response {
        let m = msg.into();
        Response {
            ok: false,
            text: m.clone(),
            data: json!(reply::Error { error: m }),
        }
    }

    /// The reply's data as the type the request answers with (`reply::Maps` for
    /// `ShowMaps`...); a failed request's error text otherwise.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        if !self.ok {
            return Err(self.text.trim_end().to_string());
        }
        serde_json::from_value(self.data.clone()).map_err(|e| format!("unexpected reply: {e}"))
    }
}

/// In-process access to the control plane (what the socket serves).
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

/// One path as every view shows it. In a map, the engine's state is the one in force (what
/// I/O acts on); a path in no map has only its checker's.
#[derive(Clone)]
pub(crate) struct PathSnap {
    pub name: String,
    pub portal: String,
    pub target: String,
    pub lun: u16,
    pub tsih: u16,
    pub conn: &'static str,
    pub session: iscsi_initiator::Session,
    pub map: Option<String>,
    /// The engine's view of the path (in a map that answered).
    pub view: Option<mpath_policy::PathView>,
    pub in_flight: Option<usize>,
    /// `active`, `failed`, `-` (in no map) or `?` (its map did not answer).
    pub dm: &'static str,
    pub checker: CheckerState,
    pub priority: u32,
    pub next_check: Instant,
    pub last_check: Option<Instant>,
    pub latency: Option<std::time::Duration>,
    pub excluded: Option<String>,
    pub lu: iscsi_initiator::probe::LuInfo,
}

impl PathSnap {
    /// The path's record (`show path`).
    fn record(&self) -> reply::PathRecord {
        let now = Instant::now();
        let v = self.view.as_ref();
        let s = self.session.stats();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        reply::PathRecord {
            path: self.name.clone(),
            portal: self.portal.clone(),
            target: self.target.clone(),
            lun: self.lun,
            map: self.map.clone(),
            dm_state: self.dm.into(),
            checker_state: checker_word(self.checker).into(),
            connection: self.conn.into(),
            tsih: self.tsih,
            priority: self.priority,
            group: v.and_then(|v| v.group).map(|g| g + 1),
            in_flight: self.in_flight,
            failures: v.map(|v| v.failures),
            last_failure: v.and_then(|v| v.last_failure.as_ref().map(|r| r.to_string())),
            operator_failed: v.is_some_and(|v| v.operator_failed),
            held_s: v
                .and_then(|v| v.reinstate_at)
                .map(|at| at.saturating_duration_since(now).as_secs_f64()),
            state_since_s: v.map(|v| now.saturating_duration_since(v.since).as_secs_f64()),
            last_check_s_ago: self
                .last_check
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            next_check_s: self.next_check.saturating_duration_since(now).as_secs_f64(),
            latency_us: self.latency.map(|l| l.as_micros() as u64),
            excluded: self.excluded.clone(),
            wwid: self.lu.wwid.clone(),
            serial: self.lu.serial.clone(),
            vendor: self.lu.vendor.clone(),
            product: self.lu.product.clone(),
            revision: self.lu.revision.clone(),
            size: self.lu.blocks.saturating_mul(self.lu.block_size as u64),
            block_size: self.lu.block_size,
            target_port_group: self.lu.target_port_group,
            relative_target_port: self.lu.relative_target_port,
            alua_state: self.lu.alua.map(|(a, _)| a.to_string()),
            alua_preferred: self.lu.alua.is_some_and(|(_, p)| p),
            session_logins: n(&s.logins),
            session_failures: n(&s.failures),
            session_commands: n(&s.commands),
            session_srtt_us: n(&s.srtt_us),
        }
    }
}

/// multipathd's `show paths format` wildcards that mean something here: (wildcard, header,
/// the `show path` field it prints).
const PATH_WILDCARDS: &[(char, &str, &str)] = &[
    ('w', "uuid", "wwid"),
    ('i', "hcil", "hcil"),
    ('d', "dev", "path"),
    ('t', "dm_st", "dm_state"),
    ('o', "dev_st", "connection"),
    ('T', "chk_st", "checker_state"),
    ('s', "vend/prod/rev", "vpr"),
    ('c', "checker", "checker"),
    ('C', "next_check", "next_check"),
    ('p', "pri", "priority"),
    ('S', "size", "hsize"),
    ('z', "serial", "serial"),
    ('M', "marginal_st", "marginal"),
    ('m', "multipath", "map"),
    ('N', "host WWNN", "initiator"),
    ('n', "target WWNN", "target"),
    ('P', "protocol", "protocol"),
    ('0', "failures", "failures"),
    ('L', "LUN hex", "lun_hex"),
];

/// multipathd's path wildcards with no meaning for mpath's paths, and why.
const PATH_NOT_HERE: &[(char, &str)] = &[
    ('D', "dev_t: a path is a session, not a block device"),
    ('a', "host adapter: no SCSI host"),
    ('r', "target WWPN: a Fibre Channel name"),
    ('R', "host WWPN: a Fibre Channel name"),
    ('G', "foreign: there are no foreign libraries"),
    ('g', "vpd page data: not kept"),
    ('I', "init_st: no udev initialisation"),
    ('u', "path group: see %C and show topology"),
];

/// multipathd's `show maps format` wildcards that mean something here.
const MAP_WILDCARDS: &[(char, &str, &str)] = &[
    ('n', "name", "name"),
    ('w', "uuid", "wwid"),
    ('d', "sysfs", "device"),
    ('F', "failback", "failback"),
    ('Q', "queueing", "queueing"),
    ('N', "paths", "paths"),
    ('r', "write_prot", "write_prot"),
    ('t', "dm-st", "state"),
    ('S', "size", "hsize"),
    ('f', "features", "features"),
    ('x', "failures", "failures"),
    ('h', "hwhandler", "hwhandler"),
    ('0', "path_faults", "failures"),
    ('3', "total_q_time", "no_path_seconds"),
    ('s', "vend/prod/rev", "vpr"),
    ('v', "vend", "vendor"),
    ('p', "prod", "product"),
    ('e', "rev", "revision"),
];

const MAP_NOT_HERE: &[(char, &str)] = &[
    ('A', "action: maps are not reloaded"),
    ('1', "switch_grp: see show events"),
    ('2', "map_loads: maps are not reloaded"),
    ('4', "q_timeouts: see show events"),
    ('G', "foreign: there are no foreign libraries"),
    ('g', "vpd page data: not kept"),
    ('k', "max_sectors_kb: no kernel queue"),
];

enum Piece {
    Text(String),
    Field(&'static str, &'static str),
}

/// Parse a multipathd format string (`%%` is a `%`).
fn parse_format(
    fmt: &str,
    known: &[(char, &'static str, &'static str)],
    not_here: &[(char, &str)],
    what: &str,
) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let Some(w) = chars.next() else {
            return Err(format!("format {fmt:?} ends with a lone %"));
        };
        if w == '%' {
            text.push('%');
            continue;
        }
        if let Some((_, header, key)) = known.iter().find(|(k, _, _)| *k == w) {
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(Piece::Field(header, key));
            continue;
        }
        let list = known
            .iter()
            .map(|(k, h, _)| format!("%{k} {h}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(match not_here.iter().find(|(k, _)| *k == w) {
            Some((_, why)) => {
                format!("%{w} has no meaning for mpath's {what} ({why}); known: {list}")
            }
            None => format!("unknown wildcard %{w} for {what}; known: {list}"),
        });
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// Lay rows out as multipathd does: a header line (unless `raw`), then one line per row;
/// every column as wide as its widest cell.
fn render_format(pieces: &[Piece], rows: &[Value], raw: bool) -> String {
    let cell = |row: &Value, key: &str| match &row[key] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let widths: Vec<usize> = pieces
        .iter()
        .map(|p| match p {
            Piece::Text(_) => 0,
            Piece::Field(h, k) => rows
                .iter()
                .map(|r| cell(r, k).chars().count())
                .chain([if raw { 0 } else { h.chars().count() }])
                .max()
                .unwrap_or(0),
        })
        .collect();
    let line = |cells: &dyn Fn(&'static str, &'static str) -> String| {
        let mut l = String::new();
        for (p, w) in pieces.iter().zip(&widths) {
            match p {
                Piece::Text(t) => l.push_str(t),
                Piece::Field(h, k) if raw => l.push_str(&cells(h, k)),
                Piece::Field(h, k) => {
                    let _ = write!(l, "{:<w$}", cells(h, k));
                }
            }
        }
        l.trim_end().to_string()
    };
    let mut text = String::new();
    if !raw {
        let _ = writeln!(text, "{}", line(&|h, _| h.to_string()));
    }
    for r in rows {
        let _ = writeln!(text, "{}", line(&|_, k| cell(r, k)));
    }
    text
}

/// A map's state as `show maps` says it, from the same engine view `show topology` and
/// `show paths` read: `ok` only while every path is active; `degraded (N failed)` while
/// some path is failed and another carries I/O; without an active path, `queueing (no
/// path)` or `failing (no path)` as the map does with I/O, or `no path` before any I/O
/// came.
pub(crate) fn map_state(v: &mpath_policy::MapView) -> String {
    let failed = v
        .paths
        .iter()
        .filter(|p| p.state.dm == DmState::Failed)
        .count();
    match v.queueing {
        QueueingView::Queueing { .. } => "queueing (no path)".into(),
        QueueingView::Failing { .. } => "failing (no path)".into(),
        QueueingView::Usable if failed == v.paths.len() => "no path".into(),
        QueueingView::Usable if failed > 0 => format!("degraded ({failed} failed)"),
        QueueingView::Usable => "ok".into(),
    }
}

/// A portal as `IP:PORT`, or `IP` (port 3260).
fn parse_portal(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| std::net::SocketAddr::new(ip, 3260))
        })
        .map_err(|_| format!("{s:?} is not a portal (IP or IP:PORT)"))
}

/// A setting as the configuration file writes it, without TOML's quotes.
fn unquote(s: String) -> String {
    s.trim_matches('"').to_string()
}

fn human_size(b: u64) -> String {
    let units = ["", "K", "M", "G", "T", "P"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{}{}", v as u64, units[u])
    } else {
        format!("{v:.1}{}", units[u])
    }
}

/// A duration for people: `350 ms`, `2.5 s`, `60 s`.
pub(crate) fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{:.0} s", ms / 1000.0)
    }
}

pub(crate) fn checker_word(c: CheckerState) -> &'static str {
    match c {
        CheckerState::Up => "ready",
        CheckerState::Down => "faulty",
        CheckerState::Ghost => "ghost",
        CheckerState::Pending => "i/o pending",
        CheckerState::Shaky => "shaky",
        CheckerState::Delayed => "delayed",
    }
}

fn conn_word(s: &SessionState) -> &'static str {
    match s {
        SessionState::Up => "running",
        SessionState::Connecting => "connecting",
        SessionState::Recovering { .. } => "recovering",
        SessionState::GaveUp(_) => "offline",
        SessionState::Closed => "closed",
    }
}

impl Control {
    /// Answer one request. `ShowEvents { follow: true }` answers with the backlog only; the
    /// socket server streams the rest.
    pub async fn handle(&self, req: Request) -> Response {
        match req {
            Request::ShowTopology => self.topology().await,
            Request::ShowPaths => self.paths().await,
            Request::ShowMaps => self.maps().await,
            Request::ShowMap { map } => self.show_map(&map).await,
            Request::ShowSessions { verbose } => self.sessions(verbose).await,
            Request::ShowPathsFormat { format, raw } => self.paths_format(&format, raw).await,
            Request::ShowMapsFormat { format, raw } => self.maps_format(&format, raw).await,
            Request::ShowPath { path } => self.show_path(&path).await,
            Request::ShowStatus => self.status().await,
            Request::ShowStats => self.stats(),
            Request::ShowConfig => {
                let c = self.shared.cfg();
                Response::ok(
                    config::render(&c),
                    reply::Config {
                        text: config::render(&c),
                        config: config::render_json(&c),
                    },
                )
            }
            Request::ShowEvents { last, .. } => self.events(last),
            Request::FailPath { path } => self.fail_path(&path).await,
            Request::ReinstatePath { path } => self.reinstate_path(&path).await,
            Request::SwitchGroup { map, group } => self.switch_group(&map, group).await,
            Request::Queueing { map, on } => self.queueing(&map, on).await,
            Request::Login {
                portal,
                target,
                chap,
                mutual_chap,
            } => {
                self.login(&portal, target.as_deref(), chap, mutual_chap)
                    .await
            }
            Request::Logout { portal, target } => self.logout(&portal, target.as_deref()).await,
            Request::Reconfigure => match self.shared.clone().reconfigure().await {
                Ok(summary) => Response::ok(summary.clone(), reply::Reconfigured { summary }),
                Err(e) => Response::err(e),
            },
            Request::Persist { map, op } => match self.shared.persist(&map, op).await {
                Ok((text, data)) => Response::ok(text, data),
                Err(e) => Response::err(e),
            },
            Request::Shutdown => {
                info!("shutdown requested through the control socket");
                let _ = self.shared.stop.send(true);
                Response::ok("shutting down".into(), reply::Done {})
            }
        }
    }

    /// The `multipath -ll` layout, one block per map.
    pub async fn topology(&self) -> Response {
        self.topology_of(None).await
    }

    /// The topology of every map, or of `only`.
    async fn topology_of(&self, only: Option<&str>) -> Response {
        let maps: Vec<_> = {
            let st = self.shared.state();
            st.maps
                .values()
                .filter(|m| only.is_none_or(|o| m.name == o))
                .map(|m| {
                    (
                        m.name.clone(),
                        m.wwid.clone(),
                        m.vendor.clone(),
                        m.product.clone(),
                        m.device.clone(),
                        m.paths.clone(),
                        m.pending.clone(),
                    )
                })
                .collect()
        };
        let mut text = String::new();
        let mut data = Vec::new();
        for (name, wwid, vendor, product, device, paths, pending) in maps {
            let status = match device.status().await {
                Ok(s) => s,
                Err(e) => {
                    let _ = writeln!(text, "{name} ({wwid}): {e}");
                    continue;
                }
            };
            // What the running engine has in force (a reconfigure or a resize changed it).
            let (size, policy) = (status.size, status.config.clone());
            let queue =
                status.view.queue_if_no_path && !matches!(policy.no_path, NoPathPolicy::Fail);
            let alua = status.view.paths.iter().any(|p| p.info.alua.is_some());
            let _ = writeln!(text, "{name} ({wwid}) {vendor},{product}");
            let _ = writeln!(
                text,
                "size={} features='{}' hwhandler='{}' wp=rw",
                human_size(size),
                if queue { "1 queue_if_no_path" } else { "0" },
                if alua { "1 alua" } else { "0" }
            );
            if let Some(p) = &pending {
                let _ = writeln!(
                    text,
                    "pending (takes effect when the map is re-created): {p}"
                );
            }
            let mut groups_json = Vec::new();
            let ng = status.view.groups.len();
            for (gi, g) in status.view.groups.iter().enumerate() {
                let last_group = gi + 1 == ng;
                let (gp, cont) = if last_group {
                    ("`-+-", "  ")
                } else {
                    ("|-+-", "| ")
                };
                let _ = writeln!(
                    text,
                    "{gp} policy='{}' prio={} status={}{}",
                    selector_name(&policy.selector),
                    g.priority,
                    match g.status {
                        GroupStatus::Active => "active",
                        GroupStatus::Enabled => "enabled",
                        GroupStatus::Disabled => "disabled",
                    },
                    if g.pinned {
                        " (switched by operator)"
                    } else {
                        ""
                    }
                );
                let mut paths_json = Vec::new();
                for (pi, pid) in g.paths.iter().enumerate() {
                    let Some(pv) = status.view.paths.iter().find(|p| p.id == *pid) else {
                        continue;
                    };
                    let name = paths
                        .iter()
                        .find(|(i, _)| i == pid)
                        .map(|(_, n)| n.clone())
                        .unwrap_or_default();
                    let (portal, target, lun, tsih, conn) = {
                        let st = self.shared.state();
                        match st.paths.get(&name) {
                            Some(p) => (
                                p.portal.to_string(),
                                p.target.clone(),
                                p.lun,
                                p.path.session().tsih().map(|t| t.0).unwrap_or(0),
                                conn_word(&p.path.session().state()),
                            ),
                            None => (name.clone(), String::new(), 0, 0, "gone"),
                        }
                    };
                    let branch = if pi + 1 == g.paths.len() { "`-" } else { "|-" };
                    let dm = if pv.state.dm == DmState::Active {
                        "active"
                    } else {
                        "failed"
                    };
                    let mut note = String::new();
                    if let Some(at) = pv.reinstate_at {
                        let _ = write!(
                            note,
                            "  [held {:.1}s: flapping]",
                            at.saturating_duration_since(Instant::now()).as_secs_f64()
                        );
                    }
                    if pv.operator_failed {
                        note.push_str("  [failed by operator]");
                    }
                    let _ = writeln!(text, "{cont}{branch} {portal} {target} lun {lun} tsih {tsih}  {dm} {} {conn}{note}", checker_word(pv.state.checker));
                    paths_json.push(reply::TopologyPath {
                        path: name,
                        portal,
                        target,
                        lun,
                        tsih,
                        dm_state: dm.into(),
                        checker_state: checker_word(pv.state.checker).into(),
                        connection: conn.into(),
                        priority: pv.info.effective_priority(),
                        last_failure: pv.last_failure.as_ref().map(|r| r.to_string()),
                        operator_failed: pv.operator_failed,
                    });
                }
                groups_json.push(reply::TopologyGroup {
                    group: gi + 1,
                    priority: g.priority,
                    status: format!("{}", g.status).to_lowercase(),
                    paths: paths_json,
                });
            }
            if status.view.groups.is_empty() {
                let _ = writeln!(text, "`-+- (no usable group)");
            }
            data.push(reply::TopologyMap {
                name,
                wwid,
                vendor,
                product,
                size,
                queue_if_no_path: queue,
                hwhandler: if alua { "alua" } else { "" }.into(),
                selector: selector_name(&policy.selector),
                queued: status.queued,
                groups: groups_json,
                pending_policy: pending,
            });
        }
        if text.is_empty() {
            text = "no maps\n".into();
        }
        Response::ok(text, reply::Topology { maps: data })
    }

    /// multipathd's `show paths` columns.
    pub async fn paths(&self) -> Response {
        self.paths_of_snapshot(self.snapshot().await)
    }

    fn paths_of_snapshot(&self, snap: Vec<PathSnap>) -> Response {
        let mut text = format!(
            "{:<26} {:<36} {:>4} {:<7} {:<11} {:<11} {:>10} {:<10} {}\n",
            "path", "target", "pri", "dm_st", "chk_st", "conn_st", "next_check", "map", "note"
        );
        let mut data = Vec::new();
        let now = Instant::now();
        for p in snap {
            let mut note = String::new();
            match &p.view {
                Some(v) => {
                    if let Some(at) = v.reinstate_at {
                        let _ = write!(
                            note,
                            "marginal: {} failures, reinstated only after {:.1}s healthy",
                            v.failures,
                            at.saturating_duration_since(now).as_secs_f64()
                        );
                    } else if v.operator_failed {
                        note.push_str("failed by operator");
                    } else if v.state.dm == DmState::Failed {
                        if let Some(r) = &v.last_failure {
                            note = r.to_string();
                        }
                    }
                }
                None if p.map.is_none() => note = p.excluded.clone().unwrap_or_default(),
                None => {}
            }
            let failure = p
                .view
                .as_ref()
                .and_then(|v| v.last_failure.as_ref().map(|r| r.to_string()));
            let map = p.map.clone().unwrap_or_else(|| "-".into());
            let next_s = if p.next_check > now {
                format!(
                    "{:.1}s",
                    p.next_check.saturating_duration_since(now).as_secs_f64()
                )
            } else {
                "now".into()
            };
            let _ = writeln!(
                text,
                "{:<26} {:<36} {:>4} {:<7} {:<11} {:<11} {:>10} {:<10} {}",
                p.name,
                p.target,
                p.priority,
                p.dm,
                checker_word(p.checker),
                p.conn,
                next_s,
                map,
                note
            );
            data.push(reply::PathRow {
                path: p.name,
                target: p.target,
                priority: p.priority,
                dm_state: p.dm.into(),
                checker_state: checker_word(p.checker).into(),
                connection: p.conn.into(),
                next_check_s: p.next_check.saturating_duration_since(now).as_secs_f64(),
                map,
                note,
                last_failure: failure,
                latency_us: p.latency.map(|l| l.as_micros() as u64),
            });
        }
        Response::ok(text, reply::Paths { paths: data })
    }

    pub async fn maps(&self) -> Response {
        self.maps_of(None).await
    }

    /// The `show maps` rows of every map, or of `only`.
    async fn maps_of(&self, only: Option<&str>) -> Response {
        let maps: Vec<_> = {
            let st = self.shared.state();
            st.maps
                .values()
                .filter(|m| only.is_none_or(|o| m.name == o))
                .map(|m| {
                    (
                        m.name.clone(),
                        m.wwid.clone(),
                        m.size,
                        m.block_size,
                        m.device.clone(),
                    )
                })
                .collect()
        };
        let mut text = format!(
            "{:<12} {:<36} {:>8} {:>6} {:>7} {:<16} {}\n",
            "name", "wwid", "size", "paths", "queued", "state", "device"
        );
        let mut data = Vec::new();
        for (name, wwid, size, block_size, dev) in maps {
            let (active, total, queued, state) = match dev.status().await {
                Ok(s) => {
                    let active = s
                        .view
                        .paths
                        .iter()
                        .filter(|p| p.state.dm == DmState::Active)
                        .count();
                    (active, s.view.paths.len(), s.queued, map_state(&s.view))
                }
                Err(e) => (0, 0, 0, e.to_string()),
            };
            let devices: Vec<String> = [
                self.shared.ublk.state(&wwid).map(|u| u.describe()),
                self.shared.nbd_devices.state(&name).map(|n| n.describe()),
            ]
            .into_iter()
            .flatten()
            .collect();
            let device = if devices.is_empty() {
                "-".to_string()
            } else {
                devices.join(",")
            };
            let _ = writeln!(
                text,
                "{:<12} {:<36} {:>8} {:>6} {:>7} {:<16} {}",
                name,
                wwid,
                human_size(size),
                format!("{active}/{total}"),
                queued,
                state,
                device
            );
            data.push(reply::MapRow {
                name,
                wwid,
                size,
                block_size,
                active_paths: active,
                paths: total,
                queued,
                state,
                device,
            });
        }
        Response::ok(text, reply::Maps { maps: data })
    }

    /// Counts, paths by checker state (the state in force, as `show paths` gives it),
    /// sessions down and why, unreachable portals.
    pub async fn status(&self) -> Response {
        let snap = self.snapshot().await;
        let mut by_state = std::collections::BTreeMap::new();
        let mut by_dm = std::collections::BTreeMap::new();
        for p in &snap {
            *by_state.entry(checker_word(p.checker)).or_insert(0usize) += 1;
            if p.map.is_some() {
                *by_dm.entry(p.dm).or_insert(0usize) += 1;
            }
        }
        let st = self.shared.state();
        let sessions_up = st.sessions.values().filter(|s| s.is_up()).count();
        let uptime = self.shared.epoch.elapsed();
        let mut text = format!(
            "uptime {}s, {} maps, {} paths, {}/{} sessions up\n",
            uptime.as_secs(),
            st.maps.len(),
            st.paths.len(),
            sessions_up,
            st.sessions.len()
        );
        for (k, v) in &by_state {
            let _ = writeln!(text, "paths {k}: {v}");
        }
        for (k, v) in &by_dm {
            let _ = writeln!(text, "paths {k} in maps: {v}");
        }
        for (p, e) in &st.portal_errors {
            let _ = writeln!(text, "portal {p} unreachable: {e}");
        }
        // Every session that is not up, and why: a wrong CHAP secret shows here before any
        // path exists.
        let mut down = Vec::new();
        for ((portal, target), s) in &st.sessions {
            let why = match s.state() {
                iscsi_initiator::SessionState::Up => continue,
                iscsi_initiator::SessionState::Connecting => "logging in".to_string(),
                iscsi_initiator::SessionState::Recovering { attempt, reason } => {
                    format!("retrying (attempt {attempt}): {reason}")
                }
                iscsi_initiator::SessionState::GaveUp(reason) => format!("gave up: {reason}"),
                iscsi_initiator::SessionState::Closed => "closed".to_string(),
            };
            let _ = writeln!(text, "session {portal} {target} down: {why}");
            down.push(reply::SessionDown {
                portal: portal.to_string(),
                target: target.clone(),
                state: why,
            });
        }
        Response::ok(
            text,
            reply::Status {
                uptime_s: uptime.as_secs(),
                maps: st.maps.len(),
                paths: st.paths.len(),
                sessions: st.sessions.len(),
                sessions_up,
                paths_by_checker: by_state
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                paths_by_dm_state: by_dm.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                unreachable_portals: st
                    .portal_errors
                    .iter()
                    .map(|(p, e)| reply::PortalError {
                        portal: p.to_string(),
                        error: e.clone(),
                    })
                    .collect(),
                sessions_down: down,
            },
        )
    }

    pub fn stats(&self) -> Response {
        let maps: Vec<_> = {
            let st = self.shared.state();
            st.maps
                .values()
                .map(|m| (m.name.clone(), m.device.clone(), m.paths.clone()))
                .collect()
        };
        // A latency for people: µs below a millisecond, ms below a second.
        let human = |d: std::time::Duration| {
            let us = d.as_secs_f64() * 1e6;
            if us < 1e3 {
                format!("{us:.0}us")
            } else if us < 1e6 {
                format!("{:.2}ms", us / 1e3)
            } else {
                format!("{:.2}s", us / 1e6)
            }
        };
        // p50, p99 (interpolated within their bucket) and the exact mean.
        let lat = |h: &mpath_engine::Histogram| {
            let q = |q: f64| h.quantile(q).map_or_else(|| "-".into(), human);
            let mean = h.mean().map_or_else(|| "-".into(), human);
            format!("p50 {} p99 {} mean {mean}", q(0.5), q(0.99))
        };
        let lat_json = |h: &mpath_engine::Histogram| {
            let us = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e6);
            reply::Latency {
                count: h.count(),
                sum_seconds: h.sum().as_secs_f64(),
                mean_us: us(h.mean()),
                p50_us: us(h.quantile(0.5)),
                p99_us: us(h.quantile(0.99)),
            }
        };
        let mut text = String::new();
        let mut data = Vec::new();
        for (name, dev, paths) in maps {
            let c = dev.counters();
            let _ = writeln!(
                text,
                "{name}: ios {} bytes {} errors {} requeues {} {} no-path {:.1}s in-doubt writes {} fenced writes {} hedged reads {} (won {})",
                c.map.ios, c.map.bytes, c.map.errors, c.map.requeues, lat(&c.map.latency),
                c.no_path_time.as_secs_f64(), c.in_doubt_writes, c.fenced_writes,
                c.map.hedged, c.map.hedges_won
            );
            let mut by_op = std::collections::BTreeMap::new();
            for op in mpath_engine::IoOp::ALL {
                let h = c.map.op(op);
                if h.count() > 0 {
                    let _ = writeln!(text, "  {}: ios {} {}", op.as_str(), h.count(), lat(h));
                }
                by_op.insert(op.as_str().into(), lat_json(h));
            }
            let mut pj = Vec::new();
            for (id, s) in &c.paths {
                let pn = paths
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_else(|| id.to_string());
                let _ = writeln!(
                    text,
                    "  {pn}: ios {} bytes {} errors {} requeues {} busy {} hedged {} {}",
                    s.ios,
                    s.bytes,
                    s.errors,
                    s.requeues,
                    s.busy,
                    s.hedged,
                    lat(&s.latency)
                );
                pj.push(reply::PathStats {
                    path: pn,
                    ios: s.ios,
                    bytes: s.bytes,
                    errors: s.errors,
                    requeues: s.requeues,
                    busy: s.busy,
                    hedged_reads: s.hedged,
                    latency: lat_json(&s.latency),
                });
            }
            data.push(reply::MapStats {
                map: name,
                ios: c.map.ios,
                bytes: c.map.bytes,
                errors: c.map.errors,
                requeues: c.map.requeues,
                no_path_seconds: c.no_path_time.as_secs_f64(),
                in_doubt_writes: c.in_doubt_writes,
                fenced_writes: c.fenced_writes,
                hedged_reads: c.map.hedged,
                hedges_won: c.map.hedges_won,
                latency: lat_json(&c.map.latency),
                latency_by_op: by_op,
                paths: pj,
            });
        }
        let bounds: Vec<String> = mpath_engine::LATENCY_BOUNDS_NS
            .iter()
            .map(|&ns| human(std::time::Duration::from_nanos(ns)))
            .collect();
        let resolution = format!(
            "mean exact; p50/p99 interpolated within the bucket they fall in (bounds {}; above the last, given as it)",
            bounds.join(" ")
        );
        if text.is_empty() {
            text = "no maps\n".into();
        } else {
            let _ = writeln!(text, "latency: {resolution}");
        }
        Response::ok(
            text,
            reply::Stats {
                maps: data,
                latency_resolution: resolution,
            },
        )
    }

    /// The last `last` events of the timeline (all of them with `None`).
    pub fn backlog(&self, last: Option<usize>) -> Vec<crate::timeline::TimelineEvent> {
        self.shared.timeline.last(last)
    }

    /// An event of the control connection's own (not in the timeline), stamped now.
    fn notice(&self, kind: EventKind, detail: String) -> crate::timeline::TimelineEvent {
        self.shared
            .timeline
            .event(std::time::Instant::now(), None, None, kind, detail)
    }

    pub fn events(&self, last: Option<usize>) -> Response {
        let evs = self.backlog(last);
        let mut text = String::new();
        for e in &evs {
            let _ = writeln!(text, "{}", format_event(e));
        }
        Response::ok(text, reply::Events { events: evs })
    }

    /// Every path as the views show it, with the engine's view of the maps they are in
    /// (asked once per map).
    pub(crate) async fn snapshot(&self) -> Vec<PathSnap> {
        let devices: Vec<_> = {
            let st = self.shared.state();
            st.maps
                .values()
                .map(|m| (m.name.clone(), m.device.clone()))
                .collect()
        };
        let mut views = std::collections::BTreeMap::new();
        for (name, dev) in devices {
            if let Ok(s) = dev.status().await {
                views.insert(name, s);
            }
        }
        let st = self.shared.state();
        st.paths
            .values()
            .map(|p| {
                let session = p.path.session().clone();
                let (view, in_flight, dm) = match &p.map {
                    Some((m, id)) => match views.get(m) {
                        Some(s) => {
                            let i = s.view.paths.iter().position(|v| v.id == *id);
                            let pv = i.map(|i| s.view.paths[i].clone());
                            let dm = match &pv {
                                Some(v) if v.state.dm == DmState::Active => "active",
                                Some(_) => "failed",
                                None => "?",
                            };
                            (pv, i.and_then(|i| s.in_flight.get(i).copied()), dm)
                        }
                        None => (None, None, "?"),
                    },
                    None => (None, None, "-"),
                };
                PathSnap {
                    name: p.name.clone(),
                    portal: p.portal.to_string(),
                    target: p.target.clone(),
                    lun: p.lun,
                    tsih: session.tsih().map(|t| t.0).unwrap_or(0),
                    conn: conn_word(&session.state()),
                    session,
                    map: p.map.as_ref().map(|(m, _)| m.clone()),
                    // The engine's checker state is the one in force: it hears the checker
                    // and the transport, which reports a dead connection before the next
                    // check does.
                    checker: view.as_ref().map_or(p.checker, |v| v.state.checker),
                    view,
                    in_flight,
                    dm,
                    priority: p.priority,
                    next_check: p.next_check,
                    last_check: p.last_check,
                    latency: p.latency,
                    excluded: p.excluded.clone(),
                    lu: p.lu.clone(),
                }
            })
            .collect()
    }

    /// A path's name from its name or a unique prefix of it (a portal, say).
    fn resolve_path(&self, q: &str) -> Result<String, String> {
        let st = self.shared.state();
        if st.paths.contains_key(q) {
            return Ok(q.to_string());
        }
        let matches: Vec<&String> = st.paths.keys().filter(|n| n.starts_with(q)).collect();
        match matches.as_slice() {
            [n] => Ok((*n).clone()),
            [] => Err(format!("no path {q:?} (mpath show paths lists them)")),
            many => Err(format!(
                "{q:?} matches {} paths: {}",
                many.len(),
                many.iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// A map's name from its name or its WWID.
    fn resolve_map(&self, q: &str) -> Result<String, String> {
        let st = self.shared.state();
        if st.maps.contains_key(q) {
            return Ok(q.to_string());
        }
        st.maps
            .values()
            .find(|m| m.wwid == q)
            .map(|m| m.name.clone())
            .ok_or_else(|| {
                format!(
                    "no map {q:?} (maps: {})",
                    st.maps.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// `show paths format FMT`: the text laid out by the format; the data as `show paths`.
    async fn paths_format(&self, fmt: &str, raw: bool) -> Response {
        let pieces = match parse_format(fmt, PATH_WILDCARDS, PATH_NOT_HERE, "paths") {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        let snap = self.snapshot().await;
        let cfg = self.shared.cfg();
        let rows: Vec<Value> = snap
            .iter()
            .map(|p| {
                let mut r = json!(p.record());
                let checker = cfg
                    .resolve(p.lu.wwid.as_deref(), &p.lu.vendor, &p.lu.product)
                    .checker;
                let now = Instant::now();
                r["hcil"] = json!(format!("{}/{}", p.target, p.lun));
                r["vpr"] = json!(format!(
                    "{},{},{}",
                    p.lu.vendor, p.lu.product, p.lu.revision
                ));
                r["checker"] = json!(config::checker_name(checker));
                r["next_check"] = json!(if p.next_check > now {
                    format!(
                        "{:.1}s",
                        p.next_check.saturating_duration_since(now).as_secs_f64()
                    )
                } else {
                    "now".into()
                });
                r["hsize"] = json!(human_size(
                    p.lu.blocks.saturating_mul(p.lu.block_size as u64)
                ));
                r["marginal"] = json!(
                    if p.view.as_ref().is_some_and(|v| v.reinstate_at.is_some()) {
                        "marginal"
                    } else {
                        "normal"
                    }
                );
                r["initiator"] = json!(cfg.initiator_name);
                r["protocol"] = json!("iscsi");
                r["lun_hex"] = json!(format!("0x{:04x}", p.lun));
                r
            })
            .collect();
        let text = render_format(&pieces, &rows, raw);
        Response::ok(text, self.paths_of_snapshot(snap).data)
    }

    /// `show maps format FMT`: the text laid out by the format; the data as `show maps`.
    async fn maps_format(&self, fmt: &str, raw: bool) -> Response {
        let pieces = match parse_format(fmt, MAP_WILDCARDS, MAP_NOT_HERE, "maps") {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        let maps = self.maps_of(None).await;
        let mut rows = Vec::new();
        for m in maps.data["maps"].as_array().cloned().unwrap_or_default() {
            let name = m["name"].as_str().unwrap_or_default().to_string();
            let (dev, vendor, product, revision) = {
                let st = self.shared.state();
                let Some(mr) = st.maps.get(&name) else {
                    continue;
                };
                let revision = st
                    .paths
                    .values()
                    .find(|p| p.map.as_ref().is_some_and(|(n, _)| *n == name))
                    .map(|p| p.lu.revision.clone())
                    .unwrap_or_default();
                (
                    mr.device.clone(),
                    mr.vendor.clone(),
                    mr.product.clone(),
                    revision,
                )
            };
            let mut r = m.clone();
            r["vendor"] = json!(vendor);
            r["product"] = json!(product);
            r["revision"] = json!(revision);
            r["vpr"] = json!(format!("{vendor},{product},{revision}"));
            r["hsize"] = json!(human_size(m["size"].as_u64().unwrap_or(0)));
            r["write_prot"] = json!("rw");
            r["no_path_seconds"] =
                json!(format!("{:.0}", dev.counters().no_path_time.as_secs_f64()));
            if let Ok(s) = dev.status().await {
                let queue =
                    s.view.queue_if_no_path && !matches!(s.config.no_path, NoPathPolicy::Fail);
                let alua = s.view.paths.iter().any(|p| p.info.alua.is_some());
                r["failback"] = json!(unquote(config::failback_name(&s.config.failback)));
                r["queueing"] = json!(match s.view.queueing {
                    QueueingView::Queueing { until: Some(t), .. } => format!(
                        "{:.0}s left",
                        t.saturating_duration_since(Instant::now()).as_secs_f64()
                    ),
                    QueueingView::Queueing { until: None, .. } => "on".into(),
                    QueueingView::Failing { .. } => "off".into(),
                    QueueingView::Usable if !queue => "off".into(),
                    QueueingView::Usable => unquote(config::no_path_name(&s.config.no_path)),
                });
                r["features"] = json!(if queue { "1 queue_if_no_path" } else { "0" });
                r["hwhandler"] = json!(if alua { "1 alua" } else { "0" });
                r["failures"] = json!(s.view.paths.iter().map(|p| p.failures).sum::<u64>());
            }
            rows.push(r);
        }
        Response::ok(render_format(&pieces, &rows, raw), maps.data)
    }

    /// `show sessions [--verbose]`: iscsiadm's `-m session` (one line each) and `-P 3`
    /// (every negotiated parameter, the paths and maps each serves) views.
    async fn sessions(&self, verbose: bool) -> Response {
        let snap = self.snapshot().await;
        let initiator = self.shared.cfg().initiator_name;
        let sessions: Vec<_> = {
            let st = self.shared.state();
            st.sessions
                .iter()
                .map(|((portal, target), s)| (*portal, target.clone(), s.clone()))
                .collect()
        };
        // The last failure of each portal's sessions, from the timeline.
        let failures: std::collections::BTreeMap<String, (String, String)> = self
            .shared
            .timeline
            .filtered(|e| matches!(e.kind, EventKind::SessionFailed | EventKind::SessionGaveUp))
            .into_iter()
            .filter_map(|e| Some((e.path?, (e.time, e.detail))))
            .collect();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let yes = |b: bool| if b { "Yes" } else { "No" };
        let digest = |b: bool| if b { "CRC32C" } else { "None" };
        let mut text = String::new();
        let mut data = Vec::new();
        for (portal, target, s) in sessions {
            let state = s.state();
            let why = match &state {
                SessionState::Recovering { reason, .. } => Some(reason.to_string()),
                SessionState::GaveUp(r) => Some(r.to_string()),
                _ => None,
            };
            let neg = s.negotiated();
            let tsih = s.tsih().map(|t| t.0);
            let tpgt = neg.as_ref().map(|n| n.session.target_portal_group_tag);
            let isid = neg.as_ref().map(|n| {
                n.isid
                    .0
                    .iter()
                    .fold("0x".to_string(), |h, b| format!("{h}{b:02x}"))
            });
            let stats = s.stats();
            let last_failure = failures.get(&portal.to_string());
            let paths: Vec<reply::SessionPath> = snap
                .iter()
                .filter(|p| p.portal == portal.to_string() && p.target == target)
                .map(|p| reply::SessionPath {
                    path: p.name.clone(),
                    lun: p.lun,
                    map: p.map.clone(),
                    dm_state: p.dm.into(),
                    checker_state: checker_word(p.checker).into(),
                })
                .collect();
            let negotiated = neg.as_ref().map(|n| {
                let (c, s) = (&n.connection, &n.session);
                reply::Negotiated {
                    header_digest: digest(c.header_digest).into(),
                    data_digest: digest(c.data_digest).into(),
                    max_recv_data_segment_length: c.max_recv_data_segment_length,
                    max_xmit_data_segment_length: c.max_send_data_segment_length,
                    first_burst_length: s.first_burst_length,
                    max_burst_length: s.max_burst_length,
                    immediate_data: s.immediate_data,
                    initial_r2t: s.initial_r2t,
                    max_outstanding_r2t: s.max_outstanding_r2t,
                    max_connections: s.max_connections,
                    default_time2wait: s.default_time2wait,
                    default_time2retain: s.default_time2retain,
                    data_pdu_in_order: s.data_pdu_in_order,
                    data_sequence_in_order: s.data_sequence_in_order,
                    error_recovery_level: s.error_recovery_level,
                }
            });
            let _ = writeln!(
                text,
                "tcp: [{}] {portal},{} {target} ({})",
                tsih.map_or("-".into(), |t| t.to_string()),
                tpgt.map_or("-".into(), |t| t.to_string()),
                conn_word(&state)
            );
            if verbose {
                let _ = writeln!(text, "\tIface Initiatorname: {initiator}");
                let _ = writeln!(text, "\tISID: {}", isid.as_deref().unwrap_or("-"));
                let _ = writeln!(
                    text,
                    "\tTSIH: {}",
                    tsih.map_or("-".into(), |t| t.to_string())
                );
                let _ = writeln!(
                    text,
                    "\tiSCSI Session State: {}{}",
                    conn_word(&state),
                    why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
                );
                let _ = writeln!(
                    text,
                    "\tLogins: {}, connection failures: {}, last failure: {}",
                    n(&stats.logins),
                    n(&stats.failures),
                    last_failure.map_or("-".into(), |(t, d)| format!("{t} {d}"))
                );
                let _ = writeln!(
                    text,
                    "\tCommands: {}, bytes in {}, bytes out {}, round trip {} us",
                    n(&stats.commands),
                    n(&stats.bytes_in),
                    n(&stats.bytes_out),
                    n(&stats.srtt_us)
                );
                let _ = writeln!(text, "\t************************");
                let _ = writeln!(text, "\tNegotiated iSCSI params:");
                let _ = writeln!(text, "\t************************");
                match &neg {
                    Some(ng) => {
                        let (c, s) = (&ng.connection, &ng.session);
                        for (k, v) in [
                            ("HeaderDigest", digest(c.header_digest).to_string()),
                            ("DataDigest", digest(c.data_digest).to_string()),
                            (
                                "MaxRecvDataSegmentLength",
                                c.max_recv_data_segment_length.to_string(),
                            ),
                            (
                                "MaxXmitDataSegmentLength",
                                c.max_send_data_segment_length.to_string(),
                            ),
                            ("FirstBurstLength", s.first_burst_length.to_string()),
                            ("MaxBurstLength", s.max_burst_length.to_string()),
                            ("ImmediateData", yes(s.immediate_data).into()),
                            ("InitialR2T", yes(s.initial_r2t).into()),
                            ("MaxOutstandingR2T", s.max_outstanding_r2t.to_string()),
                            ("MaxConnections", s.max_connections.to_string()),
                            ("DefaultTime2Wait", s.default_time2wait.to_string()),
                            ("DefaultTime2Retain", s.default_time2retain.to_string()),
                            ("DataPDUInOrder", yes(s.data_pdu_in_order).into()),
                            ("DataSequenceInOrder", yes(s.data_sequence_in_order).into()),
                            ("ErrorRecoveryLevel", s.error_recovery_level.to_string()),
                        ] {
                            let _ = writeln!(text, "\t{k}: {v}");
                        }
                    }
                    None => {
                        let _ = writeln!(text, "\t(not logged in yet)");
                    }
                }
                let _ = writeln!(text, "\t************************");
                let _ = writeln!(text, "\tPaths and maps:");
                let _ = writeln!(text, "\t************************");
                if paths.is_empty() {
                    let _ = writeln!(text, "\t(none)");
                }
                for p in &paths {
                    let _ = writeln!(
                        text,
                        "\tLUN {}: path {}, map {}, {} {}",
                        p.lun,
                        p.path,
                        p.map.as_deref().unwrap_or("-"),
                        p.dm_state,
                        p.checker_state
                    );
                }
            }
            data.push(reply::SessionRow {
                portal: portal.to_string(),
                target,
                tpgt,
                isid,
                tsih,
                state: conn_word(&state).into(),
                state_reason: why,
                initiator: initiator.clone(),
                logins: n(&stats.logins),
                connection_failures: n(&stats.failures),
                last_failure: last_failure.map(|(t, d)| reply::Failure {
                    time: t.clone(),
                    reason: d.clone(),
                }),
                commands: n(&stats.commands),
                bytes_in: n(&stats.bytes_in),
                bytes_out: n(&stats.bytes_out),
                srtt_us: n(&stats.srtt_us),
                negotiated,
                paths,
            });
        }
        if text.is_empty() {
            text = "no sessions\n".into();
        }
        Response::ok(text, reply::Sessions { sessions: data })
    }

    /// `login PORTAL [--target IQN]` (iscsiadm -m node -l): log in to every target the
    /// portal offers, or to one more of them, until the daemon stops or a reconfigure
    /// re-reads the file. Answers once a session through the portal is up.
    async fn login(
        &self,
        portal: &str,
        target: Option<&str>,
        chap: Option<ChapSecret>,
        mutual_chap: Option<ChapSecret>,
    ) -> Response {
        let addr = match parse_portal(portal) {
            Ok(a) => a,
            Err(e) => return Response::err(e),
        };
        if mutual_chap.is_some() && chap.is_none() {
            return Response::err("mutual CHAP needs CHAP as well (--chap-user)");
        }
        let (p, added) = {
            let mut cfg = self.shared.cfg.lock().unwrap_or_else(|e| e.into_inner());
            let i = cfg.portals.iter().position(|p| p.address == addr);
            let mut p = i
                .map(|i| cfg.portals[i].clone())
                .unwrap_or(PortalConfig::new(addr));
            match target {
                // Every target: no filter.
                None => p.targets.clear(),
                // One more target of a portal limited to some.
                Some(t) if i.is_none() => p.targets = vec![t.to_string()],
                Some(t) if !p.targets.is_empty() && !p.targets.iter().any(|x| x == t) => {
                    p.targets.push(t.to_string())
                }
                Some(_) => {}
            }
            if let Some(c) = chap {
                p.chap = Some(c);
                p.mutual_chap = mutual_chap;
            }
            match i {
                Some(i) => cfg.portals[i] = p.clone(),
                None => cfg.portals.push(p.clone()),
            }
            (p, i.is_none())
        };
        if p.chap.is_some() {
            // Sessions that gave up (a refused login: the wrong secret, say) are replaced
            // by sessions with the credentials given; sessions up keep theirs.
            let gave_up: Vec<String> = self
                .shared
                .state()
                .sessions
                .iter()
                .filter(|((a, t), s)| {
                    *a == addr
                        && target.is_none_or(|x| x == t)
                        && matches!(s.state(), SessionState::GaveUp(_))
                })
                .map(|((_, t), _)| t.clone())
                .collect();
            for t in gave_up {
                self.logout_sessions(addr, Some(&t), "new CHAP credentials")
                    .await;
            }
        }
        self.shared.start_portals(std::slice::from_ref(&p));
        let what = match target {
            Some(t) => format!("{t} through {addr}"),
            None => format!("{addr}"),
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let failure = loop {
            {
                let st = self.shared.state();
                let ours: Vec<_> = st
                    .sessions
                    .iter()
                    .filter(|((a, t), _)| *a == addr && target.is_none_or(|x| x == t))
                    .map(|(_, s)| s.state())
                    .collect();
                if ours.iter().any(|s| matches!(s, SessionState::Up)) {
                    break None;
                }
                if let Some(e) = st.portal_errors.get(&addr) {
                    break Some(format!("{addr} does not answer: {e}"));
                }
                if let Some(SessionState::GaveUp(r)) =
                    ours.iter().find(|s| matches!(s, SessionState::GaveUp(_)))
                {
                    break Some(format!("login to {what} failed: {r}"));
                }
                // A refused login (authentication, authorization, no such target) is said
                // at once, as iscsiadm does, not after the wait.
                if let Some(SessionState::Recovering { reason, .. }) = ours.iter().find(|s| {
                    matches!(s, SessionState::Recovering { reason, .. }
                        if reason.kind == block::PathFailKind::LoginFailed)
                }) {
                    break Some(if reason.detail.contains(&addr.to_string()) {
                        reason.detail.clone()
                    } else {
                        format!("login to {what} failed: {}", reason.detail)
                    });
                }
            }
            if Instant::now() >= deadline {
                break Some(format!(
                    "no session to {what} after 10 s (does the portal offer it? mpath iscsi discover {addr})"
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        if let Some(e) = failure {
            // A portal this login added leaves no trace.
            if added {
                self.shared
                    .cfg
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .portals
                    .retain(|p| p.address != addr);
                self.logout_sessions(addr, None, "login failed").await;
                self.shared.state().portal_errors.remove(&addr);
            }
            return Response::err(e);
        }
        let sessions: Vec<String> = {
            let st = self.shared.state();
            st.sessions
                .iter()
                .filter(|((a, t), s)| *a == addr && target.is_none_or(|x| x == t) && s.is_up())
                .map(|((_, t), _)| t.clone())
                .collect()
        };
        self.shared.record(
            None,
            Some(&addr.to_string()),
            EventKind::Operator,
            format!("login {what}"),
        );
        Response::ok(
            format!("ok: logged in to {addr}: {}\n", sessions.join(", ")),
            reply::Login {
                portal: addr.to_string(),
                targets: sessions,
            },
        )
    }

    /// `logout PORTAL [--target IQN]` (iscsiadm -m node -u): its paths leave their maps
    /// (I/O moves to the other paths; a map left without paths is removed) and its sessions
    /// log out; the portal (or the target of it) is not logged in again until a `login` or
    /// a reconfigure that reads it from the file.
    async fn logout(&self, portal: &str, target: Option<&str>) -> Response {
        let addr = match parse_portal(portal) {
            Ok(a) => a,
            Err(e) => return Response::err(e),
        };
        let known = {
            let st = self.shared.state();
            st.sessions
                .keys()
                .any(|(a, t)| *a == addr && target.is_none_or(|x| x == t))
        };
        let configured = {
            let mut cfg = self.shared.cfg.lock().unwrap_or_else(|e| e.into_inner());
            let before = cfg.portals.clone();
            match target {
                None => cfg.portals.retain(|p| p.address != addr),
                Some(t) => {
                    for p in cfg.portals.iter_mut().filter(|p| p.address == addr) {
                        p.targets.retain(|x| x != t);
                    }
                    // A portal limited to the target alone is logged out whole (an empty
                    // list would mean every target).
                    cfg.portals.retain(|p| {
                        !(p.address == addr
                            && p.targets.is_empty()
                            && before
                                .iter()
                                .any(|b| b.address == addr && !b.targets.is_empty()))
                    });
                }
            }
            cfg.portals != before
        };
        if !known && !configured {
            let st = self.shared.state();
            let list: Vec<String> = st
                .sessions
                .keys()
                .map(|(a, t)| format!("{a} {t}"))
                .collect();
            return Response::err(format!(
                "no session to {}{addr} (sessions: {})",
                target.map(|t| format!("{t} through ")).unwrap_or_default(),
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                }
            ));
        }
        if target.is_none() {
            self.shared.state().portal_errors.remove(&addr);
        }
        let (sessions, paths) = self
            .logout_sessions(addr, target, "logged out by an operator")
            .await;
        let what = match target {
            Some(t) => format!("{t} through {addr}"),
            None => format!("{addr}"),
        };
        self.shared.record(
            None,
            Some(&addr.to_string()),
            EventKind::Operator,
            format!("logout {what}"),
        );
        Response::ok(
            format!("ok: logged out of {what}: {sessions} session(s), {paths} path(s) left their maps\n"),
            reply::Logout {
                portal: addr.to_string(),
                target: target.map(str::to_string),
                sessions,
                paths,
            },
        )
    }

    /// Take the paths of the sessions to `addr` (to `target` only, if given) out of their
    /// maps and log the sessions out: (sessions, paths).
    async fn logout_sessions(
        &self,
        addr: std::net::SocketAddr,
        target: Option<&str>,
        why: &str,
    ) -> (usize, usize) {
        let names: Vec<String> = self
            .shared
            .state()
            .paths
            .values()
            .filter(|p| p.portal == addr && target.is_none_or(|t| t == p.target))
            .map(|p| p.name.clone())
            .collect();
        let paths = self.shared.remove_paths(names, why).await;
        let sessions: Vec<_> = {
            let mut st = self.shared.state();
            let keys: Vec<_> = st
                .sessions
                .keys()
                .filter(|(a, t)| *a == addr && target.is_none_or(|x| x == t))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| st.sessions.remove(&k))
                .collect()
        };
        let n = sessions.len();
        for s in sessions {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.logout()).await;
        }
        (n, paths)
    }

    /// `show map MAP`: its `show maps` row, its topology block and the policy in force.
    async fn show_map(&self, q: &str) -> Response {
        let name = match self.resolve_map(q) {
            Ok(n) => n,
            Err(e) => return Response::err(e),
        };
        let (row, topo_resp) = (
            self.maps_of(Some(&name)).await,
            self.topology_of(Some(&name)).await,
        );
        let row = row
            .parse::<reply::Maps>()
            .ok()
            .and_then(|r| r.maps.into_iter().next());
        let topo = topo_resp
            .parse::<reply::Topology>()
            .ok()
            .and_then(|r| r.maps.into_iter().next());
        let (Some(row), Some(topo)) = (row, topo) else {
            return Response::err(format!("map {name:?} is gone"));
        };
        let policy = match self.map(&name) {
            Ok(d) => d.status().await.ok().map(|s| s.config),
            Err(e) => return Response::err(e),
        };
        let mut text = String::new();
        let _ = writeln!(text, "name: {name}");
        let _ = writeln!(text, "wwid: {}", topo.wwid);
        let _ = writeln!(text, "vendor/product: {},{}", topo.vendor, topo.product);
        let _ = writeln!(
            text,
            "size: {} ({} bytes, {}-byte blocks)",
            human_size(topo.size),
            topo.size,
            row.block_size
        );
        let _ = writeln!(
            text,
            "state: {} ({}/{} paths active, {} queued)",
            row.state, row.active_paths, row.paths, row.queued
        );
        let _ = writeln!(text, "device: {}", row.device);
        if let Some(p) = &policy {
            let _ = writeln!(
                text,
                "policy: selector {}, grouping {}, failback {}, no_path_retry {}",
                selector_name(&p.selector),
                config::grouping_name(p.grouping),
                unquote(config::failback_name(&p.failback)),
                unquote(config::no_path_name(&p.no_path))
            );
        }
        let _ = writeln!(text, "topology:");
        for l in topo_resp.text.lines() {
            let _ = writeln!(text, "  {l}");
        }
        let data = reply::MapRecord {
            topology: topo,
            block_size: row.block_size,
            active_paths: row.active_paths,
            paths: row.paths,
            state: row.state,
            device: row.device,
            grouping: policy
                .as_ref()
                .map(|p| config::grouping_name(p.grouping).to_string()),
            failback: policy
                .as_ref()
                .map(|p| unquote(config::failback_name(&p.failback))),
            no_path_retry: policy
                .as_ref()
                .map(|p| unquote(config::no_path_name(&p.no_path))),
        };
        Response::ok(text, data)
    }

    /// `show path PATH`: everything known about one path.
    async fn show_path(&self, q: &str) -> Response {
        let name = match self.resolve_path(q) {
            Ok(n) => n,
            Err(e) => return Response::err(e),
        };
        let Some(p) = self.snapshot().await.into_iter().find(|p| p.name == name) else {
            return Response::err(format!("path {name:?} is gone"));
        };
        let mut text = String::new();
        let record = p.record();
        let fields = match json!(record) {
            Value::Object(o) => o,
            _ => Default::default(),
        };
        for (k, v) in fields {
            let v = match v {
                Value::Null => "-".to_string(),
                Value::String(s) => s,
                v => v.to_string(),
            };
            let _ = writeln!(text, "{k}: {v}");
        }
        Response::ok(text, record)
    }

    /// Find a path by its name, or by a unique prefix (a portal, say).
    fn find_path(
        &self,
        q: &str,
    ) -> Result<
        (
            String,
            Arc<mpath_engine::MultipathDevice>,
            mpath_policy::PathId,
        ),
        String,
    > {
        let name = self.resolve_path(q)?;
        let st = self.shared.state();
        let p = st
            .paths
            .get(&name)
            .ok_or_else(|| format!("path {name:?} is gone"))?;
        match &p.map {
            Some((m, id)) => st
                .maps
                .get(m)
                .map(|mr| (p.name.clone(), mr.device.clone(), *id))
                .ok_or_else(|| format!("map {m} is gone")),
            None => Err(format!(
                "path {} is in no map ({})",
                p.name,
                p.excluded.clone().unwrap_or_default()
            )),
        }
    }

    async fn fail_path(&self, q: &str) -> Response {
        let (name, dev, id) = match self.find_path(q) {
            Ok(x) => x,
            Err(e) => return Response::err(e),
        };
        match dev.fail_path(id).await {
            Ok(()) => {
                self.shared.record(
                    Some(dev.name()),
                    Some(&name),
                    EventKind::Operator,
                    "fail path".into(),
                );
                Response::ok(
                    format!("ok: {name} failed\n"),
                    reply::PathDone { path: name },
                )
            }
            Err(e) => Response::err(format!("{name}: {e}")),
        }
    }

    async fn reinstate_path(&self, q: &str) -> Response {
        let (name, dev, id) = match self.find_path(q) {
            Ok(x) => x,
            Err(e) => return Response::err(e),
        };
        match dev.reinstate_path(id).await {
            Ok(r) => {
                self.shared.record(
                    Some(dev.name()),
                    Some(&name),
                    EventKind::Operator,
                    "reinstate path".into(),
                );
                let text = match r {
                    mpath_engine::mpath_policy::Reinstatement::Now => {
                        format!("ok: {name} reinstated\n")
                    }
                    mpath_engine::mpath_policy::Reinstatement::Delayed { until } => format!(
                        "ok: {name} will be reinstated in {} (flap damping holds it)\n",
                        human_duration(until.saturating_duration_since(std::time::Instant::now()))
                    ),
                };
                Response::ok(text, reply::PathDone { path: name })
            }
            Err(e) => Response::err(format!("{name}: {e}")),
        }
    }

    fn map(&self, name: &str) -> Result<Arc<mpath_engine::MultipathDevice>, String> {
        let st = self.shared.state();
        st.maps.get(name).map(|m| m.device.clone()).ok_or_else(|| {
            format!(
                "no map {name:?} (maps: {})",
                st.maps.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    async fn switch_group(&self, map: &str, group: usize) -> Response {
        let dev = match self.map(map) {
            Ok(d) => d,
            Err(e) => return Response::err(e),
        };
        if group == 0 {
            return Response::err("groups are numbered from 1, as in show topology");
        }
        match dev.switch_group(group - 1).await {
            Ok(()) => {
                self.shared.record(
                    Some(map),
                    None,
                    EventKind::Operator,
                    format!("switchgroup {group}"),
                );
                Response::ok(
                    format!("ok: {map} switched to group {group}\n"),
                    reply::Done {},
                )
            }
            // The policy counts groups from 0; operators, as `show topology`, from 1.
            Err(mpath_engine::MessageError::Policy(
                mpath_engine::mpath_policy::PolicyError::NoSuchGroup(_),
            )) => {
                let groups = dev.status().await.map(|s| s.view.groups.len()).unwrap_or(0);
                Response::err(format!(
                    "{map}: no group {group} (it has {groups}; show topology numbers them)"
                ))
            }
            Err(e) => Response::err(format!("{map}: {e}")),
        }
    }

    async fn queueing(&self, map: &str, on: bool) -> Response {
        let dev = match self.map(map) {
            Ok(d) => d,
            Err(e) => return Response::err(e),
        };
        match dev.set_queue_if_no_path(on).await {
            Ok(()) => {
                let what = if on {
                    "restorequeueing"
                } else {
                    "disablequeueing"
                };
                self.shared
                    .record(Some(map), None, EventKind::Operator, what.into());
                Response::ok(format!("ok: {map} {what}\n"), reply::Done {})
            }
            Err(e) => Response::err(format!("{map}: {e}")),
        }
    }
}

/// One timeline line: `+12.345s  mpatha  127.0.0.2:3260/1  path-failed  stalled ...`.
pub fn format_event(e: &crate::timeline::TimelineEvent) -> String {
    format!(
        "{:>10}  {:<8} {:<24} {:<22} {}",
        format!("+{:.3}s", e.t_ms as f64 / 1000.0),
        e.map.as_deref().unwrap_or("-"),
        e.path.as_deref().unwrap_or("-"),
        e.kind,
        e.detail
    )
}

/// One event of `show events --follow`: its line, and the event as data.
pub fn event_response(e: &crate::timeline::TimelineEvent) -> Response {
    Response::ok(
        format!("{}\n", format_event(e)),
        serde_json::to_value(e).unwrap_or(Value::Null),
    )
}

/// Serve the control socket until the daemon stops.
pub async fn serve(listener: UnixListener, control: Control) {
    let mut stop = control.shared.stop.subscribe();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { warn!("control socket accept: {e}"); continue; }
            },
            _ = stop.changed() => return,
        };
        let c = control.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, c).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, control: Control) -> std::io::Result<()> {
    // SO_PEERCRED: who is asking.
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                write_resp(&mut w, &Response::err(format!("bad request: {e}"))).await?;
                continue;
            }
        };
        if !permitted(&req, uid, me) {
            write_resp(&mut w, &Response::err(format!("permission denied: {req:?} needs root or the daemon's user (uid {me}); you are uid {}", uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into())))).await?;
            continue;
        }
        if let Request::ShowEvents { follow: true, last } = req {
            // One response per event, the backlog's and the live ones alike: its data is
            // the event itself (NDJSON for `--json`).
            let mut rx = control.shared.events.subscribe();
            for e in control.backlog(last.or(Some(20))) {
                write_resp(&mut w, &event_response(&e)).await?;
            }
            loop {
                match rx.recv().await {
                    Ok(e) => write_resp(&mut w, &event_response(&e)).await?,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Said as an event too, so that every line has the same shape.
                        let e = control.notice(
                            EventKind::EventsSkipped,
                            format!("{n} events skipped: too slow a reader"),
                        );
                        write_resp(&mut w, &event_response(&e)).await?;
                    }
                    Err(_) => return Ok(()),
                }
            }
        }
        let resp = control.handle(req).await;
        write_resp(&mut w, &resp).await?;
    }
    Ok(())
}

async fn write_resp(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut b = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    b.push(b'\n');
    w.write_all(&b).await
}

/// Send one request to a daemon's control socket; for `ShowEvents { follow: true }` call
/// `on_line` for every response (one per event, its data the event) until the connection
/// closes.
pub async fn call(
    socket: &std::path::Path,
    req: &Request,
    mut on_line: impl FnMut(Response),
) -> std::io::Result<()> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot reach the daemon at {}: {e} (is `mpath daemon` running? --socket picks another)", socket.display()),
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut b = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    b.push(b'\n');
    w.write_all(&b).await?;
    let follow = matches!(req, Request::ShowEvents { follow: true, .. });
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp: Response = serde_json::from_str(&line).map_err(std::io::Error::other)?;
        on_line(resp);
        if !follow {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_request() -> Vec<Request> {
        vec![
            Request::ShowTopology,
            Request::ShowPaths,
            Request::ShowMaps,
            Request::ShowMap { map: "m".into() },
            Request::ShowSessions { verbose: true },
            Request::ShowPathsFormat {
                format: "%d".into(),
                raw: false,
            },
            Request::ShowMapsFormat {
                format: "%n".into(),
                raw: true,
            },
            Request::ShowPath { path: "p".into() },
            Request::ShowStatus,
            Request::ShowStats,
            Request::ShowConfig,
            Request::ShowEvents {
                follow: true,
                last: None,
            },
            Request::FailPath { path: "p".into() },
            Request::ReinstatePath { path: "p".into() },
            Request::SwitchGroup {
                map: "m".into(),
                group: 1,
            },
            Request::Queueing {
                map: "m".into(),
                on: false,
            },
            Request::Login {
                portal: "127.0.0.1".into(),
                target: None,
                chap: None,
                mutual_chap: None,
            },
            Request::Login {
                portal: "127.0.0.1".into(),
                target: None,
                chap: Some(ChapSecret {
                    user: "u".into(),
                    secret: "s".into(),
                }),
                mutual_chap: None,
            },
            Request::Logout {
                portal: "127.0.0.1:3260".into(),
                target: Some("iqn.2026-01.io.mpath:t".into()),
            },
            Request::Reconfigure,
            Request::Shutdown,
        ]
    }

    #[test]
    fn only_changes_mutate() {
        for r in every_request() {
            let name = serde_json::to_value(&r).unwrap()["cmd"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(r.mutates(), !name.starts_with("show-"), "{name}");
        }
    }

    #[test]
    fn changes_need_root_or_the_daemons_user() {
        let me = 1000;
        for r in every_request() {
            // Reading: anyone, even an unknown peer.
            for peer in [None, Some(0), Some(me), Some(4242)] {
                let ok = permitted(&r, peer, me);
                let want = !r.mutates() || peer == Some(0) || peer == Some(me);
                assert_eq!(ok, want, "{r:?} from {peer:?}");
            }
        }
        assert!(!permitted(&Request::Shutdown, Some(4242), me));
        assert!(!permitted(&Request::Shutdown, None, me));
        assert!(permitted(&Request::Shutdown, Some(0), me));
        assert!(permitted(&Request::ShowPaths, Some(4242), me));
    }

    #[test]
    fn requests_round_trip_as_json() {
        for r in every_request() {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r, "{s}");
        }
    }
}
