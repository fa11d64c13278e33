//! Malformed configurations: every error names the file, the line and the key.

use mpathd::config::{load_file, parse_str};

/// (configuration, line, key, words the message must contain)
const CASES: &[(&str, usize, &str, &[&str])] = &[
    (
        "[defaults]\nchecker = \"ping\"\n",
        2,
        "defaults.checker",
        &["unknown checker", "ping", "directio"],
    ),
    (
        "[defaults]\nselector = \"tur\"\n",
        2,
        "defaults.selector",
        &["unknown selector"],
    ),
    (
        "[defaults]\n\nprioritizer = \"fastest\"\n",
        3,
        "defaults.prioritizer",
        &["unknown prioritizer", "path_latency"],
    ),
    (
        "[defaults]\ngrouping = \"group_by_mood\"\n",
        2,
        "defaults.grouping",
        &["unknown grouping"],
    ),
    (
        "[defaults]\nchecker_interval = \"soon\"\n",
        2,
        "defaults.checker_interval",
        &["not a duration"],
    ),
    (
        "[defaults]\nno_path_retry = \"maybe\"\n",
        2,
        "defaults.no_path_retry",
        &["fail, queue or a duration"],
    ),
    (
        "[defaults]\nfailback = \"later\"\n",
        2,
        "defaults.failback",
        &["immediate, manual, followover"],
    ),
    (
        "[defaults]\nrr_min_io = 0\n",
        2,
        "defaults.rr_min_io",
        &["at least 1"],
    ),
    (
        "[defaults]\nmarginal_failures = 0\n",
        2,
        "defaults.marginal_failures",
        &["at least 1"],
    ),
    (
        "[defaults]\nmarginal_hold = \"-3s\"\n",
        2,
        "defaults.marginal_hold",
        &["not a duration"],
    ),
    (
        "[defaults]\nchecker = 3\n",
        2,
        "",
        &["invalid type"],
    ),
    (
        "[defaults]\ncheckr = \"tur\"\n",
        2,
        "checkr",
        &["unknown field"],
    ),
    (
        "[[portal]]\naddress = \"127.0.0.2:3260\"\n\n[[portal]]\naddress = \"127.0.0.2:3260\"\n",
        5,
        "portal[1].address",
        &["listed twice"],
    ),
    (
        "[[portal]]\naddress = \"not an address\"\n",
        2,
        "portal[0].address",
        &[],
    ),
    (
        "[[portal]]\naddress = \"127.0.0.2\"\nmutual_chap = { user = \"u\", secret = \"0123456789ab\" }\n",
        2,
        "portal[0].mutual_chap",
        &["needs chap"],
    ),
    (
        "[[portal]]\naddress = \"127.0.0.2\"\nportal_tag = 3\n",
        3,
        "portal_tag",
        &["unknown field"],
    ),
    (
        "[[multipath]]\nwwid = \"3600a\"\nalias = \"db\"\n\n[[multipath]]\nwwid = \"3600b\"\nalias = \"db\"\n",
        7,
        "multipath[1].alias",
        &["used twice"],
    ),
    (
        "[[multipath]]\nwwid = \"3600a\"\n[[multipath]]\nwwid = \"3600a\"\n",
        4,
        "multipath[1].wwid",
        &["two entries"],
    ),
    (
        "[[multipath]]\nwwid = \"3600a\"\nalias = \"../etc\"\n",
        3,
        "multipath[0].alias",
        &["alias is"],
    ),
    (
        "[[multipath]]\nwwid = \"3600a\"\nno_path_retry = \"sometimes\"\n",
        3,
        "multipath[0].no_path_retry",
        &[],
    ),
    (
        "[exports]\nnbd = \"here\"\n",
        2,
        "exports.nbd",
        &[],
    ),
    (
        "metrics = \"9400\"\n",
        1,
        "metrics",
        &["not IP:PORT"],
    ),
    (
        "[defaults]\ninitiator_name = \"not an iqn\"\n",
        2,
        "defaults.initiator_name",
        &[],
    ),
    ("[defaults\n", 1, "", &[]),
];

#[test]
fn malformed_configurations_name_the_key_and_the_line() {
    for (src, line, key, words) in CASES {
        let e = match parse_str(src, Some(std::path::Path::new("mpath.toml"))) {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(e) => e,
        };
        assert_eq!(e.line, Some(*line), "{e}\n{src}");
        if !key.is_empty() {
            assert_eq!(e.key, *key, "{e}\n{src}");
        }
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("mpath.toml:{line}: {key}")),
            "{shown}\n{src}"
        );
        for w in *words {
            assert!(shown.contains(w), "{shown} lacks {w:?}\n{src}");
        }
    }
}

#[test]
fn a_file_error_names_the_file() {
    let dir = testkit::TempDir::new("cfgerr");
    let p = dir.path().join("mpath.toml");
    std::fs::write(&p, "# ok so far\n\n[defaults]\nchecker = \"ping\"\n").unwrap();
    let e = load_file(&p).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{}:4: defaults.checker: unknown checker",
            p.display()
        )),
        "{e}"
    );
    let e = load_file(&dir.path().join("missing.toml")).unwrap_err();
    assert!(e.to_string().contains("missing.toml: cannot read"), "{e}");
}
