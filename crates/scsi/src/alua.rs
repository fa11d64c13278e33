//! Asymmetric logical unit access (SPC-4 5.15): access states, REPORT
//! TARGET PORT GROUPS data and the SET TARGET PORT GROUPS parameter list.

use std::fmt;

use crate::codec::{be16, be32, u8_at, PutBe};
use crate::error::{need, DecodeError, ParamError};

/// ASYMMETRIC ACCESS STATE (SPC-4 table 41). A newtype: reserved values
/// decode and print as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AluaState(pub u8);

impl AluaState {
    pub const ACTIVE_OPTIMIZED: AluaState = AluaState(0x0);
    pub const ACTIVE_NON_OPTIMIZED: AluaState = AluaState(0x1);
    pub const STANDBY: AluaState = AluaState(0x2);
    pub const UNAVAILABLE: AluaState = AluaState(0x3);
    pub const LBA_DEPENDENT: AluaState = AluaState(0x4);
    pub const OFFLINE: AluaState = AluaState(0xe);
    pub const TRANSITIONING: AluaState = AluaState(0xf);

    /// Media access is allowed (active/optimized or active/non-optimized).
    pub fn is_active(self) -> bool {
        self == AluaState::ACTIVE_OPTIMIZED || self == AluaState::ACTIVE_NON_OPTIMIZED
    }

    /// The SUPPORTED STATES bit that advertises this state.
    pub fn support_bit(self) -> u8 {
        match self.0 {
            0x0 => SUPPORTS_ACTIVE_OPTIMIZED,
            0x1 => SUPPORTS_ACTIVE_NON_OPTIMIZED,
            0x2 => SUPPORTS_STANDBY,
            0x3 => SUPPORTS_UNAVAILABLE,
            0x4 => SUPPORTS_LBA_DEPENDENT,
            0xe => SUPPORTS_OFFLINE,
            0xf => SUPPORTS_TRANSITIONING,
            _ => 0,
        }
    }
}

impl fmt::Debug for AluaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = match self.0 {
            0x0 => "active/optimized",
            0x1 => "active/non-optimized",
            0x2 => "standby",
            0x3 => "unavailable",
            0x4 => "lba-dependent",
            0xe => "offline",
            0xf => "transitioning",
            _ => return write!(f, "AluaState({:#x})", self.0),
        };
        f.write_str(n)
    }
}

impl fmt::Display for AluaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// SUPPORTED STATES bits of a target port group descriptor (byte 1).
pub const SUPPORTS_TRANSITIONING: u8 = 0x80;
pub const SUPPORTS_OFFLINE: u8 = 0x40;
pub const SUPPORTS_LBA_DEPENDENT: u8 = 0x10;
pub const SUPPORTS_UNAVAILABLE: u8 = 0x08;
pub const SUPPORTS_STANDBY: u8 = 0x04;
pub const SUPPORTS_ACTIVE_NON_OPTIMIZED: u8 = 0x02;
pub const SUPPORTS_ACTIVE_OPTIMIZED: u8 = 0x01;

/// STATUS CODE of a target port group descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct AluaStatus(pub u8);

impl AluaStatus {
    pub const NONE: AluaStatus = AluaStatus(0x00);
    /// Changed by a SET TARGET PORT GROUPS command.
    pub const CHANGED_BY_STPG: AluaStatus = AluaStatus(0x01);
    /// Changed by an implicit (target-side) transition.
    pub const CHANGED_IMPLICITLY: AluaStatus = AluaStatus(0x02);
}

/// Which ALUA management the target offers: the TPGS field of standard
/// INQUIRY data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum AluaMode {
    /// No ALUA: TPGS 00b.
    None,
    /// Target-managed states only: TPGS 01b.
    #[default]
    Implicit,
    /// SET TARGET PORT GROUPS only: TPGS 10b.
    Explicit,
    /// Both: TPGS 11b.
    Both,
}

impl AluaMode {
    /// The TPGS field value (bits 5:4 of standard INQUIRY byte 5).
    pub fn tpgs(self) -> u8 {
        match self {
            AluaMode::None => 0,
            AluaMode::Implicit => 1,
            AluaMode::Explicit => 2,
            AluaMode::Both => 3,
        }
    }

    pub fn from_tpgs(tpgs: u8) -> AluaMode {
        match tpgs & 0x03 {
            0 => AluaMode::None,
            1 => AluaMode::Implicit,
            2 => AluaMode::Explicit,
            _ => AluaMode::Both,
        }
    }

    pub fn explicit(self) -> bool {
        matches!(self, AluaMode::Explicit | AluaMode::Both)
    }

    pub fn implicit(self) -> bool {
        matches!(self, AluaMode::Implicit | AluaMode::Both)
    }
}

/// What SET TARGET PORT GROUPS does to the groups it does not name.
///
/// SPC-4 lets a target change other groups as part of an explicit transition. Arrays with
/// two controllers do: making one controller's group active/optimized demotes the other's,
/// so the initiator sees one optimized group. Linux's `scsi_dh_alua` sends STPG for the
/// group it fails over to and names only that group; a target that changes nothing else
/// leaves both groups active/optimized for good, and a later failback cannot tell which
/// controller is preferred.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum StpgPolicy {
    /// A group made active/optimized demotes every other active/optimized group not named
    /// in the same command to active/non-optimized (standby when that state is not
    /// supported): one optimized group at a time, as most arrays behave.
    #[default]
    DemoteOthers,
    /// Only the groups named in the command change.
    AsRequested,
}

impl StpgPolicy {
    /// The configuration spelling: `demote-others`, `as-requested`.
    pub fn parse(s: &str) -> Option<StpgPolicy> {
        match s {
            "demote-others" => Some(StpgPolicy::DemoteOthers),
            "as-requested" => Some(StpgPolicy::AsRequested),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StpgPolicy::DemoteOthers => "demote-others",
            StpgPolicy::AsRequested => "as-requested",
        }
    }
}

/// One target port group descriptor of REPORT TARGET PORT GROUPS data.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TargetPortGroupDescriptor {
    pub preferred: bool,
    pub state: AluaState,
    /// SUPPORTED STATES bits (`SUPPORTS_*`).
    pub supported: u8,
    pub id: u16,
    pub status: AluaStatus,
    pub relative_target_ports: Vec<u16>,
}

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.36).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TargetPortGroupsData {
    /// Extended header (PARAMETER DATA FORMAT 001b) with the implicit
    /// transition time.
    pub extended: bool,
    /// IMPLICIT TRANSITION TIME in seconds (extended format only).
    pub implicit_transition_time: u8,
    pub groups: Vec<TargetPortGroupDescriptor>,
}

impl TargetPortGroupsData {
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        v.put_u32(0); // RETURN DATA LENGTH, patched below
        if self.extended {
            v.push(0x10); // FORMAT TYPE 001b
            v.push(self.implicit_transition_time);
            v.put_zeros(2);
        }
        for g in &self.groups {
            v.push((u8::from(g.preferred) << 7) | (g.state.0 & 0x0f));
            v.push(g.supported);
            v.put_u16(g.id);
            v.push(0);
            v.push(g.status.0);
            v.push(0);
            v.push(g.relative_target_ports.len().min(255) as u8);
            for &p in g.relative_target_ports.iter().take(255) {
                v.put_u16(0);
                v.put_u16(p);
            }
        }
        // RETURN DATA LENGTH counts everything after itself.
        let n = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&n.to_be_bytes());
        v
    }

    /// Lenient: descriptors truncated by the allocation length are dropped.
    pub fn parse(b: &[u8]) -> Result<TargetPortGroupsData, DecodeError> {
        need(b, 4)?;
        let end = b
            .len()
            .min(4usize.saturating_add(be32(b, 0).unwrap_or(0) as usize));
        // The extended header is recognised by its FORMAT TYPE.
        let extended = u8_at(b, 4).is_some_and(|f| f & 0x70 == 0x10) && end >= 8;
        let mut at = if extended { 8 } else { 4 };
        let implicit_transition_time = if extended { b[5] } else { 0 };
        let mut groups = Vec::new();
        while at + 8 <= end {
            let count = usize::from(b[at + 7]);
            let ports_end = at + 8 + 4 * count;
            if ports_end > end {
                break;
            }
            groups.push(TargetPortGroupDescriptor {
                preferred: b[at] & 0x80 != 0,
                state: AluaState(b[at] & 0x0f),
                supported: b[at + 1],
                id: be16(b, at + 2).unwrap_or(0),
                status: AluaStatus(b[at + 5]),
                relative_target_ports: (0..count)
                    .filter_map(|i| be16(b, at + 8 + 4 * i + 2))
                    .collect(),
            });
            at = ports_end;
        }
        Ok(TargetPortGroupsData {
            extended,
            implicit_transition_time,
            groups,
        })
    }
}

/// SET TARGET PORT GROUPS parameter list: the requested (group, state)
/// pairs (SPC-4 6.42).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SetTargetPortGroups {
    pub groups: Vec<(u16, AluaState)>,
}

impl SetTargetPortGroups {
    pub fn build(&self) -> Vec<u8> {
        crate::cdb::build::set_target_port_groups_params(&self.groups)
    }

    /// Only the explicitly settable states (active/optimized,
    /// active/non-optimized, standby, unavailable) are accepted.
    pub fn parse(b: &[u8]) -> Result<SetTargetPortGroups, ParamError> {
        if b.len() < 4 || !(b.len() - 4).is_multiple_of(4) {
            return Err(ParamError::LengthError);
        }
        let mut groups = Vec::with_capacity((b.len() - 4) / 4);
        for at in (4..b.len()).step_by(4) {
            let state = AluaState(b[at] & 0x0f);
            if state.0 > AluaState::UNAVAILABLE.0 {
                return Err(ParamError::at_bit(at, 3));
            }
            groups.push((be16(b, at + 2).unwrap_or(0), state));
        }
        Ok(SetTargetPortGroups { groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn two_groups() -> TargetPortGroupsData {
        TargetPortGroupsData {
            extended: false,
            implicit_transition_time: 0,
            groups: vec![
                TargetPortGroupDescriptor {
                    preferred: true,
                    state: AluaState::ACTIVE_OPTIMIZED,
                    supported: 0x8f,
                    id: 1,
                    status: AluaStatus::NONE,
                    relative_target_ports: vec![1],
                },
                TargetPortGroupDescriptor {
                    preferred: false,
                    state: AluaState::STANDBY,
                    supported: 0x8f,
                    id: 2,
                    status: AluaStatus::CHANGED_IMPLICITLY,
                    relative_target_ports: vec![2],
                },
            ],
        }
    }

    #[test]
    fn rtpg_fixture() {
        let d = two_groups();
        let b = d.build();
        assert_eq!(
            b,
            [
                0, 0, 0, 24, // RETURN DATA LENGTH
                0x80, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, // group 1
                0x02, 0x8f, 0, 2, 0, 2, 0, 1, 0, 0, 0, 2, // group 2
            ]
        );
        assert_eq!(TargetPortGroupsData::parse(&b), Ok(d));
    }

    #[test]
    fn rtpg_extended_and_truncated() {
        let mut d = two_groups();
        d.extended = true;
        d.implicit_transition_time = 10;
        let b = d.build();
        assert_eq!(&b[..8], &[0, 0, 0, 28, 0x10, 10, 0, 0]);
        assert_eq!(TargetPortGroupsData::parse(&b), Ok(d.clone()));
        let t = TargetPortGroupsData::parse(&b[..20]).unwrap();
        assert_eq!(t.groups.len(), 1);
    }

    #[test]
    fn stpg_rejects_transitioning() {
        let b = SetTargetPortGroups {
            groups: vec![(1, AluaState::STANDBY)],
        }
        .build();
        assert_eq!(b, [0, 0, 0, 0, 0x02, 0, 0, 1]);
        assert!(SetTargetPortGroups::parse(&b).is_ok());
        let bad = [0, 0, 0, 0, 0x0f, 0, 0, 1];
        assert_eq!(
            SetTargetPortGroups::parse(&bad),
            Err(ParamError::at_bit(4, 3))
        );
        assert_eq!(
            SetTargetPortGroups::parse(&bad[..6]),
            Err(ParamError::LengthError)
        );
    }

    proptest! {
        #[test]
        fn parsers_are_total(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = TargetPortGroupsData::parse(&b);
            let _ = SetTargetPortGroups::parse(&b);
        }

        #[test]
        fn stpg_round_trip(groups in proptest::collection::vec((any::<u16>(), 0u8..4), 0..8)) {
            let s = SetTargetPortGroups { groups: groups.into_iter().map(|(id, st)| (id, AluaState(st))).collect() };
            prop_assert_eq!(SetTargetPortGroups::parse(&s.build()), Ok(s));
        }

        #[test]
        fn rtpg_round_trip(
            extended in any::<bool>(),
            itt in any::<u8>(),
            groups in proptest::collection::vec(
                (any::<bool>(), 0u8..16, any::<u8>(), any::<u16>(), any::<u8>(), proptest::collection::vec(any::<u16>(), 0..4)),
                0..4),
        ) {
            let d = TargetPortGroupsData {
                extended,
                implicit_transition_time: if extended { itt } else { 0 },
                groups: groups.into_iter().map(|(p, s, sup, id, st, ports)| TargetPortGroupDescriptor {
                    preferred: p, state: AluaState(s), supported: sup, id, status: AluaStatus(st),
                    relative_target_ports: ports,
                }).collect(),
            };
            prop_assert_eq!(TargetPortGroupsData::parse(&d.build()), Ok(d));
        }
    }
}
