//! mpath as a systemd service: the units pass `systemd-analyze verify`, and the daemon and
//! the target speak sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) to a
//! NOTIFY_SOCKET the way systemd reads it.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MPATH: &str = env!("CARGO_BIN_EXE_mpath");

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpath-service-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A command for the built binary, free of any service manager the test itself runs under.
fn mpath() -> Command {
    let mut c = Command::new(MPATH);
    for v in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "RUNTIME_DIRECTORY",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    c
}

fn kill(child: &Child, sig: i32) {
    // SAFETY: a signal to a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}
const SIGHUP: i32 = libc::SIGHUP;
const SIGTERM: i32 = libc::SIGTERM;

/// What a service manager hears on its notification socket.
struct Notifications {
    sock: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        Notifications {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    /// The next datagram that has `line` as one of its lines, within `within`; every
    /// datagram received meanwhile is kept in `seen`.
    fn wait_for(&mut self, line: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {line:?} within {within:?}; heard {:?}",
                self.seen
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(e) => panic!("notify socket: {e}"),
            };
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }
}

/// `mpath target` on 127.0.0.1 (a free port) with one memory LUN; returns it and its portal.
fn start_target(dir: &Path) -> (Child, String) {
    let mut t = mpath()
        .args([
            "target",
            "--iqn",
            "iqn.2026-01.io.mpath:service",
            "--portal",
            "127.0.0.1:0",
            "--lun",
            "mem:16M",
            "--control-socket",
        ])
        .arg(dir.join("target.sock"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(t.stderr.take().unwrap()).lines();
    let portal = loop {
        let l = lines
            .next()
            .expect("the target's portal line")
            .expect("the target's stderr");
        if let Some(rest) = l.trim().strip_prefix("portal ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep reading, so the target never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (t, portal)
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = temp_dir("units");
    let units = dir.join("system");
    let o = mpath()
        .args(["systemd", "units", "--mpath", MPATH, "--install", "--dir"])
        .arg(&units)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    for name in ["mpath-daemon.service", "mpath-target.service"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        assert!(text.contains(&format!("ExecStart={MPATH} ")), "{text}");
        assert!(!text.contains("@MPATH@"), "{text}");
    }
    // Printing gives the same text.
    let o = mpath()
        .args(["systemd", "units", "--mpath", MPATH])
        .output()
        .unwrap();
    let printed = String::from_utf8(o.stdout).unwrap();
    assert!(printed.contains(&std::fs::read_to_string(units.join("mpath-daemon.service")).unwrap()));
    // A relative binary cannot be a unit's ExecStart.
    let o = mpath()
        .args(["systemd", "units", "--mpath", "mpath"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");

    if !testkit::have("systemd-analyze") {
        assert!(
            !testkit::peers_required(),
            "systemd-analyze is not installed (Debian: systemd) and MPATH_REQUIRE_PEERS=1 \
             forbids skipping"
        );
        eprintln!("the_units_pass_systemd_analyze_verify: skipped verify, no systemd-analyze");
        return;
    }
    // --man=no: the man pages (`mpath man --dir`) are not installed here.
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(units.join("mpath-daemon.service"))
        .arg(units.join("mpath-target.service"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.contains("mpath-"),
        "systemd-analyze verify complains about the units: {err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_daemon_tells_systemd_ready_status_watchdog_reload_and_stop() {
    let dir = temp_dir("daemon");
    let (mut target, portal) = start_target(&dir);
    let config = dir.join("mpath.toml");
    std::fs::write(
        &config,
        format!(
            "control_socket = {:?}\n\n[defaults]\nbindings_file = {:?}\n\n[[portal]]\naddress = \"{portal}\"\n\n[exports]\nnbd = \"off\"\n",
            dir.join("mpath.sock"),
            dir.join("bindings"),
        ),
    )
    .unwrap();
    let mut heard = Notifications::bind(&dir);
    let mut daemon = mpath()
        .args(["daemon", "-c"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &heard.path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = heard.wait_for("READY=1", Duration::from_secs(20));
    assert!(
        ready.contains("STATUS=1 map(s), 1 path(s) (1 ready), 1/1 session(s) up"),
        "{ready}"
    );
    // WATCHDOG_USEC=200ms: a ping every 100 ms.
    let since = Instant::now();
    for _ in 0..5 {
        heard.wait_for("WATCHDOG=1", Duration::from_secs(2));
    }
    assert!(since.elapsed() < Duration::from_secs(2), "{:?}", heard.seen);

    kill(&daemon, SIGHUP);
    let reloading = heard.wait_for("RELOADING=1", Duration::from_secs(10));
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|us| us > 0))),
        "{reloading}"
    );
    let ready = heard.wait_for("READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS=1 map(s)"), "{ready}");

    kill(&daemon, SIGTERM);
    heard.wait_for("STOPPING=1", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        !dir.join("mpath.sock").exists(),
        "the control socket is removed"
    );

    let _ = target.kill();
    let _ = target.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_target_tells_systemd_ready_and_stopping() {
    let dir = temp_dir("target");
    let mut heard = Notifications::bind(&dir);
    let mut t = mpath()
        .args([
            "target",
            "--iqn",
            "iqn.2026-01.io.mpath:service",
            "--portal",
            "127.0.0.1:0",
            "--lun",
            "mem:1M",
            "--control-socket",
        ])
        .arg(dir.join("target.sock"))
        .env("NOTIFY_SOCKET", &heard.path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = heard.wait_for("READY=1", Duration::from_secs(20));
    assert!(
        ready.contains("STATUS=1 target(s), 1 portal(s), 0 session(s)"),
        "{ready}"
    );
    // SIGTERM, as systemd stops a service: a clean stop, not death by the signal.
    kill(&t, SIGTERM);
    heard.wait_for("STOPPING=1", Duration::from_secs(10));
    let status = t.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Run `mpath daemon` against a portal that refuses (it warns, retrying discovery) with
/// `JOURNAL_STREAM` set; the first lines of standard error up to its `ready` line.
fn daemon_log_lines(dir: &Path, journal_stream: Option<&str>) -> Vec<String> {
    let (reader, writer) = std::io::pipe().unwrap();
    let stream = journal_stream.map(str::to_string).unwrap_or_else(|| {
        // What systemd sets: the device and inode of the stream standard error is.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&writer);
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        format!("{}:{}", st.st_dev, st.st_ino)
    });
    let mut d = mpath()
        .args([
            "daemon",
            "--portal",
            "127.0.0.1:1",
            "--nbd",
            "off",
            "--socket",
        ])
        .arg(dir.join("mpath.sock"))
        .env("JOURNAL_STREAM", stream)
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut from = BufReader::new(reader).lines();
    for l in from.by_ref() {
        let l = l.unwrap();
        let ready = l.contains("ready: ");
        lines.push(l);
        if ready {
            break;
        }
    }
    // Keep reading: a closed pipe would fail the daemon's later lines.
    std::thread::spawn(move || for _ in from {});
    kill(&d, SIGTERM);
    assert!(d.wait().unwrap().success());
    lines
}

#[test]
fn logs_to_the_journal_carry_priorities_and_no_timestamps() {
    let dir = temp_dir("journal");
    let lines = daemon_log_lines(&dir, None);
    assert!(
        lines.iter().any(|l| l.starts_with(
            "<4>mpathd::daemon: discovery failed, retrying: cannot connect to 127.0.0.1:1"
        )),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>mpath::daemon_cmd: ready: 0 map(s)")),
        "{lines:#?}"
    );
    for l in lines.iter().filter(|l| l.starts_with('<')) {
        assert!(
            !l.contains("WARN") && !l.contains("INFO") && !l.contains("Z "),
            "{l}"
        );
    }

    // A JOURNAL_STREAM inherited while standard error goes elsewhere: plain text lines.
    let lines = daemon_log_lines(&dir, Some("1:2"));
    let warn = lines
        .iter()
        .find(|l| l.contains("discovery failed"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(!warn.starts_with('<') && warn.contains(" WARN "), "{warn}");
    assert!(warn.starts_with("20"), "a timestamp first: {warn}");
    std::fs::remove_dir_all(&dir).unwrap();
}
