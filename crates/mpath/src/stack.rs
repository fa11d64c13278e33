//! The whole stack in one process, on loopback: an in-process target with one portal group
//! per portal and a memory LUN with ALUA, and the daemon exporting its map over NBD. What
//! `mpath demo` and `mpath bench` run on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iscsi_target::backend::BackingSpec;
use iscsi_target::config::{
    AluaMode, AluaState, LunSpec, PortalGroupSpec, ServerConfig, TargetSpec, DEFAULT_PRODUCT,
    DEFAULT_VENDOR,
};
use mpathd::config::{DaemonConfig, PortalConfig};
use mpathd::{Daemon, Listeners, Request};

pub const IQN: &str = "iqn.2026-01.io.mpath:demo";

pub struct Stack {
    /// The target's fault switch and ALUA control.
    pub target: iscsi_target::Control,
    pub portals: Vec<SocketAddr>,
    pub daemon: Daemon,
    pub control: mpathd::Control,
    pub nbd: SocketAddr,
    /// The map's name.
    pub map: String,
    /// When the daemon started (its timeline counts from here).
    pub daemon_started: Instant,
    target_stop: tokio::sync::oneshot::Sender<()>,
    target_task: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// A target with `portals` portals (127.0.0.1, 127.0.0.2, … on free ports) and one
    /// `size`-byte memory LUN; the daemon, given the first portal only (discovery finds the
    /// others), with `tune` applied to its defaults. Returns once the map has every path.
    pub async fn start(
        size: u64,
        portals: usize,
        tune: impl FnOnce(&mut DaemonConfig),
    ) -> Result<Stack> {
        Stack::start_luns(size, portals, 1, tune, Duration::from_secs(20)).await
    }

    /// As [`Stack::start`], with `luns` LUNs of `size` bytes each; returns once every
    /// LUN's map has every path, or fails after `timeout`.
    pub async fn start_luns(
        size: u64,
        portals: usize,
        luns: u16,
        tune: impl FnOnce(&mut DaemonConfig),
        timeout: Duration,
    ) -> Result<Stack> {
        let target = iscsi_target::Server::bind(target_config(size, portals, luns)?)
            .await
            .context("in-process target")?;
        let addrs = target.portals();
        let tctl = target.control();
        let (target_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let target_task = tokio::spawn(target.run(async {
            let _ = stopped.await;
        }));
        let nbd = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("NBD listener on 127.0.0.1")?;
        let nbd_addr = nbd.local_addr()?;
        let mut cfg = DaemonConfig {
            portals: vec![PortalConfig::new(addrs[0])],
            nbd_listen: Some(nbd_addr),
            // Names in memory: a demo or a benchmark leaves nothing on the host.
            bindings_file: None,
            ..DaemonConfig::default()
        };
        tune(&mut cfg);
        let listeners = Listeners {
            nbd: vec![nbd.into()],
            ..Listeners::default()
        };
        let daemon_started = Instant::now();
        let daemon = Daemon::start(cfg, listeners, None).context("daemon")?;
        let control = daemon.control();
        let map = wait_for_maps(&control, luns as usize, portals as u64, timeout).await?;
        Ok(Stack {
            target: tctl,
            portals: addrs,
            daemon,
            control,
            nbd: nbd_addr,
            map,
            daemon_started,
            target_stop,
            target_task,
        })
    }

    /// Active and total paths of the map, and its queued requests.
    pub async fn paths(&self) -> (u64, u64, u64) {
        let r = self.control.handle(Request::ShowMaps).await;
        r.parse::<mpathd::reply::Maps>()
            .ok()
            .and_then(|r| r.maps.into_iter().find(|m| m.name == self.map))
            .map(|m| (m.active_paths as u64, m.paths as u64, m.queued as u64))
            .unwrap_or((0, 0, 0))
    }

    /// Wait until the map has `n` active paths.
    pub async fn wait_for_paths(&self, n: u64, timeout: Duration) -> Result<()> {
        wait_for_map(&self.control, n, timeout).await.map(drop)
    }

    pub async fn stop(mut self) {
        self.daemon.stop().await;
        let _ = self.target_stop.send(());
        let _ = self.target_task.await;
    }
}

/// Milliseconds from `at` to the first event of `kind` at or after it, in a timeline
/// (`show events` data) that counts from `daemon_started`.
pub fn ms_to_event(
    events: &[mpathd::TimelineEvent],
    daemon_started: Instant,
    at: Instant,
    kind: mpathd::EventKind,
) -> Option<f64> {
    let at_ms = at.duration_since(daemon_started).as_secs_f64() * 1e3;
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.t_ms as f64)
        // The timeline counts whole milliseconds.
        .find(|t| *t + 1.0 >= at_ms)
        .map(|t| (t - at_ms).max(0.0))
}

pub(crate) fn target_config(size: u64, portals: usize, luns: u16) -> Result<ServerConfig> {
    if !(1..=8).contains(&portals) {
        bail!("1 to 8 portals, not {portals}");
    }
    // Loopback addresses (all of 127/8 is loopback on Linux), free ports; each portal its
    // own portal group and ALUA target port group, all active/optimized.
    let group = |tag: u16| PortalGroupSpec {
        tag,
        portals: vec![SocketAddr::from(([127, 0, 0, tag as u8], 0))],
        state: AluaState::ActiveOptimized,
        preferred: false,
    };
    Ok(ServerConfig {
        targets: vec![TargetSpec {
            iqn: IQN.into(),
            alias: Some("mpath demo".into()),
            portal_groups: (1..=portals as u16).map(group).collect(),
            luns: (1..=luns)
                .map(|id| {
                    Ok(LunSpec {
                        id,
                        backing: BackingSpec::parse(&format!("mem:{size}"))
                            .map_err(anyhow::Error::msg)?,
                        block_size: 512,
                        serial: None,
                        vendor: DEFAULT_VENDOR.into(),
                        product: DEFAULT_PRODUCT.into(),
                    })
                })
                .collect::<Result<_>>()?,
            allowed_initiators: vec![],
            chap: None,
            mutual_chap: None,
            alua: AluaMode::Implicit,
            stpg: Default::default(),
        }],
        ..ServerConfig::default()
    })
}

/// Wait until `maps` maps each have `paths` active paths; returns the first one's name.
async fn wait_for_maps(
    control: &mpathd::Control,
    maps: usize,
    paths: u64,
    timeout: Duration,
) -> Result<String> {
    if maps <= 1 {
        return wait_for_map(control, paths, timeout).await;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let r = control.handle(Request::ShowMaps).await;
        let all = r.data["maps"].as_array().cloned().unwrap_or_default();
        let ready = all.iter().filter(|m| m["active_paths"] == paths).count();
        if ready >= maps {
            return Ok(all[0]["name"].as_str().unwrap_or_default().to_string());
        }
        if Instant::now() >= deadline {
            bail!("{ready} of {maps} maps have {paths} active paths after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first map with `paths` active paths, within `timeout`.
async fn wait_for_map(control: &mpathd::Control, paths: u64, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = control.handle(Request::ShowMaps).await;
        if let Some(m) = r.data["maps"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["active_paths"] == paths))
        {
            return Ok(m["name"].as_str().unwrap_or_default().to_string());
        }
        if Instant::now() >= deadline {
            let status = control.handle(Request::ShowStatus).await;
            bail!(
                "no map with {paths} active paths after {timeout:?}:\n{}{}",
                r.text,
                status.text
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
