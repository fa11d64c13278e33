//! Failover and chaos over real network paths: `mpath target` in a target namespace,
//! `mpath daemon` in an initiator namespace, joined by one veth pair per path
//! (`testkit::netns`), and the verifying workload from this process over the daemon's NBD
//! unix socket. Faults are real: iptables DROP and REJECT, random loss, links going down,
//! the target killed and restarted, the target's own delay switch for a slow path.
//!
//! Every scenario ends with every acknowledged block verified (`Workload::verify_all`) and,
//! while at least one path lives, no error seen by the workload. Each prints its longest
//! stall (the workload's longest gap without a completion) as a `STALL` line for the
//! benchmarks.
//!
//! Root only (network namespaces): without root each test says why it skips; under
//! `MPATH_REQUIRE_PEERS=1` (CI, as root) it must run. Scenarios run one at a time (a lock):
//! failure detection works in hundreds of milliseconds and the machine has two cores.
//!
//! `MPATH_CHAOS_SECS` sets how long the random-chaos scenario runs (default 120, the CI
//! version: with it the whole file takes about four minutes; the other scenarios take 10 to
//! 15 s each). `MPATH_CHAOS_SEED` replays a run (each run prints its seed).
//!
//! `loss_30_percent_one_path` and `random_chaos` found stale blocks (an acknowledged write
//! overwritten by an older one) before baeb932: a failed connection whose writer was stuck
//! on a full send buffer was closed gracefully, and the kernel went on retransmitting the
//! old write.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::netns::{require_netns, NetFault, NetLab};
use testkit::{run, Output, TempDir};
use workload::nbd::NbdClient;
use workload::verify::{Config as WorkloadConfig, Report, VerifyReport, Workload};

const IQN: &str = "iqn.2026-01.io.mpath:net";
const LUN_SIZE: u64 = 64 << 20;
const ISCSI_PORT: u16 = 3260;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mpath"))
}

/// One scenario at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process (started through `ip netns exec`, which execs it: same pid) killed and
/// reaped when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mpath target` in the target namespace: one portal per path on the target-side
/// addresses, LUN 1 backed by a file (so its data survives a restart).
struct Target {
    proc: Option<Proc>,
    ns: String,
    args: Vec<String>,
    socket: PathBuf,
    dir: PathBuf,
    portals: Vec<String>,
    starts: usize,
}

impl Target {
    fn start(lab: &NetLab, dir: &Path) -> Target {
        let img = dir.join("lun1.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(LUN_SIZE))
            .expect("LUN file");
        let portals: Vec<String> = (0..lab.paths())
            .map(|i| format!("{}:{ISCSI_PORT}", lab.target_addr(i)))
            .collect();
        let mut args = vec!["target".to_string(), "--iqn".into(), IQN.into()];
        for p in &portals {
            args.push("--portal".into());
            args.push(p.clone());
        }
        args.push("--lun".into());
        args.push(format!("file:{}", img.display()));
        let socket = dir.join("target.sock");
        args.push("--control-socket".into());
        args.push(socket.display().to_string());
        let mut t = Target {
            proc: None,
            ns: lab.target.clone(),
            args,
            socket,
            dir: dir.to_path_buf(),
            portals,
            starts: 0,
        };
        t.restart();
        t
    }

    /// Start it (again), waiting until it has bound everything.
    fn restart(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("target-{}.log", self.starts));
        let _ = std::fs::remove_file(&self.socket);
        let mut child = testkit::netns::ns_cmd(&self.ns, bin())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mpath target");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&log_path).ok();
            let mut ready = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if line.starts_with("control socket") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let p = Proc { child, log };
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("mpath target did not start:\n{}", p.log_text());
        }
        self.proc = Some(p);
    }

    /// SIGKILL: no goodbye to anyone, as a crashed or power-cycled array.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        run(
            Command::new(bin())
                .args(["target", "ctl", "--socket"])
                .arg(&self.socket)
                .args(args),
            Duration::from_secs(10),
        )
    }

    fn log_text(&self) -> String {
        self.proc.as_ref().map(Proc::log_text).unwrap_or_default()
    }
}

/// `mpath daemon` in the initiator namespace with a config file: every portal, NBD on a
/// unix socket only, the control socket in the scratch directory.
struct Daemon {
    proc: Proc,
    socket: PathBuf,
    nbd: PathBuf,
}

impl Daemon {
    fn start(lab: &NetLab, dir: &Path, defaults: &str) -> Daemon {
        let socket = dir.join("mpath.sock");
        let nbd = dir.join("nbd.sock");
        let mut cfg = format!(
            "[defaults]\nbindings_file = \"{}\"\ninitiator_name = \"iqn.2026-01.io.mpath:net-host\"\n{defaults}\n",
            dir.join("bindings").display()
        );
        for i in 0..lab.paths() {
            cfg.push_str(&format!(
                "\n[[portal]]\naddress = \"{}:{ISCSI_PORT}\"\n",
                lab.target_addr(i)
            ));
        }
        cfg.push_str(&format!(
            "\n[exports]\nnbd = \"off\"\nnbd_unix = \"{}\"\n",
            nbd.display()
        ));
        // A top-level key must come before any table: prepend it.
        let cfg = format!("control_socket = \"{}\"\n{cfg}", socket.display());
        let cfg_path = dir.join("mpath.toml");
        std::fs::write(&cfg_path, cfg).expect("daemon config");
        let log = dir.join("daemon.log");
        let child = testkit::netns::ns_cmd(&lab.initiator, bin())
            .arg("daemon")
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start mpath daemon");
        let d = Daemon {
            proc: Proc { child, log },
            socket,
            nbd,
        };
        let start = Instant::now();
        while !d.socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "daemon did not start: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log_text(&self) -> String {
        self.proc.log_text()
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut c = Command::new(bin());
        c.args(args).arg("--socket").arg(&self.socket);
        run(&mut c, Duration::from_secs(30))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.cli(&a);
        assert!(
            o.success(),
            "mpath {args:?}: {}\n{}",
            o.all(),
            self.log_text()
        );
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))
    }

    /// Wait until the map has `paths` active paths; returns its name.
    fn wait_map(&self, paths: u64, within: Duration) -> String {
        let start = Instant::now();
        loop {
            let v = self.json(&["show", "maps"]);
            if let Some(m) = v["maps"].as_array().and_then(|a| a.first()) {
                if m["active_paths"] == paths {
                    return m["name"].as_str().unwrap_or_default().to_string();
                }
            }
            assert!(
                start.elapsed() < within,
                "no map with {paths} active paths after {within:?}: {v}\n{}\n{}",
                self.cli(&["show", "paths"]).all(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `show paths --json` row of the path through `portal`.
    fn path_row(&self, portal: &str) -> Value {
        let v = self.json(&["show", "paths"]);
        v["paths"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|p| {
                        p["path"]
                            .as_str()
                            .is_some_and(|n| n.starts_with(&format!("{portal}/")))
                    })
                    .cloned()
            })
            .unwrap_or(Value::Null)
    }

    fn events(&self) -> Vec<Value> {
        self.json(&["show", "events"])["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Completed I/Os per path of the first map, keyed by path name.
    fn path_ios(&self) -> Vec<(String, u64)> {
        let v = self.json(&["show", "stats"]);
        v["maps"][0]["paths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["path"].as_str().unwrap_or_default().to_string(),
                            p["ios"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The I/O count of the path through `portal` in a [`Daemon::path_ios`] answer.
fn ios_of(v: &[(String, u64)], portal: &str) -> u64 {
    v.iter()
        .find(|(n, _)| n.starts_with(&format!("{portal}/")))
        .map_or(0, |(_, c)| *c)
}

/// Events of `kind` on the path through `portal`.
fn events_of<'a>(evs: &'a [Value], kind: &str, portal: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| e["kind"] == kind)
        .filter(|e| {
            portal.is_empty()
                || e["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("{portal}/")))
        })
        .collect()
}

fn timeline(evs: &[Value]) -> String {
    evs.iter()
        .map(|e| {
            format!(
                "{:>7} ms {:<22} {:<26} {}",
                e["t_ms"],
                e["kind"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or("-"),
                e["detail"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole setup of one scenario. Field order is drop order: the workload's runtime,
/// then the daemon and the target (their processes leave the namespaces), then the
/// namespaces, then the scratch directory, then the lock.
struct Scenario {
    name: &'static str,
    rt: tokio::runtime::Runtime,
    daemon: Daemon,
    target: Target,
    lab: NetLab,
    map: String,
    _dir: TempDir,
    started: Instant,
    _serial: MutexGuard<'static, ()>,
}

/// A workload running on the scenario's runtime.
struct Load {
    w: Arc<Workload<NbdClient>>,
    client: NbdClient,
    handle: Option<tokio::task::JoinHandle<Report>>,
}

impl Scenario {
    /// `None` when the test must skip (no root).
    fn new(name: &'static str, paths: usize, defaults: &str) -> Option<Scenario> {
        if !require_netns(name) {
            return None;
        }
        let serial = serial();
        let started = Instant::now();
        let dir = TempDir::new(name);
        let lab = NetLab::new("ns", paths);
        let target = Target::start(&lab, dir.path());
        let daemon = Daemon::start(&lab, dir.path(), defaults);
        let map = daemon.wait_map(paths as u64, Duration::from_secs(20));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Some(Scenario {
            name,
            rt,
            daemon,
            target,
            lab,
            map,
            _dir: dir,
            started,
            _serial: serial,
        })
    }

    fn portal(&self, i: usize) -> String {
        self.target.portals[i].clone()
    }

    /// Start the verifying workload over the NBD unix socket: 4 KiB blocks over the LUN,
    /// half reads, depth 8.
    fn load(&self, secs: f64, drain: Duration) -> Load {
        let client = self
            .rt
            .block_on(NbdClient::connect_unix(&self.daemon.nbd, &self.map))
            .unwrap_or_else(|e| panic!("NBD connect: {e}\n{}", self.daemon.log_text()));
        let cfg = WorkloadConfig {
            duration: Duration::from_secs_f64(secs),
            drain_timeout: drain,
            seed: std::process::id() as u64,
            ..WorkloadConfig::for_region(0, client.size())
        };
        let w = Arc::new(Workload::new(client.clone(), cfg).expect("workload config"));
        let mut l = Load {
            w,
            client,
            handle: None,
        };
        self.rerun(&mut l);
        l
    }

    /// Another run of the same workload (block state carries over).
    fn rerun(&self, l: &mut Load) {
        let w = l.w.clone();
        l.handle = Some(self.rt.spawn(async move { w.run().await }));
    }

    fn finish(&self, l: &mut Load) -> Report {
        let h = l.handle.take().expect("a run in progress");
        self.rt.block_on(h).expect("workload task")
    }

    fn verify(&self, l: &Load) -> VerifyReport {
        let w = l.w.clone();
        self.rt.block_on(async move { w.verify_all().await })
    }

    fn close(&self, l: Load) {
        let _ = self.rt.block_on(l.client.disconnect());
    }

    /// Everything a failure message needs.
    fn context(&self) -> String {
        format!(
            "--- paths\n{}\n--- stats\n{}\n--- events\n{}\n--- daemon log (tail)\n{}\n--- target log (tail)\n{}",
            self.daemon.cli(&["show", "paths"]).all(),
            self.daemon.cli(&["show", "stats"]).all(),
            timeline(&self.daemon.events()),
            tail(&self.daemon.log_text(), 60),
            tail(&self.target.log_text(), 30),
        )
    }

    /// The run saw no error and no bad block, and nothing was left unanswered.
    fn assert_clean(&self, r: &Report, what: &str) {
        assert!(
            r.clean() && r.unfinished == 0 && r.ops > 0,
            "{}: {what}: ops {} errors {} unfinished {} corrupt {} stale {} misplaced {}\n{:?}\n{}",
            self.name,
            r.ops,
            r.errors,
            r.unfinished,
            r.corrupt,
            r.stale,
            r.misplaced,
            r.messages,
            self.context()
        );
    }

    fn assert_verified(&self, v: &VerifyReport) {
        assert!(
            v.clean(),
            "{}: verify_all: {} blocks, {} verified, {} unwritten, corrupt {} stale {} misplaced {} errors {}\n{:?}\n{}",
            self.name,
            v.blocks,
            v.verified,
            v.unwritten,
            v.corrupt,
            v.stale,
            v.misplaced,
            v.errors,
            v.messages,
            self.context()
        );
        assert!(v.verified > 0, "{}: nothing was verified", self.name);
    }

    /// The stall figures for the benchmarks, on stderr.
    fn record(&self, r: &Report, v: &VerifyReport) {
        let gaps = r
            .longest_gaps
            .iter()
            .map(|g| format!("{:.0} ms at {:.1} s", g.ms, g.at_s))
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "STALL {}: longest gap {:.0} ms ({gaps}); {} ops in {:.1} s, {} errors, max latency {:.0} ms; verified {} blocks ({} never written); scenario {:.1} s",
            self.name,
            r.longest_gap_ms(),
            r.ops,
            r.seconds,
            r.errors,
            r.latency_max_ms,
            v.verified,
            v.unwritten,
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One path broken by `fault` at 3 s and healed at 8 s under a 12 s workload: no error,
/// every block verified, the failure in the timeline, both paths back at the end.
fn one_path_fault(name: &'static str, fault: NetFault) {
    let Some(s) = Scenario::new(name, 2, "") else {
        return;
    };
    let mut l = s.load(12.0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    s.lab.fault(0, fault);
    let at = Instant::now();
    // When the daemon fails the path (polled, so within a CLI round trip).
    let mut detected = None;
    while detected.is_none() && at.elapsed() < Duration::from_secs(4) {
        if s.daemon.path_row(&s.portal(0))["dm_state"] == "failed" {
            detected = Some(at.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    // While the path is failed, I/O goes only down the other one.
    let during = s.daemon.path_ios();
    std::thread::sleep(Duration::from_secs(5).saturating_sub(at.elapsed()));
    let after = s.daemon.path_ios();
    let dropped = s.lab.dropped_packets(0);
    s.lab.clear(0);
    let r = s.finish(&mut l);
    s.assert_clean(&r, &format!("{fault} on one path"));
    let v = s.verify(&l);
    s.assert_verified(&v);
    s.record(&r, &v);
    let delta = |portal: &str| ios_of(&after, portal).saturating_sub(ios_of(&during, portal));
    let (broken, healthy) = (delta(&s.portal(0)), delta(&s.portal(1)));
    eprintln!(
        "{name}: {fault}: path seen failed {} after the fault; while failed: {broken} I/Os on it, {healthy} on the other",
        detected.map_or("never (in 4 s)".to_string(), |d| format!("{} ms", d.as_millis()))
    );
    assert!(
        detected.is_some(),
        "{name}: the path was not failed within 4 s:\n{}",
        s.context()
    );
    assert!(
        broken == 0 && healthy > 0,
        "{name}: I/O on the failed path {broken}, on the healthy one {healthy}:\n{}",
        s.context()
    );
    let evs = s.daemon.events();
    let failed = events_of(&evs, "path-failed", &s.portal(0));
    assert!(
        !failed.is_empty(),
        "{name}: the path did not fail ({dropped} packets dropped):\n{}",
        s.context()
    );
    eprintln!(
        "{name}: {fault}: path failed at {} ({}), {dropped} packets matched by the fault rules",
        failed[0]["t_ms"],
        failed[0]["detail"].as_str().unwrap_or("")
    );
    // The healed path comes back on its own (re-login, then the checker).
    s.daemon.wait_map(2, Duration::from_secs(15));
    s.close(l);
}

#[test]
fn blackhole_one_path() {
    one_path_fault("blackhole_one_path", NetFault::Blackhole);
}

#[test]
fn tcp_reset_one_path() {
    one_path_fault("tcp_reset_one_path", NetFault::Reset);
}

#[test]
fn link_down_one_path() {
    one_path_fault("link_down_one_path", NetFault::LinkDown);
}

/// 30 % of packets lost on one path (each direction) for 8 s: whatever the daemon makes of
/// the path (slow, failed, flapping), the workload sees no error and no bad block.
#[test]
fn loss_30_percent_one_path() {
    let name = "loss_30_percent_one_path";
    let Some(s) = Scenario::new(name, 2, "") else {
        return;
    };
    let mut l = s.load(12.0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    s.lab.fault(0, NetFault::Loss(0.3));
    std::thread::sleep(Duration::from_secs(8));
    let dropped = s.lab.dropped_packets(0);
    s.lab.clear(0);
    let r = s.finish(&mut l);
    s.assert_clean(&r, "30 % loss on one path");
    let v = s.verify(&l);
    s.assert_verified(&v);
    s.record(&r, &v);
    assert!(dropped > 0, "{name}: the loss rule dropped nothing");
    let evs = s.daemon.events();
    eprintln!(
        "{name}: {dropped} packets lost; path failures {}, reinstatements {}",
        events_of(&evs, "path-failed", &s.portal(0)).len(),
        events_of(&evs, "path-reinstated", &s.portal(0)).len()
    );
    s.close(l);
}

/// A link flapping every 300 ms (down 300 ms, up 300 ms) for 6 s: the daemon damps it —
/// marks it marginal and holds it out instead of following every bounce — and the workload
/// never notices. After the flapping stops, the path is reinstated once the hold is over.
#[test]
fn flapping_path_is_damped() {
    let name = "flapping_path_is_damped";
    let Some(s) = Scenario::new(
        name,
        2,
        "flap_damping = true\nmarginal_failures = 3\nmarginal_window = \"60s\"\nmarginal_hold = \"5s\"\nchecker_interval = \"1s\"",
    ) else {
        return;
    };
    let mut l = s.load(12.0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let flap_start = Instant::now();
    let mut flaps = 0;
    while flap_start.elapsed() < Duration::from_secs(6) {
        s.lab.link_down(0);
        std::thread::sleep(Duration::from_millis(300));
        s.lab.link_up(0);
        std::thread::sleep(Duration::from_millis(300));
        flaps += 1;
    }
    // Right after the flapping: healthy link, but the path is held out.
    let row = s.daemon.path_row(&s.portal(0));
    let held_note = row["note"].as_str().unwrap_or("").to_string();
    let r = s.finish(&mut l);
    s.assert_clean(&r, "a flapping path");
    let v = s.verify(&l);
    s.assert_verified(&v);
    s.record(&r, &v);
    let evs = s.daemon.events();
    let p = s.portal(0);
    let failed = events_of(&evs, "path-failed", &p).len();
    let reinstated = events_of(&evs, "path-reinstated", &p).len();
    let delayed = events_of(&evs, "path-reinstate-delayed", &p).len();
    eprintln!(
        "{name}: {flaps} flaps; path failed {failed}x, reinstated {reinstated}x, reinstatement delayed {delayed}x; note after flapping: {held_note:?}"
    );
    assert!(
        delayed > 0 || held_note.contains("marginal"),
        "{name}: the flapping path was not damped (note {held_note:?}):\n{}",
        s.context()
    );
    // Not followed: far fewer reinstatements than bounces (3 failures make it marginal).
    assert!(
        reinstated <= 4 && reinstated < flaps,
        "{name}: the path was reinstated {reinstated} times in {flaps} flaps:\n{}",
        s.context()
    );
    // Healthy for longer than the hold: back in service.
    s.daemon.wait_map(2, Duration::from_secs(15));
    s.close(l);
}

/// The target is killed (every path down at once) and started again 2 s later, well within
/// `no_path_retry`: I/O queues and then completes — no error, nothing lost.
#[test]
fn target_restart_within_no_path_window() {
    let name = "target_restart_within_no_path_window";
    let Some(mut s) = Scenario::new(name, 2, "no_path_retry = \"30s\"") else {
        return;
    };
    let mut l = s.load(12.0, Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(3));
    let killed = Instant::now();
    s.target.kill();
    std::thread::sleep(Duration::from_secs(3));
    let during = l.w.progress();
    s.target.restart();
    let down = killed.elapsed();
    let r = s.finish(&mut l);
    s.assert_clean(&r, "target restart");
    // Every path down, I/O queued: the daemon hurries the re-logins (every 200 ms), so the
    // application waits for the target's downtime and not much more — not for a re-login
    // back-off step that has grown to seconds.
    let stall = Duration::from_secs_f64(r.longest_gap_ms() / 1000.0);
    eprintln!("{name}: target down {down:?}, longest I/O stall {stall:?}");
    assert!(
        stall <= down + Duration::from_millis(500),
        "{name}: the stall ({stall:?}) outlasted the target's downtime ({down:?}) by more than 500 ms\n{}",
        s.context()
    );
    let v = s.verify(&l);
    s.assert_verified(&v);
    s.record(&r, &v);
    let evs = s.daemon.events();
    assert!(
        !events_of(&evs, "queueing-started", "").is_empty()
            && !events_of(&evs, "queueing-ended", "").is_empty(),
        "{name}: no queueing episode while the target was down:\n{}",
        s.context()
    );
    assert_eq!(during.errors, 0);
    s.daemon.wait_map(2, Duration::from_secs(15));
    s.close(l);
}

/// Every path blackholed for longer than `no_path_retry` (3 s): I/O fails cleanly (errors,
/// no request left hanging) while no path lives; afterwards the acknowledged data is intact
/// and I/O runs cleanly again.
#[test]
fn all_paths_down_past_no_path_window() {
    let name = "all_paths_down_past_no_path_window";
    let Some(s) = Scenario::new(
        name,
        2,
        "no_path_retry = \"3s\"\nstale_write_fence = \"5s\"",
    ) else {
        return;
    };
    let mut l = s.load(10.0, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let before = l.w.progress();
    s.lab.fault(0, NetFault::Blackhole);
    s.lab.fault(1, NetFault::Blackhole);
    let outage = Instant::now();
    // Watch for the first error: the queue gives up after 3 s instead of hanging.
    let mut first_error = None;
    let mut maps = String::new();
    while outage.elapsed() < Duration::from_secs(7) {
        std::thread::sleep(Duration::from_millis(100));
        if first_error.is_none() && l.w.progress().errors > before.errors {
            first_error = Some(outage.elapsed());
            maps = s.daemon.cli(&["show", "maps"]).stdout;
        }
    }
    let during = l.w.progress();
    s.lab.clear_all();
    let r = s.finish(&mut l);
    eprintln!(
        "{name}: before the outage {} ops / {} errors; first error {:.1} s into the outage; during {} ops / {} errors ({}); run: {} errors, {} unfinished, {:?}",
        before.ops,
        before.errors,
        first_error.map_or(f64::NAN, |d| d.as_secs_f64()),
        during.ops,
        during.errors,
        maps.trim(),
        r.errors,
        r.unfinished,
        r.messages.first()
    );
    assert_eq!(before.errors, 0, "{name}: errors while both paths lived");
    assert!(
        during.errors > 0,
        "{name}: no error 7 s into an outage with no_path_retry 3s (I/O hangs?):\n{}",
        s.context()
    );
    // Clean errors: EIO, as the daemon gives for "no usable path".
    assert!(
        !r.messages.is_empty() && r.messages.iter().all(|m| m.contains("EIO")),
        "{name}: errors other than EIO: {:?}",
        r.messages
    );
    assert_eq!(
        r.unfinished,
        0,
        "{name}: requests left hanging:\n{}",
        s.context()
    );
    assert!(
        r.corrupt == 0 && r.stale == 0 && r.misplaced == 0,
        "{name}: bad blocks: {:?}\n{}",
        r.messages,
        s.context()
    );
    // The map said why while it failed I/O. (Not from the timeline: every failed I/O is an
    // event there, and tens of thousands of them push the older events out.)
    assert!(
        maps.contains("failing (no path)"),
        "{name}: the map did not say it was failing I/O: {maps}\n{}",
        s.context()
    );
    // Paths back: the acknowledged data is intact and I/O runs cleanly again.
    s.daemon.wait_map(2, Duration::from_secs(15));
    let v = s.verify(&l);
    s.assert_verified(&v);
    s.record(&r, &v);
    let mut l2 = l;
    // Same blocks, a fresh run.
    s.rerun_short(&mut l2);
    let r2 = s.finish(&mut l2);
    s.assert_clean(&r2, "after the outage");
    let v2 = s.verify(&l2);
    s.assert_verified(&v2);
    s.close(l2);
}

impl Scenario {
    /// A 3 s run of the workload's same blocks (its duration is fixed: stop it after 3 s).
    fn rerun_short(&self, l: &mut Load) {
        self.rerun(l);
        let w = l.w.clone();
        self.rt.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            w.stop();
        });
    }
}

/// One path 200 ms slower (the target delays every PDU it sends on that portal):
/// service-time sends most I/O down the fast path.
#[test]
fn slow_path_is_avoided_by_service_time() {
    let name = "slow_path_is_avoided_by_service_time";
    let Some(s) = Scenario::new(name, 2, "selector = \"service-time\"") else {
        return;
    };
    let slow = s.portal(1);
    let o = s.target.ctl(&["fault", &slow, "delay", "200"]);
    assert!(o.success(), "{}", o.all());
    let mut l = s.load(8.0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let a = s.daemon.path_ios();
    let r = s.finish(&mut l);
    let b = s.daemon.path_ios();
    assert!(s.target.ctl(&["fault", &slow, "clear"]).success());
    s.assert_clean(&r, "a slow path");
    let v = s.verify(&l);
    s.assert_verified(&v);
    s.record(&r, &v);
    let delta = |portal: &str| ios_of(&b, portal).saturating_sub(ios_of(&a, portal));
    let (fast_ios, slow_ios) = (delta(&s.portal(0)), delta(&slow));
    let share = fast_ios as f64 / (fast_ios + slow_ios).max(1) as f64;
    eprintln!(
        "{name}: fast path {fast_ios} I/Os, slow path (+200 ms) {slow_ios} I/Os: {:.1} % on the fast path",
        share * 100.0
    );
    assert!(
        fast_ios > 0 && share >= 0.9,
        "{name}: service-time did not steer away from the slow path: fast {fast_ios}, slow {slow_ios}\n{}",
        s.context()
    );
    s.close(l);
}

/// A small deterministic generator (xorshift64*): no extra crate, and a seed to replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A chaos fault: a network one, or the target's delay switch.
#[derive(Clone, Copy, Debug)]
enum Chaos {
    Net(NetFault),
    Delay(u64),
}

/// Random faults on random paths for `MPATH_CHAOS_SECS` (default 120): every 0.5–3 s a path
/// is broken (blackhole, reset, link down, loss, rate limit, delay) or healed, never the
/// last one the daemon still uses. No error, every block verified.
#[test]
fn random_chaos() {
    let name = "random_chaos";
    let secs: u64 = std::env::var("MPATH_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("MPATH_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let Some(s) = Scenario::new(name, 3, "") else {
        return;
    };
    eprintln!("{name}: {secs} s, seed {seed} (MPATH_CHAOS_SECS, MPATH_CHAOS_SEED)");
    let mut rng = Rng(seed);
    let n = s.lab.paths();
    let mut faulted: Vec<Option<Chaos>> = vec![None; n];
    let mut l = s.load(secs as f64, Duration::from_secs(60));
    let start = Instant::now();
    let mut log = Vec::new();
    let heal = |s: &Scenario, i: usize, f: Chaos| match f {
        Chaos::Net(_) => s.lab.clear(i),
        Chaos::Delay(_) => {
            assert!(s.target.ctl(&["fault", &s.portal(i), "clear"]).success());
        }
    };
    // Stop the faults a little before the end: the last ones heal while I/O still runs.
    while start.elapsed() + Duration::from_secs(3) < Duration::from_secs(secs) {
        let i = rng.below(n as u64) as usize;
        let t = start.elapsed().as_secs_f64();
        if let Some(f) = faulted[i].take() {
            heal(&s, i, f);
            log.push(format!("{t:6.1}s path {} healed", i + 1));
        } else {
            // Never the last path in use: another path must be unfaulted and active.
            let others_alive = (0..n)
                .filter(|&j| j != i && faulted[j].is_none())
                .any(|j| s.daemon.path_row(&s.portal(j))["dm_state"] == "active");
            if others_alive {
                let f = match rng.below(6) {
                    0 => Chaos::Net(NetFault::Blackhole),
                    1 => Chaos::Net(NetFault::Reset),
                    2 => Chaos::Net(NetFault::LinkDown),
                    3 => Chaos::Net(NetFault::Loss(0.3)),
                    4 => Chaos::Net(NetFault::Rate { kbit: 2000 }),
                    _ => Chaos::Delay(50 + rng.below(200)),
                };
                match f {
                    Chaos::Net(nf) => s.lab.fault(i, nf),
                    Chaos::Delay(ms) => {
                        let o = s
                            .target
                            .ctl(&["fault", &s.portal(i), "delay", &ms.to_string()]);
                        assert!(o.success(), "{}", o.all());
                    }
                }
                faulted[i] = Some(f);
                log.push(format!("{t:6.1}s path {} {f:?}", i + 1));
            }
        }
        std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
    }
    for (i, f) in faulted.iter_mut().enumerate() {
        if let Some(f) = f.take() {
            heal(&s, i, f);
        }
    }
    let r = s.finish(&mut l);
    eprintln!("{name}: faults\n{}", log.join("\n"));
    s.assert_clean(&r, &format!("chaos (seed {seed})"));
    let v = s.verify(&l);
    s.assert_verified(&v);
    s.record(&r, &v);
    let evs = s.daemon.events();
    eprintln!(
        "{name}: {} faults injected; path failures {}, reinstatements {}, delayed reinstatements {}, requeued I/Os {}",
        log.iter().filter(|l| !l.ends_with("healed")).count(),
        events_of(&evs, "path-failed", "").len(),
        events_of(&evs, "path-reinstated", "").len(),
        events_of(&evs, "path-reinstate-delayed", "").len(),
        events_of(&evs, "io-requeued", "").len(),
    );
    s.close(l);
}
