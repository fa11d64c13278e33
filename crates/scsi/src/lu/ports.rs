//! The target's ports and ALUA target port groups, shared by every LU of
//! the target.
//!
//! Group membership is fixed at construction; access states and PREF bits
//! live in atomics so the I/O path reads a port's state without a lock.
//! Every state change bumps a generation counter: each LU compares the
//! counter with the value an I_T nexus last saw and queues UNIT ATTENTION
//! ASYMMETRIC ACCESS STATE CHANGED (2a/06) on that nexus's next command.
//! That reaches every I_T nexus of every LU without a registry of LUs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::alua::{
    AluaMode, AluaState, AluaStatus, StpgPolicy, TargetPortGroupDescriptor, TargetPortGroupsData,
    SUPPORTS_ACTIVE_NON_OPTIMIZED, SUPPORTS_ACTIVE_OPTIMIZED, SUPPORTS_STANDBY,
    SUPPORTS_TRANSITIONING, SUPPORTS_UNAVAILABLE,
};
use crate::error::ParamError;

/// SUPPORTED STATES of a group unless configured otherwise: every state a
/// target of this kind can actually be put in.
pub const DEFAULT_SUPPORTED_STATES: u8 = SUPPORTS_TRANSITIONING
    | SUPPORTS_UNAVAILABLE
    | SUPPORTS_STANDBY
    | SUPPORTS_ACTIVE_NON_OPTIMIZED
    | SUPPORTS_ACTIVE_OPTIMIZED;

/// IMPLICIT TRANSITION TIME reported in the extended RTPG header: our
/// transitions are instantaneous, so the smallest non-zero value.
const IMPLICIT_TRANSITION_TIME_SECS: u8 = 1;

/// A target port group as configured or reported.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TargetPortGroup {
    pub id: u16,
    pub preferred: bool,
    pub state: AluaState,
    /// SUPPORTED STATES bits (`crate::alua::SUPPORTS_*`).
    pub supported: u8,
    pub relative_target_ports: Vec<u16>,
}

impl TargetPortGroup {
    /// An active/optimized group with the default supported states.
    pub fn new(id: u16, relative_target_ports: Vec<u16>) -> TargetPortGroup {
        TargetPortGroup {
            id,
            preferred: false,
            state: AluaState::ACTIVE_OPTIMIZED,
            supported: DEFAULT_SUPPORTED_STATES,
            relative_target_ports,
        }
    }
}

/// Why a port configuration or state change was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PortsError {
    #[error("target port group {0} does not exist")]
    UnknownGroup(u16),
    #[error("target port group {0} is defined twice")]
    DuplicateGroup(u16),
    #[error("relative target port {0} is in more than one group")]
    DuplicatePort(u16),
    #[error("relative target port 0 is reserved")]
    ZeroPort,
    #[error("target port group {group} does not support state {state:?}")]
    UnsupportedState { group: u16, state: AluaState },
}

struct Group {
    id: u16,
    supported: u8,
    ports: Vec<u16>,
    preferred: AtomicBool,
    state: AtomicU8,
    status: AtomicU8,
}

/// Target name, target ports and ALUA groups; thread-safe.
pub struct TargetPorts {
    target_name: String,
    mode: AluaMode,
    stpg: StpgPolicy,
    groups: Vec<Group>,
    /// (relative target port, index into `groups`), sorted by port.
    port_index: Vec<(u16, usize)>,
    generation: AtomicU64,
    /// Serialises state changes so a multi-group SET TARGET PORT GROUPS is
    /// applied as one transition.
    transition: Mutex<()>,
}

impl std::fmt::Debug for TargetPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetPorts")
            .field("target_name", &self.target_name)
            .field("mode", &self.mode)
            .field("groups", &self.groups())
            .finish()
    }
}

impl TargetPorts {
    pub fn new(
        target_name: impl Into<String>,
        mode: AluaMode,
        groups: Vec<TargetPortGroup>,
    ) -> Result<TargetPorts, PortsError> {
        let mut port_index = Vec::new();
        let mut built = Vec::with_capacity(groups.len());
        for (i, g) in groups.into_iter().enumerate() {
            if built.iter().any(|b: &Group| b.id == g.id) {
                return Err(PortsError::DuplicateGroup(g.id));
            }
            if g.state.support_bit() & g.supported == 0 {
                return Err(PortsError::UnsupportedState {
                    group: g.id,
                    state: g.state,
                });
            }
            for &p in &g.relative_target_ports {
                if p == 0 {
                    return Err(PortsError::ZeroPort);
                }
                if port_index.iter().any(|&(q, _)| q == p) {
                    return Err(PortsError::DuplicatePort(p));
                }
                port_index.push((p, i));
            }
            built.push(Group {
                id: g.id,
                supported: g.supported,
                ports: g.relative_target_ports,
                preferred: AtomicBool::new(g.preferred),
                state: AtomicU8::new(g.state.0),
                status: AtomicU8::new(AluaStatus::NONE.0),
            });
        }
        port_index.sort_unstable();
        Ok(TargetPorts {
            target_name: target_name.into(),
            mode,
            stpg: StpgPolicy::default(),
            groups: built,
            port_index,
            generation: AtomicU64::new(0),
            transition: Mutex::new(()),
        })
    }

    /// A target whose ports all sit in one active/optimized group 1, with
    /// implicit ALUA (a plain multi-portal target).
    pub fn single_group(target_name: impl Into<String>, ports: &[u16]) -> TargetPorts {
        let mut ports: Vec<u16> = ports.iter().copied().filter(|&p| p != 0).collect();
        ports.sort_unstable();
        ports.dedup();
        TargetPorts {
            target_name: target_name.into(),
            mode: AluaMode::Implicit,
            stpg: StpgPolicy::default(),
            port_index: ports.iter().map(|&p| (p, 0)).collect(),
            groups: vec![Group {
                id: 1,
                supported: DEFAULT_SUPPORTED_STATES,
                ports,
                preferred: AtomicBool::new(false),
                state: AtomicU8::new(AluaState::ACTIVE_OPTIMIZED.0),
                status: AtomicU8::new(AluaStatus::NONE.0),
            }],
            generation: AtomicU64::new(0),
            transition: Mutex::new(()),
        }
    }

    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    pub fn mode(&self) -> AluaMode {
        self.mode
    }

    /// Set what SET TARGET PORT GROUPS does to the groups it does not name (default:
    /// [`StpgPolicy::DemoteOthers`]).
    pub fn with_stpg_policy(mut self, stpg: StpgPolicy) -> TargetPorts {
        self.stpg = stpg;
        self
    }

    pub fn stpg_policy(&self) -> StpgPolicy {
        self.stpg
    }

    /// All relative target port identifiers.
    pub fn relative_target_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.port_index.iter().map(|&(p, _)| p)
    }

    /// The SCSI target port name of an iSCSI target port:
    /// `<target name>,t,0x<TPGT>`. The iSCSI target portal group tag is the
    /// relative target port identifier in this stack.
    pub fn target_port_name(&self, relative_target_port: u16) -> String {
        format!("{},t,0x{:04x}", self.target_name, relative_target_port)
    }

    fn group_index(&self, rtp: u16) -> Option<usize> {
        self.port_index
            .binary_search_by_key(&rtp, |&(p, _)| p)
            .ok()
            .map(|i| self.port_index[i].1)
    }

    /// The group a relative target port belongs to.
    pub fn group_of_port(&self, relative_target_port: u16) -> Option<u16> {
        self.group_index(relative_target_port)
            .map(|i| self.groups[i].id)
    }

    /// The access state seen through a port; ports outside every group are
    /// active/optimized. Lock-free: called on every command.
    pub fn port_state(&self, relative_target_port: u16) -> AluaState {
        match self.group_index(relative_target_port) {
            Some(i) => AluaState(self.groups[i].state.load(Ordering::Acquire)),
            None => AluaState::ACTIVE_OPTIMIZED,
        }
    }

    /// Snapshot of every group.
    pub fn groups(&self) -> Vec<TargetPortGroup> {
        self.groups
            .iter()
            .map(|g| TargetPortGroup {
                id: g.id,
                preferred: g.preferred.load(Ordering::Acquire),
                state: AluaState(g.state.load(Ordering::Acquire)),
                supported: g.supported,
                relative_target_ports: g.ports.clone(),
            })
            .collect()
    }

    /// Generation of the access states; changes whenever a state or PREF
    /// bit changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn group(&self, id: u16) -> Result<&Group, PortsError> {
        self.groups
            .iter()
            .find(|g| g.id == id)
            .ok_or(PortsError::UnknownGroup(id))
    }

    /// Implicit (target-side, operator-driven) state change. Every I_T
    /// nexus of every LU on these ports gets UNIT ATTENTION 2a/06.
    pub fn set_state(&self, group_id: u16, state: AluaState) -> Result<(), PortsError> {
        let _t = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        let g = self.group(group_id)?;
        if state.support_bit() & g.supported == 0 {
            return Err(PortsError::UnsupportedState {
                group: group_id,
                state,
            });
        }
        g.state.store(state.0, Ordering::Release);
        g.status
            .store(AluaStatus::CHANGED_IMPLICITLY.0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Change a group's PREF bit (also reported as a state change).
    pub fn set_preferred(&self, group_id: u16, preferred: bool) -> Result<(), PortsError> {
        let _t = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        self.group(group_id)?
            .preferred
            .store(preferred, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Explicit transition requested by SET TARGET PORT GROUPS. All
    /// requests are validated before any is applied; then, under
    /// [`StpgPolicy::DemoteOthers`], a group made active/optimized demotes the
    /// other active/optimized groups the command does not name (their status
    /// says "changed implicitly"). `list_offset` maps
    /// descriptor `i` to its parameter-list byte, for field pointers.
    /// Returns the new generation.
    pub(crate) fn apply_stpg(&self, changes: &[(u16, AluaState)]) -> Result<u64, ParamError> {
        let _t = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &(id, state)) in changes.iter().enumerate() {
            let at = 4 + 4 * i;
            let g = self.group(id).map_err(|_| ParamError::at(at + 2))?;
            if state.support_bit() & g.supported == 0 {
                return Err(ParamError::at_bit(at, 3));
            }
        }
        for &(id, state) in changes {
            if let Ok(g) = self.group(id) {
                g.state.store(state.0, Ordering::Release);
                g.status
                    .store(AluaStatus::CHANGED_BY_STPG.0, Ordering::Release);
            }
        }
        let promoted = changes
            .iter()
            .any(|&(_, state)| state == AluaState::ACTIVE_OPTIMIZED);
        if promoted && self.stpg == StpgPolicy::DemoteOthers {
            for g in &self.groups {
                let named = changes.iter().any(|&(id, _)| id == g.id);
                if named || g.state.load(Ordering::Acquire) != AluaState::ACTIVE_OPTIMIZED.0 {
                    continue;
                }
                let demoted = [AluaState::ACTIVE_NON_OPTIMIZED, AluaState::STANDBY]
                    .into_iter()
                    .find(|s| s.support_bit() & g.supported != 0);
                if let Some(d) = demoted {
                    g.state.store(d.0, Ordering::Release);
                    g.status
                        .store(AluaStatus::CHANGED_IMPLICITLY.0, Ordering::Release);
                }
            }
        }
        Ok(self.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// REPORT TARGET PORT GROUPS data.
    pub fn report(&self, extended: bool) -> TargetPortGroupsData {
        TargetPortGroupsData {
            extended,
            implicit_transition_time: if extended {
                IMPLICIT_TRANSITION_TIME_SECS
            } else {
                0
            },
            groups: self
                .groups
                .iter()
                .map(|g| TargetPortGroupDescriptor {
                    preferred: g.preferred.load(Ordering::Acquire),
                    state: AluaState(g.state.load(Ordering::Acquire)),
                    supported: g.supported,
                    id: g.id,
                    status: AluaStatus(g.status.load(Ordering::Acquire)),
                    relative_target_ports: g.ports.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> TargetPorts {
        let mut a = TargetPortGroup::new(1, vec![1]);
        a.preferred = true;
        let mut b = TargetPortGroup::new(2, vec![2]);
        b.state = AluaState::STANDBY;
        TargetPorts::new("iqn.t", AluaMode::Both, vec![a, b]).unwrap()
    }

    #[test]
    fn states_and_generation() {
        let t = two();
        assert_eq!(t.port_state(1), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.port_state(2), AluaState::STANDBY);
        assert_eq!(t.port_state(9), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.group_of_port(2), Some(2));
        let g0 = t.generation();
        t.set_state(2, AluaState::ACTIVE_NON_OPTIMIZED).unwrap();
        assert_eq!(t.generation(), g0 + 1);
        assert_eq!(t.port_state(2), AluaState::ACTIVE_NON_OPTIMIZED);
        assert_eq!(
            t.set_state(2, AluaState::OFFLINE),
            Err(PortsError::UnsupportedState {
                group: 2,
                state: AluaState::OFFLINE
            })
        );
        assert_eq!(
            t.set_state(7, AluaState::STANDBY),
            Err(PortsError::UnknownGroup(7))
        );
        let r = t.report(false);
        assert_eq!(r.groups[1].status, AluaStatus::CHANGED_IMPLICITLY);
        assert!(r.groups[0].preferred);
        assert_eq!(t.target_port_name(2), "iqn.t,t,0x0002");
    }

    #[test]
    fn config_errors() {
        let a = TargetPortGroup::new(1, vec![1]);
        let b = TargetPortGroup::new(1, vec![2]);
        assert!(matches!(
            TargetPorts::new("t", AluaMode::Implicit, vec![a.clone(), b]),
            Err(PortsError::DuplicateGroup(1))
        ));
        let c = TargetPortGroup::new(2, vec![1]);
        assert!(matches!(
            TargetPorts::new("t", AluaMode::Implicit, vec![a, c]),
            Err(PortsError::DuplicatePort(1))
        ));
        let s = TargetPorts::single_group("t", &[1, 2]);
        assert_eq!(s.relative_target_ports().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn stpg_is_all_or_nothing() {
        let t = two();
        assert_eq!(
            t.apply_stpg(&[(1, AluaState::STANDBY), (9, AluaState::STANDBY)]),
            Err(ParamError::at(10))
        );
        assert_eq!(t.port_state(1), AluaState::ACTIVE_OPTIMIZED);
        t.apply_stpg(&[(1, AluaState::STANDBY), (2, AluaState::ACTIVE_OPTIMIZED)])
            .unwrap();
        assert_eq!(t.port_state(1), AluaState::STANDBY);
        assert_eq!(t.port_state(2), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.report(true).groups[0].status, AluaStatus::CHANGED_BY_STPG);
    }

    fn both_optimized(stpg: StpgPolicy) -> TargetPorts {
        let a = TargetPortGroup::new(1, vec![1]);
        let mut b = TargetPortGroup::new(2, vec![2]);
        b.state = AluaState::ACTIVE_NON_OPTIMIZED;
        let mut c = TargetPortGroup::new(3, vec![3]);
        c.state = AluaState::STANDBY;
        TargetPorts::new("t", AluaMode::Both, vec![a, b, c])
            .unwrap()
            .with_stpg_policy(stpg)
    }

    #[test]
    fn stpg_to_optimized_demotes_the_other_optimized_groups_by_default() {
        let t = both_optimized(StpgPolicy::default());
        assert_eq!(t.stpg_policy(), StpgPolicy::DemoteOthers);
        let g0 = t.generation();
        // What Linux's scsi_dh_alua sends on failover: only the group it activates.
        assert_eq!(
            t.apply_stpg(&[(2, AluaState::ACTIVE_OPTIMIZED)]),
            Ok(g0 + 1)
        );
        assert_eq!(t.port_state(2), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.port_state(1), AluaState::ACTIVE_NON_OPTIMIZED);
        // A standby group is not an optimized one: it stays as it is.
        assert_eq!(t.port_state(3), AluaState::STANDBY);
        let r = t.report(true);
        assert_eq!(r.groups[0].status, AluaStatus::CHANGED_IMPLICITLY);
        assert_eq!(r.groups[1].status, AluaStatus::CHANGED_BY_STPG);
        // And back: failback demotes group 2 again.
        t.apply_stpg(&[(1, AluaState::ACTIVE_OPTIMIZED)]).unwrap();
        assert_eq!(t.port_state(1), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.port_state(2), AluaState::ACTIVE_NON_OPTIMIZED);
    }

    #[test]
    fn stpg_naming_groups_is_obeyed_and_demotion_needs_a_promotion() {
        let t = both_optimized(StpgPolicy::DemoteOthers);
        // Both named: both optimized, as asked.
        t.apply_stpg(&[
            (1, AluaState::ACTIVE_OPTIMIZED),
            (2, AluaState::ACTIVE_OPTIMIZED),
        ])
        .unwrap();
        assert_eq!(t.port_state(1), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.port_state(2), AluaState::ACTIVE_OPTIMIZED);
        // A demotion alone promotes nothing, so it demotes nothing else.
        t.apply_stpg(&[(3, AluaState::STANDBY)]).unwrap();
        assert_eq!(t.port_state(1), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.port_state(2), AluaState::ACTIVE_OPTIMIZED);
    }

    #[test]
    fn a_group_without_non_optimized_is_demoted_to_standby_or_left() {
        let a = TargetPortGroup::new(1, vec![1]);
        let mut b = TargetPortGroup::new(2, vec![2]);
        b.supported = SUPPORTS_ACTIVE_OPTIMIZED | SUPPORTS_STANDBY;
        let mut c = TargetPortGroup::new(3, vec![3]);
        c.supported = SUPPORTS_ACTIVE_OPTIMIZED;
        let t = TargetPorts::new("t", AluaMode::Both, vec![a, b, c]).unwrap();
        t.apply_stpg(&[(1, AluaState::ACTIVE_OPTIMIZED)]).unwrap();
        assert_eq!(t.port_state(2), AluaState::STANDBY);
        assert_eq!(t.port_state(3), AluaState::ACTIVE_OPTIMIZED);
    }

    #[test]
    fn stpg_as_requested_changes_only_the_named_groups() {
        let t = both_optimized(StpgPolicy::AsRequested);
        t.apply_stpg(&[(2, AluaState::ACTIVE_OPTIMIZED)]).unwrap();
        assert_eq!(t.port_state(1), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.port_state(2), AluaState::ACTIVE_OPTIMIZED);
        assert_eq!(t.report(true).groups[0].status, AluaStatus::NONE);
    }
}
