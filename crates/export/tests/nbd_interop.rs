//! The NBD server against real clients from Debian packages: nbdinfo and nbdcopy
//! (libnbd-bin), qemu-img and qemu-io (qemu-utils), fio's nbd engine. Each test serves a
//! MemDevice in-process on a free loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use export::mem::{pattern, MemDevice};
use export::nbd::{NbdConfig, NbdServer};
use export::Exports;
use testkit::{require, run, Output, TempDir};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

const MIB: u64 = 1 << 20;
const PEER_TIMEOUT: Duration = Duration::from_secs(300);

/// An NBD server over one MemDevice, running on its own runtime, stopped when dropped.
struct Server {
    rt: Runtime,
    addr: SocketAddr,
    socket: std::path::PathBuf,
    dev: Arc<MemDevice>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

impl Server {
    /// `tag` names the scratch directory: one per test, as parallel tests' TempDir names
    /// could otherwise collide.
    fn start(tag: &str, dev: MemDevice) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = TempDir::new(tag);
        let socket = dir.path().join("nbd.sock");
        let dev = Arc::new(dev);
        let exports = Exports::new();
        exports
            .insert_described("disk", Some("mpath test map".into()), Arc::clone(&dev))
            .expect("export");
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, task) = rt.block_on(async {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = tcp.local_addr().expect("addr");
            let unix = tokio::net::UnixListener::bind(&socket).expect("bind unix");
            let server = NbdServer::new(exports, NbdConfig::default());
            let task = tokio::spawn(server.run(vec![tcp.into(), unix.into()], async move {
                let _ = stopped.await;
            }));
            (addr, task)
        });
        Server {
            rt,
            addr,
            socket,
            dev,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    fn uri(&self) -> String {
        format!("nbd://{}/disk", self.addr)
    }

    fn unix_uri(&self) -> String {
        format!("nbd+unix:///disk?socket={}", self.socket.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await });
        }
    }
}

fn peer(cmd: &str, args: &[&str]) -> Output {
    let o = run(Command::new(cmd).args(args), PEER_TIMEOUT);
    assert!(!o.timed_out, "{cmd} {args:?} timed out:\n{}", o.all());
    o
}

fn ok(cmd: &str, args: &[&str]) -> Output {
    let o = peer(cmd, args);
    assert!(
        o.success(),
        "{cmd} {args:?} failed ({:?}):\n{}",
        o.status,
        o.all()
    );
    o
}

fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write file");
}

#[test]
fn nbdinfo_shows_size_and_flags() {
    if !require("nbdinfo_shows_size_and_flags", &["nbdinfo"]) {
        return;
    }
    let s = Server::start(
        "nbdinfo_shows_size_and_flags",
        MemDevice::builder(64 * MIB, 512)
            .max_transfer(MIB as u32)
            .build(),
    );
    let o = ok("nbdinfo", &[&s.uri()]);
    let text = o.stdout;
    for want in [
        "export-size: 67108864",
        "is_read_only: false",
        "can_flush: true",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
        "can_multi_conn: true",
        "block_size_minimum: 512",
        "block_size_preferred: 4096",
        "block_size_maximum: 1048576",
    ] {
        assert!(text.contains(want), "nbdinfo lacks {want:?}:\n{text}");
    }
    let o = ok("nbdinfo", &["--size", &s.unix_uri()]);
    assert_eq!(o.stdout.trim(), "67108864", "over the unix socket");
    let o = ok("nbdinfo", &["--list", &format!("nbd://{}", s.addr)]);
    assert!(o.stdout.contains("export=\"disk\""), "{}", o.stdout);
    assert!(o.stdout.contains("mpath test map"), "{}", o.stdout);
    // A missing export is a clear error, not a hang.
    let o = peer("nbdinfo", &[&format!("nbd://{}/nope", s.addr)]);
    assert!(!o.success());
    assert!(o.all().contains("export: nope"), "{}", o.all());
}

#[test]
fn nbdinfo_without_trim() {
    if !require("nbdinfo_without_trim", &["nbdinfo"]) {
        return;
    }
    let s = Server::start(
        "nbdinfo_without_trim",
        MemDevice::builder(8 * MIB, 4096).discard(false).build(),
    );
    let o = ok("nbdinfo", &[&s.uri()]);
    assert!(o.stdout.contains("can_trim: false"), "{}", o.stdout);
    assert!(
        o.stdout.contains("block_size_minimum: 4096"),
        "{}",
        o.stdout
    );
}

/// A 64 MiB random file goes in with `qemu-img convert` and comes back identical.
#[test]
fn qemu_img_convert_round_trip() {
    if !require("qemu_img_convert_round_trip", &["qemu-img"]) {
        return;
    }
    let s = Server::start("qemu_img_convert_round_trip", MemDevice::new(64 * MIB, 512));
    let dir = TempDir::new("qemu-img-files");
    let src = dir.path().join("src.img");
    let back = dir.path().join("back.img");
    let data = pattern(0x5eed, (64 * MIB) as usize);
    write_file(&src, &data);
    let src_s = src.to_string_lossy().to_string();
    let back_s = back.to_string_lossy().to_string();
    // -n: the target exists (an NBD export cannot be created).
    ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", &src_s, &s.uri()],
    );
    assert!(s.dev.contents() == data[..], "the device holds the file");
    ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &s.uri(), &back_s],
    );
    let got = std::fs::read(&back).expect("read back");
    assert!(got == data[..], "qemu-img read back what it wrote");
    let o = ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &src_s, &s.uri()],
    );
    assert!(o.stdout.contains("identical"), "{}", o.stdout);
}

#[test]
fn qemu_io_patterns() {
    if !require("qemu_io_patterns", &["qemu-io"]) {
        return;
    }
    let s = Server::start("qemu_io_patterns", MemDevice::new(16 * MIB, 512));
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 4M",
            "-c",
            "write -P 0xa5 1000 3000",
            "-c",
            "flush",
            "-c",
            "write -z 8M 1M",
            "-c",
            "discard 12M 1M",
            &s.uri(),
        ],
    );
    // Read back through the unix socket, on another connection.
    let o = ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x5a 0 1000",
            "-c",
            "read -P 0xa5 1000 3000",
            "-c",
            "read -P 0x5a 4000 4190304",
            "-c",
            "read -P 0 8M 1M",
            &s.unix_uri(),
        ],
    );
    assert!(
        !o.all().contains("Pattern verification failed"),
        "{}",
        o.all()
    );
    let st = s.dev.stats();
    assert!(st.flushes >= 1 && st.write_zeroes >= 1, "{st:?}");
}

#[test]
fn nbdcopy_in_and_out_over_multiple_connections() {
    if !require("nbdcopy_in_and_out_over_multiple_connections", &["nbdcopy"]) {
        return;
    }
    let s = Server::start(
        "nbdcopy_in_and_out_over_multiple_connections",
        MemDevice::new(32 * MIB, 512),
    );
    let dir = TempDir::new("nbdcopy-files");
    let src = dir.path().join("rnd.bin");
    let back = dir.path().join("back.bin");
    let data = pattern(77, (32 * MIB) as usize);
    write_file(&src, &data);
    // nbdcopy opens several connections when the server allows multi-conn.
    ok(
        "nbdcopy",
        &[
            "--connections=4",
            "--flush",
            &src.to_string_lossy(),
            &s.uri(),
        ],
    );
    assert!(s.dev.contents() == data[..]);
    ok(
        "nbdcopy",
        &["--connections=4", &s.uri(), &back.to_string_lossy()],
    );
    assert!(std::fs::read(&back).expect("read") == data[..]);
    assert!(s.dev.stats().flushes >= 1);
}

/// fio's nbd engine, random reads and writes with crc32c verification.
#[test]
fn fio_randrw_verify() {
    if !require("fio_randrw_verify", &["fio"]) {
        return;
    }
    let s = Server::start("fio_randrw_verify", MemDevice::new(64 * MIB, 512));
    let uri = format!("--uri={}", s.uri());
    let o = ok(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &uri,
            "--rw=randrw",
            "--bs=4k",
            "--size=64M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--randrepeat=0",
            // fio otherwise leaves its verify state file in the working directory.
            "--verify_state_save=0",
        ],
    );
    let text = o.all();
    assert!(text.contains("err= 0"), "fio reported errors:\n{text}");
    assert!(!text.contains("verify: bad"), "{text}");
    assert!(
        s.dev.max_in_flight() > 1,
        "iodepth 8 kept several requests in flight"
    );
}
