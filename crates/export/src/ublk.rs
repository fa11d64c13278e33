//! ublk: a real block device, `/dev/ublkbN`, over a [`BlockDevice`] — through the kernel's
//! `ublk_drv` (Linux 6.0 and later) and the `libublk` crate.
//!
//! ```text
//!  application ── /dev/ublkbN ── blk-mq ── ublk_drv ──┐ io_uring commands, one ring per queue
//!                                                      │
//!  queue thread (one per hardware queue): libublk ring + a small executor, one task per tag
//!        │  BlockOp (the request's bytes copied out of / into the tag's buffer)
//!        ▼
//!  tokio runtime: BlockIo → BlockDevice (the multipath engine) → paths
//! ```
//!
//! Each hardware queue is one thread with its own io_uring; each tag (request slot) is a
//! task on that thread that fetches a request, hands it to the device on the tokio runtime
//! and commits the result, which also fetches the tag's next request. A completion on the
//! tokio side wakes its task and rings the queue's **doorbell** — an eventfd with a read
//! always pending in the queue's ring — so the thread, asleep in `io_uring_enter`, wakes;
//! a burst of completions rings it once.
//!
//! (Polling the device's futures on the queue thread itself, the runtime entered there,
//! was measured too: no better for small reads — the hop to the runtime moves to the
//! path's connection task instead of going away — so requests stay on the runtime.)
//!
//! Data: the kernel copies a write's pages into the tag's buffer before handing the request
//! over and copies a read's buffer out after the commit; in between the export makes one
//! copy of its own (the engine's writes take `Bytes` that must outlive the tag's buffer, and
//! its reads return `Bytes`). Zero-copy ublk modes lend the pages to io_uring operations,
//! which a network engine cannot use.
//!
//! **Recovery** ([`UblkConfig::recoverable`], the default): the device is created with
//! `UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE`. When this process dies — a crash,
//! `kill -9`, an exit — the kernel keeps `/dev/ublkbN`, holds new I/O, and puts back every
//! request the process had been handed but not completed; a new process attaches with
//! [`Attach::Recover`] (START/END_USER_RECOVERY) and receives them again. [`UblkExport::hand_off`]
//! is the planned version: the export stops handing new requests to the device, waits for
//! the ones it already handed over, and leaves the device to the next process — so a
//! planned restart re-issues nothing that was ever sent to a path.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use block::{BlockDevice, DeviceInfo};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{sys, BufDesc, UblkError, UblkFlags};
use tracing::{debug, info, warn};

use crate::io::BlockIo;

/// Largest request the kernel hands over: 1 MiB, the Linux block layer's usual
/// `max_sectors_kb` ceiling for real disks; smaller when the device's maximum transfer is.
pub const DEFAULT_MAX_IO_BYTES: u32 = 1 << 20;

/// Requests in flight per hardware queue: enough to keep a multipath map of a few paths busy
/// (each iSCSI session's command window is 128) without pinning much memory (depth × max I/O
/// per queue: 64 MiB at 1 MiB).
pub const DEFAULT_DEPTH: u16 = 64;

/// Hardware queues: one per CPU up to 4. More queues than CPUs only add threads; beyond 4 the
/// engine, not the queue threads, is what limits a map.
pub fn default_queues() -> u16 {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4) as u16)
        .unwrap_or(1)
}

/// How a ublk export is set up.
#[derive(Clone, Debug)]
pub struct UblkConfig {
    pub queues: u16,
    pub depth: u16,
    /// Largest request, in bytes (rounded down to the device's block size and maximum
    /// transfer).
    pub max_io_bytes: u32,
    /// Keep the device, and the requests in flight, when this process goes away.
    pub recoverable: bool,
    /// How long starting (or recovering) the device may take.
    pub start_timeout: Duration,
}

impl Default for UblkConfig {
    fn default() -> Self {
        UblkConfig {
            queues: default_queues(),
            depth: DEFAULT_DEPTH,
            max_io_bytes: DEFAULT_MAX_IO_BYTES,
            recoverable: true,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A new device, or one left by an earlier process to take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    New,
    Recover(u32),
}

/// Why a ublk export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UblkExportError {
    #[error("ublk is not available: {0} (needs Linux 6.0 or later with the ublk_drv module loaded: modprobe ublk_drv)")]
    Unavailable(String),
    #[error("ublk device {dev}: {what}: {err}")]
    Ublk {
        dev: String,
        what: &'static str,
        err: String,
    },
    #[error("ublk device {dev} did not start within {secs} s")]
    Timeout { dev: String, secs: u64 },
}

/// The identity an export records with its device, so that a later process finds the device
/// of a map again (libublk keeps it in `/run/ublksrvd/<id>.json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The map's name, e.g. `mpatha`.
    pub name: String,
    /// The LU's WWID: what makes the device the same across restarts.
    pub wwid: String,
}

/// A ublk device of this process, or one a previous process left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub dev_id: u32,
    pub identity: Option<Identity>,
    /// `UBLK_S_DEV_*`: 1 live, 2 quiesced (waiting for a process), 3 failing I/O.
    pub state: u16,
    pub size: u64,
    /// The device it was serving, as recorded: what a later process needs to take the
    /// device over before its map is assembled again.
    pub info: Option<DeviceInfo>,
}

impl Found {
    /// Waiting for a process to take it over.
    pub fn recoverable(&self) -> bool {
        matches!(
            u32::from(self.state),
            sys::UBLK_S_DEV_QUIESCED | sys::UBLK_S_DEV_FAIL_IO
        )
    }
}

/// Every ublk device on the host, with the identity an mpath export recorded for it.
pub fn devices() -> Vec<Found> {
    let found = Arc::new(Mutex::new(Vec::new()));
    let f = found.clone();
    UblkCtrl::for_each_dev_id(move |id| {
        if let Ok(c) = UblkCtrl::new_simple(id as i32) {
            let info = c.dev_info();
            let identity = c.get_target_data_from_json().and_then(|j| {
                Some(Identity {
                    name: j.get("name")?.as_str()?.to_string(),
                    wwid: j.get("wwid")?.as_str()?.to_string(),
                })
            });
            let size = c.get_target_from_json().map(|t| t.dev_size).unwrap_or(0);
            let recorded = c
                .get_target_data_from_json()
                .and_then(|j| recorded_info(&j, size));
            f.lock().unwrap_or_else(|e| e.into_inner()).push(Found {
                dev_id: id,
                identity,
                state: info.state,
                size,
                info: recorded,
            });
        }
    });
    let mut v = std::mem::take(&mut *found.lock().unwrap_or_else(|e| e.into_inner()));
    v.sort_by_key(|f| f.dev_id);
    v
}

/// The device description an export recorded with its device (see [`UblkExport::start`]).
fn recorded_info(j: &serde_json::Value, size: u64) -> Option<DeviceInfo> {
    let u32_of = |k: &str| j.get(k)?.as_u64().and_then(|v| u32::try_from(v).ok());
    let bool_of = |k: &str| j.get(k)?.as_bool();
    Some(DeviceInfo {
        size,
        block_size: u32_of("block_size")?,
        // Recorded since the physical block size is reported; before, it was the logical one.
        physical_block_size: u32_of("physical_block_size").or(u32_of("block_size"))?,
        max_transfer: u32_of("max_transfer")?,
        supports_discard: bool_of("discard")?,
        supports_write_zeroes: bool_of("write_zeroes")?,
        volatile_write_cache: bool_of("write_cache")?,
    })
}

/// Delete a ublk device (one this process does not serve, e.g. left by a process that
/// died and not wanted any more).
pub fn delete(dev_id: u32) -> Result<(), UblkExportError> {
    let c = UblkCtrl::new_simple(dev_id as i32).map_err(|e| ublk_err(dev_id, "open", e))?;
    ctrl_ring().map_err(|e| ublk_err(dev_id, "control ring", e))?;
    c.del_dev().map_err(|e| ublk_err(dev_id, "delete", e))?;
    Ok(())
}

/// libublk keeps its control ring per thread; a control command from a thread that has none
/// would panic. Every thread of ours that sends one calls this first.
fn ctrl_ring() -> Result<(), UblkError> {
    libublk::ublk_init_ctrl_task_ring(|ring| {
        if ring.is_none() {
            *ring = Some(
                io_uring::IoUring::<io_uring::squeue::Entry128>::builder()
                    .build(32)
                    .map_err(UblkError::IOError)?,
            );
        }
        Ok(())
    })
}

fn ublk_err(dev: impl std::fmt::Display, what: &'static str, e: UblkError) -> UblkExportError {
    UblkExportError::Ublk {
        dev: dev.to_string(),
        what,
        err: e.to_string(),
    }
}

/// What the queue threads share with the export's handle.
struct Shared {
    /// Set by [`UblkExport::hand_off`]: requests fetched from now on are held, not started.
    draining: AtomicBool,
    /// Requests handed to the device and not yet committed.
    started: AtomicUsize,
}

/// One map's `/dev/ublkbN`, served until [`UblkExport::remove`] or [`UblkExport::hand_off`].
pub struct UblkExport {
    dev_id: u32,
    ctrl: Arc<UblkCtrl>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    recoverable: bool,
}

impl std::fmt::Debug for UblkExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UblkExport")
            .field("dev_id", &self.dev_id)
            .finish()
    }
}

impl UblkExport {
    /// Create (or take over) a ublk device for `device` and serve it. Blocks until the
    /// device is live (call it from `spawn_blocking` in async code); `rt` is the runtime the
    /// device's futures run on.
    pub fn start<D: BlockDevice + 'static>(
        device: Arc<D>,
        identity: Identity,
        attach: Attach,
        cfg: &UblkConfig,
        rt: tokio::runtime::Handle,
    ) -> Result<UblkExport, UblkExportError> {
        if !std::path::Path::new("/dev/ublk-control").exists() {
            return Err(UblkExportError::Unavailable(
                "/dev/ublk-control does not exist".into(),
            ));
        }
        let info = device.info();
        let label = match attach {
            Attach::New => format!("for {}", identity.name),
            Attach::Recover(id) => format!("{id} ({})", identity.name),
        };
        let max_io = io_bytes(&info, cfg.max_io_bytes);
        let mut flags = 0u64;
        if cfg.recoverable {
            flags |= u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE);
        }
        let (dev_flags, id) = match attach {
            Attach::New => (UblkFlags::UBLK_DEV_F_ADD_DEV, -1),
            Attach::Recover(id) => (UblkFlags::UBLK_DEV_F_RECOVER_DEV, id as i32),
        };
        let ctrl = UblkCtrlBuilder::default()
            .name("mpath")
            .id(id)
            .nr_queues(cfg.queues.max(1))
            .depth(cfg.depth.max(1))
            .io_buf_bytes(max_io)
            .ctrl_flags(flags)
            .dev_flags(dev_flags)
            .build()
            .map_err(|e| ublk_err(&label, "create", e))?;
        let dev_id = ctrl.dev_info().dev_id;
        let label = format!("{dev_id} ({})", identity.name);
        if let Attach::Recover(_) = attach {
            ctrl.start_user_recover()
                .map_err(|e| ublk_err(&label, "start user recovery", e))?;
        }
        let ctrl = Arc::new(ctrl);
        let shared = Arc::new(Shared {
            draining: AtomicBool::new(false),
            started: AtomicUsize::new(0),
        });
        let (started_tx, started_rx) = mpsc::channel::<Result<(), String>>();
        let thread = {
            let ctrl = ctrl.clone();
            let shared = shared.clone();
            let io = Arc::new(BlockIo::new(device));
            let started_err = started_tx.clone();
            std::thread::Builder::new()
                .name(format!("ublk{dev_id}"))
                .spawn(move || {
                    if let Err(e) = ctrl_ring() {
                        let _ = started_err.send(Err(format!("control ring: {e}")));
                        return;
                    }
                    let tgt = |dev: &mut UblkDev| {
                        set_params(dev, &info, max_io);
                        dev.set_target_json(serde_json::json!({
                            "name": identity.name,
                            "wwid": identity.wwid,
                            "block_size": info.block_size,
                            "physical_block_size": info.physical_block_size,
                            "max_transfer": info.max_transfer,
                            "discard": info.supports_discard,
                            "write_zeroes": info.supports_write_zeroes,
                            "write_cache": info.volatile_write_cache,
                        }));
                        Ok(())
                    };
                    let q_fn = move |qid: u16, dev: &UblkDev| {
                        serve_queue(qid, dev, io.clone(), shared.clone(), rt.clone())
                    };
                    let started = move |_: &UblkCtrl| {
                        let _ = started_tx.send(Ok(()));
                    };
                    if let Err(e) = ctrl.run_target(tgt, q_fn, started) {
                        let _ = started_err.send(Err(e.to_string()));
                    }
                })
                .map_err(|e| UblkExportError::Ublk {
                    dev: label.clone(),
                    what: "start its thread",
                    err: e.to_string(),
                })?
        };
        match started_rx.recv_timeout(cfg.start_timeout) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(UblkExportError::Ublk {
                    dev: label,
                    what: "start",
                    err: e,
                })
            }
            Err(_) => {
                let _ = ctrl_ring().and_then(|_| ctrl.kill_dev());
                return Err(UblkExportError::Timeout {
                    dev: label,
                    secs: cfg.start_timeout.as_secs(),
                });
            }
        }
        info!(
            dev = dev_id,
            "ublk device {} serving {label}",
            ctrl.get_bdev_path()
        );
        Ok(UblkExport {
            dev_id,
            ctrl,
            shared,
            thread: Some(thread),
            recoverable: cfg.recoverable,
        })
    }

    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    /// `/dev/ublkbN`.
    pub fn bdev_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/ublkb{}", self.dev_id))
    }

    /// Requests handed to the device and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.shared.started.load(Ordering::Acquire)
    }

    /// Stop and delete the device: the kernel first waits for the requests in flight, which
    /// are served to the end; then `/dev/ublkbN` is gone. Blocks.
    pub fn remove(mut self) -> Result<(), UblkExportError> {
        let label = self.dev_id;
        ctrl_ring().map_err(|e| ublk_err(label, "control ring", e))?;
        // STOP_DEV deletes the disk, which waits for its in-flight requests: they complete
        // normally, then every queue sees the stop and its thread ends.
        self.ctrl
            .kill_dev()
            .map_err(|e| ublk_err(label, "stop", e))?;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ctrl
            .del_dev()
            .map_err(|e| ublk_err(label, "delete", e))?;
        info!(dev = label, "ublk device removed");
        Ok(())
    }

    /// Planned hand-over to the next process (a restart or an upgrade): requests arriving from
    /// now on are held — never handed to the device — and those already handed over are
    /// waited for (at most `timeout`). Returns how many were still in flight at the end (0
    /// normally). The device stays; the caller then exits, and the kernel gives the held
    /// requests to whichever process recovers the device next.
    pub fn hand_off(mut self, timeout: Duration) -> usize {
        self.shared.draining.store(true, Ordering::Release);
        let end = Instant::now() + timeout;
        while self.in_flight() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
        let left = self.in_flight();
        if left > 0 {
            warn!(
                dev = self.dev_id,
                "{left} request(s) still in flight after {:?}; the kernel will re-issue them",
                timeout
            );
        }
        // Dropping a control that created its device would delete it: give it up.
        self.ctrl.disown();
        self.thread.take();
        left
    }

    pub fn recoverable(&self) -> bool {
        self.recoverable
    }
}

impl Drop for UblkExport {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Neither removed nor handed off. A recoverable device is left as it is: its
            // queues serve until this process ends, then the kernel holds its I/O for the
            // next one. Any other device is stopped.
            if self.recoverable {
                self.ctrl.disown();
            } else {
                let _ = ctrl_ring().and_then(|_| self.ctrl.kill_dev());
            }
        }
    }
}

/// log2 of the physical block size, at least the logical one's.
fn physical_shift(info: &DeviceInfo) -> u8 {
    let logical = info.block_size.max(512);
    let physical = info.physical_block_size.max(logical);
    if physical.is_power_of_two() {
        physical.trailing_zeros() as u8
    } else {
        logical.trailing_zeros() as u8
    }
}

/// The request size the device is set up for: `want` rounded down to the device's maximum
/// transfer and block size, at least one block.
fn io_bytes(info: &DeviceInfo, want: u32) -> u32 {
    let bs = info.block_size.max(512);
    let max = want.min(info.max_transfer.max(bs));
    (max / bs).max(1) * bs
}

fn set_params(dev: &mut UblkDev, info: &DeviceInfo, max_io: u32) {
    let bs_shift = info.block_size.max(512).trailing_zeros() as u8;
    let mut attrs = 0;
    if info.volatile_write_cache {
        // The kernel then sends FLUSH for fsync and FUA writes for journal commits.
        attrs |= sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
    }
    let mut types = sys::UBLK_PARAM_TYPE_BASIC;
    let mut discard = sys::ublk_param_discard::default();
    if info.supports_discard {
        types |= sys::UBLK_PARAM_TYPE_DISCARD;
        discard.discard_granularity = info.block_size;
        discard.max_discard_sectors = u32::MAX >> 9;
        discard.max_discard_segments = 1;
        if info.supports_write_zeroes {
            discard.max_write_zeroes_sectors = u32::MAX >> 9;
        }
    }
    dev.tgt.dev_size = info.size;
    dev.tgt.params = sys::ublk_params {
        types,
        basic: sys::ublk_param_basic {
            attrs,
            logical_bs_shift: bs_shift,
            physical_bs_shift: physical_shift(info),
            io_opt_shift: bs_shift.max(12),
            io_min_shift: bs_shift,
            max_sectors: max_io >> 9,
            dev_sectors: info.size >> 9,
            ..Default::default()
        },
        discard,
        ..Default::default()
    };
}

/// The doorbell of one queue: an eventfd with a read always pending in the queue's ring.
///
/// Rung once per wake-up, not once per completion: `rung` stays set from the first ring
/// until the queue thread has taken the wake-up (its doorbell task clears it before
/// re-arming the read, and the executor then polls every task woken so far), so a burst
/// of completions costs one `write(2)` and one ring wake-up. A completion after the clear
/// rings again; one before it is polled by the tick the clear is part of.
struct Doorbell {
    fd: OwnedFd,
    rung: AtomicBool,
}

impl Doorbell {
    fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd returns a new descriptor or -1; we own it from here.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a valid descriptor nobody else owns.
        Ok(Doorbell {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            rung: AtomicBool::new(false),
        })
    }

    fn ring(&self) {
        if self.rung.swap(true, Ordering::AcqRel) {
            return;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. A full counter (EAGAIN)
        // means the queue is already woken; nothing to do.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// One hardware queue: runs on its own thread until the device stops.
fn serve_queue<D: BlockDevice + 'static>(
    qid: u16,
    dev: &UblkDev,
    io: Arc<BlockIo<D>>,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            warn!(queue = qid, "ublk queue setup failed: {e}");
            return;
        }
    };
    let bell = match Doorbell::new() {
        Ok(b) => Arc::new(b),
        Err(e) => {
            warn!(queue = qid, "ublk queue {qid}: no eventfd: {e}");
            return;
        }
    };
    let exe = Rc::new(smol::LocalExecutor::new());
    let buf_bytes = dev.dev_info.max_io_buf_bytes as usize;
    let mut tasks = Vec::new();
    for tag in 0..dev.dev_info.queue_depth {
        let (q, io, shared, bell, rt) = (
            q.clone(),
            io.clone(),
            shared.clone(),
            bell.clone(),
            rt.clone(),
        );
        tasks.push(exe.spawn(async move {
            match serve_tag(&q, tag, buf_bytes, &io, &shared, &bell, &rt).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => warn!(queue = qid, tag, "ublk tag stopped: {e}"),
            }
        }));
    }
    // The read the doorbell completes. Its 8 bytes must outlive the ring, which lives as
    // long as this thread: they are leaked, once per queue start.
    let landing: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let landing_ptr = landing.as_mut_ptr();
    let bell_fd = bell.fd.as_raw_fd();
    let q2 = q.clone();
    let bell2 = bell.clone();
    let _doorbell = exe.spawn(async move {
        loop {
            // Taken: the completions that rang so far are polled in this tick. A swap, not
            // a store: it acquires every ring that found the bell already rung, so their
            // woken tasks are visible to the ticks that follow.
            bell2.rung.swap(false, Ordering::AcqRel);
            let sqe =
                io_uring::opcode::Read::new(io_uring::types::Fd(bell_fd), landing_ptr, 8).build();
            let r = q2.ublk_submit_sqe(sqe).await;
            if r < 0 && r != -libc::EAGAIN && r != -libc::EINTR {
                debug!(queue = qid, "ublk doorbell read ended: {r}");
                break;
            }
        }
    });
    let exe2 = exe.clone();
    smol::block_on(exe.run(async move {
        let run_ops = || while exe2.try_tick() {};
        let done = || tasks.iter().all(|t| t.is_finished());
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(20), run_ops, done).await {
            debug!(queue = qid, "ublk queue loop ended: {e}");
        }
    }));
}

/// One tag: fetch a request, serve it, commit the result (which fetches the next).
async fn serve_tag<D: BlockDevice + 'static>(
    q: &UblkQueue<'_>,
    tag: u16,
    buf_bytes: usize,
    io: &Arc<BlockIo<D>>,
    shared: &Arc<Shared>,
    bell: &Arc<Doorbell>,
    rt: &tokio::runtime::Handle,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(buf_bytes);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        if shared.draining.load(Ordering::Acquire) {
            // Handing over: this request stays with the kernel, which re-issues it to the
            // next process. Never commit it.
            std::future::pending::<()>().await;
        }
        let iod = *q.get_iod(tag);
        shared.started.fetch_add(1, Ordering::AcqRel);
        let res = serve_request(&iod, buf.as_mut_slice(), io, bell, rt).await;
        // Served. The commit reaches the kernel at the queue's next ring submission; a
        // process that exits in between has the kernel issue this request once more — the
        // same data, with nothing newer overlapping it (the application has no completion
        // for it yet).
        shared.started.fetch_sub(1, Ordering::AcqRel);
        // Resolves when the tag's next request arrives.
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res)
            .await?;
    }
}

/// What a request becomes, for the tokio side.
enum Req {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: bytes::Bytes,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
    },
}

/// Serve one request; the ublk result: bytes moved, 0, or a negative errno.
async fn serve_request<D: BlockDevice + 'static>(
    iod: &sys::ublksrv_io_desc,
    buf: &mut [u8],
    io: &Arc<BlockIo<D>>,
    bell: &Arc<Doorbell>,
    rt: &tokio::runtime::Handle,
) -> i32 {
    let op = iod.op_flags & 0xff;
    let flags = iod.op_flags;
    // Sectors of 512 bytes, whatever the logical block size.
    let offset = iod.start_sector << 9;
    let len = u64::from(iod.nr_sectors) << 9;
    let req = match op {
        sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE if len as usize > buf.len() => {
            return -libc::EINVAL
        }
        sys::UBLK_IO_OP_READ => Req::Read {
            offset,
            len: len as u32,
        },
        sys::UBLK_IO_OP_WRITE => Req::Write {
            offset,
            data: bytes::Bytes::copy_from_slice(&buf[..len as usize]),
            fua: flags & sys::UBLK_IO_F_FUA != 0,
        },
        sys::UBLK_IO_OP_FLUSH => Req::Flush,
        sys::UBLK_IO_OP_DISCARD => Req::Discard { offset, len },
        sys::UBLK_IO_OP_WRITE_ZEROES => Req::WriteZeroes {
            offset,
            len,
            may_unmap: flags & sys::UBLK_IO_F_NOUNMAP == 0,
        },
        _ => return -libc::EOPNOTSUPP,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let io = io.clone();
    let bell = bell.clone();
    rt.spawn(async move {
        let r = match req {
            Req::Read { offset, len } => io.read(offset, len).await.map(Some),
            Req::Write { offset, data, fua } => io.write(offset, data, fua).await.map(|_| None),
            Req::Flush => io.flush().await.map(|_| None),
            Req::Discard { offset, len } => io.discard(offset, len).await.map(|_| None),
            Req::WriteZeroes {
                offset,
                len,
                may_unmap,
            } => io.write_zeroes(offset, len, may_unmap).await.map(|_| None),
        };
        let _ = tx.send(r);
        bell.ring();
    });
    match rx.await {
        Ok(Ok(Some(data))) => {
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            n as i32
        }
        Ok(Ok(None)) => match op {
            sys::UBLK_IO_OP_WRITE => len as i32,
            _ => 0,
        },
        Ok(Err(e)) => -crate::errno(&e).0,
        // The runtime is shutting down: the request was not served.
        Err(_) => -libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(block_size: u32, physical_block_size: u32) -> DeviceInfo {
        DeviceInfo {
            size: 1 << 30,
            block_size,
            physical_block_size,
            max_transfer: 1 << 20,
            supports_discard: false,
            supports_write_zeroes: false,
            volatile_write_cache: true,
        }
    }

    #[test]
    fn the_physical_block_size_reaches_the_kernel() {
        assert_eq!(physical_shift(&info(512, 4096)), 12);
        assert_eq!(physical_shift(&info(512, 512)), 9);
        assert_eq!(physical_shift(&info(4096, 4096)), 12);
        // Never below the logical size, never a size that is not a power of two.
        assert_eq!(physical_shift(&info(4096, 512)), 12);
        assert_eq!(physical_shift(&info(512, 3000)), 9);
    }

    #[test]
    fn what_an_export_records_is_read_back() {
        let j = serde_json::json!({
            "name": "mpatha", "wwid": "36001", "block_size": 512, "physical_block_size": 4096,
            "max_transfer": 1048576, "discard": true, "write_zeroes": true, "write_cache": false,
        });
        let got = recorded_info(&j, 1 << 30).unwrap();
        assert_eq!(got.physical_block_size, 4096);
        assert_eq!(got.max_transfer, 1 << 20);
        assert!(got.supports_discard && !got.volatile_write_cache);
        // Recorded by an earlier version: no physical size, the logical one stands in.
        let mut old = j.clone();
        old.as_object_mut().unwrap().remove("physical_block_size");
        assert_eq!(
            recorded_info(&old, 1 << 30).unwrap().physical_block_size,
            512
        );
        // Not recorded at all: nothing to take a device over with.
        assert_eq!(recorded_info(&serde_json::json!({"name": "x"}), 0), None);
    }
}
