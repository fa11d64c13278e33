//! multipath-tools configuration files read by mpath: real-world-style files translated
//! with every setting carried over or listed, their meaning checked through
//! `DaemonConfig::resolve`, the errors a typo gets, and mpath's TOML in multipath-tools'
//! spelling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mpath_policy::{Failback, Grouping, NoPathPolicy, SelectorKind};
use mpathd::config::{self, CheckerKind, DaemonConfig, PrioritizerKind};
use mpathd::mpconf;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/multipath-conf")
        .join(name)
}

/// An empty conf.d, so the host's /etc/multipath/conf.d never leaks in.
fn no_conf_dir() -> testkit::TempDir {
    testkit::TempDir::new("confd")
}

/// Import `name`; check that every keyword line of every file read shows up in the
/// output (carried over, with its origin in a comment, or listed as not carried over),
/// and that the output reads back.
fn import(name: &str, conf_dir: &Path) -> (mpconf::Imported, DaemonConfig) {
    let file = data(name);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("CONF_DIR", &data("conf.d").display().to_string());
    let imported =
        mpconf::import_text(&text, &file, Some(conf_dir)).unwrap_or_else(|e| panic!("{name}: {e}"));
    for f in &imported.files {
        let src = std::fs::read_to_string(f).unwrap();
        for (i, line) in src.lines().enumerate() {
            let l = line.trim();
            if l.is_empty()
                || l.starts_with('#')
                || l.starts_with('!')
                || l.ends_with('{')
                || l == "}"
            {
                continue;
            }
            let origin = format!("({}:{})", f.display(), i + 1);
            assert!(
                imported.toml.contains(&origin),
                "{name}: {l:?} {origin} is neither carried over nor listed:\n{}",
                imported.toml
            );
        }
    }
    let c = config::parse_str(&imported.toml, None)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", imported.toml));
    (imported, c)
}

/// multipath-tools' own view of its configuration — `multipath -t`: its defaults, its
/// built-in table of every array it knows (100+ device entries) and its blacklists, every
/// keyword with a value — comes along whole: every line carried over or listed, and the
/// result reads back.
#[test]
fn multipath_tools_whole_builtin_table() {
    if !testkit::require("multipath_tools_whole_builtin_table", &["multipath"]) {
        return;
    }
    let out = std::process::Command::new("multipath")
        .arg("-t")
        .output()
        .expect("multipath -t");
    assert!(out.status.success(), "{out:?}");
    let dir = no_conf_dir();
    let file = dir.path().join("multipath-t.conf");
    std::fs::write(&file, &out.stdout).unwrap();
    let empty = no_conf_dir();
    let imported = mpconf::import(&file, Some(empty.path())).unwrap_or_else(|e| panic!("{e}"));
    let src = String::from_utf8_lossy(&out.stdout);
    for (i, line) in src.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.ends_with('{') || l == "}" {
            continue;
        }
        let origin = format!("({}:{})", file.display(), i + 1);
        assert!(
            imported.toml.contains(&origin),
            "{l:?} {origin} is neither carried over nor listed"
        );
    }
    let c = config::parse_str(&imported.toml, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.devices.len() >= 100, "{} device entries", c.devices.len());
    // Every entry stands for a vendor it matches.
    for d in &c.devices {
        assert!(!d.vendor.as_str().is_empty());
    }
}

#[test]
fn a_rhel_default_keeps_names_in_multipathds_bindings_file() {
    let d = no_conf_dir();
    let (imp, c) = import("rhel-mpathconf.conf", d.path());
    assert!(c.user_friendly_names);
    assert_eq!(
        c.bindings_file.as_deref(),
        Some(Path::new("/etc/multipath/bindings"))
    );
    // find_multipaths, enable_foreign and the udev property exception are listed.
    assert_eq!(imp.notes.len(), 3, "{:#?}", imp.notes);
    assert!(
        imp.toml.contains("not carried over: find_multipaths yes"),
        "{}",
        imp.toml
    );
}

#[test]
fn netapp_ontap_round_robin_and_queueing() {
    let d = no_conf_dir();
    let (imp, c) = import("netapp-ontap.conf", d.path());
    assert_eq!(c.checker_interval, Duration::from_secs(10));
    assert!(!c.user_friendly_names);
    let r = c.resolve(None, "NETAPP", "LUN C-Mode");
    assert_eq!(
        r.policy.selector,
        SelectorKind::RoundRobin { repeat_count: 128 }
    );
    assert_eq!(r.policy.grouping, Grouping::GroupByPrio);
    assert_eq!(r.policy.no_path, NoPathPolicy::QueueForever);
    assert_eq!(r.checker, CheckerKind::Tur);
    // ontap's prioritizer is vendor-specific: listed, and the LU's ALUA is used.
    assert_eq!(r.prioritizer, PrioritizerKind::Alua);
    assert!(
        imp.toml.contains("not carried over: prio ontap"),
        "{}",
        imp.toml
    );
    assert!(imp.toml.contains("pg_init_retries 50"), "{}", imp.toml);
    // Another array is not touched by the entry.
    let other = c.resolve(None, "NETAPPX", "X");
    assert_eq!(other.policy.selector, SelectorKind::ServiceTime);
}

#[test]
fn pure_flasharray_fails_at_once_with_no_path() {
    let d = no_conf_dir();
    let (_, c) = import("pure-flasharray.conf", d.path());
    assert_eq!(c.checker_interval, Duration::from_secs(10));
    assert_eq!(c.checker_interval_ok, Duration::from_secs(40));
    let r = c.resolve(None, "PURE", "FlashArray");
    assert_eq!(r.policy.selector, SelectorKind::ServiceTime);
    assert_eq!(r.policy.no_path, NoPathPolicy::Fail);
    assert_eq!(r.policy.failback, Failback::Immediate);
}

#[test]
fn a_lio_gateway_entry_beats_the_builtin_one() {
    let d = no_conf_dir();
    let (_, c) = import("ceph-iscsi-lio.conf", d.path());
    let r = c.resolve(None, "LIO-ORG", "TCMU device");
    assert_eq!(r.policy.grouping, Grouping::Failover);
    assert_eq!(r.policy.selector, SelectorKind::QueueLength);
    assert_eq!(
        r.policy.failback,
        Failback::Deferred(Duration::from_secs(60))
    );
    assert_eq!(r.policy.no_path, NoPathPolicy::QueueForever);
    assert_eq!(r.devices.len(), 2, "{:?}", r.devices);
    // Another LIO backstore: the built-in LIO entry only.
    let r = c.resolve(None, "LIO-ORG", "IBLOCK");
    assert_eq!(r.policy.grouping, Grouping::GroupByPrio);
    assert_eq!(
        r.policy.no_path,
        NoPathPolicy::Queue(Duration::from_secs(60))
    );
}

#[test]
fn every_section_with_a_conf_d_drop_in() {
    let (imp, c) = import("annotated.conf", &data("conf.d"));
    assert_eq!(imp.files.len(), 2, "{:?}", imp.files);
    // defaults: no_path_retry 12 counts polling intervals of 5 s; conf.d's failback wins.
    assert_eq!(
        c.policy.selector,
        SelectorKind::RoundRobin { repeat_count: 100 }
    );
    assert_eq!(c.policy.grouping, Grouping::Multibus);
    assert_eq!(
        c.policy.no_path,
        NoPathPolicy::Queue(Duration::from_secs(60))
    );
    assert_eq!(c.policy.failback, Failback::Manual);
    assert_eq!(c.prioritizer, PrioritizerKind::Const);
    assert_eq!(c.checker, CheckerKind::Readsector0);
    assert_eq!(
        c.bindings_file.as_deref(),
        Some(Path::new("/var/lib/mpath/bindings-test"))
    );
    // overrides beat devices; a multipath entry beats overrides.
    let r = c.resolve(None, "COMPAQ  ", "HSV110 (C)COMPAQ");
    assert_eq!(r.policy.no_path, NoPathPolicy::Fail);
    assert_eq!(
        r.policy.failback,
        Failback::Deferred(Duration::from_secs(15))
    );
    let yellow = c.resolve(Some("3600508b4000156d700012000000b0000"), "X", "Y");
    assert_eq!(
        yellow.policy.no_path,
        NoPathPolicy::Queue(Duration::from_secs(25))
    );
    assert_eq!(yellow.policy.failback, Failback::Manual);
    assert_eq!(c.multipaths[0].alias.as_deref(), Some("yellow"));
    // The drop-in's device entry.
    assert_eq!(
        c.resolve(None, "MPATH", "VDISK").checker,
        CheckerKind::Directio
    );
    // Blacklist: WWID, vendor/product pair; protocol scsi:fcp leaves iSCSI alone;
    // the IET exception takes tgt's disks back from a device rule.
    let b = &c.blacklist;
    assert!(b.excludes("26353900f02796769", "X", "Y").is_some());
    assert!(b.excludes("3abc", "DEC", "MSA1000").is_some());
    assert!(b.excludes("3abc", "DEC", "MSA3000").is_none());
    assert!(b.excludes("3abc", "IET", "VIRTUAL-DISK").is_none());
    // Not carried over, with why: the udev attribute, timers, reservation key, devnodes,
    // the protocol override.
    for what in [
        "uid_attribute",
        "dev_loss_tmo 600",
        "reservation_key",
        "devnode",
        "overrides protocol",
    ] {
        assert!(
            imp.notes.iter().any(|n| n.contains(what)),
            "{what}: {:#?}",
            imp.notes
        );
    }
}

#[test]
fn a_whitelist_by_regex_with_exceptions() {
    let d = no_conf_dir();
    let (_, c) = import("debian-iscsi.conf", d.path());
    let b = &c.blacklist;
    let tgt = "360000000000000000e00000000010001";
    assert!(b.excludes(tgt, "IET", "VIRTUAL-DISK").is_none());
    let other = b.excludes("36001405abcdef", "LIO-ORG", "IBLOCK").unwrap();
    assert!(other.contains("\".*\""), "{other}");
    assert_eq!(
        c.resolve(Some(tgt), "IET", "VIRTUAL-DISK").policy.no_path,
        NoPathPolicy::Queue(Duration::from_secs(60))
    );
    // tgt's built-in entry: one group, equal priorities.
    let r = c.resolve(Some(tgt), "IET", "VIRTUAL-DISK");
    assert_eq!(r.policy.grouping, Grouping::Multibus);
    assert_eq!(r.prioritizer, PrioritizerKind::Const);
    assert_eq!(c.multipaths[0].alias.as_deref(), Some("data"));
}

#[test]
fn the_daemon_reads_a_multipath_conf_directly() {
    let d = testkit::TempDir::new("mpconf-daemon");
    let file = d.path().join("multipath.conf");
    std::fs::write(
        &file,
        format!(
            "defaults {{\n  path_checker directio\n  bindings_file {}/bindings\n  config_dir {}\n}}\n\
             blacklist {{\n  wwid \"^3600\"\n}}\n",
            d.path().display(),
            d.path().join("none").display()
        ),
    )
    .unwrap();
    let c = config::load_file(&file).unwrap();
    assert_eq!(c.checker, CheckerKind::Directio);
    assert!(c.blacklist.excludes("36001", "A", "B").is_some());
    assert_eq!(c.bindings_file, Some(d.path().join("bindings")));
}

fn err(text: &str) -> String {
    let d = no_conf_dir();
    mpconf::import_text(text, Path::new("multipath.conf"), Some(d.path()))
        .map(|i| i.toml)
        .unwrap_err()
        .to_string()
}

#[test]
fn typos_and_broken_files_name_their_line() {
    let e = err("defaults {\n  user_friendly_names yes\n  path_chekcer tur\n}\n");
    assert!(
        e.starts_with("multipath.conf:3: path_chekcer: unknown keyword")
            && e.contains("did you mean path_checker?"),
        "{e}"
    );
    let e = err("device {\n vendor X\n}\n");
    assert!(
        e.contains("multipath.conf:1") && e.contains("did you mean devices?"),
        "{e}"
    );
    let e = err("defaults {\n  polling_interval 5\n");
    assert!(
        e.contains("multipath.conf:1") && e.contains("not closed"),
        "{e}"
    );
    let e = err("blacklist {\n  wwid \"(unclosed\"\n}\n");
    assert!(
        e.contains("multipath.conf:2") && e.contains("not a regular expression"),
        "{e}"
    );
    let e = err("defaults {\n  path_selector \"fastest 0\"\n}\n");
    assert!(
        e.contains("multipath.conf:2") && e.contains("unknown path selector"),
        "{e}"
    );
    let e = err("defaults {\n  no_path_retry sometimes\n}\n");
    assert!(e.contains("multipath.conf:2: no_path_retry"), "{e}");
    let e = err("multipaths {\n  multipath {\n    alias db\n  }\n}\n");
    assert!(e.contains("needs a wwid"), "{e}");
    // Numbers too large for a duration: an error naming the line, never a panic.
    let e = err("defaults {\n  polling_interval 18446744073709551615\n  no_path_retry 4\n}\n");
    assert!(
        e.contains("multipath.conf:3: no_path_retry") && e.contains("too long"),
        "{e}"
    );
}

#[test]
fn toml_takes_multipath_tools_spellings_and_suggests_near_misses() {
    let c = config::parse_str(
        "[defaults]\npath_checker = \"readsector0\"\npath_selector = \"round-robin 0\"\n\
         path_grouping_policy = \"multibus\"\nprio = \"const\"\npolling_interval = 5\n\
         no_path_retry = 6\n",
        None,
    )
    .unwrap();
    assert_eq!(c.checker, CheckerKind::Readsector0);
    assert_eq!(
        c.policy.selector,
        SelectorKind::RoundRobin { repeat_count: 1 }
    );
    assert_eq!(c.policy.grouping, Grouping::Multibus);
    assert_eq!(c.prioritizer, PrioritizerKind::Const);
    assert_eq!(c.checker_interval, Duration::from_secs(5));
    // A bare number counts checker intervals, as in multipath.conf.
    assert_eq!(
        c.policy.no_path,
        NoPathPolicy::Queue(Duration::from_secs(30))
    );

    let e = config::parse_str("[defaults]\npath_chekcer = \"tur\"\n", None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2") && e.contains("did you mean `path_checker`?"),
        "{e}"
    );
    let e = config::parse_str("[defaults]\nchecker = \"tru\"\n", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean \"tur\"?"), "{e}");
    let e = config::parse_str("[defaults]\ngrouping = \"group_by_priority\"\n", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean \"group_by_prio\"?"), "{e}");
    let e = config::parse_str("[blacklist]\nwwid = [\"(x\"]\n", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2: blacklist.wwid[0]"), "{e}");
}

#[test]
fn toml_device_entries_and_their_order() {
    let c = config::parse_str(
        "[defaults]\ngrouping = \"failover\"\n\
         [[device]]\nvendor = \"^IET$\"\nno_path_retry = \"fail\"\n\
         [[device]]\nvendor = \"IET\"\nproduct = \"VIRTUAL\"\nno_path_retry = \"5s\"\n\
         [overrides]\nfailback = \"manual\"\n",
        None,
    )
    .unwrap();
    let r = c.resolve(None, "IET", "VIRTUAL-DISK");
    // The later matching entry wins; [defaults] beats the built-in tgt entry's grouping,
    // which still sets the prioritizer [defaults] left alone.
    assert_eq!(
        r.policy.no_path,
        NoPathPolicy::Queue(Duration::from_secs(5))
    );
    assert_eq!(r.policy.grouping, Grouping::Failover);
    assert_eq!(r.prioritizer, PrioritizerKind::Const);
    assert_eq!(r.policy.failback, Failback::Manual);
    // What `show config` prints reads back the same.
    assert_eq!(config::parse_str(&config::render(&c), None).unwrap(), c);
}
