//! multipath-tools' `multipath.conf`, read and translated into mpath's TOML.
//!
//! `mpath config import` prints the translation; `mpath daemon -c /etc/multipath.conf`
//! (and `reconfigure`) reads the same translation directly. Every setting is either
//! carried over or named in a comment of the output (and in [`Imported::notes`]) with
//! why not; a keyword multipath-tools does not know either is an error naming its line,
//! with the nearest keyword it resembles (a typo there is silently ignored by multipathd).
//!
//! The syntax: `section {` … `}`, `keyword value` per line, values optionally in double
//! quotes (`""` inside quotes is a quote), comments from `#` or `!`. Sections:
//! `defaults`, `blacklist`, `blacklist_exceptions`, `devices { device { … } }`,
//! `overrides`, `multipaths { multipath { … } }`. Files in `config_dir` (default
//! `/etc/multipath/conf.d`, `*.conf` in name order) are read after the main file, as
//! multipathd reads them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{fmt_duration, ConfigError};

/// A translated file: the TOML, and what was not carried over.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    /// One line per setting not carried over: `FILE:LINE: keyword value: why`.
    pub notes: Vec<String>,
    /// The files read, the main one first.
    pub files: Vec<PathBuf>,
}

/// multipath-tools' default `config_dir`.
pub const DEFAULT_CONF_DIR: &str = "/etc/multipath/conf.d";

/// multipath-tools' `polling_interval` default, which its `no_path_retry` counts in.
const MPT_POLLING_INTERVAL: Duration = Duration::from_secs(5);

/// Whether `text` is a multipath.conf (a section in braces first) rather than TOML.
pub fn looks_like(text: &str) -> bool {
    let mut toks = match tokenize(text, Path::new("")) {
        Ok(t) => t.into_iter(),
        Err(_) => return false,
    };
    matches!(
        (toks.next(), toks.next()),
        (
            Some(Tok {
                kind: Kind::Word(_),
                ..
            }),
            Some(Tok {
                kind: Kind::Open,
                ..
            })
        )
    )
}

/// Read `file` (and the `*.conf` files of `conf_dir`, else of the file's `config_dir`,
/// else of [`DEFAULT_CONF_DIR`]; a missing directory is fine) and translate it.
pub fn import(file: &Path, conf_dir: Option<&Path>) -> Result<Imported, ConfigError> {
    let text = confkit::read_file(file)?;
    import_text(&text, file, conf_dir)
}

/// [`import`] of text already read from `file`.
pub fn import_text(
    text: &str,
    file: &Path,
    conf_dir: Option<&Path>,
) -> Result<Imported, ConfigError> {
    let mut nodes = parse(text, file)?;
    let mut files = vec![file.to_path_buf()];
    let dir = match conf_dir {
        Some(d) => Some(d.to_path_buf()),
        None => config_dir_of(&nodes).or_else(|| Some(PathBuf::from(DEFAULT_CONF_DIR))),
    };
    if let Some(dir) = dir {
        let mut extra: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(ConfigError {
                    file: Some(dir.clone()),
                    line: None,
                    key: "config_dir".into(),
                    message: format!("cannot read: {e}"),
                })
            }
        };
        extra.sort();
        for f in extra {
            let t = confkit::read_file(&f)?;
            nodes.extend(parse(&t, &f)?);
            files.push(f);
        }
    }
    let mut t = Translator::default();
    t.translate(&nodes)?;
    Ok(t.finish(&files))
}

fn config_dir_of(nodes: &[Node]) -> Option<PathBuf> {
    nodes
        .iter()
        .filter_map(|n| match n {
            Node::Section { name, body, .. } if name == "defaults" => Some(body),
            _ => None,
        })
        .flatten()
        .find_map(|n| match n {
            Node::Key { key, value, .. } if key == "config_dir" => Some(PathBuf::from(value)),
            _ => None,
        })
}

// ---- syntax ----------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Kind {
    Word(String),
    Open,
    Close,
}

#[derive(Debug)]
struct Tok {
    kind: Kind,
    line: usize,
}

/// Where a setting was written.
#[derive(Clone, Debug)]
struct At {
    file: PathBuf,
    line: usize,
}

impl At {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: Some(self.file.clone()),
            line: Some(self.line),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug)]
enum Node {
    Key {
        key: String,
        value: String,
        at: At,
    },
    Section {
        name: String,
        body: Vec<Node>,
        at: At,
    },
}

fn tokenize(text: &str, file: &Path) -> Result<Vec<Tok>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let mut chars = line.char_indices().peekable();
        while let Some(&(_, c)) = chars.peek() {
            match c {
                c if c.is_whitespace() => {
                    chars.next();
                }
                '#' | '!' => break,
                '{' => {
                    chars.next();
                    out.push(Tok {
                        kind: Kind::Open,
                        line: line_no,
                    });
                }
                '}' => {
                    chars.next();
                    out.push(Tok {
                        kind: Kind::Close,
                        line: line_no,
                    });
                }
                '"' => {
                    chars.next();
                    let mut s = String::new();
                    let mut closed = false;
                    while let Some((_, c)) = chars.next() {
                        if c == '"' {
                            if chars.peek().is_some_and(|&(_, n)| n == '"') {
                                chars.next();
                                s.push('"');
                                continue;
                            }
                            closed = true;
                            break;
                        }
                        s.push(c);
                    }
                    if !closed {
                        return Err(At {
                            file: file.to_path_buf(),
                            line: line_no,
                        }
                        .err("", "a quoted value does not end on its line"));
                    }
                    out.push(Tok {
                        kind: Kind::Word(s),
                        line: line_no,
                    });
                }
                _ => {
                    let mut s = String::new();
                    while let Some(&(_, c)) = chars.peek() {
                        if c.is_whitespace() || "{}\"#!".contains(c) {
                            break;
                        }
                        s.push(c);
                        chars.next();
                    }
                    out.push(Tok {
                        kind: Kind::Word(s),
                        line: line_no,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn parse(text: &str, file: &Path) -> Result<Vec<Node>, ConfigError> {
    let toks = tokenize(text, file)?;
    let at = |line| At {
        file: file.to_path_buf(),
        line,
    };
    let mut i = 0;
    // A stack of open sections: (name, where, body so far).
    let mut stack: Vec<(String, At, Vec<Node>)> = Vec::new();
    let mut top = Vec::new();
    while i < toks.len() {
        let t = &toks[i];
        match &t.kind {
            Kind::Close => {
                let Some((name, a, body)) = stack.pop() else {
                    return Err(at(t.line).err("", "'}' closes no section"));
                };
                let node = Node::Section { name, body, at: a };
                match stack.last_mut() {
                    Some(p) => p.2.push(node),
                    None => top.push(node),
                }
                i += 1;
            }
            Kind::Open => return Err(at(t.line).err("", "'{' without a section name before it")),
            Kind::Word(w) => {
                if toks.get(i + 1).is_some_and(|n| n.kind == Kind::Open) {
                    stack.push((w.clone(), at(t.line), Vec::new()));
                    i += 2;
                    continue;
                }
                if stack.is_empty() {
                    return Err(at(t.line).err(
                        w,
                        format!("{w:?} outside any section (expected a section such as defaults {{ … }})"),
                    ));
                }
                // The value: the rest of the line's words.
                let mut j = i + 1;
                let mut parts = Vec::new();
                while let Some(Tok {
                    kind: Kind::Word(v),
                    line,
                }) = toks.get(j)
                {
                    if *line != t.line {
                        break;
                    }
                    parts.push(v.clone());
                    j += 1;
                }
                let node = Node::Key {
                    key: w.clone(),
                    value: parts.join(" "),
                    at: at(t.line),
                };
                if let Some(p) = stack.last_mut() {
                    p.2.push(node);
                }
                i = j;
            }
        }
    }
    if let Some((name, a, _)) = stack.pop() {
        return Err(a.err(&name, format!("section {name} is not closed with '}}'")));
    }
    Ok(top)
}

// ---- translation -----------------------------------------------------------------------

/// Keywords mpath carries over (in the scopes multipath-tools allows them).
const CARRIED: &[&str] = &[
    "path_selector",
    "path_grouping_policy",
    "failback",
    "no_path_retry",
    "features",
    "prio",
    "path_checker",
    "checker",
    "rr_min_io",
    "rr_min_io_rq",
    "polling_interval",
    "max_polling_interval",
    "user_friendly_names",
    "bindings_file",
    "config_dir",
    "vendor",
    "product",
    "wwid",
    "alias",
    "protocol",
];

/// Keywords multipath-tools knows that mpath does not carry over, with why.
const NOT_CARRIED: &[(&[&str], &str)] = &[
    (
        &["dev_loss_tmo", "fast_io_fail_tmo", "eh_deadline", "max_retries"],
        "a kernel SCSI transport timer; mpath detects a dead path itself (defaults stall_silence, keepalive_interval, keepalive_timeout: docs/daemon.md)",
    ),
    (
        &["checker_timeout"],
        "checker commands end with the session's command_timeout and its stall detection",
    ),
    (
        &["uid_attribute", "uid_attrs", "getuid_callout"],
        "mpath reads the WWID from the LU's VPD page 0x83 itself (no udev)",
    ),
    (
        &["find_multipaths", "find_multipaths_timeout", "wwids_file", "ignore_new_boot_devs"],
        "mpath makes a map of every LU it logs in to that the blacklist does not exclude",
    ),
    (
        &[
            "san_path_err_threshold",
            "san_path_err_forget_rate",
            "san_path_err_recovery_time",
            "marginal_path_err_sample_time",
            "marginal_path_err_rate_threshold",
            "marginal_path_err_recheck_gap_time",
            "marginal_path_double_failed_time",
            "marginal_pathgroups",
            "delay_watch_checks",
            "delay_wait_checks",
        ],
        "mpath's flap damping does this job (defaults flap_damping, marginal_failures, marginal_window, marginal_hold)",
    ),
    (
        &["reservation_key", "prkeys_file", "all_tg_pt"],
        "persistent reservations are not managed by the daemon yet",
    ),
    (
        &["hardware_handler", "retain_attached_hw_handler", "detect_prio", "detect_checker", "detect_pgpolicy", "detect_pgpolicy_use_tpg"],
        "no kernel device handler: mpath asks every LU for ALUA itself (prioritizer alua) and uses it when the LU reports it",
    ),
    (
        &["prio_args"],
        "multipath-tools' prioritizer arguments (hbtl, devname, exclusive_pref_bit …) have no mpath equivalent; mpath's weightedpath weighs portals: see prio_args in docs/daemon.md",
    ),
    (
        &["alias_prefix"],
        "mpath's user-friendly names are mpatha, mpathb …",
    ),
    (
        &["rr_weight"],
        "every path of a group is weighted alike",
    ),
    (
        &["queue_without_daemon", "flush_on_last_del", "deferred_remove", "skip_kpartx", "partition_delimiter", "max_sectors_kb", "reassign_maps", "multipath_dir", "mode", "uid", "gid", "auto_resize", "reload_readwrite"],
        "device-mapper and kernel device settings: mpath's data path is its own (exports, docs/exports.md)",
    ),
    (
        &["verbosity", "log_checker_err", "max_fds", "uxsock_timeout", "retrigger_tries", "retrigger_delay", "missing_uev_wait_timeout", "disable_changed_wwids", "recheck_wwid", "remove_retries", "ghost_delay", "enable_foreign", "force_sync", "strict_timing", "allow_usb_devices", "pg_timeout", "hwtable_regex_match", "user_friendly_names_prefix"],
        "multipathd housekeeping with no counterpart in mpath",
    ),
    (
        &["revision", "product_blacklist", "vpd_vendor"],
        "device entries match vendor and product only",
    ),
    (
        &["devnode", "property"],
        "mpath's paths are its own iSCSI sessions: no kernel device names or udev properties to match (use wwid, device or protocol)",
    ),
];

fn not_carried(key: &str) -> Option<&'static str> {
    NOT_CARRIED
        .iter()
        .find(|(keys, _)| keys.contains(&key))
        .map(|(_, why)| *why)
}

fn known_keys() -> impl Iterator<Item = &'static str> {
    CARRIED
        .iter()
        .copied()
        .chain(NOT_CARRIED.iter().flat_map(|(k, _)| k.iter().copied()))
}

fn unknown_key(at: &At, key: &str) -> ConfigError {
    let hint = match confkit::closest(key, known_keys()) {
        Some(s) => format!("; did you mean {s}?"),
        None => String::new(),
    };
    at.err(key, format!("unknown keyword {key:?}{hint}"))
}

/// One TOML table being written: its lines, comments included; a key set again (a later
/// line, a conf.d file) replaces the earlier value, as in multipathd.
#[derive(Default)]
struct Table {
    lines: Vec<(Option<String>, String)>,
}

impl Table {
    fn set(&mut self, key: &str, value: String, from: &At, src: &str) {
        let line = format!("{key} = {value}  # {src} ({from})");
        if let Some(l) = self
            .lines
            .iter_mut()
            .find(|(k, _)| k.as_deref() == Some(key))
        {
            *l = (None, format!("# replaced by {src} ({from}): {}", l.1));
        }
        self.lines.push((Some(key.to_string()), line));
    }
    fn note(&mut self, text: String) {
        self.lines.push((None, format!("# {text}")));
    }
    fn has(&self, key: &str) -> bool {
        self.lines.iter().any(|(k, _)| k.as_deref() == Some(key))
    }
    fn text(&self) -> impl Iterator<Item = &String> {
        self.lines.iter().map(|(_, l)| l)
    }
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[derive(Default)]
struct Translator {
    defaults: Table,
    devices: Vec<Table>,
    overrides: Option<Table>,
    multipaths: Vec<Table>,
    blacklist: [BlacklistOut; 2],
    notes: Vec<String>,
    /// multipath-tools' polling interval (its `no_path_retry` counts these).
    polling: Option<Duration>,
    /// A section seen that is not carried over.
    other: Table,
}

#[derive(Default)]
struct BlacklistOut {
    wwid: Vec<String>,
    device: Vec<String>,
    protocol: Vec<String>,
    comments: Vec<String>,
}

impl Translator {
    fn note(&mut self, table: Option<&mut Table>, at: &At, what: &str, why: &str) {
        let text = format!("not carried over: {what} ({at}): {why}");
        self.notes.push(text.clone());
        match table {
            Some(t) => t.note(text),
            None => self.other.note(text),
        }
    }

    fn translate(&mut self, nodes: &[Node]) -> Result<(), ConfigError> {
        // polling_interval first: no_path_retry anywhere counts it.
        for n in nodes {
            if let Node::Section { name, body, .. } = n {
                if name == "defaults" {
                    for k in body {
                        if let Node::Key { key, value, at } = k {
                            if key == "polling_interval" {
                                self.polling = Some(Duration::from_secs(seconds(value, at, key)?));
                            }
                        }
                    }
                }
            }
        }
        for n in nodes {
            match n {
                Node::Key { key, at, .. } => return Err(unknown_key(at, key)),
                Node::Section { name, body, at } => match name.as_str() {
                    "defaults" => {
                        let mut t = std::mem::take(&mut self.defaults);
                        self.settings(&mut t, body, Scope::Defaults)?;
                        self.defaults = t;
                    }
                    "overrides" => {
                        let mut t = self.overrides.take().unwrap_or_default();
                        self.settings(&mut t, body, Scope::Overrides)?;
                        self.overrides = Some(t);
                    }
                    "devices" => {
                        let mut t = self.entries(body, "devices", "device", Scope::Device)?;
                        self.devices.append(&mut t);
                    }
                    "multipaths" => {
                        let mut t =
                            self.entries(body, "multipaths", "multipath", Scope::Multipath)?;
                        self.multipaths.append(&mut t);
                    }
                    "blacklist" => self.blacklist(0, body)?,
                    "blacklist_exceptions" => self.blacklist(1, body)?,
                    other => {
                        let hint = match confkit::closest(
                            other,
                            [
                                "defaults",
                                "blacklist",
                                "blacklist_exceptions",
                                "devices",
                                "overrides",
                                "multipaths",
                            ],
                        ) {
                            Some(s) => format!("; did you mean {s}?"),
                            None => String::new(),
                        };
                        return Err(at.err(other, format!("unknown section {other:?}{hint}")));
                    }
                },
            }
        }
        Ok(())
    }

    /// The `child { … }` entries of a `section { … }` (`devices`/`device`,
    /// `multipaths`/`multipath`), one table each.
    fn entries(
        &mut self,
        body: &[Node],
        section: &str,
        child: &str,
        scope: Scope,
    ) -> Result<Vec<Table>, ConfigError> {
        let mut out = Vec::new();
        for n in body {
            match n {
                Node::Section { name, body, at } if name == child => {
                    // An empty entry names nothing to match (a non-empty one without its
                    // key is refused at its first line, by `settings`).
                    let needs = match scope {
                        Scope::Device => Some(("vendor", "a device entry needs a vendor")),
                        Scope::Multipath => Some(("wwid", "a multipath entry needs a wwid")),
                        _ => None,
                    };
                    if let (true, Some((key, why))) = (body.is_empty(), needs) {
                        return Err(at.err(key, why));
                    }
                    let mut t = Table::default();
                    self.settings(&mut t, body, scope)?;
                    out.push(t);
                }
                Node::Section { name, at, .. } | Node::Key { key: name, at, .. } => {
                    return Err(at.err(
                        name,
                        format!("{section} holds {child} {{ … }} sections only"),
                    ))
                }
            }
        }
        Ok(out)
    }

    fn blacklist(&mut self, which: usize, body: &[Node]) -> Result<(), ConfigError> {
        let section = ["blacklist", "blacklist_exceptions"][which];
        for n in body {
            match n {
                Node::Key { key, value, at } => {
                    let check = |v: &str| {
                        crate::config::Pattern::new(v)
                            .map(|_| ())
                            .map_err(|m| at.err(key, m))
                    };
                    match key.as_str() {
                        "wwid" => {
                            check(value)?;
                            self.blacklist[which]
                                .wwid
                                .push(format!("{},  # {key} {value} ({at})", q(value)));
                        }
                        "protocol" => {
                            check(value)?;
                            self.blacklist[which]
                                .protocol
                                .push(format!("{},  # {key} {value} ({at})", q(value)));
                        }
                        k if not_carried(k).is_some() => {
                            let text = format!(
                                "not carried over: {section} {key} {value:?} ({at}): {}",
                                not_carried(k).unwrap_or_default()
                            );
                            self.notes.push(text.clone());
                            self.blacklist[which].comments.push(text);
                        }
                        _ => return Err(unknown_key(at, key)),
                    }
                }
                Node::Section { name, body, at } if name == "device" => {
                    let mut parts = Vec::new();
                    let mut origins = Vec::new();
                    for k in body {
                        match k {
                            Node::Key { key, value, at } if key == "vendor" || key == "product" => {
                                crate::config::Pattern::new(value).map_err(|m| at.err(key, m))?;
                                parts.push(format!("{key} = {}", q(value)));
                                origins.push(format!("{key} {value} ({at})"));
                            }
                            Node::Key { key, value, at } if not_carried(key).is_some() => {
                                let text = format!(
                                    "not carried over: {section} device {key} {value:?} ({at}): {}",
                                    not_carried(key).unwrap_or_default()
                                );
                                self.notes.push(text.clone());
                                self.blacklist[which].comments.push(text);
                            }
                            Node::Key { key, at, .. } | Node::Section { name: key, at, .. } => {
                                return Err(unknown_key(at, key))
                            }
                        }
                    }
                    if parts.is_empty() {
                        return Err(at.err("device", "a device entry needs a vendor or a product"));
                    }
                    self.blacklist[which].device.push(format!(
                        "{{ {} }},  # device {{ {} }}",
                        parts.join(", "),
                        origins.join(", ")
                    ));
                }
                Node::Section { name, at, .. } => {
                    return Err(at.err(
                        name,
                        format!("{section} holds keywords and device {{ … }} sections only"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn settings(&mut self, t: &mut Table, body: &[Node], scope: Scope) -> Result<(), ConfigError> {
        let get = |k: &str| {
            body.iter().rev().find_map(|n| match n {
                Node::Key { key, value, at } if key == k => Some((value.as_str(), at)),
                _ => None,
            })
        };
        for n in body {
            let (key, value, at) = match n {
                Node::Key { key, value, at } => (key.as_str(), value.as_str(), at),
                Node::Section { name, body, .. }
                    if scope == Scope::Overrides && name == "protocol" =>
                {
                    for k in body {
                        if let Node::Key { key, value, at } = k {
                            self.note(Some(t), at, &format!("overrides protocol {{ {key} {value} }}"), "per-protocol overrides: every mpath path is scsi:iscsi, so write them in overrides itself");
                        }
                    }
                    continue;
                }
                Node::Section { name, at, .. } => {
                    return Err(at.err(name, format!("unexpected section {name} here")))
                }
            };
            let src = format!("{key} {value}");
            match key {
                "path_selector" => {
                    let name = value.split_whitespace().next().unwrap_or("");
                    match name {
                        "round-robin" | "queue-length" | "service-time" | "historical-service-time" => {
                            t.set("selector", q(name), at, &src);
                            if name == "round-robin" {
                                if let Some((v, at)) = get("rr_min_io_rq").or_else(|| get("rr_min_io")) {
                                    let n: u32 = v.trim().parse().map_err(|_| at.err("rr_min_io", format!("{v:?} is not a number")))?;
                                    t.set("rr_min_io", n.max(1).to_string(), at, &format!("rr_min_io {v}"));
                                }
                            }
                        }
                        _ => return Err(at.err(key, format!("unknown path selector {value:?} (round-robin 0, queue-length 0, service-time 0, historical-service-time)"))),
                    }
                }
                "rr_min_io" | "rr_min_io_rq" => {
                    let sel = get("path_selector").map(|(v, _)| v.starts_with("round-robin"));
                    if sel == Some(true) && key == "rr_min_io" && get("rr_min_io_rq").is_some() {
                        self.note(Some(t), at, &src, "rr_min_io_rq of the same section is the one request-based multipath uses, and is carried over");
                    } else if sel != Some(true) {
                        self.note(Some(t), at, &src, "used only with path_selector \"round-robin 0\" in the same section");
                    }
                }
                "path_grouping_policy" => match value {
                    "failover" | "multibus" | "group_by_prio" | "group_by_serial" | "group_by_node_name" | "group_by_tpg" => {
                        t.set("grouping", q(value), at, &src)
                    }
                    _ => return Err(at.err(key, format!("unknown path_grouping_policy {value:?}"))),
                },
                "failback" => match value {
                    "immediate" | "manual" | "followover" => t.set("failback", q(value), at, &src),
                    v => {
                        let n = seconds(v, at, key)?;
                        t.set("failback", n.to_string(), at, &src);
                    }
                },
                "no_path_retry" => {
                    let out = match value {
                        "fail" | "queue" => q(value),
                        v => {
                            let n = seconds(v, at, key)?;
                            if n == 0 {
                                q("fail")
                            } else {
                                let poll = self.polling.unwrap_or(MPT_POLLING_INTERVAL);
                                let total = u32::try_from(n)
                                    .ok()
                                    .and_then(|n| poll.checked_mul(n))
                                    .ok_or_else(|| at.err(key, format!("{n} × polling_interval is too long")))?;
                                q(&fmt_duration(total))
                            }
                        }
                    };
                    let src = if value.parse::<u64>().is_ok_and(|n| n > 0) {
                        format!(
                            "{src} × polling_interval {}",
                            fmt_duration(self.polling.unwrap_or(MPT_POLLING_INTERVAL))
                        )
                    } else {
                        src
                    };
                    t.set("no_path_retry", out, at, &src);
                }
                "features" => {
                    let words: Vec<&str> = value.split_whitespace().collect();
                    let queue = words.contains(&"queue_if_no_path");
                    let rest: Vec<&str> = words
                        .iter()
                        .skip(1)
                        .filter(|w| **w != "queue_if_no_path")
                        .copied()
                        .collect();
                    if queue {
                        if get("no_path_retry").is_none() {
                            t.set("no_path_retry", q("queue"), at, &src);
                        } else {
                            self.note(Some(t), at, "features queue_if_no_path", "no_path_retry of the same section decides");
                        }
                    }
                    if !queue && rest.is_empty() {
                        t.note(format!("{src} ({at}): no features, nothing to carry over"));
                    }
                    if !rest.is_empty() {
                        self.note(Some(t), at, &format!("features {}", rest.join(" ")), "dm-multipath table features (pg_init_retries, queue_mode …) do not apply to mpath's engine");
                    }
                }
                "prio" => match value {
                    "alua" | "const" | "path_latency" => t.set("prioritizer", q(value), at, &src),
                    "sysfs" => t.set("prioritizer", q("alua"), at, &format!("{src}: the kernel's ALUA state; mpath asks the LU itself")),
                    "weightedpath" => self.note(Some(t), at, &src, "multipath-tools weighs kernel device names and HBTL; mpath's weightedpath weighs portals (prio_args [[\"PORTAL\", N]]): write them by hand"),
                    _ => self.note(Some(t), at, &src, "a vendor-specific prioritizer: mpath uses ALUA (prioritizer alua) when the LU reports it, else equal priorities"),
                },
                "path_checker" | "checker" => match value {
                    "tur" | "readsector0" | "directio" => t.set("checker", q(value), at, &src),
                    _ => self.note(Some(t), at, &src, "a vendor-specific checker: mpath checks with TEST UNIT READY (tur)"),
                },
                "polling_interval" if scope == Scope::Defaults => {
                    let n = seconds(value, at, key)?;
                    t.set("checker_interval", q(&format!("{n}s")), at, &src);
                }
                "max_polling_interval" if scope == Scope::Defaults => {
                    let n = seconds(value, at, key)?;
                    t.set("checker_interval_ok", q(&format!("{n}s")), at, &src);
                }
                "user_friendly_names" if scope != Scope::Multipath => {
                    let on = yes_no(value, at, key)?;
                    if scope == Scope::Defaults {
                        t.set("user_friendly_names", on.to_string(), at, &src);
                    } else {
                        self.note(Some(t), at, &src, "user_friendly_names applies to every map in mpath: set it in defaults");
                    }
                }
                "bindings_file" if scope == Scope::Defaults => {
                    t.set("bindings_file", q(value), at, &src);
                }
                "config_dir" if scope == Scope::Defaults => {
                    self.note(Some(t), at, &src, "its *.conf files are read with this file (and translated here)");
                }
                "vendor" | "product" if scope == Scope::Device => {
                    crate::config::Pattern::new(value).map_err(|m| at.err(key, m))?;
                    t.set(key, q(value), at, &src);
                }
                "wwid" if scope == Scope::Multipath => t.set("wwid", q(value), at, &src),
                "alias" if scope == Scope::Multipath => {
                    if !crate::config::valid_name(value) {
                        return Err(at.err(key, "an alias is 1-64 characters of letters, digits, '-', '_' and '.' (it names the map's exports)"));
                    }
                    t.set("alias", q(value), at, &src);
                }
                k if not_carried(k).is_some() => {
                    self.note(Some(t), at, &src, not_carried(k).unwrap_or_default())
                }
                k if known_keys().any(|x| x == k) => {
                    self.note(Some(t), at, &src, &format!("not a {} setting", scope.name()))
                }
                k => return Err(unknown_key(at, k)),
            }
        }
        if scope == Scope::Defaults
            && get("user_friendly_names").is_some_and(|(v, _)| v == "yes")
            && get("bindings_file").is_none()
            && !t.has("bindings_file")
        {
            t.lines.push((
                Some("bindings_file".into()),
                format!(
                    "bindings_file = {}  # multipath-tools' default: maps keep the names multipathd gave them",
                    q("/etc/multipath/bindings")
                ),
            ));
        }
        if scope == Scope::Device && get("vendor").is_none() {
            let line = body.first().map(|n| match n {
                Node::Key { at, .. } | Node::Section { at, .. } => at.clone(),
            });
            if let Some(at) = line {
                return Err(at.err("vendor", "a device entry needs a vendor"));
            }
        }
        if scope == Scope::Multipath && get("wwid").is_none() {
            if let Some(Node::Key { at, .. } | Node::Section { at, .. }) = body.first() {
                return Err(at.err("wwid", "a multipath entry needs a wwid"));
            }
        }
        Ok(())
    }

    fn finish(self, files: &[PathBuf]) -> Imported {
        let mut s = String::new();
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let _ = writeln!(
            s,
            "# mpath configuration translated from {}",
            names.join(", ")
        );
        let _ = writeln!(
            s,
            "# by `mpath config import`. Settings not carried over are listed where they were."
        );
        let _ = writeln!(
            s,
            "# multipath.conf names no iSCSI portals (open-iscsi keeps them): add a [[portal]]"
        );
        let _ = writeln!(s, "# per portal, or start the daemon with --portal ADDR.");
        for line in self.other.text() {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(s, "\n[defaults]");
        for l in self.defaults.text() {
            let _ = writeln!(s, "{l}");
        }
        for d in &self.devices {
            let _ = writeln!(s, "\n[[device]]");
            for l in d.text() {
                let _ = writeln!(s, "{l}");
            }
        }
        if let Some(o) = &self.overrides {
            let _ = writeln!(s, "\n[overrides]");
            for l in o.text() {
                let _ = writeln!(s, "{l}");
            }
        }
        for m in &self.multipaths {
            let _ = writeln!(s, "\n[[multipath]]");
            for l in m.text() {
                let _ = writeln!(s, "{l}");
            }
        }
        for (i, b) in self.blacklist.iter().enumerate() {
            if b.wwid.is_empty()
                && b.device.is_empty()
                && b.protocol.is_empty()
                && b.comments.is_empty()
            {
                continue;
            }
            let _ = writeln!(s, "\n[{}]", ["blacklist", "blacklist_exceptions"][i]);
            for c in &b.comments {
                let _ = writeln!(s, "# {c}");
            }
            for (key, items) in [
                ("wwid", &b.wwid),
                ("device", &b.device),
                ("protocol", &b.protocol),
            ] {
                if items.is_empty() {
                    continue;
                }
                let _ = writeln!(s, "{key} = [");
                for i in items {
                    let _ = writeln!(s, "    {i}");
                }
                let _ = writeln!(s, "]");
            }
        }
        Imported {
            toml: s,
            notes: self.notes,
            files: files.to_vec(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Defaults,
    Device,
    Overrides,
    Multipath,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Defaults => "defaults",
            Scope::Device => "device",
            Scope::Overrides => "overrides",
            Scope::Multipath => "multipath",
        }
    }
}

fn seconds(v: &str, at: &At, key: &str) -> Result<u64, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| at.err(key, format!("{v:?} is not a whole number")))
}

fn yes_no(v: &str, at: &At, key: &str) -> Result<bool, ConfigError> {
    match v {
        "yes" | "1" | "on" | "true" => Ok(true),
        "no" | "0" | "off" | "false" => Ok(false),
        _ => Err(at.err(key, format!("{v:?}: expected yes or no"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An empty `device { }` or `multipath { }` entry is refused at its line (it once
    /// became a TOML entry without the key every entry needs).
    #[test]
    fn empty_entries_are_refused_at_their_line() {
        for (text, key) in [
            ("devices {\n device {\n}\n}\n", "vendor"),
            ("multipaths {\n multipath {\n}\n}\n", "wwid"),
        ] {
            let dir = std::env::temp_dir().join("mpath-mpconf-prop-none");
            let e = import_text(text, Path::new("m.conf"), Some(&dir))
                .err()
                .unwrap_or_else(|| panic!("{text:?} taken"))
                .to_string();
            assert!(e.contains(":2") && e.contains(key), "{text:?}: {e}");
        }
    }

    /// Pieces of multipath.conf text, glued at random: braces anywhere, keywords in any
    /// section, values of every shape (huge numbers, regexes, quotes left open).
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("defaults {\n".to_string()),
            Just("devices {\n device {\n".to_string()),
            Just("multipaths {\n multipath {\n".to_string()),
            Just("blacklist {\n".to_string()),
            Just("blacklist_exceptions {\n".to_string()),
            Just("overrides {\n".to_string()),
            Just("}\n".to_string()),
            Just("{".to_string()),
            prop::sample::select(vec![
                "path_selector",
                "path_grouping_policy",
                "failback",
                "no_path_retry",
                "features",
                "prio",
                "path_checker",
                "rr_min_io",
                "rr_min_io_rq",
                "polling_interval",
                "max_polling_interval",
                "user_friendly_names",
                "bindings_file",
                "vendor",
                "product",
                "wwid",
                "alias",
                "protocol",
                "devnode",
                "dev_loss_tmo",
                "prio_args",
                "bogus_key",
            ])
            .prop_flat_map(|k| {
                prop::sample::select(vec![
                    "\"round-robin 0\"",
                    "service-time",
                    "multibus",
                    "immediate",
                    "12",
                    "0",
                    "18446744073709551615",
                    "queue",
                    "fail",
                    "\"1 queue_if_no_path\"",
                    "alua",
                    "tur",
                    "yes",
                    "no",
                    "\".*\"",
                    "\"(x\"",
                    "\"unclosed",
                    "db",
                    "a/b",
                    "\"\"",
                    "-3",
                ])
                .prop_map(move |v| format!("  {k} {v}\n"))
            }),
            "[ -~]{0,12}\n",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Any text: an error naming a line, or a translation that reads back.
        #[test]
        fn any_text_translates_or_is_refused_and_what_translates_reads_back(
            pieces in prop::collection::vec(piece(), 0..24)
        ) {
            let text: String = pieces.concat();
            let dir = std::env::temp_dir().join("mpath-mpconf-prop-none");
            match import_text(&text, Path::new("p.conf"), Some(&dir)) {
                Ok(i) => {
                    if let Err(e) = crate::config::parse_str(&i.toml, None) {
                        prop_assert!(false, "{e}\n--- from\n{text}\n--- to\n{}", i.toml);
                    }
                }
                Err(e) => prop_assert!(e.file.is_some(), "{e}"),
            }
        }
    }
}
