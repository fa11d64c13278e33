//! The stale-write fence (opt-in; see `docs/engine.md`, "The stale-write hazard").
//!
//! A write whose attempt left a path without a known outcome — handed back when the path
//! failed, or failed with a transport error and no SCSI status — may still reach the LU
//! later through the old connection, after its retry has completed and after newer writes
//! to the same blocks. Its blocks are *in doubt* until the old connection can no longer
//! deliver anything: the path's transport logged in again (an iSCSI session reinstatement
//! ends the old session's tasks before the new login completes), or the configured hold
//! has passed. While blocks are in doubt, a new write that overlaps them waits.
//!
//! Retries of the in-doubt write itself are not held (they carry the same data), nor are
//! reads (the late write would bring the data the retry already wrote).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use mpath_policy::PathId;
use tokio::sync::Notify;
use tokio::time::Instant;

struct InDoubt {
    path: PathId,
    lba: u64,
    blocks: u64,
    until: Instant,
}

pub(crate) struct Fence {
    hold: Duration,
    /// Entries in the table: the fast path's one check (a load) when nothing is in doubt.
    active: AtomicUsize,
    table: Mutex<Vec<InDoubt>>,
    cleared: Notify,
}

impl Fence {
    pub fn new(hold: Duration) -> Fence {
        Fence {
            hold,
            active: AtomicUsize::new(0),
            table: Mutex::new(Vec::new()),
            cleared: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<InDoubt>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, t: &[InDoubt]) {
        self.active.store(t.len(), Ordering::Release);
    }

    /// Blocks written through `path` whose outcome is unknown; call before the write is
    /// issued again.
    pub fn in_doubt(&self, path: PathId, (lba, blocks): (u64, u64), now: Instant) {
        let mut t = self.lock();
        t.push(InDoubt {
            path,
            lba,
            blocks,
            until: now + self.hold,
        });
        self.set(&t);
    }

    /// `path` logged in again: nothing from its old connection can land any more.
    pub fn path_reconnected(&self, path: PathId) {
        let mut t = self.lock();
        let before = t.len();
        t.retain(|d| d.path != path);
        self.set(&t);
        if t.len() != before {
            drop(t);
            self.cleared.notify_waiters();
        }
    }

    /// Blocks in doubt now.
    pub fn entries(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Wait until no block of `range` is in doubt; whether it had to wait.
    pub async fn wait(&self, (lba, blocks): (u64, u64)) -> bool {
        if self.active.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut waited = false;
        loop {
            let notified = self.cleared.notified();
            tokio::pin!(notified);
            // Registered before the table is read, so a clearing in between is not missed.
            notified.as_mut().enable();
            let until = {
                let now = Instant::now();
                let mut t = self.lock();
                t.retain(|d| d.until > now);
                self.set(&t);
                t.iter()
                    .filter(|d| d.lba < lba + blocks && lba < d.lba + d.blocks)
                    .map(|d| d.until)
                    .max()
            };
            let Some(until) = until else {
                return waited;
            };
            waited = true;
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }
}
