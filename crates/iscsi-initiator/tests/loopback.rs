//! Our initiator against our target, in-process on loopback, with the target's fault
//! switches: data integrity, discovery, and every failure-detection promise.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block::{DataPhase, IoErrorKind, PathEvent, PathFailKind, PathTransport, ScsiRequest};
use bytes::Bytes;
use iscsi_initiator::*;
use iscsi_target::backend::BackingSpec;
use iscsi_target::config::{
    AluaMode, AluaState, LunSpec, PortalGroupSpec, ServerConfig, TargetSpec,
};
use iscsi_target::{Control, Fault, Server};
use scsi::cdb::build;

const IQN: &str = "iqn.2026-01.io.mpath:loop";

struct Target {
    portals: Vec<SocketAddr>,
    control: Control,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    async fn start(portals: &[&str]) -> Target {
        let cfg = ServerConfig {
            targets: vec![TargetSpec {
                iqn: IQN.into(),
                alias: None,
                portal_groups: portals
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PortalGroupSpec {
                        tag: i as u16 + 1,
                        portals: vec![p.parse().unwrap()],
                        state: AluaState::ActiveOptimized,
                        preferred: false,
                    })
                    .collect(),
                luns: vec![LunSpec {
                    id: 1,
                    backing: BackingSpec::Memory { size: 64 << 20 },
                    block_size: 512,
                    serial: None,
                    vendor: "MPATH".into(),
                    product: "VIRTUAL-DISK".into(),
                }],
                allowed_initiators: vec![],
                chap: None,
                mutual_chap: None,
                alua: AluaMode::Both,
                stpg: Default::default(),
            }],
            ..ServerConfig::default()
        };
        Target::serve(cfg).await
    }

    async fn serve(cfg: ServerConfig) -> Target {
        let server = Server::bind(cfg).await.expect("bind");
        let portals = server.portals();
        let control = server.control();
        let (stop, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Target {
            portals,
            control,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

fn cfg(portal: SocketAddr) -> SessionConfig {
    let mut c = SessionConfig::new(portal, IQN);
    c.replacement_timeout = Duration::ZERO;
    c
}

fn read(lba: u64, blocks: u32) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(build::read_16(lba, blocks, false).as_bytes()),
        data: DataPhase::In { len: blocks * 512 },
    }
}

fn write(lba: u64, data: Vec<u8>) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(
            build::write_16(lba, (data.len() / 512) as u32, false).as_bytes(),
        ),
        data: DataPhase::Out(Bytes::from(data)),
    }
}

fn record(path: &IscsiPath) -> Arc<Mutex<Vec<(Instant, PathEvent)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    path.subscribe(Box::new(move |e| {
        l.lock().unwrap().push((Instant::now(), e))
    }));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_verify_with_and_without_digests() {
    let t = Target::start(&["127.0.0.1:0"]).await;
    for digests in [false, true] {
        let s = Session::open(cfg(t.portals[0]).with_digests(digests, digests))
            .await
            .unwrap();
        let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
        // Sizes crossing immediate data, unsolicited Data-Out and R2T-driven bursts.
        for (lba, blocks) in [(0u64, 1u32), (8, 8), (100, 600), (2000, 4096)] {
            let data: Vec<u8> = (0..blocks as usize * 512)
                .map(|i| (i as u64 * 31 + lba) as u8)
                .collect();
            p.command(write(lba, data.clone())).await.unwrap();
            let back = p.command(read(lba, blocks)).await.unwrap();
            assert!(back == data, "lba {lba} blocks {blocks} digests {digests}");
        }
        // 32 at once.
        let futs: Vec<_> = (0..32u64).map(|i| p.submit(read(i * 8, 8))).collect();
        for f in futs {
            assert_eq!(f.await.unwrap().len(), 4096);
        }
        s.logout().await;
        assert_eq!(s.state(), SessionState::Closed);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_probe_through_both_portals() {
    let t = Target::start(&["127.0.0.1:0", "127.0.0.2:0"]).await;
    let found = discover(t.portals[0], &DiscoveryConfig::default())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, IQN);
    let socks: Vec<_> = found[0]
        .portals
        .iter()
        .map(|p| (p.socket.unwrap(), p.tpgt))
        .collect();
    assert_eq!(socks, vec![(t.portals[0], 1), (t.portals[1], 2)]);
    let mut wwids = Vec::new();
    for (i, portal) in t.portals.iter().enumerate() {
        let s = Session::open(cfg(*portal)).await.unwrap();
        let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
        assert_eq!(probe::report_luns(&p).await.unwrap(), vec![1]);
        let info = probe::probe_lu(&p).await.unwrap();
        assert_eq!((info.block_size, info.blocks), (512, (64 << 20) / 512));
        assert_eq!(info.target_port_group, Some(i as u16 + 1));
        assert_eq!(
            info.alua.map(|a| a.0),
            Some(scsi::AluaState::ACTIVE_OPTIMIZED)
        );
        wwids.push(info.wwid.unwrap());
        s.logout().await;
    }
    assert_eq!(wwids[0], wwids[1], "the same LU through both portals");
    assert!(wwids[0].starts_with("36"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_with_commands_outstanding_fails_them_all_within_1s() {
    let t = Target::start(&["127.0.0.1:0"]).await;
    let s = Session::open(cfg(t.portals[0])).await.unwrap();
    let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
    let events = record(&p);
    p.command(read(0, 8)).await.unwrap();
    t.control.set_fault(t.portals[0], Fault::Blackhole).unwrap();
    let start = Instant::now();
    let futs: Vec<_> = (0..16u64).map(|i| p.submit(read(i, 1))).collect();
    for f in futs {
        let e = f.await.unwrap_err();
        assert_eq!(e.kind, IoErrorKind::Path, "{e}");
        // The transport says how the path failed: nobody above has to guess.
        assert_eq!(e.path_fail, Some(PathFailKind::Stalled), "{e}");
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let ev = events.lock().unwrap().clone();
    let failed = ev.iter().find_map(|(at, e)| match e {
        PathEvent::Failed { reason } => Some((*at, reason.clone())),
        _ => None,
    });
    let (at, reason) = failed.expect("Failed event");
    assert_eq!(reason.kind, PathFailKind::Stalled);
    assert!(at.duration_since(start) < Duration::from_secs(1));
    eprintln!("blackhole detected in {:?}", at.duration_since(start));
    // Clear the fault: the session recovers on its own and I/O goes on.
    t.control.set_fault(t.portals[0], Fault::None).unwrap();
    assert!(s.wait_up(Duration::from_secs(10)).await, "{:?}", s.state());
    assert_eq!(p.command(read(0, 8)).await.unwrap().len(), 4096);
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|(_, e)| matches!(e, PathEvent::Recovered)));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fails_at_once_and_recovers() {
    let t = Target::start(&["127.0.0.1:0"]).await;
    let s = Session::open(cfg(t.portals[0])).await.unwrap();
    let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
    let events = record(&p);
    // Hold the commands at the target, then reset the connection under them.
    t.control
        .set_fault(t.portals[0], Fault::Delay { ms: 500 })
        .unwrap();
    let futs: Vec<_> = (0..8u64).map(|i| p.submit(read(i, 1))).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    t.control.reset_portal(t.portals[0]).unwrap();
    for f in futs {
        assert_eq!(f.await.unwrap_err().kind, IoErrorKind::Path);
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    let kinds: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match e {
            PathEvent::Failed { reason } => Some(reason.kind.clone()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(
            kinds.first(),
            Some(PathFailKind::ConnectionReset | PathFailKind::ConnectionClosed)
        ),
        "{kinds:?}"
    );
    t.control.set_fault(t.portals[0], Fault::None).unwrap();
    assert!(s.wait_up(Duration::from_secs(5)).await);
    p.command(read(0, 1)).await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_300ms_late_is_not_failed() {
    let t = Target::start(&["127.0.0.1:0"]).await;
    let s = Session::open(cfg(t.portals[0])).await.unwrap();
    let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
    let events = record(&p);
    p.command(read(0, 1)).await.unwrap();
    t.control
        .set_fault(t.portals[0], Fault::Delay { ms: 300 })
        .unwrap();
    // Queue depth 1 (silence between answers) and 8 (bytes keep flowing).
    for depth in [1usize, 8] {
        for _ in 0..4 {
            let futs: Vec<_> = (0..depth as u64).map(|i| p.submit(read(i, 8))).collect();
            for f in futs {
                f.await.expect("a slow target is not a dead one");
            }
        }
    }
    assert!(!events
        .lock()
        .unwrap()
        .iter()
        .any(|(_, e)| matches!(e, PathEvent::Failed { .. })));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_restart_recovers_and_io_goes_on() {
    let t = Target::start(&["127.0.0.1:0"]).await;
    let portal = t.portals[0];
    let mut c = cfg(portal);
    // Standalone use: commands wait for recovery.
    c.replacement_timeout = Duration::from_secs(10);
    let s = Session::open(c).await.unwrap();
    let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
    let events = record(&p);
    p.command(write(0, vec![9u8; 512])).await.unwrap();
    t.stop().await;
    // Gone: the session notices, and recovery attempts back off.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        matches!(s.state(), SessionState::Recovering { .. }),
        "{:?}",
        s.state()
    );
    // A command issued now waits for the replacement timeout...
    let pending = p.submit(read(0, 1));
    // ... and the target comes back on the same portal (memory LU: contents are new).
    let t2 = Target::start(&[&portal.to_string()]).await;
    let got = pending.await.expect("completed after recovery");
    assert_eq!(got.len(), 512);
    let ev: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e.clone())
        .collect();
    assert!(ev.iter().any(|e| matches!(e, PathEvent::Failed { .. })));
    assert!(ev
        .iter()
        .any(|e| matches!(e, PathEvent::Recovering { attempt, .. } if *attempt >= 2)));
    assert!(ev.iter().any(|e| matches!(e, PathEvent::Recovered)));
    t2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chap_right_and_wrong() {
    let mut cfgt = ServerConfig::default();
    let t0 = Target::start(&["127.0.0.1:0"]).await;
    t0.stop().await;
    cfgt.targets = vec![TargetSpec {
        iqn: IQN.into(),
        alias: None,
        portal_groups: vec![PortalGroupSpec {
            tag: 1,
            portals: vec!["127.0.0.1:0".parse().unwrap()],
            state: AluaState::ActiveOptimized,
            preferred: false,
        }],
        luns: vec![LunSpec {
            id: 1,
            backing: BackingSpec::Memory { size: 1 << 20 },
            block_size: 512,
            serial: None,
            vendor: "MPATH".into(),
            product: "VIRTUAL-DISK".into(),
        }],
        allowed_initiators: vec![],
        chap: Some(iscsi_target::config::Chap::parse("alice:alice-secret-1").unwrap()),
        mutual_chap: Some(iscsi_target::config::Chap::parse("array:array-secret-2").unwrap()),
        alua: AluaMode::Both,
        stpg: Default::default(),
    }];
    let t = Target::serve(cfgt).await;
    let mut good = cfg(t.portals[0]);
    good.chap = Some(ChapCredentials::new("alice", "alice-secret-1"));
    good.mutual_chap = Some(ChapCredentials::new("array", "array-secret-2"));
    let s = Session::open(good.clone()).await.expect("right secrets");
    s.logout().await;
    let mut wrong = good.clone();
    wrong.chap = Some(ChapCredentials::new("alice", "not-it"));
    let e = Session::open(wrong).await.unwrap_err();
    assert!(e.to_string().contains("0x0201"), "{e}");
    // A session retried in the background (a daemon's) says why at its first retry: the
    // Recovering event carries the login failure.
    let mut wrong_bg = good.clone();
    wrong_bg.chap = Some(ChapCredentials::new("alice", "not-it"));
    let bg = Session::spawn(wrong_bg);
    let events = record(&IscsiPath::new(bg.clone(), 1, RetryPolicy::default()));
    let deadline = Instant::now() + Duration::from_secs(3);
    let why = loop {
        let found = events.lock().unwrap().iter().find_map(|(_, e)| match e {
            PathEvent::Recovering {
                last_failure: Some(r),
                ..
            } => Some(r.clone()),
            _ => None,
        });
        if let Some(r) = found {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no Recovering event with the login's reason"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(why.kind, PathFailKind::LoginFailed, "{why}");
    assert!(why.to_string().contains("0x0201"), "{why}");
    drop(bg);
    let mut bad_mutual = good;
    bad_mutual.mutual_chap = Some(ChapCredentials::new("array", "wrong-expectation"));
    let e = Session::open(bad_mutual).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("mutual"), "{e}");
    t.stop().await;
}

/// The stale-write hazard at its source: a WRITE sent into a blackhole, on a connection the
/// initiator then gives up (it is issued again elsewhere, newer data follows), must never
/// execute when the blackhole clears — the initiator closes with RST and the target drops
/// what it held for a connection its initiator left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_into_a_blackhole_never_lands_after_the_initiator_gave_up() {
    let t = Target::start(&["127.0.0.1:0", "127.0.0.2:0"]).await;
    let a = Session::open(cfg(t.portals[0])).await.unwrap();
    let b = Session::open(cfg(t.portals[1])).await.unwrap();
    let pa = IscsiPath::new(a.clone(), 1, RetryPolicy::default());
    let pb = IscsiPath::new(b.clone(), 1, RetryPolicy::default());
    let old = vec![0x01u8; 4096];
    let new = vec![0x02u8; 4096];
    pa.command(write(64, vec![0u8; 4096])).await.unwrap();
    t.control.set_fault(t.portals[0], Fault::Blackhole).unwrap();
    // The old write goes into the blackhole and fails as a path error...
    let e = pa.command(write(64, old.clone())).await.unwrap_err();
    assert_eq!(e.kind, IoErrorKind::Path, "{e}");
    // ...is issued again on the other path, and newer data follows it there.
    pb.command(write(64, old)).await.unwrap();
    pb.command(write(64, new.clone())).await.unwrap();
    // The blackhole clears: the first attempt must not overwrite the newer data.
    t.control.set_fault(t.portals[0], Fault::None).unwrap();
    assert!(a.wait_up(Duration::from_secs(10)).await, "{:?}", a.state());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        pb.command(read(64, 8)).await.unwrap() == new,
        "the write sent into the blackhole landed after newer data"
    );
    a.logout().await;
    b.logout().await;
    t.stop().await;
}

/// A recovery login sent while the portal is still blackholed waits for it to clear, so
/// its round trip says nothing about the network. Failure detection on the recovered
/// connection must not scale with it: under steady load (no idle pings to re-measure),
/// the next blackhole is still found in well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_stays_fast_after_a_recovery_login_that_waited_on_a_blackhole() {
    let t = Target::start(&["127.0.0.1:0"]).await;
    let s = Session::open(cfg(t.portals[0])).await.unwrap();
    let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
    t.control.set_fault(t.portals[0], Fault::Blackhole).unwrap();
    assert!(p.command(read(0, 1)).await.is_err());
    // Recovery logins now wait on the silent portal for 1.5 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.control.set_fault(t.portals[0], Fault::None).unwrap();
    assert!(s.wait_up(Duration::from_secs(10)).await, "{:?}", s.state());
    // Steady load for a while, then the blackhole again.
    let busy = Instant::now();
    while busy.elapsed() < Duration::from_millis(500) {
        let futs: Vec<_> = (0..8u64).map(|i| p.submit(read(i, 1))).collect();
        for f in futs {
            f.await.unwrap();
        }
    }
    t.control.set_fault(t.portals[0], Fault::Blackhole).unwrap();
    let start = Instant::now();
    let futs: Vec<_> = (0..8u64).map(|i| p.submit(read(i, 1))).collect();
    for f in futs {
        assert_eq!(f.await.unwrap_err().kind, IoErrorKind::Path);
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "detected after {took:?}");
    t.control.set_fault(t.portals[0], Fault::None).unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hurry_cuts_a_grown_back_off_short() {
    let t = Target::start(&["127.0.0.1:0"]).await;
    let portal = t.portals[0];
    let mut c = cfg(portal);
    c.backoff_initial = Duration::from_millis(200);
    c.backoff_max = Duration::from_secs(5);
    let s = Session::open(c).await.unwrap();
    let mut state = s.watch_state();
    t.stop().await;
    tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|st| *st != SessionState::Up),
    )
    .await
    .expect("the session noticed its target stop")
    .unwrap();
    // Logins are refused at once; the back-off doubles: attempts at 0, 0.2, 0.6, 1.4, 3.0
    // and then 6.2 s after the failure.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!s.is_up());
    let t = Target::start(&[&portal.to_string()]).await;
    // The next attempt is due about 2.7 s from now; hurried, it comes at once.
    let hurried = Instant::now();
    s.hurry();
    tokio::time::timeout(
        Duration::from_secs(2),
        state.wait_for(|st| *st == SessionState::Up),
    )
    .await
    .expect("logged in again within 2 s of the hurry")
    .unwrap();
    let took = hurried.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
    p.command(read(0, 1)).await.unwrap();
    s.logout().await;
    t.stop().await;
}
