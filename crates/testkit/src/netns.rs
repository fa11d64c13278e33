//! Several real network paths on one machine: an initiator namespace and a target
//! namespace joined by one veth pair per path, with faults per path.
//!
//! ```text
//!   initiator namespace                     target namespace
//!   vi1 198.18.1.1/24  <---- path 1 ---->   vt1 198.18.1.2/24
//!   vi2 198.18.2.1/24  <---- path 2 ---->   vt2 198.18.2.2/24
//!   ...
//! ```
//!
//! Addresses are only in the benchmark range 198.18.0.0/15, and only inside the two
//! namespaces; the root namespace gets `unreachable 198.18.0.0/15` as a safety net (added
//! once, left in place: it routes nothing anywhere). Namespace names carry the process id
//! and a counter, so tests in parallel (threads or processes) never meet; the veth ends are
//! created directly inside their namespaces, so their short names never collide either.
//! Dropping a [`NetLab`] deletes both namespaces, and with them every veth, rule and qdisc.
//!
//! Faults per path, each replacing the path's previous fault ([`NetLab::clear`] undoes any):
//!
//! | fault | how |
//! |---|---|
//! | [`NetFault::Blackhole`] | iptables DROP of every packet arriving on the path, on both sides: silent, sockets stay open |
//! | [`NetFault::Reset`] | iptables REJECT --reject-with tcp-reset in the target namespace: open connections and new connects get an RST |
//! | [`NetFault::Loss`] | iptables statistic match: each packet on the path lost with the given probability, in each direction |
//! | [`NetFault::Rate`] | `tc tbf` on both ends of the veth |
//! | [`NetFault::LinkDown`] | `ip link set down` on the initiator's end (the peer loses carrier): sends fail at once |
//!
//! The kernel has no netem: for latency use the target's own fault switch (`mpath target ctl
//! fault PORTAL delay MS`) or [`crate::proxy::FaultProxy`].
//!
//! Processes run in a namespace through `ip netns exec NS PROGRAM` ([`NetLab::initiator_cmd`],
//! [`NetLab::target_cmd`]); `ip` execs the program, so the child's pid is the program's.
//! Unix sockets on the filesystem are reachable from every namespace.
//!
//! Needs root (CAP_NET_ADMIN) and `ip`, `iptables`, `tc`: [`require_netns`] says whether a
//! test can run, and skips (or, under `MPATH_REQUIRE_PEERS=1`, fails) otherwise.

use std::ffi::OsStr;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{peers_required, require, run, Output};

/// The benchmark range every address of the lab lives in.
pub const LAB_RANGE: &str = "198.18.0.0/15";

/// Whether the process runs as root (effective uid 0), from /proc: no libc needed.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// True when namespace tests can run here: root, and `ip`, `iptables`, `tc` installed.
/// Otherwise print why `test` skips and return false — or panic under
/// `MPATH_REQUIRE_PEERS=1`, where skipping is not allowed.
pub fn require_netns(test: &str) -> bool {
    if !is_root() {
        let msg = format!(
            "{test}: skipped, network namespaces need root (CAP_NET_ADMIN); run as root, as .ci/run does"
        );
        if peers_required() {
            panic!("{msg}; MPATH_REQUIRE_PEERS=1 forbids skipping");
        }
        eprintln!("{msg}");
        return false;
    }
    require(test, &["ip", "iptables", "tc"])
}

/// A fault on one path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NetFault {
    /// Every packet on the path silently dropped, both directions.
    Blackhole,
    /// Every TCP segment from the initiator answered with an RST.
    Reset,
    /// Each packet lost with this probability (0.0–1.0), each direction.
    Loss(f64),
    /// Bandwidth limit in kbit/s, each direction (`tc tbf`).
    Rate { kbit: u64 },
    /// The link is down.
    LinkDown,
}

impl fmt::Display for NetFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetFault::Blackhole => write!(f, "blackhole"),
            NetFault::Reset => write!(f, "tcp-reset"),
            NetFault::Loss(p) => write!(f, "loss {:.0}%", p * 100.0),
            NetFault::Rate { kbit } => write!(f, "rate {kbit} kbit/s"),
            NetFault::LinkDown => write!(f, "link down"),
        }
    }
}

/// Two namespaces joined by `paths` veth pairs. Dropping it tears everything down.
pub struct NetLab {
    /// The initiator's namespace name.
    pub initiator: String,
    /// The target's namespace name.
    pub target: String,
    paths: usize,
}

/// Timeout for every `ip`/`iptables`/`tc` invocation.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

fn sh(args: &[&str]) -> Output {
    let (c, rest) = args.split_first().expect("a command");
    run(Command::new(c).args(rest), CMD_TIMEOUT)
}

/// Run a command that must succeed.
fn must(args: &[&str]) {
    let o = sh(args);
    assert!(o.success(), "{}: {}", args.join(" "), o.all().trim());
}

/// Add `unreachable 198.18.0.0/15` in the root namespace unless a route for exactly that
/// prefix is there already (ours from an earlier test, or anyone's: it is left alone).
pub fn ensure_safety_route() {
    let o = sh(&["ip", "-4", "route", "show", "exact", LAB_RANGE]);
    if o.success() && o.stdout.contains("198.18.0.0/15") {
        return;
    }
    let o = sh(&["ip", "-4", "route", "add", "unreachable", LAB_RANGE]);
    // Another test may have added it between the look and the add.
    assert!(
        o.success() || o.stderr.contains("File exists"),
        "ip route add unreachable {LAB_RANGE}: {}",
        o.all().trim()
    );
}

impl NetLab {
    /// Create the namespaces and `paths` (1–9) veth pairs, addresses up, loopback up, one
    /// iptables chain per path and side ready for faults. `tag` goes into the names (keep it
    /// short, letters and digits).
    pub fn new(tag: &str, paths: usize) -> NetLab {
        assert!((1..=9).contains(&paths), "1 to 9 paths, not {paths}");
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("mp{tag}-{}-{n}", std::process::id());
        ensure_safety_route();
        let lab = NetLab {
            initiator: format!("{base}-i"),
            target: format!("{base}-t"),
            paths,
        };
        // A leftover of a crashed run with the same pid and counter: remove it first.
        let _ = sh(&["ip", "netns", "del", &lab.initiator]);
        let _ = sh(&["ip", "netns", "del", &lab.target]);
        must(&["ip", "netns", "add", &lab.initiator]);
        // From here on, Drop cleans up whatever a failing step leaves.
        must(&["ip", "netns", "add", &lab.target]);
        for ns in [&lab.initiator, &lab.target] {
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for i in 0..paths {
            let (vi, vt) = (lab.initiator_dev(i), lab.target_dev(i));
            must(&[
                "ip",
                "link",
                "add",
                &vi,
                "netns",
                &lab.initiator,
                "type",
                "veth",
                "peer",
                "name",
                &vt,
                "netns",
                &lab.target,
            ]);
            let ia = format!("{}/24", lab.initiator_addr(i));
            let ta = format!("{}/24", lab.target_addr(i));
            must(&["ip", "-n", &lab.initiator, "addr", "add", &ia, "dev", &vi]);
            must(&["ip", "-n", &lab.target, "addr", "add", &ta, "dev", &vt]);
            must(&["ip", "-n", &lab.initiator, "link", "set", &vi, "up"]);
            must(&["ip", "-n", &lab.target, "link", "set", &vt, "up"]);
            // One chain per path and side, jumped to for packets arriving on the path.
            for (ns, dev) in [(&lab.initiator, &vi), (&lab.target, &vt)] {
                let chain = Self::chain(i);
                lab.iptables(ns, &["-N", &chain]);
                lab.iptables(ns, &["-A", "INPUT", "-i", dev, "-j", &chain]);
            }
        }
        lab
    }

    /// How many paths.
    pub fn paths(&self) -> usize {
        self.paths
    }

    /// Path `i` (from 0) on the initiator side: 198.18.(i+1).1.
    pub fn initiator_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, i as u8 + 1, 1)
    }

    /// Path `i` (from 0) on the target side: 198.18.(i+1).2.
    pub fn target_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, i as u8 + 1, 2)
    }

    /// The initiator's end of path `i`.
    pub fn initiator_dev(&self, i: usize) -> String {
        format!("vi{}", i + 1)
    }

    /// The target's end of path `i`.
    pub fn target_dev(&self, i: usize) -> String {
        format!("vt{}", i + 1)
    }

    fn chain(i: usize) -> String {
        format!("MPATH_P{}", i + 1)
    }

    /// `ip netns exec INITIATOR program`.
    pub fn initiator_cmd(&self, program: impl AsRef<OsStr>) -> Command {
        ns_cmd(&self.initiator, program)
    }

    /// `ip netns exec TARGET program`.
    pub fn target_cmd(&self, program: impl AsRef<OsStr>) -> Command {
        ns_cmd(&self.target, program)
    }

    fn iptables(&self, ns: &str, args: &[&str]) {
        let mut a = vec!["ip", "netns", "exec", ns, "iptables", "-w", "5"];
        a.extend_from_slice(args);
        must(&a);
    }

    /// Put `fault` on path `i`, replacing the path's previous fault.
    pub fn fault(&self, i: usize, fault: NetFault) {
        assert!(i < self.paths, "no path {i}");
        self.clear(i);
        let (ci, ct) = (self.initiator.clone(), self.target.clone());
        let chain = Self::chain(i);
        match fault {
            NetFault::Blackhole => {
                // Drop on arrival at both ends: nobody gets an error, nothing gets through.
                self.iptables(&ct, &["-A", &chain, "-j", "DROP"]);
                self.iptables(&ci, &["-A", &chain, "-j", "DROP"]);
            }
            NetFault::Reset => {
                self.iptables(
                    &ct,
                    &[
                        "-A",
                        &chain,
                        "-p",
                        "tcp",
                        "-j",
                        "REJECT",
                        "--reject-with",
                        "tcp-reset",
                    ],
                );
            }
            NetFault::Loss(p) => {
                let p = format!("{:.3}", p.clamp(0.0, 1.0));
                for ns in [&ct, &ci] {
                    self.iptables(
                        ns,
                        &[
                            "-A",
                            &chain,
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            &p,
                            "-j",
                            "DROP",
                        ],
                    );
                }
            }
            NetFault::Rate { kbit } => {
                let rate = format!("{kbit}kbit");
                for (ns, dev) in [(&ci, self.initiator_dev(i)), (&ct, self.target_dev(i))] {
                    must(&[
                        "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", &dev, "root",
                        "tbf", "rate", &rate, "burst", "32kbit", "latency", "400ms",
                    ]);
                }
            }
            NetFault::LinkDown => {
                must(&[
                    "ip",
                    "-n",
                    &ci,
                    "link",
                    "set",
                    &self.initiator_dev(i),
                    "down",
                ]);
            }
        }
    }

    /// Path `i` back to a clean link: rules flushed, qdisc removed, link up.
    pub fn clear(&self, i: usize) {
        assert!(i < self.paths, "no path {i}");
        let chain = Self::chain(i);
        for (ns, dev) in [
            (&self.initiator, self.initiator_dev(i)),
            (&self.target, self.target_dev(i)),
        ] {
            self.iptables(ns, &["-F", &chain]);
            // Fails harmlessly when there is no qdisc of ours.
            let _ = sh(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", &dev, "root",
            ]);
            must(&["ip", "-n", ns, "link", "set", &dev, "up"]);
        }
    }

    /// Every path clean.
    pub fn clear_all(&self) {
        for i in 0..self.paths {
            self.clear(i);
        }
    }

    /// Take the link of path `i` down (the initiator's end).
    pub fn link_down(&self, i: usize) {
        self.fault(i, NetFault::LinkDown);
    }

    /// Bring the link of path `i` up again (and clear any other fault on it).
    pub fn link_up(&self, i: usize) {
        self.clear(i);
    }

    /// Packets dropped by path `i`'s rules so far, initiator side plus target side
    /// (whether a fault really bit).
    pub fn dropped_packets(&self, i: usize) -> u64 {
        let chain = Self::chain(i);
        [&self.initiator, &self.target]
            .iter()
            .map(|ns| {
                let o = sh(&[
                    "ip", "netns", "exec", ns, "iptables", "-w", "5", "-L", &chain, "-n", "-v",
                    "-x",
                ]);
                o.stdout
                    .lines()
                    .skip(2)
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends (and so their peers), rules and
        // qdiscs. Processes still inside keep it alive until they exit: callers stop theirs
        // first (drop order), and the name is gone either way.
        let _ = sh(&["ip", "netns", "del", &self.initiator]);
        let _ = sh(&["ip", "netns", "del", &self.target]);
    }
}

/// `ip netns exec NS program`.
pub fn ns_cmd(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connect over path `i` from the initiator namespace to a listener in the target
    /// namespace, with a small program of bash (no extra tools): the exit code says whether
    /// the connection worked.
    fn can_connect(lab: &NetLab, i: usize, port: u16) -> bool {
        let script = format!(
            "exec 3<>/dev/tcp/{}/{port} && echo hi >&3",
            lab.target_addr(i)
        );
        let o = run(
            lab.initiator_cmd("timeout")
                .args(["2", "bash", "-c", &script]),
            Duration::from_secs(5),
        );
        o.success()
    }

    #[test]
    fn lab_paths_faults_and_teardown() {
        if !require_netns("netns_lab") || !require("netns_lab", &["bash", "timeout"]) {
            return;
        }
        let names;
        {
            let lab = NetLab::new("tk", 2);
            names = (lab.initiator.clone(), lab.target.clone());
            let ns = sh(&["ip", "netns", "list"]).stdout;
            assert!(
                ns.contains(&lab.initiator) && ns.contains(&lab.target),
                "{ns}"
            );
            let r = sh(&["ip", "-4", "route", "show", "exact", LAB_RANGE]).stdout;
            assert!(r.contains("unreachable"), "safety route: {r}");
            // A listener on both target addresses (bash cannot listen: python3 can).
            if have_python() {
                connection_checks(&lab);
            } else {
                eprintln!("netns_lab: python3 missing, connection checks skipped");
            }
            // Rate and loss set up and cleared without error.
            lab.fault(1, NetFault::Rate { kbit: 1000 });
            lab.fault(1, NetFault::Loss(0.3));
            lab.clear(1);
        }
        let ns = sh(&["ip", "netns", "list"]).stdout;
        assert!(
            !ns.contains(&names.0) && !ns.contains(&names.1),
            "left behind: {ns}"
        );
    }

    fn have_python() -> bool {
        crate::have("python3")
    }

    /// A child killed when dropped (the listener must not outlive a failed assertion).
    struct Kill(std::process::Child);

    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Connections over each path work, and stop working under reset, blackhole and link
    /// down, and work again once cleared.
    fn connection_checks(lab: &NetLab) {
        let port = 4000;
        let _srv = Kill(
            lab.target_cmd("python3")
                .args([
                    "-c",
                    &format!(
                        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0',{port})); s.listen(64)\nwhile True:\n  c,_=s.accept(); c.close()"
                    ),
                ])
                .spawn()
                .expect("listener"),
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(can_connect(lab, 0, port) && can_connect(lab, 1, port));
        lab.fault(0, NetFault::Reset);
        assert!(!can_connect(lab, 0, port), "reset path connected");
        lab.fault(0, NetFault::Blackhole);
        assert!(!can_connect(lab, 0, port), "blackholed path connected");
        assert!(lab.dropped_packets(0) > 0, "blackhole dropped nothing");
        lab.link_down(1);
        assert!(!can_connect(lab, 1, port), "down link connected");
        lab.clear_all();
        assert!(can_connect(lab, 0, port) && can_connect(lab, 1, port));
    }
}
