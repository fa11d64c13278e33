//! The daemon's configuration: TOML, with every error naming its key and line. A
//! multipath-tools `multipath.conf` is read too (`crate::mpconf` translates it).
//!
//! ```toml
//! [defaults]
//! selector = "service-time"        # round-robin | queue-length | service-time | historical-service-time
//! grouping = "group_by_prio"       # failover | multibus | group_by_prio | group_by_serial | group_by_node_name | group_by_tpg
//! failback = "immediate"           # immediate | manual | followover | <seconds>
//! no_path_retry = "60s"            # fail | queue | <duration> | <checker intervals>
//! checker = "tur"                  # tur | readsector0 | directio
//! checker_interval = "2s"
//! stale_write_fence = "off"        # off | <duration>: see docs/daemon.md
//! hedge_reads = true               # a read stuck on a slow path is issued on another too
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
//! [[device]]                       # per array: vendor and product are regular expressions
//! vendor = "LIO-ORG"
//! product = ".*"
//! no_path_retry = "30s"
//!
//! [overrides]                      # over every device entry (multipath-tools' overrides)
//! failback = "manual"
//!
//! [[multipath]]
//! wwid = "36026d70..."
//! alias = "db"
//!
//! [blacklist]                      # regular expressions, searched as multipath-tools does
//! wwid = ["^3600"]
//! device = [{ vendor = "IET", product = "VIRTUAL-DISK" }]
//!
//! [blacklist_exceptions]
//! wwid = ["^36001405"]
//! ```
//!
//! A setting of a LU comes from, strongest first: its `[[multipath]]` entry, `[overrides]`,
//! the `[[device]]` entries that match its vendor and product (later ones win),
//! `[defaults]`, mpath's built-in device entries ([`builtin_devices`]; they change only
//! settings `[defaults]` leaves at mpath's default), mpath's defaults.
//! Key names are also accepted in multipath-tools' spelling (`path_selector`,
//! `path_grouping_policy`, `path_checker`, `prio`, `polling_interval`,
//! `max_polling_interval`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use confkit::Ctx;
use mpath_policy::{
    Failback, FlapDamping, Grouping, HstParams, MapConfig, NoPathPolicy, SelectorKind,
};
use serde::{Deserialize, Serialize};
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

/// A CHAP user and secret: `chap = { user, secret }` in a `[[portal]]`, or given with
/// `mpath login`. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapSecret {
    pub user: String,
    pub secret: String,
}

impl ChapSecret {
    /// The initiator's credentials.
    pub fn credentials(&self) -> iscsi_initiator::ChapCredentials {
        iscsi_initiator::ChapCredentials::new(&self.user, self.secret.as_bytes())
    }
}

impl std::fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecret")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// A portal to log in through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalConfig {
    pub address: SocketAddr,
    pub chap: Option<ChapSecret>,
    pub mutual_chap: Option<ChapSecret>,
    /// Only these target IQNs (empty: every target the portal offers).
    pub targets: Vec<String>,
    /// Offer CRC32C digests.
    pub header_digest: bool,
    pub data_digest: bool,
}

impl PortalConfig {
    /// A portal with no CHAP, every target it offers, no digests: what `--portal ADDR`
    /// gives.
    pub fn new(address: SocketAddr) -> PortalConfig {
        PortalConfig {
            address,
            chap: None,
            mutual_chap: None,
            targets: Vec::new(),
            header_digest: false,
            data_digest: false,
        }
    }
}

/// The settings a layer of the configuration may give a LU (a `[[device]]` entry,
/// `[overrides]`, a `[[multipath]]` entry); `None` leaves the layer below in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub selector: Option<SelectorKind>,
    pub grouping: Option<Grouping>,
    pub failback: Option<Failback>,
    pub no_path: Option<NoPathPolicy>,
    pub prioritizer: Option<PrioritizerKind>,
    pub checker: Option<CheckerKind>,
}

impl Settings {
    fn is_empty(&self) -> bool {
        *self == Settings::default()
    }

    /// Set what this layer sets; with `only_defaulted`, only where `r` still has mpath's
    /// built-in default (a built-in device entry does not beat `[defaults]`).
    fn apply(&self, r: &mut Resolved, only_defaulted: bool) {
        let base = MapConfig::default();
        let free = |default_here: bool| !only_defaulted || default_here;
        if let Some(v) = &self.selector {
            if free(r.policy.selector == base.selector) {
                r.policy.selector = *v;
            }
        }
        if let Some(v) = self.grouping {
            if free(r.policy.grouping == base.grouping) {
                r.policy.grouping = v;
            }
        }
        if let Some(v) = &self.failback {
            if free(r.policy.failback == base.failback) {
                r.policy.failback = *v;
            }
        }
        if let Some(v) = &self.no_path {
            if free(r.policy.no_path == base.no_path) {
                r.policy.no_path = *v;
            }
        }
        if let Some(v) = &self.prioritizer {
            if free(r.prioritizer == PrioritizerKind::Alua) {
                r.prioritizer = v.clone();
            }
        }
        if let Some(v) = self.checker {
            if free(r.checker == CheckerKind::Tur) {
                r.checker = v;
            }
        }
    }
}

/// A regular expression as multipath-tools matches one: POSIX-extended style, searched
/// anywhere in the value (`^…$` to match the whole value).
#[derive(Clone, Debug)]
pub struct Pattern {
    src: String,
    re: regex::Regex,
}

impl Pattern {
    pub fn new(src: &str) -> Result<Pattern, String> {
        regex::Regex::new(src)
            .map(|re| Pattern {
                src: src.to_string(),
                re,
            })
            .map_err(|e| {
                let e = e.to_string();
                let last = e.lines().last().unwrap_or("").trim();
                format!("{src:?} is not a regular expression: {last}")
            })
    }

    pub fn as_str(&self) -> &str {
        &self.src
    }

    pub fn is_match(&self, v: &str) -> bool {
        self.re.is_match(v)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, o: &Pattern) -> bool {
        self.src == o.src
    }
}

impl Eq for Pattern {}

/// A `[[device]]` entry: settings for the LUs whose vendor and product match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    pub vendor: Pattern,
    /// `None`: every product of the vendor.
    pub product: Option<Pattern>,
    pub settings: Settings,
}

impl DeviceConfig {
    pub fn matches(&self, vendor: &str, product: &str) -> bool {
        self.vendor.is_match(vendor) && self.product.as_ref().is_none_or(|p| p.is_match(product))
    }

    fn label(&self) -> String {
        match &self.product {
            Some(p) => format!("vendor {:?} product {:?}", self.vendor.as_str(), p.as_str()),
            None => format!("vendor {:?}", self.vendor.as_str()),
        }
    }
}

/// mpath's built-in device entries, under every `[[device]]` of the configuration; they
/// change only settings that `[defaults]` leaves at mpath's default.
/// - LIO (`LIO-ORG`) and mpath's own target (`MPATH`): implicit ALUA — paths grouped by
///   priority from REPORT TARGET PORT GROUPS, failback at once, 60 s of queueing with no
///   path (multipath-tools' `no_path_retry 12` at 5 s).
/// - tgt (`IET`, `VIRTUAL-DISK`): no ALUA, every port alike — one group of every path,
///   equal priorities.
pub fn builtin_devices() -> &'static [DeviceConfig] {
    // Compiled once: every check and priority of every path resolves through them.
    static BUILTIN: std::sync::OnceLock<Vec<DeviceConfig>> = std::sync::OnceLock::new();
    BUILTIN.get_or_init(builtin_table)
}

fn builtin_table() -> Vec<DeviceConfig> {
    let p = |s: &str| Pattern::new(s).expect("built-in pattern");
    let alua = Settings {
        grouping: Some(Grouping::GroupByPrio),
        prioritizer: Some(PrioritizerKind::Alua),
        failback: Some(Failback::Immediate),
        no_path: Some(NoPathPolicy::Queue(Duration::from_secs(60))),
        ..Settings::default()
    };
    vec![
        DeviceConfig {
            vendor: p("^LIO-ORG$"),
            product: None,
            settings: alua.clone(),
        },
        DeviceConfig {
            vendor: p("^MPATH$"),
            product: None,
            settings: alua,
        },
        DeviceConfig {
            vendor: p("^IET$"),
            product: Some(p("^VIRTUAL-DISK$")),
            settings: Settings {
                grouping: Some(Grouping::Multibus),
                prioritizer: Some(PrioritizerKind::Const),
                failback: Some(Failback::Immediate),
                ..Settings::default()
            },
        },
    ]
}

/// Per-WWID settings (`multipaths` section of multipath.conf).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipathConfig {
    pub wwid: String,
    pub alias: Option<String>,
    pub settings: Settings,
    /// Overrides `[exports] ublk` for this map.
    pub ublk: Option<bool>,
    /// Overrides `[exports] nbd_device` for this map.
    pub nbd_device: Option<bool>,
}

/// A LU's settings after every layer of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub policy: MapConfig,
    pub prioritizer: PrioritizerKind,
    pub checker: CheckerKind,
    /// The device entries that applied, strongest last (for `show config`-style reports).
    pub devices: Vec<String>,
}

/// One kind of rule of a blacklist or of its exceptions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub wwid: Vec<Pattern>,
    /// Vendor and product pairs (either may be absent: any).
    pub device: Vec<(Option<Pattern>, Option<Pattern>)>,
    /// Transport protocols (`scsi:iscsi` for every path of mpath's).
    pub protocol: Vec<Pattern>,
}

/// The protocol multipath-tools names for an iSCSI path.
pub const PROTOCOL: &str = "scsi:iscsi";

impl Rules {
    fn is_empty(&self) -> bool {
        self.wwid.is_empty() && self.device.is_empty() && self.protocol.is_empty()
    }

    fn wwid(&self, wwid: &str) -> Option<&Pattern> {
        self.wwid.iter().find(|p| p.is_match(wwid))
    }

    fn device(&self, vendor: &str, product: &str) -> Option<String> {
        self.device
            .iter()
            .find(|(v, p)| {
                v.as_ref().is_none_or(|v| v.is_match(vendor))
                    && p.as_ref().is_none_or(|p| p.is_match(product))
            })
            .map(|(v, p)| device_label(v, p))
    }

    fn protocol(&self) -> Option<&Pattern> {
        self.protocol.iter().find(|p| p.is_match(PROTOCOL))
    }
}

fn device_label(v: &Option<Pattern>, p: &Option<Pattern>) -> String {
    match (v, p) {
        (Some(v), Some(p)) => format!("{{ vendor {:?}, product {:?} }}", v.as_str(), p.as_str()),
        (Some(v), None) => format!("{{ vendor {:?} }}", v.as_str()),
        (None, Some(p)) => format!("{{ product {:?} }}", p.as_str()),
        (None, None) => "{ }".to_string(),
    }
}

/// Devices the daemon leaves alone, and the exceptions that take them back: multipath-tools'
/// rules, kind by kind (device, protocol, WWID): an exception of a kind overrides the
/// blacklist of that kind only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blacklist {
    pub rules: Rules,
    pub exceptions: Rules,
}

impl Blacklist {
    /// Why a LU is excluded, if it is.
    pub fn excludes(&self, wwid: &str, vendor: &str, product: &str) -> Option<String> {
        if self.exceptions.device(vendor, product).is_none() {
            if let Some(d) = self.rules.device(vendor, product) {
                return Some(format!(
                    "device {vendor:?} {product:?} matches blacklist device {d}"
                ));
            }
        }
        if self.exceptions.protocol().is_none() {
            if let Some(p) = self.rules.protocol() {
                return Some(format!(
                    "protocol {PROTOCOL} matches blacklist protocol {:?}",
                    p.as_str()
                ));
            }
        }
        if self.exceptions.wwid(wwid).is_none() {
            if let Some(p) = self.rules.wwid(wwid) {
                return Some(format!("wwid matches blacklist entry {:?}", p.as_str()));
            }
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
    /// Hedged reads (the engine's defaults): a read outstanding on one path past that
    /// path's deadline is issued on another too; the first good answer wins.
    pub hedge_reads: bool,
    pub prioritizer: PrioritizerKind,
    pub user_friendly_names: bool,
    /// Where names given to WWIDs are kept (`None`: in memory only, for tests and the
    /// demo). Default: [`default_bindings_file`].
    pub bindings_file: Option<PathBuf>,
    pub initiator_name: String,
    pub portals: Vec<PortalConfig>,
    /// `[[device]]` entries, in file order.
    pub devices: Vec<DeviceConfig>,
    pub overrides: Settings,
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
    /// The group the control socket is given (mode 0660): its members may read the
    /// daemon's views; changes stay with the daemon's own user and root.
    pub control_socket_group: Option<String>,
    pub metrics: Option<SocketAddr>,
    /// How long start-up waits for paths before building maps from those present (more
    /// arrive later).
    pub settle: Duration,
    /// The iSCSI sessions' failure-detection timers.
    pub timers: SessionTimers,
}

impl DaemonConfig {
    /// The settings of the LU `wwid` (when known) from `vendor`'s `product`: every layer
    /// applied, weakest first.
    pub fn resolve(&self, wwid: Option<&str>, vendor: &str, product: &str) -> Resolved {
        let mut r = Resolved {
            policy: self.policy.clone(),
            prioritizer: self.prioritizer.clone(),
            checker: self.checker,
            devices: Vec::new(),
        };
        if let Some(d) = builtin_devices()
            .iter()
            .find(|d| d.matches(vendor, product))
        {
            d.settings.apply(&mut r, true);
            r.devices.push(format!("built-in {}", d.label()));
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.matches(vendor, product) {
                d.settings.apply(&mut r, false);
                r.devices.push(format!("device[{i}] {}", d.label()));
            }
        }
        self.overrides.apply(&mut r, false);
        if let Some(m) = wwid.and_then(|w| self.multipaths.iter().find(|m| m.wwid == w)) {
            m.settings.apply(&mut r, false);
        }
        r
    }
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
            hedge_reads: true,
            prioritizer: PrioritizerKind::Alua,
            user_friendly_names: true,
            bindings_file: Some(default_bindings_file()),
            initiator_name: iscsi_initiator::default_initiator_name(),
            portals: Vec::new(),
            devices: Vec::new(),
            overrides: Settings::default(),
            multipaths: Vec::new(),
            blacklist: Blacklist::default(),
            nbd_listen: Some(SocketAddr::from(([127, 0, 0, 1], 10809))),
            nbd_unix: None,
            fuse_dir: None,
            ublk: false,
            nbd_device: false,
            control_socket: default_control_socket(),
            control_socket_group: None,
            metrics: None,
            settle: Duration::from_secs(3),
            timers: SessionTimers::default(),
        }
    }
}

/// The system daemon's control socket.
pub const SYSTEM_CONTROL_SOCKET: &str = "/run/mpath/mpathd.sock";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where a daemon puts its control socket by default: [`SYSTEM_CONTROL_SOCKET`] for root;
/// for another user `$XDG_RUNTIME_DIR/mpath.sock`, else `/tmp/mpath-UID.sock` — never
/// the system's path, which a daemon of another user must not take.
pub fn default_control_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_CONTROL_SOCKET);
    }
    user_control_socket()
}

fn user_control_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("mpath.sock"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => PathBuf::from(format!("/tmp/mpath-{}.sock", unsafe { libc::getuid() })),
    }
}

/// The socket a client talks to by default: the system daemon's when there is one (a
/// user in its group may read its status), else the user's own daemon's.
pub fn client_control_socket() -> PathBuf {
    let system = PathBuf::from(SYSTEM_CONTROL_SOCKET);
    if is_root() || system.exists() {
        system
    } else {
        user_control_socket()
    }
}

/// Where names given to WWIDs are kept by default: `$STATE_DIRECTORY/bindings` under
/// systemd's `StateDirectory=`, else `/var/lib/mpath/bindings` for root, else
/// `$XDG_STATE_HOME/mpath/bindings` (`~/.local/state/mpath/bindings`).
pub fn default_bindings_file() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated: the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first).join("bindings");
        }
    }
    if is_root() {
        return PathBuf::from("/var/lib/mpath/bindings");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    state.join("mpath/bindings")
}

/// A configuration error: what is wrong, where (file, line, key) — the same as the
/// target's.
pub use confkit::ConfigError;

/// A value written as a string or a bare number (`polling_interval = 5`, as
/// multipath-tools writes it, or `checker_interval = "5s"`).
#[derive(Clone, Debug, Default, PartialEq)]
struct Text {
    s: String,
    /// Written as a bare integer.
    integer: Option<i64>,
}

impl std::ops::Deref for Text {
    type Target = String;
    fn deref(&self) -> &String {
        &self.s
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                Ok(Text {
                    s: v.to_string(),
                    integer: None,
                })
            }
            fn visit_i64<E>(self, v: i64) -> Result<Text, E> {
                Ok(Text {
                    s: v.to_string(),
                    integer: Some(v),
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom("number too large"))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Text, E> {
                Ok(Text {
                    s: v.to_string(),
                    integer: None,
                })
            }
        }
        d.deserialize_any(V)
    }
}

type Str = Spanned<Text>;
/// A name (a selector, a checker…): a string only.
type Name = Spanned<String>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Option<Defaults>,
    #[serde(default)]
    portal: Vec<PortalSection>,
    #[serde(default)]
    device: Vec<DeviceSection>,
    #[serde(default)]
    overrides: Option<OverridesSection>,
    #[serde(default)]
    multipath: Vec<MultipathSection>,
    #[serde(default)]
    blacklist: Option<BlacklistSection>,
    #[serde(default)]
    blacklist_exceptions: Option<BlacklistSection>,
    #[serde(default)]
    exports: Option<ExportsSection>,
    control_socket: Option<PathBuf>,
    control_socket_group: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
}

/// The settings every layer may carry, with multipath-tools' spellings as aliases.
macro_rules! layered_section {
    ($name:ident { $($extra:tt)* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            #[serde(alias = "path_selector")]
            selector: Option<Name>,
            rr_min_io: Option<Spanned<u32>>,
            #[serde(alias = "path_grouping_policy")]
            grouping: Option<Name>,
            failback: Option<Str>,
            no_path_retry: Option<Str>,
            #[serde(alias = "prio")]
            prioritizer: Option<Name>,
            prio_args: Option<Spanned<Vec<(String, u32)>>>,
            #[serde(alias = "path_checker")]
            checker: Option<Name>,
            $($extra)*
        }

        impl $name {
            fn layer(&self) -> Layer<'_> {
                Layer {
                    selector: self.selector.as_ref(),
                    rr_min_io: self.rr_min_io.as_ref(),
                    grouping: self.grouping.as_ref(),
                    failback: self.failback.as_ref(),
                    no_path_retry: self.no_path_retry.as_ref(),
                    prioritizer: self.prioritizer.as_ref(),
                    prio_args: self.prio_args.as_ref(),
                    checker: self.checker.as_ref(),
                }
            }
        }
    };
}

/// A section's layered settings, as written.
struct Layer<'a> {
    selector: Option<&'a Name>,
    rr_min_io: Option<&'a Spanned<u32>>,
    grouping: Option<&'a Name>,
    failback: Option<&'a Str>,
    no_path_retry: Option<&'a Str>,
    prioritizer: Option<&'a Name>,
    prio_args: Option<&'a Spanned<Vec<(String, u32)>>>,
    checker: Option<&'a Name>,
}

layered_section!(Defaults {
    #[serde(alias = "polling_interval")]
    checker_interval: Option<Str>,
    #[serde(alias = "max_polling_interval")]
    checker_interval_ok: Option<Str>,
    stale_write_fence: Option<Str>,
    hedge_reads: Option<bool>,
    user_friendly_names: Option<bool>,
    bindings_file: Option<PathBuf>,
    initiator_name: Option<Str>,
    flap_damping: Option<bool>,
    marginal_failures: Option<Spanned<u32>>,
    marginal_window: Option<Str>,
    marginal_hold: Option<Str>,
    settle: Option<Str>,
    busy_timeout: Option<Str>,
    alua_transition_timeout: Option<Str>,
    stall_silence: Option<Str>,
    stall_ping_floor: Option<Str>,
    keepalive_interval: Option<Str>,
    keepalive_timeout: Option<Str>,
    command_timeout: Option<Str>,
});

layered_section!(DeviceSection {
    vendor: Str,
    product: Option<Str>,
});

layered_section!(OverridesSection {});

layered_section!(MultipathSection {
    wwid: Str,
    alias: Option<Str>,
    ublk: Option<bool>,
    nbd_device: Option<bool>,
});

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalSection {
    address: Str,
    chap: Option<ChapSecret>,
    mutual_chap: Option<ChapSecret>,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    header_digest: bool,
    #[serde(default)]
    data_digest: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BlacklistSection {
    #[serde(default)]
    wwid: Vec<Str>,
    /// Shorthand for `device = [{ vendor = … }]`.
    #[serde(default)]
    vendor: Vec<Str>,
    /// Shorthand for `device = [{ product = … }]`.
    #[serde(default)]
    product: Vec<Str>,
    #[serde(default)]
    device: Vec<Spanned<DevicePatternSection>>,
    #[serde(default)]
    protocol: Vec<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicePatternSection {
    vendor: Option<String>,
    product: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExportsSection {
    /// `false` or "off" disables the TCP listener.
    nbd: Option<Str>,
    nbd_unix: Option<PathBuf>,
    fuse: Option<PathBuf>,
    ublk: Option<bool>,
    nbd_device: Option<bool>,
}

/// Read and validate a configuration file: mpath's TOML, or a multipath-tools
/// `multipath.conf` (with its `config_dir`), translated as `mpath config import` does.
pub fn load_file(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let text = confkit::read_file(path)?;
    if crate::mpconf::looks_like(&text) {
        let imported = crate::mpconf::import_text(&text, path, None)?;
        return parse_str(&imported.toml, Some(path)).map_err(|mut e| {
            // The translation is checked; should it still not read, say where it came from.
            e.message = format!("{} (in the TOML translated from this file)", e.message);
            e.line = None;
            e
        });
    }
    parse_str(&text, Some(path))
}

/// Parse and validate configuration text (`file` labels errors).
pub fn parse_str(src: &str, file: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    let ctx = Ctx { file, src };
    let raw: File = ctx.parse()?;
    let mut c = DaemonConfig::default();
    // weightedpath in a later layer takes its own prio_args, else these.
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
        let address = confkit::parse_portal(p.address.get_ref())
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
            chap: p.chap,
            mutual_chap: p.mutual_chap,
            targets: p.targets,
            header_digest: p.header_digest,
            data_digest: p.data_digest,
        });
    }
    for (i, d) in raw.device.iter().enumerate() {
        let key = |k: &str| format!("device[{i}].{k}");
        let vendor = pattern(&ctx, &d.vendor, &key("vendor"))?;
        let product = d
            .product
            .as_ref()
            .map(|p| pattern(&ctx, p, &key("product")))
            .transpose()?;
        let settings = layer(&ctx, &c, d.layer(), &format!("device[{i}]"), &default_args)?;
        c.devices.push(DeviceConfig {
            vendor,
            product,
            settings,
        });
    }
    if let Some(o) = &raw.overrides {
        c.overrides = layer(&ctx, &c, o.layer(), "overrides", &default_args)?;
    }
    for (i, m) in raw.multipath.iter().enumerate() {
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
        let settings = layer(
            &ctx,
            &c,
            m.layer(),
            &format!("multipath[{i}]"),
            &default_args,
        )?;
        let alias = match &m.alias {
            Some(a) if valid_name(a.get_ref()) => Some(a.get_ref().to_string()),
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
            settings,
            ublk: m.ublk,
            nbd_device: m.nbd_device,
        });
    }
    if let Some(b) = &raw.blacklist {
        c.blacklist.rules = rules(&ctx, b, "blacklist")?;
    }
    if let Some(b) = &raw.blacklist_exceptions {
        c.blacklist.exceptions = rules(&ctx, b, "blacklist_exceptions")?;
    }
    if let Some(e) = raw.exports {
        if let Some(n) = &e.nbd {
            c.nbd_listen = match n.get_ref().as_str() {
                "off" | "false" | "none" | "" => None,
                s => Some(
                    confkit::parse_portal(s)
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
    if let Some(g) = &raw.control_socket_group {
        if group_id(g.get_ref()).is_none() {
            return Err(ctx.err(
                Some(g.span()),
                "control_socket_group",
                format!("no group {:?} on this host", g.get_ref()),
            ));
        }
        c.control_socket_group = Some(g.get_ref().clone());
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

/// The id of group `name` (or a number), if the host has it.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam reads a NUL-terminated name; the result is only read at once.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        None
    } else {
        // SAFETY: non-null: a valid group entry until the next getgr* call.
        Some(unsafe { (*g).gr_gid })
    }
}

fn pattern(ctx: &Ctx, s: &Str, key: &str) -> Result<Pattern, ConfigError> {
    Pattern::new(s.get_ref()).map_err(|m| ctx.err(Some(s.span()), key, m))
}

fn rules(ctx: &Ctx, b: &BlacklistSection, section: &str) -> Result<Rules, ConfigError> {
    let mut r = Rules::default();
    for (i, w) in b.wwid.iter().enumerate() {
        r.wwid
            .push(pattern(ctx, w, &format!("{section}.wwid[{i}]"))?);
    }
    for (i, v) in b.vendor.iter().enumerate() {
        let p = pattern(ctx, v, &format!("{section}.vendor[{i}]"))?;
        r.device.push((Some(p), None));
    }
    for (i, v) in b.product.iter().enumerate() {
        let p = pattern(ctx, v, &format!("{section}.product[{i}]"))?;
        r.device.push((None, Some(p)));
    }
    for (i, d) in b.device.iter().enumerate() {
        let key = format!("{section}.device[{i}]");
        let one = |s: &Option<String>, k: &str| {
            s.as_deref()
                .map(|s| {
                    Pattern::new(s).map_err(|m| ctx.err(Some(d.span()), &format!("{key}.{k}"), m))
                })
                .transpose()
        };
        let (v, p) = (
            one(&d.get_ref().vendor, "vendor")?,
            one(&d.get_ref().product, "product")?,
        );
        if v.is_none() && p.is_none() {
            return Err(ctx.err(Some(d.span()), &key, "give a vendor, a product or both"));
        }
        r.device.push((v, p));
    }
    for (i, p) in b.protocol.iter().enumerate() {
        r.protocol
            .push(pattern(ctx, p, &format!("{section}.protocol[{i}]"))?);
    }
    Ok(r)
}

/// The settings a section sets (`prefix`: its key for errors).
fn layer(
    ctx: &Ctx,
    c: &DaemonConfig,
    l: Layer,
    prefix: &str,
    default_args: &[(String, u32)],
) -> Result<Settings, ConfigError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let mut s = Settings::default();
    let rr = match l.rr_min_io {
        Some(v) if *v.get_ref() == 0 => {
            return Err(ctx.err(Some(v.span()), &key("rr_min_io"), "must be at least 1"))
        }
        Some(v) => Some(*v.get_ref()),
        None => None,
    };
    if let Some(v) = l.selector {
        s.selector = Some(selector(ctx, v, &key("selector"), rr.unwrap_or(1))?);
    } else if let Some(rr) = rr {
        s.selector = Some(SelectorKind::RoundRobin { repeat_count: rr });
    }
    if let Some(v) = l.grouping {
        s.grouping = Some(grouping(ctx, v, &key("grouping"))?);
    }
    if let Some(v) = l.failback {
        s.failback = Some(failback(ctx, v, &key("failback"))?);
    }
    if let Some(v) = l.no_path_retry {
        s.no_path = Some(no_path(ctx, v, &key("no_path_retry"), c.checker_interval)?);
    }
    if let Some(v) = l.prioritizer {
        let args = l
            .prio_args
            .map(|a| a.get_ref().as_slice())
            .unwrap_or(default_args);
        s.prioritizer = Some(prioritizer(ctx, v, &key("prioritizer"), args)?);
    }
    // prio_args in [defaults] alone are the weights of every later weightedpath.
    if let Some(a) = l.prio_args.filter(|_| prefix != "defaults") {
        if !matches!(s.prioritizer, Some(PrioritizerKind::Weightedpath(_))) {
            return Err(ctx.err(
                Some(a.span()),
                &key("prio_args"),
                "prio_args needs prioritizer = \"weightedpath\" in the same entry",
            ));
        }
    }
    if let Some(v) = l.checker {
        s.checker = Some(checker(ctx, v, &key("checker"))?);
    }
    Ok(s)
}

fn checker(ctx: &Ctx, s: &Name, key: &str) -> Result<CheckerKind, ConfigError> {
    Ok(match s.get_ref().as_str() {
        "tur" => CheckerKind::Tur,
        "readsector0" => CheckerKind::Readsector0,
        "directio" => CheckerKind::Directio,
        other => {
            return Err(ctx.err(
                Some(s.span()),
                key,
                format!(
                    "unknown checker {other:?} (tur, readsector0, directio){}",
                    did_you_mean(other, &["tur", "readsector0", "directio"])
                ),
            ))
        }
    })
}

/// "; did you mean `x`?" when `got` is a near miss of one of `known`, else "".
fn did_you_mean(got: &str, known: &[&str]) -> String {
    match confkit::closest(got, known.iter().copied()) {
        Some(s) => format!("; did you mean {s:?}?"),
        None => String::new(),
    }
}

fn apply_defaults(ctx: &Ctx, d: Defaults, c: &mut DaemonConfig) -> Result<(), ConfigError> {
    // The intervals first: `no_path_retry = 12` counts checker intervals.
    if let Some(s) = &d.checker_interval {
        c.checker_interval = duration(ctx, s, "defaults.checker_interval")?;
    }
    if let Some(s) = &d.checker_interval_ok {
        c.checker_interval_ok = duration(ctx, s, "defaults.checker_interval_ok")?;
    }
    let s = layer(ctx, c, d.layer(), "defaults", &[])?;
    let mut r = Resolved {
        policy: c.policy.clone(),
        prioritizer: c.prioritizer.clone(),
        checker: c.checker,
        devices: Vec::new(),
    };
    s.apply(&mut r, false);
    c.policy = r.policy;
    c.prioritizer = r.prioritizer;
    c.checker = r.checker;
    if let Some(s) = &d.stale_write_fence {
        c.stale_write_fence = match s.get_ref().as_str() {
            "off" => None,
            _ => Some(duration(ctx, s, "defaults.stale_write_fence")?),
        };
    }
    if let Some(v) = d.hedge_reads {
        c.hedge_reads = v;
    }
    if let Some(v) = d.user_friendly_names {
        c.user_friendly_names = v;
    }
    if let Some(b) = d.bindings_file {
        // "": names in memory only.
        c.bindings_file = (!b.as_os_str().is_empty()).then_some(b);
    }
    if let Some(n) = &d.initiator_name {
        confkit::check_name(n.get_ref())
            .map_err(|m| ctx.err(Some(n.span()), "defaults.initiator_name", m))?;
        c.initiator_name = n.get_ref().to_string();
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

fn selector(ctx: &Ctx, s: &Name, key: &str, rr: u32) -> Result<SelectorKind, ConfigError> {
    // multipath-tools writes the kernel selector's argument count: "service-time 0".
    let name = s.get_ref().trim();
    let name = name.strip_suffix(" 0").unwrap_or(name).trim();
    Ok(match name {
        "round-robin" => SelectorKind::RoundRobin { repeat_count: rr },
        "queue-length" => SelectorKind::QueueLength,
        "service-time" => SelectorKind::ServiceTime,
        "historical-service-time" => SelectorKind::HistoricalServiceTime(HstParams::default()),
        other => {
            const KNOWN: [&str; 4] = [
                "round-robin",
                "queue-length",
                "service-time",
                "historical-service-time",
            ];
            return Err(ctx.err(
                Some(s.span()),
                key,
                format!(
                    "unknown selector {other:?} ({}){}",
                    KNOWN.join(", "),
                    did_you_mean(other, &KNOWN)
                ),
            ));
        }
    })
}

fn grouping(ctx: &Ctx, s: &Name, key: &str) -> Result<Grouping, ConfigError> {
    Ok(match s.get_ref().as_str() {
        "failover" => Grouping::Failover,
        "multibus" => Grouping::Multibus,
        "group_by_prio" => Grouping::GroupByPrio,
        "group_by_serial" => Grouping::GroupBySerial,
        "group_by_node_name" => Grouping::GroupByNodeName,
        "group_by_tpg" => Grouping::GroupByTpg,
        other => {
            const KNOWN: [&str; 6] = [
                "failover",
                "multibus",
                "group_by_prio",
                "group_by_serial",
                "group_by_node_name",
                "group_by_tpg",
            ];
            return Err(ctx.err(
                Some(s.span()),
                key,
                format!(
                    "unknown grouping {other:?} ({}){}",
                    KNOWN.join(", "),
                    did_you_mean(other, &KNOWN)
                ),
            ));
        }
    })
}

fn failback(ctx: &Ctx, s: &Str, key: &str) -> Result<Failback, ConfigError> {
    let bad = || {
        ctx.err(
            Some(s.span()),
            key,
            "expected immediate, manual, followover or a number of seconds",
        )
    };
    Ok(match s.get_ref().as_str() {
        "immediate" => Failback::Immediate,
        "manual" => Failback::Manual,
        "followover" => Failback::Followover,
        other => match other.trim_end_matches('s').parse::<u64>() {
            Ok(n) => Failback::Deferred(Duration::from_secs(n)),
            Err(_) => return Err(bad()),
        },
    })
}

/// `fail`, `queue`, a duration, or (multipath-tools' way, a bare number) that many
/// checker intervals.
fn no_path(
    ctx: &Ctx,
    s: &Str,
    key: &str,
    checker_interval: Duration,
) -> Result<NoPathPolicy, ConfigError> {
    if let Some(n) = s.get_ref().integer {
        return match u32::try_from(n) {
            Ok(0) => Ok(NoPathPolicy::Fail),
            Ok(n) => checker_interval
                .checked_mul(n)
                .map(NoPathPolicy::Queue)
                .ok_or_else(|| ctx.err(Some(s.span()), key, "too many checker intervals")),
            Err(_) => Err(ctx.err(Some(s.span()), key, "must not be negative")),
        };
    }
    Ok(match s.get_ref().as_str() {
        "fail" => NoPathPolicy::Fail,
        "queue" => NoPathPolicy::QueueForever,
        _ => NoPathPolicy::Queue(duration(ctx, s, key).map_err(|mut e| {
            e.message = format!(
                "expected fail, queue or a duration such as 60s, or a number of checker intervals: {}",
                e.message
            );
            e
        })?),
    })
}

fn prioritizer(
    ctx: &Ctx,
    s: &Name,
    key: &str,
    args: &[(String, u32)],
) -> Result<PrioritizerKind, ConfigError> {
    Ok(match s.get_ref().as_str() {
        "const" => PrioritizerKind::Const,
        "alua" => PrioritizerKind::Alua,
        "weightedpath" => PrioritizerKind::Weightedpath(args.to_vec()),
        "path_latency" => PrioritizerKind::PathLatency,
        other => {
            const KNOWN: [&str; 4] = ["const", "alua", "weightedpath", "path_latency"];
            return Err(ctx.err(
                Some(s.span()),
                key,
                format!(
                    "unknown prioritizer {other:?} ({}){}",
                    KNOWN.join(", "),
                    did_you_mean(other, &KNOWN)
                ),
            ));
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
        Ok(v) if v.is_finite() && v >= 0.0 => Duration::try_from_secs_f64(v * mult_ms / 1000.0)
            .map_err(|_| format!("{s:?} is too long a duration")),
        _ => Err(format!("{s:?} is not a duration (examples: 500ms, 2s, 1m)")),
    }
}

fn duration(ctx: &Ctx, s: &Str, key: &str) -> Result<Duration, ConfigError> {
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
    if let Some(g) = &c.control_socket_group {
        let _ = writeln!(s, "control_socket_group = {}", q(g));
    }
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
    let _ = writeln!(s, "checker = {}", q(checker_name(c.checker)));
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
    let _ = writeln!(s, "hedge_reads = {}", c.hedge_reads);
    let _ = writeln!(s, "user_friendly_names = {}", c.user_friendly_names);
    let bindings = c.bindings_file.as_ref().map(|b| b.display().to_string());
    let _ = writeln!(
        s,
        "bindings_file = {}",
        q(bindings.as_deref().unwrap_or(""))
    );
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
        if let Some(ChapSecret { user: u, .. }) = &pc.chap {
            let _ = writeln!(s, "chap = {{ user = {}, secret = \"<hidden>\" }}", q(u));
        }
        if let Some(ChapSecret { user: u, .. }) = &pc.mutual_chap {
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
    for d in &c.devices {
        let _ = writeln!(s, "\n[[device]]\nvendor = {}", q(d.vendor.as_str()));
        if let Some(p) = &d.product {
            let _ = writeln!(s, "product = {}", q(p.as_str()));
        }
        render_settings(&mut s, &d.settings);
    }
    if !c.overrides.is_empty() {
        let _ = writeln!(s, "\n[overrides]");
        render_settings(&mut s, &c.overrides);
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
        render_settings(&mut s, &m.settings);
    }
    for (section, r) in [
        ("blacklist", &c.blacklist.rules),
        ("blacklist_exceptions", &c.blacklist.exceptions),
    ] {
        if r.is_empty() {
            continue;
        }
        let list = |v: &[Pattern]| {
            v.iter()
                .map(|x| q(x.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "\n[{section}]");
        if !r.wwid.is_empty() {
            let _ = writeln!(s, "wwid = [{}]", list(&r.wwid));
        }
        if !r.device.is_empty() {
            let devices: Vec<String> = r
                .device
                .iter()
                .map(|(v, p)| {
                    let mut parts = Vec::new();
                    if let Some(v) = v {
                        parts.push(format!("vendor = {}", q(v.as_str())));
                    }
                    if let Some(p) = p {
                        parts.push(format!("product = {}", q(p.as_str())));
                    }
                    format!("{{ {} }}", parts.join(", "))
                })
                .collect();
            let _ = writeln!(s, "device = [{}]", devices.join(", "));
        }
        if !r.protocol.is_empty() {
            let _ = writeln!(s, "protocol = [{}]", list(&r.protocol));
        }
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

/// The keys a layer sets (`[[device]]`, `[overrides]`, `[[multipath]]`).
fn render_settings(s: &mut String, set: &Settings) {
    use std::fmt::Write;
    let q = |v: &str| toml::Value::String(v.to_string()).to_string();
    if let Some(sel) = &set.selector {
        let _ = writeln!(s, "selector = {}", q(selector_key(sel)));
        if let SelectorKind::RoundRobin { repeat_count } = sel {
            let _ = writeln!(s, "rr_min_io = {repeat_count}");
        }
    }
    if let Some(g) = set.grouping {
        let _ = writeln!(s, "grouping = {}", q(grouping_name(g)));
    }
    if let Some(f) = &set.failback {
        let _ = writeln!(s, "failback = {}", failback_name(f));
    }
    if let Some(n) = &set.no_path {
        let _ = writeln!(s, "no_path_retry = {}", no_path_name(n));
    }
    if let Some(pr) = &set.prioritizer {
        let _ = writeln!(s, "prioritizer = {}", q(prio_name(pr)));
        if let PrioritizerKind::Weightedpath(w) = pr {
            let args: Vec<String> = w.iter().map(|(p, n)| format!("[{}, {n}]", q(p))).collect();
            let _ = writeln!(s, "prio_args = [{}]", args.join(", "));
        }
    }
    if let Some(ck) = set.checker {
        let _ = writeln!(s, "checker = {}", q(checker_name(ck)));
    }
}

pub fn checker_name(c: CheckerKind) -> &'static str {
    match c {
        CheckerKind::Tur => "tur",
        CheckerKind::Readsector0 => "readsector0",
        CheckerKind::Directio => "directio",
    }
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
        let r = c.resolve(Some("36026d70aaaa"), "X", "Y");
        assert_eq!(r.policy.no_path, NoPathPolicy::Fail);
        assert_eq!(
            r.policy.selector,
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
        assert_eq!(back.portals[0].chap.as_ref().unwrap().secret, "<hidden>");
        assert!(
            !format!("{c:?}").contains("a-long-secret"),
            "Debug hides it"
        );
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
            c.multipaths[0].settings.prioritizer,
            Some(PrioritizerKind::Weightedpath(vec![(
                "127.0.0.2*".into(),
                7
            )]))
        );
        assert_eq!(
            c.multipaths[1].settings.prioritizer,
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
    fn the_system_socket_is_roots_alone() {
        let root = unsafe { libc::geteuid() } == 0;
        let d = default_control_socket();
        if root {
            assert_eq!(d, PathBuf::from(SYSTEM_CONTROL_SOCKET));
            assert_eq!(client_control_socket(), d);
            assert_eq!(
                DaemonConfig::default().bindings_file,
                std::env::var_os("STATE_DIRECTORY")
                    .map(|_| default_bindings_file())
                    .or(Some(PathBuf::from("/var/lib/mpath/bindings")))
            );
        } else {
            // Another user's daemon never takes the system's socket.
            assert!(!d.starts_with("/run/mpath"), "{}", d.display());
        }
        // "" keeps names in memory only; the default has a file.
        let c = parse_str("[defaults]\nbindings_file = \"\"\n", None).unwrap();
        assert_eq!(c.bindings_file, None);
        assert!(DaemonConfig::default().bindings_file.is_some());
        assert_eq!(parse_str(&render(&c), None).unwrap(), c);
    }

    #[test]
    fn durations() {
        // Too long for a Duration: an error, not a panic.
        assert!(parse_duration("1e300s").unwrap_err().contains("too long"));
        let e = parse_str(
            "[defaults]\npolling_interval = \"1e15\"\nno_path_retry = 4000000000\n",
            None,
        )
        .unwrap_err();
        assert_eq!(e.key, "defaults.no_path_retry", "{e}");
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("x").is_err());
    }
}
