//! The FUSE export: a directory with one regular file per map.
//!
//! Each file is as large as its map, mode 0600, owned by the user who mounted it. Reading
//! and writing it reads and writes the map (through the same [`BlockIo`](crate::io::BlockIo)
//! layer as NBD: unaligned ranges by read-modify-write); `fsync` and `close` flush the
//! device's write cache; `fallocate(PUNCH_HOLE)` and `fallocate(ZERO_RANGE)` write zeroes
//! (with and without permission to unmap). `losetup --find --show DIR/MAP` then gives the
//! host a real block device without nbd or ublk in its kernel.
//!
//! FUSE callbacks arrive on fuser's thread; each I/O callback is spawned onto the tokio
//! runtime that mounted the directory and replies from there, so many requests are in
//! flight at once and the FUSE thread never blocks on the device.
//!
//! Caching: by default files are opened with FOPEN_DIRECT_IO — no page cache of ours in
//! front of the map, so what another export (NBD) or another host writes to the same map is
//! what the next read returns, and a loop device on top keeps the only cache. With
//! `direct_io: false` reads are cached in the page cache until the file is reopened
//! (writes still go straight through: the writeback cache is never enabled, because
//! delayed writes would turn `fsync` into the only point where errors appear).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use block::{BlockDevice, IoError};
use bytes::Bytes;
use fuser::{
    Errno as FuseErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo,
    IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, SessionACL, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::error::errno;
use crate::registry::{Export, Exports, MAX_NAME_LEN};

/// How the directory is mounted.
#[derive(Clone, Debug)]
pub struct FuseConfig {
    /// Open files with FOPEN_DIRECT_IO (see the module docs). Default on.
    pub direct_io: bool,
    /// Let other users reach the files (`allow_other`; needs `user_allow_other` in
    /// /etc/fuse.conf unless mounted by root). The files stay mode 0600 and the kernel
    /// checks permissions (`default_permissions`), so this opens them to root in practice.
    pub allow_other: bool,
    /// How long the kernel may cache names and attributes. A map's size only changes when
    /// it is re-exported, so a second costs nothing and saves a round trip per stat.
    pub attr_ttl: Duration,
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig {
            direct_io: true,
            allow_other: false,
            attr_ttl: Duration::from_secs(1),
        }
    }
}

/// A mounted directory; unmounted by [`unmount`](Self::unmount) or when dropped.
pub struct FuseMount {
    mountpoint: PathBuf,
    unmounter: Option<fuser::SessionUnmounter>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    drain: Arc<Drain>,
}

/// After unmounting, how long to wait for the FUSE thread to end. When the unmount is lazy
/// (a loop device still holds a file open) the kernel keeps sending requests until the
/// file is released, and the thread keeps serving them — detached rather than waited for.
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);

impl FuseMount {
    /// A FUSE mount left at `dir` by a process that died (`kill -9`, a crash): every access
    /// fails with ENOTCONN until it is unmounted. Detach it (as `umount -l`; with
    /// `fusermount3 -uz` when not root), so that a new mount can take its place. Returns
    /// whether there was one.
    pub fn clear_stale(dir: impl AsRef<Path>) -> std::io::Result<bool> {
        let dir = dir.as_ref();
        // Opening the directory asks the filesystem itself; a stat could be answered from
        // the kernel's attribute cache for a while after the process died.
        match std::fs::read_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
            _ => return Ok(false),
        }
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::other("mount point with a NUL byte"))?;
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if r != 0 {
            let ok = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(std::io::Error::other(format!(
                    "{} is a FUSE mount left by a process that died, and it cannot be unmounted: {}",
                    dir.display(),
                    std::io::Error::last_os_error()
                )));
            }
        }
        tracing::warn!(mountpoint = %dir.display(), "detached a stale FUSE mount left by a process that died");
        Ok(true)
    }

    /// Mount `exports` at `mountpoint` (an existing directory). Must be called from within a
    /// tokio runtime: I/O runs on it.
    pub fn mount<D: BlockDevice + 'static>(
        exports: Exports<D>,
        mountpoint: impl AsRef<Path>,
        config: FuseConfig,
    ) -> std::io::Result<FuseMount> {
        let mountpoint = mountpoint.as_ref().to_path_buf();
        let runtime = Handle::try_current().map_err(|_| {
            std::io::Error::other("FuseMount::mount must be called within a tokio runtime")
        })?;
        let mut options = vec![
            MountOption::FSName("mpath".into()),
            MountOption::Subtype("mpath".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
            MountOption::NoAtime,
        ];
        options.push(MountOption::RW);
        let mut fuse_config = fuser::Config::default();
        fuse_config.mount_options = options;
        fuse_config.acl = if config.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        let drain = Arc::new(Drain::default());
        let fs = MapFs {
            exports,
            runtime,
            // SAFETY: geteuid and getegid cannot fail and touch no memory.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            mounted_at: SystemTime::now(),
            config,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            drain: drain.clone(),
        };
        let mut session = fuser::Session::new(fs, &mountpoint, &fuse_config).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot mount FUSE at {}: {e}", mountpoint.display()),
            )
        })?;
        let unmounter = session.unmount_callable();
        let thread = std::thread::Builder::new()
            .name("mpath-fuse".into())
            .spawn(move || session.run())?;
        tracing::info!(mountpoint = %mountpoint.display(), "FUSE export mounted");
        Ok(FuseMount {
            mountpoint,
            unmounter: Some(unmounter),
            thread: Some(thread),
            drain,
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Start a stop: requests from now on are held unanswered (see [`FuseMount::drain`]).
    pub fn begin_drain(&self) {
        self.drain.draining.store(true, Ordering::Release);
    }

    /// Hold new requests and wait (at most `timeout`) until the ones running have been
    /// answered; returns how many were still running. Then unmount: what the client handed
    /// over was answered, and nothing was failed because the daemon stops.
    pub fn drain(&self, timeout: Duration) -> usize {
        self.begin_drain();
        let end = Instant::now() + timeout;
        while self.drain.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.drain.in_flight.load(Ordering::Acquire)
    }

    /// Unmount (lazily if a file is still open: the files keep working for whoever holds
    /// them) and wait briefly for the FUSE thread to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> std::io::Result<()> {
        let Some(mut unmounter) = self.unmounter.take() else {
            return Ok(());
        };
        let result = unmounter.unmount();
        if let Some(thread) = self.thread.take() {
            let start = Instant::now();
            while !thread.is_finished() && start.elapsed() < UNMOUNT_WAIT {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("FUSE session ended with an error: {e}"),
                    Err(_) => tracing::error!("FUSE thread panicked"),
                }
            } else {
                tracing::warn!(
                    mountpoint = %self.mountpoint.display(),
                    "a file is still open (a loop device?): it keeps being served until released"
                );
            }
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "FUSE export unmounted");
        result
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmount() {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "unmount failed: {e}");
        }
    }
}

const ROOT: u64 = 1;

/// The filesystem: the registry, open file handles, and the runtime I/O runs on.
struct MapFs<D> {
    exports: Exports<D>,
    runtime: Handle,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    config: FuseConfig,
    /// Open files: a handle keeps its map even if it is removed from the registry meanwhile.
    handles: Mutex<HashMap<u64, Arc<Export<D>>>>,
    next_fh: AtomicU64,
    drain: Arc<Drain>,
}

/// A stop in progress: requests already running finish; new ones are held.
#[derive(Default)]
struct Drain {
    draining: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts one request in flight while it lives.
struct IoGuard(Arc<Drain>);

impl Drop for IoGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request that arrives while the mount drains is not answered: answering EIO would fail
/// the client because the daemon stops. The kernel answers it (ENOTCONN) when the process
/// exits and the FUSE connection goes; a loop device on top fails it then. (FUSE cannot
/// carry a request over to another process; the ublk export can.)
fn hold<R>(reply: R) {
    std::mem::forget(reply);
}

/// Size of the buffer [`IOC_WWID`] fills: the WWID, NUL-terminated.
pub const WWID_BUF: usize = 256;

/// `_IOR('m', 1, [u8; 256])` on a map's file: its LU's WWID, NUL-terminated — what
/// `mpath udev loop` asks to give a loop device over the file the map's stable names. An
/// ioctl rather than an extended attribute: a FUSE filesystem that answers `getxattr` is
/// asked for `security.capability` before every buffered write, one more round trip each;
/// an ioctl costs nothing until someone asks.
pub const IOC_WWID: u32 = (2 << 30) | ((WWID_BUF as u32) << 16) | ((b'm' as u32) << 8) | 1;

/// The WWID of the map behind `path` when it is a map's file in an mpath FUSE directory
/// (asked with [`IOC_WWID`]); `None` for any other file.
pub fn file_wwid(path: &Path) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let mut buf = [0u8; WWID_BUF];
    // SAFETY: IOC_WWID writes at most WWID_BUF bytes (its encoded size) into `buf`, which
    // outlives the call; the descriptor is ours.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), IOC_WWID as _, buf.as_mut_ptr()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            // Not an mpath file, or a map without a WWID.
            Some(libc::ENOTTY | libc::EINVAL | libc::ENOSYS | libc::ENODATA | libc::EOPNOTSUPP) => {
                Ok(None)
            }
            _ => Err(e),
        };
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(WWID_BUF);
    Ok(Some(String::from_utf8_lossy(&buf[..len]).into_owned()).filter(|w| !w.is_empty()))
}

fn fuse_errno(e: &IoError) -> FuseErrno {
    FuseErrno::from_i32(errno(e).0)
}

impl<D: BlockDevice + 'static> MapFs<D> {
    fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(ROOT),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn file_attr(&self, export: &Export<D>) -> FileAttr {
        let info = export.info();
        FileAttr {
            ino: INodeNo(export.ino()),
            size: info.size,
            blocks: info.size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::RegularFile,
            perm: 0o600,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: info.block_size.max(4096),
            flags: 0,
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Export<D>>>> {
        // Only inserts and removes happen under it; a poisoned map is still consistent.
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The map behind an open file (or, without a handle, behind an inode).
    fn export(&self, ino: INodeNo, fh: Option<FileHandle>) -> Option<Arc<Export<D>>> {
        if let Some(fh) = fh {
            if let Some(e) = self.handles().get(&fh.0) {
                return Some(Arc::clone(e));
            }
        }
        self.exports.by_ino(ino.0)
    }
}

impl<D: BlockDevice + 'static> Filesystem for MapFs<D> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Background requests (readahead, loop's page-cache writeback) in flight at once;
        // fuser's default of 16 would cap a loop device's queue.
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT {
            return reply.error(FuseErrno::ENOENT);
        }
        match name.to_str().and_then(|n| self.exports.get(n)) {
            Some(e) => reply.entry(
                &self.config.attr_ttl,
                &self.file_attr(&e),
                fuser::Generation(0),
            ),
            None => reply.error(FuseErrno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT {
            return reply.attr(&self.config.attr_ttl, &self.root_attr());
        }
        match self.export(ino, fh) {
            Some(e) => reply.attr(&self.config.attr_ttl, &self.file_attr(&e)),
            None => reply.error(FuseErrno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)] // fuser's signature
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        if cmd != IOC_WWID || (out_size as usize) < WWID_BUF {
            return reply.error(FuseErrno::from_i32(libc::ENOTTY));
        }
        let Some(e) = self.export(ino, Some(fh)) else {
            return reply.error(FuseErrno::ENOENT);
        };
        match e.wwid() {
            Some(w) if w.len() < WWID_BUF => {
                let mut buf = [0u8; WWID_BUF];
                buf[..w.len()].copy_from_slice(w.as_bytes());
                reply.ioctl(0, &buf)
            }
            _ => reply.error(FuseErrno::from_i32(libc::ENODATA)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let attr = if ino.0 == ROOT {
            self.root_attr()
        } else {
            match self.export(ino, fh) {
                Some(e) => self.file_attr(&e),
                None => return reply.error(FuseErrno::ENOENT),
            }
        };
        // A map's size, mode and owner are fixed; times are accepted and ignored (`touch`).
        let changes_size = size.is_some_and(|s| s != attr.size);
        let changes_mode = mode.is_some_and(|m| m & 0o7777 != u32::from(attr.perm));
        let changes_owner =
            uid.is_some_and(|u| u != attr.uid) || gid.is_some_and(|g| g != attr.gid);
        if changes_size || changes_mode || changes_owner {
            tracing::debug!(ino = ino.0, ?size, ?mode, ?uid, ?gid, "setattr refused");
            return reply.error(FuseErrno::EPERM);
        }
        reply.attr(&self.config.attr_ttl, &attr)
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(FuseErrno::EPERM)
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(FuseErrno::EPERM)
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(FuseErrno::EPERM)
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(FuseErrno::EPERM)
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(FuseErrno::EPERM)
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(FuseErrno::EPERM)
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == ROOT {
            return reply.error(FuseErrno::EISDIR);
        }
        let Some(export) = self.exports.by_ino(ino.0) else {
            return reply.error(FuseErrno::ENOENT);
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles().insert(fh, export);
        let flags = if self.config.direct_io {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(fh), flags)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles().remove(&fh.0);
        reply.ok()
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(export) = self.export(ino, Some(fh)) else {
            return reply.error(FuseErrno::ENOENT);
        };
        let dev_size = export.info().size;
        if offset >= dev_size || size == 0 {
            return reply.data(&[]);
        }
        // Short at the end of the map, as for any file.
        let len = u64::from(size).min(dev_size - offset) as u32;
        let Some(guard) = self.io_guard() else {
            return hold(reply);
        };
        self.runtime.spawn(async move {
            let _guard = guard;
            match export.io().read(offset, len).await {
                Ok(data) => reply.data(&data),
                Err(e) => {
                    tracing::warn!(export = export.name(), offset, len, "read failed: {e}");
                    reply.error(fuse_errno(&e))
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(export) = self.export(ino, Some(fh)) else {
            return reply.error(FuseErrno::ENOENT);
        };
        let dev_size = export.info().size;
        if data.is_empty() {
            return reply.written(0);
        }
        // As a block device: a write at or past the end fails, one crossing it is short.
        if offset >= dev_size {
            return reply.error(FuseErrno::ENOSPC);
        }
        let len = (data.len() as u64).min(dev_size - offset) as usize;
        let data = Bytes::copy_from_slice(&data[..len]);
        let fua = flags.0 & (libc::O_DSYNC | libc::O_SYNC) != 0;
        let Some(guard) = self.io_guard() else {
            return hold(reply);
        };
        self.runtime.spawn(async move {
            let _guard = guard;
            match export.io().write(offset, data, fua).await {
                Ok(()) => reply.written(len as u32),
                Err(e) => {
                    tracing::warn!(export = export.name(), offset, len, "write failed: {e}");
                    reply.error(fuse_errno(&e))
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, fh, reply)
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, fh, reply)
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(export) = self.export(ino, Some(fh)) else {
            return reply.error(FuseErrno::ENOENT);
        };
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return reply.error(FuseErrno::EOPNOTSUPP);
        }
        let dev_size = export.info().size;
        let Some(end) = offset.checked_add(length) else {
            return reply.error(FuseErrno::EINVAL);
        };
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        if end > dev_size && !keep_size {
            // The file cannot grow.
            return reply.error(FuseErrno::EFBIG);
        }
        let end = end.min(dev_size);
        if offset >= end {
            return reply.ok();
        }
        let len = end - offset;
        // Punching a hole must read back as zeroes afterwards, which a discard does not
        // promise: it becomes write-zeroes that may unmap (WRITE SAME with UNMAP).
        let may_unmap = if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            true
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            false
        } else {
            // Plain preallocation: every block of a map is already there.
            return reply.ok();
        };
        let Some(guard) = self.io_guard() else {
            return hold(reply);
        };
        self.runtime.spawn(async move {
            let _guard = guard;
            match export.io().write_zeroes(offset, len, may_unmap).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::warn!(export = export.name(), offset, len, "fallocate failed: {e}");
                    reply.error(fuse_errno(&e))
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT {
            return reply.error(FuseErrno::ENOTDIR);
        }
        let mut entries = vec![
            (ROOT, FileType::Directory, ".".to_string()),
            (ROOT, FileType::Directory, "..".to_string()),
        ];
        entries.extend(
            self.exports
                .list()
                .iter()
                .map(|e| (e.ino(), FileType::RegularFile, e.name().to_string())),
        );
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        let exports = self.exports.list();
        let bytes: u64 = exports.iter().map(|e| e.info().size).sum();
        reply.statfs(
            bytes.div_ceil(BSIZE),
            0,
            0,
            exports.len() as u64,
            0,
            BSIZE as u32,
            MAX_NAME_LEN as u32,
            BSIZE as u32,
        )
    }
}

impl<D: BlockDevice + 'static> MapFs<D> {
    /// A request may start, unless the mount drains.
    fn io_guard(&self) -> Option<IoGuard> {
        self.drain.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = IoGuard(self.drain.clone());
        if self.drain.draining.load(Ordering::Acquire) {
            return None;
        }
        Some(guard)
    }

    /// fsync and close: everything written so far is on stable storage.
    fn sync(&self, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        let Some(export) = self.export(ino, Some(fh)) else {
            return reply.error(FuseErrno::ENOENT);
        };
        let Some(guard) = self.io_guard() else {
            return hold(reply);
        };
        self.runtime.spawn(async move {
            let _guard = guard;
            match export.io().flush().await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::warn!(export = export.name(), "flush failed: {e}");
                    reply.error(fuse_errno(&e))
                }
            }
        });
    }
}
