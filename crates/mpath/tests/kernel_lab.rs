//! mpath inside a real Linux kernel: each test boots the lab's Debian kernel under QEMU
//! (`lab/run`, see `lab/README.md`) and runs one scenario script there with this build's
//! `mpath` binary — the kernel initiator and dm-multipath against `mpath target`, the
//! daemon against LIO, the kernel NBD client on the daemon's export.
//!
//! A scenario prints `CHECK ok|FAIL NAME: detail` for every point it proves; a test passes
//! when the scenario exits 0 *and* every check the test names was reported ok, so a scenario
//! that silently skips a step cannot pass.
//!
//! Needs root and the lab (`lab/install`: the kernel, qemu-system-x86, virtme-ng). Without
//! them each test says why it skips; under `MPATH_REQUIRE_PEERS=1` (CI) it fails instead.
//! Scenarios run one at a time (a lock): each guest takes both cores. Every guest run has
//! a hard time limit (`lab/run --timeout`), and this file adds its own on top.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use testkit::netns::is_root;
use testkit::{have, peers_required, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the lab cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !is_root() {
        return Some("the kernel lab needs root (modules, namespaces in the guest); run as root, as .ci/run does".into());
    }
    let tools: Vec<&str> = ["vng", "qemu-system-x86_64"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !tools.is_empty() {
        return Some(format!(
            "the kernel lab is not installed ({} missing): run lab/install",
            tools.join(", ")
        ));
    }
    let kernel = std::fs::read_dir("/boot").ok().is_some_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-6.12"))
    });
    if !kernel {
        return Some("the kernel lab has no 6.12 kernel in /boot: run lab/install".into());
    }
    None
}

/// Run `scenario` in the lab with at most `limit`, and check that every name in `checks`
/// was reported ok. Returns the scenario's log.
fn lab(test: &str, scenario: &str, limit: Duration, checks: &[&str]) -> Option<String> {
    if let Some(why) = missing() {
        let msg = format!("{test}: skipped, {why}");
        if peers_required() {
            panic!("{msg}; MPATH_REQUIRE_PEERS=1 forbids skipping");
        }
        eprintln!("{msg}");
        return None;
    }
    let _one_at_a_time = serial();
    let out = repo().join("target/lab").join(scenario);
    let o = run(
        Command::new(repo().join("lab/run"))
            .arg("--timeout")
            .arg(limit.as_secs().to_string())
            .arg("--bin")
            .arg(env!("CARGO_BIN_EXE_mpath"))
            .arg("--out")
            .arg(&out)
            .arg(scenario),
        limit + Duration::from_secs(60),
    );
    let log = std::fs::read_to_string(out.join("scenario.log")).unwrap_or_default();
    eprintln!("{}", o.stderr.trim_end());
    let checks_seen: Vec<&str> = log.lines().filter(|l| l.starts_with("CHECK")).collect();
    for l in &checks_seen {
        eprintln!("{l}");
    }
    assert!(
        !o.timed_out,
        "{test}: lab/run itself did not return within {limit:?} + 60 s; logs in {}",
        out.display()
    );
    assert!(
        o.success(),
        "{test}: {}",
        o.stderr
            .lines()
            .filter(|l| l.starts_with("lab: ") && !l.contains(" in vmlinuz"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for c in checks {
        let ok = format!("CHECK ok {c}:");
        assert!(
            log.lines().any(|l| l.starts_with(&ok)),
            "{test}: the scenario passed but never reported check {c:?} as ok; log: {}",
            out.join("scenario.log").display()
        );
    }
    Some(log)
}

/// open-iscsi + dm-multipath + multipathd (no multipath.conf) against `mpath target` with two
/// portals in two ALUA groups; fio verify through /dev/dm-0 across a blackhole of the
/// optimized portal; the kernel's SET TARGET PORT GROUPS demotes the other group.
#[test]
fn kernel_initiator_and_dm_multipath_against_mpath_target() {
    lab(
        "kernel_initiator_and_dm_multipath_against_mpath_target",
        "kernel-initiator",
        Duration::from_secs(420),
        &[
            "discovery-lists-both-portals",
            "login-both-portals",
            "alua-implicit-explicit",
            "one-map",
            "optimized-and-non-optimized-groups",
            "fio-verify-through-blackhole",
            "stpg-demotes-old-group",
            "host-sees-one-optimized-group",
        ],
    );
}

/// mpath's initiator and daemon against LIO (configfs: two portals, two TPGs, two ALUA
/// groups, a fileio LUN): discovery, `mpath iscsi io --verify`, the map with ALUA priorities,
/// fio verify through the NBD export while the optimized portal is blackholed and restored.
#[test]
fn mpath_daemon_against_lio() {
    lab(
        "mpath_daemon_against_lio",
        "lio",
        Duration::from_secs(360),
        &[
            "lio-discovery",
            "lio-iscsi-io-verify",
            "lio-map-assembles",
            "lio-failover-under-verify",
            "lio-path-reinstated",
        ],
    );
}

/// The kernel NBD client (netlink) on the daemon's export: ext4 on /dev/nbd0, fio verify on a
/// file through a blackholed and restored path, no kernel I/O error, e2fsck clean.
#[test]
fn kernel_nbd_client_on_mpath_export() {
    lab(
        "kernel_nbd_client_on_mpath_export",
        "kernel-nbd",
        Duration::from_secs(300),
        &[
            "nbd-attached",
            "nbd-netlink",
            "nbd-ext4-fio-verify-through-failover",
            "nbd-no-kernel-io-errors",
            "nbd-e2fsck-clean",
        ],
    );
}
