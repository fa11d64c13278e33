//! mpath's initiator (`mpath iscsi ...`) against tgtd — the seed's own target — with two
//! portals, and against `mpath target`: discovery, probe, verified I/O, the same WWID
//! through both portals, CHAP right and wrong, digests on and off.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{free_port, require, run, MpathTarget, Output, Tgtd};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mpath"))
}

fn mpath(args: &[&str]) -> Output {
    run(Command::new(bin()).args(args), Duration::from_secs(60))
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.success(), "mpath failed: {}", o.all());
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", o.stdout))
}

/// Every check the issue lists, against one target with two portals.
fn exercise(portals: [SocketAddr; 2], iqn: &str, expect_both_in_discovery: bool, chap: &[&str]) {
    let (a, b) = (portals[0].to_string(), portals[1].to_string());
    // discover
    let d = json(&mpath(
        &[&["iscsi", "discover", &a, "--json"][..], chap].concat(),
    ));
    let t = d
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == iqn)
        .unwrap_or_else(|| panic!("{iqn} not discovered: {d}"));
    let addrs: Vec<&str> = t["portals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap())
        .collect();
    assert!(addrs.contains(&a.as_str()), "{addrs:?}");
    if expect_both_in_discovery {
        assert!(addrs.contains(&b.as_str()), "{addrs:?}");
    }
    // probe through both portals: the same WWID
    let mut wwids = Vec::new();
    for p in [&a, &b] {
        let v = json(&mpath(
            &[&["iscsi", "probe", p, "--target", iqn, "--json"][..], chap].concat(),
        ));
        let lun1 = v["luns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["lun"] == 1)
            .unwrap_or_else(|| panic!("no LUN 1: {v}"))
            .clone();
        assert_eq!(lun1["block_size"], 512);
        assert!(lun1["size"].as_u64().unwrap() >= 64 << 20);
        wwids.push(lun1["wwid"].as_str().expect("a WWID").to_string());
    }
    assert_eq!(wwids[0], wwids[1], "the WWID differs between portals");
    assert!(wwids[0].starts_with('3'), "{}", wwids[0]);
    // verified I/O, digests off and on, through each portal
    for (p, digests) in [(&a, false), (&b, true)] {
        let mut args = vec![
            "iscsi", "io", p, "--target", iqn, "--lun", "1", "--verify", "--size", "16M",
            "--depth", "16", "--json",
        ];
        if digests {
            args.extend(["--header-digest", "--data-digest"]);
        }
        let v = json(&mpath(&[&args[..], chap].concat()));
        assert_eq!(v["mismatches"], 0, "{v}");
        assert_eq!(v["blocks_verified"], (16 << 20) / 512);
    }
}

#[test]
fn against_tgtd_two_portals() {
    if !require("initiator_vs_tgtd", &["tgtd", "tgtadm"]) {
        return;
    }
    let portals = [
        format!("127.0.0.6:{}", free_port("127.0.0.6"))
            .parse()
            .unwrap(),
        format!("127.0.0.7:{}", free_port("127.0.0.7"))
            .parse()
            .unwrap(),
    ];
    let t = Tgtd::start(7321, &portals, 128 << 20);
    // tgtd answers SendTargets with the portal it was asked on only.
    exercise(portals, &t.iqn, false, &[]);
}

#[test]
fn against_tgtd_with_chap() {
    if !require("initiator_vs_tgtd_chap", &["tgtd", "tgtadm"]) {
        return;
    }
    let portals: [SocketAddr; 2] = [
        format!("127.0.0.6:{}", free_port("127.0.0.6"))
            .parse()
            .unwrap(),
        format!("127.0.0.7:{}", free_port("127.0.0.7"))
            .parse()
            .unwrap(),
    ];
    let t = Tgtd::start(7322, &portals, 128 << 20);
    t.require_chap("alice", "alice-secret-1", Some(("array", "array-secret-2")));
    let right = [
        "--chap",
        "alice:alice-secret-1",
        "--mutual-chap",
        "array:array-secret-2",
    ];
    exercise(portals, &t.iqn, false, &right);
    let a = portals[0].to_string();
    let wrong = mpath(&[
        "iscsi",
        "probe",
        &a,
        "--target",
        &t.iqn,
        "--chap",
        "alice:wrong",
    ]);
    assert!(!wrong.success());
    assert!(
        wrong.all().contains("0x0201"),
        "authentication failure expected: {}",
        wrong.all()
    );
    let none = mpath(&["iscsi", "probe", &a, "--target", &t.iqn]);
    assert!(!none.success(), "logged in without CHAP: {}", none.all());
    let bad_mutual = mpath(&[
        "iscsi",
        "probe",
        &a,
        "--target",
        &t.iqn,
        "--chap",
        "alice:alice-secret-1",
        "--mutual-chap",
        "array:not-its-secret",
    ]);
    assert!(!bad_mutual.success());
    assert!(
        bad_mutual.all().to_lowercase().contains("mutual"),
        "{}",
        bad_mutual.all()
    );
}

#[test]
fn against_mpath_target() {
    let t = MpathTarget::start(
        bin(),
        &[
            "--iqn",
            "iqn.2026-01.io.mpath:init",
            "--portal",
            "127.0.0.2:0",
            "--portal",
            "127.0.0.3:0",
            "--lun",
            "mem:128M",
            "--chap",
            "alice:alice-secret-1",
            "--mutual-chap",
            "array:array-secret-2",
        ],
    );
    let portals = [t.portals[0], t.portals[1]];
    let right = [
        "--chap",
        "alice:alice-secret-1",
        "--mutual-chap",
        "array:array-secret-2",
    ];
    // mpath target lists every portal in SendTargets.
    exercise(portals, "iqn.2026-01.io.mpath:init", true, &right);
    let a = portals[0].to_string();
    let wrong = mpath(&[
        "iscsi",
        "probe",
        &a,
        "--target",
        "iqn.2026-01.io.mpath:init",
        "--chap",
        "alice:wrong",
    ]);
    assert!(
        !wrong.success() && wrong.all().contains("0x0201"),
        "{}",
        wrong.all()
    );
    // The probe shows the ALUA group of each portal.
    let v = json(&mpath(
        &[
            &[
                "iscsi",
                "probe",
                &t.portals[1].to_string(),
                "--target",
                "iqn.2026-01.io.mpath:init",
                "--json",
            ][..],
            &right,
        ]
        .concat(),
    ));
    assert_eq!(v["luns"][0]["target_port_group"], 2);
    assert_eq!(v["luns"][0]["alua_state"], "active/optimized");
}
