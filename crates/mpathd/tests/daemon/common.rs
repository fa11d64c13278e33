//! Shared rig: an in-process `mpath target` on loopback (free ports) and an in-process
//! daemon with short timers, queried through `Control::handle`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iscsi_target::backend::BackingSpec;
use iscsi_target::config::{
    AluaMode, AluaState, LunSpec, PortalGroupSpec, ServerConfig, TargetSpec, DEFAULT_PRODUCT,
    DEFAULT_VENDOR,
};
use mpathd::config::{DaemonConfig, PortalConfig};
use mpathd::{Control, Daemon, Listeners, Request, Response};
use serde_json::Value;
use testkit::TempDir;

/// A running in-process target.
pub struct Target {
    pub iqn: String,
    pub portals: Vec<SocketAddr>,
    pub ctl: iscsi_target::Control,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// One portal group of a target: its portal (port 0 for a free one) and ALUA state.
pub struct Group {
    pub portal: SocketAddr,
    pub state: AluaState,
    pub preferred: bool,
}

pub fn group(ip: [u8; 4], port: u16, state: AluaState) -> Group {
    Group {
        portal: SocketAddr::from((ip, port)),
        state,
        preferred: false,
    }
}

impl Target {
    /// `luns`: (LUN id, size in bytes), memory-backed, 512-byte blocks.
    pub async fn start(iqn: &str, groups: Vec<Group>, luns: &[(u16, u64)]) -> Target {
        let luns: Vec<(u16, BackingSpec)> = luns
            .iter()
            .map(|(id, size)| (*id, BackingSpec::parse(&format!("mem:{size}")).unwrap()))
            .collect();
        Target::start_backed(iqn, groups, &luns).await
    }

    /// `luns`: (LUN id, backing store), 512-byte blocks.
    pub async fn start_backed(
        iqn: &str,
        groups: Vec<Group>,
        luns: &[(u16, BackingSpec)],
    ) -> Target {
        Target::start_tuned(iqn, groups, luns, |_| {}).await
    }

    /// As [`start_backed`](Self::start_backed), with `tune` applied to the target's spec
    /// (CHAP, ACLs...).
    pub async fn start_tuned(
        iqn: &str,
        groups: Vec<Group>,
        luns: &[(u16, BackingSpec)],
        tune: impl FnOnce(&mut iscsi_target::TargetSpec),
    ) -> Target {
        let portal_groups = groups
            .into_iter()
            .enumerate()
            .map(|(i, g)| PortalGroupSpec {
                tag: i as u16 + 1,
                portals: vec![g.portal],
                state: g.state,
                preferred: g.preferred,
            })
            .collect();
        let mut spec = TargetSpec {
            iqn: iqn.into(),
            alias: None,
            portal_groups,
            luns: luns
                .iter()
                .map(|(id, backing)| LunSpec {
                    id: *id,
                    backing: backing.clone(),
                    block_size: 512,
                    serial: None,
                    vendor: DEFAULT_VENDOR.into(),
                    product: DEFAULT_PRODUCT.into(),
                })
                .collect(),
            allowed_initiators: vec![],
            chap: None,
            mutual_chap: None,
            alua: AluaMode::Implicit,
            stpg: Default::default(),
        };
        tune(&mut spec);
        let cfg = ServerConfig {
            targets: vec![spec],
            ..ServerConfig::default()
        };
        let server = iscsi_target::Server::bind(cfg).await.expect("bind target");
        let portals = server.portals();
        let ctl = server.control();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Target {
            iqn: iqn.into(),
            portals,
            ctl,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The WWID the daemon groups LUN `lun` by.
    pub fn wwid(&self, lun: u16) -> String {
        iscsi_target::wwid(&iscsi_target::identity(&self.iqn, lun).0)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn portal(address: SocketAddr) -> PortalConfig {
    PortalConfig::new(address)
}

/// A configuration with short timers, no NBD, the control socket in `dir`.
pub fn config(dir: &TempDir, portals: &[SocketAddr]) -> DaemonConfig {
    DaemonConfig {
        portals: portals.iter().copied().map(portal).collect(),
        checker_interval: Duration::from_millis(200),
        checker_interval_ok: Duration::from_millis(200),
        nbd_listen: None,
        control_socket: dir.path().join("mpath.sock"),
        bindings_file: Some(dir.path().join("bindings")),
        ..DaemonConfig::default()
    }
}

pub fn start(cfg: DaemonConfig) -> (Daemon, Control) {
    let d = Daemon::start(cfg, Listeners::default(), None).expect("start daemon");
    let c = d.control();
    (d, c)
}

pub async fn ask(c: &Control, r: Request) -> Response {
    let resp = c.handle(r.clone()).await;
    assert!(resp.ok, "{r:?}: {}", resp.text);
    resp
}

/// Poll `f` every 50 ms until it holds; panic with `what` after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `show maps` entry of `map`.
pub async fn map_entry(c: &Control, map: &str) -> Option<Value> {
    let r = c.handle(Request::ShowMaps).await;
    r.data["maps"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == map)
        .cloned()
}

/// Active paths of `map` (0 when it is not there).
pub async fn active_paths(c: &Control, map: &str) -> u64 {
    map_entry(c, map)
        .await
        .and_then(|m| m["active_paths"].as_u64())
        .unwrap_or(0)
}

/// Wait for a map with `n` active paths; its name.
pub async fn wait_map_by_wwid(c: &Control, wwid: &str, n: u64, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let r = c.handle(Request::ShowMaps).await;
        if let Some(m) = r.data["maps"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["wwid"] == wwid))
        {
            if m["active_paths"].as_u64() == Some(n) {
                return m["name"].as_str().unwrap().to_string();
            }
        }
        if Instant::now() >= deadline {
            let st = c.handle(Request::ShowPaths).await;
            let ev = c
                .handle(Request::ShowEvents {
                    follow: false,
                    last: Some(40),
                })
                .await;
            panic!(
                "no map {wwid} with {n} active paths after {timeout:?}:\n{}\n{}\n{}",
                r.text, st.text, ev.text
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `show paths` rows of a map.
pub async fn paths_of(c: &Control, map: &str) -> Vec<Value> {
    let r = c.handle(Request::ShowPaths).await;
    r.data["paths"]
        .as_array()
        .map(|a| a.iter().filter(|p| p["map"] == map).cloned().collect())
        .unwrap_or_default()
}

/// The topology entry of a map.
pub async fn topology_of(c: &Control, map: &str) -> Value {
    let r = ask(c, Request::ShowTopology).await;
    r.data["maps"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == map))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Per-path I/O count of a map, from `show stats`.
pub async fn path_ios(c: &Control, map: &str) -> Vec<(String, u64)> {
    let r = ask(c, Request::ShowStats).await;
    r.data["maps"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["map"] == map))
        .and_then(|m| m["paths"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap_or_default().to_string(),
                p["ios"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The map's device, in process.
pub fn device(d: &Daemon, map: &str) -> Arc<mpath_engine::MultipathDevice> {
    d.exports().get(map).expect("export").device().clone()
}

/// A few 4 KiB reads through a map.
pub async fn read_some(dev: &Arc<mpath_engine::MultipathDevice>, n: u64) {
    use workload::BlockClient;
    for i in 0..n {
        dev.read((i % 64) * 4096, 4096).await.expect("read");
    }
}

/// How many timeline events of `kind` there are.
pub async fn events_of(c: &Control, kind: &str) -> usize {
    let r = c
        .handle(Request::ShowEvents {
            follow: false,
            last: None,
        })
        .await;
    r.data["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["kind"] == kind).count())
        .unwrap_or(0)
}

/// Reads through the map for `secs` seconds; every one must succeed. Returns how many.
pub fn reader(
    dev: std::sync::Arc<mpath_engine::MultipathDevice>,
    secs: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        use workload::BlockClient;
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(secs) {
            dev.read((n % 64) * 4096, 4096)
                .await
                .unwrap_or_else(|e| panic!("read {n} failed: {e}"));
            n += 1;
        }
        n
    })
}

/// A target with two active/optimized portals and one 4 MiB LUN, a daemon given the first
/// portal (with `tune` applied to its configuration), and the LUN's map with both paths.
pub struct TwoPaths {
    pub t: Target,
    pub d: Daemon,
    pub c: Control,
    pub map: String,
    _dir: TempDir,
}

impl TwoPaths {
    pub async fn start(tag: &str, iqn: &str, tune: impl FnOnce(&mut DaemonConfig)) -> TwoPaths {
        let dir = TempDir::new(tag);
        let t = Target::start(
            iqn,
            vec![
                group([127, 0, 0, 2], 0, AluaState::ActiveOptimized),
                group([127, 0, 0, 3], 0, AluaState::ActiveOptimized),
            ],
            &[(1, 4 << 20)],
        )
        .await;
        let mut cfg = config(&dir, &t.portals[..1]);
        tune(&mut cfg);
        let (d, c) = start(cfg);
        let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
        TwoPaths {
            t,
            d,
            c,
            map,
            _dir: dir,
        }
    }

    /// The map's device, in process.
    pub fn device(&self) -> Arc<mpath_engine::MultipathDevice> {
        device(&self.d, &self.map)
    }

    pub async fn stop(mut self) {
        self.d.stop().await;
        self.t.stop().await;
    }
}
