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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use export::ublk::{Attach, Identity, UblkConfig, UblkExport};
use mpath_engine::MultipathDevice;
use tracing::{info, warn};

use crate::daemon::Shared;

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

#[derive(Default)]
pub(crate) struct UblkDevices {
    exports: Mutex<BTreeMap<String, (UblkState, Option<UblkExport>)>>,
}

impl UblkDevices {
    fn lock_all(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, (UblkState, Option<UblkExport>)>> {
        self.exports.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self, map: &str) -> Option<UblkState> {
        self.lock_all().get(map).map(|(s, _)| s.clone())
    }
}

impl Shared {
    /// Give `map` its ublk device, in the background: take over the device an earlier daemon
    /// left for this WWID, or create one.
    pub(crate) fn attach_ublk(
        self: &Arc<Self>,
        map: &str,
        wwid: &str,
        device: Arc<MultipathDevice>,
    ) {
        self.ublk
            .lock_all()
            .insert(map.to_string(), (UblkState::Starting, None));
        let me = self.clone();
        let identity = Identity {
            name: map.to_string(),
            wwid: wwid.to_string(),
        };
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let map = identity.name.clone();
            let identity_wwid = identity.wwid.clone();
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
                    warn!(%map, "no ublk device: {why}");
                    me.record(Some(&map), None, "ublk-failed", why.clone());
                    me.ublk
                        .lock_all()
                        .insert(map, (UblkState::Failed(why), None));
                    return;
                }
                None => Attach::New,
            };
            let result = UblkExport::start(device, identity, attach, &UblkConfig::default(), rt);
            let mut exports = me.ublk.lock_all();
            match result {
                Ok(e) => {
                    let recovered = attach != Attach::New;
                    let what = format!(
                        "{} {}",
                        e.bdev_path().display(),
                        if recovered {
                            "taken over from an earlier daemon; the I/O it held goes on"
                        } else {
                            "created"
                        }
                    );
                    info!(%map, "ublk device {what}");
                    me.record(Some(&map), None, "ublk-attached", what);
                    let links = names::link(&map, &identity_wwid, &format!("ublkb{}", e.dev_id()));
                    if let Err(err) = &links {
                        warn!(%map, "stable names: {err}");
                        me.record(Some(&map), None, "ublk-names-failed", err.clone());
                    }
                    // A map removed while its device started: remove the device too.
                    if !exports.contains_key(&map) {
                        drop(exports);
                        let _ = e.remove();
                        return;
                    }
                    exports.insert(
                        map,
                        (
                            UblkState::Live {
                                dev_id: e.dev_id(),
                                recovered,
                            },
                            Some(e),
                        ),
                    );
                }
                Err(e) => {
                    warn!(%map, "no ublk device: {e}");
                    me.record(Some(&map), None, "ublk-failed", e.to_string());
                    exports.insert(map, (UblkState::Failed(e.to_string()), None));
                }
            }
        });
    }

    /// The map is gone: remove its device (its I/O in flight finishes first).
    pub(crate) fn detach_ublk(self: &Arc<Self>, map: &str, wwid: &str) {
        let Some((_, export)) = self.ublk.lock_all().remove(map) else {
            return;
        };
        if let Some(e) = export {
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
                        "ublk-removed",
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
        let all: Vec<(String, UblkExport)> = {
            let mut exports = self.ublk.lock_all();
            std::mem::take(&mut *exports)
                .into_iter()
                .filter_map(|(m, (_, e))| e.map(|e| (m, e)))
                .collect()
        };
        for (map, e) in all {
            let dev = e.bdev_path();
            let left = tokio::task::spawn_blocking(move || e.hand_off(HAND_OFF_WAIT))
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
