//! The daemon's ublk block devices: one `/dev/ublkbN` per map when `[exports] ublk = true`.
//!
//! A map's device is found again across restarts by the WWID recorded with it
//! (`export::ublk::Identity`): a new map first looks for a device an earlier daemon left
//! waiting (quiesced after a crash or a planned stop) and takes it over — the kernel has held
//! its I/O meanwhile and now re-issues what the old process had not completed — else it
//! creates one. A map removed at run time removes its device (the kernel first lets its I/O
//! finish); a stopping daemon hands every device over instead (`UblkExport::hand_off`), so the
//! next daemon continues where this one stopped and no application sees an error.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use block::{BlockDevice, BlockOp, DeviceInfo, IoError, Outcome};
use export::ublk::{Attach, Identity, UblkConfig, UblkExport};
use mpath_engine::MultipathDevice;
use tracing::{info, warn};

use crate::daemon::Shared;
use crate::timeline::EventKind;

/// How long a stopping daemon waits for the requests its devices already handed to the
/// maps: a path that fails meanwhile re-issues elsewhere within a second; a map with no path
/// left queues up to `no_path_retry` — the requests are then left to the kernel, which gives
/// them to the next daemon.
const HAND_OFF_WAIT: Duration = Duration::from_secs(10);

/// A map's ublk device as `show maps` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UblkState {
    Starting,
    Live { dev_id: u32, recovered: bool },
    Failed(String),
}

impl UblkState {
    pub fn describe(&self) -> String {
        match self {
            UblkState::Starting => "starting".into(),
            UblkState::Live { dev_id, .. } => format!("/dev/ublkb{dev_id}"),
            UblkState::Failed(e) => format!("failed: {e}"),
        }
    }
}

/// The block device a ublk export serves: the map, which a device taken over at start-up
/// does not have yet. Requests wait for it (the kernel held them anyway while no process
/// served the device); its description until then is the one recorded with the device.
pub(crate) struct MapSlot {
    recorded: DeviceInfo,
    map: OnceLock<Arc<MultipathDevice>>,
    arrived: tokio::sync::Notify,
}

impl MapSlot {
    fn new(recorded: DeviceInfo) -> Arc<MapSlot> {
        Arc::new(MapSlot {
            recorded,
            map: OnceLock::new(),
            arrived: tokio::sync::Notify::new(),
        })
    }

    fn with(map: Arc<MultipathDevice>) -> Arc<MapSlot> {
        let slot = MapSlot::new(map.info());
        slot.fill(map);
        slot
    }

    fn fill(&self, map: Arc<MultipathDevice>) {
        let _ = self.map.set(map);
        self.arrived.notify_waiters();
    }

    async fn map(&self) -> Arc<MultipathDevice> {
        loop {
            let arrived = self.arrived.notified();
            if let Some(m) = self.map.get() {
                return m.clone();
            }
            arrived.await;
        }
    }
}

impl BlockDevice for MapSlot {
    fn info(&self) -> DeviceInfo {
        match self.map.get() {
            Some(m) => m.info(),
            None => self.recorded.clone(),
        }
    }

    async fn submit(&self, op: BlockOp) -> Result<Outcome, IoError> {
        match self.map.get() {
            Some(m) => m.submit(op).await,
            None => self.map().await.submit(op).await,
        }
    }
}

/// One map's device.
struct Entry {
    /// The map's name: where `show maps` reports the device.
    map: String,
    state: UblkState,
    export: Option<UblkExport>,
    slot: Arc<MapSlot>,
}

/// The daemon's ublk devices, by WWID.
#[derive(Default)]
pub(crate) struct UblkDevices {
    by_wwid: Mutex<BTreeMap<String, Entry>>,
}

impl UblkDevices {
    fn lock_all(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.by_wwid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device of the map whose LU is `wwid`.
    pub fn state(&self, wwid: &str) -> Option<UblkState> {
        self.lock_all().get(wwid).map(|e| e.state.clone())
    }

    /// The map of `wwid` is now called `map`: its device's name (`ublkbN`) when it has a
    /// live one, whose links follow.
    pub(crate) fn rename(&self, wwid: &str, map: &str) -> Option<String> {
        let mut all = self.lock_all();
        let e = all.get_mut(wwid)?;
        e.map = map.to_string();
        match e.state {
            UblkState::Live { dev_id, .. } => Some(format!("ublkb{dev_id}")),
            _ => None,
        }
    }
}

impl Shared {
    /// At start-up, before any path is logged in: take over every device an earlier daemon
    /// left waiting, from what it recorded, so that its map's I/O goes on the moment the
    /// map is assembled again (`attach_ublk` then gives the device its map).
    pub(crate) fn take_over_ublk(self: &Arc<Self>) {
        let me = self.clone();
        let rt = tokio::runtime::Handle::current();
        let cfg = self.cfg();
        let wanted = |wwid: &str| {
            cfg.multipaths
                .iter()
                .find(|m| m.wwid == wwid)
                .and_then(|m| m.ublk)
                .unwrap_or(cfg.ublk)
        };
        if !cfg.ublk && cfg.multipaths.iter().all(|m| m.ublk != Some(true)) {
            return;
        }
        if !std::path::Path::new("/dev/ublk-control").exists() {
            return;
        }
        for d in export::ublk::devices() {
            let (Some(identity), Some(recorded)) = (d.identity.clone(), d.info.clone()) else {
                continue;
            };
            if !d.recoverable() || !wanted(&identity.wwid) {
                continue;
            }
            let slot = MapSlot::new(recorded);
            {
                let mut all = me.ublk.lock_all();
                if all.contains_key(&identity.wwid) {
                    continue;
                }
                all.insert(
                    identity.wwid.clone(),
                    Entry {
                        map: identity.name.clone(),
                        state: UblkState::Starting,
                        export: None,
                        slot: slot.clone(),
                    },
                );
            }
            let me = me.clone();
            let rt = rt.clone();
            tokio::task::spawn_blocking(move || {
                let result = UblkExport::start(
                    slot,
                    identity.clone(),
                    Attach::Recover(d.dev_id),
                    &UblkConfig::default(),
                    rt,
                );
                me.ublk_started(&identity.wwid, result, true);
            });
        }
    }

    /// Give `map` its ublk device, in the background: the device taken over at start-up
    /// for this WWID gets its map; otherwise take over a device an earlier daemon left for
    /// it, or create one.
    pub(crate) fn attach_ublk(
        self: &Arc<Self>,
        map: &str,
        wwid: &str,
        device: Arc<MultipathDevice>,
    ) {
        let slot = {
            let mut all = self.ublk.lock_all();
            // A take-over at start-up that failed: try again the ordinary way.
            if all
                .get(wwid)
                .is_some_and(|e| matches!(e.state, UblkState::Failed(_)))
            {
                all.remove(wwid);
            }
            if let Some(e) = all.get_mut(wwid) {
                e.map = map.to_string();
                e.slot.fill(device);
                let live = e.export.as_ref().map(|x| x.dev_id());
                drop(all);
                if let Some(dev_id) = live {
                    self.ublk_names(map, wwid, dev_id);
                }
                return;
            }
            let slot = MapSlot::with(device);
            all.insert(
                wwid.to_string(),
                Entry {
                    map: map.to_string(),
                    state: UblkState::Starting,
                    export: None,
                    slot: slot.clone(),
                },
            );
            slot
        };
        let me = self.clone();
        let identity = Identity {
            name: map.to_string(),
            wwid: wwid.to_string(),
        };
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let earlier = export::ublk::devices()
                .into_iter()
                .find(|d| d.identity.as_ref().is_some_and(|i| i.wwid == identity.wwid));
            let attach = match &earlier {
                Some(d) if d.recoverable() => Attach::Recover(d.dev_id),
                Some(d) => {
                    let why = format!(
                        "/dev/ublkb{} already serves WWID {} (state {}): another process has it",
                        d.dev_id, identity.wwid, d.state
                    );
                    me.ublk_started(
                        &identity.wwid,
                        Err(export::ublk::UblkExportError::Unavailable(why)),
                        false,
                    );
                    return;
                }
                None => Attach::New,
            };
            let result =
                UblkExport::start(slot, identity.clone(), attach, &UblkConfig::default(), rt);
            me.ublk_started(&identity.wwid, result, attach != Attach::New);
        });
    }

    /// An export started (or not): record it where its map is.
    fn ublk_started(
        &self,
        wwid: &str,
        result: Result<UblkExport, export::ublk::UblkExportError>,
        recovered: bool,
    ) {
        let mut all = self.ublk.lock_all();
        let Some(entry) = all.get_mut(wwid) else {
            // The map was removed while its device started: remove the device too.
            drop(all);
            if let Ok(e) = result {
                let _ = e.remove();
            }
            return;
        };
        let map = entry.map.clone();
        match result {
            Ok(e) => {
                let what = format!(
                    "{} {}",
                    e.bdev_path().display(),
                    if recovered {
                        "taken over from an earlier daemon; the I/O it held goes on"
                    } else {
                        "created"
                    }
                );
                entry.state = UblkState::Live {
                    dev_id: e.dev_id(),
                    recovered,
                };
                let dev_id = e.dev_id();
                let has_map = entry.slot.map.get().is_some();
                entry.export = Some(e);
                drop(all);
                info!(%map, "ublk device {what}");
                self.record(Some(&map), None, EventKind::UblkAttached, what);
                if has_map {
                    self.ublk_names(&map, wwid, dev_id);
                }
            }
            Err(e) => {
                entry.state = UblkState::Failed(e.to_string());
                drop(all);
                warn!(%map, "no ublk device: {e}");
                self.record(Some(&map), None, EventKind::UblkFailed, e.to_string());
            }
        }
    }

    fn ublk_names(&self, map: &str, wwid: &str, dev_id: u32) {
        if let Err(err) = names::link(map, wwid, &format!("ublkb{dev_id}")) {
            warn!(%map, "stable names: {err}");
            self.record(Some(map), None, EventKind::UblkNamesFailed, err);
        }
    }

    /// The map is gone: remove its device (its I/O in flight finishes first).
    pub(crate) fn detach_ublk(self: &Arc<Self>, map: &str, wwid: &str) {
        let Some(entry) = self.ublk.lock_all().remove(wwid) else {
            return;
        };
        if let Some(e) = entry.export {
            let me = self.clone();
            let map = map.to_string();
            let wwid = wwid.to_string();
            tokio::task::spawn_blocking(move || {
                let dev = e.bdev_path();
                names::unlink(&map, &wwid, &format!("ublkb{}", e.dev_id()));
                match e.remove() {
                    Ok(()) => me.record(
                        Some(&map),
                        None,
                        EventKind::UblkRemoved,
                        format!("{} removed with its map", dev.display()),
                    ),
                    Err(e) => warn!(%map, "ublk device: {e}"),
                }
            });
        }
    }

    /// The daemon stops: every device is handed over to the next daemon — requests not yet
    /// started stay with the kernel, those started are finished first.
    pub(crate) async fn hand_off_ublk(&self) {
        let all: Vec<(String, UblkExport, bool)> = {
            let mut all = self.ublk.lock_all();
            std::mem::take(&mut *all)
                .into_values()
                .filter_map(|e| {
                    let has_map = e.slot.map.get().is_some();
                    e.export.map(|x| (e.map, x, has_map))
                })
                .collect()
        };
        for (map, e, has_map) in all {
            let dev = e.bdev_path();
            // Requests of a device whose map never came back are all still waiting for it:
            // nothing to finish, leave them to the kernel at once.
            let wait = if has_map {
                HAND_OFF_WAIT
            } else {
                Duration::ZERO
            };
            let left = tokio::task::spawn_blocking(move || e.hand_off(wait))
                .await
                .unwrap_or(0);
            info!(%map, "ublk device {} handed over ({left} request(s) left to the kernel)", dev.display());
        }
    }
}

/// Stable names for a map's block device, made by the daemon (not udev: a ublk or NBD
/// device carries no identity udev could read): `/dev/mpath/<map>` and
/// `/dev/disk/by-id/mpath-<wwid>`, symbolic links to `../ublkbN` / `../../ublkbN` (or
/// `nbdN`). They are made again whenever a daemon attaches the device (after a restart they
/// already point at the same device) and removed with the device. udev leaves links it did
/// not make alone, so `udevadm trigger` keeps them.
pub(crate) mod names {
    use std::path::{Path, PathBuf};

    const BY_ALIAS: &str = "/dev/mpath";
    const BY_ID: &str = "/dev/disk/by-id";

    fn paths(map: &str, wwid: &str) -> [(PathBuf, &'static str); 2] {
        [
            (Path::new(BY_ALIAS).join(map), "../"),
            (Path::new(BY_ID).join(format!("mpath-{wwid}")), "../../"),
        ]
    }

    /// Point the map's names at `/dev/<dev>` (`ublkb3`, `nbd0`).
    pub fn link(map: &str, wwid: &str, dev: &str) -> Result<(), String> {
        for (path, up) in paths(map, wwid) {
            let target = PathBuf::from(format!("{up}{dev}"));
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            if std::fs::read_link(&path).ok().as_deref() == Some(target.as_path()) {
                continue;
            }
            // Replace atomically: a link pointing elsewhere (a device of an earlier boot)
            // never disappears for a moment.
            let tmp = path.with_extension("mpath-new");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| {
                    format!(
                        "cannot link {} to {}: {e}",
                        path.display(),
                        target.display()
                    )
                })?;
        }
        Ok(())
    }

    /// Remove the map's names if they still point at `/dev/<dev>`.
    pub fn unlink(map: &str, wwid: &str, dev: &str) {
        for (path, up) in paths(map, wwid) {
            let target = PathBuf::from(format!("{up}{dev}"));
            if std::fs::read_link(&path).ok().as_deref() == Some(target.as_path()) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
