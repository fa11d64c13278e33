//! Fault injection per portal: what the failover tests switch on and off.
//!
//! | fault | effect on connections through the portal |
//! |---|---|
//! | `blackhole` | the TCP connection stays open but nothing is read or answered any more, and the target's keepalive waits too — the silent path failure |
//! | `reset` | every connection is closed at once with a TCP RST (one-shot) |
//! | `delay N ms` | every PDU the target sends leaves N ms late (pipelining is kept) |
//! | `drop-after N` | after N more PDUs from the initiator, the connection goes silent as in `blackhole` |
//! | `clear` | back to normal; silenced connections resume — except those the initiator reset meanwhile: as in a real network, what it sent into the blackhole never arrives, so they close without executing it |
//!
//! Faults apply to connections already open and to new ones.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A persistent fault mode of a portal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "fault")]
pub enum Fault {
    #[default]
    None,
    Blackhole,
    Delay {
        ms: u64,
    },
    DropAfter {
        pdus: u64,
    },
    /// Answer every SCSI command through the portal with status BUSY, executing nothing.
    Busy,
    /// Answer every SCSI command through the portal with status TASK SET FULL.
    TaskSetFull,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => write!(f, "none"),
            Fault::Blackhole => write!(f, "blackhole"),
            Fault::Delay { ms } => write!(f, "delay {ms} ms"),
            Fault::DropAfter { pdus } => write!(f, "drop after {pdus} PDUs"),
            Fault::Busy => write!(f, "busy"),
            Fault::TaskSetFull => write!(f, "task set full"),
        }
    }
}

/// What connections of a portal watch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultState {
    pub fault: Fault,
    /// Bumped by each `reset`: connections opened before the bump close with RST.
    pub reset_generation: u64,
    /// Bumped whenever `fault` is set, so `drop-after` counts from the moment it is set.
    pub generation: u64,
}

impl FaultState {
    pub fn delay(&self) -> Option<Duration> {
        match self.fault {
            Fault::Delay { ms } if ms > 0 => Some(Duration::from_millis(ms)),
            _ => None,
        }
    }
}

/// The fault switch of one portal.
#[derive(Debug)]
pub struct PortalFaults {
    tx: watch::Sender<FaultState>,
}

impl Default for PortalFaults {
    fn default() -> Self {
        PortalFaults {
            tx: watch::Sender::new(FaultState::default()),
        }
    }
}

impl PortalFaults {
    pub fn set(&self, fault: Fault) {
        self.tx.send_modify(|s| {
            s.fault = fault;
            s.generation += 1;
        });
    }

    pub fn reset_connections(&self) {
        self.tx.send_modify(|s| s.reset_generation += 1);
    }

    pub fn current(&self) -> FaultState {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<FaultState> {
        self.tx.subscribe()
    }
}

/// Per-connection view of its portal's faults.
pub struct ConnFaults {
    rx: watch::Receiver<FaultState>,
    born_reset_generation: u64,
    counted_generation: u64,
    pdus_since: u64,
}

/// What a connection should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Normal,
    /// Stop reading and answering; keep the socket open.
    Silent,
    /// Close with RST now.
    Reset,
}

impl ConnFaults {
    pub fn new(p: &PortalFaults) -> ConnFaults {
        let rx = p.subscribe();
        let s = *rx.borrow();
        ConnFaults {
            rx,
            born_reset_generation: s.reset_generation,
            counted_generation: s.generation,
            pdus_since: 0,
        }
    }

    /// Count one received PDU.
    pub fn on_pdu(&mut self) {
        self.pdus_since = self.pdus_since.saturating_add(1);
    }

    /// The status every SCSI command gets instead of being executed, under a `busy` or
    /// `task-set-full` fault.
    pub fn refused_status(&self) -> Option<u8> {
        match self.rx.borrow().fault {
            Fault::Busy => Some(0x08),
            Fault::TaskSetFull => Some(0x28),
            _ => None,
        }
    }

    pub fn verdict(&mut self) -> Verdict {
        let s = *self.rx.borrow();
        if s.reset_generation != self.born_reset_generation {
            return Verdict::Reset;
        }
        if s.generation != self.counted_generation {
            self.counted_generation = s.generation;
            self.pdus_since = 0;
        }
        match s.fault {
            Fault::Blackhole => Verdict::Silent,
            Fault::DropAfter { pdus } if self.pdus_since >= pdus => Verdict::Silent,
            _ => Verdict::Normal,
        }
    }

    pub fn delay(&self) -> Option<Duration> {
        self.rx.borrow().delay()
    }

    /// Wait for the portal's faults to change.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The portal is gone (server shutting down): never wake again.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_after_counts_from_when_it_is_set() {
        let p = PortalFaults::default();
        let mut c = ConnFaults::new(&p);
        for _ in 0..10 {
            c.on_pdu();
        }
        assert_eq!(c.verdict(), Verdict::Normal);
        p.set(Fault::DropAfter { pdus: 2 });
        assert_eq!(c.verdict(), Verdict::Normal);
        c.on_pdu();
        assert_eq!(c.verdict(), Verdict::Normal);
        c.on_pdu();
        assert_eq!(c.verdict(), Verdict::Silent);
        p.set(Fault::None);
        assert_eq!(c.verdict(), Verdict::Normal);
    }

    #[test]
    fn reset_hits_only_existing_connections() {
        let p = PortalFaults::default();
        let mut old = ConnFaults::new(&p);
        p.reset_connections();
        let mut new = ConnFaults::new(&p);
        assert_eq!(old.verdict(), Verdict::Reset);
        assert_eq!(new.verdict(), Verdict::Normal);
    }

    #[test]
    fn fault_json() {
        let j = serde_json::to_string(&Fault::Delay { ms: 50 }).unwrap();
        assert_eq!(j, r#"{"fault":"delay","ms":50}"#);
        let f: Fault = serde_json::from_str(r#"{"fault":"blackhole"}"#).unwrap();
        assert_eq!(f, Fault::Blackhole);
    }
}
