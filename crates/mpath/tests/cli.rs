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

/// `mpath target` on 127.0.0.1 (a free port) with one memory LUN; returns it and its port.
fn start_target(iqn: &str) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let sock = std::env::temp_dir().join(format!("mpath-cli-target-{}.sock", std::process::id()));
    let mut t = Command::new(env!("CARGO_BIN_EXE_mpath"))
        .args([
            "target",
            "--iqn",
            iqn,
            "--portal",
            "127.0.0.1:0",
            "--lun",
            "mem:4M",
        ])
        .arg("--control-socket")
        .arg(sock)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(t.stderr.take().unwrap()).lines();
    let port = loop {
        let l = lines.next().expect("the target's portal line").unwrap();
        if let Some(rest) = l.trim().strip_prefix("portal 127.0.0.1:") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (t, port)
}

#[test]
fn portals_may_be_host_names() {
    let iqn = "iqn.2026-01.io.mpath:hostnames";
    let (mut target, port) = start_target(iqn);
    let o = mpath(&["iscsi", "discover", &format!("localhost:{port}")]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(iqn) && out.contains(&format!("127.0.0.1:{port},1")),
        "{out}"
    );
    let o = mpath(&[
        "iscsi",
        "probe",
        &format!("localhost:{port}"),
        "--target",
        iqn,
    ]);
    assert!(o.status.success(), "{o:?}");

    // A host that does not resolve is named, by the iSCSI commands and by the daemon.
    let o = mpath(&["iscsi", "discover", "no-such-host.invalid:3260"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot resolve host \"no-such-host.invalid\""),
        "{err}"
    );
    let o = mpath(&["daemon", "--portal", "no-such-host.invalid", "--nbd", "off"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--portal no-such-host.invalid: cannot resolve host \"no-such-host.invalid\""),
        "{err}"
    );
    let o = mpath(&["iscsi", "discover", "localhost:port"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"port\" is not a port number"),
        "{o:?}"
    );

    // The daemon logs in through localhost:PORT.
    let dir = std::env::temp_dir().join(format!("mpath-cli-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("mpath.sock");
    // Names kept here, not in /var/lib/mpath.
    let config = dir.join("mpath.toml");
    std::fs::write(
        &config,
        format!("[defaults]\nbindings_file = {:?}\n", dir.join("bindings")),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_mpath"))
        .args([
            "daemon",
            "--nbd",
            "off",
            "--portal",
            &format!("localhost:{port}"),
        ])
        .arg("-c")
        .arg(&config)
        .arg("--socket")
        .arg(&sock)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock_s = sock.to_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let o = mpath(&["show", "status", "--json", "--socket", sock_s]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            if v["maps"] == 1 && v["sessions_up"] == 1 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no map through localhost:{port}: {o:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = mpath(&["show", "paths", "--socket", sock_s]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("127.0.0.1:{port}")),
        "{o:?}"
    );
    assert!(mpath(&["shutdown", "--socket", sock_s]).status.success());
    assert!(daemon.wait().unwrap().success());
    assert!(std::fs::read_to_string(dir.join("bindings"))
        .unwrap()
        .contains("mpatha "));
    let _ = target.kill();
    let _ = target.wait();
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("mpath-cli-target-{}.sock", std::process::id())),
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A target (one portal, one LUN) and a daemon logged in to it, with its control socket;
/// both stopped when dropped.
struct Rig {
    target: std::process::Child,
    daemon: std::process::Child,
    dir: std::path::PathBuf,
    sock: String,
    port: u16,
}

impl Rig {
    fn start(tag: &str) -> Rig {
        let iqn = format!("iqn.2026-01.io.mpath:{tag}");
        let (target, port) = start_target(&iqn);
        let dir = std::env::temp_dir().join(format!("mpath-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("mpath.sock");
        let config = dir.join("mpath.toml");
        std::fs::write(
            &config,
            format!("[defaults]\nbindings_file = {:?}\n", dir.join("bindings")),
        )
        .unwrap();
        let daemon = Command::new(env!("CARGO_BIN_EXE_mpath"))
            .args([
                "daemon",
                "--nbd",
                "off",
                "--portal",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("-c")
            .arg(&config)
            .arg("--socket")
            .arg(&sock)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let rig = Rig {
            target,
            daemon,
            dir,
            sock: sock.to_str().unwrap().to_string(),
            port,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let o = rig.show(&["status", "--json"]);
            if o.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                if v["maps"] == 1 && v["sessions_up"] == 1 {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "no map: {o:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        rig
    }

    /// `mpath ARGS --socket SOCK`.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut a = args.to_vec();
        a.extend(["--socket", self.sock.as_str()]);
        mpath(&a)
    }

    /// `mpath show ARGS --socket SOCK`.
    fn show(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["show"];
        a.extend_from_slice(args);
        self.run(&a)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.run(&["shutdown"]);
        let _ = self.daemon.wait();
        let _ = self.target.kill();
        let _ = self.target.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn show_one_map_and_one_path() {
    let rig = Rig::start("show-one");
    let path = format!("127.0.0.1:{}/1", rig.port);
    let o = rig.show(&["map", "mpatha"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("name: mpatha"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("127.0.0.1:{} ", rig.port)),
        "{}",
        stdout(&o)
    );
    let o = rig.show(&["map", "mpatha", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "mpatha");
    assert_eq!(v["active_paths"], 1);

    let o = rig.show(&["path", "127.0.0.1", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["path"], path);
    assert_eq!(v["map"], "mpatha");
    let o = rig.show(&["path", &path]);
    assert!(stdout(&o).contains("dm_state: active"), "{o:?}");

    // Not there: said once on stderr, exit 1; nothing on stdout.
    for (args, says) in [
        (&["map", "mpathz"][..], "no map \"mpathz\""),
        (&["path", "10.1.2.3"], "no path \"10.1.2.3\""),
    ] {
        let o = rig.show(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{o:?}");
    }
    // No name given: a usage error.
    for args in [&["map"][..], &["path"], &["path", "a", "b"], &["maps", "x"]] {
        let o = rig.show(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(stderr(&o).contains("usage"), "{}", stderr(&o));
    }
}

#[test]
fn followed_events_as_json_are_ndjson() {
    use std::io::BufRead;
    let rig = Rig::start("follow-json");
    let o = rig.show(&["events", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let backlog = v["events"].as_array().unwrap().len().min(5);
    assert!(backlog >= 2, "{v}");
    let mut follow = Command::new(env!("CARGO_BIN_EXE_mpath"))
        .args(["show", "events", "--follow", "--json", "--last", "5"])
        .args(["--socket", rig.sock.as_str()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("a line within 10 s")
    };
    let keys = |l: &str| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}"));
        let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        k.sort();
        k
    };
    let want = ["detail", "kind", "map", "path", "t_ms", "time"];
    // The backlog: up to 5 lines, one event each.
    for _ in 0..backlog {
        assert_eq!(keys(&next()), want);
    }
    let p = format!("127.0.0.1:{}", rig.port);
    assert!(rig.run(&["fail", "path", &p]).status.success());
    assert!(rig.run(&["reinstate", "path", &p]).status.success());
    let mut operator = 0;
    while operator < 2 {
        let l = next();
        assert_eq!(keys(&l), want, "{l}");
        if l.contains("\"kind\":\"operator\"") {
            operator += 1;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn paths_and_maps_in_a_format() {
    let rig = Rig::start("format");
    let path = format!("127.0.0.1:{}/1", rig.port);
    let o = rig.show(&["paths", "format", "%d %t %T %m"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["dev", "dm_st", "chk_st", "multipath"],
            vec![path.as_str(), "active", "ready", "mpatha"]
        ],
        "{out}"
    );
    let o = rig.show(&["maps", "raw", "format", "%n:%N"]);
    assert_eq!(stdout(&o), "mpatha:1\n", "{o:?}");
    // --json: the view's data, whatever the format.
    let o = rig.show(&["paths", "format", "%d", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["paths"][0]["path"], path);

    // A wildcard with no meaning here: exit 1, the known ones listed.
    let o = rig.show(&["paths", "format", "%d %D"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        stderr(&o).contains("%D has no meaning") && stderr(&o).contains("%w uuid"),
        "{}",
        stderr(&o)
    );
    // No format after `format`: a usage error.
    let o = rig.show(&["maps", "format"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn sessions_as_iscsiadm_shows_them() {
    let rig = Rig::start("sessions");
    let iqn = "iqn.2026-01.io.mpath:sessions";
    let o = rig.show(&["sessions"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains(&format!(" 127.0.0.1:{},1 {iqn} (running)", rig.port)),
        "{out}"
    );
    let o = rig.show(&["sessions", "--verbose"]);
    let out = stdout(&o);
    for w in [
        "Negotiated iSCSI params:",
        "HeaderDigest: None",
        "MaxBurstLength: ",
        &format!(
            "LUN 1: path 127.0.0.1:{}/1, map mpatha, active ready",
            rig.port
        ),
    ] {
        assert!(out.contains(w), "{w:?} in\n{out}");
    }
    let o = rig.show(&["sessions", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sessions"][0]["target"], iqn);
    assert_eq!(v["sessions"][0]["paths"][0]["map"], "mpatha");
}

#[test]
fn logout_and_login_of_a_portal() {
    let rig = Rig::start("login");
    let portal = format!("127.0.0.1:{}", rig.port);
    let o = rig.run(&["logout", &portal]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains(&format!("logged out of {portal}: 1 session(s), 1 path(s)")),
        "{o:?}"
    );
    // Its only path gone, the map is gone.
    let o = rig.show(&["maps", "raw", "format", "%n"]);
    assert_eq!(stdout(&o), "", "{o:?}");
    // Not logged in: refused, exit 1.
    let o = rig.run(&["logout", &portal]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(stderr(&o).contains("no session to"), "{}", stderr(&o));

    let o = rig.run(&["login", &format!("localhost:{}", rig.port)]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("ok: logged in to"), "{o:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stdout(&rig.show(&["maps", "raw", "format", "%n %N"])) != "mpatha 1\n" {
        assert!(std::time::Instant::now() < deadline, "the map is not back");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A host name that does not resolve: a usage error.
    let o = rig.run(&["login", "no-such-host.invalid"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");

    // CHAP: a user needs a secret file (usage error); a secret file that cannot be read is
    // named; the credentials reach the daemon (the target wants none: the login with them
    // to a portal already up is taken, and `show config` shows the user, not the secret).
    let o = rig.run(&["login", &portal, "--chap-user", "alice"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr(&o).contains("--chap-secret-file"), "{}", stderr(&o));
    let o = rig.run(&[
        "login",
        &portal,
        "--chap-user",
        "alice",
        "--chap-secret-file",
        "/nonexistent/secret",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(stderr(&o).contains("/nonexistent/secret"), "{}", stderr(&o));
    let secret = rig.dir.join("secret");
    std::fs::write(&secret, "a-12-byte-secret\n").unwrap();
    let o = rig.run(&[
        "login",
        &portal,
        "--chap-user",
        "alice",
        "--chap-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let o = rig.show(&["config"]);
    assert!(stdout(&o).contains("user = \"alice\""), "{o:?}");
    assert!(!stdout(&o).contains("a-12-byte-secret"), "{o:?}");
}
