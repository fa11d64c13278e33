//! The `mpath` command: every part of mpath behind one binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

mod bench;
mod config_cmd;
mod daemon_cmd;
mod demo;
mod iscsi_cmd;
mod manual;
mod persist_cmd;
mod service;
mod stack;
mod target_cmd;
mod udev_cmd;

#[derive(Parser)]
#[command(
    name = "mpath",
    version,
    about = "Multipath block storage in user space",
    long_about = None,
    after_help = "Exit status of the commands that talk to the daemon: 0 done, 1 the daemon refused or failed the request (no such map, path or group...), 2 usage error, 3 the daemon cannot be reached."
)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive such as
    /// `iscsi_target=debug`); RUST_LOG overrides it. Default: info for servers, warn for
    /// diagnostics.
    #[arg(long, global = true)]
    log: Option<String>,
    /// How log lines look: text (with timestamps), journal (no timestamp, each line led by
    /// its priority, <3> error to <7> debug, for the systemd journal) or auto (journal when
    /// standard error is the journal, as systemd's JOURNAL_STREAM says).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Journal,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack in one process on embedded defaults: a two-portal target, the
    /// daemon, the NBD export and a verifying workload, with one portal blackholed and
    /// restored mid-run; prints status every second, then topology, events and a summary.
    /// Exits non-zero if the workload saw an error or a bad block.
    Demo(DemoCmd),
    /// Measure mpath against a baseline taken in the same run, on the whole stack in one
    /// process (figures for BENCHMARKS.md).
    Bench(BenchCmd),
    /// Serve iSCSI targets (flags for the simple case, --config for the rest), or operate a
    /// running one with `mpath target ctl`.
    Target(TargetCmd),
    /// iSCSI diagnostics: discover targets, probe LUNs, run verified I/O (instead of
    /// iscsiadm and sg3_utils).
    Iscsi(IscsiCmd),
    /// Run the multipath daemon: log in to every portal, group paths into maps by WWID,
    /// check paths, export each map (NBD, FUSE). SIGHUP re-reads the configuration.
    Daemon(DaemonCmd),
    /// Show the daemon's view: topology (multipath -ll), paths, maps, one path or map,
    /// status, stats, config, events, sessions.
    Show(ShowCmd),
    /// Fail a path (I/O stops using it; only an operator reinstates it).
    Fail(PathCmd),
    /// Reinstate a path failed by an operator or by its checker.
    Reinstate(PathCmd),
    /// Make group N (1-based, as in `show topology`) of a map active.
    Switchgroup {
        map: String,
        group: usize,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Stop queueing I/O of a map when it has no path: queued and new I/O fails.
    Disablequeueing {
        map: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Queue again per the map's no_path_retry policy.
    Restorequeueing {
        map: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Log in to a portal's targets, or to one of them (iscsiadm -m node -l), without
    /// editing the configuration file; until a reconfigure re-reads it.
    Login {
        /// Portal: IP, IP:PORT, HOST or HOST:PORT (port 3260 by default).
        portal: String,
        /// Only this target of the portal.
        #[arg(long, value_name = "IQN")]
        target: Option<String>,
        /// CHAP user name for the portal's sessions (node.session.auth.username); the
        /// secret comes from --chap-secret-file, never from the command line.
        #[arg(long, value_name = "USER", requires = "chap_secret_file")]
        chap_user: Option<String>,
        /// File holding the CHAP secret (its first line; `-`: standard input).
        #[arg(long, value_name = "FILE", requires = "chap_user")]
        chap_secret_file: Option<std::path::PathBuf>,
        /// Mutual CHAP: the user name the target answers with (needs --chap-user).
        #[arg(
            long,
            value_name = "USER",
            requires_all = ["mutual_chap_secret_file", "chap_user"]
        )]
        mutual_chap_user: Option<String>,
        /// File holding the mutual CHAP secret (its first line; `-`: standard input).
        #[arg(long, value_name = "FILE", requires = "mutual_chap_user")]
        mutual_chap_secret_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Log out of a portal, or of one target of it (iscsiadm -m node -u): its paths leave
    /// their maps and I/O moves to the others.
    Logout {
        /// Portal: IP, IP:PORT, HOST or HOST:PORT (port 3260 by default).
        portal: String,
        /// Only this target of the portal.
        #[arg(long, value_name = "IQN")]
        target: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Re-read the daemon's configuration file and apply it.
    Reconfigure {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Persistent reservations through a map, as mpathpersist makes them: keys registered
    /// on every path, reserve, release, clear, preempt; PR IN reports.
    Persist(persist_cmd::PersistCmd),
    /// Stop the daemon.
    Shutdown {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Configuration tools: import a multipath-tools `multipath.conf`, check a file.
    Config {
        #[command(subcommand)]
        what: ConfigWhat,
    },
    /// udev helpers: stable names (/dev/mpath/MAP, /dev/disk/by-id/mpath-WWID) for a
    /// loop device over a map's FUSE file.
    Udev {
        #[command(subcommand)]
        what: UdevWhat,
    },
    /// systemd helpers: the units that run the daemon and the target as services.
    Systemd {
        #[command(subcommand)]
        what: SystemdWhat,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g.
    /// `mpath completions bash > /etc/bash_completion.d/mpath`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page mpath(1); with --dir, write mpath.1 and one page per subcommand
    /// (mpath-daemon.1, mpath-show.1, mpath-target-ctl.1...) there, e.g.
    /// /usr/local/share/man/man1.
    Man {
        /// Write every page into DIR (created if missing) instead of printing mpath(1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SystemdWhat {
    /// Print mpath-daemon.service and mpath-target.service with the binary's path filled
    /// in, or write them into a unit directory with --install.
    Units {
        /// The mpath binary the units run (default: this one).
        #[arg(long, value_name = "PATH")]
        mpath: Option<PathBuf>,
        /// Write the units (default into /etc/systemd/system) instead of printing them;
        /// then `systemctl daemon-reload`.
        #[arg(long)]
        install: bool,
        /// The unit directory --install writes into.
        #[arg(long, value_name = "DIR", requires = "install")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigWhat {
    /// Translate a multipath-tools multipath.conf (and its conf.d directory) into mpath's
    /// TOML, on standard output; every setting that is not carried over is listed in a
    /// comment saying why. `mpath daemon -c /etc/multipath.conf` reads the same files
    /// directly.
    Import {
        /// The multipath.conf to read.
        #[arg(default_value = "/etc/multipath.conf")]
        file: PathBuf,
        /// Also read every `*.conf` here, in name order, as multipathd does (default: the
        /// file's `config_dir`, else /etc/multipath/conf.d; missing is fine).
        #[arg(long, value_name = "DIR")]
        conf_dir: Option<PathBuf>,
    },
    /// Read a configuration file (TOML or multipath.conf) as the daemon would and print
    /// what it means, or the first error with its file, line and key.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum UdevWhat {
    /// Print MPATH_MAP=… and MPATH_WWID=… for a loop device attached to a map's FUSE file
    /// (udev's IMPORT{program}); nothing for any other loop device, or when the map has a
    /// ublk or NBD device of the daemon's holding its names.
    Loop {
        /// loopN or /dev/loopN.
        device: String,
    },
    /// Print the udev rules that run `mpath udev loop`, for /etc/udev/rules.d/.
    Rules {
        /// The mpath binary the rules run (default: this one).
        #[arg(long, value_name = "PATH")]
        mpath: Option<PathBuf>,
    },
}

#[derive(Args)]
struct DemoCmd {
    /// Seconds the workload runs.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    duration: u64,
    /// Second at which the first portal is blackholed (its packets silently dropped).
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    blackhole_at: u64,
    /// Second at which the blackhole ends.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    restore_at: u64,
    /// Size of the memory LUN, in bytes.
    #[arg(long, default_value_t = 256 << 20, value_name = "BYTES")]
    size: u64,
    /// Requests the workload keeps outstanding.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Print only the summary, as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchCmd {
    /// Also print the results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// I/O stall when one of two paths is silently blackholed or reset under a verifying
    /// load, p50/p99 over many trials; baseline: the same load with no fault.
    Failover {
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// blackhole, reset or both.
        #[arg(long, default_value = "both")]
        fault: String,
        /// Requests the load keeps outstanding.
        #[arg(long, default_value_t = 16)]
        depth: usize,
        /// Share of reads in the load, in percent (100: P1r, reads only).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
        read_pct: u8,
        /// Hedged reads off (`hedge_reads = false`), for a comparison.
        #[arg(long)]
        no_hedge: bool,
        /// Also draw IOPS over time around one blackhole and its restore, as SVG.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<String>,
    },
    /// False failovers on a starved machine: a saturating verifying load on two paths while
    /// busy threads take the CPUs, counting paths failed with no fault; then blackhole
    /// trials under the same starvation, for detection time. Baseline: the same trials
    /// without the busy threads.
    Starved {
        /// Minutes of load with no fault.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Requests the load keeps outstanding.
        #[arg(long, default_value_t = 128)]
        depth: usize,
        /// Busy threads beside the stack (default: twice the CPUs, as `stress-ng --cpu`).
        #[arg(long)]
        burn: Option<usize>,
        /// Blackhole trials, with and without the busy threads.
        #[arg(long, default_value_t = 20)]
        trials: usize,
    },
    /// 4 KiB random reads through NBD: a map with two paths against one with one path.
    Paths {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        depth: usize,
    },
    /// Many LUNs times several portals: assembly time, idle CPU, memory, `show topology`
    /// latency.
    Scale {
        #[arg(long, default_value_t = 1024)]
        luns: u16,
        #[arg(long, default_value_t = 4)]
        portals: usize,
    },
    /// 4 KiB random reads on one iSCSI path to the in-process target: through a one-path
    /// map (the engine) against the path called directly.
    Engine {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        depth: usize,
    },
    /// 1 MiB sequential reads through the whole stack against one loopback TCP stream.
    Seqread {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        depth: usize,
    },
    /// The Prometheus scrape at 32 maps x 2 paths and 1024 x 4, every series populated:
    /// size (text and gzip) and time to encode, against every engine bucket exposed and
    /// the layout before (40 log2 buckets from 2 ns); and the cost of recording one
    /// latency, against the log2 histogram.
    Metrics {
        /// Encodings timed per size.
        #[arg(long, default_value_t = 11)]
        rounds: usize,
    },
}

/// How a CLI command reaches the daemon.
#[derive(Args, Clone)]
struct ClientOpts {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DaemonCmd {
    /// TOML configuration (see docs/daemon.md).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// A portal to log in through: IP, IP:PORT, HOST or HOST:PORT, a host name resolved at
    /// start (repeatable; adds to the file's).
    #[arg(long, value_name = "ADDR")]
    portal: Vec<String>,
    /// Control socket path.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The initiator name the sessions log in with (iqn., eui. or naa. form; overrides the
    /// file's initiator_name). Default: open-iscsi's, from /etc/iscsi/initiatorname.iscsi,
    /// else iqn.2026-01.io.mpath: followed by the host name.
    #[arg(long, value_name = "IQN", value_parser = iscsi_name)]
    initiator: Option<String>,
    /// NBD listen address, or "off".
    #[arg(long, value_name = "ADDR")]
    nbd: Option<String>,
    /// Mount a FUSE directory with one file per map here.
    #[arg(long, value_name = "DIR")]
    fuse: Option<PathBuf>,
    /// Give every map a ublk block device, /dev/ublkbN (needs the ublk_drv module, Linux
    /// 6.0 or later). Kept across restarts of the daemon: its I/O waits for the next one.
    #[arg(long)]
    ublk: bool,
    /// Give every map a kernel NBD device, /dev/nbdN, attached by the daemon itself (needs
    /// the nbd module). Kept across restarts of the daemon: its I/O waits for the next one.
    #[arg(long)]
    nbd_device: bool,
    /// Serve Prometheus metrics on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  mpath show map mpatha          one map's record (name or WWID)\n  mpath show path 127.0.0.2      one path's record (name or unique prefix)\n  mpath show paths format \"%d %w %t %T %p\"\n  mpath show maps raw format \"%n %w %N\"    no header line"
)]
struct ShowCmd {
    #[arg(value_parser = ["topology", "paths", "path", "maps", "map", "status", "stats", "config", "events", "sessions"])]
    what: String,
    /// With `map`: the map (name or WWID); with `path`: the path (name or unique prefix);
    /// with `paths` or `maps`: `[raw] format FORMAT`, multipathd's wildcards.
    #[arg(value_name = "ARGS")]
    args: Vec<String>,
    /// With `events`: keep printing events as they happen.
    #[arg(long)]
    follow: bool,
    /// With `events`: only the last N.
    #[arg(long)]
    last: Option<usize>,
    /// With `sessions`: every negotiated parameter and the paths and maps each session
    /// serves (iscsiadm -m session -P 3).
    #[arg(long, short = 'v')]
    verbose: bool,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
struct PathCmd {
    #[arg(value_parser = ["path"])]
    what: String,
    /// The path, as `show paths` names it (a unique prefix such as the portal will do).
    path: String,
    #[command(flatten)]
    client: ClientOpts,
}

/// Options every `mpath iscsi` command takes.
#[derive(Args, Clone)]
struct IscsiCommon {
    /// Initiator name (iqn., eui. or naa. form). Default: open-iscsi's, from
    /// /etc/iscsi/initiatorname.iscsi, else iqn.2026-01.io.mpath: followed by the host name.
    #[arg(long, value_name = "IQN", value_parser = iscsi_name)]
    initiator: Option<String>,
    /// CHAP credentials, USER:SECRET.
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,
    /// Authenticate the target too (mutual CHAP): its USER:SECRET.
    #[arg(long, value_name = "USER:SECRET", requires = "chap")]
    mutual_chap: Option<String>,
    /// Offer CRC32C header digests.
    #[arg(long)]
    header_digest: bool,
    /// Offer CRC32C data digests.
    #[arg(long)]
    data_digest: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct IscsiCmd {
    #[command(subcommand)]
    op: IscsiOp,
}

#[derive(Subcommand)]
enum IscsiOp {
    /// List the targets a portal offers and every portal of each (SendTargets).
    Discover {
        /// Portal: IP, IP:PORT, HOST or HOST:PORT (port 3260 by default).
        portal: String,
        #[command(flatten)]
        common: IscsiCommon,
    },
    /// Log in and describe each LUN: size, block size, vendor/product, WWID, ALUA group and
    /// state.
    Probe {
        /// Portal: IP, IP:PORT, HOST or HOST:PORT (port 3260 by default).
        portal: String,
        /// Target IQN.
        #[arg(long)]
        target: String,
        #[command(flatten)]
        common: IscsiCommon,
    },
    /// Write a pattern, read it back and compare; print MB/s and IOPS.
    Io {
        /// Portal: IP, IP:PORT, HOST or HOST:PORT (port 3260 by default).
        portal: String,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1)]
        lun: u16,
        /// Compare what is read with what was written (without it: read only, timed).
        #[arg(long)]
        verify: bool,
        /// Bytes to cover, from LBA 0 (K, M, G suffixes).
        #[arg(long, default_value = "64M")]
        size: String,
        /// Bytes per command.
        #[arg(long, default_value = "64K")]
        bs: String,
        /// Commands outstanding.
        #[arg(long, default_value_t = 32)]
        depth: usize,
        #[command(flatten)]
        common: IscsiCommon,
    },
    /// Random reads at a fixed queue depth for a while; print IOPS (what libiscsi's
    /// iscsi-perf does, for comparisons).
    Perf {
        /// Portal: IP, IP:PORT, HOST or HOST:PORT (port 3260 by default).
        portal: String,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1)]
        lun: u16,
        /// Bytes per read.
        #[arg(long, default_value = "4K")]
        bs: String,
        #[arg(long, default_value_t = 32)]
        depth: usize,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[command(flatten)]
        common: IscsiCommon,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct TargetCmd {
    #[command(subcommand)]
    ctl: Option<TargetSub>,
    #[command(flatten)]
    serve: TargetServe,
}

#[derive(Subcommand)]
enum TargetSub {
    /// Operate a running target through its control socket.
    Ctl(CtlCmd),
}

#[derive(Args)]
struct TargetServe {
    /// TOML configuration file (see docs/target.md); excludes the target flags below.
    #[arg(long, short = 'c', conflicts_with_all = ["iqn", "portal", "lun"])]
    config: Option<PathBuf>,
    /// Target name, e.g. iqn.2026-01.io.mpath:demo.
    #[arg(long)]
    iqn: Option<String>,
    /// Portal ADDR:PORT, optionally with an ALUA state: 127.0.0.3:3260@active-non-optimized.
    /// Each portal is its own portal group (tag 1, 2, ...) and ALUA target port group.
    #[arg(long, value_name = "ADDR[@STATE]")]
    portal: Vec<String>,
    /// A LUN: mem:SIZE, file[+direct]:PATH or sparse[+direct]:PATH:SIZE, optionally
    /// numbered (`0=mem:1G`); unnumbered LUNs count from 1.
    #[arg(long, value_name = "[ID=]BACKING")]
    lun: Vec<String>,
    /// CHAP the initiators must pass, USER:SECRET.
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,
    /// Credentials the target answers mutual CHAP with, USER:SECRET.
    #[arg(long, value_name = "USER:SECRET", requires = "chap")]
    mutual_chap: Option<String>,
    /// Initiator IQN allowed to log in (repeat for several); none given allows any.
    #[arg(long, value_name = "IQN", value_parser = iscsi_name)]
    allow: Vec<String>,
    /// ALUA mode reported in INQUIRY: none, implicit, explicit or both.
    #[arg(long, default_value = "both")]
    alua: String,
    /// What SET TARGET PORT GROUPS from an initiator does to the groups it does not name:
    /// demote-others (a group made active/optimized demotes the other optimized groups to
    /// active/non-optimized, as dual-controller arrays do) or as-requested (only the named
    /// groups change).
    #[arg(long, default_value = "demote-others", value_name = "POLICY")]
    stpg: String,
    /// Control socket path.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
}

#[derive(Args)]
struct CtlCmd {
    /// Control socket of the target (before or after the operation).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    op: CtlOp,
}

#[derive(Subcommand)]
enum CtlOp {
    /// Targets, portal groups with ALUA states, LUNs, portals with faults.
    Status,
    /// Logged-in sessions.
    Sessions,
    /// Set the ALUA state of a target port group: TARGET GROUP STATE
    /// (active-optimized, active-non-optimized, standby, unavailable, transitioning).
    Alua {
        target: String,
        group: u16,
        state: String,
    },
    /// Take a LUN offline (I/O and TEST UNIT READY fail with NOT READY) or bring it back;
    /// or make its READs fail with MEDIUM ERROR while TEST UNIT READY passes (read-errors,
    /// undone by no-read-errors); or answer every command BUSY (busy, undone by not-busy);
    /// or read its backing file's size again after growing or shrinking it (`truncate -s`),
    /// telling initiators CAPACITY DATA HAS CHANGED (rescan).
    Lun {
        target: String,
        lun: u16,
        #[arg(value_parser = ["online", "offline", "read-errors", "no-read-errors", "busy", "not-busy", "rescan"])]
        state: String,
    },
    /// Inject a fault on a portal: blackhole, reset, delay MS, drop-after N, busy (every
    /// SCSI command answered BUSY), task-set-full, clear.
    Fault {
        portal: SocketAddr,
        #[arg(value_parser = ["blackhole", "reset", "delay", "drop-after", "busy", "task-set-full", "clear"])]
        fault: String,
        /// Milliseconds for delay, PDUs for drop-after.
        value: Option<u64>,
    },
}

/// An iSCSI name given on the command line (iqn., eui. or naa. form): refused as a usage
/// error when malformed.
fn iscsi_name(s: &str) -> Result<String, String> {
    iscsi_target::config::check_name(s).map(|()| s.to_string())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // A helper udev runs on every loop event: no runtime, no log set-up.
    if let Command::Udev { what } = cli.command {
        return udev_cmd::run(what);
    }
    match cli.command {
        Command::Systemd { what } => return service::run(what),
        Command::Completions { shell } => return manual::completions(shell),
        Command::Man { dir } => return manual::man(dir.as_deref()),
        _ => {}
    }
    if let Command::Config { what } = cli.command {
        return config_cmd::run(what);
    }
    let default_level = match cli.command {
        Command::Iscsi(_) => "warn",
        // Their own output tells the story (the timeline has every failure).
        Command::Demo(_) | Command::Bench(_) => "error",
        _ => "info",
    };
    let level = cli.log.clone().unwrap_or_else(|| default_level.to_string());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level))
        .context("--log")?;
    let journal = match cli.log_format {
        LogFormat::Auto => service::stderr_is_journal(),
        LogFormat::Text => false,
        LogFormat::Journal => true,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if journal {
        logs.with_ansi(false)
            .event_format(service::JournalFormat)
            .init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    // Servers use every core; a diagnostic client is one event loop (as iscsi-perf is):
    // commands then never hop between threads.
    let rt = match cli.command {
        Command::Iscsi(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    match cli.command {
        Command::Target(t) => match t.ctl {
            Some(TargetSub::Ctl(c)) => rt.block_on(target_cmd::target_ctl(c)),
            None => rt.block_on(target_cmd::target_serve(t.serve)),
        },
        Command::Iscsi(c) => rt.block_on(iscsi_cmd::run(c)),
        Command::Demo(d) => rt.block_on(demo::run(d)),
        Command::Persist(p) => rt.block_on(persist_cmd::run(p)),
        Command::Bench(b) => rt.block_on(bench::run(b)),
        other => rt.block_on(daemon_cmd::run(other)),
    }
}
