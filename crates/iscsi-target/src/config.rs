//! Target configuration: a TOML file for the full picture, or the same model built from
//! command-line flags for the simple case. Every error names the key, and for files the line.
//!
//! ```toml
//! [settings]
//! control_socket = "/run/mpath-target.sock"
//! queue_depth = 128
//!
//! [[target]]
//! iqn = "iqn.2026-01.io.mpath:demo"
//! allowed_initiators = []              # empty: any initiator
//! chap = { user = "alice", secret = "a-12-byte-secret" }
//! alua = "both"                        # none | implicit | explicit | both
//! stpg = "demote-others"               # or "as-requested" (what STPG does to other groups)
//!
//! [[target.portal_group]]
//! tag = 1
//! portals = ["127.0.0.2:3260"]
//! state = "active-optimized"
//!
//! [[target.portal_group]]
//! tag = 2
//! portals = ["127.0.0.3:3260"]
//! state = "active-non-optimized"
//!
//! [[target.lun]]
//! id = 1
//! backing = "mem:256M"                 # mem:SIZE | file[+direct]:PATH | sparse[+direct]:PATH:SIZE
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::backend::BackingSpec;
pub use scsi::StpgPolicy;

// Shared with the daemon's configuration.
pub use confkit::{check_name, closest, parse_portal, read_file, suggest, ConfigError, Ctx};

/// ALUA access state of a target port group (SPC-4 §5.15.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AluaState {
    ActiveOptimized,
    ActiveNonOptimized,
    Standby,
    Unavailable,
    Transitioning,
}

impl AluaState {
    pub const NAMES: &'static str =
        "active-optimized, active-non-optimized, standby, unavailable, transitioning";

    pub fn parse(s: &str) -> Option<AluaState> {
        Some(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "active-optimized" | "ao" | "optimized" => AluaState::ActiveOptimized,
            "active-non-optimized" | "ano" | "non-optimized" => AluaState::ActiveNonOptimized,
            "standby" => AluaState::Standby,
            "unavailable" => AluaState::Unavailable,
            "transitioning" => AluaState::Transitioning,
            _ => return None,
        })
    }
}

impl fmt::Display for AluaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AluaState::ActiveOptimized => "active-optimized",
            AluaState::ActiveNonOptimized => "active-non-optimized",
            AluaState::Standby => "standby",
            AluaState::Unavailable => "unavailable",
            AluaState::Transitioning => "transitioning",
        })
    }
}

/// Which ALUA mode the LUs report in INQUIRY's TPGS field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AluaMode {
    None,
    Implicit,
    Explicit,
    Both,
}

impl AluaMode {
    /// The configuration spelling: `none`, `implicit`, `explicit`, `both`.
    pub fn parse(s: &str) -> Option<AluaMode> {
        Some(match s {
            "none" => AluaMode::None,
            "implicit" => AluaMode::Implicit,
            "explicit" => AluaMode::Explicit,
            "both" => AluaMode::Both,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AluaMode::None => "none",
            AluaMode::Implicit => "implicit",
            AluaMode::Explicit => "explicit",
            AluaMode::Both => "both",
        }
    }
}

/// CHAP credentials.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

impl fmt::Debug for Chap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Chap {{ user: {:?}, secret: <hidden> }}", self.user)
    }
}

impl Chap {
    /// Parse `USER:SECRET` (the secret may contain ':').
    pub fn parse(s: &str) -> Result<Chap, String> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(Chap {
                user: u.to_string(),
                secret: p.to_string(),
            }),
            _ => Err("expected USER:SECRET".to_string()),
        }
    }
}

/// One iSCSI target portal group: a SCSI target port with its own TPGT and ALUA group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalGroupSpec {
    /// Target Portal Group Tag; also the relative target port identifier and the ALUA target
    /// port group id, so that every portal group is one ALUA group.
    pub tag: u16,
    pub portals: Vec<SocketAddr>,
    pub state: AluaState,
    pub preferred: bool,
}

/// One LU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunSpec {
    pub id: u16,
    pub backing: BackingSpec,
    pub block_size: u32,
    /// Unit serial number (VPD 0x80); derived from the target and LUN when absent.
    pub serial: Option<String>,
    pub vendor: String,
    pub product: String,
}

/// One target (IQN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub iqn: String,
    pub alias: Option<String>,
    pub portal_groups: Vec<PortalGroupSpec>,
    pub luns: Vec<LunSpec>,
    /// Initiator IQNs allowed to log in; empty allows any.
    pub allowed_initiators: Vec<String>,
    pub chap: Option<Chap>,
    pub mutual_chap: Option<Chap>,
    pub alua: AluaMode,
    /// What SET TARGET PORT GROUPS does to the groups it does not name.
    pub stpg: StpgPolicy,
}

/// Operational limits the target offers in login negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiation {
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u16,
}

impl Default for Negotiation {
    fn default() -> Self {
        Negotiation {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 16,
        }
    }
}

/// The whole target server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub targets: Vec<TargetSpec>,
    pub control_socket: Option<PathBuf>,
    /// Commands each session may have outstanding.
    pub queue_depth: u32,
    pub nop_in_interval: Option<Duration>,
    pub nop_in_timeout: Duration,
    pub negotiation: Negotiation,
    /// CHAP required of discovery sessions, if any.
    pub discovery_chap: Option<Chap>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            targets: Vec::new(),
            control_socket: None,
            queue_depth: 128,
            nop_in_interval: Some(Duration::from_secs(10)),
            nop_in_timeout: Duration::from_secs(10),
            negotiation: Negotiation::default(),
            discovery_chap: None,
        }
    }
}

impl ServerConfig {
    /// Every portal any target listens on, without duplicates, in configuration order.
    pub fn portals(&self) -> Vec<SocketAddr> {
        let mut seen = HashSet::new();
        self.targets
            .iter()
            .flat_map(|t| t.portal_groups.iter())
            .flat_map(|g| g.portals.iter().copied())
            .filter(|p| seen.insert(*p))
            .collect()
    }
}

// ---- the file format ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    settings: Option<SettingsSection>,
    #[serde(default)]
    target: Vec<TargetSection>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettingsSection {
    control_socket: Option<PathBuf>,
    queue_depth: Option<Spanned<u32>>,
    nop_interval_ms: Option<u64>,
    nop_timeout_ms: Option<u64>,
    max_recv_data_segment_length: Option<Spanned<u32>>,
    max_burst_length: Option<Spanned<u32>>,
    first_burst_length: Option<Spanned<u32>>,
    immediate_data: Option<bool>,
    initial_r2t: Option<bool>,
    max_outstanding_r2t: Option<Spanned<u16>>,
    discovery_chap: Option<Chap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSection {
    iqn: Spanned<String>,
    alias: Option<String>,
    /// Shorthand: each portal its own portal group, tags 1, 2, ... all active/optimized.
    #[serde(default)]
    portals: Vec<Spanned<String>>,
    #[serde(default)]
    portal_group: Vec<PortalGroupSection>,
    #[serde(default)]
    lun: Vec<LunSection>,
    #[serde(default)]
    allowed_initiators: Vec<String>,
    chap: Option<Chap>,
    mutual_chap: Option<Chap>,
    alua: Option<Spanned<String>>,
    stpg: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalGroupSection {
    tag: Spanned<u16>,
    portals: Vec<Spanned<String>>,
    state: Option<Spanned<String>>,
    #[serde(default)]
    preferred: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LunSection {
    id: Spanned<u16>,
    backing: Spanned<String>,
    block_size: Option<Spanned<u32>>,
    serial: Option<Spanned<String>>,
    vendor: Option<Spanned<String>>,
    product: Option<Spanned<String>>,
}

/// Read and validate a TOML configuration file.
pub fn load_file(path: &Path) -> Result<ServerConfig, ConfigError> {
    parse_str(&read_file(path)?, Some(path))
}

/// Parse and validate TOML text (`file` only labels errors).
pub fn parse_str(src: &str, file: Option<&Path>) -> Result<ServerConfig, ConfigError> {
    let ctx = Ctx { file, src };
    let raw: FileConfig = ctx.parse()?;
    let mut cfg = ServerConfig::default();
    if let Some(s) = raw.settings {
        apply_settings(&ctx, s, &mut cfg)?;
    }
    if raw.target.is_empty() {
        return Err(ctx.err(None, "target", "no [[target]] is configured"));
    }
    for (ti, t) in raw.target.into_iter().enumerate() {
        cfg.targets.push(target_from_section(&ctx, ti, t)?);
    }
    validate(&cfg).map_err(|(key, msg)| ctx.err(None, &key, msg))?;
    Ok(cfg)
}

fn apply_settings(
    ctx: &Ctx,
    s: SettingsSection,
    cfg: &mut ServerConfig,
) -> Result<(), ConfigError> {
    cfg.control_socket = s.control_socket;
    if let Some(q) = s.queue_depth {
        if !(1..=4096).contains(q.get_ref()) {
            return Err(ctx.err(Some(q.span()), "settings.queue_depth", "must be 1..=4096"));
        }
        cfg.queue_depth = *q.get_ref();
    }
    if let Some(ms) = s.nop_interval_ms {
        cfg.nop_in_interval = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(ms) = s.nop_timeout_ms {
        cfg.nop_in_timeout = Duration::from_millis(ms.max(1));
    }
    let n = &mut cfg.negotiation;
    let range = |v: &Spanned<u32>, key: &str| -> Result<u32, ConfigError> {
        let x = *v.get_ref();
        if (512..=16_777_215).contains(&x) {
            Ok(x)
        } else {
            Err(ctx.err(
                Some(v.span()),
                key,
                format!("{x} is outside 512..=16777215 (RFC 7143)"),
            ))
        }
    };
    if let Some(v) = &s.max_recv_data_segment_length {
        n.max_recv_data_segment_length = range(v, "settings.max_recv_data_segment_length")?;
    }
    if let Some(v) = &s.max_burst_length {
        n.max_burst_length = range(v, "settings.max_burst_length")?;
    }
    if let Some(v) = &s.first_burst_length {
        n.first_burst_length = range(v, "settings.first_burst_length")?;
    }
    if let Some(v) = s.immediate_data {
        n.immediate_data = v;
    }
    if let Some(v) = s.initial_r2t {
        n.initial_r2t = v;
    }
    if let Some(v) = s.max_outstanding_r2t {
        if *v.get_ref() == 0 {
            return Err(ctx.err(
                Some(v.span()),
                "settings.max_outstanding_r2t",
                "must be at least 1",
            ));
        }
        n.max_outstanding_r2t = *v.get_ref();
    }
    cfg.discovery_chap = s.discovery_chap;
    Ok(())
}

fn target_from_section(ctx: &Ctx, ti: usize, t: TargetSection) -> Result<TargetSpec, ConfigError> {
    let key = |k: &str| format!("target[{ti}].{k}");
    let iqn = t.iqn.get_ref().clone();
    check_name(&iqn).map_err(|m| ctx.err(Some(t.iqn.span()), &key("iqn"), m))?;
    let alua = match &t.alua {
        None => AluaMode::Both,
        Some(a) => AluaMode::parse(a.get_ref()).ok_or_else(|| {
            ctx.err(
                Some(a.span()),
                &key("alua"),
                "expected none, implicit, explicit or both",
            )
        })?,
    };
    let stpg = match &t.stpg {
        None => StpgPolicy::default(),
        Some(a) => StpgPolicy::parse(a.get_ref()).ok_or_else(|| {
            ctx.err(
                Some(a.span()),
                &key("stpg"),
                "expected demote-others or as-requested",
            )
        })?,
    };
    let mut groups = Vec::new();
    for (i, p) in t.portals.iter().enumerate() {
        let addr = parse_portal(p.get_ref())
            .map_err(|m| ctx.err(Some(p.span()), &key(&format!("portals[{i}]")), m))?;
        groups.push(PortalGroupSpec {
            tag: i as u16 + 1,
            portals: vec![addr],
            state: AluaState::ActiveOptimized,
            preferred: false,
        });
    }
    if !t.portals.is_empty() && !t.portal_group.is_empty() {
        return Err(ctx.err(
            Some(t.portals[0].span()),
            &key("portals"),
            "give either portals or [[target.portal_group]], not both",
        ));
    }
    for (gi, g) in t.portal_group.iter().enumerate() {
        let gk = |k: &str| key(&format!("portal_group[{gi}].{k}"));
        if *g.tag.get_ref() == 0 {
            return Err(ctx.err(Some(g.tag.span()), &gk("tag"), "must be 1..=65535"));
        }
        let mut portals = Vec::new();
        for (pi, p) in g.portals.iter().enumerate() {
            portals.push(
                parse_portal(p.get_ref())
                    .map_err(|m| ctx.err(Some(p.span()), &gk(&format!("portals[{pi}]")), m))?,
            );
        }
        if portals.is_empty() {
            return Err(ctx.err(
                Some(g.tag.span()),
                &gk("portals"),
                "a portal group needs a portal",
            ));
        }
        let state = match &g.state {
            None => AluaState::ActiveOptimized,
            Some(s) => AluaState::parse(s.get_ref()).ok_or_else(|| {
                ctx.err(
                    Some(s.span()),
                    &gk("state"),
                    format!("expected one of {}", AluaState::NAMES),
                )
            })?,
        };
        groups.push(PortalGroupSpec {
            tag: *g.tag.get_ref(),
            portals,
            state,
            preferred: g.preferred,
        });
    }
    if groups.is_empty() {
        return Err(ctx.err(
            Some(t.iqn.span()),
            &key("portals"),
            "the target has no portal",
        ));
    }
    let mut luns = Vec::new();
    for (li, l) in t.lun.iter().enumerate() {
        let lk = |k: &str| key(&format!("lun[{li}].{k}"));
        let backing = BackingSpec::parse(l.backing.get_ref())
            .map_err(|m| ctx.err(Some(l.backing.span()), &lk("backing"), m))?;
        let block_size = match &l.block_size {
            None => 512,
            Some(b) if matches!(b.get_ref(), 512 | 4096) => *b.get_ref(),
            Some(b) => {
                return Err(ctx.err(Some(b.span()), &lk("block_size"), "must be 512 or 4096"))
            }
        };
        let text = |v: &Option<Spanned<String>>,
                    k: &str,
                    max: usize|
         -> Result<Option<String>, ConfigError> {
            match v {
                Some(s) if !s.get_ref().is_ascii() || s.get_ref().len() > max => Err(ctx.err(
                    Some(s.span()),
                    &lk(k),
                    format!("must be printable ASCII of at most {max} characters"),
                )),
                Some(s) => Ok(Some(s.get_ref().clone())),
                None => Ok(None),
            }
        };
        luns.push(LunSpec {
            id: *l.id.get_ref(),
            backing,
            block_size,
            serial: text(&l.serial, "serial", 32)?,
            vendor: text(&l.vendor, "vendor", 8)?.unwrap_or_else(|| DEFAULT_VENDOR.into()),
            product: text(&l.product, "product", 16)?.unwrap_or_else(|| DEFAULT_PRODUCT.into()),
        });
        if *l.id.get_ref() >= 16384 {
            return Err(ctx.err(Some(l.id.span()), &lk("id"), "LUN must be below 16384"));
        }
    }
    Ok(TargetSpec {
        iqn,
        alias: t.alias,
        portal_groups: groups,
        luns,
        allowed_initiators: t.allowed_initiators,
        chap: t.chap,
        mutual_chap: t.mutual_chap,
        alua,
        stpg,
    })
}

/// INQUIRY vendor identification (8 bytes).
pub const DEFAULT_VENDOR: &str = "MPATH";
/// INQUIRY product identification (16 bytes).
pub const DEFAULT_PRODUCT: &str = "VIRTUAL-DISK";

/// Cross-checks shared by file and flag configurations: (key, message) on failure.
pub fn validate(cfg: &ServerConfig) -> Result<(), (String, String)> {
    let mut iqns = HashSet::new();
    let mut portal_owner: std::collections::HashMap<SocketAddr, u16> = Default::default();
    for (ti, t) in cfg.targets.iter().enumerate() {
        let key = |k: &str| format!("target[{ti}].{k}");
        if !iqns.insert(t.iqn.to_ascii_lowercase()) {
            return Err((key("iqn"), format!("{} is configured twice", t.iqn)));
        }
        let mut tags = HashSet::new();
        for g in &t.portal_groups {
            if !tags.insert(g.tag) {
                return Err((key("portal_group"), format!("tag {} is used twice", g.tag)));
            }
            for p in &g.portals {
                // A portal belongs to one portal group, whichever target it serves: the TPGT
                // a portal reports must not depend on the target asked for.
                if let Some(other) = portal_owner.insert(*p, g.tag) {
                    if other != g.tag {
                        return Err((
                            key("portal_group"),
                            format!("portal {p} is in portal groups {other} and {}", g.tag),
                        ));
                    }
                }
            }
        }
        let mut ids = HashSet::new();
        for l in &t.luns {
            if !ids.insert(l.id) {
                return Err((key("lun"), format!("LUN {} is configured twice", l.id)));
            }
        }
        if t.mutual_chap.is_some() && t.chap.is_none() {
            return Err((key("mutual_chap"), "mutual CHAP needs chap as well".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[settings]
queue_depth = 64

[[target]]
iqn = "iqn.2026-01.io.mpath:demo"
chap = { user = "alice", secret = "a-12-byte-secret" }

[[target.portal_group]]
tag = 1
portals = ["127.0.0.2:3260"]

[[target.portal_group]]
tag = 2
portals = ["127.0.0.3:3260"]
state = "standby"

[[target.lun]]
id = 1
backing = "mem:64M"
"#;

    #[test]
    fn parses_a_full_file() {
        let c = parse_str(GOOD, None).unwrap();
        assert_eq!(c.queue_depth, 64);
        let t = &c.targets[0];
        assert_eq!(t.portal_groups.len(), 2);
        assert_eq!(t.portal_groups[1].state, AluaState::Standby);
        assert_eq!(t.luns[0].backing, BackingSpec::Memory { size: 64 << 20 });
        assert_eq!(t.alua, AluaMode::Both);
        assert_eq!(t.stpg, StpgPolicy::DemoteOthers);
        assert_eq!(c.portals().len(), 2);
    }

    #[test]
    fn errors_name_key_and_line() {
        let bad = GOOD.replace("state = \"standby\"", "state = \"sleepy\"");
        let e = parse_str(&bad, Some(Path::new("t.toml"))).unwrap_err();
        assert_eq!(e.line, Some(16));
        assert_eq!(e.key, "target[0].portal_group[1].state");
        assert!(
            e.to_string()
                .starts_with("t.toml:16: target[0].portal_group[1].state"),
            "{e}"
        );

        let bad = GOOD.replace("queue_depth = 64", "queue_depht = 64");
        let e = parse_str(&bad, None).unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.to_string().contains("queue_depht"), "{e}");

        let bad = GOOD.replace("backing = \"mem:64M\"", "backing = \"tape:1\"");
        let e = parse_str(&bad, None).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(20), "target[0].lun[0].backing")
        );

        let bad = GOOD.replace("127.0.0.3:3260", "127.0.0.3:99999");
        let e = parse_str(&bad, None).unwrap_err();
        assert_eq!(e.key, "target[0].portal_group[1].portals[0]");
    }

    #[test]
    fn stpg_policy_is_read_and_checked() {
        let chap = "chap = { user = \"alice\", secret = \"a-12-byte-secret\" }";
        let keep = GOOD.replace(chap, &format!("{chap}\nstpg = \"as-requested\""));
        assert_eq!(
            parse_str(&keep, None).unwrap().targets[0].stpg,
            StpgPolicy::AsRequested
        );
        let bad = GOOD.replace(chap, &format!("{chap}\nstpg = \"demote\""));
        let e = parse_str(&bad, Some(Path::new("t.toml"))).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(8), "target[0].stpg"));
        assert!(e.message.contains("demote-others or as-requested"), "{e}");
    }

    #[test]
    fn duplicate_luns_and_portals_are_refused() {
        let dup = format!("{GOOD}\n[[target.lun]]\nid = 1\nbacking = \"mem:1M\"\n");
        assert!(parse_str(&dup, None).unwrap_err().message.contains("twice"));
        let shared = GOOD.replace("127.0.0.3:3260", "127.0.0.2:3260");
        assert!(parse_str(&shared, None)
            .unwrap_err()
            .message
            .contains("portal groups"));
    }

    #[test]
    fn names_and_portals() {
        assert!(check_name("iqn.2026-01.io.mpath:x").is_ok());
        assert!(check_name("demo").is_err());
        assert_eq!(parse_portal("127.0.0.2").unwrap().port(), 3260);
        assert_eq!(parse_portal("[::1]:3261").unwrap().port(), 3261);
        assert!(parse_portal("host:1").is_err());
    }
}
