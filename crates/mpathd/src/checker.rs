//! The checker loop (multipathd's `checkerloop`): probe paths, tell each map what its
//! checker sees, and refresh priorities.
//!
//! Failed paths are checked every `checker_interval` (2 s): that is how they are
//! reinstated. Healthy paths are checked every `checker_interval_ok` (10 s) to catch a LU
//! that fails I/O while its connection is fine — the transport itself pushes connection
//! failures at once, so the checker is not how failures are found.

use std::sync::Arc;
use std::time::{Duration, Instant};

use block::{DataPhase, IoErrorKind, ScsiRequest};
use bytes::Bytes;
use iscsi_initiator::probe::LuInfo;
use mpath_policy::{CheckerState, DmState};
use scsi::cdb::build;
use tracing::debug;

use crate::config::{CheckerKind, PrioritizerKind};
use crate::daemon::Shared;

/// How often the loop looks for paths due a check. Checks themselves run at their own
/// intervals; this bounds how late one can start.
const TICK: Duration = Duration::from_millis(250);

/// One check's outcome.
struct Checked {
    name: String,
    state: CheckerState,
    latency: Duration,
    /// New ALUA facts, with the alua prioritizer.
    alua: Option<(scsi::AluaState, bool)>,
    why: String,
    /// For a check that found the path down: the reason a path it fails is recorded with.
    fail: Option<block::PathFailReason>,
}

impl Shared {
    pub async fn checker_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut round: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
            round += 1;
            let cfg = self.cfg();
            let now = Instant::now();
            // Take what to check; no lock held during the I/O.
            let due: Vec<(String, iscsi_initiator::IscsiPath, LuInfo)> = {
                let st = self.state();
                st.paths
                    .values()
                    .filter(|p| p.excluded.is_none() && p.next_check <= now)
                    .map(|p| (p.name.clone(), p.path.clone(), p.lu.clone()))
                    .collect()
            };
            self.retry_waiting(&cfg, now);
            if due.is_empty() {
                continue;
            }
            let mut set = tokio::task::JoinSet::new();
            for (name, path, lu) in due {
                // The LU's own checker and prioritizer: its device and multipath entries.
                let r = cfg.resolve(
                    crate::daemon::lu_wwid(&lu).as_deref(),
                    &lu.vendor,
                    &lu.product,
                );
                let kind = r.checker;
                let alua = r.prioritizer == PrioritizerKind::Alua;
                set.spawn(async move { check(name, path, kind, alua, lu, round).await });
            }
            while let Some(r) = set.join_next().await {
                let Ok(c) = r else { continue };
                self.apply_check(c, &cfg, now).await;
            }
        }
    }

    /// Paths that wait for a map (their ALUA port refused READ CAPACITY and no active
    /// path to the LU was known) are probed again at the failed-path interval: once the
    /// port serves, the path is added as if new (creating its map, which then takes in the
    /// others still waiting).
    fn retry_waiting(self: &Arc<Self>, cfg: &crate::config::DaemonConfig, now: Instant) {
        let waiting: Vec<_> = {
            let mut st = self.state();
            st.paths
                .values_mut()
                .filter(|p| p.excluded.as_deref() == Some(crate::daemon::WAITING))
                .filter(|p| p.next_check <= now)
                .map(|p| {
                    p.next_check = now + cfg.checker_interval;
                    (
                        p.name.clone(),
                        p.portal,
                        p.target.clone(),
                        p.lun,
                        p.path.clone(),
                    )
                })
                .collect()
        };
        for (name, addr, target, lun, path) in waiting {
            let me = self.clone();
            tokio::spawn(async move {
                // Waiting for a port that serves the LU: one that tells its capacity.
                let Ok(lu) = iscsi_initiator::probe::probe_lu(&path).await else {
                    return;
                };
                if lu.blocks == 0 {
                    return;
                }
                let latency = tur_latency(&path).await;
                {
                    let mut st = me.state();
                    match st.paths.get(&name) {
                        Some(p) if p.excluded.as_deref() == Some(crate::daemon::WAITING) => {
                            st.paths.remove(&name);
                        }
                        _ => return,
                    }
                }
                me.add_path(addr, &target, lun, path, lu, latency).await;
            });
        }
    }

    /// `started`: when the check was taken as due.
    async fn apply_check(
        self: &Arc<Self>,
        c: Checked,
        cfg: &crate::config::DaemonConfig,
        started: Instant,
    ) {
        // Record, decide what to tell the map, release the lock, then tell it.
        let (map, id, device, changed, new_prio, info) = {
            let mut st = self.state();
            let Some(p) = st.paths.get_mut(&c.name) else {
                return;
            };
            let changed = p.checker != c.state;
            p.checker = c.state;
            p.last_check = Some(Instant::now());
            if c.state == CheckerState::Up {
                p.latency = Some(match p.latency {
                    Some(l) => (l * 7 + c.latency) / 8,
                    None => c.latency,
                });
            }
            if let Some(a) = c.alua {
                p.lu.alua = Some(a);
            }
            let latency = p.latency;
            let (portal, lu, name) = (p.portal, p.lu.clone(), p.name.clone());
            let target = p.target.clone();
            let map = p.map.clone();
            drop(st);
            let prio = self.priority(cfg, &name, portal, &lu, latency);
            let mut st = self.state();
            let Some(p) = st.paths.get_mut(&c.name) else {
                return;
            };
            let prio_changed = p.priority != prio;
            p.priority = prio;
            let Some((map, id)) = map else { return };
            let Some(m) = st.maps.get(&map) else { return };
            let info = self.path_info(&name, &target, &lu, prio);
            (
                map,
                id,
                m.device.clone(),
                changed,
                prio_changed.then_some(prio),
                info,
            )
        };
        if changed {
            debug!(path = %c.name, state = ?c.state, "checker: {}", c.why);
        }
        // A map with a reservation key waits for the checker to reinstate a path (see
        // `persist`): the key goes on the path before this report lets it carry I/O again
        // (its registration may not have outlived what took it down).
        if c.state == CheckerState::Up && self.pr_key(&map).is_some() {
            let out = match device.status().await {
                Ok(s) => s.view.paths.iter().find(|p| p.id == id).is_some_and(|p| {
                    p.state.dm == DmState::Failed || p.state.checker != CheckerState::Up
                }),
                Err(_) => false,
            };
            let ip = self.state().paths.get(&c.name).map(|p| p.path.clone());
            if let (true, Some(ip)) = (out, ip) {
                self.register_path(&map, &c.name, &ip).await;
            }
        }
        if let Err(e) = device
            .checker_report_because(id, c.state, c.fail.clone())
            .await
        {
            debug!(path = %c.name, %map, "checker report refused: {e}");
        }
        if new_prio.is_some() {
            if let Err(e) = device.update_path(id, info).await {
                debug!(path = %c.name, %map, "priority update refused: {e}");
            }
        }
        // Next check: failed (or not up) paths soon, healthy ones later.
        let dm_failed = match device.status().await {
            Ok(s) => s
                .view
                .paths
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.state.dm == DmState::Failed)
                .unwrap_or(false),
            Err(_) => true,
        };
        let interval = if dm_failed || c.state != CheckerState::Up {
            cfg.checker_interval
        } else {
            cfg.checker_interval_ok
        };
        if let Some(p) = self.state().paths.get_mut(&c.name) {
            // Unless a check was asked for meanwhile (the LU announced a change while this
            // one ran: its answer may predate the change).
            if p.next_check <= started {
                p.next_check = Instant::now() + interval;
            }
        }
    }
}

async fn check(
    name: String,
    path: iscsi_initiator::IscsiPath,
    kind: CheckerKind,
    alua: bool,
    lu: LuInfo,
    round: u64,
) -> Checked {
    let blocks = lu.blocks;
    let t0 = Instant::now();
    let req = match kind {
        CheckerKind::Tur => ScsiRequest {
            cdb: Bytes::copy_from_slice(build::test_unit_ready().as_bytes()),
            data: DataPhase::None,
        },
        CheckerKind::Readsector0 => read_block(0),
        // A block that moves across the LU: a LU failing only part of its range shows.
        CheckerKind::Directio => read_block(if blocks > 1 {
            round.wrapping_mul(0x9e37_79b9) % blocks
        } else {
            0
        }),
    };
    if !path.session().is_up() {
        // The session's own account of why it is down, not a guess.
        let fail = match path.session().state() {
            iscsi_initiator::SessionState::Recovering { reason, .. }
            | iscsi_initiator::SessionState::GaveUp(reason) => reason,
            iscsi_initiator::SessionState::Connecting => {
                block::PathFailReason::new(block::PathFailKind::LoginFailed, "not logged in yet")
            }
            _ => {
                block::PathFailReason::new(block::PathFailKind::ConnectionClosed, "session closed")
            }
        };
        return Checked {
            name,
            state: CheckerState::Down,
            latency: t0.elapsed(),
            alua: None,
            why: format!("session down: {fail}"),
            fail: Some(fail),
        };
    }
    // Once: the checker judges BUSY and transitioning itself (below) rather than wait.
    let result = path.command_once(req).await.map(|_| ());
    let fail = result.as_ref().err().map(|e| fail_reason(kind, e));
    let (state, why) = verdict(kind, result);
    let latency = t0.elapsed();
    let mut alua_now = None;
    // REPORT TARGET PORT GROUPS alone: it answers in every ALUA state (a full probe fails
    // on a standby port, so a path going standby would keep its old priority).
    if alua && state != CheckerState::Down && lu.tpgs != 0 {
        alua_now = crate::probe::alua_state(&path, &lu).await;
    }
    Checked {
        name,
        state,
        latency,
        alua: alua_now,
        why,
        fail: fail.filter(|_| state == CheckerState::Down),
    }
}

/// The reason a path is failed with when `kind`'s check met `e`: what the transport or the
/// target said, not a guess.
fn fail_reason(kind: CheckerKind, e: &block::IoError) -> block::PathFailReason {
    use block::{PathFailKind, PathFailReason};
    use mpath_policy::{classify, ErrorClass};
    let what = match kind {
        CheckerKind::Tur => "TEST UNIT READY",
        CheckerKind::Readsector0 | CheckerKind::Directio => "READ",
    };
    // The engine's own decision table: a path condition or a transport failure is the
    // reason the engine would record; the target refusing the check's I/O is the check's.
    match classify(e) {
        ErrorClass::PathFailure { reason, .. } if e.condition().is_none() => reason,
        ErrorClass::PathFailure { reason, .. } => PathFailReason::new(
            reason.kind,
            format!("{what} through the path: {}", e.detail),
        ),
        _ => PathFailReason::new(
            PathFailKind::CheckFailed,
            format!("{what} through the path: {}", e.detail),
        ),
    }
}

/// What a check's answer says about the path.
fn verdict(kind: CheckerKind, r: Result<(), block::IoError>) -> (CheckerState, String) {
    match r {
        Ok(()) => (CheckerState::Up, "ok".to_string()),
        Err(e) => {
            // ALUA standby answers but serves nothing: a ghost (usable last); so does a
            // port in transition, until it settles (the engine owns I/O's transition
            // budget). A busy target answers: the path works.
            let condition = e.condition();
            if condition.is_some_and(|c| c.is_busy()) {
                (CheckerState::Up, e.to_string())
            } else if matches!(condition, Some(block::Condition::AluaStandby))
                || condition.is_some_and(|c| c.is_transitioning())
            {
                (CheckerState::Ghost, e.to_string())
            } else if e.kind == IoErrorKind::Target && kind == CheckerKind::Tur {
                // TUR refused for a reason that is not the path's (e.g. reservation conflict):
                // the path answers.
                (CheckerState::Up, e.to_string())
            } else {
                // A read that fails (a medium error included) is the LU failing I/O through
                // this path: readsector0 and directio report it down even though TEST UNIT
                // READY would pass.
                (CheckerState::Down, e.to_string())
            }
        }
    }
}

/// How long one TEST UNIT READY takes through `path` (whatever its answer).
pub(crate) async fn tur_latency(path: &iscsi_initiator::IscsiPath) -> Duration {
    let t0 = Instant::now();
    let _ = path
        .command(ScsiRequest {
            cdb: Bytes::copy_from_slice(build::test_unit_ready().as_bytes()),
            data: DataPhase::None,
        })
        .await;
    t0.elapsed()
}

fn read_block(lba: u64) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(build::read_16(lba, 1, false).as_bytes()),
        // One block of up to 4 KiB: the LU's block size bounds what comes back.
        data: DataPhase::In { len: 4096 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::IoError;
    use scsi::sense::{self, SenseKey};
    use scsi::{Sense, SenseFormat};

    fn failed(key: SenseKey, asc: scsi::sense::Asc) -> Result<(), IoError> {
        let raw = Sense::new(key, asc).encode(SenseFormat::Fixed);
        Err(IoError::from_scsi_status(
            0x02,
            Bytes::copy_from_slice(raw.as_bytes()),
        ))
    }

    // The in-process target cannot make a LU fail reads while TEST UNIT READY passes, so
    // that case is decided here from the answers such a LU gives.
    #[test]
    fn a_read_error_is_down_for_the_read_checkers_only() {
        let medium = || failed(SenseKey::MEDIUM_ERROR, sense::UNRECOVERED_READ_ERROR);
        assert_eq!(
            verdict(CheckerKind::Directio, medium()).0,
            CheckerState::Down
        );
        assert_eq!(
            verdict(CheckerKind::Readsector0, medium()).0,
            CheckerState::Down
        );
        // The same LU answers TEST UNIT READY: tur sees it up.
        assert_eq!(verdict(CheckerKind::Tur, Ok(())).0, CheckerState::Up);
    }

    #[test]
    fn a_failed_check_says_what_it_saw() {
        use block::PathFailKind;
        let medium = failed(SenseKey::MEDIUM_ERROR, sense::UNRECOVERED_READ_ERROR).unwrap_err();
        let r = fail_reason(CheckerKind::Directio, &medium);
        assert_eq!(r.kind, PathFailKind::CheckFailed);
        assert_eq!(r.detail, "READ through the path: MEDIUM ERROR 11/00");
        let offline = failed(
            SenseKey::NOT_READY,
            sense::LOGICAL_UNIT_NOT_READY_MANUAL_INTERVENTION_REQUIRED,
        )
        .unwrap_err();
        let r = fail_reason(CheckerKind::Tur, &offline);
        assert_eq!(r.kind, PathFailKind::NotReady);
        assert!(
            r.detail.starts_with("TEST UNIT READY through the path"),
            "{r}"
        );
        // The transport's own account wins.
        let stalled = IoError::path_failed(PathFailKind::Stalled, "no answer for 400 ms");
        let r = fail_reason(CheckerKind::Tur, &stalled);
        assert_eq!(r.kind, PathFailKind::Stalled);
        assert_eq!(r.detail, "no answer for 400 ms");
    }

    #[test]
    fn standby_and_transitioning_are_ghosts_busy_is_up_not_ready_is_down() {
        for k in [
            CheckerKind::Tur,
            CheckerKind::Readsector0,
            CheckerKind::Directio,
        ] {
            let standby = failed(SenseKey::NOT_READY, sense::TARGET_PORT_IN_STANDBY_STATE);
            assert_eq!(verdict(k, standby).0, CheckerState::Ghost, "{k:?}");
            let offline = failed(SenseKey::NOT_READY, sense::TARGET_PORT_IN_UNAVAILABLE_STATE);
            assert_eq!(verdict(k, offline).0, CheckerState::Down, "{k:?}");
            let transitioning = failed(
                SenseKey::NOT_READY,
                sense::ASYMMETRIC_ACCESS_STATE_TRANSITION,
            );
            assert_eq!(verdict(k, transitioning).0, CheckerState::Ghost, "{k:?}");
            // A busy target answers: the path works.
            for status in [0x08, 0x28] {
                let busy = Err(IoError::from_scsi_status(status, Bytes::new()));
                assert_eq!(verdict(k, busy).0, CheckerState::Up, "{k:?}");
            }
            assert_eq!(verdict(k, Ok(())).0, CheckerState::Up, "{k:?}");
        }
    }
}
