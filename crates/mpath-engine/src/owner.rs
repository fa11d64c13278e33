//! The owner task of one map: the only place the policy state lives and changes.
//!
//! In the style of crucible's `Upstairs`: [`Owner::select`] waits for the next thing to
//! happen and returns it as an [`Action`]; [`Owner::apply`] handles it synchronously;
//! [`Owner::sync`] then restores the invariants the fast path relies on, in this order:
//!
//! 1. reinstated paths get a new incarnation (older path errors no longer fail them);
//! 2. the routing is republished if the policy's generation moved;
//! 3. commands in flight on paths that just failed are handed back (orphaned) — after the
//!    new routing is visible, so that they are issued on another path;
//! 4. events are published;
//! 5. requests waiting for a path are released or failed per the no-path verdict;
//! 6. answers to this turn's questions and messages are sent — last, so that a caller
//!    that hears "retry" or "done" sees the state that answer describes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use block::{IoError, IoErrorKind, PathEvent, PathFailKind, PathFailReason};
use mpath_policy::{
    CheckerState, DmState, Event, EventKind, MapConfig, Multipath, NoPathVerdict, PathId,
    PolicyError, ReinstateCause, Selector,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::PathSpec;
use crate::device::{decay_shift, nanos, Ask, Command, PathShared, Routing, Shared, Verdict};
use crate::message::{MapStatus, Message, MessageError, Reply};

/// What woke the owner.
enum Action {
    Command(Command),
    /// The policy's next deadline passed.
    Timeout,
    /// Every sender is gone.
    Closed,
}

/// An answer held until the end of the turn.
enum Outgoing {
    Verdict(oneshot::Sender<Verdict>, Verdict),
    Reply(
        oneshot::Sender<Result<Reply, MessageError>>,
        Result<Reply, MessageError>,
    ),
    Added(oneshot::Sender<Result<PathId, MessageError>>, PathId),
}

pub(crate) struct Owner {
    shared: Arc<Shared>,
    policy: Multipath,
    /// The map's paths in id order (what `Shared::members` mirrors).
    paths: Vec<Arc<PathShared>>,
    /// Paths removed this turn: closed (their in-flight commands handed back) at the next
    /// sync, after the routing without them is published.
    removed: Vec<Arc<PathShared>>,
    rx: mpsc::UnboundedReceiver<Command>,
    /// Requests queued for want of a usable path.
    waiters: Vec<oneshot::Sender<Verdict>>,
    /// `waiters.len()` after the last pruning of callers that gave up: pruning again only
    /// when the queue has doubled keeps it linear overall.
    pruned_at: usize,
    published: Option<u64>,
    /// Paths whose in-flight commands are handed back at the next sync.
    orphan: Vec<PathId>,
    outbox: Vec<Outgoing>,
    reinstate_on_recovery: bool,
}

impl Owner {
    pub fn new(
        shared: Arc<Shared>,
        policy: Multipath,
        paths: Vec<Arc<PathShared>>,
        rx: mpsc::UnboundedReceiver<Command>,
        reinstate_on_recovery: bool,
    ) -> Owner {
        Owner {
            shared,
            policy,
            paths,
            removed: Vec::new(),
            rx,
            waiters: Vec::new(),
            pruned_at: 0,
            published: None,
            orphan: Vec::new(),
            outbox: Vec::new(),
            reinstate_on_recovery,
        }
    }

    pub async fn run(mut self) {
        loop {
            let action = self.select().await;
            let now = Instant::now();
            let go_on = self.apply(action, now);
            self.sync(now);
            if !go_on {
                break;
            }
        }
        self.stop();
    }

    async fn select(&mut self) -> Action {
        let deadline = self.policy.poll_timeout().map(Instant::from_std);
        // A due timer goes first: a flood of commands must not hold off the end of a
        // queueing window or a failback.
        tokio::select! {
            biased;
            _ = sleep_until(deadline) => Action::Timeout,
            c = self.rx.recv() => c.map_or(Action::Closed, Action::Command),
        }
    }

    /// Handle one action; false when the owner must stop.
    fn apply(&mut self, action: Action, now: Instant) -> bool {
        let t = now.into_std();
        match action {
            Action::Closed | Action::Command(Command::Stop) => return false,
            Action::Timeout => self.policy.handle_timeout(t),
            Action::Command(Command::Ask { ask, reply }) => self.ask(ask, reply, now),
            Action::Command(Command::Path { path, event }) => self.path_event(path, event, now),
            Action::Command(Command::Message { msg, reply }) => {
                let r = self.message(msg, now);
                self.outbox.push(Outgoing::Reply(reply, r));
            }
            Action::Command(Command::AddPath { spec, reply }) => {
                let id = self.add_path(spec, now);
                self.outbox.push(Outgoing::Added(reply, id));
            }
        }
        true
    }

    /// The shared state of path `id`, if it is in the map.
    fn path(&self, id: PathId) -> Option<&Arc<PathShared>> {
        find(&self.paths, id)
    }

    fn publish_members(&self) {
        *self
            .shared
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.paths.clone();
    }

    fn add_path(&mut self, spec: PathSpec, now: Instant) -> PathId {
        let id = self.policy.next_path_id();
        let (path, up) = PathShared::attach(
            id,
            &spec,
            &self.shared.commands,
            self.shared.decay_shift.load(Ordering::Relaxed),
        );
        let added = self.policy.add_path(spec.info, up, now.into_std());
        debug_assert_eq!(added, id);
        // Ids only grow: pushing keeps the table in id order.
        self.paths.push(Arc::new(path));
        self.publish_members();
        id
    }

    fn remove_path(&mut self, id: PathId, now: Instant) -> Result<(), PolicyError> {
        self.policy.remove_path(id, now.into_std())?;
        if let Ok(i) = self.paths.binary_search_by_key(&id, |p| p.id) {
            self.removed.push(self.paths.remove(i));
        }
        self.publish_members();
        Ok(())
    }

    fn ask(&mut self, ask: Ask, reply: oneshot::Sender<Verdict>, now: Instant) {
        let t = now.into_std();
        if let Ask::PathError {
            path,
            incarnation,
            reason,
            inferred,
            alua,
        } = ask
        {
            // A removed path is no longer in the map: nothing to fail or regroup.
            if let Some(current) = self
                .path(path)
                .map(|p| p.incarnation.load(Ordering::Acquire))
            {
                let active = self
                    .policy
                    .path_state(path)
                    .is_some_and(|s| s.dm == DmState::Active);
                // An error from before the path was last reinstated is about a connection
                // that is gone; one on an already failed path changes nothing.
                if incarnation == current && active {
                    let _ = if inferred {
                        self.policy.fail_path_inferred(path, reason, t)
                    } else {
                        self.policy.fail_path(path, reason, t)
                    };
                }
                if let Some(state) = alua {
                    let _ = self.policy.set_path_alua(path, state, t);
                }
            }
        }
        match self.policy.no_path_verdict() {
            NoPathVerdict::Retry => self.outbox.push(Outgoing::Verdict(reply, Verdict::Retry)),
            NoPathVerdict::Queue { .. } => self.waiters.push(reply),
            NoPathVerdict::Fail(reason) => self.outbox.push(Outgoing::Verdict(
                reply,
                Verdict::Fail(IoError::new(IoErrorKind::NoPath, reason.to_string())),
            )),
        }
    }

    fn path_event(&mut self, path: PathId, event: PathEvent, now: Instant) {
        let t = now.into_std();
        if !self.policy.contains_path(path) {
            // The transport of a removed path still reports to its old subscription.
            tracing::debug!(map = %self.shared.name, "{path} (removed): ignoring {event:?}");
            return;
        }
        match event {
            PathEvent::Failed { reason } => {
                // Already failed (by an I/O error or an operator) or not: the transport
                // says its commands are dead, so whatever is in flight goes elsewhere now.
                match self.policy.fail_path(path, reason.clone(), t) {
                    Ok(()) => {}
                    // Failed already (by an I/O error, an operator, or while held back by
                    // flap damping): the transport is down now, which ends any hold; and
                    // its reason is better than one inferred from an I/O error.
                    Err(PolicyError::PathAlreadyFailed(_)) => {
                        let _ = self.policy.refine_fail_reason(path, reason, t);
                        let _ = self.policy.checker_report(path, CheckerState::Down, t);
                    }
                    Err(e) => tracing::warn!(map = %self.shared.name, "{path}: {e}"),
                }
                self.orphan.push(path);
            }
            PathEvent::Connected | PathEvent::Recovered => {
                if let Some(fence) = &self.shared.fence {
                    fence.path_reconnected(path);
                }
                let failed = self
                    .policy
                    .path_state(path)
                    .is_some_and(|s| s.dm == DmState::Failed);
                if failed {
                    let r = if self.reinstate_on_recovery {
                        self.policy
                            .reinstate_path(path, ReinstateCause::TransportRecovered, t)
                            .map(|_| ())
                    } else {
                        self.policy.checker_report(path, CheckerState::Pending, t)
                    };
                    if let Err(e) = r {
                        tracing::debug!(map = %self.shared.name, "{path} recovered: {e}");
                    }
                }
            }
            PathEvent::Recovering {
                attempt,
                next_try_in,
                ..
            } => {
                tracing::debug!(
                    map = %self.shared.name,
                    "{path}: recovery attempt {attempt}, next in {next_try_in:?}"
                );
            }
            // The LU's facts are the daemon's to read again (capacity, ALUA states); the
            // path is working, and the command that met the UNIT ATTENTION was retried.
            PathEvent::LuChanged { lun, change } => {
                tracing::debug!(map = %self.shared.name, "{path}: LUN {lun}: {change}");
            }
            PathEvent::GaveUp { reason } => {
                if self.policy.fail_path(path, reason.clone(), t).is_ok() {
                    self.orphan.push(path);
                } else {
                    let _ = self.policy.refine_fail_reason(path, reason.clone(), t);
                    let _ = self.policy.checker_report(path, CheckerState::Down, t);
                }
                self.shared.emit(Event {
                    at: t,
                    kind: EventKind::PathGaveUp { path, reason },
                });
            }
        }
    }

    fn message(&mut self, msg: Message, now: Instant) -> Result<Reply, MessageError> {
        let t = now.into_std();
        let p = &mut self.policy;
        match msg {
            Message::FailPath { path } => {
                let reason =
                    PathFailReason::new(PathFailKind::Administrative, "failed by operator");
                p.fail_path(path, reason, t)?;
            }
            Message::ReinstatePath { path } => {
                let transport = &find(&self.paths, path)
                    .ok_or(PolicyError::NoSuchPath(path))?
                    .transport;
                if p.path_state(path).is_some_and(|s| s.dm == DmState::Active) {
                    return Err(PolicyError::PathAlreadyActive(path).into());
                }
                if !transport.is_up() {
                    return Err(MessageError::PathDown(path));
                }
                let r = p.reinstate_path(path, ReinstateCause::Operator, t)?;
                return Ok(Reply::Reinstated(r));
            }
            Message::SwitchGroup { group } => p.switch_group(group, t)?,
            Message::EnableGroup { group } => p.enable_group(group, t)?,
            Message::DisableGroup { group } => p.disable_group(group, t)?,
            Message::QueueIfNoPath { on } => p.set_queue_if_no_path(on, t)?,
            Message::CheckerReport {
                path,
                state,
                reason,
            } => p.checker_report_because(path, state, reason, t)?,
            Message::UpdatePath { path, info } => {
                let load = &find(&self.paths, path)
                    .ok_or(PolicyError::NoSuchPath(path))?
                    .load;
                load.set_relative_throughput(info.relative_throughput);
                p.update_path(path, info, t)?;
            }
            Message::RemovePath { path } => self.remove_path(path, now)?,
            Message::Resize { size } => self.resize(size, now)?,
            Message::SetConfig { config } => self.set_config(*config, now),
            Message::ReinstateOnRecovery { on } => self.reinstate_on_recovery = on,
            Message::Status => return Ok(Reply::Status(Box::new(self.status(now)))),
        }
        Ok(Reply::Done)
    }

    fn resize(&mut self, size: u64, now: Instant) -> Result<(), MessageError> {
        let block_size = self.shared.device.block_size;
        if !size.is_multiple_of(u64::from(block_size)) {
            return Err(MessageError::BadSize { size, block_size });
        }
        let from = self.shared.size.swap(size, Ordering::Relaxed);
        if from != size {
            self.shared.emit(Event {
                at: now.into_std(),
                kind: EventKind::Resized { from, to: size },
            });
        }
        Ok(())
    }

    fn set_config(&mut self, config: MapConfig, now: Instant) {
        let s = &self.shared;
        let needs_time = config.selector.needs_time();
        let shift = decay_shift(&config.selector);
        if s.decay_shift.swap(shift, Ordering::Relaxed) != shift {
            for p in &self.paths {
                p.load.set_decay_shift(shift);
            }
        }
        // Before the new routing is published (at this turn's sync): an I/O that finds
        // the new selector also reads the clock for it.
        s.timed.store(
            s.io_stats || s.hedge.is_some() || needs_time,
            Ordering::Relaxed,
        );
        s.selector_needs_time.store(needs_time, Ordering::Relaxed);
        s.transition_retry_ns
            .store(nanos(config.alua_transition_retry), Ordering::Relaxed);
        s.transition_timeout_ns
            .store(nanos(config.alua_transition_timeout), Ordering::Relaxed);
        s.busy_timeout_ns
            .store(nanos(config.busy_timeout), Ordering::Relaxed);
        let changed = self.policy.set_config(config, now.into_std());
        if changed.contains(&"selector") {
            // A fresh selector even if nothing else moved the generation.
            self.published = None;
        }
    }

    fn status(&self, now: Instant) -> MapStatus {
        MapStatus {
            name: self.shared.name.clone(),
            view: self.policy.view(),
            config: self.policy.config().clone(),
            size: self.shared.size.load(Ordering::Relaxed),
            in_flight: self.paths.iter().map(|p| p.inflight.waiting()).collect(),
            queued: self.waiters.len(),
            in_doubt: self.shared.fence.as_ref().map_or(0, |f| f.entries()),
            recent_events: self
                .shared
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
            at: now.into_std(),
        }
    }

    /// Restore the invariants after a turn (see the module docs for the order).
    pub fn sync(&mut self, now: Instant) {
        let events: Vec<Event> = std::iter::from_fn(|| self.policy.poll_event()).collect();
        for e in &events {
            match &e.kind {
                EventKind::PathReinstated { path, .. } => {
                    if let Some(p) = self.path(*path) {
                        p.incarnation.fetch_add(1, Ordering::AcqRel);
                        // A new connection: what hedges left on the old one is gone.
                        p.load.clear_stranded();
                    }
                }
                // An operator's fail leaves a working path's commands to finish there;
                // any other failure means they are stuck or lost.
                EventKind::PathFailed { path, reason }
                    if reason.kind != PathFailKind::Administrative =>
                {
                    self.orphan.push(*path);
                }
                _ => {}
            }
        }
        if self.published != Some(self.policy.generation()) {
            self.publish();
        }
        self.orphan.sort_unstable();
        self.orphan.dedup();
        for path in std::mem::take(&mut self.orphan) {
            let n = self.path(path).map_or(0, |p| {
                // Its stuck commands are written off with the connection.
                p.load.clear_stranded();
                p.inflight.orphan_all()
            });
            if n > 0 {
                tracing::info!(map = %self.shared.name, "{path}: re-issuing {n} commands that were in flight");
            }
        }
        for path in std::mem::take(&mut self.removed) {
            let n = path.inflight.close();
            if n > 0 {
                tracing::info!(map = %self.shared.name, "{} (removed): re-issuing {n} commands that were in flight", path.id);
            }
        }
        for e in events {
            self.shared.emit(e);
        }
        if !self.waiters.is_empty() {
            match self.policy.no_path_verdict() {
                NoPathVerdict::Retry => {
                    self.pruned_at = 0;
                    for w in self.waiters.drain(..) {
                        let _ = w.send(Verdict::Retry);
                    }
                }
                NoPathVerdict::Fail(reason) => {
                    let err = IoError::new(IoErrorKind::NoPath, reason.to_string());
                    self.pruned_at = 0;
                    for w in self.waiters.drain(..) {
                        let _ = w.send(Verdict::Fail(err.clone()));
                    }
                }
                // Callers that gave up waiting are forgotten.
                NoPathVerdict::Queue { .. } => {
                    if self.waiters.len() > 2 * self.pruned_at.max(16) {
                        self.waiters.retain(|w| !w.is_closed());
                        self.pruned_at = self.waiters.len();
                    }
                }
            }
        }
        let t = now.into_std();
        let total = self.policy.no_path_time(t);
        let s = &self.shared;
        if self.policy.has_usable_path() {
            s.no_path_total_ns
                .store(total.as_nanos() as u64, Ordering::Release);
            s.no_path_since_ns.store(u64::MAX, Ordering::Release);
        } else {
            s.no_path_total_ns
                .store(total.as_nanos() as u64, Ordering::Release);
            s.no_path_since_ns.store(s.ns(now), Ordering::Release);
        }
        for out in self.outbox.drain(..) {
            match out {
                Outgoing::Verdict(tx, v) => {
                    let _ = tx.send(v);
                }
                Outgoing::Reply(tx, r) => {
                    let _ = tx.send(r);
                }
                Outgoing::Added(tx, id) => {
                    let _ = tx.send(Ok(id));
                }
            }
        }
    }

    fn publish(&mut self) {
        let routing = Routing {
            paths: self
                .policy
                .routing()
                .into_iter()
                .filter_map(|p| self.path(p).cloned())
                .collect(),
            selector: Selector::new(self.policy.config().selector),
        };
        // Built outside the lock; the write lock is held for the swap only.
        let old = {
            let mut w = self
                .shared
                .routing
                .write()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *w, routing)
        };
        drop(old);
        self.published = Some(self.policy.generation());
    }

    /// The owner is going away: nobody will release queued requests any more.
    fn stop(&mut self) {
        let err = IoError::new(
            IoErrorKind::NoPath,
            format!("map {} is stopped", self.shared.name),
        );
        for w in self.waiters.drain(..) {
            let _ = w.send(Verdict::Fail(err.clone()));
        }
        tracing::info!(map = %self.shared.name, "owner task stopped");
    }
}

/// Path `id` in a table kept in id order.
fn find(paths: &[Arc<PathShared>], id: PathId) -> Option<&Arc<PathShared>> {
    paths
        .binary_search_by_key(&id, |p| p.id)
        .ok()
        .map(|i| &paths[i])
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
