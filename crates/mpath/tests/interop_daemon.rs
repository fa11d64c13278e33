//! The daemon as operators run it: `mpath target` (or tgtd) with two portals, `mpath
//! daemon`, the CLI, and real clients on the NBD export and the FUSE file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{free_port, require, run, Istgt, MpathTarget, Output, TempDir, Tgtd};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mpath"))
}

struct DaemonProc {
    child: Child,
    socket: PathBuf,
    nbd: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DaemonProc {
    fn start(portals: &[SocketAddr], extra: &[&str]) -> DaemonProc {
        let dir = TempDir::new("daemon");
        let socket = dir.path().join("mpath.sock");
        let log = dir.path().join("daemon.log");
        let nbd: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .arg("--nbd")
            .arg(nbd.to_string());
        for p in portals {
            cmd.arg("--portal").arg(p.to_string());
        }
        cmd.args(extra);
        let child = cmd
            .env("RUST_LOG", "info")
            // The bindings file (names) in the test's directory, not the host's.
            .env("STATE_DIRECTORY", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mpath daemon");
        let d = DaemonProc {
            child,
            socket,
            nbd,
            log,
            _dir: dir,
        };
        let start = Instant::now();
        while !d.socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "daemon did not start: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut c = Command::new(bin());
        c.args(args).arg("--socket").arg(&self.socket);
        run(&mut c, Duration::from_secs(30))
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
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

    /// Wait for one map with `paths` active paths; returns its name.
    fn wait_map(&self, paths: usize) -> String {
        let start = Instant::now();
        loop {
            let v = self.json(&["show", "maps"]);
            if let Some(m) = v["maps"].as_array().and_then(|a| a.first()) {
                if m["active_paths"] == paths {
                    return m["name"].as_str().unwrap().to_string();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no map with {paths} active paths: {v}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn tool(args: &[&str], secs: u64) -> Output {
    let (c, rest) = args.split_first().unwrap();
    run(Command::new(c).args(rest), Duration::from_secs(secs))
}

fn nbd_uri(d: &DaemonProc, map: &str) -> String {
    format!("nbd://{}/{}", d.nbd, map)
}

fn two_portal_mpath_target() -> MpathTarget {
    MpathTarget::start(
        bin(),
        &[
            "--iqn",
            "iqn.2026-01.io.mpath:daemon",
            "--portal",
            "127.0.0.2:0",
            "--portal",
            "127.0.0.3:0",
            "--lun",
            "mem:256M",
        ],
    )
}

#[test]
fn topology_nbd_clients_and_operator_commands() {
    if !require("daemon_nbd", &["nbdinfo", "qemu-img", "fio"]) {
        return;
    }
    let t = two_portal_mpath_target();
    // One portal given: discovery finds the other.
    let d = DaemonProc::start(&t.portals[..1], &[]);
    let map = d.wait_map(2);
    let topo = d.cli(&["show", "topology"]);
    assert!(topo.success());
    assert!(
        topo.stdout.starts_with(&format!("{map} (3")),
        "{}",
        topo.stdout
    );
    assert!(
        topo.stdout
            .contains("size=256M features='1 queue_if_no_path' hwhandler='1 alua' wp=rw"),
        "{}",
        topo.stdout
    );
    assert_eq!(
        topo.stdout.matches("active ready running").count(),
        2,
        "{}",
        topo.stdout
    );

    // nbdinfo: the size.
    let o = tool(&["nbdinfo", "--json", &nbd_uri(&d, &map)], 20);
    assert!(o.success(), "{}", o.all());
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["exports"][0]["export-size"], 256u64 << 20, "{v}");

    // qemu-img: 64 MiB of random data in and back out, identical.
    let dir = TempDir::new("qemu");
    let src = dir.path().join("src.img");
    let back = dir.path().join("back.img");
    let o = tool(
        &[
            "dd",
            "if=/dev/urandom",
            &format!("of={}", src.display()),
            "bs=1M",
            "count=64",
            "status=none",
        ],
        60,
    );
    assert!(o.success());
    let o = tool(
        &[
            "qemu-img",
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &nbd_uri(&d, &map),
        ],
        120,
    );
    assert!(o.success(), "qemu-img in: {}", o.all());
    let o = tool(&["qemu-img", "convert", "-O", "raw", "--image-opts", &format!("driver=raw,file.driver=nbd,file.server.type=inet,file.server.host={},file.server.port={},file.export={map}", d.nbd.ip(), d.nbd.port()), back.to_str().unwrap()], 120);
    assert!(o.success(), "qemu-img out: {}", o.all());
    let a = std::fs::read(&src).unwrap();
    let b = std::fs::read(&back).unwrap();
    assert!(
        b.len() >= a.len() && a[..] == b[..a.len()],
        "64 MiB came back different"
    );

    // fio randrw with verification, while an operator fails and reinstates a path.
    let fio = Command::new("fio")
        .args([
            "--name=v",
            "--ioengine=nbd",
            &format!("--uri={}", nbd_uri(&d, &map)),
            "--rw=randrw",
            "--bs=4k",
            "--size=32M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_state_save=0",
            "--time_based=0",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio");
    std::thread::sleep(Duration::from_millis(300));
    let p0 = t.portals[0].to_string();
    let o = d.cli(&["fail", "path", &p0]);
    assert!(o.success(), "{}", o.all());
    let topo = d.cli(&["show", "topology"]);
    assert!(
        topo.stdout.contains("failed") && topo.stdout.contains("[failed by operator]"),
        "{}",
        topo.stdout
    );
    std::thread::sleep(Duration::from_millis(500));
    let o = d.cli(&["reinstate", "path", &p0]);
    assert!(o.success(), "{}", o.all());
    let out = fio.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap_or(0)..]).unwrap();
    assert_eq!(v["jobs"][0]["error"], 0, "{v}");
    assert_eq!(d.json(&["show", "maps"])["maps"][0]["active_paths"], 2);

    // The operator's actions are in the timeline.
    let ev = d.cli(&["show", "events"]);
    assert!(
        ev.stdout.contains("fail path") && ev.stdout.contains("reinstate path"),
        "{}",
        ev.stdout
    );
    // Errors name what is wrong.
    let o = d.cli(&["fail", "path", "10.9.9.9:3260"]);
    assert!(!o.success() && o.all().contains("no path"), "{}", o.all());
    let o = d.cli(&["switchgroup", "nosuchmap", "1"]);
    assert!(!o.success() && o.all().contains("no map"), "{}", o.all());
}

/// fio verifying through the export while the target blackholes one portal: 0 errors.
fn blackhole_during_fio(
    d: &DaemonProc,
    map: &str,
    blackhole: impl FnOnce(),
    restore: impl FnOnce(),
) {
    let fio = Command::new("fio")
        .args([
            "--name=v",
            "--ioengine=nbd",
            &format!("--uri={}", nbd_uri(d, map)),
            "--rw=randrw",
            "--bs=4k",
            "--size=64M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_state_save=0",
            "--runtime=6",
            "--time_based=1",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio");
    std::thread::sleep(Duration::from_secs(2));
    blackhole();
    std::thread::sleep(Duration::from_secs(2));
    restore();
    let out = fio.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap_or(0)..]).unwrap();
    assert_eq!(v["jobs"][0]["error"], 0, "{v}");
    let ev = d.cli(&["show", "events"]);
    assert!(
        ev.stdout.contains("path-failed"),
        "the failure is visible: {}",
        ev.stdout
    );
}

/// A silent blackhole of one portal on loopback: iptables drops its packets both ways
/// (root only). Lifted when dropped, whatever the test did.
struct LoopbackBlackhole {
    rules: [Vec<String>; 2],
    active: std::cell::Cell<bool>,
}

impl LoopbackBlackhole {
    fn new(p: SocketAddr) -> LoopbackBlackhole {
        let rule = |addr: &str, port: &str| -> Vec<String> {
            [
                addr,
                &p.ip().to_string(),
                "-p",
                "tcp",
                port,
                &p.port().to_string(),
                "-j",
                "DROP",
            ]
            .map(String::from)
            .to_vec()
        };
        LoopbackBlackhole {
            rules: [rule("-d", "--dport"), rule("-s", "--sport")],
            active: std::cell::Cell::new(false),
        }
    }

    fn iptables(op: &str, rule: &[String]) -> Output {
        let mut c = Command::new("iptables");
        c.args(["-w", op, "INPUT"]).args(rule);
        run(&mut c, Duration::from_secs(10))
    }

    fn on(&self) {
        for r in &self.rules {
            let o = Self::iptables("-I", r);
            assert!(o.success(), "iptables: {}", o.all());
        }
        self.active.set(true);
    }

    fn off(&self) {
        if self.active.replace(false) {
            for r in &self.rules {
                let _ = Self::iptables("-D", r);
            }
        }
    }
}

impl Drop for LoopbackBlackhole {
    fn drop(&mut self) {
        self.off();
    }
}

#[test]
fn blackhole_under_fio_mpath_target() {
    if !require("daemon_blackhole", &["fio"]) {
        return;
    }
    let t = two_portal_mpath_target();
    // Both portals configured, and each one's discovery lists both: still one session per
    // portal, one path each.
    let d = DaemonProc::start(&t.portals, &[]);
    let map = d.wait_map(2);
    std::thread::sleep(Duration::from_millis(300));
    let st = d.json(&["show", "status"]);
    assert_eq!(st["sessions"], 2, "{st}");
    assert_eq!(
        d.json(&["show", "paths"])["paths"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let p = t.portals[0].to_string();
    blackhole_during_fio(
        &d,
        &map,
        || assert!(t.ctl(bin(), &["fault", &p, "blackhole"]).success()),
        || assert!(t.ctl(bin(), &["fault", &p, "clear"]).success()),
    );
}

#[test]
fn blackhole_under_fio_tgtd() {
    if !require("daemon_tgtd", &["fio", "tgtd", "tgtadm"]) {
        return;
    }
    let portals: Vec<SocketAddr> = vec![
        format!("127.0.0.6:{}", free_port("127.0.0.6"))
            .parse()
            .unwrap(),
        format!("127.0.0.7:{}", free_port("127.0.0.7"))
            .parse()
            .unwrap(),
    ];
    let t = Tgtd::start(7341, &portals, 256 << 20);
    // tgtd lists only the portal asked: give both.
    let d = DaemonProc::start(&portals, &[]);
    let map = d.wait_map(2);
    // tgtd has no fault switch. As root, a real blackhole: iptables drops the portal's
    // packets both ways (loopback only). Otherwise the target is taken offline, which
    // closes its connections.
    let p = portals[0];
    if testkit::netns::is_root() && testkit::have("iptables") {
        let hole = LoopbackBlackhole::new(p);
        blackhole_during_fio(&d, &map, || hole.on(), || hole.off());
        let ev = d.cli(&["show", "events"]);
        assert!(
            ev.stdout.contains("stalled"),
            "a silent blackhole, found by the keepalive: {}",
            ev.stdout
        );
    } else {
        blackhole_during_fio(
            &d,
            &map,
            || {
                let o = t.tgtadm(&[
                    "--mode", "target", "--op", "update", "--tid", "1", "--name", "state",
                    "--value", "offline",
                ]);
                assert!(o.success(), "{}", o.all());
            },
            || {
                let o = t.tgtadm(&[
                    "--mode", "target", "--op", "update", "--tid", "1", "--name", "state",
                    "--value", "ready",
                ]);
                assert!(o.success(), "{}", o.all());
            },
        );
    }
}

/// `mpath persist` against tgtd: a key registered on both paths of the map, another host
/// (a second daemon with its own initiator name) registered and then preempted, and a
/// registrants-only reservation that holds while fio verifies through a silent blackhole
/// of the portal whose path reserved — no RESERVATION CONFLICT reaches the client.
#[test]
fn persistent_reservations_through_the_map_on_tgtd() {
    if !require("persist_tgtd", &["fio", "tgtd", "tgtadm", "iptables"]) {
        return;
    }
    let portals: Vec<SocketAddr> = vec![
        format!("127.0.0.8:{}", free_port("127.0.0.8"))
            .parse()
            .unwrap(),
        format!("127.0.0.9:{}", free_port("127.0.0.9"))
            .parse()
            .unwrap(),
    ];
    let _t = Tgtd::start(7342, &portals, 128 << 20);
    let d = DaemonProc::start(&portals, &[]);
    let map = d.wait_map(2);
    let ok = |d: &DaemonProc, args: &[&str]| -> String {
        let o = d.cli(args);
        assert!(o.success(), "mpath {args:?}: {}\n{}", o.all(), d.log_text());
        o.stdout
    };
    let reg = ok(&d, &["persist", &map, "register", "0xabc"]);
    assert_eq!(reg.matches(": registered").count(), 2, "{reg}");
    let keys = ok(&d, &["persist", &map, "keys"]);
    assert!(
        keys.contains("2 registered") && keys.contains("0xabc"),
        "{keys}"
    );
    let caps = ok(&d, &["persist", &map, "capabilities"]);
    assert!(caps.contains("Report capabilities"), "{caps}");

    // Another host registers through its own map, then is preempted by ours.
    let other = DaemonProc::start(
        &portals,
        &["--initiator", "iqn.2026-01.io.mpath:other-host"],
    );
    let other_map = other.wait_map(2);
    ok(&other, &["persist", &other_map, "register", "0xbad"]);
    let keys = ok(&d, &["persist", &map, "keys"]);
    assert!(
        keys.contains("4 registered") && keys.contains("0xbad"),
        "{keys}"
    );
    let reserved = ok(&d, &["persist", &map, "reserve", "we-ro"]);
    // The path that reserved: the one the blackhole takes below.
    let holder: SocketAddr = reserved
        .split("(through ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no path named in {reserved:?}"));
    assert!(portals.contains(&holder), "{reserved}");
    ok(&d, &["persist", &map, "preempt", "0xbad", "we-ro"]);
    let keys = ok(&d, &["persist", &map, "keys"]);
    assert!(
        keys.contains("2 registered") && !keys.contains("0xbad"),
        "{keys}"
    );
    drop(other);

    // Failover with the reservation held: every path is a registrant.
    let hole = LoopbackBlackhole::new(holder);
    blackhole_during_fio(&d, &map, || hole.on(), || hole.off());
    // The path that came back had its key put back before it carried I/O again.
    let start = Instant::now();
    loop {
        let ev = d.cli(&["show", "events"]).stdout;
        if ev.contains("a path that joined or came back") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the recovered path was not registered again: {ev}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // tgtd takes a logged-in-again session for a new I_T nexus and keeps the old one's
    // registration: two or more keys, all the map's.
    let keys = ok(&d, &["persist", &map, "keys"]);
    let listed: Vec<&str> = keys.lines().skip(1).map(str::trim).collect();
    assert!(
        listed.len() >= 2 && listed.iter().all(|k| *k == "0xabc"),
        "{keys}"
    );
    let res = ok(&d, &["persist", &map, "reservation"]);
    assert!(
        res.contains("Key = 0xabc") && res.contains("registrants only"),
        "{res}"
    );
    // tgtd keeps the reservation with the nexus that reserved, gone with the blackholed
    // session: a release through the map cannot drop it, and says so; a clear does.
    let rel = d.cli(&["persist", &map, "release", "we-ro"]);
    assert!(
        !rel.success() && rel.stderr.contains("still held"),
        "{}",
        rel.all()
    );
    ok(&d, &["persist", &map, "clear"]);
    let res = ok(&d, &["persist", &map, "reservation"]);
    assert!(res.contains("no reservation"), "{res}");
    let keys = ok(&d, &["persist", &map, "keys"]);
    assert!(keys.contains("0 registered"), "{keys}");
}

/// istgt as a third target: discovery lists both portals, `mpath iscsi io --verify`, the
/// daemon's map over both, and (as root) fio verify through a silent blackhole of one portal.
#[test]
fn istgt_io_verify_and_blackhole_under_fio() {
    if !require("daemon_istgt", &["fio", "istgt"]) {
        return;
    }
    let portals: Vec<SocketAddr> = ["127.0.0.10", "127.0.0.11"]
        .map(|ip| format!("{ip}:{}", free_port(ip)).parse().unwrap())
        .to_vec();
    let t = Istgt::start(&portals, 256 << 20);
    let o = run(
        Command::new(bin()).args(["iscsi", "discover", &portals[0].to_string()]),
        Duration::from_secs(30),
    );
    assert!(o.success(), "{}", o.all());
    for p in &portals {
        assert!(o.stdout.contains(&p.to_string()), "{}", o.stdout);
    }
    let o = run(
        Command::new(bin()).args([
            "iscsi",
            "io",
            &portals[1].to_string(),
            "--target",
            &t.iqn,
            "--lun",
            "0",
            "--verify",
            "--size",
            "32M",
        ]),
        Duration::from_secs(60),
    );
    assert!(
        o.success() && o.stdout.contains("all match"),
        "{}\n{}",
        o.all(),
        t.daemon.log_text()
    );
    // istgt lists every portal: one is enough for the daemon to find both paths.
    let d = DaemonProc::start(&portals[..1], &[]);
    let map = d.wait_map(2);
    let topo = d.cli(&["show", "topology"]);
    assert!(topo.stdout.contains("FreeBSD"), "{}", topo.stdout);
    if !testkit::netns::is_root() || !testkit::have("iptables") {
        let msg = "daemon_istgt: blackhole part skipped, it needs root and iptables";
        assert!(
            !testkit::peers_required(),
            "{msg}; MPATH_REQUIRE_PEERS=1 forbids skipping"
        );
        eprintln!("{msg}");
        return;
    }
    let hole = LoopbackBlackhole::new(portals[0]);
    blackhole_during_fio(&d, &map, || hole.on(), || hole.off());
}

/// A stopping daemon fails no request it took: under 32 clients issuing NBD requests back to
/// back, SIGTERM and `mpath shutdown` close the connections, but every request the server
/// answered was answered with success — none with EIO because the maps or sessions went
/// first (what this test found before stops drained the NBD server ahead of the maps).
#[test]
fn a_stop_under_nbd_load_fails_no_request() {
    let t = two_portal_mpath_target();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (round, how) in ["SIGTERM", "mpath shutdown", "SIGTERM"]
        .into_iter()
        .enumerate()
    {
        let d = DaemonProc::start(&t.portals[..1], &[]);
        let map = d.wait_map(2);
        let addr = d.nbd;
        let answered: u64 = rt.block_on(async {
            let mut ios = tokio::task::JoinSet::new();
            for w in 0..32u64 {
                let map = map.clone();
                ios.spawn(async move {
                    let nbd = workload::nbd::NbdClient::connect_tcp(addr, &map).await?;
                    let mut n = 0u64;
                    for i in 0u64.. {
                        let off = ((w * 131 + i * 7) % 4096) * 4096;
                        let r = if i % 3 == 0 {
                            nbd.write(off, bytes::Bytes::from(vec![w as u8; 4096]), false)
                                .await
                                .map(|_| ())
                        } else {
                            nbd.read(off, 4096).await.map(|_| ())
                        };
                        match r {
                            Ok(()) => n += 1,
                            Err(workload::nbd::NbdError::Closed { .. })
                            | Err(workload::nbd::NbdError::Io { .. }) => break,
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(n)
                });
            }
            tokio::time::sleep(Duration::from_millis(800)).await;
            if how == "SIGTERM" {
                let o = run(
                    Command::new("kill").args(["-TERM", &d.child.id().to_string()]),
                    Duration::from_secs(5),
                );
                assert!(o.success(), "{}", o.all());
            } else {
                assert!(d.cli(&["shutdown"]).success());
            }
            let mut total = 0;
            while let Some(r) = ios.join_next().await {
                match r.unwrap() {
                    Ok(n) => total += n,
                    Err(e) => panic!(
                        "round {round} ({how}): a request failed because the daemon stopped: {e}\n{}",
                        d.log_text()
                    ),
                }
            }
            total
        });
        assert!(answered > 0, "round {round}: the load ran");
        let log = d.log_text();
        assert!(
            !log.contains("failed with EIO"),
            "round {round} ({how}): the daemon answered EIO while stopping:\n{log}"
        );
    }
}

/// The same for the FUSE file: fio reads and writes it directly (4 jobs, direct I/O) when
/// the daemon gets SIGTERM. Requests the daemon took complete; the ones that arrive while it
/// drains are held, and the kernel fails them with ENOTCONN once the process has gone — no
/// EIO from the daemon (before the FUSE drain: EIO, from maps stopped under the requests).
#[test]
fn a_stop_under_fuse_load_answers_no_eio() {
    if !require("daemon_fuse_stop", &["fio", "fusermount3"]) {
        return;
    }
    if !Path::new("/dev/fuse").exists() || !testkit::netns::is_root() {
        let why = "needs root and /dev/fuse";
        assert!(!testkit::peers_required(), "daemon_fuse_stop: {why}");
        eprintln!("daemon_fuse_stop: skipped, {why}");
        return;
    }
    let t = two_portal_mpath_target();
    for round in 0..2 {
        let dir = TempDir::new("fusestop");
        let fuse = dir.path().join("disks");
        let d = DaemonProc::start(&t.portals[..1], &["--fuse", fuse.to_str().unwrap()]);
        let map = d.wait_map(2);
        let file = fuse.join(&map);
        let fio = Command::new("fio")
            .args([
                "--name=f",
                &format!("--filename={}", file.display()),
                "--rw=randrw",
                "--bs=4k",
                "--size=32M",
                "--direct=1",
                "--ioengine=psync",
                "--numjobs=4",
                "--runtime=20",
                "--time_based",
                "--output-format=json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fio");
        std::thread::sleep(Duration::from_millis(1500));
        let o = run(
            Command::new("kill").args(["-TERM", &d.child.id().to_string()]),
            Duration::from_secs(5),
        );
        assert!(o.success(), "{}", o.all());
        let out = fio.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The mount is gone with the daemon; a lazily unmounted one must not linger.
        let _ = Command::new("fusermount3").arg("-uz").arg(&fuse).status();
        assert!(
            !text.contains("Input/output error") && !text.contains("err= 5"),
            "round {round}: a client was answered EIO while the daemon stopped:\n{text}\n{}",
            d.log_text()
        );
        assert!(
            !d.log_text().contains("failed: "),
            "round {round}: the daemon failed a FUSE request while stopping:\n{}",
            d.log_text()
        );
    }
}

/// A daemon killed with its FUSE directory mounted leaves a dead mount (every access
/// ENOTCONN); the next daemon detaches it and mounts its own, instead of failing to start
/// with "File exists".
#[test]
fn a_stale_fuse_mount_does_not_block_the_next_start() {
    if !Path::new("/dev/fuse").exists() || !testkit::netns::is_root() {
        let why = "needs root and /dev/fuse";
        assert!(!testkit::peers_required(), "daemon_fuse_stale: {why}");
        eprintln!("daemon_fuse_stale: skipped, {why}");
        return;
    }
    let t = two_portal_mpath_target();
    let dir = TempDir::new("fusestale");
    let fuse = dir.path().join("disks");
    let mut d = DaemonProc::start(&t.portals[..1], &["--fuse", fuse.to_str().unwrap()]);
    let map = d.wait_map(2);
    assert!(fuse.join(&map).exists());
    // SIGKILL: no unmount.
    let _ = d.child.kill();
    let _ = d.child.wait();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let err = std::fs::read_dir(&fuse).expect_err(&format!(
        "a dead FUSE mount: {}",
        mounts
            .lines()
            .filter(|l| l.contains("fusestale"))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let d2 = DaemonProc::start(&t.portals[..1], &["--fuse", fuse.to_str().unwrap()]);
    let map2 = d2.wait_map(2);
    assert_eq!(map2, map);
    assert!(fuse.join(&map2).exists(), "{}", d2.log_text());
    assert!(
        d2.log_text().contains("stale FUSE mount"),
        "{}",
        d2.log_text()
    );
    drop(d2);
    let _ = Command::new("fusermount3").arg("-uz").arg(&fuse).status();
}

#[test]
fn fuse_file_loop_device_ext4() {
    if !require(
        "daemon_fuse",
        &["losetup", "mkfs.ext4", "e2fsck", "fusermount3"],
    ) {
        return;
    }
    if !Path::new("/dev/fuse").exists() || !testkit::netns::is_root() {
        let why = if testkit::netns::is_root() {
            "no /dev/fuse"
        } else {
            "not root (loop devices and mounting need it)"
        };
        assert!(!testkit::peers_required(), "daemon_fuse: {why}");
        eprintln!("daemon_fuse: skipped, {why}");
        return;
    }
    let t = two_portal_mpath_target();
    let dir = TempDir::new("fusemnt");
    let fuse = dir.path().join("disks");
    let d = DaemonProc::start(&t.portals, &["--fuse", fuse.to_str().unwrap()]);
    let map = d.wait_map(2);
    let file = fuse.join(&map);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let o = tool(&["losetup", "--find", "--show", file.to_str().unwrap()], 20);
    assert!(o.success(), "losetup: {}", o.all());
    let dev = o.stdout.trim().to_string();
    struct Cleanup(String, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.1).status();
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let guard = Cleanup(dev.clone(), mnt.clone());
    assert!(tool(&["mkfs.ext4", "-q", "-F", &dev], 120).success());
    assert!(tool(&["mount", &dev, mnt.to_str().unwrap()], 30).success());
    let f = mnt.join("f");
    let o = tool(
        &[
            "dd",
            "if=/dev/urandom",
            &format!("of={}", f.display()),
            "bs=1M",
            "count=100",
            "status=none",
            "conv=fsync",
        ],
        120,
    );
    assert!(o.success(), "{}", o.all());
    let sum = tool(&["sha256sum", f.to_str().unwrap()], 60).stdout;
    assert!(tool(&["umount", mnt.to_str().unwrap()], 30).success());
    let o = tool(&["e2fsck", "-fn", &dev], 120);
    assert!(o.success(), "e2fsck: {}", o.all());
    assert!(tool(&["mount", &dev, mnt.to_str().unwrap()], 30).success());
    assert_eq!(tool(&["sha256sum", f.to_str().unwrap()], 60).stdout, sum);
    drop(guard);
}

#[test]
fn bad_input_gets_clear_messages_and_the_daemon_keeps_running() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.path().join("mpath.toml");
    std::fs::write(&cfg, "[defaults]\nchecker = \"ping\"\n").unwrap();
    let o = run(
        Command::new(bin()).args(["daemon", "--config", cfg.to_str().unwrap()]),
        Duration::from_secs(10),
    );
    assert!(!o.success());
    assert!(
        o.stderr
            .contains("mpath.toml:2: defaults.checker: unknown checker \"ping\""),
        "{}",
        o.stderr
    );

    // An unreachable portal next to a good one: the daemon starts, serves the good path,
    // and says what is wrong with the other.
    let t = MpathTarget::start(
        bin(),
        &[
            "--iqn",
            "iqn.2026-01.io.mpath:bad",
            "--portal",
            "127.0.0.2:0",
            "--lun",
            "mem:16M",
        ],
    );
    let dead: SocketAddr = format!("127.0.0.9:{}", free_port("127.0.0.9"))
        .parse()
        .unwrap();
    // Healthy paths checked every 300 ms, so the LUN's disappearance below is seen soon.
    let quick = dir.path().join("quick.toml");
    std::fs::write(
        &quick,
        "[defaults]\nchecker_interval = \"300ms\"\nchecker_interval_ok = \"300ms\"\n",
    )
    .unwrap();
    let d = DaemonProc::start(
        &[t.portals[0], dead],
        &["--config", quick.to_str().unwrap()],
    );
    let map = d.wait_map(1);
    let st = d.cli(&["show", "status"]);
    assert!(
        st.stdout.contains(&format!("portal {dead} unreachable")),
        "{}",
        st.stdout
    );
    // An NBD client that sends garbage: dropped, the daemon goes on.
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(d.nbd).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n garbage garbage");
    drop(s);
    assert!(d.cli(&["show", "maps"]).success());
    // An NBD client that leaves mid-request: a 1 MiB WRITE on its way, then the client is
    // gone (its runtime dropped with the request half sent).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = workload::nbd::NbdClient::connect_tcp(d.nbd, &map)
            .await
            .unwrap();
        let w = tokio::spawn(async move {
            c.write(0, bytes::Bytes::from(vec![7u8; 1 << 20]), false)
                .await
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(w);
    });
    drop(rt);
    // The daemon goes on serving: another client reads the size.
    let o = tool(&["nbdinfo", "--size", &nbd_uri(&d, &map)], 20);
    assert!(o.success(), "{}", o.all());
    assert_eq!(o.stdout.trim(), (16u64 << 20).to_string());
    // The LUN disappears (offline at the target, the connection stays up): the checker
    // fails the path with the target's reason, the daemon keeps answering; back online,
    // the path is reinstated.
    assert!(t
        .ctl(bin(), &["lun", "iqn.2026-01.io.mpath:bad", "1", "offline"])
        .success());
    let path_state = |want: &str| {
        let start = Instant::now();
        loop {
            let v = d.json(&["show", "paths"]);
            let p = &v["paths"][0];
            if p["checker_state"] == want {
                return p.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "checker never {want}: {v}\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let p = path_state("faulty");
    assert_eq!(p["dm_state"], "failed", "{p}");
    assert_eq!(d.json(&["show", "maps"])["maps"][0]["active_paths"], 0);
    assert!(t
        .ctl(bin(), &["lun", "iqn.2026-01.io.mpath:bad", "1", "online"])
        .success());
    let p = path_state("ready");
    assert_eq!(p["dm_state"], "active", "{p}");
    assert!(d.cli(&["show", "events"]).stdout.contains("path-failed"));
}

/// A LU that answers TEST UNIT READY but fails every READ: the `tur` checker cannot see it,
/// `directio` (a READ through the data path) and `readsector0` fail its paths, and
/// reinstate them when reads work again.
#[test]
fn read_checkers_catch_a_lun_that_answers_tur_but_fails_reads() {
    let t = two_portal_mpath_target();
    let iqn = "iqn.2026-01.io.mpath:daemon";
    let dir = TempDir::new("checkers");
    for checker in ["tur", "directio", "readsector0"] {
        let cfg = dir.path().join(format!("{checker}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[defaults]\nchecker = \"{checker}\"\nchecker_interval = \"300ms\"\nchecker_interval_ok = \"300ms\"\n"
            ),
        )
        .unwrap();
        let d = DaemonProc::start(&t.portals, &["--config", cfg.to_str().unwrap()]);
        d.wait_map(2);
        assert!(t.ctl(bin(), &["lun", iqn, "1", "read-errors"]).success());
        let states = |d: &DaemonProc| -> Vec<String> {
            d.json(&["show", "paths"])["paths"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["checker_state"].as_str().unwrap_or("").to_string())
                .collect()
        };
        let wait_all = |want: &str| {
            let start = Instant::now();
            loop {
                let s = states(&d);
                if s.iter().all(|x| x == want) {
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{checker}: paths never all {want}: {s:?}\n{}",
                    d.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        if checker == "tur" {
            // Several check rounds: TEST UNIT READY passes, the paths stay ready.
            std::thread::sleep(Duration::from_millis(1500));
            assert!(
                states(&d).iter().all(|x| x == "ready"),
                "tur sees nothing wrong: {:?}",
                states(&d)
            );
        } else {
            wait_all("faulty");
            let ev = d.cli(&["show", "events"]).stdout;
            assert!(ev.contains("path-failed"), "{checker}: {ev}");
        }
        assert!(t.ctl(bin(), &["lun", iqn, "1", "no-read-errors"]).success());
        wait_all("ready");
        d.wait_map(2);
    }
}
