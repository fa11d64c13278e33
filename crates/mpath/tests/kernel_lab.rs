//! mpath inside a real Linux kernel: each test boots the lab's Debian kernel under QEMU
//! (`lab/run`, see `docs/lab.md`) and runs one scenario script there with this build's
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

/// The runner's own failures, each in one line naming the log to read: a scenario that
/// hangs is stopped at its limit, a guest that cannot boot and a guest that dies before
/// writing its exit status are told apart — and none of them hangs the test.
#[test]
fn lab_runner_reports_hangs_boot_failures_and_lost_output() {
    if let Some(why) = missing() {
        let msg = format!("lab_runner_reports_hangs_boot_failures_and_lost_output: skipped, {why}");
        assert!(
            !peers_required(),
            "{msg}; MPATH_REQUIRE_PEERS=1 forbids skipping"
        );
        eprintln!("{msg}");
        return;
    }
    let _one_at_a_time = serial();
    let dir = testkit::TempDir::new("lab-runner");
    let scenario = |name: &str, body: &str| {
        let p = dir.path().join(format!("{name}.sh"));
        std::fs::write(&p, body).unwrap();
        p
    };
    let lab_run = |args: &[&str], script: &Path| {
        let o = run(
            Command::new(repo().join("lab/run"))
                .args(args)
                .arg("--out")
                .arg(dir.path().join("out"))
                .arg(script),
            Duration::from_secs(180),
        );
        assert!(!o.timed_out, "lab/run itself hung: {}", o.all());
        // The verdict: the last "lab: " line (details follow it indented).
        let last = o
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("lab: ") && !l.starts_with("lab:  "))
            .unwrap_or_default()
            .to_string();
        (o.status.and_then(|s| s.code()), last)
    };

    let hang = scenario("hang", "echo going to sleep; sleep 1000\n");
    let (code, line) = lab_run(&["--timeout", "60"], &hang);
    assert_eq!(code, Some(124), "{line}");
    assert!(
        line.contains("hang timed out") && line.contains("scenario.log"),
        "{line}"
    );

    let bogus = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, "this is not a kernel image\n").unwrap();
    let fine = scenario("fine", "exit 0\n");
    let (code, line) = lab_run(&["--kernel", bogus.to_str().unwrap()], &fine);
    assert_eq!(code, Some(125), "{line}");
    assert!(
        line.contains("did not boot") && line.contains("console.log"),
        "{line}"
    );

    // The guest powers off in the middle of the scenario: no exit status comes back.
    let dies = scenario("dies", "echo o > /proc/sysrq-trigger; sleep 30\n");
    let (code, line) = lab_run(&["--timeout", "120"], &dies);
    assert_eq!(code, Some(125), "{line}");
    assert!(
        line.contains("lost its output") && line.contains("console.log"),
        "{line}"
    );
}

/// The ublk export: the daemon gives the map /dev/ublkbN with /dev/mpath/<map> and
/// /dev/disk/by-id/mpath-<wwid> (kept through `udevadm trigger`); ext4 on it, fio verify
/// through a path blackhole; then, under the same load, the daemon killed (-9) and started
/// again, restarted as planned (SIGTERM), and replaced by another binary: each time the new
/// daemon takes the device over and the I/O the kernel held goes on — 0 errors, no kernel
/// I/O error, e2fsck clean.
#[test]
fn ublk_device_survives_path_failure_crash_restart_and_upgrade() {
    lab(
        "ublk_device_survives_path_failure_crash_restart_and_upgrade",
        "ublk",
        Duration::from_secs(480),
        &[
            "ublk-device",
            "ublk-stable-names",
            "ublk-names-survive-udev-trigger",
            "ublk-fio-verify-through-failover",
            "ublk-crash",
            "ublk-restart",
            "ublk-upgrade",
            "ublk-names-after-restarts",
            "ublk-no-kernel-io-errors",
            "ublk-e2fsck-clean",
        ],
    );
}

/// The kernel NBD device the daemon attaches itself (`[exports] nbd_device`): its stable
/// names, ext4 and fio verify through a path failure, the daemon's crash, planned restart
/// and upgrade under that load — 0 errors, e2fsck clean (`lab/scenarios/nbd-device.sh`).
#[test]
fn nbd_device_survives_path_failure_crash_restart_and_upgrade() {
    lab(
        "nbd_device_survives_path_failure_crash_restart_and_upgrade",
        "nbd-device",
        Duration::from_secs(480),
        &[
            "nbd-device",
            "nbd-stable-names",
            "nbd-names-survive-udev-trigger",
            "nbd-fio-verify-through-failover",
            "nbd-crash",
            "nbd-restart",
            "nbd-upgrade",
            "nbd-names-after-restarts",
            "nbd-no-kernel-io-errors",
            "nbd-e2fsck-clean",
        ],
    );
}
