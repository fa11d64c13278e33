//! mpath's daemon: the roles of multipathd and the `multipath` command.
//!
//! It logs in through every configured portal, finds every LUN, groups paths into maps by
//! WWID (VPD 0x83, else the VPD 0x80 serial), names them (alias, else `mpatha`… kept stable
//! in a bindings file, else the WWID), runs one multipath engine per map, exports each map
//! over NBD (and, optionally, as a FUSE file), checks paths, and answers the control socket.
//! Start-up never waits on an unreachable portal: it is retried in the background and its
//! paths join their maps when they come.
//!
//! Lifecycle is injected: [`Daemon::start`] takes the configuration and the listeners;
//! [`Daemon::stop`] (or a `shutdown` request, or the future given to [`Daemon::run`]) ends it.

mod bindings;
mod checker;
pub mod config;
pub mod control;
mod daemon;
pub mod metrics;
pub mod mpconf;
mod nbd_device;
pub mod persist;
mod prkeys;
mod probe;
pub mod reply;
pub mod timeline;
mod ublk;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use export::nbd::{Listener, NbdConfig, NbdServer};
use export::Exports;
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

pub use config::{ConfigError, DaemonConfig};

/// Settings given outside the configuration file (the command line), applied over it at
/// start and at every `reconfigure`.
pub type ConfigOverlay = Arc<dyn Fn(&mut DaemonConfig) + Send + Sync>;
pub use control::{Control, Request, Response};
pub use timeline::{EventKind, TimelineEvent};

use crate::bindings::Bindings;
use crate::daemon::{Shared, State};

/// Sockets the daemon serves, opened by the caller.
#[derive(Default)]
pub struct Listeners {
    pub control: Option<UnixListener>,
    pub nbd: Vec<Listener>,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Bind what the configuration asks for.
    pub async fn bind(cfg: &DaemonConfig) -> std::io::Result<Listeners> {
        let mut l = Listeners::default();
        if let Some(parent) = cfg.control_socket.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        // A stale socket from a previous run: refuse if a daemon answers there.
        if cfg.control_socket.exists() {
            if tokio::net::UnixStream::connect(&cfg.control_socket)
                .await
                .is_ok()
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "a daemon already answers on {}",
                        cfg.control_socket.display()
                    ),
                ));
            }
            let _ = std::fs::remove_file(&cfg.control_socket);
        }
        let sock_err = |e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!("control socket {}: {e}", cfg.control_socket.display()),
            )
        };
        l.control = Some(UnixListener::bind(&cfg.control_socket).map_err(sock_err)?);
        // Read and write for the daemon's user and, with `control_socket_group`, that
        // group's members (who may read status; changes stay with the daemon's user and
        // root); nobody else.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cfg.control_socket, std::fs::Permissions::from_mode(0o660))
                .map_err(sock_err)?;
        }
        if let Some(g) = &cfg.control_socket_group {
            let gid = config::group_id(g).ok_or_else(|| {
                sock_err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no group {g:?}"),
                ))
            })?;
            std::os::unix::fs::chown(&cfg.control_socket, None, Some(gid)).map_err(sock_err)?;
        }
        if let Some(a) = cfg.nbd_listen {
            let t = TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("NBD listener {a}: {e}")))?;
            l.nbd.push(t.into());
        }
        if let Some(p) = &cfg.nbd_unix {
            let _ = std::fs::remove_file(p);
            let u = UnixListener::bind(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("NBD socket {}: {e}", p.display()))
            })?;
            l.nbd.push(u.into());
        }
        if let Some(a) = cfg.metrics {
            l.metrics = Some(TcpListener::bind(a).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("metrics listener {a}: {e}"))
            })?);
        }
        Ok(l)
    }
}

/// How long a stop waits for the FUSE requests in flight: longer than a map's default
/// no-path queueing (60 s), as for NBD.
const FUSE_DRAIN_WAIT: Duration = Duration::from_secs(90);

/// A running daemon.
pub struct Daemon {
    shared: Arc<Shared>,
    tasks: tokio::task::JoinSet<()>,
    /// The NBD server: a stop waits for it to drain before the maps go.
    nbd: Option<tokio::task::JoinHandle<()>>,
    fuse: Option<export::fuse::FuseMount>,
    config_path: Option<PathBuf>,
}

impl Daemon {
    /// Start everything: portals (in the background), the checker, the control socket,
    /// the exports. Returns at once.
    pub fn start(
        cfg: DaemonConfig,
        listeners: Listeners,
        config_path: Option<PathBuf>,
    ) -> std::io::Result<Daemon> {
        Daemon::start_with_overlay(cfg, listeners, config_path, None)
    }

    /// As [`start`](Self::start), with `overlay` applied to the configuration each time
    /// `reconfigure` reads the file again: what the command line gave (`--portal`,
    /// `--initiator`…) outlives a reload.
    pub fn start_with_overlay(
        cfg: DaemonConfig,
        listeners: Listeners,
        config_path: Option<PathBuf>,
        overlay: Option<ConfigOverlay>,
    ) -> std::io::Result<Daemon> {
        let (bindings, warnings) = Bindings::load(cfg.bindings_file.as_deref());
        for w in warnings {
            warn!("{w}");
        }
        let (prkeys, warnings) = prkeys::PrKeys::load(cfg.bindings_file.as_deref());
        for w in warnings {
            warn!("{w}");
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let (epoch, started) = (Instant::now(), SystemTime::now());
        let shared = Arc::new(Shared {
            cfg: Mutex::new(cfg.clone()),
            state: Mutex::new(State {
                sessions: BTreeMap::new(),
                paths: BTreeMap::new(),
                maps: BTreeMap::new(),
                bindings,
                prkeys,
                portal_errors: BTreeMap::new(),
            }),
            exports: Exports::new(),
            timeline: timeline::Timeline::new(epoch, started),
            events,
            epoch,
            stop: tokio::sync::watch::Sender::new(false),
            config_path: config_path.clone(),
            overlay,
            membership: tokio::sync::Mutex::new(()),
            reconfiguring: tokio::sync::Mutex::new(()),
            ublk: Default::default(),
            nbd_devices: Default::default(),
            pathless: Default::default(),
        });
        shared.record(
            None,
            None,
            EventKind::DaemonStarted,
            format!("{} portal(s) configured", cfg.portals.len()),
        );
        let mut tasks = tokio::task::JoinSet::new();
        // Devices an earlier daemon left are taken over now, while the paths log in.
        shared.take_over_ublk();
        shared.start_portals(&cfg.portals);
        tasks.spawn(shared.clone().checker_loop());
        tasks.spawn(shared.clone().hurry_loop());
        let control = Control {
            shared: shared.clone(),
        };
        if let Some(l) = listeners.control {
            tasks.spawn(control::serve(l, control.clone()));
        }
        let nbd = if listeners.nbd.is_empty() {
            None
        } else {
            let server = NbdServer::new(shared.exports.clone(), NbdConfig::default());
            let mut stop = shared.stop.subscribe();
            Some(tokio::spawn(async move {
                server
                    .run(listeners.nbd, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }))
        };
        if let Some(l) = listeners.metrics {
            tasks.spawn(metrics::serve(l, shared.clone()));
        }
        let fuse = match &cfg.fuse_dir {
            Some(dir) => {
                // A daemon killed before it could unmount leaves a dead mount here.
                export::fuse::FuseMount::clear_stale(dir)?;
                std::fs::create_dir_all(dir)?;
                Some(export::fuse::FuseMount::mount(
                    shared.exports.clone(),
                    dir,
                    export::fuse::FuseConfig::default(),
                )?)
            }
            None => None,
        };
        Ok(Daemon {
            shared,
            tasks,
            nbd,
            fuse,
            config_path,
        })
    }

    pub fn control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    /// The NBD exports (map name → device), for in-process users.
    pub fn exports(&self) -> Exports<mpath_engine::MultipathDevice> {
        self.shared.exports.clone()
    }

    /// Wait until every configured portal was discovered and every session probed, or
    /// `timeout`. Maps keep growing afterwards as late paths arrive.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = {
                let st = self.shared.state();
                let cfg = self.shared.cfg();
                st.portal_errors.is_empty()
                    && st.sessions.len() >= cfg.portals.len()
                    && st.sessions.iter().all(|((a, t), s)| {
                        !s.is_up() || st.paths.values().any(|p| p.portal == *a && &p.target == t)
                    })
                    && st.sessions.values().all(|s| s.is_up())
            };
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Run until `shutdown` resolves or a `shutdown` request arrives, then stop.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut stop = self.shared.stop.subscribe();
        tokio::select! {
            _ = shutdown => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        self.stop().await;
    }

    /// Stop. Exports first, each drained: what a client already handed over completes
    /// (never failed because the daemon stops), what arrives afterwards is not taken — the
    /// NBD server stops reading requests and closes each connection once its in-flight
    /// requests are answered; FUSE holds new requests unanswered until the process exits;
    /// a ublk device is handed over, its held requests left to the kernel for the next
    /// daemon. Then the maps stop, then every session logs out.
    pub async fn stop(&mut self) {
        info!("stopping");
        let _ = self.shared.stop.send(true);
        let fuse = self.fuse.take().inspect(|f| {
            f.begin_drain();
        });
        self.shared.hand_off_ublk().await;
        self.shared.hand_off_nbd_devices().await;
        if let Some(nbd) = self.nbd.take() {
            // Bounded by the server's own drain timeout.
            let _ = nbd.await;
        }
        if let Some(f) = fuse {
            let left = tokio::task::spawn_blocking(move || {
                let left = f.drain(FUSE_DRAIN_WAIT);
                if let Err(e) = f.unmount() {
                    warn!("FUSE unmount: {e}");
                }
                left
            })
            .await
            .unwrap_or(0);
            if left > 0 {
                warn!("FUSE: {left} request(s) still in flight when the maps stop");
            }
        }
        let (maps, sessions): (Vec<_>, Vec<_>) = {
            let st = self.shared.state();
            (
                st.maps.values().map(|m| m.device.clone()).collect(),
                st.sessions.values().cloned().collect(),
            )
        };
        for m in maps {
            m.shutdown();
        }
        // All at once: a restart's next daemon starts only when this one has exited.
        let mut logouts = tokio::task::JoinSet::new();
        for s in sessions {
            logouts.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), s.logout()).await;
            });
        }
        while logouts.join_next().await.is_some() {}
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
        if let Some(p) = self.config_path.take() {
            let _ = p;
        }
        let sock = self.shared.cfg().control_socket;
        let _ = std::fs::remove_file(sock);
    }
}

impl Shared {
    /// Re-read the configuration file and apply what changed: new portals are logged in,
    /// removed ones logged out (their paths leave their maps; a map left without paths is
    /// removed), portals whose settings changed are logged in again; every session is
    /// rescanned (new LUNs join maps, LUNs no longer reported leave them, a changed capacity
    /// resizes its map); blacklist changes move LUNs out of or into maps; changed policies
    /// are applied to running maps (all but an alias, reported as pending). A file that
    /// does not parse changes nothing. Maps that did not change keep running untouched.
    pub async fn reconfigure(self: Arc<Self>) -> Result<String, String> {
        let Some(path) = self.config_path.clone() else {
            return Err(
                "the daemon was started without a configuration file: nothing to re-read".into(),
            );
        };
        let mut new = config::load_file(&path).map_err(|e| e.to_string())?;
        // What the command line gave stays (a portal given with --portal is not logged
        // out because the file does not list it).
        if let Some(o) = &self.overlay {
            o(&mut new);
        }
        // One reconfigure at a time (SIGHUP and the socket may race).
        let _one = self.reconfiguring.lock().await;
        let old = self.cfg();
        // A portal whose settings changed (CHAP, targets, digests) is logged out and in
        // again with the new ones.
        let changed: Vec<_> = new
            .portals
            .iter()
            .filter(|p| {
                old.portals
                    .iter()
                    .any(|o| o.address == p.address && o != *p)
            })
            .cloned()
            .collect();
        let added: Vec<_> = new
            .portals
            .iter()
            .filter(|p| !old.portals.iter().any(|o| o.address == p.address))
            .cloned()
            .collect();
        let removed: Vec<_> = old
            .portals
            .iter()
            .filter(|p| !new.portals.iter().any(|n| n.address == p.address))
            .map(|p| p.address)
            .collect();
        let blacklist_changed = old.blacklist != new.blacklist;
        *self.cfg.lock().unwrap_or_else(|e| e.into_inner()) = new;
        let mut removed_paths = 0;
        for addr in removed.iter().chain(changed.iter().map(|p| &p.address)) {
            removed_paths += self.clone().remove_portal(*addr).await;
        }
        self.start_portals(&added);
        self.start_portals(&changed);
        if blacklist_changed {
            removed_paths += self.reexamine_blacklist().await;
        }
        // Rescan every session: new LUNs join, known ones are skipped, LUNs gone leave.
        let sessions: Vec<_> = self
            .state()
            .sessions
            .iter()
            .map(|((a, t), s)| (*a, t.clone(), s.clone()))
            .collect();
        for (a, t, s) in sessions {
            if s.is_up() {
                self.scan_session(a, &t, &s, true).await;
            }
        }
        let policy_lines = self.apply_policies().await;
        let mut summary = format!(
            "reconfigured from {}: {} portal(s) added, {} removed, {} changed ({} path(s) left their maps)\n",
            path.display(),
            added.len(),
            removed.len(),
            changed.len(),
            removed_paths
        );
        for l in policy_lines {
            summary.push_str(&l);
            summary.push('\n');
        }
        self.record(
            None,
            None,
            EventKind::Reconfigured,
            summary.trim().to_string(),
        );
        Ok(summary)
    }

    /// Bring running maps in line with the (new) configuration's policies: the selector,
    /// grouping, failback, `no_path_retry` and flap damping go to the running engine
    /// (`MultipathDevice::set_config`: regroup, a fresh selector for the next I/O, the
    /// rest for later decisions; an operator's `disablequeueing` stays in force), and
    /// priorities (a changed prioritizer or its arguments) regroup the map. A changed
    /// alias renames the map and its exports at once (`rename_map`; connections and open
    /// files go on). One line per map that changed.
    async fn apply_policies(self: &Arc<Self>) -> Vec<String> {
        let cfg = self.cfg();
        let maps: Vec<_> = {
            let st = self.state();
            st.maps
                .values()
                .map(|m| {
                    (
                        m.name.clone(),
                        m.wwid.clone(),
                        m.policy.clone(),
                        m.device.clone(),
                        (m.vendor.clone(), m.product.clone()),
                    )
                })
                .collect()
        };
        let mut lines = Vec::new();
        for (name, wwid, running, dev, (vendor, product)) in maps {
            let want = cfg.resolve(Some(&wwid), &vendor, &product).policy;
            let mut applied = Vec::new();
            let mut pending = Vec::new();
            let mut changes = Vec::new();
            if want.selector != running.selector {
                changes.push(format!(
                    "selector {}",
                    config::selector_name(&want.selector)
                ));
            }
            if want.grouping != running.grouping {
                changes.push(format!("grouping {}", config::grouping_name(want.grouping)));
            }
            if want.failback != running.failback {
                changes.push(format!(
                    "failback {}",
                    config::failback_name(&want.failback)
                ));
            }
            if want.no_path != running.no_path {
                changes.push(format!(
                    "no_path_retry {}",
                    config::no_path_name(&want.no_path)
                ));
            }
            if want.flap != running.flap {
                changes.push("flap damping".to_string());
            }
            if (want.alua_transition_retry, want.alua_transition_timeout)
                != (
                    running.alua_transition_retry,
                    running.alua_transition_timeout,
                )
            {
                changes.push("ALUA transition timings".to_string());
            }
            if !changes.is_empty() {
                // The engine applies them all at once: regroup, a fresh selector for the
                // next I/O (what is in flight finishes on its path), failback, queueing
                // and damping for later decisions.
                match dev.set_config(want.clone()).await {
                    Ok(()) => {
                        if let Some(m) = self.state().maps.get_mut(&name) {
                            m.policy = want.clone();
                        }
                        applied.append(&mut changes);
                    }
                    Err(e) => pending.extend(changes.into_iter().map(|c| format!("{c} ({e})"))),
                }
            }
            // A new alias (or none: the friendly name or the WWID again) renames the map.
            let want_name = self.map_name(&cfg, &wwid);
            let name = if want_name != name {
                match self.rename_map(&name, &want_name) {
                    Ok(()) => {
                        applied.push(format!("renamed {name} -> {want_name}"));
                        want_name
                    }
                    Err(e) => {
                        pending.push(format!("name {want_name} ({e})"));
                        name
                    }
                }
            } else {
                name
            };
            let reprioritized = self.reprioritize(&name, &dev, &cfg).await;
            if reprioritized > 0 {
                applied.push(format!("{reprioritized} path(s) re-prioritized"));
            }
            {
                let mut st = self.state();
                if let Some(m) = st.maps.get_mut(&name) {
                    m.pending = if pending.is_empty() {
                        None
                    } else {
                        Some(pending.join(", "))
                    };
                }
            }
            if applied.is_empty() && pending.is_empty() {
                continue;
            }
            let mut line = format!("map {name}:");
            if !applied.is_empty() {
                line.push_str(&format!(" applied {}", applied.join(", ")));
            }
            if !pending.is_empty() {
                if !applied.is_empty() {
                    line.push(';');
                }
                line.push_str(&format!(
                    " pending until the map is re-created (a running map keeps them): {}",
                    pending.join(", ")
                ));
            }
            self.record(Some(&name), None, EventKind::PolicyChanged, line.clone());
            lines.push(line);
        }
        lines
    }

    /// Recompute the priority of every path of a map under `cfg`; tell the map of each
    /// change. How many changed.
    async fn reprioritize(
        self: &Arc<Self>,
        map: &str,
        dev: &Arc<mpath_engine::MultipathDevice>,
        cfg: &DaemonConfig,
    ) -> usize {
        let paths: Vec<_> = {
            let st = self.state();
            st.paths
                .values()
                .filter(|p| p.map.as_ref().is_some_and(|(m, _)| m == map))
                .map(|p| {
                    (
                        p.name.clone(),
                        p.portal,
                        p.target.clone(),
                        p.lu.clone(),
                        p.latency,
                        p.priority,
                        p.map.as_ref().map(|(_, id)| *id),
                    )
                })
                .collect()
        };
        let mut n = 0;
        for (name, portal, target, lu, latency, was, id) in paths {
            let prio = self.priority(cfg, &name, portal, &lu, latency);
            if prio == was {
                continue;
            }
            let Some(id) = id else { continue };
            if let Some(p) = self.state().paths.get_mut(&name) {
                p.priority = prio;
            }
            let info = self.path_info(&name, &target, &lu, prio);
            match dev.update_path(id, info).await {
                Ok(()) => n += 1,
                Err(e) => warn!(path = %name, "priority update refused: {e}"),
            }
        }
        n
    }

    /// Paths whose blacklisting changed are forgotten (a newly blacklisted one leaves its
    /// map) so that the rescan that follows adds them back under the new rules.
    async fn reexamine_blacklist(self: &Arc<Self>) -> usize {
        let cfg = self.cfg();
        let (leave, forget): (Vec<String>, Vec<String>) = {
            let st = self.state();
            let mut leave = Vec::new();
            let mut forget = Vec::new();
            for p in st.paths.values() {
                let Some(w) =
                    p.lu.wwid
                        .clone()
                        .or_else(|| p.lu.serial.as_ref().map(|s| format!("serial:{s}")))
                else {
                    continue;
                };
                let now = cfg.blacklist.excludes(&w, &p.lu.vendor, &p.lu.product);
                match (&p.excluded, now) {
                    (None, Some(_)) => leave.push(p.name.clone()),
                    (Some(_), None) => forget.push(p.name.clone()),
                    _ => {}
                }
            }
            (leave, forget)
        };
        {
            let mut st = self.state();
            for n in &forget {
                st.paths.remove(n);
            }
        }
        self.remove_paths(leave, "blacklisted by the new configuration")
            .await
    }

    /// Remove every path through a portal from its map and log out its sessions.
    async fn remove_portal(self: Arc<Self>, addr: std::net::SocketAddr) -> usize {
        self.state().portal_errors.remove(&addr);
        let names: Vec<String> = self
            .state()
            .paths
            .values()
            .filter(|p| p.portal == addr)
            .map(|p| p.name.clone())
            .collect();
        let n = self
            .remove_paths(names, "portal removed from the configuration")
            .await;
        let sessions: Vec<_> = {
            let mut st = self.state();
            let keys: Vec<_> = st
                .sessions
                .keys()
                .filter(|(a, _)| *a == addr)
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| st.sessions.remove(&k))
                .collect()
        };
        for s in sessions {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.logout()).await;
        }
        n
    }
}
