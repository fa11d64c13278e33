//! The daemon's kernel NBD devices: one `/dev/nbdN` per map when `[exports] nbd_device =
//! true`, attached by the daemon over netlink (`export::nbd::kernel`), no `nbd-client`.
//!
//! As with ublk, a map's device is found again across restarts — by its backend identifier
//! `mpath-<wwid>` — and taken over with a new connection; the kernel has held the device's
//! I/O meanwhile. A map removed at run time disconnects its device; a stopping daemon
//! hands every device over (answers what it read, closes), so the next daemon continues.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use export::nbd::kernel::{KernelDevice, KernelNbdConfig};
use export::nbd::{NbdConfig, NbdServer};
use tracing::{info, warn};

use crate::daemon::Shared;
use crate::timeline::EventKind;
use crate::ublk::names;

/// A map's NBD device as `show maps` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NbdDeviceState {
    Starting,
    Live { index: u32 },
    Failed(String),
}

impl NbdDeviceState {
    pub fn describe(&self) -> String {
        match self {
            NbdDeviceState::Starting => "starting".into(),
            NbdDeviceState::Live { index } => format!("/dev/nbd{index}"),
            NbdDeviceState::Failed(e) => format!("failed: {e}"),
        }
    }
}

/// The identity a map's device carries (`/sys/block/nbdN/backend`).
pub(crate) fn identity(wwid: &str) -> String {
    format!("mpath-{wwid}")
}

#[derive(Default)]
pub(crate) struct NbdDevices {
    devices: Mutex<BTreeMap<String, (NbdDeviceState, Option<KernelDevice>)>>,
}

impl NbdDevices {
    fn lock_all(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, (NbdDeviceState, Option<KernelDevice>)>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self, map: &str) -> Option<NbdDeviceState> {
        self.lock_all().get(map).map(|(s, _)| s.clone())
    }
}

impl Shared {
    /// Give `map` its kernel NBD device, in the background. `names`: point the map's stable
    /// names at it (not when the map also has a ublk device, which has them).
    pub(crate) fn attach_nbd_device(self: &Arc<Self>, map: &str, wwid: &str, names: bool) {
        self.nbd_devices
            .lock_all()
            .insert(map.to_string(), (NbdDeviceState::Starting, None));
        let me = self.clone();
        let map = map.to_string();
        let wwid = wwid.to_string();
        tokio::spawn(async move {
            let server = NbdServer::new(me.exports.clone(), NbdConfig::default());
            let result = server
                .attach_kernel(&map, &identity(&wwid), &KernelNbdConfig::default())
                .await;
            match result {
                Ok(d) => {
                    let what = format!(
                        "{} {}",
                        d.path().display(),
                        if d.recovered() {
                            "taken over from an earlier daemon; the I/O it held goes on"
                        } else {
                            "connected"
                        }
                    );
                    info!(%map, "NBD device {what}");
                    me.record(Some(&map), None, EventKind::NbdDeviceAttached, what);
                    if names {
                        if let Err(err) = names::link(&map, &wwid, &format!("nbd{}", d.index())) {
                            warn!(%map, "stable names: {err}");
                            me.record(Some(&map), None, EventKind::NbdDeviceNamesFailed, err);
                        }
                    }
                    // A map removed while its device attached: disconnect it too.
                    let gone = {
                        let mut devices = me.nbd_devices.lock_all();
                        match devices.get_mut(&map) {
                            Some(entry) => {
                                *entry = (NbdDeviceState::Live { index: d.index() }, Some(d));
                                None
                            }
                            None => Some(d),
                        }
                    };
                    if let Some(d) = gone {
                        let _ = d.detach().await;
                    }
                }
                Err(e) => {
                    warn!(%map, "no NBD device: {e}");
                    me.record(Some(&map), None, EventKind::NbdDeviceFailed, e.to_string());
                    me.nbd_devices
                        .lock_all()
                        .insert(map, (NbdDeviceState::Failed(e.to_string()), None));
                }
            }
        });
    }

    /// The map is gone: disconnect its device.
    pub(crate) fn detach_nbd_device(self: &Arc<Self>, map: &str, wwid: &str) {
        let Some((_, device)) = self.nbd_devices.lock_all().remove(map) else {
            return;
        };
        if let Some(d) = device {
            let me = self.clone();
            let map = map.to_string();
            let wwid = wwid.to_string();
            tokio::spawn(async move {
                let path = d.path();
                names::unlink(&map, &wwid, &format!("nbd{}", d.index()));
                match d.detach().await {
                    Ok(()) => me.record(
                        Some(&map),
                        None,
                        EventKind::NbdDeviceRemoved,
                        format!("{} disconnected with its map", path.display()),
                    ),
                    Err(e) => warn!(%map, "NBD device: {e}"),
                }
            });
        }
    }

    /// The daemon stops: every device is handed over to the next daemon — requests read
    /// are answered, the kernel holds the rest.
    pub(crate) async fn hand_off_nbd_devices(&self) {
        let all: Vec<(String, KernelDevice)> = {
            let mut devices = self.nbd_devices.lock_all();
            std::mem::take(&mut *devices)
                .into_iter()
                .filter_map(|(m, (_, d))| d.map(|d| (m, d)))
                .collect()
        };
        for (map, d) in all {
            let path = d.path();
            d.hand_off().await;
            info!(%map, "NBD device {} handed over", path.display());
        }
    }
}
