//! The daemon's state and its tasks: assembly (portals → sessions → LUN paths → maps),
//! the checker loop, the event timeline.
//!
//! Locking rule: the state mutex is never held across path I/O or an await on a map's
//! owner task. Tasks take what they need (path handles are cheap clones), release the lock,
//! do the I/O, and take the lock again to record results.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use block::{DeviceInfo, LuChange, PathEvent};
use export::Exports;
use iscsi_initiator::probe::{self, LuInfo};
use iscsi_initiator::{
    discover, DiscoveryConfig, IscsiPath, RetryPolicy, Session, SessionConfig, SessionState,
};
use mpath_engine::{EngineConfig, IoLimits, MultipathDevice, PathSpec};
use mpath_policy::{CheckerState, EventKind, MapConfig, PathId, PathInfo};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::bindings::Bindings;
use crate::config::{ChapSecret, DaemonConfig, PortalConfig, PrioritizerKind};
use crate::timeline::{EventKind as EvKind, TimelineEvent};

/// Why a path behind an ALUA standby or unavailable port is not in a map yet.
pub(crate) const WAITING: &str =
    "ALUA port not serving the LU: its capacity is unknown until a path to it is active; joins its map then";

/// The key paths are grouped by: the WWID, else the serial.
pub(crate) fn lu_wwid(lu: &LuInfo) -> Option<String> {
    lu.wwid
        .clone()
        .or_else(|| lu.serial.as_ref().map(|s| format!("serial:{s}")))
}

/// Rescans of one session asked for by UNIT ATTENTIONs (capacity, LUN inventory): one
/// runs at a time, and a request that comes while one runs makes it run once more, so
/// that the last change is always read.
#[derive(Default)]
struct Rescan {
    requested: AtomicBool,
    running: AtomicBool,
}

impl Rescan {
    fn request(
        self: &Arc<Self>,
        daemon: &Arc<Shared>,
        rt: &tokio::runtime::Handle,
        addr: SocketAddr,
        target: &str,
    ) {
        self.requested.store(true, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (me, daemon, target) = (self.clone(), daemon.clone(), target.to_string());
        rt.spawn(async move {
            // A scan that panics must not stop this session's rescans for good.
            struct Unwind(Arc<Rescan>);
            impl Drop for Unwind {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        self.0.running.store(false, Ordering::SeqCst);
                    }
                }
            }
            let _unwind = Unwind(me.clone());
            loop {
                while me.requested.swap(false, Ordering::SeqCst) {
                    let key = (addr, target.clone());
                    let session = daemon.state().sessions.get(&key).cloned();
                    let Some(session) = session else { break };
                    daemon.scan_session(addr, &target, &session, false).await;
                }
                me.running.store(false, Ordering::SeqCst);
                // A request between the last swap and the store above finds `running`
                // still set and leaves it to this task: take it.
                if !me.requested.load(Ordering::SeqCst) || me.running.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        });
    }
}

/// A path: one LUN through one session.
pub(crate) struct PathRec {
    pub name: String,
    pub portal: SocketAddr,
    pub target: String,
    pub lun: u16,
    pub path: IscsiPath,
    pub lu: LuInfo,
    pub map: Option<(String, PathId)>,
    pub checker: CheckerState,
    pub last_check: Option<Instant>,
    pub next_check: Instant,
    /// Smoothed checker I/O latency, for the path_latency prioritizer.
    pub latency: Option<Duration>,
    pub priority: u32,
    /// Why the path is not in a map (blacklist, other device type...).
    pub excluded: Option<String>,
}

/// A multipath device with the facts shown about it.
pub(crate) struct MapRec {
    pub name: String,
    pub wwid: String,
    pub device: Arc<MultipathDevice>,
    pub vendor: String,
    pub product: String,
    pub size: u64,
    pub block_size: u32,
    pub policy: MapConfig,
    pub paths: Vec<(PathId, String)>,
    /// Policy changes from a reconfigure that a running map cannot take.
    pub pending: Option<String>,
    /// The persistent-reservation key registered through the map (`mpath persist`):
    /// paths that join or come back are registered with it before they carry I/O.
    pub pr_key: Option<u64>,
    /// The map's name as its event task sees it (a rename changes it there too).
    pub name_cell: Arc<std::sync::RwLock<String>>,
}

pub(crate) struct State {
    pub sessions: BTreeMap<(SocketAddr, String), Session>,
    pub paths: BTreeMap<String, PathRec>,
    pub maps: BTreeMap<String, MapRec>,
    pub bindings: Bindings,
    /// Reservation keys by WWID, kept beside the bindings file.
    pub prkeys: crate::prkeys::PrKeys,
    /// Portals whose discovery has not succeeded yet, with the last error.
    pub portal_errors: BTreeMap<SocketAddr, String>,
}

pub(crate) struct Shared {
    pub cfg: Mutex<DaemonConfig>,
    pub state: Mutex<State>,
    pub exports: Exports<MultipathDevice>,
    pub timeline: crate::timeline::Timeline,
    pub events: broadcast::Sender<TimelineEvent>,
    pub epoch: Instant,
    pub stop: tokio::sync::watch::Sender<bool>,
    /// The file `reconfigure` re-reads.
    pub config_path: Option<std::path::PathBuf>,
    /// Applied over the file at each `reconfigure` (the command line's settings).
    pub overlay: Option<crate::ConfigOverlay>,
    /// Serialises "find the path's map or create it" (two sessions probed at once must
    /// not both create a map for one WWID). Held across map start-up and `add_path`, which
    /// talk to the map's owner task only — never across path I/O.
    pub membership: tokio::sync::Mutex<()>,
    /// Serialises reconfigures.
    pub reconfiguring: tokio::sync::Mutex<()>,
    /// The maps' ublk block devices (`[exports] ublk`).
    pub ublk: crate::ublk::UblkDevices,
    /// The maps' kernel NBD devices (`[exports] nbd_device`).
    pub nbd_devices: crate::nbd_device::NbdDevices,
    /// Maps with no usable path, whose sessions' re-logins are hurried (`hurry_loop`).
    pub pathless: Pathless,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cfg(&self) -> DaemonConfig {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn record(&self, map: Option<&str>, path: Option<&str>, kind: EvKind, detail: String) {
        self.record_at(Instant::now(), map, path, kind, detail);
    }

    /// Put an event that happened `at` in the timeline and send it to followers.
    pub fn record_at(
        &self,
        at: Instant,
        map: Option<&str>,
        path: Option<&str>,
        kind: EvKind,
        detail: String,
    ) {
        let ev = self.timeline.event(at, map, path, kind, detail);
        self.timeline.push(ev.clone());
        let _ = self.events.send(ev);
    }
}

/// The name operators use for a path: `PORTAL/LUN` (portals are unique per target here).
pub fn path_name(portal: SocketAddr, target: &str, lun: u16, many_targets: bool) -> String {
    if many_targets {
        format!("{portal}/{target}/{lun}")
    } else {
        format!("{portal}/{lun}")
    }
}

impl Shared {
    /// Start discovery on every configured portal (in the background).
    pub fn start_portals(self: &Arc<Self>, portals: &[PortalConfig]) {
        for p in portals.iter().cloned() {
            let me = self.clone();
            tokio::spawn(async move { me.portal_task(p).await });
        }
    }

    /// Discover a portal's targets, retrying with back-off until it answers, then start a
    /// session for every (portal, target) it reports.
    async fn portal_task(self: Arc<Self>, p: PortalConfig) {
        let mut backoff = Duration::from_millis(200);
        let mut stop = self.stop.subscribe();
        loop {
            let cfg = self.cfg();
            // A reconfigure removed or replaced this portal: this task is done.
            if !cfg.portals.contains(&p) {
                return;
            }
            let dc = DiscoveryConfig {
                initiator_name: cfg.initiator_name.clone(),
                chap: p.chap.as_ref().map(ChapSecret::credentials),
                timeout: Duration::from_secs(3),
            };
            let answer = discover(p.address, &dc).await;
            if !self.cfg().portals.contains(&p) {
                return;
            }
            match answer {
                Ok(targets) => {
                    self.state().portal_errors.remove(&p.address);
                    let mut n = 0;
                    for t in targets {
                        if !p.targets.is_empty()
                            && !p.targets.iter().any(|f| f.eq_ignore_ascii_case(&t.name))
                        {
                            continue;
                        }
                        // tgtd answers with the portal asked; mpath target with all of them.
                        let mut addrs: Vec<SocketAddr> =
                            t.portals.iter().filter_map(|a| a.socket).collect();
                        if addrs.is_empty() {
                            addrs.push(p.address);
                        }
                        for a in addrs {
                            n += 1;
                            self.ensure_session(a, &t.name, &p);
                        }
                    }
                    info!(portal = %p.address, sessions = n, "discovery done");
                    self.record(
                        None,
                        None,
                        EvKind::PortalDiscovered,
                        format!("{}: {} target portal(s)", p.address, n),
                    );
                    return;
                }
                Err(e) => {
                    let msg = e.to_string();
                    let first = self
                        .state()
                        .portal_errors
                        .insert(p.address, msg.clone())
                        .is_none();
                    if first {
                        warn!(portal = %p.address, "discovery failed, retrying: {msg}");
                        self.record(None, None, EvKind::PortalUnreachable, msg);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// A session to `target` through `addr`, once.
    fn ensure_session(self: &Arc<Self>, addr: SocketAddr, target: &str, p: &PortalConfig) {
        let key = (addr, target.to_string());
        let cfg = self.cfg();
        let mut sc = SessionConfig::new(addr, target).with_digests(p.header_digest, p.data_digest);
        sc.initiator_name = cfg.initiator_name.clone();
        cfg.timers.apply(&mut sc.timers);
        // The same ISID after a restart: the target reinstates the session, ending the old
        // process's tasks before the new process's I/O starts.
        sc.isid = iscsi_initiator::stable_isid(&cfg.initiator_name, target, addr);
        sc.chap = p.chap.as_ref().map(ChapSecret::credentials);
        sc.mutual_chap = p.mutual_chap.as_ref().map(ChapSecret::credentials);
        // The engine routes around a down path itself: commands must not wait for it.
        sc.replacement_timeout = Duration::ZERO;
        // Check and claim under one lock: two portals' discoveries may both list this
        // portal at once, and only one session may come of it.
        let session = {
            let mut st = self.state();
            if st.sessions.contains_key(&key) {
                return;
            }
            let session = Session::spawn(sc);
            st.sessions.insert(key.clone(), session.clone());
            session
        };
        let me = Arc::downgrade(self);
        let rt = tokio::runtime::Handle::current();
        let label = format!("{addr}");
        let tgt = target.to_string();
        let rescan = Arc::new(Rescan::default());
        session.subscribe(Box::new(move |ev| {
            if let Some(me) = me.upgrade() {
                let (kind, detail) = match &ev {
                    PathEvent::Connected => (EvKind::SessionUp, format!("{tgt} logged in")),
                    PathEvent::Failed { reason } => (EvKind::SessionFailed, reason.to_string()),
                    PathEvent::Recovering {
                        attempt,
                        next_try_in,
                        last_failure,
                    } => (
                        EvKind::SessionRecovering,
                        match last_failure {
                            Some(why) => format!(
                                "attempt {attempt}, in {} ms; last: {why}",
                                next_try_in.as_millis()
                            ),
                            None => format!("attempt {attempt}, in {} ms", next_try_in.as_millis()),
                        },
                    ),
                    PathEvent::Recovered => {
                        (EvKind::SessionRecovered, format!("{tgt} logged in again"))
                    }
                    PathEvent::GaveUp { reason } => (EvKind::SessionGaveUp, reason.to_string()),
                    PathEvent::LuChanged { lun, change } => {
                        (EvKind::LuChanged, format!("{tgt} LUN {lun}: {change}"))
                    }
                };
                me.record(None, Some(&label), kind, detail);
                // The target said a LU changed: read its facts now, not at the next poll.
                if let PathEvent::LuChanged { lun, change } = ev {
                    match change {
                        LuChange::AccessStates => me.check_lu_now(addr, &tgt, lun),
                        LuChange::Capacity | LuChange::Inventory => {
                            rescan.request(&me, &rt, addr, &tgt);
                        }
                    }
                }
                // Logged in again (the target may have restarted with other LUNs): new
                // LUNs join their maps without waiting for a reconfigure.
                if matches!(ev, PathEvent::Recovered) {
                    // Its paths are checked at the checker's next tick: the views (and a
                    // map that waits for the checker to reinstate, `persist`) see them
                    // ready within a tick rather than at the healthy-path interval.
                    let now = Instant::now();
                    for p in me.state().paths.values_mut() {
                        if p.portal == addr && p.target == tgt {
                            p.next_check = now;
                        }
                    }
                    let key = (addr, tgt.clone());
                    let session = me.state().sessions.get(&key).cloned();
                    if let Some(session) = session {
                        let (me, tgt) = (me.clone(), tgt.clone());
                        rt.spawn(async move {
                            me.scan_session(addr, &tgt, &session, false).await;
                        });
                    }
                }
            }
        }));
        let me = self.clone();
        let target = target.to_string();
        tokio::spawn(async move { me.session_task(addr, target, session).await });
    }

    /// Every path of the map that LUN `lun` of `target` at `addr` belongs to (every port
    /// of the LU: an ALUA change is the whole LU's) is checked at the checker's next tick,
    /// its priority read again.
    fn check_lu_now(&self, addr: SocketAddr, target: &str, lun: u64) {
        let now = Instant::now();
        let mut st = self.state();
        // The LU, by its map or (a path waiting for one) by its WWID, else the path alone.
        let hit: Vec<(Option<String>, Option<String>, String)> = st
            .paths
            .values()
            .filter(|p| p.portal == addr && p.target == target && u64::from(p.lun) == lun)
            .map(|p| {
                let map = p.map.as_ref().map(|m| m.0.clone());
                (map, p.lu.wwid.clone(), p.name.clone())
            })
            .collect();
        for p in st.paths.values_mut() {
            let same = hit.iter().any(|(map, wwid, name)| {
                &p.name == name
                    || map
                        .as_ref()
                        .is_some_and(|m| p.map.as_ref().is_some_and(|pm| &pm.0 == m))
                    || (wwid.is_some() && &p.lu.wwid == wwid)
            });
            if same {
                p.next_check = now;
            }
        }
    }

    /// Wait for the session's first login, then find its LUNs and add their paths.
    async fn session_task(self: Arc<Self>, addr: SocketAddr, target: String, session: Session) {
        let mut w = session.watch_state();
        let mut stop = self.stop.subscribe();
        loop {
            if matches!(*w.borrow(), SessionState::Up) {
                break;
            }
            tokio::select! {
                r = w.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
        self.scan_session(addr, &target, &session, false).await;
    }

    /// REPORT LUNS and probe every LUN of a session; add new paths.
    /// With `remove_gone`, paths whose LUN is no longer reported leave their maps (an
    /// operator's reconfigure); a session that merely logged in again only adds LUNs.
    pub async fn scan_session(
        self: &Arc<Self>,
        addr: SocketAddr,
        target: &str,
        session: &Session,
        remove_gone: bool,
    ) {
        let lun0 = IscsiPath::new(session.clone(), 0, RetryPolicy::default());
        let luns = match probe::report_luns(&lun0).await {
            Ok(l) => l,
            Err(e) => {
                warn!(portal = %addr, %target, "REPORT LUNS failed: {e}");
                self.record(
                    None,
                    Some(&addr.to_string()),
                    EvKind::ScanFailed,
                    format!("REPORT LUNS: {e}"),
                );
                return;
            }
        };
        // Paths of this session whose LUN the target no longer reports leave their maps.
        let gone: Vec<String> = self
            .state()
            .paths
            .values()
            .filter(|p| p.portal == addr && p.target == target && !luns.contains(&p.lun))
            .map(|p| p.name.clone())
            .collect();
        if remove_gone && !gone.is_empty() {
            self.remove_paths(gone, "LUN no longer reported by the target")
                .await;
        }
        for lun in luns {
            let path = IscsiPath::new(session.clone(), lun, RetryPolicy::default());
            let lu = match probe::probe_lu(&path).await {
                // Through a standby or unavailable ALUA port the capacity is unknown
                // (blocks 0): the path is still one (a ghost, or the one the array fails
                // over to) and takes its map's capacity.
                Ok(lu) => lu,
                Err(e) => {
                    warn!(portal = %addr, %target, lun, "probe failed: {e}");
                    continue;
                }
            };
            // The path_latency prioritizer's first sample: one command's round trip, as the
            // checker measures later (the probe above is a dozen commands).
            let latency = crate::checker::tur_latency(&path).await;
            if lu.device_type != 0 {
                debug!(portal = %addr, lun, device_type = lu.device_type, "not a disk: skipped");
                continue;
            }
            self.add_path(addr, target, lun, path, lu, latency).await;
        }
    }

    /// Take paths out of their maps and forget them; a map left without paths is removed
    /// (its export goes, its owner task stops). Returns how many paths left a map.
    pub async fn remove_paths(self: &Arc<Self>, names: Vec<String>, why: &str) -> usize {
        let _membership = self.membership.lock().await;
        let mut out = Vec::new();
        {
            let mut st = self.state();
            for n in names {
                if let Some(p) = st.paths.remove(&n) {
                    if let Some((m, id)) = p.map {
                        if let Some(mr) = st.maps.get_mut(&m) {
                            mr.paths.retain(|(i, _)| *i != id);
                            out.push((m.clone(), mr.device.clone(), id, n));
                        }
                    }
                }
            }
        }
        let n = out.len();
        let mut touched = std::collections::BTreeSet::new();
        for (map, dev, id, name) in out {
            if let Err(e) = dev.remove_path(id).await {
                warn!(path = %name, "cannot remove the path: {e}");
            }
            info!(path = %name, %map, "path removed: {why}");
            self.record(
                Some(&map),
                Some(&name),
                EvKind::PathRemoved,
                why.to_string(),
            );
            touched.insert(map);
        }
        for map in touched {
            let empty = {
                let mut st = self.state();
                match st.maps.get(&map) {
                    Some(m) if m.paths.is_empty() => st.maps.remove(&map),
                    _ => None,
                }
            };
            if let Some(m) = empty {
                self.exports.remove(&map);
                self.detach_ublk(&map, &m.wwid);
                self.detach_nbd_device(&map, &m.wwid);
                m.device.shutdown();
                info!(%map, "map removed: no path left");
                self.record(
                    Some(&map),
                    None,
                    EvKind::MapRemoved,
                    format!("{} has no path left ({why})", m.wwid),
                );
            }
        }
        n
    }

    /// Record a probed path and put it into its map (creating the map if needed).
    pub(crate) async fn add_path(
        self: &Arc<Self>,
        addr: SocketAddr,
        target: &str,
        lun: u16,
        path: IscsiPath,
        lu: LuInfo,
        latency: Duration,
    ) {
        let cfg = self.cfg();
        // A path is (portal, target, LUN): known ones are not added again, whatever name
        // the target count would give them now (names stay as first given).
        if self.known_path(addr, target, lun, &lu).await {
            return;
        }
        let many = self
            .state()
            .sessions
            .keys()
            .map(|(_, t)| t)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1;
        let name = path_name(addr, target, lun, many);
        let wwid = lu_wwid(&lu);
        let mut excluded = match &wwid {
            None => Some("no WWID (VPD 0x83) and no serial (VPD 0x80)".to_string()),
            Some(w) => cfg.blacklist.excludes(w, &lu.vendor, &lu.product),
        };
        // A LU with a reservation key (`mpath persist`, kept by WWID across restarts): the
        // key goes on the path before any map can send it I/O — under a registrants-only
        // reservation an unregistered path's writes conflict. Path I/O, so before the
        // membership lock, which is never held across it.
        if excluded.is_none() {
            let key = wwid.as_ref().and_then(|w| self.state().prkeys.get(w));
            if let (Some(key), Some(w)) = (key, &wwid) {
                let map = self.map_name(&cfg, w);
                self.register_key(key, &map, &name, &path).await;
            }
        }
        // Held from here: a path waiting for its map (below) must be recorded before a map
        // for its WWID can be created, or it would miss its adoption.
        let membership = self.membership.lock().await;
        let mut lu = lu;
        if excluded.is_none() && lu.blocks == 0 {
            // Behind an ALUA standby/unavailable port: the capacity is its map's.
            let known = wwid.as_ref().and_then(|w| {
                self.state()
                    .maps
                    .values()
                    .find(|m| &m.wwid == w)
                    .map(|m| (m.size, m.block_size))
            });
            match known {
                Some((size, bs)) => {
                    lu.block_size = bs;
                    lu.blocks = size / u64::from(bs.max(1));
                }
                None => excluded = Some(WAITING.to_string()),
            }
        }
        let priority = self.priority(&cfg, &name, addr, &lu, Some(latency));
        {
            let mut st = self.state();
            if st.paths.contains_key(&name) {
                return;
            }
            st.paths.insert(
                name.clone(),
                PathRec {
                    name: name.clone(),
                    portal: addr,
                    target: target.to_string(),
                    lun,
                    path: path.clone(),
                    lu: lu.clone(),
                    map: None,
                    checker: CheckerState::Up,
                    last_check: Some(Instant::now()),
                    next_check: Instant::now() + cfg.checker_interval_ok,
                    latency: Some(latency),
                    priority,
                    excluded: excluded.clone(),
                },
            );
        }
        if let Some(why) = excluded {
            info!(path = %name, "not multipathed: {why}");
            self.record(None, Some(&name), EvKind::PathExcluded, why);
            return;
        }
        let Some(wwid) = wwid else { return };
        let info = self.path_info(&name, target, &lu, priority);
        let spec = PathSpec::new(info, Arc::new(path.clone()));
        // Existing map: join it. New WWID: create the map, then take in the paths that
        // were waiting for it.
        let existing = self
            .state()
            .maps
            .values()
            .find(|m| m.wwid == wwid)
            .map(|m| (m.name.clone(), m.device.clone()));
        match existing {
            Some((map, device)) => self.join_map(&map, &device, &name, target, &lu, spec).await,
            None => {
                self.create_map(&cfg, &wwid, &name, &lu, spec);
                drop(membership);
                self.adopt_waiting(&wwid).await;
            }
        }
    }

    /// Add a recorded path to a running map (the membership lock held).
    async fn join_map(
        &self,
        map: &str,
        device: &Arc<MultipathDevice>,
        name: &str,
        target: &str,
        lu: &LuInfo,
        spec: PathSpec,
    ) {
        match device.add_path(spec).await {
            Ok(id) => {
                let mut st = self.state();
                if let Some(m) = st.maps.get_mut(map) {
                    m.paths.push((id, name.to_string()));
                }
                if let Some(p) = st.paths.get_mut(name) {
                    p.map = Some((map.to_string(), id));
                }
                drop(st);
                info!(path = %name, %map, "path added");
                self.record(
                    Some(map),
                    Some(name),
                    EvKind::PathAdded,
                    format!("{} {}", target, lu.wwid.as_deref().unwrap_or("")),
                );
            }
            Err(e) => warn!(path = %name, %map, "cannot add the path: {e}"),
        }
    }

    /// Paths that waited for a map of `wwid` (ALUA standby or unavailable when first seen,
    /// their capacity unknown) join it with its capacity.
    async fn adopt_waiting(self: &Arc<Self>, wwid: &str) {
        let _membership = self.membership.lock().await;
        let Some((map, device, size, bs)) = self
            .state()
            .maps
            .values()
            .find(|m| m.wwid == wwid)
            .map(|m| (m.name.clone(), m.device.clone(), m.size, m.block_size))
        else {
            return;
        };
        let waiting: Vec<String> = self
            .state()
            .paths
            .values()
            .filter(|p| {
                p.map.is_none()
                    && p.excluded.as_deref() == Some(WAITING)
                    && lu_wwid(&p.lu).as_deref() == Some(wwid)
            })
            .map(|p| p.name.clone())
            .collect();
        for name in waiting {
            let (target, lu, path, prio) = {
                let mut st = self.state();
                let Some(p) = st.paths.get_mut(&name) else {
                    continue;
                };
                p.lu.block_size = bs;
                p.lu.blocks = size / u64::from(bs.max(1));
                p.excluded = None;
                (p.target.clone(), p.lu.clone(), p.path.clone(), p.priority)
            };
            let spec = PathSpec::new(self.path_info(&name, &target, &lu, prio), Arc::new(path));
            self.join_map(&map, &device, &name, &target, &lu, spec)
                .await;
        }
    }

    /// Whether the path is known; a changed capacity on the way resizes the path's map
    /// (recorded as `capacity-changed`, old and new size).
    async fn known_path(&self, addr: SocketAddr, target: &str, lun: u16, lu: &LuInfo) -> bool {
        let resized = {
            let mut guard = self.state();
            let st = &mut *guard;
            let Some(p) = st
                .paths
                .values_mut()
                .find(|p| p.portal == addr && p.target == target && p.lun == lun)
            else {
                return false;
            };
            // Against the map's size, not only this path's last probe: another path may
            // have resized the map since (a path probed through a standby port knows no
            // capacity at all).
            let bs = u64::from(lu.block_size.max(512));
            let map = p.map.clone().map(|(m, _)| m);
            let map_blocks = map
                .as_ref()
                .and_then(|m| st.maps.get(m))
                .map(|m| m.size / bs);
            let was = map_blocks.unwrap_or(p.lu.blocks);
            if lu.blocks > 0 && (p.lu.blocks != lu.blocks || was != lu.blocks) {
                p.lu.blocks = lu.blocks;
                let name = p.name.clone();
                if let Some(m) = &map {
                    for q in st.paths.values_mut() {
                        if q.map.as_ref().is_some_and(|(qm, _)| qm == m) && q.lu.blocks > 0 {
                            q.lu.blocks = lu.blocks;
                        }
                    }
                }
                Some((name, map, was))
            } else {
                None
            }
        };
        if let Some((name, map, was)) = resized {
            let bs = lu.block_size.max(512);
            let (from, to) = (was * u64::from(bs), lu.blocks * u64::from(bs));
            warn!(path = %name, "LU capacity changed: {from} -> {to} bytes");
            let what = match &map {
                Some(m) => self.resize_map(m, to, bs).await,
                None => "the path is in no map".to_string(),
            };
            self.record(
                map.as_deref(),
                Some(&name),
                EvKind::CapacityChanged,
                format!("{from} -> {to} bytes; {what}"),
            );
        }
        true
    }

    /// Give a running map a new capacity (the engine's resize: later requests are checked
    /// against it, I/O in flight is not disturbed, NBD clients that connect from now on
    /// and the FUSE file see it). What happened, for the event.
    async fn resize_map(&self, map: &str, size: u64, block_size: u32) -> String {
        let Some((dev, old, map_bs)) = self
            .state()
            .maps
            .get(map)
            .map(|m| (m.device.clone(), m.size, m.block_size))
        else {
            return "its map is gone".to_string();
        };
        if map_bs != block_size {
            return format!(
                "the block size changed ({map_bs} -> {block_size}): the map keeps its size until it is re-created"
            );
        }
        if old == size {
            return format!("map {map} has this size already");
        }
        match dev.resize(size).await {
            Ok(()) => {
                if let Some(m) = self.state().maps.get_mut(map) {
                    m.size = size;
                }
                info!(%map, "map resized: {old} -> {size} bytes");
                format!("map {map} resized (was {old} bytes)")
            }
            Err(e) => {
                warn!(%map, "cannot resize the map: {e}");
                format!("map {map} keeps {old} bytes: {e}")
            }
        }
    }

    fn create_map(
        self: &Arc<Self>,
        cfg: &DaemonConfig,
        wwid: &str,
        path: &str,
        lu: &LuInfo,
        spec: PathSpec,
    ) {
        let entry = cfg.multipaths.iter().find(|m| m.wwid == wwid);
        let name = self.map_name(cfg, wwid);
        let policy = cfg.resolve(Some(wwid), &lu.vendor, &lu.product).policy;
        let bs = lu.block_size.max(512);
        let max_transfer = if lu.max_transfer_blocks > 0 {
            (lu.max_transfer_blocks as u64 * bs as u64).min(32 << 20) as u32
        } else {
            // Nothing reported: a size every target we know takes in one command.
            1 << 20
        };
        let device = DeviceInfo {
            size: lu.blocks * bs as u64,
            block_size: bs,
            physical_block_size: lu.physical_block_size(),
            max_transfer,
            supports_discard: lu.thin,
            supports_write_zeroes: true,
            volatile_write_cache: lu.write_cache,
        };
        let mut ec = EngineConfig::new(name.clone(), device);
        ec.policy = policy.clone();
        ec.stale_write_fence = cfg.stale_write_fence;
        if !cfg.hedge_reads {
            ec.hedge = None;
        }
        ec.limits = IoLimits {
            max_unmap_blocks: if lu.max_unmap_blocks > 0 {
                lu.max_unmap_blocks
            } else {
                mpath_engine::DEFAULT_MAX_UNMAP_BLOCKS
            },
            max_write_same_blocks: if lu.max_write_same_blocks > 0 {
                lu.max_write_same_blocks.min(u32::MAX as u64) as u32
            } else {
                mpath_engine::DEFAULT_MAX_WRITE_SAME_BLOCKS
            },
            write_same_ndob: false,
            fua: lu.fua || !lu.write_cache,
        };
        // A LU with a reservation key: a path whose session logs in again is reinstated
        // by the checker, which registers the key on it first (see `persist`).
        let pr_key = self.state().prkeys.get(wwid);
        ec.reinstate_on_recovery = pr_key.is_none();
        let device = match MultipathDevice::start(ec, vec![spec]) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                warn!(map = %name, "cannot start the map: {e}");
                return;
            }
        };
        let id = PathId(0);
        let name_cell = Arc::new(std::sync::RwLock::new(name.clone()));
        {
            let mut st = self.state();
            st.maps.insert(
                name.clone(),
                MapRec {
                    name: name.clone(),
                    wwid: wwid.to_string(),
                    device: device.clone(),
                    vendor: lu.vendor.clone(),
                    product: lu.product.clone(),
                    size: lu.blocks * bs as u64,
                    block_size: bs,
                    policy,
                    paths: vec![(id, path.to_string())],
                    pending: None,
                    pr_key,
                    name_cell: name_cell.clone(),
                },
            );
            if let Some(p) = st.paths.get_mut(path) {
                p.map = Some((name.clone(), id));
            }
        }
        let desc = format!("{} {} {}", wwid, lu.vendor, lu.product);
        if let Err(e) = self.exports.insert_identified(
            &name,
            Some(desc),
            Some(wwid.to_string()),
            device.clone(),
        ) {
            warn!(map = %name, "cannot export the map: {e}");
        }
        let ublk = entry.and_then(|m| m.ublk).unwrap_or(cfg.ublk);
        if ublk {
            self.attach_ublk(&name, wwid, device.clone());
        }
        if entry.and_then(|m| m.nbd_device).unwrap_or(cfg.nbd_device) {
            self.attach_nbd_device(&name, wwid, !ublk);
        }
        info!(map = %name, %wwid, size = lu.blocks * bs as u64, "map created");
        self.record(
            Some(&name),
            Some(path),
            EvKind::MapCreated,
            format!(
                "{} {} {}, {} bytes",
                wwid,
                lu.vendor,
                lu.product,
                lu.blocks * bs as u64
            ),
        );
        // The map's own events join the timeline.
        let me = Arc::downgrade(self);
        let rx = device.events();
        tokio::spawn(forward_map_events(me, name_cell, rx));
    }

    /// The name a map of `wwid` gets under `cfg`: its alias, else (with
    /// `user_friendly_names`) the name bound to it in the bindings file, else the WWID.
    pub(crate) fn map_name(&self, cfg: &DaemonConfig, wwid: &str) -> String {
        if let Some(a) = cfg
            .multipaths
            .iter()
            .find(|m| m.wwid == wwid)
            .and_then(|m| m.alias.clone())
        {
            return a;
        }
        if !cfg.user_friendly_names {
            return wwid.to_string();
        }
        match self.state().bindings.name_for(wwid) {
            Ok(n) => n,
            Err(e) => {
                warn!("bindings file: {e}; naming the map by its WWID");
                wwid.to_string()
            }
        }
    }

    /// Give running map `old` the name `new` (an alias changed at `reconfigure`): its NBD
    /// export and FUSE file take the new name at once — connections and open files that
    /// hold the map go on, new ones find it under the new name only — and so do its stable
    /// device names (`/dev/mpath/NAME`) and the views. Not for a map with a kernel NBD
    /// device of the daemon's, which is attached to the export by its name.
    pub(crate) fn rename_map(&self, old: &str, new: &str) -> Result<(), String> {
        if self.nbd_devices.state(old).is_some() {
            return Err(format!(
                "its kernel NBD device is attached to export {old}; the new name applies when the map is created again"
            ));
        }
        let wwid = {
            let mut st = self.state();
            if st.maps.contains_key(new) {
                return Err(format!("{new} is the name of another map"));
            }
            let Some(mut m) = st.maps.remove(old) else {
                return Err(format!("no map {old}"));
            };
            if let Err(e) = self.exports.rename(old, new) {
                st.maps.insert(old.to_string(), m);
                return Err(format!("its export cannot take the name: {e}"));
            }
            m.name = new.to_string();
            *m.name_cell.write().unwrap_or_else(|e| e.into_inner()) = new.to_string();
            let wwid = m.wwid.clone();
            st.maps.insert(new.to_string(), m);
            for p in st.paths.values_mut() {
                if let Some((m, _)) = &mut p.map {
                    if m == old {
                        *m = new.to_string();
                    }
                }
            }
            wwid
        };
        self.pathless.rename(old, new);
        if let Some(dev) = self.ublk.rename(&wwid, new) {
            if let Err(e) = crate::ublk::names::link(new, &wwid, &dev) {
                warn!(map = %new, "stable names: {e}");
            }
            crate::ublk::names::unlink(old, &wwid, &dev);
        }
        info!(map = %new, "map {old} renamed {new}");
        self.record(
            Some(new),
            None,
            EvKind::MapRenamed,
            format!("{old} -> {new}: its exports and device names carry the new name; connections and open files go on"),
        );
        Ok(())
    }

    pub fn path_info(&self, name: &str, target: &str, lu: &LuInfo, priority: u32) -> PathInfo {
        let mut info = PathInfo::new(name);
        info.priority = Some(priority);
        info.alua = lu.alua.map(|a| a.0);
        info.preferred = lu.alua.map(|a| a.1).unwrap_or(false);
        info.serial = lu.serial.clone().unwrap_or_default();
        info.node_name = target.to_string();
        info.tpg = lu.target_port_group;
        info
    }

    /// The prioritizer's value for a path.
    pub fn priority(
        &self,
        cfg: &DaemonConfig,
        name: &str,
        portal: SocketAddr,
        lu: &LuInfo,
        latency: Option<Duration>,
    ) -> u32 {
        let kind = cfg
            .resolve(lu_wwid(lu).as_deref(), &lu.vendor, &lu.product)
            .prioritizer;
        match kind {
            PrioritizerKind::Const => 1,
            PrioritizerKind::Alua => match lu.alua {
                Some((state, pref)) => mpath_policy::alua_priority(state, pref),
                // No ALUA support: every path equal (DESIGN §6: then group_by_prio is multibus).
                None => mpath_policy::UNKNOWN_PRIORITY,
            },
            PrioritizerKind::Weightedpath(weights) => weights
                .iter()
                .find(|(pat, _)| {
                    let p = portal.to_string();
                    match pat.strip_suffix('*') {
                        Some(pre) => name.starts_with(pre) || p.starts_with(pre),
                        None => name == pat || p == *pat || portal.ip().to_string() == *pat,
                    }
                })
                .map(|(_, w)| *w)
                .unwrap_or(0),
            PrioritizerKind::PathLatency => latency_priority(latency),
        }
    }
}

/// multipath-tools' path_latency idea: priority by the order of magnitude of the checker's
/// I/O latency, so paths within the same decade tie. 100 µs → 50, 1 ms → 40, 10 ms → 30 …
pub fn latency_priority(latency: Option<Duration>) -> u32 {
    match latency {
        None => mpath_policy::UNKNOWN_PRIORITY,
        Some(l) => {
            let us = l.as_micros().max(1) as f64;
            let decades = us.log10();
            (70.0 - 10.0 * decades).clamp(1.0, 90.0) as u32
        }
    }
}

/// A timeline entry for a map event: kind, path name, detail.
/// Per-I/O events (`io-failed`, `io-requeued`) come in floods when every path is gone or
/// a path dies under load: one entry per kind per this long, the rest counted and
/// summed up in a follow-up entry, so the timeline keeps the events around them.
const COALESCE: Duration = Duration::from_secs(1);

/// While a map has no usable path, how often its down sessions are told to try logging
/// in now (`Session::hurry`): the outage ends within this of the target's return.
const HURRY_EVERY: Duration = Duration::from_millis(200);

/// The maps with no usable path that queue I/O: their sessions' re-logins are hurried.
#[derive(Default)]
pub(crate) struct Pathless {
    maps: Mutex<BTreeSet<String>>,
    changed: tokio::sync::Notify,
}

impl Pathless {
    fn set(&self, map: &str, pathless: bool) {
        let mut m = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if pathless {
            m.insert(map.to_string());
        } else {
            m.remove(map);
        }
        drop(m);
        self.changed.notify_one();
    }

    fn rename(&self, old: &str, new: &str) {
        let mut m = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if m.remove(old) {
            m.insert(new.to_string());
        }
    }

    fn snapshot(&self) -> BTreeSet<String> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A map's event loop is over (the map is gone): it no longer wants its logins hurried.
struct LeavePathless<'a> {
    me: &'a std::sync::Weak<Shared>,
    map: &'a std::sync::RwLock<String>,
}

impl Drop for LeavePathless<'_> {
    fn drop(&mut self) {
        if let Some(me) = self.me.upgrade() {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner()).clone();
            me.pathless.set(&map, false);
        }
    }
}

impl Shared {
    /// One task for the daemon: while any map has no usable path, every [`HURRY_EVERY`]
    /// hurry the re-login of each down session that serves such a map. Asleep otherwise.
    pub(crate) async fn hurry_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let maps = self.pathless.snapshot();
            if maps.is_empty() {
                tokio::select! {
                    _ = self.pathless.changed.notified() => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            let sessions: Vec<Session> = self
                .state()
                .paths
                .values()
                .filter(|p| p.map.as_ref().is_some_and(|(m, _)| maps.contains(m)))
                .map(|p| p.path.session().clone())
                .filter(|s| !s.is_up())
                .collect();
            for s in &sessions {
                s.hurry();
            }
            tokio::select! {
                _ = tokio::time::sleep(HURRY_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[derive(Default)]
struct Coalesced {
    /// When the last entry of this kind was recorded.
    last: Option<Instant>,
    suppressed: u64,
    detail: String,
}

/// Forward a map's events into the daemon's timeline until the map stops.
async fn forward_map_events(
    me: std::sync::Weak<Shared>,
    name: Arc<std::sync::RwLock<String>>,
    mut rx: broadcast::Receiver<mpath_policy::Event>,
) {
    let mut floods: BTreeMap<EvKind, Coalesced> = BTreeMap::new();
    let _leave = LeavePathless {
        me: &me,
        map: &name,
    };
    loop {
        let flush_at = floods
            .values()
            .filter(|c| c.suppressed > 0)
            .filter_map(|c| c.last.map(|t| t + COALESCE))
            .min();
        let flush = async {
            match flush_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        // The map's name now (a rename changes it).
        let map = name.read().unwrap_or_else(|e| e.into_inner()).clone();
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) => {
                    let Some(me) = me.upgrade() else { return };
                    // While the map has no usable path, its sessions' re-logins are hurried.
                    match ev.kind {
                        EventKind::QueueingStarted { .. } => me.pathless.set(&map, true),
                        EventKind::QueueingEnded { .. } => me.pathless.set(&map, false),
                        _ => {}
                    }
                    let Some((kind, path, detail)) = describe(&me, &map, &ev.kind) else {
                        continue;
                    };
                    if matches!(kind, EvKind::IoFailed | EvKind::IoRequeued) {
                        let c = floods.entry(kind).or_default();
                        if c.last.is_some_and(|t| ev.at.saturating_duration_since(t) < COALESCE) {
                            c.suppressed += 1;
                            c.detail = detail;
                            continue;
                        }
                        c.last = Some(ev.at);
                    }
                    me.record_at(ev.at, Some(&map), path.as_deref(), kind, detail);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    if let Some(me) = me.upgrade() {
                        me.record(
                            Some(&map),
                            None,
                            EvKind::EventsLost,
                            format!("{n} events dropped (timeline too slow)"),
                        );
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = flush => {
                let Some(me) = me.upgrade() else { return };
                let now = Instant::now();
                for (&kind, c) in floods.iter_mut() {
                    if c.suppressed > 0 && c.last.is_some_and(|t| now >= t + COALESCE) {
                        me.record(
                            Some(&map),
                            None,
                            kind,
                            format!("{} more within {COALESCE:?}, the last: {}", c.suppressed, c.detail),
                        );
                        c.suppressed = 0;
                        c.last = None;
                    }
                }
            }
        }
    }
}

/// A map event as a timeline entry: kind, path name, detail. `None` for events the daemon
/// records itself (paths joining and leaving a map).
fn describe(me: &Shared, map: &str, k: &EventKind) -> Option<(EvKind, Option<String>, String)> {
    let path_name = |id: &PathId| -> Option<String> {
        me.state().maps.get(map).and_then(|m| {
            m.paths
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, n)| n.clone())
        })
    };
    Some(match k {
        EventKind::PathAdded { .. } | EventKind::PathRemoved { .. } => return None,
        EventKind::PathFailed { path, reason } => {
            (EvKind::PathFailed, path_name(path), reason.to_string())
        }
        EventKind::PathFailReasonUpdated { path, to, .. } => (
            EvKind::PathFailReason,
            path_name(path),
            format!("now: {to}"),
        ),
        EventKind::FailbackScheduled { group, at } => (
            EvKind::FailbackScheduled,
            None,
            format!(
                "to group {} in {:.1}s",
                group + 1,
                at.saturating_duration_since(Instant::now()).as_secs_f64()
            ),
        ),
        EventKind::GroupEnabled { group } => {
            (EvKind::GroupEnabled, None, format!("group {}", group + 1))
        }
        EventKind::GroupDisabled { group } => {
            (EvKind::GroupDisabled, None, format!("group {}", group + 1))
        }
        EventKind::Regrouped { groups } => (EvKind::Regrouped, None, format!("{groups} group(s)")),
        EventKind::QueueIfNoPath { on } => (
            EvKind::QueueIfNoPath,
            None,
            if *on { "on" } else { "off" }.to_string(),
        ),
        EventKind::PathReinstated { path, cause } => {
            (EvKind::PathReinstated, path_name(path), cause.to_string())
        }
        EventKind::PathReinstateDelayed {
            path,
            until,
            recent_failures,
        } => (
            EvKind::PathReinstateDelayed,
            path_name(path),
            format!(
                "flapping ({recent_failures} recent failures): held for {}",
                crate::control::human_duration(until.saturating_duration_since(Instant::now()))
            ),
        ),
        EventKind::PathCheckerChanged { path, from, to } => (
            EvKind::CheckerChanged,
            path_name(path),
            format!(
                "{} -> {}",
                crate::control::checker_word(*from),
                crate::control::checker_word(*to)
            ),
        ),
        EventKind::PathGaveUp { path, reason } => {
            (EvKind::PathGaveUp, path_name(path), reason.to_string())
        }
        EventKind::GroupSwitched { from, to, cause } => (
            EvKind::GroupSwitched,
            None,
            format!(
                "{} -> {} ({cause})",
                from.map(|g| (g + 1).to_string())
                    .unwrap_or_else(|| "none".into()),
                to.map(|g| (g + 1).to_string())
                    .unwrap_or_else(|| "none".into())
            ),
        ),
        EventKind::QueueingStarted { until } => (
            EvKind::QueueingStarted,
            None,
            match until {
                Some(u) => format!(
                    "no usable path; queueing for {}",
                    crate::control::human_duration(u.saturating_duration_since(Instant::now()))
                ),
                None => "no usable path; queueing until a path returns".into(),
            },
        ),
        EventKind::QueueingEnded { cause } => (
            EvKind::QueueingEnded,
            None,
            match cause {
                mpath_policy::QueueEndCause::PathAvailable => "a path is usable".to_string(),
                mpath_policy::QueueEndCause::Expired { after } => format!(
                    "no path for {}: failing I/O",
                    crate::control::human_duration(*after)
                ),
                mpath_policy::QueueEndCause::Disabled => "queueing disabled: failing I/O".into(),
            },
        ),
        EventKind::IoRequeued { path, cause } => (
            EvKind::IoRequeued,
            path_name(path),
            format!("issued again on another path ({cause})"),
        ),
        EventKind::IoFailed { kind, detail } => {
            (EvKind::IoFailed, None, format!("{kind}: {detail}"))
        }
        EventKind::PolicyChanged { setting, from, to } => (
            EvKind::PolicyApplied,
            None,
            format!("{setting}: {from} -> {to}"),
        ),
        EventKind::Resized { from, to } => {
            (EvKind::MapResized, None, format!("{from} -> {to} bytes"))
        }
    })
}
