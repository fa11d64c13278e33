//! The NBD server against a raw client: handshake variants, every command, garbage,
//! disconnects mid-request, out-of-range and oversize requests, pipelining, shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use block::{IoError, IoErrorKind};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::proto::*;
use super::*;
use crate::mem::{pattern, MemDevice};

const MIB: u64 = 1 << 20;

struct Fixture {
    addr: std::net::SocketAddr,
    dev: Arc<MemDevice>,
    exports: Exports<MemDevice>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Fixture {
    async fn start(dev: MemDevice) -> Fixture {
        Self::start_with(dev, NbdConfig::default()).await
    }

    async fn start_with(dev: MemDevice, config: NbdConfig) -> Fixture {
        let dev = Arc::new(dev);
        let exports = Exports::new();
        exports
            .insert_described("disk", Some("a test disk".into()), Arc::clone(&dev))
            .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = NbdServer::new(exports.clone(), config);
        let task = tokio::spawn(server.run(vec![l.into()], async move {
            let _ = stopped.await;
        }));
        Fixture {
            addr,
            dev,
            exports,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> Client {
        Client::go(self.addr, "disk").await
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

struct Client {
    s: TcpStream,
}

#[derive(Debug)]
struct OptReply {
    option: u32,
    kind: u32,
    data: Vec<u8>,
}

impl Client {
    /// Connect and read the greeting.
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).await.unwrap();
        assert_eq!(g, greeting());
        Client { s }
    }

    async fn flags(&mut self, f: u32) {
        self.s.write_all(&f.to_be_bytes()).await.unwrap();
    }

    async fn opt(&mut self, option: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).await.unwrap();
    }

    async fn opt_reply(&mut self) -> OptReply {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).await.unwrap();
        assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), REPLY_MAGIC);
        let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data).await.unwrap();
        OptReply { option, kind, data }
    }

    /// NBD_OPT_INFO/GO: the replies up to the final ACK or error.
    async fn info(&mut self, option: u32, name: &str, infos: &[u16]) -> Vec<OptReply> {
        self.opt(option, &info_data(name, infos)).await;
        let mut out = Vec::new();
        loop {
            let r = self.opt_reply().await;
            let done = r.kind != REP_INFO;
            out.push(r);
            if done {
                return out;
            }
        }
    }

    async fn go(addr: std::net::SocketAddr, name: &str) -> Client {
        let mut c = Client::connect(addr).await;
        c.flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
        let replies = c.info(OPT_GO, name, &[INFO_BLOCK_SIZE]).await;
        assert_eq!(replies.last().map(|r| r.kind), Some(REP_ACK), "{replies:?}");
        c
    }

    async fn send(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        data: &[u8],
    ) {
        let req = Request {
            magic: REQUEST_MAGIC,
            flags,
            kind,
            cookie,
            offset,
            len,
        };
        let mut b = req.encode().to_vec();
        b.extend_from_slice(data);
        self.s.write_all(&b).await.unwrap();
    }

    /// A simple reply header: (error, cookie).
    async fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).await.unwrap();
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            SIMPLE_REPLY_MAGIC
        );
        (
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..].try_into().unwrap()),
        )
    }

    async fn data(&mut self, len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        self.s.read_exact(&mut d).await.unwrap();
        d
    }

    async fn write(&mut self, cookie: u64, offset: u64, data: &[u8], flags: u16) -> u32 {
        self.send(CMD_WRITE, flags, cookie, offset, data.len() as u32, data)
            .await;
        let (err, c) = self.reply().await;
        assert_eq!(c, cookie);
        err
    }

    async fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send(CMD_READ, 0, cookie, offset, len, &[]).await;
        let (err, c) = self.reply().await;
        assert_eq!(c, cookie);
        if err != 0 {
            return Err(err);
        }
        Ok(self.data(len as usize).await)
    }

    async fn simple(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> u32 {
        self.send(kind, flags, cookie, offset, len, &[]).await;
        let (err, c) = self.reply().await;
        assert_eq!(c, cookie);
        err
    }

    /// True when the server closed the connection (EOF or reset).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        d.extend_from_slice(&i.to_be_bytes());
    }
    d
}

fn info_of(replies: &[OptReply], kind: u16) -> Option<&[u8]> {
    replies
        .iter()
        .filter(|r| r.kind == REP_INFO)
        .map(|r| &r.data[..])
        .find(|d| u16::from_be_bytes([d[0], d[1]]) == kind)
        .map(|d| &d[2..])
}

const EINVAL: u32 = libc::EINVAL as u32;
const ENOSPC: u32 = libc::ENOSPC as u32;

// ---- handshake ----

#[tokio::test]
async fn info_then_go() {
    let f = Fixture::start(
        MemDevice::builder(64 * MIB, 512)
            .max_transfer(256 << 10)
            .build(),
    )
    .await;
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    let r = c
        .info(
            OPT_INFO,
            "disk",
            &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE],
        )
        .await;
    assert_eq!(
        r.last().map(|r| (r.option, r.kind)),
        Some((OPT_INFO, REP_ACK))
    );
    let export = info_of(&r, INFO_EXPORT).expect("NBD_INFO_EXPORT");
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().unwrap()),
        64 * MIB
    );
    let flags = u16::from_be_bytes([export[8], export[9]]);
    for f in [
        FLAG_HAS_FLAGS,
        FLAG_SEND_FLUSH,
        FLAG_SEND_FUA,
        FLAG_SEND_TRIM,
        FLAG_SEND_WRITE_ZEROES,
        FLAG_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x} in {flags:#x}");
    }
    assert_eq!(flags & FLAG_READ_ONLY, 0);
    assert_eq!(info_of(&r, INFO_NAME), Some(&b"disk"[..]));
    assert_eq!(info_of(&r, INFO_DESCRIPTION), Some(&b"a test disk"[..]));
    let bs = info_of(&r, INFO_BLOCK_SIZE).expect("block size");
    let v: Vec<u32> = bs
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(v, vec![512, 4096, 256 << 10]);
    // INFO leaves the negotiation open; GO ends it.
    let r = c.info(OPT_GO, "disk", &[]).await;
    assert_eq!(r.last().map(|r| r.kind), Some(REP_ACK));
    assert!(info_of(&r, INFO_BLOCK_SIZE).is_none(), "not requested");
    assert_eq!(c.read(1, 0, 512).await, Ok(vec![0; 512]));
    f.shutdown().await;
}

#[test]
fn block_size_limits() {
    let info = |bs, max| block::DeviceInfo {
        size: 1 << 30,
        block_size: bs,
        physical_block_size: bs,
        max_transfer: max,
        supports_discard: false,
        supports_write_zeroes: false,
        volatile_write_cache: false,
    };
    assert_eq!(conn::block_sizes(&info(512, 1 << 20)), (512, 4096, 1 << 20));
    assert_eq!(
        conn::block_sizes(&info(4096, 1 << 30)),
        (4096, 4096, MAX_REQUEST)
    );
    assert_eq!(conn::block_sizes(&info(512, 1024)), (512, 1024, 1024));
    assert_eq!(conn::block_sizes(&info(512, 3000)), (512, 2048, 2560));
    assert_eq!(conn::block_sizes(&info(4096, 512)), (4096, 4096, 4096));
}

#[tokio::test]
async fn export_name_with_and_without_zeroes() {
    let f = Fixture::start(MemDevice::new(MIB, 512)).await;
    for no_zeroes in [false, true] {
        let mut c = Client::connect(f.addr).await;
        let flags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
        c.flags(flags).await;
        c.opt(OPT_EXPORT_NAME, b"disk").await;
        let want = 10 + if no_zeroes { 0 } else { EXPORT_NAME_PAD };
        let d = c.data(want).await;
        assert_eq!(u64::from_be_bytes(d[..8].try_into().unwrap()), MIB);
        assert!(d[10..].iter().all(|&b| b == 0));
        // The first transmission reply follows directly.
        assert_eq!(c.write(7, 0, &[1; 512], 0).await, 0);
        assert_eq!(c.read(8, 0, 512).await, Ok(vec![1; 512]));
    }
    // The empty name is the default export while there is exactly one.
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    c.opt(OPT_EXPORT_NAME, b"").await;
    assert_eq!(
        u64::from_be_bytes(c.data(10).await[..8].try_into().unwrap()),
        MIB
    );
    // An unknown name cannot be answered with an error: the connection is closed.
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE).await;
    c.opt(OPT_EXPORT_NAME, b"nope").await;
    assert!(c.closed().await);
    f.shutdown().await;
}

#[tokio::test]
async fn list_unknown_options_and_abort() {
    let f = Fixture::start(MemDevice::new(MIB, 512)).await;
    f.exports
        .insert("other", Arc::new(MemDevice::new(MIB, 4096)))
        .unwrap();
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    c.opt(OPT_LIST, &[]).await;
    let mut names = Vec::new();
    loop {
        let r = c.opt_reply().await;
        if r.kind == REP_ACK {
            break;
        }
        assert_eq!(r.kind, REP_SERVER);
        let n = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
        names.push(String::from_utf8(r.data[4..4 + n].to_vec()).unwrap());
    }
    assert_eq!(names, vec!["disk", "other"]);
    // LIST with data is invalid; the negotiation goes on.
    c.opt(OPT_LIST, b"x").await;
    assert_eq!(c.opt_reply().await.kind, REP_ERR_INVALID);
    for opt in [OPT_STRUCTURED_REPLY, OPT_STARTTLS, 10, 11, 0x1234] {
        c.opt(opt, &[]).await;
        let r = c.opt_reply().await;
        assert_eq!((r.option, r.kind), (opt, REP_ERR_UNSUP));
    }
    let r = c.info(OPT_GO, "missing", &[]).await;
    assert_eq!(r.last().map(|r| r.kind), Some(REP_ERR_UNKNOWN));
    let msg = String::from_utf8_lossy(&r[0].data).into_owned();
    assert!(msg.contains("disk, other"), "{msg}");
    // Two exports: no default export.
    let r = c.info(OPT_GO, "", &[]).await;
    assert_eq!(r.last().map(|r| r.kind), Some(REP_ERR_UNKNOWN));
    c.opt(OPT_GO, &[0, 0, 0, 9, b'd']).await;
    assert_eq!(c.opt_reply().await.kind, REP_ERR_INVALID);
    c.opt(OPT_ABORT, &[]).await;
    assert_eq!(c.opt_reply().await.kind, REP_ACK);
    assert!(c.closed().await);
    f.shutdown().await;
}

#[tokio::test]
async fn handshake_garbage_is_dropped_and_others_go_on() {
    let f = Fixture::start(MemDevice::new(MIB, 512)).await;
    let mut good = f.client().await;
    assert_eq!(good.write(1, 0, &[9; 512], 0).await, 0);

    // An HTTP client.
    let mut c = Client::connect(f.addr).await;
    c.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(c.closed().await);
    // Fixed newstyle refused.
    let mut c = Client::connect(f.addr).await;
    c.flags(0).await;
    assert!(c.closed().await);
    // A wrong option magic.
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE).await;
    c.s.write_all(&[0xde; 16]).await.unwrap();
    assert!(c.closed().await);
    // A huge option length.
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE).await;
    let mut h = IHAVEOPT.to_be_bytes().to_vec();
    h.extend_from_slice(&OPT_GO.to_be_bytes());
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    c.s.write_all(&h).await.unwrap();
    assert!(c.closed().await);
    // Closed in the middle of an option.
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE).await;
    c.s.write_all(&IHAVEOPT.to_be_bytes()[..5]).await.unwrap();
    drop(c);
    // Connected and silent, then gone.
    drop(TcpStream::connect(f.addr).await.unwrap());

    assert_eq!(good.read(2, 0, 512).await, Ok(vec![9; 512]));
    let mut again = f.client().await;
    assert_eq!(again.read(3, 0, 512).await, Ok(vec![9; 512]));
    f.shutdown().await;
}

#[tokio::test]
async fn handshake_timeout() {
    let config = NbdConfig {
        handshake_timeout: Duration::from_millis(200),
        ..NbdConfig::default()
    };
    let f = Fixture::start_with(MemDevice::new(MIB, 512), config).await;
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE).await;
    let start = std::time::Instant::now();
    assert!(c.closed().await);
    assert!(start.elapsed() >= Duration::from_millis(150));
    f.shutdown().await;
}

// ---- transmission ----

#[tokio::test]
async fn every_command() {
    let f = Fixture::start(MemDevice::new(4 * MIB, 512)).await;
    let mut c = f.client().await;
    let data = pattern(1, 64 << 10);
    assert_eq!(c.write(1, 4096, &data, CMD_FLAG_FUA).await, 0);
    assert_eq!(
        c.read(2, 4096, data.len() as u32).await.as_deref(),
        Ok(&data[..])
    );
    assert_eq!(f.dev.stats().fua_writes, 1);
    // Unaligned, byte-granular.
    assert_eq!(c.write(3, 4096 + 3, b"hello", 0).await, 0);
    assert_eq!(c.read(4, 4096 + 1, 8).await.unwrap()[2..7], b"hello"[..]);
    assert_eq!(c.simple(CMD_FLUSH, 0, 5, 0, 0).await, 0);
    assert_eq!(f.dev.stats().flushes, 1);
    assert_eq!(c.simple(CMD_TRIM, 0, 6, 8192, 8192).await, 0);
    assert_eq!(f.dev.stats().discards, 1);
    assert_eq!(
        c.simple(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 7, 4096, 4096)
            .await,
        0
    );
    assert_eq!(
        c.simple(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 8, 16384, 100)
            .await,
        0
    );
    assert_eq!(f.dev.stats().flushes, 2, "FUA on WRITE_ZEROES flushes");
    let back = c.read(9, 4096, 64 << 10).await.unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert!(
        back[4096..8192].iter().all(|&b| b == 0),
        "trimmed reads zero on MemDevice"
    );
    assert!(back[12288..12388].iter().all(|&b| b == 0));
    assert_eq!(&back[12388..], &data[12388..]);
    // FUA is accepted on any command; unknown commands and flags are EINVAL.
    assert_eq!(c.simple(CMD_FLUSH, CMD_FLAG_FUA, 10, 0, 0).await, 0);
    assert_eq!(c.simple(5, 0, 11, 0, 512).await, EINVAL, "CACHE");
    assert_eq!(c.simple(7, 0, 12, 0, 512).await, EINVAL, "BLOCK_STATUS");
    assert_eq!(c.simple(0x99, 0, 13, 0, 512).await, EINVAL);
    assert_eq!(c.simple(CMD_READ, 1 << 4, 14, 0, 512).await, EINVAL);
    assert_eq!(
        c.simple(CMD_TRIM, CMD_FLAG_NO_HOLE, 15, 0, 512).await,
        EINVAL
    );
    assert_eq!(c.simple(CMD_READ, 0, 16, 0, 0).await, EINVAL, "zero length");
    // A rejected WRITE's payload is still consumed: the stream stays in sync.
    assert_eq!(c.write(17, 0, &[1; 512], 1 << 5).await, EINVAL);
    assert_eq!(c.read(18, 4096, 16).await.as_deref(), Ok(&[0u8; 16][..]));
    // DISC: the server closes.
    c.send(CMD_DISC, 0, 19, 0, 0, &[]).await;
    assert!(c.closed().await);
    f.shutdown().await;
}

#[tokio::test]
async fn trim_not_advertised_without_discard() {
    let f = Fixture::start(MemDevice::builder(MIB, 512).discard(false).build()).await;
    let mut c = Client::connect(f.addr).await;
    c.flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    let r = c.info(OPT_GO, "disk", &[]).await;
    let e = info_of(&r, INFO_EXPORT).unwrap();
    assert_eq!(u16::from_be_bytes([e[8], e[9]]) & FLAG_SEND_TRIM, 0);
    assert_eq!(c.simple(CMD_TRIM, 0, 1, 0, 512).await, EINVAL);
    f.shutdown().await;
}

#[tokio::test]
async fn out_of_range_and_oversize_touch_nothing() {
    let size = 4 * MIB;
    let f = Fixture::start(MemDevice::new(size, 512)).await;
    let mut c = f.client().await;
    let before = f.dev.stats().ops;
    assert_eq!(c.read(1, size - 512, 1024).await, Err(EINVAL));
    assert_eq!(c.read(2, u64::MAX - 10, 512).await, Err(EINVAL));
    assert_eq!(c.write(3, size, &[1; 512], 0).await, ENOSPC);
    assert_eq!(c.write(4, size - 1, &[1; 2], 0).await, ENOSPC);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 5, size, 512).await, ENOSPC);
    assert_eq!(c.simple(CMD_TRIM, 0, 6, size - 512, 1024).await, EINVAL);
    assert_eq!(c.simple(CMD_READ, 0, 7, 0, MAX_REQUEST + 1).await, EINVAL);
    assert_eq!(f.dev.stats().ops, before, "the device was not touched");
    // The largest allowed request works (split by the I/O layer).
    let big = pattern(2, MAX_REQUEST as usize);
    let _ = size;
    let f2 = Fixture::start(MemDevice::new(64 * MIB, 512)).await;
    let mut c2 = f2.client().await;
    assert_eq!(c2.write(8, 0, &big, 0).await, 0);
    assert_eq!(c2.read(9, 0, MAX_REQUEST).await.as_deref(), Ok(&big[..]));
    // A WRITE over the limit closes the connection (its payload cannot be trusted)...
    c2.send(CMD_WRITE, 0, 10, 0, MAX_REQUEST + 512, &[]).await;
    assert!(c2.closed().await);
    // ...and nothing else.
    let mut c3 = f2.client().await;
    assert_eq!(c3.read(11, 0, 4096).await.as_deref(), Ok(&big[..4096]));
    assert_eq!(c.read(12, 0, 512).await, Ok(vec![0; 512]));
    f.shutdown().await;
    f2.shutdown().await;
}

#[tokio::test]
async fn garbage_and_mid_request_disconnect_lose_nothing() {
    let f = Fixture::start(MemDevice::new(4 * MIB, 512)).await;
    let mut c = f.client().await;
    let a = pattern(3, 8192);
    assert_eq!(c.write(1, 0, &a, CMD_FLAG_FUA).await, 0);
    // Garbage instead of a request header.
    c.s.write_all(&[0x55; Request::LEN]).await.unwrap();
    assert!(c.closed().await);

    // A WRITE whose payload stops half-way, then the peer vanishes.
    let mut c = f.client().await;
    let b = pattern(4, 8192);
    // Several writes in flight first: they must all land.
    for i in 0..8u64 {
        c.send(CMD_WRITE, 0, 100 + i, 65536 + i * 8192, 8192, &b)
            .await;
    }
    let req = Request {
        magic: REQUEST_MAGIC,
        flags: 0,
        kind: CMD_WRITE,
        cookie: 99,
        offset: 0,
        len: 8192,
    };
    c.s.write_all(&req.encode()).await.unwrap();
    c.s.write_all(&b[..3000]).await.unwrap();
    drop(c);

    // Half a request header, then gone.
    let mut c = f.client().await;
    c.s.write_all(&req.encode()[..10]).await.unwrap();
    drop(c);

    let mut c = f.client().await;
    // Give the dead connections' requests time to complete.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        c.read(2, 0, 8192).await.as_deref(),
        Ok(&a[..]),
        "the half WRITE wrote nothing"
    );
    for i in 0..8u64 {
        assert_eq!(
            c.read(3 + i, 65536 + i * 8192, 8192).await.as_deref(),
            Ok(&b[..]),
            "write {i} in flight at the disconnect"
        );
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_complete_out_of_order() {
    let dev = MemDevice::builder(16 * MIB, 512)
        .delay(Duration::from_millis(2))
        .build();
    dev.delay_reads_at(0, Duration::from_millis(300));
    let f = Fixture::start(dev).await;
    let mut c = f.client().await;
    // A slow read, then a fast one: the fast one's reply comes first.
    c.send(CMD_READ, 0, 1, 0, 4096, &[]).await;
    c.send(CMD_READ, 0, 2, 4096, 4096, &[]).await;
    assert_eq!(c.reply().await, (0, 2));
    c.data(4096).await;
    assert_eq!(c.reply().await, (0, 1));
    c.data(4096).await;

    // 64 writes in flight at once, then 64 reads; every cookie answered once.
    let n = 64u64;
    let mut batch = Vec::new();
    for i in 0..n {
        let req = Request {
            magic: REQUEST_MAGIC,
            flags: 0,
            kind: CMD_WRITE,
            cookie: 1000 + i,
            offset: MIB + i * 65536,
            len: 65536,
        };
        batch.extend_from_slice(&req.encode());
        batch.extend_from_slice(&pattern(i, 65536));
    }
    c.s.write_all(&batch).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let (err, cookie) = c.reply().await;
        assert_eq!(err, 0);
        assert!(seen.insert(cookie));
    }
    assert!(
        f.dev.max_in_flight() > 4,
        "requests ran concurrently: {}",
        f.dev.max_in_flight()
    );
    for i in 0..n {
        c.send(CMD_READ, 0, 2000 + i, MIB + i * 65536, 65536, &[])
            .await;
    }
    let mut got = 0;
    while got < n {
        let (err, cookie) = c.reply().await;
        assert_eq!(err, 0);
        let i = cookie - 2000;
        assert_eq!(c.data(65536).await, pattern(i, 65536), "cookie {cookie}");
        got += 1;
    }
    f.shutdown().await;
}

#[tokio::test]
async fn disc_answers_everything_in_flight_first() {
    let dev = MemDevice::builder(4 * MIB, 512)
        .delay(Duration::from_millis(20))
        .build();
    let f = Fixture::start(dev).await;
    let mut c = f.client().await;
    for i in 0..16u64 {
        c.send(CMD_WRITE, 0, i, i * 4096, 4096, &pattern(i, 4096))
            .await;
    }
    c.send(CMD_DISC, 0, 99, 0, 0, &[]).await;
    for _ in 0..16 {
        assert_eq!(c.reply().await.0, 0);
    }
    assert!(c.closed().await);
    for i in 0..16u64 {
        let at = (i * 4096) as usize;
        assert_eq!(f.dev.contents()[at..at + 4096], pattern(i, 4096)[..]);
    }
    f.shutdown().await;
}

#[tokio::test]
async fn device_errors_map_to_errno() {
    let f = Fixture::start(MemDevice::new(MIB, 512)).await;
    let mut c = f.client().await;
    let sense = |key: u8, asc: u8, ascq: u8| {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10; // additional sense length: ASC and ASCQ are present
        s[12] = asc;
        s[13] = ascq;
        Bytes::from(s)
    };
    let cases = [
        (
            IoError::new(IoErrorKind::NoPath, "all paths down for 60 s"),
            libc::EIO,
        ),
        (IoError::new(IoErrorKind::Target, "MEDIUM ERROR"), libc::EIO),
        (IoError::from_scsi_status(2, sense(7, 0x27, 0)), libc::EPERM),
        (
            IoError::from_scsi_status(2, sense(7, 0x27, 7)),
            libc::ENOSPC,
        ),
        (
            IoError::new(IoErrorKind::Invalid, "misaligned"),
            libc::EINVAL,
        ),
    ];
    for (i, (e, want)) in cases.into_iter().enumerate() {
        f.dev.set_fault(Some(e));
        assert_eq!(c.write(i as u64, 0, &[1; 512], 0).await, want as u32);
        assert_eq!(c.read(100 + i as u64, 0, 512).await, Err(want as u32));
    }
    f.dev.set_fault(None);
    assert_eq!(c.read(200, 0, 512).await, Ok(vec![0; 512]));
    f.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_and_closes() {
    let dev = MemDevice::builder(4 * MIB, 512)
        .delay(Duration::from_millis(50))
        .build();
    let f = Fixture::start(dev).await;
    let mut c = f.client().await;
    let mut negotiating = Client::connect(f.addr).await;
    c.send(CMD_WRITE, 0, 1, 0, 4096, &pattern(9, 4096)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let dev = Arc::clone(&f.dev);
    f.shutdown().await;
    assert_eq!(c.reply().await, (0, 1), "the in-flight write was answered");
    assert!(c.closed().await);
    assert!(negotiating.closed().await);
    assert_eq!(dev.contents()[..4096], pattern(9, 4096)[..]);
}

#[tokio::test]
async fn unix_socket_and_removed_export() {
    let dir = std::env::temp_dir().join(format!("mpath-nbd-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("nbd.sock");
    let _ = std::fs::remove_file(&path);
    let exports = Exports::new();
    exports
        .insert("u", Arc::new(MemDevice::new(MIB, 4096)))
        .unwrap();
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(NbdServer::new(exports.clone(), NbdConfig::default()).run(
        vec![l.into()],
        async move {
            let _ = stopped.await;
        },
    ));
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .await
        .unwrap();
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.push(b'u');
    s.write_all(&opt).await.unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), MIB);
    // Removing the export does not cut an attached client off.
    exports.remove("u");
    let req = Request {
        magic: REQUEST_MAGIC,
        flags: 0,
        kind: CMD_READ,
        cookie: 5,
        offset: 0,
        len: 4096,
    };
    s.write_all(&req.encode()).await.unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(u32::from_be_bytes(h[4..8].try_into().unwrap()), 0);
    let _ = stop.send(());
    drop(s);
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a bad peer leaves in the log: a clear reason with its address.
#[tokio::test]
async fn bad_peers_are_logged_with_their_address() {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&logs);
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || LogSink(Arc::clone(&sink)))
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let f = Fixture::start(MemDevice::new(MIB, 512)).await;
    let mut c = Client::connect(f.addr).await;
    let garbage_peer = c.s.local_addr().unwrap();
    c.s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    assert!(c.closed().await);
    let mut c = f.client().await;
    let cut_peer = c.s.local_addr().unwrap();
    c.send(CMD_WRITE, 0, 7, 0, 4096, &[1; 100]).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.shutdown().await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line = |peer: std::net::SocketAddr| {
        text.lines()
            .find(|l| l.contains(&peer.to_string()) && l.contains("WARN"))
            .unwrap_or_else(|| panic!("no warning for {peer} in:\n{text}"))
            .to_string()
    };
    assert!(
        line(garbage_peer).contains("unknown client flags"),
        "{text}"
    );
    let cut = line(cut_peer);
    assert!(
        cut.contains("disconnected in the middle of the data of WRITE cookie 0x7 offset 0 length 4096 (got 100 of 4096 bytes)"),
        "{cut}"
    );
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
