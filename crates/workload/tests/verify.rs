//! The workload and the NBD client against an in-process NBD server over `MemDevice`: a
//! clean run is clean, and a device that drops, corrupts or misdirects one write is caught.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use block::{BlockDevice, BlockOp, ByteOffset, DeviceInfo, IoError, IoErrorKind, Outcome};
use bytes::Bytes;
use export::mem::{pattern, MemDevice};
use export::nbd::{Listener, NbdConfig, NbdServer};
use export::Exports;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use workload::nbd::{NbdClient, NbdError};
use workload::verify::{Config, Workload};

const MIB: u64 = 1 << 20;

/// A misbehaviour of one write.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Acknowledge it without writing anything.
    Drop,
    /// Write it with one byte flipped.
    Corrupt,
    /// Write it one block further on.
    Misdirect,
}

/// A `MemDevice` that misbehaves on its `at`-th write, then calls `on_fire` (the tests stop
/// the workload there, so no later write to the block can hide the damage).
struct Faulty {
    inner: MemDevice,
    fault: Option<Misbehaviour>,
    at: u64,
    writes: AtomicU64,
    on_fire: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Faulty {
    fn new(size: u64, fault: Option<Misbehaviour>, at: u64) -> Faulty {
        Faulty {
            inner: MemDevice::new(size, 4096),
            fault,
            at,
            writes: AtomicU64::new(0),
            on_fire: Mutex::new(None),
        }
    }

    fn on_fire(&self, f: impl FnOnce() + Send + 'static) {
        *self.on_fire.lock().unwrap() = Some(Box::new(f));
    }

    fn fire(&self) {
        if let Some(f) = self.on_fire.lock().unwrap().take() {
            f();
        }
    }
}

impl BlockDevice for Faulty {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    async fn submit(&self, op: BlockOp) -> Result<Outcome, IoError> {
        let BlockOp::Write { offset, data, fua } = op else {
            return self.inner.submit(op).await;
        };
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        let op = match self.fault {
            Some(m) if n == self.at => {
                let bs = u64::from(self.inner.info().block_size);
                let op = match m {
                    Misbehaviour::Drop => None,
                    Misbehaviour::Corrupt => {
                        let mut d = data.to_vec();
                        d[1000] ^= 0x5a;
                        Some(BlockOp::Write {
                            offset,
                            data: d.into(),
                            fua,
                        })
                    }
                    Misbehaviour::Misdirect => Some(BlockOp::Write {
                        offset: ByteOffset((offset.0 + bs) % self.inner.info().size),
                        data,
                        fua,
                    }),
                };
                let r = match op {
                    Some(op) => self.inner.submit(op).await,
                    None => Ok(Outcome::Done),
                };
                self.fire();
                return r;
            }
            _ => BlockOp::Write { offset, data, fua },
        };
        self.inner.submit(op).await
    }
}

/// An NBD server exporting `dev` as "disk" on a TCP port and a unix socket.
struct Server<D> {
    tcp: std::net::SocketAddr,
    unix: PathBuf,
    dev: Arc<D>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl<D: BlockDevice + 'static> Server<D> {
    async fn start(dev: D) -> Server<D> {
        let dev = Arc::new(dev);
        let exports = Exports::new();
        exports.insert("disk", dev.clone()).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let unix = std::env::temp_dir().join(format!(
            "workload-test-{}-{}.sock",
            std::process::id(),
            NEXT_SOCKET.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&unix);
        let ul = UnixListener::bind(&unix).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = NbdServer::new(exports, NbdConfig::default());
        let listeners: Vec<Listener> = vec![tcp.into(), ul.into()];
        let task = tokio::spawn(server.run(listeners, async move {
            let _ = stopped.await;
        }));
        Server {
            tcp: addr,
            unix,
            dev,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> NbdClient {
        NbdClient::connect_tcp(self.tcp, "disk").await.unwrap()
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the NBD server stops")
            .unwrap();
        let _ = std::fs::remove_file(&self.unix);
    }
}

static NEXT_SOCKET: AtomicU64 = AtomicU64::new(0);

fn config(region: u64, depth: usize, ms: u64) -> Config {
    Config {
        depth,
        duration: Duration::from_millis(ms),
        drain_timeout: Duration::from_secs(10),
        ..Config::for_region(0, region)
    }
}

#[tokio::test]
async fn clean_run_through_nbd() {
    let server = Server::start(MemDevice::new(64 * MIB, 4096)).await;
    let client = server.client().await;
    assert_eq!(client.size(), 64 * MIB);
    let wl = Workload::new(client.clone(), config(8 * MIB, 8, 1500)).unwrap();
    let report = wl.run().await;
    assert!(report.clean(), "{report:#?}");
    assert!(
        report.ops > 1000 && report.reads > 0 && report.writes > 0,
        "{report:#?}"
    );
    assert!(report.verified > 0, "{report:#?}");
    assert_eq!(report.iops.iter().sum::<u64>(), report.ops);
    assert!(report.iops.len() >= 2, "{report:#?}");
    assert!(report.longest_gap_ms() > 0.0 && report.latency_max_ms > 0.0);
    assert_eq!(wl.progress().in_flight, 0);
    let check = wl.verify_all().await;
    assert!(check.clean(), "{check:#?}");
    assert_eq!(check.blocks, 2048);
    assert!(
        check.verified > 0 && check.verified + check.unwritten == check.blocks,
        "{check:#?}"
    );
    client.disconnect().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn in_process_device_without_nbd() {
    let dev = Arc::new(MemDevice::new(4 * MIB, 512));
    let wl = Workload::new(dev.clone(), config(2 * MIB, 4, 300)).unwrap();
    let report = wl.run().await;
    assert!(report.clean() && report.ops > 0, "{report:#?}");
    assert!(wl.verify_all().await.clean());
    // A block size the device cannot take whole.
    let bad = Config {
        block_size: 8192,
        ..config(2 * MIB, 4, 300)
    };
    let dev2 = Arc::new(MemDevice::builder(4 * MIB, 512).max_transfer(4096).build());
    let e = Workload::new(dev2, bad)
        .err()
        .expect("8 KiB blocks over a 4 KiB maximum transfer");
    assert!(e.to_string().contains("maximum transfer"), "{e}");
}

/// Run until `dev` misbehaves (then stop), and check the whole region.
async fn caught(
    fault: Misbehaviour,
    depth: usize,
) -> (workload::verify::Report, workload::verify::VerifyReport) {
    let server = Server::start(Faulty::new(4 * MIB, Some(fault), 300)).await;
    let client = server.client().await;
    let wl = Arc::new(Workload::new(client.clone(), config(MIB, depth, 20_000)).unwrap());
    let weak = Arc::downgrade(&wl);
    server.dev.on_fire(move || {
        if let Some(w) = weak.upgrade() {
            w.stop();
        }
    });
    let report = tokio::time::timeout(Duration::from_secs(30), wl.run())
        .await
        .expect("the run stops when the fault fires");
    assert!(
        report.seconds < 15.0,
        "stopped by the fault, not the duration: {report:#?}"
    );
    assert_eq!(report.errors, 0, "{report:#?}");
    let check = wl.verify_all().await;
    assert_eq!(check.errors, 0, "{check:#?}");
    client.disconnect().await.unwrap();
    server.shutdown().await;
    (report, check)
}

#[tokio::test]
async fn dropped_write_is_stale() {
    let (report, check) = caught(Misbehaviour::Drop, 4).await;
    assert_eq!(check.stale, 1, "{check:#?}");
    assert_eq!(check.corrupt + check.misplaced, 0, "{check:#?}");
    assert_eq!(report.corrupt + report.misplaced, 0, "{report:#?}");
    assert!(check.messages[0].contains("stale"), "{check:#?}");
}

#[tokio::test]
async fn corrupted_byte_is_corrupt() {
    let (report, check) = caught(Misbehaviour::Corrupt, 4).await;
    assert_eq!(check.corrupt, 1, "{check:#?}");
    assert_eq!(check.stale + check.misplaced, 0, "{check:#?}");
    assert_eq!(report.stale + report.misplaced, 0, "{report:#?}");
    assert!(check.messages[0].contains("checksum"), "{check:#?}");
}

#[tokio::test]
async fn misdirected_write_is_misplaced() {
    // One worker: with several, a write racing to the block next door could overwrite the
    // misplaced data before anyone reads it (then only the stale block shows).
    let (_, check) = caught(Misbehaviour::Misdirect, 1).await;
    assert_eq!(check.misplaced, 1, "{check:#?}");
    // The block the write was meant for did not get it.
    assert_eq!(check.stale, 1, "{check:#?}");
    assert_eq!(check.corrupt, 0, "{check:#?}");
}

#[tokio::test]
async fn device_errors_are_counted_not_fatal() {
    let server = Server::start(Faulty::new(4 * MIB, None, 0)).await;
    let client = server.client().await;
    let wl = Arc::new(Workload::new(client.clone(), config(MIB, 4, 1200)).unwrap());
    let run = tokio::spawn({
        let wl = wl.clone();
        async move { wl.run().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.dev.inner.set_fault(Some(IoError::new(
        IoErrorKind::Target,
        "MEDIUM ERROR (test)",
    )));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.dev.inner.set_fault(None);
    let report = run.await.unwrap();
    assert!(report.errors > 0, "{report:#?}");
    assert_eq!(
        report.corrupt + report.stale + report.misplaced,
        0,
        "{report:#?}"
    );
    assert!(report.messages.len() <= 20);
    assert!(
        report.messages[0].contains("EIO") && report.messages[0].contains("LBA"),
        "{:?}",
        report.messages
    );
    // Failed writes have an unknown outcome: either content is accepted.
    let check = wl.verify_all().await;
    assert!(check.clean(), "{check:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn nbd_client_commands_over_unix_socket() {
    let server = Server::start(MemDevice::new(4 * MIB, 512)).await;
    let c = NbdClient::connect_unix(&server.unix, "disk").await.unwrap();
    let info = c.info().clone();
    assert_eq!(info.size, 4 * MIB);
    assert!(info.can_flush() && info.can_fua() && info.can_trim() && info.can_write_zeroes());
    assert!(!info.read_only());
    assert_eq!((info.min_block, info.preferred_block), (512, 4096));
    assert!(info.max_block >= 4096);

    let data = pattern(7, 65536);
    c.write(8192, data.clone(), true).await.unwrap();
    assert_eq!(c.read(8192, 65536).await.unwrap(), data);
    c.flush().await.unwrap();
    c.write_zeroes(8192, 4096, false, false).await.unwrap();
    c.trim(12288, 4096, false).await.unwrap();
    let back = c.read(8192, 65536).await.unwrap();
    assert!(back[..8192].iter().all(|&b| b == 0));
    assert_eq!(back[8192..], data[8192..]);

    // Pipelined: many requests in flight on one connection, answered in any order.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let d = pattern(i, 4096);
            c.write(MIB + i * 4096, d.clone(), false).await.unwrap();
            assert_eq!(c.read(MIB + i * 4096, 4096).await.unwrap(), d);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // A server error names the command and the request.
    let e = c
        .write(4 * MIB, Bytes::from(vec![0u8; 4096]), false)
        .await
        .unwrap_err();
    assert!(matches!(e, NbdError::Command { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("WRITE offset 4194304 length 4096: ENOSPC"),
        "{e}"
    );
    let e = c.read(4 * MIB, 512).await.unwrap_err();
    assert!(e.to_string().contains("EINVAL"), "{e}");
    // The connection survives errors.
    assert_eq!(
        c.read(8192 + 8192, 4096).await.unwrap(),
        data.slice(8192..12288)
    );

    c.disconnect().await.unwrap();
    let e = c.read(0, 512).await.unwrap_err();
    assert!(matches!(e, NbdError::Closed { .. }), "{e}");
    assert_eq!(server.dev.stats().writes, 1 + 64);
    server.shutdown().await;
}

#[tokio::test]
async fn nbd_client_errors_have_context() {
    let server = Server::start(MemDevice::new(MIB, 512)).await;
    let e = NbdClient::connect_tcp(server.tcp, "nosuch")
        .await
        .err()
        .unwrap();
    let m = e.to_string();
    assert!(
        m.contains("NBD_REP_ERR_UNKNOWN") && m.contains("nosuch"),
        "{m}"
    );
    server.shutdown().await;

    // Not an NBD server: something that answers with other bytes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = s
            .write_all(b"SSH-2.0-OpenSSH_9.6 and some more bytes\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let e = NbdClient::connect_tcp(addr, "disk").await.err().unwrap();
    assert!(e.to_string().contains("not an NBD server"), "{e}");

    // Nobody listening.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let e = NbdClient::connect_tcp(addr, "disk").await.err().unwrap();
    assert!(
        e.to_string()
            .contains("cannot connect to NBD server 127.0.0.1"),
        "{e}"
    );
}

/// A server that negotiates, takes one request and closes the connection.
async fn hang_up_after_one_request() -> std::net::SocketAddr {
    use export::nbd::proto::*;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(&greeting()).await.unwrap();
        let mut flags = [0u8; 4];
        s.read_exact(&mut flags).await.unwrap();
        let mut h = [0u8; OptionHeader::LEN];
        s.read_exact(&mut h).await.unwrap();
        let opt = OptionHeader::decode(&h);
        let mut data = vec![0u8; opt.len as usize];
        s.read_exact(&mut data).await.unwrap();
        let mut out = bytes::BytesMut::new();
        let mut info = vec![0u8, 0];
        info.extend_from_slice(&MIB.to_be_bytes());
        info.extend_from_slice(&(FLAG_HAS_FLAGS | FLAG_SEND_FLUSH).to_be_bytes());
        option_reply(&mut out, OPT_GO, REP_INFO, &info);
        option_reply(&mut out, OPT_GO, REP_ACK, &[]);
        s.write_all(&out).await.unwrap();
        let mut req = [0u8; Request::LEN];
        s.read_exact(&mut req).await.unwrap();
        // Gone without an answer.
    });
    addr
}

#[tokio::test]
async fn connection_loss_fails_requests_in_flight() {
    let addr = hang_up_after_one_request().await;
    let c = NbdClient::connect_tcp(addr, "").await.unwrap();
    assert_eq!((c.size(), c.info().preferred_block), (MIB, 4096));
    let e = tokio::time::timeout(Duration::from_secs(5), c.read(0, 4096))
        .await
        .expect("no hang")
        .unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, NbdError::Closed { .. }), "{m}");
    assert!(
        m.contains("closed the connection") && m.contains("READ offset 0 length 4096 unanswered"),
        "{m}"
    );
    // And every later request.
    let e = c.flush().await.unwrap_err();
    assert!(e.to_string().contains("closed the connection"), "{e}");
}
