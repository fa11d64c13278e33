//! Fake paths for engine tests: an in-memory LU behind any number of [`FakePath`]s, each a
//! [`PathTransport`] with switches to fail it, hold (blackhole) its commands, complete
//! commands with a chosen error, delay completions and count what it saw — and a "null"
//! mode that completes every command at once without touching an LU, for measuring the
//! engine's own overhead.
//!
//! Faults are switches on the path (as the test target's are), not sleeps: a test holds a
//! path's commands, fails the path, and decides when the late completions arrive.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use block::{
    DataPhase, EventSink, IoError, IoErrorKind, PathEvent, PathFailKind, PathFailReason,
    PathTransport, ScsiRequest, SubmitFuture,
};
use bytes::Bytes;
use scsi::cdb::Command;
use scsi::provisioning::UnmapParams;
use scsi::sense::{
    INVALID_COMMAND_OPERATION_CODE, INVALID_FIELD_IN_CDB, LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE,
    PARAMETER_LIST_LENGTH_ERROR,
};
use scsi::{Asc, Sense, SenseFormat, SenseKey};
use tokio::sync::oneshot;

/// SCSI status CHECK CONDITION.
const CHECK_CONDITION: u8 = 0x02;

/// Zeroes that null-mode reads and WRITE SAME patterns slice from: as large as the
/// largest transfer an engine test issues in one command.
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An error as a path reports it for a CHECK CONDITION with this sense (its kind follows
/// from the sense, as on a real path).
pub fn sense_error(key: SenseKey, asc: Asc) -> IoError {
    let sense = Sense::new(key, asc).encode(SenseFormat::Fixed);
    IoError::from_scsi_status(CHECK_CONDITION, Bytes::copy_from_slice(&sense))
}

/// An error as a path reports it for a status without sense (BUSY 0x08, TASK SET FULL
/// 0x28, RESERVATION CONFLICT 0x18).
pub fn status_error(status: u8) -> IoError {
    IoError::from_scsi_status(status, Bytes::new())
}

/// A transport-level path error (no SCSI status).
pub fn path_error(detail: &str) -> IoError {
    IoError::new(IoErrorKind::Path, detail)
}

/// An in-memory logical unit shared by the paths to it.
pub struct FakeLu {
    block_size: u32,
    data: Mutex<Vec<u8>>,
    flushes: AtomicU64,
    writes: AtomicU64,
}

impl FakeLu {
    pub fn new(blocks: u64, block_size: u32) -> Arc<FakeLu> {
        Arc::new(FakeLu {
            block_size,
            data: Mutex::new(vec![0; (blocks * u64::from(block_size)) as usize]),
            flushes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn size(&self) -> u64 {
        lock(&self.data).len() as u64
    }

    /// A copy of `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let d = lock(&self.data);
        d[offset as usize..offset as usize + len].to_vec()
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// WRITE commands executed (not WRITE SAME or UNMAP).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn range(&self, lba: u64, blocks: u64, len: usize) -> Result<(usize, usize), IoError> {
        let bs = u64::from(self.block_size);
        let start = lba.checked_mul(bs);
        let end = lba
            .checked_add(blocks)
            .and_then(|e| e.checked_mul(bs))
            .filter(|&e| e <= len as u64);
        match (start, end) {
            (Some(s), Some(e)) => Ok((s as usize, e as usize)),
            _ => Err(check(
                SenseKey::ILLEGAL_REQUEST,
                LOGICAL_BLOCK_ADDRESS_OUT_OF_RANGE,
            )),
        }
    }

    /// Execute one command as a target would.
    pub fn execute(&self, req: &ScsiRequest) -> Result<Bytes, IoError> {
        let cmd = Command::parse(&req.cdb)
            .map_err(|_| check(SenseKey::ILLEGAL_REQUEST, INVALID_COMMAND_OPERATION_CODE))?;
        let bs = self.block_size as usize;
        let out = match &req.data {
            DataPhase::Out(b) => b.clone(),
            _ => Bytes::new(),
        };
        let mut d = lock(&self.data);
        match cmd {
            Command::TestUnitReady => Ok(Bytes::new()),
            Command::Read(rw) => {
                let (s, e) = self.range(rw.lba, u64::from(rw.blocks), d.len())?;
                Ok(Bytes::copy_from_slice(&d[s..e]))
            }
            Command::Write(rw) => {
                let (s, e) = self.range(rw.lba, u64::from(rw.blocks), d.len())?;
                if out.len() != e - s {
                    return Err(check(SenseKey::ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB));
                }
                d[s..e].copy_from_slice(&out);
                self.writes.fetch_add(1, Ordering::Relaxed);
                if rw.fua {
                    self.flushes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Bytes::new())
            }
            Command::SynchronizeCache { .. } => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
                Ok(Bytes::new())
            }
            Command::WriteSame(p) => {
                let blocks = if p.blocks == 0 {
                    (d.len() / bs) as u64 - p.lba
                } else {
                    u64::from(p.blocks)
                };
                let (s, e) = self.range(p.lba, blocks, d.len())?;
                let pattern: &[u8] = if p.ndob {
                    &ZEROES[..bs]
                } else if out.len() == bs {
                    &out
                } else {
                    return Err(check(
                        SenseKey::ILLEGAL_REQUEST,
                        PARAMETER_LIST_LENGTH_ERROR,
                    ));
                };
                for block in d[s..e].chunks_mut(bs) {
                    block.copy_from_slice(pattern);
                }
                Ok(Bytes::new())
            }
            Command::Unmap { .. } => {
                let params = UnmapParams::parse(&out)
                    .map_err(|_| check(SenseKey::ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR))?;
                for (lba, blocks) in params.descriptors {
                    let (s, e) = self.range(lba, u64::from(blocks), d.len())?;
                    d[s..e].fill(0);
                }
                Ok(Bytes::new())
            }
            _ => Err(check(
                SenseKey::ILLEGAL_REQUEST,
                INVALID_COMMAND_OPERATION_CODE,
            )),
        }
    }
}

fn check(key: SenseKey, asc: Asc) -> IoError {
    sense_error(key, asc)
}

/// A command a held path has not completed yet.
struct Held {
    req: ScsiRequest,
    done: oneshot::Sender<Result<Bytes, IoError>>,
}

#[derive(Default)]
struct Switches {
    /// Commands wait (a blackhole) until released or the path fails.
    hold: bool,
    /// When the path fails, its held commands stay held (their `Path` errors come late,
    /// when [`FakePath::release_failed`] is called) instead of failing at once.
    late_failure: bool,
    delay: Option<Duration>,
    /// The next commands complete with these errors, without executing.
    inject: VecDeque<IoError>,
    held: Vec<Held>,
    /// Held commands of a failed path, waiting to be completed with `Path` errors.
    failed_held: Vec<Held>,
}

struct Inner {
    name: String,
    lu: Option<Arc<FakeLu>>,
    up: AtomicBool,
    switches: Mutex<Switches>,
    sinks: Mutex<Vec<EventSink>>,
    commands: AtomicU64,
    suspects: AtomicU64,
    cdbs: Mutex<Vec<Bytes>>,
}

/// One fake path to a [`FakeLu`]; clones are handles to the same path.
#[derive(Clone)]
pub struct FakePath {
    inner: Arc<Inner>,
}

impl FakePath {
    /// A path to `lu`, up.
    pub fn new(name: impl Into<String>, lu: Arc<FakeLu>) -> FakePath {
        FakePath::build(name.into(), Some(lu))
    }

    /// A path that completes every command at once and successfully, reads with zeroes,
    /// touching no LU and recording nothing but a count.
    pub fn null(name: impl Into<String>) -> FakePath {
        FakePath::build(name.into(), None)
    }

    fn build(name: String, lu: Option<Arc<FakeLu>>) -> FakePath {
        FakePath {
            inner: Arc::new(Inner {
                name,
                lu,
                up: AtomicBool::new(true),
                switches: Mutex::new(Switches::default()),
                sinks: Mutex::new(Vec::new()),
                commands: AtomicU64::new(0),
                suspects: AtomicU64::new(0),
                cdbs: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Times the map suspected this path (`PathTransport::suspect`).
    pub fn suspects(&self) -> u64 {
        self.inner.suspects.load(Ordering::Relaxed)
    }

    /// Commands submitted to this path.
    pub fn commands(&self) -> u64 {
        self.inner.commands.load(Ordering::Relaxed)
    }

    /// The CDBs submitted so far (not in null mode).
    pub fn cdbs(&self) -> Vec<Bytes> {
        lock(&self.inner.cdbs).clone()
    }

    /// Commands waiting on this path (held, or held by a failure).
    pub fn held(&self) -> usize {
        let s = lock(&self.inner.switches);
        s.held.len() + s.failed_held.len()
    }

    fn notify(&self, ev: PathEvent) {
        for sink in lock(&self.inner.sinks).iter() {
            sink(ev.clone());
        }
    }

    /// Send an event to the subscribers without changing the path.
    pub fn send_event(&self, ev: PathEvent) {
        self.notify(ev);
    }

    /// The connection died: new commands fail, held ones fail (now, or at
    /// [`release_failed`](Self::release_failed) with `late_failure`), and subscribers get
    /// `PathEvent::Failed`.
    pub fn fail(&self, kind: PathFailKind) {
        self.inner.up.store(false, Ordering::SeqCst);
        let to_fail = {
            let mut s = lock(&self.inner.switches);
            let held = std::mem::take(&mut s.held);
            if s.late_failure {
                s.failed_held.extend(held);
                Vec::new()
            } else {
                held
            }
        };
        self.notify(PathEvent::Failed {
            reason: PathFailReason::new(kind, format!("{} failed by test", self.inner.name)),
        });
        for h in to_fail {
            let _ = h.done.send(Err(path_error("connection failed")));
        }
    }

    /// Complete the held commands of a failed path with their (late) `Path` errors.
    pub fn release_failed(&self) -> usize {
        let held = std::mem::take(&mut lock(&self.inner.switches).failed_held);
        let n = held.len();
        for h in held {
            let _ = h.done.send(Err(path_error("connection failed (late)")));
        }
        n
    }

    /// Logged in again: commands work and subscribers get `PathEvent::Recovered`.
    pub fn recover(&self) {
        self.inner.up.store(true, Ordering::SeqCst);
        self.notify(PathEvent::Recovered);
    }

    /// Mark the path up or down without telling anyone (as a transport that has not
    /// noticed yet).
    pub fn set_up(&self, up: bool) {
        self.inner.up.store(up, Ordering::SeqCst);
    }

    /// Hold (blackhole) commands from now on, or stop holding (held ones stay held until
    /// released).
    pub fn set_hold(&self, hold: bool) {
        lock(&self.inner.switches).hold = hold;
    }

    pub fn set_late_failure(&self, late: bool) {
        lock(&self.inner.switches).late_failure = late;
    }

    pub fn set_delay(&self, delay: Option<Duration>) {
        lock(&self.inner.switches).delay = delay;
    }

    /// The next command completes with `err` without executing.
    pub fn inject(&self, err: IoError) {
        lock(&self.inner.switches).inject.push_back(err);
    }

    /// Execute and complete up to `n` held commands, oldest first; returns how many.
    pub fn release(&self, n: usize) -> usize {
        let batch: Vec<Held> = {
            let mut s = lock(&self.inner.switches);
            let n = n.min(s.held.len());
            s.held.drain(..n).collect()
        };
        let count = batch.len();
        for h in batch {
            let result = self.execute(&h.req);
            let _ = h.done.send(result);
        }
        count
    }

    /// Complete every held command with `err`, without executing it and without any
    /// event (a path that answers some commands with errors).
    pub fn complete_held_with(&self, err: IoError) -> usize {
        let held = std::mem::take(&mut lock(&self.inner.switches).held);
        let n = held.len();
        for h in held {
            let _ = h.done.send(Err(err.clone()));
        }
        n
    }

    pub fn release_all(&self) -> usize {
        self.release(usize::MAX)
    }

    fn execute(&self, req: &ScsiRequest) -> Result<Bytes, IoError> {
        match &self.inner.lu {
            Some(lu) => lu.execute(req),
            None => Ok(null_data(req)),
        }
    }
}

fn null_data(req: &ScsiRequest) -> Bytes {
    match req.data {
        DataPhase::In { len } => Bytes::from_static(&ZEROES[..(len as usize).min(ZEROES.len())]),
        _ => Bytes::new(),
    }
}

/// A future that is ready at once: cheaper than an `async` block for the null path.
struct Ready(Option<Result<Bytes, IoError>>);

impl Future for Ready {
    type Output = Result<Bytes, IoError>;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(
            self.0
                .take()
                .unwrap_or_else(|| Err(path_error("polled after completion"))),
        )
    }
}

impl PathTransport for FakePath {
    fn submit(&self, req: ScsiRequest) -> SubmitFuture {
        self.inner.commands.fetch_add(1, Ordering::Relaxed);
        if self.inner.lu.is_none() {
            return Box::pin(Ready(Some(Ok(null_data(&req)))));
        }
        lock(&self.inner.cdbs).push(req.cdb.clone());
        if !self.inner.up.load(Ordering::SeqCst) {
            return Box::pin(Ready(Some(Err(path_error("path is down")))));
        }
        let mut s = lock(&self.inner.switches);
        if let Some(err) = s.inject.pop_front() {
            return Box::pin(Ready(Some(Err(err))));
        }
        if s.hold {
            let (done, rx) = oneshot::channel();
            s.held.push(Held { req, done });
            return Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Err(path_error("fake path dropped the command")))
            });
        }
        let delay = s.delay;
        drop(s);
        match delay {
            None => Box::pin(Ready(Some(self.execute(&req)))),
            Some(d) => {
                let this = self.clone();
                Box::pin(async move {
                    tokio::time::sleep(d).await;
                    this.execute(&req)
                })
            }
        }
    }

    fn subscribe(&self, sink: EventSink) {
        lock(&self.inner.sinks).push(sink);
    }

    fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::SeqCst)
    }

    fn suspect(&self) {
        self.inner.suspects.fetch_add(1, Ordering::Relaxed);
    }
}
