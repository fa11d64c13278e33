//! The FUSE export: file semantics through the kernel, then FUSE file → `losetup` →
//! `mkfs.ext4` → mount → 100 MiB written → unmount → `e2fsck -fn` clean on the map's
//! contents. Needs root, /dev/fuse and loop devices; without them the tests say so and skip
//! (or fail under MPATH_REQUIRE_PEERS=1).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use export::fuse::{FuseConfig, FuseMount};
use export::mem::{pattern, MemDevice};
use export::Exports;
use testkit::{require, run, Output, TempDir};

const MIB: u64 = 1 << 20;

/// Root, /dev/fuse and (for `loop`) /dev/loop-control, or a printed reason to skip.
fn environment(test: &str, needs_loop: bool) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (mounting and loop devices need it)");
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse");
    }
    if needs_loop && !Path::new("/dev/loop-control").exists() {
        missing.push("loop devices (/dev/loop-control)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: skipped, this environment lacks {}",
        missing.join(", ")
    );
    if testkit::peers_required() {
        panic!("{msg}; MPATH_REQUIRE_PEERS=1 forbids skipping");
    }
    eprintln!("{msg}");
    false
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn mount(
    rt: &tokio::runtime::Runtime,
    exports: &Exports<MemDevice>,
    at: &Path,
    config: FuseConfig,
) -> FuseMount {
    std::fs::create_dir_all(at).expect("mountpoint");
    let _enter = rt.enter();
    FuseMount::mount(exports.clone(), at, config).expect("mount FUSE")
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&p))
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn fallocate(f: &std::fs::File, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a file descriptor we own.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn file_semantics(direct_io: bool) {
    let rt = runtime();
    // One tag per test: TempDir names of parallel tests could otherwise collide.
    let dir = TempDir::new(if direct_io {
        "fuse-sem-dio"
    } else {
        "fuse-sem-pc"
    });
    let size = 8 * MIB;
    let dev = Arc::new(MemDevice::new(size, 512));
    let exports = Exports::new();
    exports
        .insert_identified(
            "disk",
            None,
            Some("36001405feedface".into()),
            Arc::clone(&dev),
        )
        .expect("export");
    let at = dir.path().join("maps");
    let config = FuseConfig {
        direct_io,
        ..FuseConfig::default()
    };
    let fuse = mount(&rt, &exports, &at, config);
    assert!(is_mounted(&at));

    let names: Vec<String> = std::fs::read_dir(&at)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["disk"]);
    let path = at.join("disk");
    let meta = std::fs::metadata(&path).expect("stat");
    assert!(meta.is_file());
    assert_eq!(meta.len(), size);
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), 0);
    // The map's identity, asked of the file (what `mpath udev loop` does for a loop device
    // over it); other files have none.
    assert_eq!(
        export::fuse::file_wwid(&path).expect("ioctl"),
        Some("36001405feedface".to_string())
    );
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").expect("plain file");
    assert_eq!(export::fuse::file_wwid(&plain).expect("ioctl"), None);

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut model = vec![0u8; size as usize];
    let put = |model: &mut Vec<u8>, at: u64, d: &[u8]| {
        f.write_all_at(d, at).expect("write");
        model[at as usize..at as usize + d.len()].copy_from_slice(d);
    };
    put(&mut model, 1000, b"hello, unaligned");
    let big = pattern(5, MIB as usize);
    put(&mut model, 4096, &big);
    put(&mut model, 3 * MIB + 511, &pattern(6, 70_000));
    let flushes = dev.stats().flushes;
    f.sync_all().expect("fsync");
    assert!(dev.stats().flushes > flushes, "fsync flushed the device");

    let mut buf = vec![0u8; 16];
    f.read_exact_at(&mut buf, 1000).expect("read");
    assert_eq!(&buf, b"hello, unaligned");

    // Punch a hole: reads back as zeroes, through write-zeroes that may unmap.
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        8192 + 100,
        100_000,
    )
    .expect("punch hole");
    model[8192 + 100..8192 + 100 + 100_000].fill(0);
    fallocate(
        &f,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        3 * MIB + 1000,
        5000,
    )
    .expect("zero range");
    model[(3 * MIB + 1000) as usize..(3 * MIB + 6000) as usize].fill(0);
    assert!(dev.stats().write_zeroes >= 2, "{:?}", dev.stats());
    // Preallocation of blocks that exist is a no-op; growing the file is refused.
    fallocate(&f, 0, 0, 4096).expect("preallocate");
    assert_eq!(
        errno_of(fallocate(&f, 0, size - 10, 100)),
        Some(libc::EFBIG)
    );
    assert_eq!(
        errno_of(fallocate(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096)),
        Some(libc::EOPNOTSUPP)
    );

    // The end of the map: reads are short, writes at the end fail, across it are short.
    let mut tail = vec![0u8; 100];
    assert_eq!(f.read_at(&mut tail, size - 10).expect("read at end"), 10);
    assert_eq!(f.read_at(&mut tail, size).expect("read past end"), 0);
    assert_eq!(errno_of(f.write_at(b"x", size)), Some(libc::ENOSPC));
    assert_eq!(f.write_at(&[7u8; 20], size - 5).expect("short write"), 5);
    model[(size - 5) as usize..].fill(7);

    // The directory's entries are the maps: fixed size, no new files, no removal.
    assert_eq!(errno_of(f.set_len(size / 2)), Some(libc::EPERM));
    assert_eq!(
        errno_of(std::fs::File::create(at.join("new"))),
        Some(libc::EPERM)
    );
    assert_eq!(errno_of(std::fs::remove_file(&path)), Some(libc::EPERM));
    assert_eq!(
        errno_of(std::fs::create_dir(at.join("d"))),
        Some(libc::EPERM)
    );

    let mut all = vec![0u8; size as usize];
    f.read_exact_at(&mut all, 0).expect("read all");
    assert!(all == model, "the file reads back what was written");
    drop(f);
    assert!(dev.contents() == model, "the device holds what was written");

    fuse.unmount().expect("unmount");
    assert!(!is_mounted(&at));
}

#[test]
fn fuse_file_semantics_direct_io() {
    if !environment("fuse_file_semantics_direct_io", false)
        || !require("fuse_file_semantics_direct_io", &["fusermount3"])
    {
        return;
    }
    file_semantics(true);
}

#[test]
fn fuse_file_semantics_page_cache() {
    if !environment("fuse_file_semantics_page_cache", false)
        || !require("fuse_file_semantics_page_cache", &["fusermount3"])
    {
        return;
    }
    file_semantics(false);
}

/// Unmounts the filesystem and detaches the loop device even when the test fails.
#[derive(Default)]
struct Cleanup {
    fs: Option<PathBuf>,
    loop_dev: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(m) = self.fs.take() {
            let _ = run(
                Command::new("umount").arg("-l").arg(&m),
                Duration::from_secs(30),
            );
        }
        if let Some(l) = self.loop_dev.take() {
            let _ = run(
                Command::new("losetup").args(["-d", &l]),
                Duration::from_secs(30),
            );
        }
    }
}

fn sh(cmd: &str, args: &[&str]) -> Output {
    let o = run(Command::new(cmd).args(args), Duration::from_secs(300));
    assert!(
        o.success(),
        "{cmd} {args:?} failed ({:?}):\n{}",
        o.status,
        o.all()
    );
    o
}

fn sha256(path: &Path) -> String {
    let o = sh("sha256sum", &[&path.to_string_lossy()]);
    o.stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// FUSE file → losetup → mkfs.ext4 → mount → 100 MiB → unmount → e2fsck -fn clean.
fn loop_filesystem(test: &str, direct_io: bool, loop_direct_io: bool) {
    let peers = [
        "fusermount3",
        "losetup",
        "mkfs.ext4",
        "mount",
        "umount",
        "e2fsck",
        "debugfs",
        "sha256sum",
        "dd",
        "blockdev",
    ];
    if !environment(test, true) || !require(test, &peers) {
        return;
    }
    let rt = runtime();
    // One tag per test: TempDir names of parallel tests could otherwise collide.
    let dir = TempDir::new(test);
    let dev = Arc::new(
        MemDevice::builder(256 * MIB, 512)
            .max_transfer(MIB as u32)
            .build(),
    );
    let exports = Exports::new();
    exports.insert("vol", Arc::clone(&dev)).expect("export");
    let at = dir.path().join("maps");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mnt");
    let fuse = mount(
        &rt,
        &exports,
        &at,
        FuseConfig {
            direct_io,
            ..FuseConfig::default()
        },
    );
    // Declared after `fuse`: dropped first, so the loop device lets go of the file before
    // the FUSE directory is unmounted.
    let mut cleanup = Cleanup::default();

    let file = at.join("vol");
    let mut args = vec!["--find", "--show"];
    if loop_direct_io {
        args.push("--direct-io=on");
    }
    let file_s = file.to_string_lossy().to_string();
    args.push(&file_s);
    let loop_dev = sh("losetup", &args).stdout.trim().to_string();
    assert!(loop_dev.starts_with("/dev/loop"), "{loop_dev}");
    cleanup.loop_dev = Some(loop_dev.clone());
    let loop_name = loop_dev.trim_start_matches("/dev/");
    let discard_max =
        std::fs::read_to_string(format!("/sys/block/{loop_name}/queue/discard_max_bytes"))
            .unwrap_or_default()
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    let dio =
        std::fs::read_to_string(format!("/sys/block/{loop_name}/loop/dio")).unwrap_or_default();
    eprintln!(
        "{test}: {loop_dev} discard_max_bytes={discard_max} dio={}",
        dio.trim()
    );

    sh("mkfs.ext4", &["-q", "-F", &loop_dev]);
    let mnt_s = mnt.to_string_lossy().to_string();
    sh("mount", &[&loop_dev, &mnt_s]);
    cleanup.fs = Some(mnt.clone());
    let f = mnt.join("f");
    let of = format!("of={}", f.display());
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &of,
            "bs=1M",
            "count=100",
            "conv=fsync",
            "status=none",
        ],
    );
    let written = sha256(&f);
    sh("umount", &[&mnt_s]);
    cleanup.fs = None;

    // Read it back from the map, not from a cache: flush the loop device's buffers and
    // mount again.
    sh("blockdev", &["--flushbufs", &loop_dev]);
    sh("mount", &[&loop_dev, &mnt_s]);
    cleanup.fs = Some(mnt.clone());
    assert_eq!(
        sha256(&f),
        written,
        "the file reads back identical after a remount"
    );
    sh("umount", &[&mnt_s]);
    cleanup.fs = None;
    sh("losetup", &["-d", &loop_dev]);
    cleanup.loop_dev = None;
    drop(cleanup);
    fuse.unmount().expect("unmount FUSE");
    assert!(!is_mounted(&at));

    // The map's contents, checked offline.
    let img = dir.path().join("vol.img");
    dev.dump(&img).expect("dump");
    let img_s = img.to_string_lossy().to_string();
    let o = run(
        Command::new("e2fsck").args(["-fn", &img_s]),
        Duration::from_secs(300),
    );
    assert_eq!(
        o.status.and_then(|s| s.code()),
        Some(0),
        "e2fsck -fn is not clean:\n{}",
        o.all()
    );
    let out = dir.path().join("f.out");
    sh(
        "debugfs",
        &["-R", &format!("dump /f {}", out.display()), &img_s],
    );
    assert_eq!(sha256(&out), written, "the map holds the file's bytes");

    let st = dev.stats();
    eprintln!("{test}: device operations {st:?}");
    assert!(
        st.flushes > 0,
        "journal commits and fsync reached the device"
    );
    if discard_max > 0 {
        assert!(
            st.write_zeroes > 0,
            "mkfs's discard became punch-hole → write-zeroes: {st:?}"
        );
    }
}

#[test]
fn fuse_loop_ext4_direct_io() {
    loop_filesystem("fuse_loop_ext4_direct_io", true, false);
}

#[test]
fn fuse_loop_ext4_page_cache_loop_dio() {
    loop_filesystem("fuse_loop_ext4_page_cache_loop_dio", false, true);
}
