//! mpath's iSCSI target.
//!
//! One or more targets (IQNs), each with LUNs backed by memory, a file (optionally O_DIRECT)
//! or a sparse file; several portals at once, each portal group a SCSI target port and an
//! ALUA target port group; CHAP (one-way and mutual) and initiator ACLs; SendTargets that
//! lists every portal of a target; a control socket; fault injection per portal.
//!
//! Lifecycle is injected: [`Server::bind`] opens backends and listeners (port 0 picks a free
//! port, and the portal lists then carry the real one), [`Server::control`] hands out the
//! control handle, [`Server::run`] serves until the shutdown future resolves.
//!
//! The protocol lives in the sans-IO crates: `iscsi-session` (login, full feature phase) and
//! `scsi` (the device server). This crate moves bytes and wires them together.

pub mod backend;
pub mod config;
mod conn;
pub mod ctl;
pub mod faults;
mod registry;
pub mod size;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use scsi::{
    AluaMode as ScsiAluaMode, AluaState as ScsiAluaState, LogicalUnit, LuConfig, TargetPortGroup,
    TargetPorts,
};
use tokio::net::TcpListener;

pub use config::{AluaMode, AluaState, ServerConfig, TargetSpec};
pub use ctl::{CtlRequest, CtlResponse};
pub use faults::Fault;

use crate::backend::BackingSpec;
use crate::ctl::*;
use crate::faults::PortalFaults;
use crate::registry::Sessions;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("target {target} LUN {lun}: cannot open backing store {backing}: {source}")]
    Backing {
        target: String,
        lun: u16,
        backing: String,
        source: std::io::Error,
    },
    #[error("target {target} LUN {lun}: {source}")]
    Lu {
        target: String,
        lun: u16,
        source: scsi::LuConfigError,
    },
    #[error("target {target}: {message}")]
    Ports { target: String, message: String },
    #[error("cannot listen on portal {portal}: {source}")]
    Listen {
        portal: SocketAddr,
        source: std::io::Error,
    },
}

/// A LU as served.
pub(crate) struct LunRuntime {
    pub lu: Arc<LogicalUnit>,
    pub backing: BackingSpec,
    /// Execute on a blocking thread rather than inline in the connection task.
    pub may_block: bool,
}

/// A target as served.
pub(crate) struct TargetRuntime {
    pub spec: TargetSpec,
    pub ports: Arc<TargetPorts>,
    pub luns: BTreeMap<u16, LunRuntime>,
    pub lun_list: Vec<scsi::Lun>,
}

impl TargetRuntime {
    /// The portal group a portal belongs to in this target, if any.
    pub fn group_of(&self, portal: SocketAddr) -> Option<u16> {
        self.spec
            .portal_groups
            .iter()
            .find(|g| g.portals.contains(&portal))
            .map(|g| g.tag)
    }

    pub fn allows(&self, initiator: &str) -> bool {
        self.spec.allowed_initiators.is_empty()
            || self
                .spec
                .allowed_initiators
                .iter()
                .any(|a| a.eq_ignore_ascii_case(initiator))
    }
}

pub(crate) struct Inner {
    pub cfg: ServerConfig,
    pub targets: Vec<Arc<TargetRuntime>>,
    pub faults: HashMap<SocketAddr, Arc<PortalFaults>>,
    pub sessions: Mutex<Sessions>,
}

impl Inner {
    pub fn target(&self, name: &str) -> Option<&Arc<TargetRuntime>> {
        self.targets
            .iter()
            .find(|t| t.spec.iqn.eq_ignore_ascii_case(name))
    }

    pub fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bound, ready-to-run target server.
pub struct Server {
    inner: Arc<Inner>,
    listeners: Vec<(SocketAddr, TcpListener)>,
}

impl Server {
    /// Open every backing store, build the LUs, and listen on every portal.
    pub async fn bind(mut cfg: ServerConfig) -> Result<Server, StartError> {
        // Listen first: port 0 becomes a real port, which SendTargets must report.
        let mut listeners = Vec::new();
        let mut rebound: HashMap<SocketAddr, SocketAddr> = HashMap::new();
        for portal in cfg.portals() {
            let l = TcpListener::bind(portal)
                .await
                .map_err(|source| StartError::Listen { portal, source })?;
            let actual = l
                .local_addr()
                .map_err(|source| StartError::Listen { portal, source })?;
            rebound.insert(portal, actual);
            listeners.push((actual, l));
        }
        for t in &mut cfg.targets {
            for g in &mut t.portal_groups {
                for p in &mut g.portals {
                    *p = rebound[p];
                }
            }
        }
        let mut targets = Vec::new();
        for spec in &cfg.targets {
            targets.push(Arc::new(build_target(spec)?));
        }
        let faults = listeners
            .iter()
            .map(|(a, _)| (*a, Arc::new(PortalFaults::default())))
            .collect();
        Ok(Server {
            inner: Arc::new(Inner {
                cfg,
                targets,
                faults,
                sessions: Mutex::new(Sessions::default()),
            }),
            listeners,
        })
    }

    /// The configuration as served (with real ports for portals configured with port 0).
    pub fn config(&self) -> &ServerConfig {
        &self.inner.cfg
    }

    /// The addresses the server listens on.
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(a, _)| *a).collect()
    }

    pub fn control(&self) -> Control {
        Control {
            inner: self.inner.clone(),
        }
    }

    /// Serve until `shutdown` resolves; then stop accepting and close every connection.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut accepts = tokio::task::JoinSet::new();
        for (addr, listener) in self.listeners {
            let inner = self.inner.clone();
            let stop = stop_rx.clone();
            accepts.spawn(accept_loop(inner, addr, listener, stop));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        accepts.abort_all();
        while accepts.join_next().await.is_some() {}
        // Connections watch the same signal and close themselves.
        let ids = self.inner.sessions().all_ids();
        for id in ids {
            self.inner.sessions().kill(id);
        }
    }
}

async fn accept_loop(
    inner: Arc<Inner>,
    addr: SocketAddr,
    listener: TcpListener,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let inner = inner.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    conn::serve(inner, stream, addr, peer, stop).await;
                });
            }
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                tracing::warn!(portal = %addr, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

fn scsi_state(s: AluaState) -> ScsiAluaState {
    match s {
        AluaState::ActiveOptimized => ScsiAluaState::ACTIVE_OPTIMIZED,
        AluaState::ActiveNonOptimized => ScsiAluaState::ACTIVE_NON_OPTIMIZED,
        AluaState::Standby => ScsiAluaState::STANDBY,
        AluaState::Unavailable => ScsiAluaState::UNAVAILABLE,
        AluaState::Transitioning => ScsiAluaState::TRANSITIONING,
    }
}

fn config_state(s: ScsiAluaState) -> AluaState {
    match s {
        ScsiAluaState::ACTIVE_NON_OPTIMIZED => AluaState::ActiveNonOptimized,
        ScsiAluaState::STANDBY => AluaState::Standby,
        ScsiAluaState::UNAVAILABLE => AluaState::Unavailable,
        ScsiAluaState::TRANSITIONING => AluaState::Transitioning,
        _ => AluaState::ActiveOptimized,
    }
}

fn build_target(spec: &TargetSpec) -> Result<TargetRuntime, StartError> {
    let mode = match spec.alua {
        AluaMode::None => ScsiAluaMode::None,
        AluaMode::Implicit => ScsiAluaMode::Implicit,
        AluaMode::Explicit => ScsiAluaMode::Explicit,
        AluaMode::Both => ScsiAluaMode::Both,
    };
    let groups = spec
        .portal_groups
        .iter()
        .map(|g| {
            let mut tpg = TargetPortGroup::new(g.tag, vec![g.tag]);
            tpg.state = scsi_state(g.state);
            tpg.preferred = g.preferred;
            tpg
        })
        .collect();
    let ports = Arc::new(
        TargetPorts::new(spec.iqn.clone(), mode, groups)
            .map_err(|e| StartError::Ports {
                target: spec.iqn.clone(),
                message: e.to_string(),
            })?
            .with_stpg_policy(spec.stpg),
    );
    let mut luns = BTreeMap::new();
    for l in &spec.luns {
        let backend = l.backing.open().map_err(|source| StartError::Backing {
            target: spec.iqn.clone(),
            lun: l.id,
            backing: l.backing.to_string(),
            source,
        })?;
        let (naa_id, serial) = identity(&spec.iqn, l.id);
        let mut c = LuConfig::new(
            scsi::Lun(l.id),
            l.block_size,
            l.serial.clone().unwrap_or(serial),
            naa_id,
        );
        c.vendor = l.vendor.clone();
        c.product = l.product.clone();
        c.thin = l.backing.thin();
        let lu = LogicalUnit::new(c, Arc::from(backend), ports.clone()).map_err(|source| {
            StartError::Lu {
                target: spec.iqn.clone(),
                lun: l.id,
                source,
            }
        })?;
        luns.insert(
            l.id,
            LunRuntime {
                lu: Arc::new(lu),
                may_block: l.backing.may_block(),
                backing: l.backing.clone(),
            },
        );
    }
    let lun_list = luns.keys().map(|id| scsi::Lun(*id)).collect();
    Ok(TargetRuntime {
        spec: spec.clone(),
        ports,
        luns,
        lun_list,
    })
}

/// The IEEE company identifier in our NAA names: 0x026d70 has the locally-administered bit
/// set (IEEE 802 "X" bit), so it can never collide with a registered OUI.
const NAA_COMPANY_ID: u32 = 0x02_6d_70;

/// A stable identity for LU `lun` of `target`: the NAA IEEE Registered Extended name (the
/// WWID multipath groups paths by, the same through every portal and across restarts) and
/// a unit serial number, both derived from the names by FNV-1a.
pub fn identity(target: &str, lun: u16) -> ([u8; 16], String) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in target.to_ascii_lowercase().bytes().chain(lun.to_be_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut h2 = h;
    for b in b"mpath-lu" {
        h2 ^= *b as u64;
        h2 = h2.wrapping_mul(0x0100_0000_01b3);
    }
    let mut naa = [0u8; 16];
    // NAA 6 | 24-bit company id | 36-bit vendor specific | 64-bit vendor specific extension
    let hi: u64 = (6u64 << 60) | ((NAA_COMPANY_ID as u64) << 36) | (h >> 28);
    naa[..8].copy_from_slice(&hi.to_be_bytes());
    naa[8..].copy_from_slice(&h2.to_be_bytes());
    (naa, format!("{:016x}", h))
}

/// The WWID in the `3` + NAA hex form Linux multipath prints.
pub fn wwid(naa: &[u8; 16]) -> String {
    let mut s = String::from("3");
    for b in naa {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Control handle: everything the control socket can do, callable in-process.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    /// Execute one control request.
    pub fn handle(&self, req: CtlRequest) -> CtlResponse {
        let r = match req {
            CtlRequest::Status => return CtlResponse::Status(self.status()),
            CtlRequest::Sessions => {
                return CtlResponse::Sessions {
                    sessions: self.sessions(),
                }
            }
            CtlRequest::SetAlua {
                target,
                group,
                state,
            } => self.set_alua(&target, group, state),
            CtlRequest::SetLunOnline {
                target,
                lun,
                online,
            } => self.set_lun_online(&target, lun, online),
            CtlRequest::SetLunBusy { target, lun, on } => self.set_lun_busy(&target, lun, on),
            CtlRequest::SetLunReadErrors { target, lun, on } => {
                self.set_lun_read_errors(&target, lun, on)
            }
            CtlRequest::RescanLun { target, lun } => self.rescan_lun(&target, lun).map(|_| ()),
            CtlRequest::SetFault { portal, fault } => self.set_fault(portal, fault),
            CtlRequest::ResetPortal { portal } => self.reset_portal(portal),
        };
        match r {
            Ok(()) => CtlResponse::Ok,
            Err(message) => CtlResponse::Error { message },
        }
    }

    pub fn status(&self) -> StatusInfo {
        let counts = self.inner.sessions().connections_per_portal();
        StatusInfo {
            targets: self
                .inner
                .targets
                .iter()
                .map(|t| TargetInfo {
                    iqn: t.spec.iqn.clone(),
                    alua: t.spec.alua.as_str().to_string(),
                    stpg: t.spec.stpg.as_str().to_string(),
                    portal_groups: t
                        .ports
                        .groups()
                        .into_iter()
                        .map(|g| PortalGroupInfo {
                            tag: g.id,
                            portals: t
                                .spec
                                .portal_groups
                                .iter()
                                .find(|s| s.tag == g.id)
                                .map(|s| s.portals.clone())
                                .unwrap_or_default(),
                            state: config_state(g.state),
                            preferred: g.preferred,
                        })
                        .collect(),
                    luns: t
                        .luns
                        .iter()
                        .map(|(id, l)| LunInfo {
                            id: *id,
                            backing: l.backing.to_string(),
                            size: l.lu.capacity_blocks() * l.lu.config().block_size as u64,
                            block_size: l.lu.config().block_size,
                            online: l.lu.is_online(),
                            wwid: wwid(&l.lu.config().naa_id),
                        })
                        .collect(),
                })
                .collect(),
            portals: self
                .inner
                .faults
                .iter()
                .map(|(p, f)| PortalInfo {
                    portal: *p,
                    fault: f.current().fault,
                    connections: counts.get(p).copied().unwrap_or(0),
                })
                .collect(),
        }
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.inner.sessions().infos()
    }

    pub fn set_alua(&self, target: &str, group: u16, state: AluaState) -> Result<(), String> {
        let t = self
            .inner
            .target(target)
            .ok_or_else(|| format!("no target {target}"))?;
        t.ports
            .set_state(group, scsi_state(state))
            .map_err(|e| format!("target {target} group {group}: {e}"))
    }

    /// Apply `f` to LUN `lun` of `target`.
    fn with_lu(
        &self,
        target: &str,
        lun: u16,
        f: impl FnOnce(&scsi::lu::LogicalUnit),
    ) -> Result<(), String> {
        let t = self
            .inner
            .target(target)
            .ok_or_else(|| format!("no target {target}"))?;
        let l = t
            .luns
            .get(&lun)
            .ok_or_else(|| format!("target {target} has no LUN {lun}"))?;
        f(&l.lu);
        Ok(())
    }

    pub fn set_lun_online(&self, target: &str, lun: u16, online: bool) -> Result<(), String> {
        self.with_lu(target, lun, |lu| lu.set_online(online))
    }

    /// Every READ of the LUN fails with MEDIUM ERROR (03/11/00) while `on`; TEST UNIT
    /// READY still passes.
    pub fn set_lun_read_errors(&self, target: &str, lun: u16, on: bool) -> Result<(), String> {
        self.with_lu(target, lun, |lu| lu.set_read_errors(on))
    }

    /// Every command to the LUN is answered BUSY while `on`.
    pub fn set_lun_busy(&self, target: &str, lun: u16, on: bool) -> Result<(), String> {
        self.with_lu(target, lun, |lu| lu.set_busy(on))
    }

    /// Read LUN `lun`'s backing store's size again (an operator grew or shrank the file):
    /// a changed capacity is announced to every initiator with UNIT ATTENTION 2A/09
    /// CAPACITY DATA HAS CHANGED. The capacity now, in bytes. A memory LU keeps its size.
    pub fn rescan_lun(&self, target: &str, lun: u16) -> Result<u64, String> {
        let mut r = Ok(0);
        self.with_lu(target, lun, |lu| {
            r = lu
                .rescan_backend()
                .map_err(|e| format!("target {target} LUN {lun}: reading its size: {e}"));
        })?;
        let bytes = r?;
        tracing::info!(%target, lun, bytes, "LUN rescanned");
        Ok(bytes)
    }

    pub fn set_fault(&self, portal: SocketAddr, fault: Fault) -> Result<(), String> {
        let f = self.portal(portal)?;
        tracing::info!(%portal, %fault, "fault injection");
        f.set(fault);
        Ok(())
    }

    pub fn reset_portal(&self, portal: SocketAddr) -> Result<(), String> {
        let f = self.portal(portal)?;
        tracing::info!(%portal, "resetting every connection of the portal");
        f.reset_connections();
        Ok(())
    }

    fn portal(&self, portal: SocketAddr) -> Result<&Arc<PortalFaults>, String> {
        self.inner.faults.get(&portal).ok_or_else(|| {
            let mut known: Vec<String> = self.inner.faults.keys().map(|p| p.to_string()).collect();
            known.sort();
            format!("no portal {portal} (portals: {})", known.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_naa6() {
        let (a, s) = identity("iqn.2026-01.io.mpath:demo", 1);
        let (b, _) = identity("IQN.2026-01.io.mpath:DEMO", 1);
        let (c, _) = identity("iqn.2026-01.io.mpath:demo", 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a[0] >> 4, 6);
        assert_eq!(s.len(), 16);
        assert!(wwid(&a).starts_with("36026d70"));
    }
}
