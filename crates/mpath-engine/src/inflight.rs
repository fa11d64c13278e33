//! The in-flight table of one path: the wakers of the commands waiting on it, so that the
//! owner task can hand every one of them back at once when the path fails.
//!
//! A command that completes the first time it is polled never enters the table (a target
//! fast path, or the null path of the benchmark). One that has to wait registers its waker
//! under the table's mutex, which is held for a slot write — and by the owner, when the
//! path fails, for swapping the whole slot vector out: never for long, never across I/O.
//!
//! Orphaning is by epoch: a failure bumps the path's epoch, swaps the slots out and wakes
//! every registered waiter. A waiter whose epoch is no longer current gives up its command
//! (drops the path's future, so a late completion — the `Path` error the failed connection
//! delivers afterwards — is never observed) and is issued again. A command issued under an
//! old epoch that registers after the swap sees the new epoch and is orphaned on the spot.
//!
//! A path removed from the map *closes* its table: every waiter is orphaned as for a
//! failure, and the epoch becomes [`CLOSED`] for good, so that a command that picked the
//! path from a routing read just before the removal finds it closed and goes elsewhere
//! instead of waiting on a path nobody watches any more.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use block::{IoError, SubmitFuture};
use bytes::Bytes;

/// The epoch of a closed table (its path was removed): no epoch before it reaches it.
pub(crate) const CLOSED: u64 = u64::MAX;

#[derive(Default)]
struct Slots {
    epoch: u64,
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

#[derive(Default)]
pub(crate) struct InflightTable {
    /// Mirror of `Slots::epoch`, read without the lock when a command is issued.
    epoch: AtomicU64,
    slots: Mutex<Slots>,
}

impl InflightTable {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Commands waiting on the path now.
    pub fn waiting(&self) -> usize {
        let s = self.lock();
        s.wakers.len() - s.free.len()
    }

    /// Hand back every waiting command: they will be issued again by their callers.
    /// Returns how many were waiting.
    pub fn orphan_all(&self) -> usize {
        self.end_epoch(false)
    }

    /// The path left the map: hand back every waiting command and refuse new ones for
    /// good. Returns how many were waiting.
    pub fn close(&self) -> usize {
        self.end_epoch(true)
    }

    pub fn is_closed(&self) -> bool {
        self.epoch() == CLOSED
    }

    fn end_epoch(&self, close: bool) -> usize {
        let wakers = {
            let mut s = self.lock();
            if s.epoch == CLOSED {
                return 0;
            }
            s.epoch = if close { CLOSED } else { s.epoch + 1 };
            self.epoch.store(s.epoch, Ordering::Release);
            s.free.clear();
            std::mem::take(&mut s.wakers)
        };
        let mut n = 0;
        for w in wakers.into_iter().flatten() {
            w.wake();
            n += 1;
        }
        n
    }

    /// Register (or refresh) a waiter; `None` when its epoch is gone.
    fn register(&self, key: Option<usize>, epoch: u64, waker: &Waker) -> Option<usize> {
        let mut s = self.lock();
        if s.epoch != epoch {
            return None;
        }
        match key {
            Some(k) => {
                if let Some(slot) = s.wakers.get_mut(k) {
                    match slot {
                        Some(w) if w.will_wake(waker) => {}
                        _ => *slot = Some(waker.clone()),
                    }
                }
                Some(k)
            }
            None => {
                let w = Some(waker.clone());
                Some(match s.free.pop() {
                    Some(k) => {
                        s.wakers[k] = w;
                        k
                    }
                    None => {
                        s.wakers.push(w);
                        s.wakers.len() - 1
                    }
                })
            }
        }
    }

    fn remove(&self, key: usize, epoch: u64) {
        let mut s = self.lock();
        if s.epoch == epoch {
            if let Some(slot) = s.wakers.get_mut(key) {
                *slot = None;
                s.free.push(key);
            }
        }
    }
}

/// How one attempt on a path ended.
pub(crate) enum Attempt {
    Done(Result<Bytes, IoError>),
    /// The path failed while the command waited: issue it again.
    Orphaned,
}

impl Attempt {
    /// It succeeded.
    #[inline]
    pub(crate) fn is_ok(&self) -> bool {
        matches!(self, Attempt::Done(Ok(_)))
    }
}

/// A command in flight on a path: its future, registered in the path's table while it
/// waits.
pub(crate) struct Inflight<'a> {
    table: &'a InflightTable,
    fut: SubmitFuture,
    epoch: u64,
    key: Option<usize>,
}

impl<'a> Inflight<'a> {
    /// `epoch` is the table's epoch read before the command was submitted.
    pub fn new(table: &'a InflightTable, fut: SubmitFuture, epoch: u64) -> Inflight<'a> {
        Inflight {
            table,
            fut,
            epoch,
            key: None,
        }
    }
}

impl Future for Inflight<'_> {
    type Output = Attempt;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Attempt> {
        let this = self.get_mut();
        if let Poll::Ready(r) = this.fut.as_mut().poll(cx) {
            if let Some(k) = this.key.take() {
                this.table.remove(k, this.epoch);
            }
            return Poll::Ready(Attempt::Done(r));
        }
        match this.table.register(this.key, this.epoch, cx.waker()) {
            Some(k) => {
                this.key = Some(k);
                Poll::Pending
            }
            None => {
                this.key = None;
                Poll::Ready(Attempt::Orphaned)
            }
        }
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.table.remove(k, self.epoch);
        }
    }
}
