//! Failure detection through the testkit fault proxy: the same promises as with the
//! target's own fault switches, but with faults in the "network" — so they hold against any
//! target, tgtd included.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use block::{DataPhase, IoErrorKind, PathEvent, PathFailKind, PathTransport, ScsiRequest};
use bytes::Bytes;
use iscsi_initiator::*;
use scsi::cdb::build;
use testkit::proxy::{FaultProxy, ProxyFault};

fn read(lba: u64) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(build::read_16(lba, 8, false).as_bytes()),
        data: DataPhase::In { len: 4096 },
    }
}

fn events(p: &IscsiPath) -> Arc<Mutex<Vec<(Instant, PathEvent)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    p.subscribe(Box::new(move |e| {
        l.lock().unwrap().push((Instant::now(), e))
    }));
    log
}

fn first_failure(log: &Mutex<Vec<(Instant, PathEvent)>>) -> Option<(Instant, PathFailKind)> {
    log.lock().unwrap().iter().find_map(|(t, e)| match e {
        PathEvent::Failed { reason } => Some((*t, reason.kind.clone())),
        _ => None,
    })
}

/// Run every proxy scenario against whatever target `upstream` is.
async fn scenarios(upstream: SocketAddr, iqn: &str) {
    let proxy = FaultProxy::start("127.0.0.1:0", upstream);
    let mut cfg = SessionConfig::new(proxy.addr(), iqn);
    cfg.replacement_timeout = Duration::ZERO;
    let s = Session::open(cfg).await.expect("login through the proxy");
    let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
    let log = events(&p);
    p.command(read(0)).await.unwrap();

    // 1. Silent blackhole with commands outstanding: all fail with a path error, < 1 s.
    proxy.set(ProxyFault::Blackhole);
    let start = Instant::now();
    let futs: Vec<_> = (0..8).map(|i| p.submit(read(i))).collect();
    for f in futs {
        assert_eq!(f.await.unwrap_err().kind, IoErrorKind::Path);
    }
    let (at, kind) = first_failure(&log).expect("Failed event");
    assert_eq!(kind, PathFailKind::Stalled);
    assert!(
        at.duration_since(start) < Duration::from_secs(1),
        "{:?}",
        at.duration_since(start)
    );
    proxy.set(ProxyFault::Pass);
    assert!(s.wait_up(Duration::from_secs(10)).await, "{:?}", s.state());
    p.command(read(0)).await.unwrap();
    log.lock().unwrap().clear();

    // 2. One-way loss: answers never come back.
    proxy.set(ProxyFault::DropToInitiator);
    let start = Instant::now();
    assert_eq!(
        p.command(read(1)).await.unwrap_err().kind,
        IoErrorKind::Path
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    proxy.set(ProxyFault::Pass);
    assert!(s.wait_up(Duration::from_secs(10)).await);
    log.lock().unwrap().clear();

    // 3. Reset: at once.
    proxy.set(ProxyFault::Delay(Duration::from_millis(300)));
    let futs: Vec<_> = (0..4).map(|i| p.submit(read(i))).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    proxy.reset();
    for f in futs {
        assert_eq!(f.await.unwrap_err().kind, IoErrorKind::Path);
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    proxy.set(ProxyFault::Pass);
    assert!(s.wait_up(Duration::from_secs(10)).await);
    log.lock().unwrap().clear();

    // 4. Answers suddenly 200 ms late (under the 250 ms stall-ping floor): never failed, at
    //    depth 1 (silence between answers) or 8.
    proxy.set(ProxyFault::DelayToInitiator(Duration::from_millis(200)));
    for depth in [1u64, 8] {
        for _ in 0..3 {
            let futs: Vec<_> = (0..depth).map(|i| p.submit(read(i))).collect();
            for f in futs {
                f.await.expect("a slow link is not a dead one");
            }
        }
    }
    assert!(first_failure(&log).is_none(), "{:?}", log.lock().unwrap());
    proxy.set(ProxyFault::Pass);
    s.logout().await;

    // 5. A link that is slow from the start — 300 ms each way, 600 ms round trip — is learned
    //    at login and never failed, even at depth 1.
    let slow = FaultProxy::start("127.0.0.1:0", upstream);
    slow.set(ProxyFault::Delay(Duration::from_millis(300)));
    let mut cfg = SessionConfig::new(slow.addr(), iqn);
    cfg.replacement_timeout = Duration::ZERO;
    let s = Session::open(cfg).await.expect("login over a slow link");
    let p = IscsiPath::new(s.clone(), 1, RetryPolicy::default());
    let log = events(&p);
    for i in 0..4 {
        p.command(read(i))
            .await
            .expect("a slow link is not a dead one");
    }
    assert!(first_failure(&log).is_none(), "{:?}", log.lock().unwrap());
    s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_to_mpath_target() {
    use iscsi_target::backend::BackingSpec;
    use iscsi_target::config::*;
    let cfg = ServerConfig {
        targets: vec![TargetSpec {
            iqn: "iqn.2026-01.io.mpath:proxy".into(),
            alias: None,
            portal_groups: vec![PortalGroupSpec {
                tag: 1,
                portals: vec!["127.0.0.1:0".parse().unwrap()],
                state: AluaState::ActiveOptimized,
                preferred: false,
            }],
            luns: vec![LunSpec {
                id: 1,
                backing: BackingSpec::Memory { size: 16 << 20 },
                block_size: 512,
                serial: None,
                vendor: DEFAULT_VENDOR.into(),
                product: DEFAULT_PRODUCT.into(),
            }],
            allowed_initiators: vec![],
            chap: None,
            mutual_chap: None,
            alua: AluaMode::Both,
            stpg: Default::default(),
        }],
        ..ServerConfig::default()
    };
    let server = iscsi_target::Server::bind(cfg).await.unwrap();
    let portal = server.portals()[0];
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    scenarios(portal, "iqn.2026-01.io.mpath:proxy").await;
    let _ = stop.send(());
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_to_tgtd() {
    if !testkit::require("proxy_tgtd", &["tgtd", "tgtadm"]) {
        return;
    }
    let portal: SocketAddr = format!("127.0.0.1:{}", testkit::free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let t = tokio::task::spawn_blocking(move || testkit::Tgtd::start(7331, &[portal], 64 << 20))
        .await
        .unwrap();
    scenarios(portal, &t.iqn).await;
    drop(t);
}
