//! Priority groups and the grouping policies that build them.
//!
//! A map's paths are split into priority groups. One group is *active* (I/O goes to its
//! usable paths), the others are *enabled* (candidates for failover) or *disabled* (an
//! operator or an error bypassed them: used only when no enabled group has a usable path).

use std::collections::BTreeMap;
use std::fmt;

use crate::path::{PathId, PathInfo};

/// How paths are split into priority groups (multipath.conf `path_grouping_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Grouping {
    /// One path per group, groups ordered by priority: pure active/passive.
    Failover,
    /// All paths in one group.
    Multibus,
    /// One group per priority value, highest first. The default: with ALUA the
    /// active/optimized paths form the first group; without a prioritizer every path has
    /// the same priority and this is multibus.
    #[default]
    GroupByPrio,
    /// One group per UNIT SERIAL NUMBER (VPD 0x80).
    GroupBySerial,
    /// One group per target node name.
    GroupByNodeName,
    /// One group per ALUA target port group.
    GroupByTpg,
}

impl Grouping {
    pub fn name(self) -> &'static str {
        match self {
            Grouping::Failover => "failover",
            Grouping::Multibus => "multibus",
            Grouping::GroupByPrio => "group_by_prio",
            Grouping::GroupBySerial => "group_by_serial",
            Grouping::GroupByNodeName => "group_by_node_name",
            Grouping::GroupByTpg => "group_by_tpg",
        }
    }
}

impl fmt::Display for Grouping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A priority group's status (dm-mpath's `A`ctive / `E`nabled / `D`isabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupStatus {
    Active,
    Enabled,
    Disabled,
}

impl fmt::Display for GroupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GroupStatus::Active => "active",
            GroupStatus::Enabled => "enabled",
            GroupStatus::Disabled => "disabled",
        })
    }
}

/// One priority group: its paths (in the order the map lists them) and its priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityGroup {
    pub paths: Vec<PathId>,
    /// The mean of its paths' priorities (multipath-tools' `pgp->priority`).
    pub priority: u32,
    /// Bypassed by the `disable group` message.
    pub disabled: bool,
}

/// Split `paths` into groups by `policy`, ordered by priority (highest first; among equal
/// priorities, in the order of their first path).
pub fn group_paths(policy: Grouping, paths: &[(PathId, &PathInfo)]) -> Vec<PriorityGroup> {
    let mut groups: Vec<Vec<PathId>> = match policy {
        Grouping::Failover => paths.iter().map(|(id, _)| vec![*id]).collect(),
        Grouping::Multibus => {
            if paths.is_empty() {
                Vec::new()
            } else {
                vec![paths.iter().map(|(id, _)| *id).collect()]
            }
        }
        Grouping::GroupByPrio => by_key(paths, |p| p.effective_priority()),
        Grouping::GroupBySerial => by_key(paths, |p| p.serial.clone()),
        Grouping::GroupByNodeName => by_key(paths, |p| p.node_name.clone()),
        Grouping::GroupByTpg => by_key(paths, |p| p.tpg),
    };
    let prio_of = |id: PathId| {
        paths
            .iter()
            .find(|(p, _)| *p == id)
            .map_or(0, |(_, info)| info.effective_priority())
    };
    let mut out: Vec<PriorityGroup> = groups
        .drain(..)
        .map(|members| {
            let sum: u64 = members.iter().map(|&id| u64::from(prio_of(id))).sum();
            let priority = (sum / members.len().max(1) as u64) as u32;
            PriorityGroup {
                paths: members,
                priority,
                disabled: false,
            }
        })
        .collect();
    // Stable: equal priorities keep the order of their first path.
    out.sort_by_key(|g| std::cmp::Reverse(g.priority));
    out
}

/// Group by a key, groups in the order their key first appears.
fn by_key<K: Ord + Clone>(
    paths: &[(PathId, &PathInfo)],
    key: impl Fn(&PathInfo) -> K,
) -> Vec<Vec<PathId>> {
    let mut index: BTreeMap<K, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<PathId>> = Vec::new();
    for (id, info) in paths {
        let k = key(info);
        let at = *index.entry(k).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(*id);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use scsi::AluaState;

    fn infos() -> Vec<PathInfo> {
        let mk = |name: &str, alua, tpg, node: &str, serial: &str| PathInfo {
            alua: Some(alua),
            tpg: Some(tpg),
            node_name: node.into(),
            serial: serial.into(),
            ..PathInfo::new(name)
        };
        vec![
            mk("a", AluaState::ACTIVE_NON_OPTIMIZED, 2, "t1", "s1"),
            mk("b", AluaState::ACTIVE_OPTIMIZED, 1, "t1", "s1"),
            mk("c", AluaState::ACTIVE_NON_OPTIMIZED, 2, "t2", "s2"),
            mk("d", AluaState::ACTIVE_OPTIMIZED, 1, "t2", "s1"),
        ]
    }

    fn ids(gs: &[PriorityGroup]) -> Vec<Vec<u32>> {
        gs.iter()
            .map(|g| g.paths.iter().map(|p| p.0).collect())
            .collect()
    }

    fn run(policy: Grouping) -> Vec<PriorityGroup> {
        let infos = infos();
        let v: Vec<(PathId, &PathInfo)> = infos
            .iter()
            .enumerate()
            .map(|(i, p)| (PathId(i as u32), p))
            .collect();
        group_paths(policy, &v)
    }

    #[test]
    fn policies() {
        assert_eq!(ids(&run(Grouping::Multibus)), vec![vec![0, 1, 2, 3]]);
        assert_eq!(
            ids(&run(Grouping::Failover)),
            vec![vec![1], vec![3], vec![0], vec![2]]
        );
        let prio = run(Grouping::GroupByPrio);
        assert_eq!(ids(&prio), vec![vec![1, 3], vec![0, 2]]);
        assert_eq!((prio[0].priority, prio[1].priority), (50, 10));
        assert_eq!(
            ids(&run(Grouping::GroupByTpg)),
            vec![vec![1, 3], vec![0, 2]]
        );
        assert_eq!(
            ids(&run(Grouping::GroupByNodeName)),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert_eq!(
            ids(&run(Grouping::GroupBySerial)),
            vec![vec![0, 1, 3], vec![2]]
        );
    }

    #[test]
    fn group_by_prio_without_alua_is_multibus() {
        let infos = [PathInfo::new("a"), PathInfo::new("b")];
        let v: Vec<(PathId, &PathInfo)> = infos
            .iter()
            .enumerate()
            .map(|(i, p)| (PathId(i as u32), p))
            .collect();
        assert_eq!(
            ids(&group_paths(Grouping::GroupByPrio, &v)),
            vec![vec![0, 1]]
        );
        assert!(group_paths(Grouping::Multibus, &[]).is_empty());
    }
}
