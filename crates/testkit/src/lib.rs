//! Test support: run real peers (libiscsi tools, tgtd, qemu) and our own binary with
//! timeouts, and decide what a missing peer means.
//!
//! A test that needs a peer calls [`require`]. Without the peer it prints why it skips and
//! returns false — unless `MPATH_REQUIRE_PEERS=1` (as `.ci/run` sets), where a missing peer
//! fails the test: CI must never pass by skipping.

pub mod fake_path;

pub mod netns;

pub mod proxy;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Whether an executable is on PATH.
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Whether peers must be present (CI) rather than skipped.
pub fn peers_required() -> bool {
    std::env::var("MPATH_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// True when every command is available. Otherwise: panic under `MPATH_REQUIRE_PEERS=1`,
/// else print what is skipped and why, and return false.
pub fn require(test: &str, cmds: &[&str]) -> bool {
    let missing: Vec<&str> = cmds.iter().copied().filter(|c| !have(c)).collect();
    let msg = if !missing.is_empty() {
        format!(
            "{test}: skipped, peer programs not installed: {} (install them as .ci/run does)",
            missing.join(", ")
        )
    } else if cmds.contains(&"tgtd") && !netns::is_root() {
        format!("{test}: skipped, tgtd needs root (its management socket lives under /var/run)")
    } else {
        return true;
    };
    if peers_required() {
        panic!("{msg}; MPATH_REQUIRE_PEERS=1 forbids skipping");
    }
    eprintln!("{msg}");
    false
}

/// The result of a command run with a timeout.
#[derive(Debug)]
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// stdout and stderr together, for assertions on messages.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run a command to completion, killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let o = std::thread::spawn(move || {
        // Peers print binary designators; keep what is text.
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    });
    let e = std::thread::spawn(move || {
        // Peers print binary designators; keep what is text.
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
        timed_out,
    }
}

/// A child process killed when dropped.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

/// A scratch directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        // Tests run in parallel threads of one process: a counter keeps every name apart.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("mpath-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `mpath target` running as a child process.
pub struct MpathTarget {
    pub daemon: Daemon,
    /// The portals it listens on, in the order given (port 0 resolved).
    pub portals: Vec<SocketAddr>,
    pub socket: PathBuf,
    pub dir: TempDir,
}

impl MpathTarget {
    /// Start `bin target ARGS --control-socket DIR/ctl.sock` and wait until it prints its
    /// control socket line (everything is bound by then).
    pub fn start(bin: &Path, args: &[&str]) -> MpathTarget {
        let dir = TempDir::new("target");
        let socket = dir.path().join("ctl.sock");
        let log = dir.path().join("target.log");
        let mut child = Command::new(bin)
            .arg("target")
            .args(args)
            .arg("--control-socket")
            .arg(&socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(&log_path).ok();
            let mut ready = Some(tx);
            let mut portals = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = f.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Some(p) = line.trim().strip_prefix("portal ") {
                    if let Some(addr) = p.split_whitespace().next().and_then(|a| a.parse().ok()) {
                        portals.push(addr);
                    }
                }
                if line.starts_with("control socket") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(portals.clone());
                    }
                }
            }
        });
        let daemon = Daemon { child, log };
        let portals = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(p) => p,
            Err(_) => panic!("mpath target did not start:\n{}", daemon.log_text()),
        };
        MpathTarget {
            daemon,
            portals,
            socket,
            dir,
        }
    }

    /// Run `bin target ctl --socket ... ARGS`.
    pub fn ctl(&self, bin: &Path, args: &[&str]) -> Output {
        run(
            Command::new(bin)
                .args(["target", "ctl", "--socket"])
                .arg(&self.socket)
                .args(args),
            Duration::from_secs(10),
        )
    }
}

/// Summary of an `iscsi-test-cu` log, as `shared/tools/iscsi-test-cu-classify.awk` counts:
/// CUnit counts a skipped test as passed, so skips are told apart by their message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CuSummary {
    pub pass: usize,
    pub skip: usize,
    pub fail: usize,
    pub failed: Vec<String>,
}

pub fn classify_cu_log(log: &str) -> CuSummary {
    let mut s = CuSummary::default();
    let mut suite = "";
    // (test name, the test's lines so far)
    let mut current: Option<(String, String)> = None;
    let flush = |cur: &mut Option<(String, String)>, s: &mut CuSummary| {
        if let Some((name, block)) = cur.take() {
            // Failed: "...FAILED" right after the name, or a line starting with FAILED;
            // "[FAILED]" inside a test that goes on to pass is only a message.
            if block.contains("...FAILED") || block.contains("\nFAILED") {
                s.fail += 1;
                s.failed.push(name);
            } else if block.contains("SKIPPED") {
                s.skip += 1;
            } else {
                s.pass += 1;
            }
        }
    };
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("Suite: ") {
            flush(&mut current, &mut s);
            suite = rest.split_whitespace().next().unwrap_or("");
        } else if let Some(rest) = line.strip_prefix("  Test: ") {
            flush(&mut current, &mut s);
            let name = rest.split_whitespace().next().unwrap_or("");
            current = Some((format!("{suite}.{name}"), line.to_string()));
        } else if line.starts_with("Run Summary") {
            flush(&mut current, &mut s);
        } else if let Some((_, block)) = current.as_mut() {
            block.push('\n');
            block.push_str(line);
        }
    }
    flush(&mut current, &mut s);
    s
}

/// tgtd serving one target with a file-backed LUN 1, killed when dropped.
pub struct Tgtd {
    pub daemon: Daemon,
    pub iqn: String,
    pub portals: Vec<SocketAddr>,
    control_port: u16,
    _dir: TempDir,
}

impl Tgtd {
    /// Start `tgtd -f -C <control_port>` on `portals` with a sparse LUN of `size` bytes.
    /// `control_port` keeps instances (and other tests' instances) apart.
    pub fn start(control_port: u16, portals: &[SocketAddr], size: u64) -> Tgtd {
        let dir = TempDir::new("tgtd");
        let img = dir.path().join("lun1.img");
        let f = std::fs::File::create(&img).expect("create LUN image");
        f.set_len(size).expect("size LUN image");
        let log = dir.path().join("tgtd.log");
        let portal_arg = portals
            .iter()
            .map(|p| format!("portal={p}"))
            .collect::<Vec<_>>()
            .join(",");
        let child = Command::new("tgtd")
            .args([
                "-f",
                "-C",
                &control_port.to_string(),
                "--iscsi",
                &portal_arg,
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start tgtd");
        let daemon = Daemon { child, log };
        let iqn = format!("iqn.2024-01.test.peers:t{control_port}");
        let c = control_port.to_string();
        let tgtadm = |args: &[&str]| {
            let mut cmd = Command::new("tgtadm");
            cmd.args(["-C", &c, "--lld", "iscsi"]).args(args);
            run(&mut cmd, Duration::from_secs(10))
        };
        // tgtd needs a moment before its management socket answers.
        let start = Instant::now();
        loop {
            let o = tgtadm(&[
                "--mode",
                "target",
                "--op",
                "new",
                "--tid",
                "1",
                "--targetname",
                &iqn,
            ]);
            if o.success() {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("tgtd did not come up: {}", o.all());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let img_s = img.to_string_lossy().to_string();
        for args in [
            vec![
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                "1",
                "--lun",
                "1",
                "--backing-store",
                &img_s,
            ],
            vec![
                "--mode",
                "target",
                "--op",
                "bind",
                "--tid",
                "1",
                "--initiator-address",
                "ALL",
            ],
        ] {
            let o = tgtadm(&args);
            assert!(o.success(), "tgtadm {args:?}: {}", o.all());
        }
        Tgtd {
            daemon,
            iqn,
            portals: portals.to_vec(),
            control_port,
            _dir: dir,
        }
    }

    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    /// Run `tgtadm -C <port> --lld iscsi ARGS` against this instance.
    pub fn tgtadm(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("tgtadm");
        cmd.args(["-C", &self.control_port.to_string(), "--lld", "iscsi"])
            .args(args);
        run(&mut cmd, Duration::from_secs(10))
    }

    /// Require CHAP on target 1: `user`/`secret` from initiators, and answer mutual CHAP
    /// with `mutual` when given.
    pub fn require_chap(&self, user: &str, secret: &str, mutual: Option<(&str, &str)>) {
        for args in [
            vec![
                "--mode",
                "account",
                "--op",
                "new",
                "--user",
                user,
                "--password",
                secret,
            ],
            vec![
                "--mode", "account", "--op", "bind", "--tid", "1", "--user", user,
            ],
        ] {
            let o = self.tgtadm(&args);
            assert!(o.success(), "tgtadm {args:?}: {}", o.all());
        }
        if let Some((u, p)) = mutual {
            for args in [
                vec![
                    "--mode",
                    "account",
                    "--op",
                    "new",
                    "--user",
                    u,
                    "--password",
                    p,
                ],
                vec![
                    "--mode",
                    "account",
                    "--op",
                    "bind",
                    "--tid",
                    "1",
                    "--user",
                    u,
                    "--outgoing",
                ],
            ] {
                let o = self.tgtadm(&args);
                assert!(o.success(), "tgtadm {args:?}: {}", o.all());
            }
        }
    }
}

/// istgt (Debian `istgt`), a third iSCSI target: one portal group holding every portal
/// (TPGT 1: paths through it share a target port, no ALUA), LUN 0 on a sparse file. It lists
/// every portal in SendTargets. Fragile beyond login, discovery and plain I/O (its conformance
/// runs crash), so tests use it for exactly that.
pub struct Istgt {
    pub daemon: Daemon,
    pub iqn: String,
    pub portals: Vec<SocketAddr>,
    _dir: TempDir,
}

impl Istgt {
    /// Start `istgt -D` on `portals` serving `size` bytes as LUN 0; waits until every portal
    /// accepts connections.
    pub fn start(portals: &[SocketAddr], size: u64) -> Istgt {
        let dir = TempDir::new("istgt");
        let d = dir.path();
        let img = d.join("lun0.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .expect("create the LUN image");
        std::fs::write(d.join("auth.conf"), "").expect("auth.conf");
        let portal_lines: String = portals
            .iter()
            .enumerate()
            .map(|(i, p)| format!("  Portal DA{} {p}\n", i + 1))
            .collect();
        // The unit-control portal is istgt's own management port; it must not collide.
        let uc = free_port("127.0.0.1");
        let conf = format!(
            "[Global]\n  NodeBase \"iqn.2026-01.io.mpath.istgt\"\n  PidFile {pid}\n  AuthFile {auth}\n  \
             MediaDirectory {dir}\n  Timeout 30\n  NopInInterval 20\n  DiscoveryAuthMethod None\n  \
             MaxSessions 16\n  MaxConnections 4\n  FirstBurstLength 262144\n  MaxBurstLength 1048576\n  \
             MaxRecvDataSegmentLength 262144\n  InitialR2T Yes\n  ImmediateData Yes\n\
             [UnitControl]\n  AuthMethod None\n  Portal UC1 127.0.0.1:{uc}\n  Netmask 127.0.0.1\n\
             [PortalGroup1]\n{portal_lines}\
             [InitiatorGroup1]\n  InitiatorName \"ALL\"\n  Netmask 127.0.0.0/8\n\
             [LogicalUnit1]\n  TargetName disk1\n  Mapping PortalGroup1 InitiatorGroup1\n  \
             AuthMethod None\n  UseDigest Auto\n  UnitType Disk\n  QueueDepth 32\n  \
             LUN0 Storage {img} Auto\n",
            pid = d.join("istgt.pid").display(),
            auth = d.join("auth.conf").display(),
            dir = d.display(),
            img = img.display(),
        );
        let conf_path = d.join("istgt.conf");
        std::fs::write(&conf_path, conf).expect("istgt.conf");
        let log = d.join("istgt.log");
        let child = Command::new("istgt")
            .arg("-D")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(d.join("istgt.err")).expect("log"))
            .spawn()
            .expect("start istgt");
        let daemon = Daemon { child, log };
        let start = Instant::now();
        for p in portals {
            while std::net::TcpStream::connect_timeout(p, Duration::from_millis(200)).is_err() {
                if start.elapsed() > Duration::from_secs(10) {
                    panic!(
                        "istgt does not listen on {p}: {}{}",
                        daemon.log_text(),
                        std::fs::read_to_string(d.join("istgt.err")).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Istgt {
            daemon,
            iqn: "iqn.2026-01.io.mpath.istgt:disk1".into(),
            portals: portals.to_vec(),
            _dir: dir,
        }
    }
}

/// A free TCP port on `ip` (bound and released; good enough for tests on loopback).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_cunit_output() {
        let log = "Suite: A\n  Test: One ...passed\n  Test: Two ...    [SKIPPED] nope\npassed\n  Test: Three ...    [FAILED] bad\nFAILED\n    1. x.c:1 - CU_ASSERT\nSuite: B\n  Test: Four ...passed\nRun Summary: ...\n";
        let s = classify_cu_log(log);
        assert_eq!((s.pass, s.skip, s.fail), (2, 1, 1));
        assert_eq!(s.failed, vec!["A.Three".to_string()]);
    }
}
