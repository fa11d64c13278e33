//! The multipath device: its handle, the state shared between the I/O fast path and the
//! owner task, and the fast path itself.
//!
//! The fast path runs in the submitting task: read the routing (the active group's usable
//! paths, published by the owner), let the selector pick, submit on that path and await
//! the answer there. It takes one lock — the routing's `RwLock`, for reading, for the few
//! nanoseconds the selector runs — which the owner holds for writing only to swap a new
//! routing in. Everything slow (failing a path, reinstating, switching group, queueing
//! with no path, timers) happens in the owner task, reached by message.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use block::{
    BlockDevice, BlockOp, DeviceInfo, IoError, IoErrorKind, Outcome, PathEvent, PathFailKind,
    PathFailReason, PathTransport,
};
use bytes::{Bytes, BytesMut};
use mpath_policy::{
    classify, reason_is_inferred, ErrorClass, Event, EventKind, Multipath, PathId, PathLoad,
    Reinstatement, RequeueCause, Selector, SelectorKind,
};
use scsi::AluaState;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::{EngineConfig, HedgeConfig, IoLimits, PathSpec};
use crate::counters::{IoCounters, IoOp, MapCounters};
use crate::fence::Fence;
use crate::inflight::{Attempt, Inflight, InflightTable, CLOSED};
use crate::message::{MapStatus, Message, MessageError, Reply};
use crate::owner::Owner;
use crate::plan::{plan_sized, Cmd, Plan, Planned};

/// Events kept for `status` (the broadcast channel has its own, separate buffer).
const RECENT_EVENTS: usize = 256;

/// Broadcast buffer per subscriber: a subscriber that falls this far behind loses the
/// oldest events (and is told how many); a path failure under load makes one
/// `IoRequeued` per command in flight, a few hundred at most.
const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// `no_path_since_ns` when some path is usable.
const USABLE: u64 = u64::MAX;

/// One path as the fast path and the owner share it.
pub(crate) struct PathShared {
    pub id: PathId,
    pub transport: Arc<dyn PathTransport>,
    pub load: PathLoad,
    pub inflight: InflightTable,
    /// Grows at each reinstatement: a path error from a command issued before it is
    /// about the old connection and must not fail the path again.
    pub incarnation: AtomicU64,
    pub counters: IoCounters,
    /// Until when (ns of the map's epoch) new I/O avoids this path because the target
    /// answered BUSY or TASK SET FULL through it; 0: never did.
    pub busy_until_ns: AtomicU64,
    /// Smoothed read latency and its mean deviation, in ns of the fast path's clock
    /// (hedged reads' deadline); 0: no read answered yet.
    pub read_srtt_ns: AtomicU64,
    pub read_rttvar_ns: AtomicU64,
}

/// How long new I/O avoids a path after a BUSY answer through it, when the map has another.
const BUSY_STEER: Duration = Duration::from_millis(100);

/// How long a read abandoned by a hedge stays counted in its path's load at most (see
/// [`mpath_policy::PathLoad::strand`]): longer than a silent path takes to be failed.
const STRANDED_FOR: Duration = Duration::from_secs(1);

impl PathShared {
    /// Subscribe the owner to the path's events under `id`, then read whether it is up:
    /// in this order, so that a failure in between is seen. The path shared state, and
    /// whether the transport is up.
    pub(crate) fn attach(
        id: PathId,
        spec: &PathSpec,
        commands: &mpsc::UnboundedSender<Command>,
        decay_shift: u32,
    ) -> (PathShared, bool) {
        let events = commands.clone();
        spec.transport.subscribe(Box::new(move |event| {
            let _ = events.send(Command::Path { path: id, event });
        }));
        let up = spec.transport.is_up();
        let path = PathShared {
            id,
            transport: spec.transport.clone(),
            load: PathLoad::with_decay_shift(spec.info.relative_throughput, decay_shift),
            inflight: InflightTable::default(),
            incarnation: AtomicU64::new(0),
            counters: IoCounters::default(),
            busy_until_ns: AtomicU64::new(0),
            read_srtt_ns: AtomicU64::new(0),
            read_rttvar_ns: AtomicU64::new(0),
        };
        (path, up)
    }

    /// Fold a read's latency into the path's estimate (RFC 6298's SRTT and RTTVAR, gains
    /// 1/8 and 1/4). Concurrent completions may lose a sample now and then: harmless for
    /// an estimate, and no lock on the fast path.
    #[inline]
    fn note_read_latency(&self, ns: u64) {
        let ns = ns.max(1);
        let srtt = self.read_srtt_ns.load(Ordering::Relaxed);
        if srtt == 0 {
            self.read_srtt_ns.store(ns, Ordering::Relaxed);
            self.read_rttvar_ns.store(ns / 2, Ordering::Relaxed);
            return;
        }
        let var = self.read_rttvar_ns.load(Ordering::Relaxed);
        self.read_rttvar_ns
            .store(var - var / 4 + srtt.abs_diff(ns) / 4, Ordering::Relaxed);
        self.read_srtt_ns
            .store((srtt - srtt / 8 + ns / 8).max(1), Ordering::Relaxed);
    }

    /// How long a read may be outstanding on this path before it is hedged.
    fn hedge_deadline(&self, h: &HedgeConfig) -> Duration {
        let srtt = self.read_srtt_ns.load(Ordering::Relaxed);
        if srtt == 0 {
            return h.ceiling;
        }
        let high = srtt.saturating_add(
            self.read_rttvar_ns
                .load(Ordering::Relaxed)
                .saturating_mul(4),
        );
        Duration::from_nanos(high.saturating_mul(u64::from(h.factor))).clamp(h.floor, h.ceiling)
    }
}

/// What the fast path may use: published by the owner after every change.
pub(crate) struct Routing {
    /// The candidates: the usable paths of the active group, of its best checker tier.
    pub paths: Vec<Arc<PathShared>>,
    pub selector: Selector,
}

/// A question the fast path asks the owner.
pub(crate) enum Ask {
    /// The routing had no usable path.
    NoPath,
    /// A command failed on `path` with a path error.
    PathError {
        path: PathId,
        incarnation: u64,
        reason: PathFailReason,
        /// `reason` is a guess from an error that did not say why (see
        /// `mpath_policy::reason_is_inferred`): the transport's own reason replaces it.
        inferred: bool,
        alua: Option<AluaState>,
    },
}

/// The owner's answer: issue the request again, or complete it with this error.
pub(crate) enum Verdict {
    Retry,
    Fail(IoError),
}

/// What the owner task receives.
pub(crate) enum Command {
    Ask {
        ask: Ask,
        reply: oneshot::Sender<Verdict>,
    },
    Path {
        path: PathId,
        event: PathEvent,
    },
    Message {
        msg: Message,
        reply: oneshot::Sender<Result<Reply, MessageError>>,
    },
    /// A path joins the map (not a [`Message`]: a transport is an object, not a
    /// control-plane request).
    AddPath {
        spec: PathSpec,
        reply: oneshot::Sender<Result<PathId, MessageError>>,
    },
    Stop,
}

pub(crate) struct Shared {
    pub name: String,
    /// The LU's facts as started; its capacity is `size` (changed by a resize).
    pub device: DeviceInfo,
    /// Capacity in bytes now: read once per request (relaxed), stored by the owner.
    pub size: AtomicU64,
    pub limits: IoLimits,
    /// ALUA transitioning retry delay and timeout, in ns (the map's policy; the owner
    /// stores new ones on `SetConfig`).
    pub transition_retry_ns: AtomicU64,
    pub transition_timeout_ns: AtomicU64,
    /// How long a busy target's commands are retried, in ns (`MapConfig::busy_timeout`).
    pub busy_timeout_ns: AtomicU64,
    /// Time zero of the no-path clock (tokio time: paused in tests, like the timers).
    pub epoch: Instant,
    /// The fast path's clock (selectors, latencies), read twice per timed I/O.
    pub clock: &'static Clock,
    /// The selector reads time (historical-service-time): only then is `now_ns`
    /// computed and each completion's service time recorded. Changes with the selector.
    pub selector_needs_time: AtomicBool,
    /// Per-I/O statistics (counts, bytes, latency histograms): see
    /// [`EngineConfig::io_stats`].
    pub io_stats: bool,
    /// The fast path reads the clock (for statistics or the selector).
    pub timed: AtomicBool,
    /// The HST decay shift every path's load uses (from the map's selector).
    pub decay_shift: AtomicU32,
    /// The map's paths in id order, as the owner last published them (for `counters`,
    /// `path_ids`; the owner keeps its own copy).
    pub members: Mutex<Vec<Arc<PathShared>>>,
    pub routing: RwLock<Routing>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub counters: IoCounters,
    pub events: broadcast::Sender<Event>,
    pub recent: Mutex<VecDeque<Event>>,
    /// No-path time up to `no_path_since_ns`, and since when there has been no usable
    /// path (`USABLE` when there is one); kept by the owner.
    pub no_path_total_ns: AtomicU64,
    pub no_path_since_ns: AtomicU64,
    pub fence: Option<Fence>,
    /// Writes issued again while an earlier attempt's outcome was unknown.
    pub in_doubt_writes: AtomicU64,
    /// Writes the fence held back.
    pub fenced_writes: AtomicU64,
    /// Hedged reads ([`EngineConfig::hedge`]).
    pub hedge: Option<HedgeConfig>,
    /// The hedge budget, in thousandths of a hedge: each read adds `per_mille`, each
    /// hedge takes 1000, up to `burst` hedges.
    pub hedge_tokens: AtomicU64,
}

/// The selector's choice among `r`'s candidates but the one at `skip` (when there are
/// others).
fn select_skipping(r: &Routing, bytes: u64, now_ns: u64, skip: Option<usize>) -> Option<Picked> {
    let n = r.paths.len();
    let skip = skip.filter(|_| n > 1);
    let index = |i: usize| match skip {
        Some(s) if i >= s => i + 1,
        _ => i,
    };
    let i = r.selector.select(
        n - usize::from(skip.is_some()),
        |i| &r.paths[index(i)].load,
        bytes,
        now_ns,
    )?;
    Some(Picked {
        path: r.paths[index(i)].clone(),
        candidates: n,
    })
}

impl Shared {
    pub fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A write's attempt left `path` with no outcome: it may still land.
    fn note_in_doubt(&self, path: PathId, cmd: &Cmd) {
        if let Some(range) = cmd.modifies {
            self.in_doubt_writes.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = &self.fence {
                f.in_doubt(path, range, Instant::now());
            }
        }
    }

    /// Now, in ns of the fast path's clock, when anything needs it (statistics or the
    /// selector); otherwise 0, and the clock is not read.
    #[inline]
    fn now_ns(&self) -> u64 {
        if self.timed.load(Ordering::Relaxed) {
            self.clock.now_ns()
        } else {
            0
        }
    }

    /// Record and publish an event.
    pub fn emit(&self, event: Event) {
        match &event.kind {
            EventKind::IoRequeued { .. } | EventKind::IoFailed { .. } => {
                tracing::debug!(map = %self.name, "{}", event.kind)
            }
            _ => tracing::info!(map = %self.name, "{}", event.kind),
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn emit_now(&self, kind: EventKind) {
        self.emit(Event {
            at: Instant::now().into_std(),
            kind,
        });
    }

    /// The selector's choice among the published candidates.
    #[inline]
    fn pick(&self, bytes: u64, now_ns: u64) -> Option<Picked> {
        let r = self.routing.read().unwrap_or_else(|e| e.into_inner());
        let i = r
            .selector
            .select(r.paths.len(), |i| &r.paths[i].load, bytes, now_ns)?;
        // A path the target said BUSY through a moment ago: another one, if there is one
        // (the clock is read only then).
        let busy_until = r.paths[i].busy_until_ns.load(Ordering::Relaxed);
        if busy_until != 0 && r.paths.len() > 1 && self.ns(Instant::now()) < busy_until {
            return select_skipping(&r, bytes, now_ns, Some(i));
        }
        Some(Picked {
            path: r.paths[i].clone(),
            candidates: r.paths.len(),
        })
    }

    /// As [`pick`](Self::pick), but another path than `avoid` when there is one: a retry
    /// after BUSY goes where the target may have room.
    fn pick_avoiding(&self, bytes: u64, now_ns: u64, avoid: PathId) -> Option<Picked> {
        let r = self.routing.read().unwrap_or_else(|e| e.into_inner());
        let skip = r.paths.iter().position(|p| p.id == avoid);
        select_skipping(&r, bytes, now_ns, skip)
    }

    pub(crate) fn members(&self) -> Vec<Arc<PathShared>> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn ask(&self, ask: Ask) -> Verdict {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Ask { ask, reply }).is_err() {
            return Verdict::Fail(stopped(&self.name));
        }
        rx.await
            .unwrap_or_else(|_| Verdict::Fail(stopped(&self.name)))
    }

    /// One attempt of `cmd` on `path` (picked among `candidates`), from `start` (clock
    /// ns): the outcome and when it came; `None` when the path was removed after the
    /// routing was read (the owner published a routing without it before closing it, so
    /// the next pick will not find it).
    #[inline]
    async fn attempt(
        &self,
        picked: Picked,
        cmd: &Cmd,
        start: u64,
        needs_time: bool,
    ) -> Option<Tried> {
        let Picked { path, candidates } = picked;
        let incarnation = path.incarnation.load(Ordering::Acquire);
        let epoch = path.inflight.epoch();
        if epoch == CLOSED {
            return None;
        }
        path.load.start_io(cmd.bytes);
        // Ends the command's load even if the caller drops the request meanwhile (a
        // timeout, a client gone): a leaked load would steer the selector off this path.
        let loaded = Loaded {
            load: &path.load,
            bytes: cmd.bytes,
        };
        let attempt =
            Inflight::new(&path.inflight, path.transport.submit(cmd.request()), epoch).await;
        let end = self.now_ns();
        drop(loaded);
        // `start` is 0 when the clock was not read for it (the selector became
        // historical-service-time after the request started): no sample then.
        if needs_time && start != 0 {
            path.load.record_service_time(start, end, candidates);
        }
        if attempt.is_ok() {
            // It answers: what hedges left on it is not stuck.
            path.load.clear_stranded();
            if self.hedge.is_some() && start != 0 && cmd.is_read() {
                path.note_read_latency(end.saturating_sub(start));
            }
        }
        Some(Tried {
            path,
            incarnation,
            attempt,
            end,
        })
    }

    /// A read's first attempt, hedged: if it is still outstanding after its path's
    /// deadline, [`hedge`](Self::hedge) takes over.
    async fn attempt_or_hedge(
        &self,
        picked: Picked,
        cmd: &Cmd,
        start: u64,
        needs_time: bool,
        h: &HedgeConfig,
    ) -> Option<Tried> {
        self.earn_hedge(h);
        let (slow, deadline) = (picked.path.id, picked.path.hedge_deadline(h));
        let first = self.attempt(picked, cmd, start, needs_time);
        let mut first = std::pin::pin!(first);
        // A command answered at its first poll needs no timer (nor the clock a timer reads).
        if let Poll::Ready(tried) =
            std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await
        {
            return tried;
        }
        // Still waiting: the timer and the hedge live in a boxed continuation, so that
        // the common request's future does not grow by them.
        Box::pin(async move {
            match tokio::time::timeout(deadline, first.as_mut()).await {
                Ok(tried) => tried,
                Err(_) => self.hedge(first, slow, deadline, cmd, needs_time).await,
            }
        })
        .await
    }

    /// Each read earns a share of a hedge, up to the burst.
    #[inline]
    fn earn_hedge(&self, h: &HedgeConfig) {
        // A full bucket (the usual state) costs a load, not a write to a shared line.
        let cap = u64::from(h.burst) * 1000;
        if self.hedge_tokens.load(Ordering::Relaxed) < cap {
            let before = self
                .hedge_tokens
                .fetch_add(u64::from(h.per_mille), Ordering::Relaxed);
            if before >= cap {
                self.hedge_tokens.store(cap, Ordering::Relaxed);
            }
        }
    }

    /// `first` (a read on `slow`) has waited `waited`: issue it on another usable path
    /// too — unless there is none, that path is as slow (its smoothed read latency is no
    /// better than what `first` has waited), or the budget is spent — and take the first
    /// good answer. The other attempt is dropped: its load ends, its answer is dropped
    /// when it comes. If neither succeeds, the first attempt's outcome is what
    /// [`recover`](Self::recover) handles (the hedge's failure is seen again by whatever
    /// uses that path next).
    async fn hedge(
        &self,
        mut first: Pin<&mut impl Future<Output = Option<Tried>>>,
        slow: PathId,
        waited: Duration,
        cmd: &Cmd,
        needs_time: bool,
    ) -> Option<Tried> {
        // Looked up only now: the common read never pays for a reference to its path.
        let Some(slow) = self.members().into_iter().find(|p| p.id == slow) else {
            return first.await;
        };
        let start = self.now_ns();
        let other = self
            .pick_avoiding(cmd.bytes, if needs_time { start } else { 0 }, slow.id)
            .filter(|p| p.path.id != slow.id)
            .filter(|p| {
                let srtt = p.path.read_srtt_ns.load(Ordering::Relaxed);
                srtt == 0 || Duration::from_nanos(srtt) < waited
            });
        let Some(other) = other else {
            tracing::debug!(map = %self.name, path = %slow.id, ?waited, "read not hedged: no other path as fast");
            return first.await;
        };
        if self
            .hedge_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(1000)
            })
            .is_err()
        {
            tracing::debug!(map = %self.name, path = %slow.id, ?waited, "read not hedged: budget spent");
            return first.await;
        }
        slow.counters.hedged();
        self.counters.hedged();
        let second = self.attempt(other, cmd, start, needs_time);
        let mut second = std::pin::pin!(second);
        let (mut a, mut b): (Option<Option<Tried>>, Option<Option<Tried>>) = (None, None);
        let good = |t: &Option<Option<Tried>>| {
            matches!(
                t,
                Some(Some(Tried {
                    attempt: Attempt::Done(Ok(_)),
                    ..
                }))
            )
        };
        std::future::poll_fn(|cx| {
            if a.is_none() {
                if let Poll::Ready(t) = first.as_mut().poll(cx) {
                    a = Some(t);
                }
            }
            if b.is_none() {
                if let Poll::Ready(t) = second.as_mut().poll(cx) {
                    b = Some(t);
                }
            }
            if good(&a) || good(&b) || (a.is_some() && b.is_some()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        // The first attempt's answer when it is good (both may be ready at once).
        if good(&a) {
            return a.flatten();
        }
        if good(&b) {
            slow.counters.hedge_won();
            self.counters.hedge_won();
            // The abandoned attempt is still outstanding on the slow path: its load stays
            // there until that path answers something, fails, or `STRANDED_FOR` has
            // passed, so that the selectors do not refill a path that holds requests it
            // does not answer.
            slow.load.strand(cmd.bytes);
            // And its transport checks the connection now rather than after its own
            // silence limit: a silent path is failed sooner, writes on it wait less.
            slow.transport.suspect();
            let bytes = cmd.bytes;
            tokio::spawn(async move {
                tokio::time::sleep(STRANDED_FOR).await;
                slow.load.unstrand(bytes);
            });
            return b.flatten();
        }
        match a {
            Some(Some(t)) => Some(t),
            _ => b.flatten(),
        }
    }

    /// Issue one command until it completes: on a path error the path is failed and the
    /// same command is issued on another path; with no path the owner queues or fails it.
    /// `start` is now (the caller read the clock, [`now_ns`](Self::now_ns)); on success,
    /// the data and when it came.
    ///
    /// The first attempt, when it succeeds, is all that runs here; everything else (the
    /// stale-write fence, no path, errors, requeues) is in [`recover`](Self::recover),
    /// boxed, so that the common request's future stays small.
    pub(crate) async fn execute(&self, cmd: &Cmd, start: u64) -> Result<(Bytes, u64), IoError> {
        if self.fence.is_some() && cmd.modifies.is_some() {
            return Box::pin(self.recover(cmd, start, None)).await;
        }
        let needs_time = self.selector_needs_time.load(Ordering::Relaxed);
        let Some(picked) = self.pick(cmd.bytes, if needs_time { start } else { 0 }) else {
            return Box::pin(self.recover(cmd, start, None)).await;
        };
        let tried = match &self.hedge {
            Some(h) if picked.candidates > 1 && cmd.is_read() => {
                self.attempt_or_hedge(picked, cmd, start, needs_time, h)
                    .await
            }
            _ => self.attempt(picked, cmd, start, needs_time).await,
        };
        match tried {
            Some(Tried {
                path,
                attempt: Attempt::Done(Ok(data)),
                end,
                ..
            }) => {
                if self.io_stats {
                    path.counters.completed(
                        IoOp::of_data(&cmd.data),
                        cmd.bytes,
                        end.saturating_sub(start),
                    );
                }
                Ok((data, end))
            }
            tried => Box::pin(self.recover(cmd, start, tried)).await,
        }
    }

    /// [`execute`](Self::execute) after its first attempt (`tried`) did not succeed at
    /// once, or before any attempt (`None`: a write the fence may hold, or no candidate).
    async fn recover(
        &self,
        cmd: &Cmd,
        mut start: u64,
        mut tried: Option<Tried>,
    ) -> Result<(Bytes, u64), IoError> {
        let mut transitioning_since: Option<Instant> = None;
        // BUSY answers so far: when the first came, how many, and the path that gave the
        // last (the next attempt prefers another).
        let mut busy_since: Option<Instant> = None;
        let mut busy_answers = 0u32;
        let mut avoid: Option<PathId> = None;
        if tried.is_none() {
            if let (Some(fence), Some(range)) = (&self.fence, cmd.modifies) {
                if fence.wait(range).await {
                    self.fenced_writes.fetch_add(1, Ordering::Relaxed);
                    start = self.now_ns();
                }
            }
        }
        loop {
            let Tried {
                path,
                incarnation,
                attempt,
                end,
            } = match tried.take() {
                Some(t) => t,
                None => {
                    // Read once per attempt: the selector may change meanwhile (`SetConfig`).
                    let needs_time = self.selector_needs_time.load(Ordering::Relaxed);
                    let now = if needs_time { start } else { 0 };
                    let picked = match avoid.take() {
                        Some(busy) => self.pick_avoiding(cmd.bytes, now, busy),
                        None => self.pick(cmd.bytes, now),
                    };
                    let Some(picked) = picked else {
                        match self.ask(Ask::NoPath).await {
                            Verdict::Retry => {
                                start = self.now_ns();
                                continue;
                            }
                            Verdict::Fail(e) => return Err(e),
                        }
                    };
                    match self.attempt(picked, cmd, start, needs_time).await {
                        Some(t) => t,
                        None => continue,
                    }
                }
            };
            let latency = end.saturating_sub(start);
            let err = match attempt {
                Attempt::Done(Ok(data)) => {
                    if self.io_stats {
                        path.counters
                            .completed(IoOp::of_data(&cmd.data), cmd.bytes, latency);
                    }
                    return Ok((data, end));
                }
                Attempt::Orphaned => {
                    self.note_in_doubt(path.id, cmd);
                    path.counters.requeue();
                    self.counters.requeue();
                    let cause = if path.inflight.is_closed() {
                        RequeueCause::PathRemoved
                    } else {
                        RequeueCause::PathFailed
                    };
                    self.emit_now(EventKind::IoRequeued {
                        path: path.id,
                        cause,
                    });
                    start = end;
                    continue;
                }
                Attempt::Done(Err(e)) => e,
            };
            path.counters.error();
            let (reason, alua, inferred) = match classify(&err) {
                ErrorClass::Target | ErrorClass::Invalid => {
                    if self.io_stats {
                        path.counters
                            .completed(IoOp::of_data(&cmd.data), cmd.bytes, latency);
                    }
                    return Err(err);
                }
                ErrorClass::Busy(condition) => {
                    // The target's condition, not the path's: back off and try again —
                    // elsewhere if the map has another path — until the budget is spent.
                    path.counters.busy();
                    busy_answers += 1;
                    let now = Instant::now();
                    path.busy_until_ns
                        .store(self.ns(now + BUSY_STEER), Ordering::Relaxed);
                    let since = *busy_since.get_or_insert(now);
                    let budget = Duration::from_nanos(self.busy_timeout_ns.load(Ordering::Relaxed));
                    let delay = block::busy_delay(busy_answers);
                    let waited = now.saturating_duration_since(since);
                    if waited + delay <= budget {
                        avoid = Some(path.id);
                        tokio::time::sleep(delay).await;
                        start = self.now_ns();
                        continue;
                    }
                    if self.io_stats {
                        path.counters
                            .completed(IoOp::of_data(&cmd.data), cmd.bytes, latency);
                    }
                    return Err(IoError {
                        detail: format!(
                            "target answered {condition} {busy_answers} times over {} ms (busy_timeout {} ms)",
                            waited.as_millis(),
                            budget.as_millis()
                        ),
                        ..err
                    });
                }
                ErrorClass::Transitioning => {
                    let now = Instant::now();
                    let since = *transitioning_since.get_or_insert(now);
                    let timeout =
                        Duration::from_nanos(self.transition_timeout_ns.load(Ordering::Relaxed));
                    if now.saturating_duration_since(since) < timeout {
                        path.counters.requeue();
                        self.counters.requeue();
                        self.emit_now(EventKind::IoRequeued {
                            path: path.id,
                            cause: RequeueCause::Transitioning,
                        });
                        let retry = self.transition_retry_ns.load(Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_nanos(retry)).await;
                        start = self.now_ns();
                        continue;
                    }
                    (
                        PathFailReason::new(
                            PathFailKind::AluaInaccessible,
                            format!("ALUA transition still in progress after {timeout:?}"),
                        ),
                        None,
                        false,
                    )
                }
                ErrorClass::PathFailure { reason, alua } => {
                    // Without a SCSI status nobody knows whether the target executed it.
                    if err.scsi.is_none() {
                        self.note_in_doubt(path.id, cmd);
                    }
                    (reason, alua, reason_is_inferred(&err))
                }
            };
            path.counters.requeue();
            self.counters.requeue();
            self.emit_now(EventKind::IoRequeued {
                path: path.id,
                cause: RequeueCause::PathError,
            });
            let ask = Ask::PathError {
                path: path.id,
                incarnation,
                reason,
                inferred,
                alua,
            };
            match self.ask(ask).await {
                Verdict::Retry => start = self.now_ns(),
                Verdict::Fail(e) => return Err(e),
            }
        }
    }
}

impl Shared {
    /// Run a plan other than one command alone (nothing, chunks, or a command and a
    /// SYNCHRONIZE CACHE after it): its data and when it was complete.
    async fn run(&self, planned: Planned, is_read: bool, t0: u64) -> Result<(Bytes, u64), IoError> {
        let (data, mut end) = match planned.plan {
            Plan::Nothing => (Bytes::new(), t0),
            Plan::One(cmd) => self.execute(&cmd, t0).await?,
            Plan::Split(cmds) => {
                let results = JoinAll::new(cmds.iter().map(|c| self.execute(c, t0))).await;
                let mut buf = BytesMut::new();
                let mut end = t0;
                for r in results {
                    let (data, at) = r?;
                    end = end.max(at);
                    if is_read {
                        buf.extend_from_slice(&data);
                    }
                }
                (buf.freeze(), end)
            }
        };
        if let Some(sync) = planned.then_sync {
            end = self.execute(&sync, end).await?.1;
        }
        Ok((data, end))
    }

    async fn submit(&self, op: BlockOp) -> Result<Outcome, IoError> {
        let t0 = self.now_ns();
        let size = self.size.load(Ordering::Relaxed);
        let is_read = matches!(op, BlockOp::Read { .. });
        let io_op = IoOp::of_block(&op);
        let len = op.transfer_len();
        let planned = plan_sized(&op, &self.device, size, &self.limits);
        drop(op);
        let result = match planned {
            Ok(Planned {
                plan: Plan::One(cmd),
                then_sync: None,
            }) => self.execute(&cmd, t0).await,
            Ok(planned) => Box::pin(self.run(planned, is_read, t0)).await,
            Err(e) => Err(e),
        };
        match result {
            Ok((data, end)) => {
                if self.io_stats {
                    self.counters.completed(io_op, len, end.saturating_sub(t0));
                }
                Ok(if is_read {
                    Outcome::Data(data)
                } else {
                    Outcome::Done
                })
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// A request's error reaches its caller: counted and announced.
    #[cold]
    fn failed(&self, e: IoError) -> IoError {
        self.counters.error();
        self.emit_now(EventKind::IoFailed {
            kind: e.kind,
            detail: e.detail.clone(),
        });
        e
    }
}

/// A command counted in a path's load (`start_io`); `end_io` when dropped.
struct Loaded<'a> {
    load: &'a PathLoad,
    bytes: u64,
}

impl Drop for Loaded<'_> {
    fn drop(&mut self) {
        self.load.end_io(self.bytes);
    }
}

/// The path a command goes to, and among how many candidates it was chosen.
pub(crate) struct Picked {
    path: Arc<PathShared>,
    candidates: usize,
}

/// A finished attempt: where, with what outcome, when.
pub(crate) struct Tried {
    path: Arc<PathShared>,
    incarnation: u64,
    attempt: Attempt,
    end: u64,
}

/// The HST decay shift of a selector (the default for the others: their loads keep
/// measuring nothing, but a later switch to HST starts from it).
pub(crate) fn decay_shift(selector: &SelectorKind) -> u32 {
    match selector {
        SelectorKind::HistoricalServiceTime(p) => p.decay_shift,
        _ => mpath_policy::HstParams::default().decay_shift,
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn stopped(name: &str) -> IoError {
    IoError::new(IoErrorKind::NoPath, format!("map {name} is stopped"))
}

/// Poll a set of futures to completion, concurrently; outputs in order.
struct JoinAll<F: Future> {
    futs: Vec<Option<Pin<Box<F>>>>,
    out: Vec<Option<F::Output>>,
}

// The futures are pinned in their boxes; nothing else is ever pinned.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> JoinAll<F> {
    fn new(futs: impl Iterator<Item = F>) -> JoinAll<F> {
        let futs: Vec<_> = futs.map(|f| Some(Box::pin(f))).collect();
        let out = futs.iter().map(|_| None).collect();
        JoinAll { futs, out }
    }
}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, out) in this.futs.iter_mut().zip(this.out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(this.out.drain(..).flatten().collect())
        }
    }
}

/// Why a device could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a map needs at least one path")]
    NoPaths,
    #[error("block size {0} is not a power of two")]
    BadBlockSize(u32),
    #[error("not inside a tokio runtime: the owner task needs one")]
    NoRuntime,
}

/// Tells the owner task to stop when the last handle goes.
struct StopOnDrop(mpsc::UnboundedSender<Command>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Command::Stop);
    }
}

/// A multipath device: one map of paths to one LU, taking block operations
/// ([`BlockDevice`]) and control messages. Clones are handles to the same device; the
/// owner task stops when the last one is dropped or [`shutdown`](Self::shutdown) is called.
#[derive(Clone)]
pub struct MultipathDevice {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

impl MultipathDevice {
    /// Build the map and spawn its owner task on the current tokio runtime. Paths are
    /// numbered in the order given (`PathId(0)`...); those whose transport is not up start
    /// failed.
    pub fn start(
        config: EngineConfig,
        paths: Vec<PathSpec>,
    ) -> Result<MultipathDevice, StartError> {
        if paths.is_empty() {
            return Err(StartError::NoPaths);
        }
        let bs = config.device.block_size;
        if bs == 0 || !bs.is_power_of_two() {
            return Err(StartError::BadBlockSize(bs));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let epoch = Instant::now();
        let decay_shift = decay_shift(&config.policy.selector);
        let mut shared_paths = Vec::with_capacity(paths.len());
        let mut infos = Vec::with_capacity(paths.len());
        for (i, spec) in paths.into_iter().enumerate() {
            let (path, up) = PathShared::attach(PathId(i as u32), &spec, &tx, decay_shift);
            infos.push((spec.info, up));
            shared_paths.push(Arc::new(path));
        }
        let policy = Multipath::new(config.policy.clone(), infos, epoch.into_std());
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            device: config.device.clone(),
            size: AtomicU64::new(config.device.size),
            limits: config.limits.clone(),
            transition_retry_ns: AtomicU64::new(nanos(config.policy.alua_transition_retry)),
            transition_timeout_ns: AtomicU64::new(nanos(config.policy.alua_transition_timeout)),
            busy_timeout_ns: AtomicU64::new(nanos(config.policy.busy_timeout)),
            epoch,
            clock: crate::clock::shared(),
            selector_needs_time: AtomicBool::new(config.policy.selector.needs_time()),
            io_stats: config.io_stats,
            timed: AtomicBool::new(
                config.io_stats || config.hedge.is_some() || config.policy.selector.needs_time(),
            ),
            decay_shift: AtomicU32::new(decay_shift),
            members: Mutex::new(shared_paths.clone()),
            routing: RwLock::new(Routing {
                paths: Vec::new(),
                selector: Selector::new(config.policy.selector),
            }),
            commands: tx.clone(),
            counters: IoCounters::default(),
            events,
            recent: Mutex::new(VecDeque::new()),
            no_path_total_ns: AtomicU64::new(0),
            no_path_since_ns: AtomicU64::new(USABLE),
            fence: config.stale_write_fence.map(Fence::new),
            in_doubt_writes: AtomicU64::new(0),
            fenced_writes: AtomicU64::new(0),
            hedge_tokens: AtomicU64::new(
                config
                    .hedge
                    .as_ref()
                    .map_or(0, |h| u64::from(h.burst) * 1000),
            ),
            hedge: config.hedge.clone(),
        });
        let mut owner = Owner::new(
            shared.clone(),
            policy,
            shared_paths,
            rx,
            config.reinstate_on_recovery,
        );
        owner.sync(epoch);
        runtime.spawn(owner.run());
        Ok(MultipathDevice {
            shared,
            _stop: Arc::new(StopOnDrop(tx)),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How many paths the map has now (paths removed are not counted; paths added are
    /// once the owner has taken them in, i.e. after `add_path` returned).
    pub fn path_count(&self) -> usize {
        self.shared
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The map's paths now, in id order.
    pub fn path_ids(&self) -> Vec<PathId> {
        self.shared.members().iter().map(|p| p.id).collect()
    }

    /// Add a path to the running map; its id is returned (never one a removed path had).
    /// The owner subscribes to the transport's events, then reads whether it is up (down:
    /// the path starts failed and is reinstated when the transport recovers), regroups
    /// per the grouping policy and publishes the new routing before answering, so I/O
    /// submitted after this returns may use the path. A path in a better group than the
    /// active one is failed back to per the failback policy, as a path that comes back.
    ///
    /// The transport should not already be a path of this map: it would be selected
    /// under two ids.
    pub async fn add_path(&self, spec: PathSpec) -> Result<PathId, MessageError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::AddPath { spec, reply })
            .map_err(|_| MessageError::Stopped)?;
        rx.await.map_err(|_| MessageError::Stopped)?
    }

    /// Remove a path from the running map (`Message::RemovePath`). It is no longer
    /// selected once this returns; every command in flight on it is issued again at once
    /// on the other paths, as when a path fails (nothing waits for the path); then it is
    /// forgotten: status, views and counters no longer show it, its later events are
    /// ignored, and its id is never given to another path. Removing the last path is not
    /// an error: the map has no usable path and its no-path policy applies (queue or
    /// fail) until a path is added. `NoSuchPath` for an unknown or removed id.
    pub async fn remove_path(&self, path: PathId) -> Result<(), MessageError> {
        self.done(Message::RemovePath { path }).await
    }

    /// Send a control message and wait for its answer.
    pub async fn message(&self, msg: Message) -> Result<Reply, MessageError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Message { msg, reply })
            .map_err(|_| MessageError::Stopped)?;
        rx.await.map_err(|_| MessageError::Stopped)?
    }

    async fn done(&self, msg: Message) -> Result<(), MessageError> {
        self.message(msg).await.map(|_| ())
    }

    pub async fn fail_path(&self, path: PathId) -> Result<(), MessageError> {
        self.done(Message::FailPath { path }).await
    }

    pub async fn reinstate_path(&self, path: PathId) -> Result<Reinstatement, MessageError> {
        match self.message(Message::ReinstatePath { path }).await? {
            Reply::Reinstated(r) => Ok(r),
            _ => Ok(Reinstatement::Now),
        }
    }

    pub async fn switch_group(&self, group: usize) -> Result<(), MessageError> {
        self.done(Message::SwitchGroup { group }).await
    }

    pub async fn enable_group(&self, group: usize) -> Result<(), MessageError> {
        self.done(Message::EnableGroup { group }).await
    }

    pub async fn disable_group(&self, group: usize) -> Result<(), MessageError> {
        self.done(Message::DisableGroup { group }).await
    }

    pub async fn set_queue_if_no_path(&self, on: bool) -> Result<(), MessageError> {
        self.done(Message::QueueIfNoPath { on }).await
    }

    pub async fn checker_report(
        &self,
        path: PathId,
        state: mpath_policy::CheckerState,
    ) -> Result<(), MessageError> {
        self.checker_report_because(path, state, None).await
    }

    /// A checker result with what the check saw: a path it fails records that reason.
    pub async fn checker_report_because(
        &self,
        path: PathId,
        state: mpath_policy::CheckerState,
        reason: Option<PathFailReason>,
    ) -> Result<(), MessageError> {
        self.done(Message::CheckerReport {
            path,
            state,
            reason,
        })
        .await
    }

    pub async fn update_path(
        &self,
        path: PathId,
        info: mpath_policy::PathInfo,
    ) -> Result<(), MessageError> {
        self.done(Message::UpdatePath { path, info }).await
    }

    /// Change the map's capacity (`Message::Resize`), in bytes, a multiple of the block
    /// size: requests submitted after this returns are checked against it. I/O in flight
    /// is not disturbed; after a shrink, requests beyond the new end fail `Invalid` as any
    /// out-of-range request does. Announced as `EventKind::Resized`; the same size again
    /// is not an error and changes nothing.
    pub async fn resize(&self, size: u64) -> Result<(), MessageError> {
        self.done(Message::Resize { size }).await
    }

    /// The capacity now, in bytes.
    pub fn size(&self) -> u64 {
        self.shared.size.load(Ordering::Relaxed)
    }

    /// A new policy for the running map (`Message::SetConfig`): the groups are rebuilt
    /// with a new grouping, a new selector takes the next I/O (commands in flight finish
    /// on their path), and failback, no-path queueing, flap damping and the ALUA
    /// transition timings apply to later decisions. Each changed setting is announced as
    /// `EventKind::PolicyChanged`; see `mpath_policy::Multipath::set_config`.
    pub async fn set_config(&self, config: mpath_policy::MapConfig) -> Result<(), MessageError> {
        self.done(Message::SetConfig {
            config: Box::new(config),
        })
        .await
    }

    /// See [`Message::ReinstateOnRecovery`].
    pub async fn set_reinstate_on_recovery(&self, on: bool) -> Result<(), MessageError> {
        self.done(Message::ReinstateOnRecovery { on }).await
    }

    pub async fn status(&self) -> Result<MapStatus, MessageError> {
        match self.message(Message::Status).await? {
            Reply::Status(s) => Ok(*s),
            _ => Err(MessageError::Stopped),
        }
    }

    /// Every counter, now.
    pub fn counters(&self) -> MapCounters {
        let s = &self.shared;
        let since = s.no_path_since_ns.load(Ordering::Acquire);
        let mut ns = s.no_path_total_ns.load(Ordering::Acquire);
        if since != USABLE {
            ns += s.ns(Instant::now()).saturating_sub(since);
        }
        MapCounters {
            map: s.counters.snapshot(),
            paths: s
                .members()
                .iter()
                .map(|p| (p.id, p.counters.snapshot()))
                .collect(),
            no_path_time: Duration::from_nanos(ns),
            in_doubt_writes: s.in_doubt_writes.load(Ordering::Relaxed),
            fenced_writes: s.fenced_writes.load(Ordering::Relaxed),
        }
    }

    /// Every event from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Stop the owner task: queued requests fail; later requests fail once they need it.
    pub fn shutdown(&self) {
        let _ = self.shared.commands.send(Command::Stop);
    }
}

impl BlockDevice for MultipathDevice {
    /// The LU's facts, with its capacity now (after any [`resize`](Self::resize)).
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size: self.shared.size.load(Ordering::Relaxed),
            ..self.shared.device.clone()
        }
    }

    fn submit(&self, op: BlockOp) -> impl Future<Output = Result<Outcome, IoError>> + Send {
        self.shared.submit(op)
    }
}
