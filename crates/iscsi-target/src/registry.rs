//! The table of logged-in sessions: TSIH allocation, session reinstatement, and what the
//! control socket lists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use iscsi_pdu::{Isid, Tsih};
use tokio::sync::watch;

use crate::ctl::SessionInfo;

/// Why a connection is told to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// A new login with the same initiator name and ISID reinstates the session.
    Reinstated,
    Shutdown,
}

/// Live counters a connection publishes.
#[derive(Default, Debug)]
pub struct ConnStats {
    pub outstanding: AtomicUsize,
}

struct Entry {
    tsih: Tsih,
    initiator: String,
    isid: Isid,
    target: Option<String>,
    tpgt: u16,
    portal: SocketAddr,
    peer: SocketAddr,
    since: Instant,
    header_digest: bool,
    data_digest: bool,
    kill: watch::Sender<Option<Kill>>,
    done: watch::Receiver<bool>,
    stats: Arc<ConnStats>,
}

/// What a connection gets when its session is admitted.
pub struct Admitted {
    pub id: u64,
    pub tsih: Tsih,
    pub kill: watch::Receiver<Option<Kill>>,
    /// Set to true by the connection once it has finished, in-flight work included.
    pub done: watch::Sender<bool>,
    /// Sessions this one replaces: wait for each to finish before serving commands, so no
    /// write of the old session can land after one of the new.
    pub replaced: Vec<watch::Receiver<bool>>,
    pub stats: Arc<ConnStats>,
}

/// Who is logging in, for [`Sessions::admit`].
pub struct Candidate<'a> {
    pub initiator: &'a str,
    pub isid: Isid,
    pub target: Option<&'a str>,
    /// The portal group logged in through: with the ISID, what identifies the session.
    pub tpgt: u16,
    pub portal: SocketAddr,
    pub peer: SocketAddr,
    pub header_digest: bool,
    pub data_digest: bool,
}

#[derive(Default)]
pub struct Sessions {
    next_id: u64,
    next_tsih: u16,
    entries: HashMap<u64, Entry>,
}

impl Sessions {
    /// Admit a new session (TSIH 0 in the Login Request). An existing session of the same
    /// initiator name, ISID, target and target portal group is reinstated: told to close, and
    /// handed to the caller to wait for. The same ISID through another portal group is
    /// another session (RFC 7143 §4.4.3, the ISID rule): one initiator port reaching two
    /// target ports is two paths, which must not close each other.
    pub fn admit(&mut self, c: Candidate<'_>) -> Admitted {
        let mut replaced = Vec::new();
        let same: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.isid == c.isid
                    && e.tpgt == c.tpgt
                    && e.initiator.eq_ignore_ascii_case(c.initiator)
                    && match (&e.target, c.target) {
                        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                        (None, None) => true,
                        _ => false,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in same {
            if let Some(e) = self.entries.remove(&id) {
                tracing::info!(
                    initiator = %e.initiator, isid = %e.isid, tsih = e.tsih.0,
                    "session reinstatement: closing the old session"
                );
                let _ = e.kill.send(Some(Kill::Reinstated));
                replaced.push(e.done);
            }
        }
        let tsih = self.alloc_tsih();
        self.next_id += 1;
        let id = self.next_id;
        let (kill_tx, kill_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let stats = Arc::new(ConnStats::default());
        self.entries.insert(
            id,
            Entry {
                tsih,
                initiator: c.initiator.to_string(),
                isid: c.isid,
                target: c.target.map(str::to_string),
                tpgt: c.tpgt,
                portal: c.portal,
                peer: c.peer,
                since: Instant::now(),
                header_digest: c.header_digest,
                data_digest: c.data_digest,
                kill: kill_tx,
                done: done_rx,
                stats: stats.clone(),
            },
        );
        Admitted {
            id,
            tsih,
            kill: kill_rx,
            done: done_tx,
            replaced,
            stats,
        }
    }

    /// Whether a session with this TSIH exists (for a connection asking to join it).
    pub fn has_tsih(&self, tsih: Tsih) -> bool {
        self.entries.values().any(|e| e.tsih == tsih)
    }

    pub fn set_digests(&mut self, id: u64, header: bool, data: bool) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.header_digest = header;
            e.data_digest = data;
        }
    }

    pub fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(e) = self.entries.get(&id) {
            let _ = e.kill.send(Some(Kill::Shutdown));
        }
    }

    pub fn all_ids(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }

    pub fn connections_per_portal(&self) -> HashMap<SocketAddr, usize> {
        let mut m = HashMap::new();
        for e in self.entries.values() {
            *m.entry(e.portal).or_insert(0) += 1;
        }
        m
    }

    pub fn infos(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .entries
            .values()
            .map(|e| SessionInfo {
                initiator: e.initiator.clone(),
                isid: e.isid.to_string(),
                tsih: e.tsih.0,
                target: e.target.clone().unwrap_or_default(),
                discovery: e.target.is_none(),
                portal: e.portal,
                peer: e.peer,
                header_digest: e.header_digest,
                data_digest: e.data_digest,
                outstanding_tasks: e.stats.outstanding.load(Ordering::Relaxed),
                connected_for_ms: e.since.elapsed().as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| (&a.target, &a.initiator, a.tsih).cmp(&(&b.target, &b.initiator, b.tsih)));
        v
    }

    fn alloc_tsih(&mut self) -> Tsih {
        loop {
            self.next_tsih = self.next_tsih.wrapping_add(1);
            let t = Tsih(self.next_tsih);
            // TSIH 0 means "new session" on the wire: never hand it out.
            if t.0 != 0 && !self.has_tsih(t) {
                return t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(isid: u8) -> Candidate<'static> {
        Candidate {
            initiator: "iqn.2026-01.test:init",
            isid: Isid([0x40, 0, 0, 0, 0, isid]),
            target: Some("iqn.2026-01.test:t"),
            tpgt: 1,
            portal: "127.0.0.1:3260".parse().unwrap(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            header_digest: false,
            data_digest: false,
        }
    }

    #[test]
    fn reinstatement_kills_the_old_session() {
        let mut s = Sessions::default();
        let a = s.admit(cand(1));
        let b = s.admit(cand(2));
        assert_ne!(a.tsih, b.tsih);
        assert!(a.replaced.is_empty());
        let c = s.admit(cand(1));
        assert_eq!(c.replaced.len(), 1);
        assert_eq!(*a.kill.borrow(), Some(Kill::Reinstated));
        assert_eq!(*b.kill.borrow(), None);
        assert_eq!(s.infos().len(), 2);
    }

    #[test]
    fn same_isid_in_another_portal_group_is_another_session() {
        let mut s = Sessions::default();
        let a = s.admit(cand(1));
        let b = s.admit(Candidate { tpgt: 2, ..cand(1) });
        assert!(b.replaced.is_empty());
        assert_eq!(*a.kill.borrow(), None);
        assert_eq!(s.infos().len(), 2);
    }
}
