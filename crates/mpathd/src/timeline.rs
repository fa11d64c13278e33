//! The event timeline (`mpath show events`): what happened to portals, sessions, paths
//! and maps, in time order, bounded; with cumulative counts of the kinds metrics export.
//!
//! Event kinds are a typed enum serialized to their kebab-case names (`path-failed`), the
//! names scripts read in `show events --json` and that `docs/daemon.md` lists.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// How many events the timeline keeps.
pub(crate) const TIMELINE_LEN: usize = 10_000;

macro_rules! kinds {
    ($( $(#[$doc:meta])* $v:ident = $s:literal, )*) => {
        /// What a timeline event is about. Serialized (and displayed) as its kebab-case
        /// name: `path-failed`, `group-switched`, `session-recovered`...
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
                 serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum EventKind {
            $( $(#[$doc])* $v, )*
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$v,)*];

            /// The kind's name, as serialized.
            pub fn as_str(self) -> &'static str {
                match self { $(EventKind::$v => $s,)* }
            }
        }
    };
}

kinds! {
    /// The daemon started (its configuration and control socket in the detail).
    DaemonStarted = "daemon-started",
    /// A reconfigure was applied (what changed in the detail).
    Reconfigured = "reconfigured",
    /// A reconfigure changed a running map's policy.
    PolicyChanged = "policy-changed",
    /// A map's engine applied a policy change.
    PolicyApplied = "policy-applied",
    /// An operator's command (fail/reinstate path, switchgroup, login, logout...).
    Operator = "operator",
    /// Discovery of a portal succeeded.
    PortalDiscovered = "portal-discovered",
    /// Discovery of a portal failed (retried).
    PortalUnreachable = "portal-unreachable",
    /// A session logged in.
    SessionUp = "session-up",
    /// A session's connection failed.
    SessionFailed = "session-failed",
    /// A session is logging in again.
    SessionRecovering = "session-recovering",
    /// A session logged in again.
    SessionRecovered = "session-recovered",
    /// A session stopped trying to log in again.
    SessionGaveUp = "session-gave-up",
    /// The target reported a LU change (capacity, inventory...).
    LuChanged = "lu-changed",
    /// A LUN scan failed.
    ScanFailed = "scan-failed",
    /// A path joined a map.
    PathAdded = "path-added",
    /// A path left its map.
    PathRemoved = "path-removed",
    /// A path was kept out of maps (blacklist, device type...).
    PathExcluded = "path-excluded",
    /// A path was failed (its reason in the detail).
    PathFailed = "path-failed",
    /// A failed path's reason became more precise.
    PathFailReason = "path-fail-reason",
    /// A path was reinstated.
    PathReinstated = "path-reinstated",
    /// A flapping path's reinstatement is held back.
    PathReinstateDelayed = "path-reinstate-delayed",
    /// A path's checker state changed.
    CheckerChanged = "checker-changed",
    /// A path's session gave up: the path stays failed.
    PathGaveUp = "path-gave-up",
    /// A map was created.
    MapCreated = "map-created",
    /// A map was removed.
    MapRemoved = "map-removed",
    /// A map was renamed (its alias changed).
    MapRenamed = "map-renamed",
    /// A map's capacity changed.
    CapacityChanged = "capacity-changed",
    /// A map's engine took a new size.
    MapResized = "map-resized",
    /// A failback to a better group is scheduled.
    FailbackScheduled = "failback-scheduled",
    /// A path group was enabled.
    GroupEnabled = "group-enabled",
    /// A path group was disabled.
    GroupDisabled = "group-disabled",
    /// The active path group changed.
    GroupSwitched = "group-switched",
    /// A map's paths were grouped again.
    Regrouped = "regrouped",
    /// `queue_if_no_path` was switched.
    QueueIfNoPath = "queue-if-no-path",
    /// A map has no usable path and queues I/O.
    QueueingStarted = "queueing-started",
    /// A map stopped queueing (a path returned, or the queueing time ran out).
    QueueingEnded = "queueing-ended",
    /// I/O was issued again on another path.
    IoRequeued = "io-requeued",
    /// I/O failed to the client.
    IoFailed = "io-failed",
    /// A map's events were lost (its forwarding task fell behind).
    EventsLost = "events-lost",
    /// A `show events --follow` reader fell behind and skipped events.
    EventsSkipped = "events-skipped",
    /// A reservation key was registered on a path.
    PrRegistered = "pr-registered",
    /// Registering a path with the map's key failed.
    PrRegisterFailed = "pr-register-failed",
    /// A reservation was taken through the map.
    PrReserved = "pr-reserved",
    /// A reservation was released.
    PrReleased = "pr-released",
    /// Every registration and the reservation were cleared.
    PrCleared = "pr-cleared",
    /// Another key was preempted.
    PrPreempted = "pr-preempted",
    /// A map's ublk device was created or recovered.
    UblkAttached = "ublk-attached",
    /// A map's ublk device could not be created.
    UblkFailed = "ublk-failed",
    /// A map's ublk device links could not be made.
    UblkNamesFailed = "ublk-names-failed",
    /// A map's ublk device was removed with it.
    UblkRemoved = "ublk-removed",
    /// A map's kernel NBD device was attached.
    NbdDeviceAttached = "nbd-device-attached",
    /// A map's kernel NBD device could not be attached.
    NbdDeviceFailed = "nbd-device-failed",
    /// A map's kernel NBD device links could not be made.
    NbdDeviceNamesFailed = "nbd-device-names-failed",
    /// A map's kernel NBD device was disconnected with it.
    NbdDeviceRemoved = "nbd-device-removed",
}

impl EventKind {
    /// Kinds counted cumulatively for metrics (the timeline itself is bounded).
    pub fn counted(self) -> bool {
        matches!(self, EventKind::PathFailed | EventKind::GroupSwitched)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the event timeline (`mpath show events`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TimelineEvent {
    /// Milliseconds since the daemon started.
    pub t_ms: u64,
    /// Wall-clock time, RFC 3339.
    pub time: String,
    /// The map, if the event belongs to one.
    pub map: Option<String>,
    /// The path, if the event concerns one (its name).
    pub path: Option<String>,
    pub kind: EventKind,
    pub detail: String,
}

/// Cumulative counts by (map, path or "", kind).
pub(crate) type Counts = BTreeMap<(String, String, EventKind), u64>;

#[derive(Default)]
struct Inner {
    events: VecDeque<TimelineEvent>,
    counts: Counts,
}

/// The bounded timeline and its counts, behind one lock.
pub(crate) struct Timeline {
    epoch: Instant,
    started: SystemTime,
    inner: Mutex<Inner>,
}

impl Timeline {
    pub fn new(epoch: Instant, started: SystemTime) -> Timeline {
        Timeline {
            epoch,
            started,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An event stamped `at` (not yet in the timeline).
    pub fn event(
        &self,
        at: Instant,
        map: Option<&str>,
        path: Option<&str>,
        kind: EventKind,
        detail: String,
    ) -> TimelineEvent {
        let since = at.saturating_duration_since(self.epoch);
        TimelineEvent {
            t_ms: since.as_millis() as u64,
            time: rfc3339(self.started + since),
            map: map.map(str::to_string),
            path: path.map(str::to_string),
            kind,
            detail,
        }
    }

    /// Put an event in the timeline (in time order: a map's events arrive through their
    /// own task, stamped when they happened, possibly after later daemon events) and count
    /// it.
    pub fn push(&self, ev: TimelineEvent) {
        let mut t = self.inner();
        if ev.kind.counted() {
            let m = ev.map.clone().unwrap_or_default();
            if let Some(p) = &ev.path {
                *t.counts.entry((m.clone(), p.clone(), ev.kind)).or_insert(0) += 1;
            }
            *t.counts.entry((m, String::new(), ev.kind)).or_insert(0) += 1;
        }
        if t.events.len() == TIMELINE_LEN {
            t.events.pop_front();
        }
        let at = t
            .events
            .iter()
            .rposition(|e| e.t_ms <= ev.t_ms)
            .map_or(0, |i| i + 1);
        t.events.insert(at, ev);
    }

    /// The last `last` events (all of them with `None`).
    pub fn last(&self, last: Option<usize>) -> Vec<TimelineEvent> {
        let t = self.inner();
        let n = last.unwrap_or(t.events.len()).min(t.events.len());
        t.events.iter().skip(t.events.len() - n).cloned().collect()
    }

    /// The events matching `f`, oldest first.
    pub fn filtered(&self, f: impl Fn(&TimelineEvent) -> bool) -> Vec<TimelineEvent> {
        self.inner()
            .events
            .iter()
            .filter(|e| f(e))
            .cloned()
            .collect()
    }

    pub fn counts(&self) -> Counts {
        self.inner().counts.clone()
    }
}

/// `2026-11-25T11:52:28.123Z`, without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialize_to_their_names() {
        for k in EventKind::ALL {
            let s = serde_json::to_value(k).unwrap();
            assert_eq!(s, serde_json::Value::String(k.as_str().into()));
            let back: EventKind = serde_json::from_value(s).unwrap();
            assert_eq!(back, *k);
        }
    }

    #[test]
    fn late_events_are_placed_in_time_order_and_counted() {
        let epoch = Instant::now();
        let t = Timeline::new(epoch, SystemTime::UNIX_EPOCH);
        let at = |ms| epoch + std::time::Duration::from_millis(ms);
        t.push(t.event(at(10), None, None, EventKind::DaemonStarted, String::new()));
        t.push(t.event(
            at(30),
            Some("m"),
            None,
            EventKind::GroupSwitched,
            String::new(),
        ));
        t.push(t.event(
            at(20),
            Some("m"),
            Some("p"),
            EventKind::PathFailed,
            String::new(),
        ));
        let ms: Vec<u64> = t.last(None).iter().map(|e| e.t_ms).collect();
        assert_eq!(ms, [10, 20, 30]);
        assert_eq!(t.last(Some(1))[0].kind, EventKind::GroupSwitched);
        let c = t.counts();
        assert_eq!(c[&("m".into(), "p".into(), EventKind::PathFailed)], 1);
        assert_eq!(c[&("m".into(), String::new(), EventKind::PathFailed)], 1);
        assert_eq!(c[&("m".into(), String::new(), EventKind::GroupSwitched)], 1);
        assert!(!c.contains_key(&(String::new(), String::new(), EventKind::DaemonStarted)));
    }
}
