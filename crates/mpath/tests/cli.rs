//! The command line as scripts meet it: exit statuses, usage errors, the udev helper,
//! completions and man pages.

use std::process::Command;

fn mpath(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpath"))
        .args(args)
        .output()
        .expect("run mpath")
}

#[test]
fn an_unreachable_daemon_exits_3_and_says_where_it_looked() {
    let o = mpath(&["show", "maps", "--socket", "/nonexistent/mpath.sock"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach the daemon at /nonexistent/mpath.sock"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "nothing on stdout: {o:?}");
}

#[test]
fn udev_rules_run_this_binary() {
    let o = mpath(&["udev", "rules"]);
    assert!(o.status.success(), "{o:?}");
    let rules = String::from_utf8_lossy(&o.stdout);
    let bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_mpath")).unwrap();
    assert!(
        rules.contains(&format!(
            "IMPORT{{program}}=\"{} udev loop %k\"",
            bin.display()
        )),
        "{rules}"
    );
    // A device that is no loop device is refused; a loop device that is not attached to a
    // map's file names nothing.
    assert!(!mpath(&["udev", "loop", "sda"]).status.success());
    let o = mpath(&["udev", "loop", "loop999"]);
    assert!(o.status.success() && o.stdout.is_empty(), "{o:?}");
}

#[test]
fn a_malformed_initiator_name_is_a_usage_error() {
    for args in [
        &["iscsi", "discover", "127.0.0.1", "--initiator", "my host"][..],
        &["daemon", "--portal", "127.0.0.1", "--initiator", "host1"],
        &[
            "target",
            "--iqn",
            "iqn.2026-01.io.mpath:t",
            "--portal",
            "127.0.0.1:3260",
            "--lun",
            "mem:1M",
            "--allow",
            "iqn.2026-01.io.mpath:a,b",
        ],
    ] {
        let o = mpath(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("is not an iSCSI name (iqn.YYYY-MM.domain:id)")
                || err.contains("contains characters iSCSI names may not"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("--initiator") || err.contains("--allow"),
            "{err}"
        );
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_line() {
    let o = mpath(&["completions", "bash"]);
    assert!(o.status.success(), "{o:?}");
    let bash = String::from_utf8_lossy(&o.stdout);
    assert!(
        bash.contains("switchgroup") && bash.contains("complete -F"),
        "{bash}"
    );
    for shell in ["zsh", "fish"] {
        let o = mpath(&["completions", shell]);
        assert!(o.status.success(), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("disablequeueing"));
    }
    assert_eq!(mpath(&["completions", "tcsh"]).status.code(), Some(2));

    let o = mpath(&["man"]);
    assert!(o.status.success(), "{o:?}");
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains(".TH mpath 1"), "{page}");
    assert!(page.contains("switchgroup"), "{page}");

    let dir = std::env::temp_dir().join(format!("mpath-man-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_mpath"))
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let daemon = std::fs::read_to_string(dir.join("mpath-daemon.1")).unwrap();
    assert!(daemon.contains(".TH mpath-daemon 1"), "{daemon}");
    assert!(daemon.contains("initiator"), "{daemon}");
    for page in [
        "mpath.1",
        "mpath-show.1",
        "mpath-target-ctl.1",
        "mpath-systemd-units.1",
    ] {
        assert!(dir.join(page).is_file(), "{page}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
