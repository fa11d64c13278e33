//! The daemon's configuration: TOML, with every error naming its key and line.
//!
//! ```toml
//! [defaults]
//! selector = "service-time"        # round-robin | queue-length | service-time | historical-service-time
//! grouping = "group_by_prio"       # failover | multibus | group_by_prio | group_by_serial | group_by_node_name | group_by_tpg
//! failback = "immediate"           # immediate | manual | followover | <seconds>
//! no_path_retry = "60s"            # fail | queue | <duration>
//! checker = "tur"                  # tur | readsector0 | directio
//! checker_interval = "2s"
//! stale_write_fence = "off"        # off | <duration>: see docs/daemon.md
//! prioritizer = "alua"             # const | alua | weightedpath | path_latency
//! user_friendly_names = true
//! bindings_file = "/var/lib/mpath/bindings"
//! busy_timeout = "30s"             # how long BUSY / TASK SET FULL are retried (never a path failure)
//! alua_transition_timeout = "60s"  # how long ALUA transitioning is retried before the path fails
//! stall_ping_floor = "250ms"       # iSCSI failure detection: see docs/daemon.md
//!
//! [[portal]]
//! address = "127.0.0.2:3260"
//! chap = { user = "alice", secret = "a-long-secret" }
//!
//! [[multipath]]
//! wwid = "36026d70..."
//! alias = "db"
//!
//! [blacklist]
//! wwid = ["3600..."]
//! vendor = ["IET"]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iscsi_target::config::Ctx;
use mpath_policy::{
    Failback, FlapDamping, Grouping, HstParams, MapConfig, NoPathPolicy, SelectorKind,
};
use serde::Deserialize;
use toml::Spanned;

/// How the checker probes a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckerKind {
    /// TEST UNIT READY.
    Tur,
    /// READ of block 0.
    Readsector0,
    /// A READ through the data path at a block that moves each check: catches a LU that
    /// answers TEST UNIT READY but fails I/O.
    Directio,
}

/// How paths get their priority.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrioritizerKind {
    /// Every path 1.
    Const,
    /// REPORT TARGET PORT GROUPS: active/optimized 50, non-optimized 10, standby 1,
    /// unavailable 0, +80 for the preferred bit.
    Alua,
    /// Priorities by portal (or path name) pattern.
    Weightedpath(Vec<(String, u32)>),
    /// Measured latency of checker I/O: faster paths get higher priority.
    PathLatency,
}

/// A portal to log in through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalConfig {
    pub address: SocketAddr,
    pub chap: Option<(String, String)>,
    pub mutual_chap: Option<(String, String)>,
    /// Only these target IQNs (empty: every target the portal offers).
    pub targets: Vec<String>,
    /// Offer CRC32C digests.
    pub header_digest: bool,
    pub data_digest: bool,
}

/// Per-WWID settings (`multipaths` section of multipath.conf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipathConfig {
    pub wwid: String,
    pub alias: Option<String>,
    pub policy: MapConfig,
    pub prioritizer: Option<PrioritizerKind>,
    /// Overrides `[exports] ublk` for this map.
    pub ublk: Option<bool>,
    /// Overrides `[exports] nbd_device` for this map.
    pub nbd_device: Option<bool>,
}

/// Devices the daemon leaves alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blacklist {
    pub wwid: Vec<String>,
    pub vendor: Vec<String>,
    pub product: Vec<String>,
}

impl Blacklist {
    /// Whether a LU is excluded; patterns are exact strings or end in `*` (prefix).
    pub fn excludes(&self, wwid: &str, vendor: &str, product: &str) -> Option<String> {
        fn m<'a>(pats: &'a [String], v: &str) -> Option<&'a String> {
            pats.iter().find(|p| match p.strip_suffix('*') {
                Some(pre) => v.starts_with(pre),
                None => p.as_str() == v,
            })
        }
        if let Some(p) = m(&self.wwid, wwid) {
            return Some(format!("wwid matches blacklist entry {p:?}"));
        }
        if let Some(p) = m(&self.vendor, vendor) {
            return Some(format!("vendor {vendor:?} matches blacklist entry {p:?}"));
        }
        if let Some(p) = m(&self.product, product) {
            return Some(format!("product {product:?} matches blacklist entry {p:?}"));
        }
        None
    }
}

/// The whole daemon configuration, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub policy: MapConfig,
    pub checker: CheckerKind,
    /// How often failed paths are checked (reinstatement).
    pub checker_interval: Duration,
    /// How often healthy paths are checked (to catch a LU that fails I/O while its
    /// connection looks fine).
    pub checker_interval_ok: Duration,
    /// Hold new writes overlapping a write whose attempt was left on a failed path until
    /// that path logs in again (its old tasks are then gone), at most this long. `None`:
    /// off. See the engine's "stale-write hazard".
    pub stale_write_fence: Option<Duration>,
    pub prioritizer: PrioritizerKind,
    pub user_friendly_names: bool,
    pub bindings_file: Option<PathBuf>,
    pub initiator_name: String,
    pub portals: Vec<PortalConfig>,
    pub multipaths: Vec<MultipathConfig>,
    pub blacklist: Blacklist,
    pub nbd_listen: Option<SocketAddr>,
    pub nbd_unix: Option<PathBuf>,
    pub fuse_dir: Option<PathBuf>,
    /// Give every map a ublk block device (`/dev/ublkbN`), kept across restarts of the
    /// daemon (`export::ublk`).
    pub ublk: bool,
    /// Give every map a kernel NBD device (`/dev/nbdN`) the daemon attaches itself over
    /// netlink, kept across restarts of the daemon (`export::nbd::kernel`).
    pub nbd_device: bool,
    pub control_socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// How long start-up waits for paths before building maps from those present (more
    /// arrive later).
    pub settle: Duration,
    /// The iSCSI sessions' failure-detection timers.
    pub timers: SessionTimers,
}

/// The failure-detection timers of the daemon's iSCSI sessions (`iscsi_session`'s
/// `InitiatorConfig`, whose docs explain each rule). They apply to sessions logged in
/// after a change: `reconfigure` keeps existing sessions as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimers {
    /// With commands outstanding, this much silence makes the session ping.
    pub stall_silence: Duration,
    /// The least time a stall ping is given to be answered: raise it on a host whose CPU
    /// can be starved for longer than this (a loaded VM) to trade detection time for
    /// tolerance.
    pub stall_ping_floor: Duration,
    /// An idle session pings after this much silence…
    pub keepalive_interval: Duration,
    /// …and is failed when the ping is not answered in this time.
    pub keepalive_timeout: Duration,
    /// A command older than this is aborted.
    pub command_timeout: Duration,
}

impl Default for SessionTimers {
    fn default() -> Self {
        let t = iscsi_initiator::InitiatorConfig::default();
        SessionTimers {
            stall_silence: t.stall_silence,
            stall_ping_floor: t.stall_ping_floor,
            keepalive_interval: t.keepalive_interval,
            keepalive_timeout: t.keepalive_timeout,
            command_timeout: t.command_timeout,
        }
    }
}

impl SessionTimers {
    /// These timers over `base` (the session's other settings).
    pub fn apply(&self, base: &mut iscsi_initiator::InitiatorConfig) {
        base.stall_silence = self.stall_silence;
        base.stall_ping_floor = self.stall_ping_floor;
        base.keepalive_interval = self.keepalive_interval;
        base.keepalive_timeout = self.keepalive_timeout;
        base.command_timeout = self.command_timeout;
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            policy: MapConfig::default(),
            checker: CheckerKind::Tur,
            checker_interval: Duration::from_secs(2),
            checker_interval_ok: Duration::from_secs(10),
            stale_write_fence: None,
            prioritizer: PrioritizerKind::Alua,
            user_friendly_names: true,
            bindings_file: None,
            initiator_name: iscsi_initiator::default_initiator_name(),
            portals: Vec::new(),
            multipaths: Vec::new(),
            blacklist: Blacklist::default(),
            nbd_listen: Some(SocketAddr::from(([127, 0, 0, 1], 10809))),
            nbd_unix: None,
            fuse_dir: None,
            ublk: false,
            nbd_device: false,
            control_socket: default_control_socket(),
            metrics: None,
            settle: Duration::from_secs(3),
            timers: SessionTimers::default(),
        }
    }
}

/// `$XDG_RUNTIME_DIR/mpath.sock`, else `/tmp/mpath.sock`.
pub fn default_control_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("mpath.sock"),
        None => PathBuf::from("/tmp/mpath.sock"),
    }
}

/// A configuration error: what is wrong, where (file, line, key) — the same as the
/// target's.
pub use iscsi_target::config::ConfigError;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Option<Defaults>,
    #[serde(default)]
    portal: Vec<PortalSection>,
    #[serde(default)]
    multipath: Vec<MultipathSection>,
    #[serde(default)]
    blacklist: Option<BlacklistSection>,
    #[serde(default)]
    exports: Option<ExportsSection>,
    control_socket: Option<PathBuf>,
    metrics: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Defaults {
    selector: Option<Spanned<String>>,
    rr_min_io: Option<Spanned<u32>>,
    grouping: Option<Spanned<String>>,
    failback: Option<Spanned<toml::Value>>,
    no_path_retry: Option<Spanned<String>>,
    checker: Option<Spanned<String>>,
    checker_interval: Option<Spanned<String>>,
    checker_interval_ok: Option<Spanned<String>>,
    stale_write_fence: Option<Spanned<String>>,
    prioritizer: Option<Spanned<String>>,
    prio_args: Option<Spanned<Vec<(String, u32)>>>,
    user_friendly_names: Option<bool>,
    bindings_file: Option<PathBuf>,
    initiator_name: Option<Spanned<String>>,
    flap_damping: Option<bool>,
    marginal_failures: Option<Spanned<u32>>,
    marginal_window: Option<Spanned<String>>,
    marginal_hold: Option<Spanned<String>>,
    settle: Option<Spanned<String>>,
    busy_timeout: Option<Spanned<String>>,
    alua_transition_timeout: Option<Spanned<String>>,
    stall_silence: Option<Spanned<String>>,
    stall_ping_floor: Option<Spanned<String>>,
    keepalive_interval: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
    command_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalSection {
    address: Spanned<String>,
    chap: Option<Credentials>,
    mutual_chap: Option<Credentials>,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    header_digest: bool,
    #[serde(default)]
    data_digest: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    user: String,
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MultipathSection {
    wwid: Spanned<String>,
    alias: Option<Spanned<String>>,
    selector: Option<Spanned<String>>,
    grouping: Option<Spanned<String>>,
    failback: Option<Spanned<toml::Value>>,
    no_path_retry: Option<Spanned<String>>,
    prioritizer: Option<Spanned<String>>,
    prio_args: Option<Spanned<Vec<(String, u32)>>>,
    ublk: Option<bool>,
    nbd_device: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BlacklistSection {
    #[serde(default)]
    wwid: Vec<String>,
    #[serde(default)]
    vendor: Vec<String>,
    #[serde(default)]
    product: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExportsSection {
    /// `false` or "off" disables the TCP listener.
    nbd: Option<Spanned<String>>,
    nbd_unix: Option<PathBuf>,
    fuse: Option<PathBuf>,
    ublk: Option<bool>,
    nbd_device: Option<bool>,
}

/// Read and validate a configuration file.
pub fn load_file(path: &Path) -> Result<DaemonConfig, ConfigError> {
    parse_str(&iscsi_target::config::read_file(path)?, Some(path))
}

/// Parse and validate configuration text (`file` labels errors).
pub fn parse_str(src: &str, file: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    let ctx = Ctx { file, src };
    let raw: File = ctx.parse()?;
    let mut c = DaemonConfig::default();
    // weightedpath in a [[multipath]] entry takes its own prio_args, else these.
    let default_args: Vec<(String, u32)> = raw
        .defaults
        .as_ref()
        .and_then(|d| d.prio_args.as_ref())
        .map(|a| a.get_ref().clone())
        .unwrap_or_default();
    if let Some(d) = raw.defaults {
        apply_defaults(&ctx, d, &mut c)?;
    }
    for (i, p) in raw.portal.into_iter().enumerate() {
        let key = format!("portal[{i}].address");
        let address = iscsi_target::config::parse_portal(p.address.get_ref())
            .map_err(|m| ctx.err(Some(p.address.span()), &key, m))?;
        if c.portals.iter().any(|q| q.address == address) {
            return Err(ctx.err(
                Some(p.address.span()),
                &key,
                format!("portal {address} is listed twice"),
            ));
        }
        if p.mutual_chap.is_some() && p.chap.is_none() {
            return Err(ctx.err(
                Some(p.address.span()),
                &format!("portal[{i}].mutual_chap"),
                "mutual CHAP needs chap as well",
            ));
        }
        c.portals.push(PortalConfig {
            address,
            chap: p.chap.map(|k| (k.user, k.secret)),
            mutual_chap: p.mutual_chap.map(|k| (k.user, k.secret)),
            targets: p.targets,
            header_digest: p.header_digest,
            data_digest: p.data_digest,
        });
    }
    for (i, m) in raw.multipath.into_iter().enumerate() {
        let key = |k: &str| format!("multipath[{i}].{k}");
        let wwid = m.wwid.get_ref().trim().to_string();
        if wwid.is_empty() {
            return Err(ctx.err(Some(m.wwid.span()), &key("wwid"), "empty WWID"));
        }
        if c.multipaths.iter().any(|x| x.wwid == wwid) {
            return Err(ctx.err(
                Some(m.wwid.span()),
                &key("wwid"),
                format!("WWID {wwid} has two entries"),
            ));
        }
        let mut policy = c.policy.clone();
        if let Some(s) = &m.selector {
            policy.selector = selector(&ctx, s, &key("selector"), 1)?;
        }
        if let Some(s) = &m.grouping {
            policy.grouping = grouping(&ctx, s, &key("grouping"))?;
        }
        if let Some(s) = &m.failback {
            policy.failback = failback(&ctx, s, &key("failback"))?;
        }
        if let Some(s) = &m.no_path_retry {
            policy.no_path = no_path(&ctx, s, &key("no_path_retry"))?;
        }
        let prioritizer = match &m.prioritizer {
            Some(p) => {
                let args = m
                    .prio_args
                    .as_ref()
                    .map(|a| a.get_ref().as_slice())
                    .unwrap_or(&default_args);
                Some(prioritizer(&ctx, p, &key("prioritizer"), args)?)
            }
            None => None,
        };
        if let Some(a) = &m.prio_args {
            if !matches!(prioritizer, Some(PrioritizerKind::Weightedpath(_))) {
                return Err(ctx.err(
                    Some(a.span()),
                    &key("prio_args"),
                    "prio_args needs prioritizer = \"weightedpath\" in the same entry",
                ));
            }
        }
        let alias = match &m.alias {
            Some(a) if valid_name(a.get_ref()) => Some(a.get_ref().clone()),
            Some(a) => {
                return Err(ctx.err(
                    Some(a.span()),
                    &key("alias"),
                    "an alias is 1-64 characters of letters, digits, '-', '_' and '.'",
                ))
            }
            None => None,
        };
        if let Some(a) = &alias {
            if c.multipaths.iter().any(|x| x.alias.as_ref() == Some(a)) {
                return Err(ctx.err(
                    m.alias.as_ref().map(|s| s.span()),
                    &key("alias"),
                    format!("alias {a} is used twice"),
                ));
            }
        }
        c.multipaths.push(MultipathConfig {
            wwid,
            alias,
            policy,
            prioritizer,
            ublk: m.ublk,
            nbd_device: m.nbd_device,
        });
    }
    if let Some(b) = raw.blacklist {
        c.blacklist = Blacklist {
            wwid: b.wwid,
            vendor: b.vendor,
            product: b.product,
        };
    }
    if let Some(e) = raw.exports {
        if let Some(n) = &e.nbd {
            c.nbd_listen = match n.get_ref().as_str() {
                "off" | "false" | "none" | "" => None,
                s => Some(
                    iscsi_target::config::parse_portal(s)
                        .map(|mut a| {
                            if !s.contains(':') || s.ends_with(']') {
                                a.set_port(10809);
                            }
                            a
                        })
                        .map_err(|m| ctx.err(Some(n.span()), "exports.nbd", m))?,
                ),
            };
        }
        c.nbd_unix = e.nbd_unix;
        c.fuse_dir = e.fuse;
        if let Some(u) = e.ublk {
            c.ublk = u;
        }
        if let Some(n) = e.nbd_device {
            c.nbd_device = n;
        }
    }
    if let Some(s) = raw.control_socket {
        c.control_socket = s;
    }
    if let Some(m) = &raw.metrics {
        c.metrics = Some(m.get_ref().parse().map_err(|_| {
            ctx.err(
                Some(m.span()),
                "metrics",
                format!("{:?} is not IP:PORT", m.get_ref()),
            )
        })?);
    }
    Ok(c)
}

fn apply_defaults(ctx: &Ctx, d: Defaults, c: &mut DaemonConfig) -> Result<(), ConfigError> {
    let rr = d.rr_min_io.as_ref().map(|v| *v.get_ref()).unwrap_or(1);
    if let Some(v) = &d.rr_min_io {
        if rr == 0 {
            return Err(ctx.err(Some(v.span()), "defaults.rr_min_io", "must be at least 1"));
        }
    }
    if let Some(s) = &d.selector {
        c.policy.selector = selector(ctx, s, "defaults.selector", rr)?;
    }
    if let Some(s) = &d.grouping {
        c.policy.grouping = grouping(ctx, s, "defaults.grouping")?;
    }
    if let Some(s) = &d.failback {
        c.policy.failback = failback(ctx, s, "defaults.failback")?;
    }
    if let Some(s) = &d.no_path_retry {
        c.policy.no_path = no_path(ctx, s, "defaults.no_path_retry")?;
    }
    if let Some(s) = &d.checker {
        c.checker = match s.get_ref().as_str() {
            "tur" => CheckerKind::Tur,
            "readsector0" => CheckerKind::Readsector0,
            "directio" => CheckerKind::Directio,
            other => {
                return Err(ctx.err(
                    Some(s.span()),
                    "defaults.checker",
                    format!("unknown checker {other:?} (tur, readsector0, directio)"),
                ))
            }
        };
    }
    if let Some(s) = &d.checker_interval {
        c.checker_interval = duration(ctx, s, "defaults.checker_interval")?;
    }
    if let Some(s) = &d.checker_interval_ok {
        c.checker_interval_ok = duration(ctx, s, "defaults.checker_interval_ok")?;
    }
    if let Some(s) = &d.stale_write_fence {
        c.stale_write_fence = match s.get_ref().as_str() {
            "off" => None,
            _ => Some(duration(ctx, s, "defaults.stale_write_fence")?),
        };
    }
    if let Some(s) = &d.prioritizer {
        c.prioritizer = prioritizer(
            ctx,
            s,
            "defaults.prioritizer",
            d.prio_args
                .as_ref()
                .map(|a| a.get_ref().as_slice())
                .unwrap_or(&[]),
        )?;
    }

    if let Some(v) = d.user_friendly_names {
        c.user_friendly_names = v;
    }
    c.bindings_file = d.bindings_file;
    if let Some(n) = &d.initiator_name {
        iscsi_target::config::check_name(n.get_ref())
            .map_err(|m| ctx.err(Some(n.span()), "defaults.initiator_name", m))?;
        c.initiator_name = n.get_ref().clone();
    }
    if d.flap_damping == Some(false) {
        c.policy.flap = None;
    } else {
        let mut f = c.policy.flap.unwrap_or_default();
        if let Some(v) = &d.marginal_failures {
            if *v.get_ref() == 0 {
                return Err(ctx.err(
                    Some(v.span()),
                    "defaults.marginal_failures",
                    "must be at least 1",
                ));
            }
            f.failures = *v.get_ref();
        }
        if let Some(v) = &d.marginal_window {
            f.window = duration(ctx, v, "defaults.marginal_window")?;
        }
        if let Some(v) = &d.marginal_hold {
            f.hold = duration(ctx, v, "defaults.marginal_hold")?;
        }
        c.policy.flap = Some(f);
    }
    if let Some(v) = &d.settle {
        c.settle = duration(ctx, v, "defaults.settle")?;
    }
    if let Some(v) = &d.busy_timeout {
        c.policy.busy_timeout = duration(ctx, v, "defaults.busy_timeout")?;
    }
    if let Some(v) = &d.alua_transition_timeout {
        c.policy.alua_transition_timeout = duration(ctx, v, "defaults.alua_transition_timeout")?;
    }
    let t = &mut c.timers;
    for (v, key, field) in [
        (
            &d.stall_silence,
            "defaults.stall_silence",
            &mut t.stall_silence,
        ),
        (
            &d.stall_ping_floor,
            "defaults.stall_ping_floor",
            &mut t.stall_ping_floor,
        ),
        (
            &d.keepalive_interval,
            "defaults.keepalive_interval",
            &mut t.keepalive_interval,
        ),
        (
            &d.keepalive_timeout,
            "defaults.keepalive_timeout",
            &mut t.keepalive_timeout,
        ),
        (
            &d.command_timeout,
            "defaults.command_timeout",
            &mut t.command_timeout,
        ),
    ] {
        if let Some(v) = v {
            let d = duration(ctx, v, key)?;
            if d.is_zero() {
                return Err(ctx.err(Some(v.span()), key, "must be more than 0"));
            }
            *field = d;
        }
    }
    Ok(())
}

fn selector(
    ctx: &Ctx,
    s: &Spanned<String>,
    key: &str,
    rr: u32,
) -> Result<SelectorKind, ConfigError> {
    Ok(match s.get_ref().as_str() {
        "round-robin" => SelectorKind::RoundRobin { repeat_count: rr },
        "queue-length" => SelectorKind::QueueLength,
        "service-time" => SelectorKind::ServiceTime,
        "historical-service-time" => SelectorKind::HistoricalServiceTime(HstParams::default()),
        other => {
            return Err(ctx.err(
                Some(s.span()),
                key,
                format!("unknown selector {other:?} (round-robin, queue-length, service-time, historical-service-time)"),
            ))
        }
    })
}

fn grouping(ctx: &Ctx, s: &Spanned<String>, key: &str) -> Result<Grouping, ConfigError> {
    Ok(match s.get_ref().as_str() {
        "failover" => Grouping::Failover,
        "multibus" => Grouping::Multibus,
        "group_by_prio" => Grouping::GroupByPrio,
        "group_by_serial" => Grouping::GroupBySerial,
        "group_by_node_name" => Grouping::GroupByNodeName,
        "group_by_tpg" => Grouping::GroupByTpg,
        other => return Err(ctx.err(
            Some(s.span()),
            key,
            format!("unknown grouping {other:?} (failover, multibus, group_by_prio, group_by_serial, group_by_node_name, group_by_tpg)"),
        )),
    })
}

fn failback(ctx: &Ctx, s: &Spanned<toml::Value>, key: &str) -> Result<Failback, ConfigError> {
    let bad = || {
        ctx.err(
            Some(s.span()),
            key,
            "expected immediate, manual, followover or a number of seconds",
        )
    };
    Ok(match s.get_ref() {
        toml::Value::String(v) => match v.as_str() {
            "immediate" => Failback::Immediate,
            "manual" => Failback::Manual,
            "followover" => Failback::Followover,
            other => match other.trim_end_matches('s').parse::<u64>() {
                Ok(n) => Failback::Deferred(Duration::from_secs(n)),
                Err(_) => return Err(bad()),
            },
        },
        toml::Value::Integer(n) if *n >= 0 => Failback::Deferred(Duration::from_secs(*n as u64)),
        _ => return Err(bad()),
    })
}

fn no_path(ctx: &Ctx, s: &Spanned<String>, key: &str) -> Result<NoPathPolicy, ConfigError> {
    Ok(match s.get_ref().as_str() {
        "fail" => NoPathPolicy::Fail,
        "queue" => NoPathPolicy::QueueForever,
        _ => NoPathPolicy::Queue(duration(ctx, s, key).map_err(|mut e| {
            e.message = format!(
                "expected fail, queue or a duration such as 60s: {}",
                e.message
            );
            e
        })?),
    })
}

fn prioritizer(
    ctx: &Ctx,
    s: &Spanned<String>,
    key: &str,
    args: &[(String, u32)],
) -> Result<PrioritizerKind, ConfigError> {
    Ok(match s.get_ref().as_str() {
        "const" => PrioritizerKind::Const,
        "alua" => PrioritizerKind::Alua,
        "weightedpath" => PrioritizerKind::Weightedpath(args.to_vec()),
        "path_latency" => PrioritizerKind::PathLatency,
        other => {
            return Err(ctx.err(
                Some(s.span()),
                key,
                format!("unknown prioritizer {other:?} (const, alua, weightedpath, path_latency)"),
            ))
        }
    })
}

/// `500ms`, `2s`, `1m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (t, 1000.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v * mult_ms / 1000.0)),
        _ => Err(format!("{s:?} is not a duration (examples: 500ms, 2s, 1m)")),
    }
}

fn duration(ctx: &Ctx, s: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
    parse_duration(s.get_ref()).map_err(|m| ctx.err(Some(s.span()), key, m))
}

/// Map names (aliases, user-friendly names) are also NBD export and file names.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !s.starts_with('.')
}

/// A duration as the configuration writes it: `200ms`, `2s`, `1.5s`.
pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        let ms = d.as_millis();
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// The selector as the configuration names it (`round-robin`, not `round-robin 1`).
fn selector_key(s: &SelectorKind) -> &'static str {
    match s {
        SelectorKind::RoundRobin { .. } => "round-robin",
        SelectorKind::QueueLength => "queue-length",
        SelectorKind::ServiceTime => "service-time",
        SelectorKind::HistoricalServiceTime(_) => "historical-service-time",
    }
}

/// The effective configuration as a TOML file `load_file` reads back to the same
/// configuration (CHAP secrets are shown as `<hidden>`), for `mpath show config`.
pub fn render(c: &DaemonConfig) -> String {
    use std::fmt::Write;
    let q = |v: &str| toml::Value::String(v.to_string()).to_string();
    let mut s = String::new();
    // Top-level keys first: after a table header they would belong to the table.
    let _ = writeln!(
        s,
        "control_socket = {}",
        q(&c.control_socket.display().to_string())
    );
    if let Some(m) = c.metrics {
        let _ = writeln!(s, "metrics = {}", q(&m.to_string()));
    }
    let p = &c.policy;
    let _ = writeln!(s, "\n[defaults]");
    let _ = writeln!(s, "selector = {}", q(selector_key(&p.selector)));
    if let SelectorKind::RoundRobin { repeat_count } = p.selector {
        let _ = writeln!(s, "rr_min_io = {repeat_count}");
    }
    let _ = writeln!(s, "grouping = {}", q(grouping_name(p.grouping)));
    let _ = writeln!(s, "failback = {}", failback_name(&p.failback));
    let _ = writeln!(s, "no_path_retry = {}", no_path_name(&p.no_path));
    let checker = match c.checker {
        CheckerKind::Tur => "tur",
        CheckerKind::Readsector0 => "readsector0",
        CheckerKind::Directio => "directio",
    };
    let _ = writeln!(s, "checker = {}", q(checker));
    let _ = writeln!(
        s,
        "checker_interval = {}",
        q(&fmt_duration(c.checker_interval))
    );
    let _ = writeln!(
        s,
        "checker_interval_ok = {}",
        q(&fmt_duration(c.checker_interval_ok))
    );
    let fence = c
        .stale_write_fence
        .map(fmt_duration)
        .unwrap_or_else(|| "off".into());
    let _ = writeln!(s, "stale_write_fence = {}", q(&fence));
    let _ = writeln!(s, "prioritizer = {}", q(prio_name(&c.prioritizer)));
    if let PrioritizerKind::Weightedpath(w) = &c.prioritizer {
        let args: Vec<String> = w.iter().map(|(p, n)| format!("[{}, {n}]", q(p))).collect();
        let _ = writeln!(s, "prio_args = [{}]", args.join(", "));
    }
    let _ = writeln!(s, "user_friendly_names = {}", c.user_friendly_names);
    if let Some(b) = &c.bindings_file {
        let _ = writeln!(s, "bindings_file = {}", q(&b.display().to_string()));
    }
    let _ = writeln!(s, "initiator_name = {}", q(&c.initiator_name));
    match &p.flap {
        Some(f) => {
            let _ = writeln!(s, "flap_damping = true");
            let _ = writeln!(s, "marginal_failures = {}", f.failures);
            let _ = writeln!(s, "marginal_window = {}", q(&fmt_duration(f.window)));
            let _ = writeln!(s, "marginal_hold = {}", q(&fmt_duration(f.hold)));
        }
        None => {
            let _ = writeln!(s, "flap_damping = false");
        }
    }
    let _ = writeln!(s, "settle = {}", q(&fmt_duration(c.settle)));
    let _ = writeln!(s, "busy_timeout = {}", q(&fmt_duration(p.busy_timeout)));
    let _ = writeln!(
        s,
        "alua_transition_timeout = {}",
        q(&fmt_duration(p.alua_transition_timeout))
    );
    let t = &c.timers;
    for (key, d) in [
        ("stall_silence", t.stall_silence),
        ("stall_ping_floor", t.stall_ping_floor),
        ("keepalive_interval", t.keepalive_interval),
        ("keepalive_timeout", t.keepalive_timeout),
        ("command_timeout", t.command_timeout),
    ] {
        let _ = writeln!(s, "{key} = {}", q(&fmt_duration(d)));
    }
    for pc in &c.portals {
        let _ = writeln!(s, "\n[[portal]]\naddress = {}", q(&pc.address.to_string()));
        if let Some((u, _)) = &pc.chap {
            let _ = writeln!(s, "chap = {{ user = {}, secret = \"<hidden>\" }}", q(u));
        }
        if let Some((u, _)) = &pc.mutual_chap {
            let _ = writeln!(
                s,
                "mutual_chap = {{ user = {}, secret = \"<hidden>\" }}",
                q(u)
            );
        }
        if !pc.targets.is_empty() {
            let t: Vec<String> = pc.targets.iter().map(|t| q(t)).collect();
            let _ = writeln!(s, "targets = [{}]", t.join(", "));
        }
        if pc.header_digest {
            let _ = writeln!(s, "header_digest = true");
        }
        if pc.data_digest {
            let _ = writeln!(s, "data_digest = true");
        }
    }
    for m in &c.multipaths {
        let _ = writeln!(s, "\n[[multipath]]\nwwid = {}", q(&m.wwid));
        if let Some(a) = &m.alias {
            let _ = writeln!(s, "alias = {}", q(a));
        }
        if let Some(u) = m.ublk {
            let _ = writeln!(s, "ublk = {u}");
        }
        if let Some(n) = m.nbd_device {
            let _ = writeln!(s, "nbd_device = {n}");
        }
        // Only what differs from [defaults] (a map inherits the rest).
        if m.policy.selector != p.selector {
            let _ = writeln!(s, "selector = {}", q(selector_key(&m.policy.selector)));
        }
        if m.policy.grouping != p.grouping {
            let _ = writeln!(s, "grouping = {}", q(grouping_name(m.policy.grouping)));
        }
        if m.policy.failback != p.failback {
            let _ = writeln!(s, "failback = {}", failback_name(&m.policy.failback));
        }
        if m.policy.no_path != p.no_path {
            let _ = writeln!(s, "no_path_retry = {}", no_path_name(&m.policy.no_path));
        }
        if let Some(pr) = &m.prioritizer {
            let _ = writeln!(s, "prioritizer = {}", q(prio_name(pr)));
            if let PrioritizerKind::Weightedpath(w) = pr {
                let args: Vec<String> = w.iter().map(|(p, n)| format!("[{}, {n}]", q(p))).collect();
                let _ = writeln!(s, "prio_args = [{}]", args.join(", "));
            }
        }
    }
    let b = &c.blacklist;
    if !(b.wwid.is_empty() && b.vendor.is_empty() && b.product.is_empty()) {
        let list = |v: &[String]| v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(s, "\n[blacklist]");
        let _ = writeln!(s, "wwid = [{}]", list(&b.wwid));
        let _ = writeln!(s, "vendor = [{}]", list(&b.vendor));
        let _ = writeln!(s, "product = [{}]", list(&b.product));
    }
    let _ = writeln!(s, "\n[exports]");
    let nbd = c
        .nbd_listen
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    let _ = writeln!(s, "nbd = {}", q(&nbd));
    if let Some(u) = &c.nbd_unix {
        let _ = writeln!(s, "nbd_unix = {}", q(&u.display().to_string()));
    }
    if let Some(f) = &c.fuse_dir {
        let _ = writeln!(s, "fuse = {}", q(&f.display().to_string()));
    }
    let _ = writeln!(s, "ublk = {}", c.ublk);
    let _ = writeln!(s, "nbd_device = {}", c.nbd_device);
    s
}

/// The effective configuration as JSON (the same keys as the file).
pub fn render_json(c: &DaemonConfig) -> serde_json::Value {
    match toml::from_str::<toml::Value>(&render(c)) {
        Ok(v) => serde_json::to_value(v).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    }
}

pub fn selector_name(s: &SelectorKind) -> String {
    match s {
        SelectorKind::RoundRobin { repeat_count } => format!("round-robin {repeat_count}"),
        SelectorKind::QueueLength => "queue-length 0".into(),
        SelectorKind::ServiceTime => "service-time 0".into(),
        SelectorKind::HistoricalServiceTime(_) => "historical-service-time 0".into(),
    }
}

pub fn grouping_name(g: Grouping) -> &'static str {
    match g {
        Grouping::Failover => "failover",
        Grouping::Multibus => "multibus",
        Grouping::GroupByPrio => "group_by_prio",
        Grouping::GroupBySerial => "group_by_serial",
        Grouping::GroupByNodeName => "group_by_node_name",
        Grouping::GroupByTpg => "group_by_tpg",
    }
}

pub fn failback_name(f: &Failback) -> String {
    match f {
        Failback::Immediate => "\"immediate\"".into(),
        Failback::Manual => "\"manual\"".into(),
        Failback::Followover => "\"followover\"".into(),
        Failback::Deferred(d) => d.as_secs().to_string(),
    }
}

pub fn no_path_name(n: &NoPathPolicy) -> String {
    match n {
        NoPathPolicy::Fail => "\"fail\"".into(),
        NoPathPolicy::QueueForever => "\"queue\"".into(),
        NoPathPolicy::Queue(d) => format!("\"{}\"", fmt_duration(*d)),
    }
}

pub fn prio_name(p: &PrioritizerKind) -> &'static str {
    match p {
        PrioritizerKind::Const => "const",
        PrioritizerKind::Alua => "alua",
        PrioritizerKind::Weightedpath(_) => "weightedpath",
        PrioritizerKind::PathLatency => "path_latency",
    }
}

/// Default flap damping, re-exported for callers that build configurations in code.
pub fn default_flap() -> FlapDamping {
    FlapDamping::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[defaults]
selector = "round-robin"
rr_min_io = 4
failback = 30
no_path_retry = "10s"
checker = "readsector0"

[[portal]]
address = "127.0.0.2:3260"
chap = { user = "alice", secret = "a-long-secret" }

[[portal]]
address = "127.0.0.3"

[[multipath]]
wwid = "36026d70aaaa"
alias = "db"
no_path_retry = "fail"

[blacklist]
vendor = ["IET*"]

[exports]
nbd = "127.0.0.1:10900"
"#;

    #[test]
    fn parses() {
        let c = parse_str(GOOD, None).unwrap();
        assert_eq!(
            c.policy.selector,
            SelectorKind::RoundRobin { repeat_count: 4 }
        );
        assert_eq!(
            c.policy.failback,
            Failback::Deferred(Duration::from_secs(30))
        );
        assert_eq!(
            c.policy.no_path,
            NoPathPolicy::Queue(Duration::from_secs(10))
        );
        assert_eq!(c.checker, CheckerKind::Readsector0);
        assert_eq!(c.portals[1].address.port(), 3260);
        assert_eq!(c.multipaths[0].policy.no_path, NoPathPolicy::Fail);
        assert_eq!(
            c.multipaths[0].policy.selector,
            SelectorKind::RoundRobin { repeat_count: 4 }
        );
        assert!(c.blacklist.excludes("x", "IET", "VIRTUAL-DISK").is_some());
        assert_eq!(c.nbd_listen.unwrap().port(), 10900);
        assert!(render(&c).contains("rr_min_io = 4"));
        assert!(!render(&c).contains("a-long-secret"));
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = parse_str(
            &GOOD.replace("\"readsector0\"", "\"ping\""),
            Some(Path::new("m.toml")),
        )
        .unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(7), "defaults.checker"));
        assert!(
            e.to_string()
                .starts_with("m.toml:7: defaults.checker: unknown checker"),
            "{e}"
        );
        let e = parse_str(&GOOD.replace("rr_min_io", "rr_min_ios"), None).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.to_string().contains("rr_min_ios"), "{e}");
        let e = parse_str(&GOOD.replace("alias = \"db\"", "alias = \"a b\""), None).unwrap_err();
        assert_eq!(e.key, "multipath[0].alias");
        let e = parse_str(&GOOD.replace("127.0.0.3", "127.0.0.2:3260"), None).unwrap_err();
        assert!(e.message.contains("twice"));
        let e = parse_str(&GOOD.replace("\"10s\"", "\"soon\""), None).unwrap_err();
        assert_eq!(e.key, "defaults.no_path_retry");
    }

    #[test]
    fn rendered_configuration_reads_back_the_same() {
        let src = format!(
            "{GOOD}\n[[multipath]]\nwwid = \"36026d70bbbb\"\nselector = \"queue-length\"\n\
             grouping = \"failover\"\nfailback = \"manual\"\nprioritizer = \"const\"\nublk = false\nnbd_device = true\n"
        )
        .replace(
            "checker = \"readsector0\"",
            "checker = \"readsector0\"\nchecker_interval = \"250ms\"\nmarginal_hold = \"1.5s\"\n\
             prioritizer = \"weightedpath\"\nprio_args = [[\"127.0.0.2*\", 50]]\nstale_write_fence = \"off\"",
        )
        .replace("[exports]", "[exports]\nnbd_unix = \"/run/x.sock\"\nublk = true\nnbd_device = true")
            + "\n[blacklist]\nwwid = [\"3600*\"]\n";
        let src = src.replacen("[blacklist]\nvendor = [\"IET*\"]\n", "", 1);
        let c = parse_str(&src, None).unwrap();
        let text = render(&c);
        assert!(!text.contains("a-long-secret"), "{text}");
        let mut back = parse_str(&text, None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // Only the hidden secret differs.
        assert_eq!(back.portals[0].chap.as_ref().unwrap().1, "<hidden>");
        back.portals[0].chap = c.portals[0].chap.clone();
        assert_eq!(back, c, "{text}");
        let j = render_json(&c);
        assert_eq!(j["defaults"]["checker"], "readsector0", "{j}");
        assert_eq!(j["defaults"]["checker_interval"], "250ms", "{j}");
        assert_eq!(j["portal"][0]["address"], "127.0.0.2:3260", "{j}");
        assert_eq!(j["multipath"][1]["selector"], "queue-length", "{j}");
        assert!(c.ublk);
        assert!(c.nbd_device);
        assert_eq!(c.multipaths[1].nbd_device, Some(true));
        assert_eq!(c.multipaths[1].ublk, Some(false));
        assert_eq!(c.multipaths[0].ublk, None);
        // And the defaults alone.
        let d = DaemonConfig::default();
        assert_eq!(parse_str(&render(&d), None).unwrap(), d);
    }

    #[test]
    fn busy_transition_and_session_timers() {
        let c = parse_str(
            "[defaults]\nbusy_timeout = \"10s\"\nalua_transition_timeout = \"2m\"\n\
             stall_ping_floor = \"1s\"\nstall_silence = \"200ms\"\ncommand_timeout = \"45s\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.policy.busy_timeout, Duration::from_secs(10));
        assert_eq!(c.policy.alua_transition_timeout, Duration::from_secs(120));
        assert_eq!(c.timers.stall_ping_floor, Duration::from_secs(1));
        assert_eq!(c.timers.stall_silence, Duration::from_millis(200));
        assert_eq!(c.timers.command_timeout, Duration::from_secs(45));
        assert_eq!(
            c.timers.keepalive_interval,
            SessionTimers::default().keepalive_interval
        );
        let mut base = iscsi_initiator::InitiatorConfig::default();
        c.timers.apply(&mut base);
        assert_eq!(base.stall_ping_floor, Duration::from_secs(1));
        // Read back from the rendered configuration.
        assert_eq!(parse_str(&render(&c), None).unwrap(), c);
        let e = parse_str(
            "[defaults]\nstall_ping_floor = \"0s\"\n",
            Some(Path::new("m.toml")),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("defaults.stall_ping_floor") && e.contains("m.toml:2"),
            "{e}"
        );
    }

    #[test]
    fn weightedpath_per_map_takes_its_own_or_the_default_weights() {
        let src = "[defaults]\nprio_args = [[\"127.0.0.2*\", 7]]\n\
            [[multipath]]\nwwid = \"3a\"\nprioritizer = \"weightedpath\"\n\
            [[multipath]]\nwwid = \"3b\"\nprioritizer = \"weightedpath\"\nprio_args = [[\"127.0.0.3*\", 9]]\n";
        let c = parse_str(src, None).unwrap();
        assert_eq!(
            c.multipaths[0].prioritizer,
            Some(PrioritizerKind::Weightedpath(vec![(
                "127.0.0.2*".into(),
                7
            )]))
        );
        assert_eq!(
            c.multipaths[1].prioritizer,
            Some(PrioritizerKind::Weightedpath(vec![(
                "127.0.0.3*".into(),
                9
            )]))
        );
        assert_eq!(
            parse_str(&render(&c), None).unwrap().multipaths,
            c.multipaths
        );
        let e = parse_str(
            "[[multipath]]\nwwid = \"3a\"\nprio_args = [[\"x\", 1]]\n",
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("multipath[0].prio_args", Some(3))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("x").is_err());
    }
}
