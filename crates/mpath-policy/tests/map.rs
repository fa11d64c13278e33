//! Simulated-time tests of the map state machine: time is an `Instant` we move by hand.

use std::time::{Duration, Instant};

use block::{PathFailKind, PathFailReason};
use mpath_policy::*;
use scsi::AluaState;

fn reason() -> PathFailReason {
    PathFailReason::new(PathFailKind::ConnectionReset, "test")
}

fn alua_paths(states: &[AluaState]) -> Vec<(PathInfo, bool)> {
    states
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            (
                PathInfo {
                    alua: Some(s),
                    ..PathInfo::new(format!("p{i}"))
                },
                true,
            )
        })
        .collect()
}

fn plain_paths(n: usize) -> Vec<(PathInfo, bool)> {
    (0..n)
        .map(|i| (PathInfo::new(format!("p{i}")), true))
        .collect()
}

fn events(m: &mut Multipath) -> Vec<EventKind> {
    std::iter::from_fn(|| m.poll_event())
        .map(|e| e.kind)
        .collect()
}

fn ids(v: &[u32]) -> Vec<PathId> {
    v.iter().map(|&i| PathId(i)).collect()
}

/// Two ALUA groups: paths 0,1 active/optimized (group 0), 2,3 non-optimized (group 1).
fn two_groups(failback: Failback) -> (Multipath, Instant) {
    let t0 = Instant::now();
    let config = MapConfig {
        failback,
        flap: None,
        ..MapConfig::default()
    };
    let ao = AluaState::ACTIVE_OPTIMIZED;
    let ano = AluaState::ACTIVE_NON_OPTIMIZED;
    let m = Multipath::new(config, alua_paths(&[ao, ao, ano, ano]), t0);
    (m, t0)
}

#[test]
fn defaults_are_design_section_6() {
    let c = MapConfig::default();
    assert_eq!(c.selector, SelectorKind::ServiceTime);
    assert_eq!(c.grouping, Grouping::GroupByPrio);
    assert_eq!(c.failback, Failback::Immediate);
    assert_eq!(c.no_path, NoPathPolicy::Queue(Duration::from_secs(60)));
}

#[test]
fn starts_on_best_group_and_routes_its_paths() {
    let (mut m, _) = two_groups(Failback::Immediate);
    assert_eq!(m.groups().len(), 2);
    assert_eq!(m.active_group(), Some(0));
    assert_eq!(m.routing(), ids(&[0, 1]));
    assert_eq!(m.group_status(1), Some(GroupStatus::Enabled));
    assert!(matches!(
        events(&mut m)[..],
        [EventKind::GroupSwitched {
            from: None,
            to: Some(0),
            cause: SwitchCause::Initial
        }]
    ));
}

#[test]
fn failover_then_immediate_failback() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    events(&mut m);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    assert_eq!(m.routing(), ids(&[1]));
    m.fail_path(PathId(1), reason(), t0).unwrap();
    assert_eq!(m.active_group(), Some(1));
    assert_eq!(m.routing(), ids(&[2, 3]));
    let ev = events(&mut m);
    assert!(ev.contains(&EventKind::GroupSwitched {
        from: Some(0),
        to: Some(1),
        cause: SwitchCause::Failover
    }));
    m.reinstate_path(PathId(1), ReinstateCause::Checker, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(0));
    assert_eq!(m.routing(), ids(&[1]));
    assert!(events(&mut m).contains(&EventKind::GroupSwitched {
        from: Some(1),
        to: Some(0),
        cause: SwitchCause::Failback
    }));
}

#[test]
fn manual_failback_stays() {
    let (mut m, t0) = two_groups(Failback::Manual);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    m.fail_path(PathId(1), reason(), t0).unwrap();
    m.reinstate_path(PathId(0), ReinstateCause::Checker, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(1));
    // Only a failover or the operator moves it.
    m.switch_group(0, t0).unwrap();
    assert_eq!(m.active_group(), Some(0));
}

#[test]
fn deferred_failback_waits_and_cancels() {
    let d = Duration::from_secs(10);
    let (mut m, t0) = two_groups(Failback::Deferred(d));
    m.fail_path(PathId(0), reason(), t0).unwrap();
    m.fail_path(PathId(1), reason(), t0).unwrap();
    assert_eq!(m.active_group(), Some(1));
    let t1 = t0 + Duration::from_secs(1);
    m.reinstate_path(PathId(0), ReinstateCause::Checker, t1)
        .unwrap();
    assert_eq!(m.active_group(), Some(1));
    assert_eq!(m.poll_timeout(), Some(t1 + d));
    m.handle_timeout(t1 + d - Duration::from_millis(1));
    assert_eq!(m.active_group(), Some(1));
    m.handle_timeout(t1 + d);
    assert_eq!(m.active_group(), Some(0));

    // Cancelled when the better group fails again before the deadline.
    m.fail_path(PathId(0), reason(), t1 + d).unwrap();
    assert_eq!(m.active_group(), Some(1));
    let t2 = t1 + d + Duration::from_secs(1);
    m.reinstate_path(PathId(0), ReinstateCause::Checker, t2)
        .unwrap();
    assert!(m.poll_timeout().is_some());
    m.fail_path(PathId(0), reason(), t2 + Duration::from_secs(1))
        .unwrap();
    assert_eq!(m.poll_timeout(), None);
    m.handle_timeout(t2 + d * 2);
    assert_eq!(m.active_group(), Some(1));
}

#[test]
fn followover_fails_back_only_for_first_path_back() {
    let (mut m, t0) = two_groups(Failback::Followover);
    // Another host (or operator) moved us to group 1 while group 0 was usable.
    m.switch_group(1, t0).unwrap();
    // Group 0's paths fail and come back: the pin on group 1 holds until group 1 dies.
    m.fail_path(PathId(0), reason(), t0).unwrap();
    m.fail_path(PathId(1), reason(), t0).unwrap();
    m.reinstate_path(PathId(0), ReinstateCause::Checker, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(1), "operator's choice is kept");

    // Without a pin: group 0 dies, we fail over, and its first path back fails back.
    let (mut m, t0) = two_groups(Failback::Followover);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    m.fail_path(PathId(1), reason(), t0).unwrap();
    assert_eq!(m.active_group(), Some(1));
    m.reinstate_path(PathId(0), ReinstateCause::Checker, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(0));

    // Moved away while group 0 kept a usable path (here: disabled and re-enabled, as
    // when another node requested the failover): a later path coming back to group 0 is
    // not its first, so no failback.
    let (mut m, t0) = two_groups(Failback::Followover);
    m.fail_path(PathId(1), reason(), t0).unwrap();
    m.disable_group(0, t0).unwrap();
    assert_eq!(m.active_group(), Some(1));
    m.enable_group(0, t0).unwrap();
    assert_eq!(m.active_group(), Some(1));
    m.reinstate_path(PathId(1), ReinstateCause::Checker, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(1));
}

#[test]
fn operator_switch_is_not_undone_by_immediate_failback() {
    // multipath-tools #154: switchgroup to a lower group, then any path event made
    // failback switch straight back.
    let (mut m, t0) = two_groups(Failback::Immediate);
    m.switch_group(1, t0).unwrap();
    assert_eq!(m.active_group(), Some(1));
    m.fail_path(PathId(0), reason(), t0).unwrap();
    m.reinstate_path(PathId(0), ReinstateCause::Checker, t0)
        .unwrap();
    m.checker_report(PathId(1), CheckerState::Up, t0).unwrap();
    m.handle_timeout(t0 + Duration::from_secs(3600));
    assert_eq!(m.active_group(), Some(1));
    assert!(m.view().groups[1].pinned);
    // The pin ends when its group loses every path; then normal policy applies.
    m.fail_path(PathId(2), reason(), t0).unwrap();
    m.fail_path(PathId(3), reason(), t0).unwrap();
    assert_eq!(m.active_group(), Some(0));
    m.reinstate_path(PathId(2), ReinstateCause::Checker, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(0));
}

#[test]
fn messages_that_do_not_apply_are_typed_errors() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    assert_eq!(
        m.fail_path(PathId(9), reason(), t0),
        Err(PolicyError::NoSuchPath(PathId(9)))
    );
    m.fail_path(PathId(0), reason(), t0).unwrap();
    assert_eq!(
        m.fail_path(PathId(0), reason(), t0),
        Err(PolicyError::PathAlreadyFailed(PathId(0)))
    );
    assert_eq!(
        m.reinstate_path(PathId(1), ReinstateCause::Operator, t0),
        Err(PolicyError::PathAlreadyActive(PathId(1)))
    );
    assert_eq!(m.switch_group(5, t0), Err(PolicyError::NoSuchGroup(5)));
    assert_eq!(m.enable_group(1, t0), Err(PolicyError::GroupNotDisabled(1)));
    m.disable_group(1, t0).unwrap();
    assert_eq!(m.disable_group(1, t0), Err(PolicyError::GroupDisabled(1)));
    assert_eq!(m.switch_group(1, t0), Err(PolicyError::GroupDisabled(1)));
    m.enable_group(1, t0).unwrap();
    m.fail_path(PathId(2), reason(), t0).unwrap();
    m.fail_path(PathId(3), reason(), t0).unwrap();
    assert_eq!(
        m.switch_group(1, t0),
        Err(PolicyError::GroupHasNoUsablePath(1))
    );
    assert_eq!(
        m.set_queue_if_no_path(true, t0),
        Err(PolicyError::QueueIfNoPathAlready(true))
    );
    assert!(matches!(
        m.checker_report(PathId(1), CheckerState::Delayed, t0),
        Err(PolicyError::Transition { .. })
    ));
}

#[test]
fn disabled_group_is_bypassed_but_used_as_last_resort() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    m.disable_group(0, t0).unwrap();
    assert_eq!(m.active_group(), Some(1));
    assert_eq!(m.group_status(0), Some(GroupStatus::Disabled));
    m.fail_path(PathId(2), reason(), t0).unwrap();
    m.fail_path(PathId(3), reason(), t0).unwrap();
    assert_eq!(m.active_group(), Some(0), "bypassed group beats no path");
    m.reinstate_path(PathId(2), ReinstateCause::Checker, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(1));
    m.enable_group(0, t0).unwrap();
    assert_eq!(m.active_group(), Some(0));
}

#[test]
fn bounded_queueing_window() {
    let t0 = Instant::now();
    let mut m = Multipath::new(MapConfig::default(), plain_paths(2), t0);
    events(&mut m);
    assert_eq!(m.no_path_verdict(), NoPathVerdict::Retry);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    m.fail_path(PathId(1), reason(), t0).unwrap();
    let until = t0 + DEFAULT_NO_PATH_QUEUE;
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Queue { until: Some(until) }
    );
    assert!(events(&mut m).contains(&EventKind::QueueingStarted { until: Some(until) }));
    assert_eq!(m.poll_timeout(), Some(until));
    m.handle_timeout(until - Duration::from_millis(1));
    assert!(matches!(m.no_path_verdict(), NoPathVerdict::Queue { .. }));
    m.handle_timeout(until);
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Fail(NoPathReason::QueueExpired {
            after: DEFAULT_NO_PATH_QUEUE
        })
    );
    assert_eq!(m.no_path_time(until), DEFAULT_NO_PATH_QUEUE);
    // A path back: usable again; losing it again opens a fresh window.
    let t1 = until + Duration::from_secs(5);
    m.reinstate_path(PathId(0), ReinstateCause::Operator, t1)
        .unwrap();
    assert_eq!(m.no_path_verdict(), NoPathVerdict::Retry);
    assert_eq!(
        m.no_path_time(t1 + Duration::from_secs(100)),
        Duration::from_secs(65)
    );
    m.fail_path(PathId(0), reason(), t1).unwrap();
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Queue {
            until: Some(t1 + DEFAULT_NO_PATH_QUEUE)
        }
    );
}

#[test]
fn queue_forever_and_fail_policies() {
    let t0 = Instant::now();
    let forever = MapConfig {
        no_path: NoPathPolicy::QueueForever,
        ..MapConfig::default()
    };
    let mut m = Multipath::new(forever, plain_paths(1), t0);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    assert_eq!(m.no_path_verdict(), NoPathVerdict::Queue { until: None });
    assert_eq!(m.poll_timeout(), None);

    let fail = MapConfig {
        no_path: NoPathPolicy::Fail,
        ..MapConfig::default()
    };
    let mut m = Multipath::new(fail, plain_paths(1), t0);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Fail(NoPathReason::PolicyFail)
    );
    // Turning queueing on with a `fail` policy queues for the default window.
    m.set_queue_if_no_path(true, t0).unwrap();
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Queue {
            until: Some(t0 + DEFAULT_NO_PATH_QUEUE)
        }
    );
}

#[test]
fn queueing_disabled_and_restored_at_run_time() {
    let t0 = Instant::now();
    let mut m = Multipath::new(MapConfig::default(), plain_paths(1), t0);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    events(&mut m);
    m.set_queue_if_no_path(false, t0).unwrap();
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Fail(NoPathReason::QueueingDisabled)
    );
    let ev = events(&mut m);
    assert!(ev.contains(&EventKind::QueueingEnded {
        cause: QueueEndCause::Disabled
    }));
    let t1 = t0 + Duration::from_secs(100);
    m.set_queue_if_no_path(true, t1).unwrap();
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Queue {
            until: Some(t1 + DEFAULT_NO_PATH_QUEUE)
        }
    );
    assert!(m.queue_if_no_path());
}

#[test]
fn flapping_path_is_held_back() {
    let t0 = Instant::now();
    let flap = FlapDamping::default();
    let mut m = Multipath::new(MapConfig::default(), plain_paths(2), t0);
    let mut t = t0;
    for _ in 0..flap.failures - 1 {
        m.fail_path(PathId(0), reason(), t).unwrap();
        t += Duration::from_secs(5);
        assert_eq!(
            m.reinstate_path(PathId(0), ReinstateCause::TransportRecovered, t),
            Ok(Reinstatement::Now)
        );
        t += Duration::from_secs(5);
    }
    m.fail_path(PathId(0), reason(), t).unwrap();
    t += Duration::from_secs(5);
    let until = t + flap.hold;
    assert_eq!(
        m.reinstate_path(PathId(0), ReinstateCause::TransportRecovered, t),
        Ok(Reinstatement::Delayed { until })
    );
    assert_eq!(
        m.path_state(PathId(0)),
        Some(PathState::new(DmState::Failed, CheckerState::Delayed))
    );
    // The checker keeps seeing it up: still held.
    m.checker_report(PathId(0), CheckerState::Up, t).unwrap();
    assert_eq!(m.routing(), ids(&[1]));
    assert_eq!(m.poll_timeout(), Some(until));
    m.handle_timeout(until);
    assert_eq!(m.routing(), ids(&[0, 1]));
    let ev = events(&mut m);
    assert!(ev.contains(&EventKind::PathReinstated {
        path: PathId(0),
        cause: ReinstateCause::HoldElapsed
    }));

    // The operator bypasses the hold.
    for _ in 0..flap.failures {
        m.fail_path(PathId(1), reason(), t).unwrap();
        m.reinstate_path(PathId(1), ReinstateCause::Operator, t)
            .unwrap();
    }
    assert_eq!(m.path_state(PathId(1)).map(|s| s.dm), Some(DmState::Active));
}

#[test]
fn flap_hold_cancelled_by_down_report() {
    let t0 = Instant::now();
    let mut m = Multipath::new(MapConfig::default(), plain_paths(2), t0);
    for _ in 0..3 {
        m.fail_path(PathId(0), reason(), t0).unwrap();
        let _ = m.reinstate_path(PathId(0), ReinstateCause::Checker, t0);
    }
    assert_eq!(
        m.path_state(PathId(0)).map(|s| s.checker),
        Some(CheckerState::Delayed)
    );
    m.checker_report(PathId(0), CheckerState::Down, t0).unwrap();
    assert_eq!(m.path_state(PathId(0)), Some(PathState::FAILED_DOWN));
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn checker_view_and_ghosts() {
    let t0 = Instant::now();
    let config = MapConfig {
        grouping: Grouping::Multibus,
        ..MapConfig::default()
    };
    let mut m = Multipath::new(config, plain_paths(3), t0);
    m.checker_report(PathId(0), CheckerState::Ghost, t0)
        .unwrap();
    m.checker_report(PathId(1), CheckerState::Shaky, t0)
        .unwrap();
    // Up paths first, then shaky, ghosts last.
    assert_eq!(m.routing(), ids(&[2]));
    m.checker_report(PathId(2), CheckerState::Down, t0).unwrap();
    assert_eq!(m.path_state(PathId(2)), Some(PathState::FAILED_DOWN));
    assert_eq!(m.routing(), ids(&[1]));
    m.checker_report(PathId(1), CheckerState::Down, t0).unwrap();
    assert_eq!(m.routing(), ids(&[0]));
    // A failed path the checker sees up again is reinstated.
    m.checker_report(PathId(2), CheckerState::Up, t0).unwrap();
    assert_eq!(m.routing(), ids(&[2]));
    // Repeating a state is not an error.
    m.checker_report(PathId(2), CheckerState::Up, t0).unwrap();
}

#[test]
fn alua_standby_regroups() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    // Path 0 answered standby: failed, and it moves to a group of its own below.
    m.fail_path(
        PathId(0),
        PathFailReason::new(PathFailKind::AluaInaccessible, "standby"),
        t0,
    )
    .unwrap();
    m.set_path_alua(PathId(0), AluaState::STANDBY, t0).unwrap();
    assert_eq!(m.groups().len(), 3);
    assert_eq!(m.groups()[2].paths, ids(&[0]));
    assert_eq!(m.active_group(), Some(0));
    assert_eq!(m.routing(), ids(&[1]));
    // Reinstated, it is a ghost in the lowest group and takes no I/O.
    m.reinstate_path(PathId(0), ReinstateCause::Checker, t0)
        .unwrap();
    assert_eq!(
        m.path_state(PathId(0)).map(|s| s.checker),
        Some(CheckerState::Ghost)
    );
    assert_eq!(m.routing(), ids(&[1]));
    assert!(events(&mut m).contains(&EventKind::Regrouped { groups: 3 }));
}

#[test]
fn regroup_keeps_pin_and_disabled_groups() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    m.switch_group(1, t0).unwrap();
    m.disable_group(0, t0).unwrap();
    let mut info = m.path_info(PathId(3)).unwrap().clone();
    info.priority = Some(3);
    m.update_path(PathId(3), info, t0).unwrap();
    let v = m.view();
    assert_eq!(v.groups.len(), 3);
    assert_eq!(
        m.active_group().map(|g| v.groups[g].paths.clone()),
        Some(ids(&[2]))
    );
    assert!(v.groups[v.active_group.unwrap()].pinned);
    assert_eq!(v.groups[0].status, GroupStatus::Disabled);
}

#[test]
fn starts_without_paths_and_queues() {
    let t0 = Instant::now();
    let mut m = Multipath::new(MapConfig::default(), vec![(PathInfo::new("a"), false)], t0);
    assert_eq!(m.active_group(), None);
    assert!(matches!(m.no_path_verdict(), NoPathVerdict::Queue { .. }));
    m.reinstate_path(PathId(0), ReinstateCause::TransportRecovered, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(0));
    assert_eq!(m.no_path_verdict(), NoPathVerdict::Retry);
    assert!(events(&mut m).contains(&EventKind::QueueingEnded {
        cause: QueueEndCause::PathAvailable
    }));
}

#[test]
fn generation_grows_on_every_change() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    let g0 = m.generation();
    m.fail_path(PathId(0), reason(), t0).unwrap();
    let g1 = m.generation();
    assert!(g1 > g0);
    let _ = m.fail_path(PathId(0), reason(), t0);
    assert_eq!(m.generation(), g1, "a refused message changes nothing");
}

#[test]
fn an_operators_fail_is_not_undone_by_automatic_causes() {
    let t0 = Instant::now();
    let mut m = Multipath::new(MapConfig::default(), plain_paths(2), t0);
    let admin = PathFailReason::new(PathFailKind::Administrative, "failed by operator");
    m.fail_path(PathId(0), admin, t0).unwrap();
    assert_eq!(
        m.reinstate_path(PathId(0), ReinstateCause::TransportRecovered, t0),
        Err(PolicyError::HeldByOperator(PathId(0)))
    );
    m.checker_report(PathId(0), CheckerState::Up, t0).unwrap();
    assert_eq!(
        m.path_state(PathId(0)),
        Some(PathState::new(DmState::Failed, CheckerState::Up))
    );
    assert!(m.view().paths[0].operator_failed);
    m.reinstate_path(PathId(0), ReinstateCause::Operator, t0)
        .unwrap();
    assert_eq!(m.path_state(PathId(0)), Some(PathState::ACTIVE_UP));
    assert!(!m.view().paths[0].operator_failed);
}

#[test]
fn added_paths_get_new_ids_and_removed_ones_leave_no_trace() {
    let t0 = Instant::now();
    let mut m = Multipath::new(MapConfig::default(), plain_paths(2), t0);
    events(&mut m);
    assert_eq!(m.next_path_id(), PathId(2));
    let p2 = m.add_path(PathInfo::new("p2"), true, t0);
    assert_eq!(p2, PathId(2));
    assert_eq!(m.routing(), ids(&[0, 1, 2]));
    let ev = events(&mut m);
    assert_eq!(
        ev[0],
        EventKind::PathAdded {
            path: PathId(2),
            name: "p2".into()
        }
    );
    assert!(ev.contains(&EventKind::Regrouped { groups: 1 }));

    let info = m.remove_path(PathId(1), t0).unwrap();
    assert_eq!(info.name, "p1");
    assert_eq!(m.routing(), ids(&[0, 2]));
    assert_eq!(m.path_ids(), ids(&[0, 2]));
    assert!(!m.contains_path(PathId(1)));
    let v = m.view();
    assert_eq!(
        v.paths.iter().map(|p| p.id).collect::<Vec<_>>(),
        ids(&[0, 2])
    );
    assert_eq!(v.path(PathId(2)).map(|p| p.info.name.as_str()), Some("p2"));
    assert!(v.path(PathId(1)).is_none());
    assert!(v.groups.iter().all(|g| !g.paths.contains(&PathId(1))));
    // Gone means gone: every input naming it is refused, and its id is not given again.
    assert_eq!(
        m.remove_path(PathId(1), t0),
        Err(PolicyError::NoSuchPath(PathId(1)))
    );
    assert_eq!(
        m.fail_path(PathId(1), reason(), t0),
        Err(PolicyError::NoSuchPath(PathId(1)))
    );
    assert_eq!(m.path_state(PathId(1)), None);
    assert_eq!(m.add_path(PathInfo::new("p3"), true, t0), PathId(3));
}

#[test]
fn a_path_added_down_starts_failed_and_recovers() {
    let t0 = Instant::now();
    let mut m = Multipath::new(MapConfig::default(), plain_paths(1), t0);
    let p = m.add_path(PathInfo::new("late"), false, t0);
    assert_eq!(m.path_state(p), Some(PathState::FAILED_DOWN));
    assert_eq!(m.routing(), ids(&[0]));
    let why = m.view().path(p).and_then(|v| v.last_failure.clone());
    assert_eq!(why.map(|r| r.kind), Some(PathFailKind::LoginFailed));
    m.reinstate_path(p, ReinstateCause::TransportRecovered, t0)
        .unwrap();
    assert_eq!(m.routing(), ids(&[0, 1]));
}

#[test]
fn removing_the_active_groups_last_path_fails_over_and_the_last_path_queues() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    m.remove_path(PathId(0), t0).unwrap();
    m.remove_path(PathId(1), t0).unwrap();
    assert_eq!(m.routing(), ids(&[2, 3]));
    let ev = events(&mut m);
    assert!(ev.iter().any(|k| matches!(
        k,
        EventKind::GroupSwitched {
            cause: SwitchCause::Failover,
            ..
        }
    )));
    m.remove_path(PathId(2), t0).unwrap();
    m.remove_path(PathId(3), t0).unwrap();
    assert!(m.routing().is_empty());
    assert!(m.groups().is_empty());
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Queue {
            until: Some(t0 + DEFAULT_NO_PATH_QUEUE)
        }
    );
    assert!(events(&mut m).contains(&EventKind::QueueingStarted {
        until: Some(t0 + DEFAULT_NO_PATH_QUEUE)
    }));
    // A path added to the empty map ends the queueing.
    let t1 = t0 + Duration::from_secs(5);
    let p = m.add_path(PathInfo::new("new"), true, t1);
    assert_eq!(m.routing(), vec![p]);
    assert_eq!(m.no_path_verdict(), NoPathVerdict::Retry);
    assert!(events(&mut m).contains(&EventKind::QueueingEnded {
        cause: QueueEndCause::PathAvailable
    }));
    assert_eq!(m.no_path_time(t1), Duration::from_secs(5));
}

/// One path with priority 1; a path with priority 10 is added: a new, better group.
fn add_better(failback: Failback) -> (Multipath, PathId, Instant) {
    let t0 = Instant::now();
    let config = MapConfig {
        failback,
        flap: None,
        ..MapConfig::default()
    };
    let low = PathInfo {
        priority: Some(1),
        ..PathInfo::new("low")
    };
    let mut m = Multipath::new(config, vec![(low, true)], t0);
    let high = PathInfo {
        priority: Some(10),
        ..PathInfo::new("high")
    };
    let p = m.add_path(high, true, t0);
    (m, p, t0)
}

#[test]
fn a_path_added_in_a_better_group_is_failed_back_to_per_policy() {
    let (m, p, _) = add_better(Failback::Immediate);
    assert_eq!(m.groups().len(), 2);
    assert_eq!(m.groups()[0].paths, vec![p]);
    assert_eq!(m.routing(), vec![p]);

    let (mut m, p, t0) = add_better(Failback::Manual);
    assert_eq!(m.routing(), ids(&[0]), "manual: stays on the old group");
    m.switch_group(0, t0).unwrap();
    assert_eq!(m.routing(), vec![p]);

    let (mut m, p, _) = add_better(Failback::Followover);
    assert_eq!(
        m.routing(),
        vec![p],
        "followover: the group's first path came"
    );
    assert!(events(&mut m).iter().any(|k| matches!(
        k,
        EventKind::GroupSwitched {
            cause: SwitchCause::Failback,
            ..
        }
    )));

    let (mut m, p, t0) = add_better(Failback::Deferred(Duration::from_secs(10)));
    assert_eq!(m.routing(), ids(&[0]));
    m.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(m.routing(), vec![p]);
}

#[test]
fn removing_a_pinned_or_disabled_groups_first_path_keeps_the_group_state() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    m.switch_group(1, t0).unwrap();
    m.remove_path(PathId(2), t0).unwrap();
    let v = m.view();
    assert_eq!(v.active_group, Some(1));
    assert!(v.groups[1].pinned, "the pin follows the group's other path");
    assert_eq!(m.routing(), ids(&[3]));

    let (mut m, t0) = two_groups(Failback::Immediate);
    m.disable_group(1, t0).unwrap();
    m.remove_path(PathId(2), t0).unwrap();
    assert_eq!(m.group_status(1), Some(GroupStatus::Disabled));
}

#[test]
fn an_inferred_failure_reason_is_replaced_once_by_the_transports() {
    let t0 = Instant::now();
    let mut m = Multipath::new(MapConfig::default(), plain_paths(2), t0);
    let guess = PathFailReason::new(PathFailKind::SocketError, "command failed");
    let stated = PathFailReason::new(PathFailKind::ConnectionReset, "by peer");
    m.fail_path_inferred(PathId(0), guess.clone(), t0).unwrap();
    events(&mut m);
    let g = m.generation();
    let t1 = t0 + Duration::from_millis(3);
    assert_eq!(
        m.refine_fail_reason(PathId(0), stated.clone(), t1),
        Ok(true)
    );
    assert!(m.generation() > g);
    assert_eq!(
        m.view().path(PathId(0)).unwrap().last_failure,
        Some(stated.clone())
    );
    assert_eq!(m.view().path(PathId(0)).unwrap().failures, 1);
    let e = m.poll_event().unwrap();
    assert_eq!(e.at, t1);
    assert_eq!(
        e.kind,
        EventKind::PathFailReasonUpdated {
            path: PathId(0),
            from: guess,
            to: stated.clone()
        }
    );
    // Once: the transport's first account stands.
    let later = PathFailReason::new(PathFailKind::Stalled, "");
    assert_eq!(
        m.refine_fail_reason(PathId(0), later.clone(), t1),
        Ok(false)
    );
    // A stated reason is not replaced, nor is anything on an active path.
    m.fail_path(PathId(1), stated, t0).unwrap();
    assert_eq!(
        m.refine_fail_reason(PathId(1), later.clone(), t1),
        Ok(false)
    );
    m.reinstate_path(PathId(1), ReinstateCause::Operator, t1)
        .unwrap();
    assert_eq!(
        m.refine_fail_reason(PathId(1), later.clone(), t1),
        Ok(false)
    );
    // A reinstatement ends the failure the guess was about.
    let guess = PathFailReason::new(PathFailKind::SocketError, "x");
    m.reinstate_path(PathId(0), ReinstateCause::Operator, t1)
        .unwrap();
    m.fail_path_inferred(PathId(0), guess, t1).unwrap();
    m.reinstate_path(PathId(0), ReinstateCause::Operator, t1)
        .unwrap();
    m.fail_path(PathId(0), reason(), t1).unwrap();
    assert_eq!(m.refine_fail_reason(PathId(0), later, t1), Ok(false));
    assert_eq!(
        m.refine_fail_reason(PathId(9), reason(), t1),
        Err(PolicyError::NoSuchPath(PathId(9)))
    );
}

#[test]
fn set_config_regroups_and_announces_each_change() {
    let (mut m, t0) = two_groups(Failback::Immediate);
    events(&mut m);
    assert_eq!(m.groups().len(), 2);
    let gen = m.generation();
    let config = MapConfig {
        grouping: Grouping::Multibus,
        selector: SelectorKind::RoundRobin { repeat_count: 1 },
        ..m.config().clone()
    };
    let changed = m.set_config(config.clone(), t0);
    assert_eq!(changed, vec!["selector", "grouping"]);
    assert_eq!(m.config(), &config);
    assert_eq!(m.groups().len(), 1);
    assert_eq!(m.routing(), ids(&[0, 1, 2, 3]));
    assert!(m.generation() > gen);
    let ev = events(&mut m);
    assert!(ev.iter().any(|e| matches!(
        e,
        EventKind::PolicyChanged { setting: "selector", from, to }
            if from == "service-time" && to == "round-robin"
    )));
    assert!(ev.iter().any(|e| matches!(
        e,
        EventKind::PolicyChanged {
            setting: "grouping",
            ..
        }
    )));
    assert!(ev
        .iter()
        .any(|e| matches!(e, EventKind::Regrouped { groups: 1 })));
    // The same configuration again changes nothing.
    assert!(m.set_config(config, t0).is_empty());
    assert!(events(&mut m).is_empty());
}

#[test]
fn set_config_failback_manual_to_immediate_fails_back_now() {
    let (mut m, t0) = two_groups(Failback::Manual);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    m.fail_path(PathId(1), reason(), t0).unwrap();
    assert_eq!(m.active_group(), Some(1));
    m.reinstate_path(PathId(0), ReinstateCause::Operator, t0)
        .unwrap();
    assert_eq!(m.active_group(), Some(1), "manual: stays");
    let config = MapConfig {
        failback: Failback::Immediate,
        ..m.config().clone()
    };
    assert_eq!(m.set_config(config, t0), vec!["failback"]);
    assert_eq!(m.active_group(), Some(0));
}

#[test]
fn set_config_no_path_retry_reanchors_the_window() {
    let t0 = Instant::now();
    let config = MapConfig {
        no_path: NoPathPolicy::Queue(Duration::from_secs(60)),
        flap: None,
        ..MapConfig::default()
    };
    let mut m = Multipath::new(config, plain_paths(1), t0);
    m.fail_path(PathId(0), reason(), t0).unwrap();
    assert!(matches!(m.no_path_verdict(), NoPathVerdict::Queue { .. }));
    // A 5 s window from the loss of the path: over at t0 + 5 s.
    let t1 = t0 + Duration::from_secs(2);
    let shorter = MapConfig {
        no_path: NoPathPolicy::Queue(Duration::from_secs(5)),
        ..m.config().clone()
    };
    m.set_config(shorter, t1);
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Queue {
            until: Some(t0 + Duration::from_secs(5))
        }
    );
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    // `fail`: queued I/O fails now.
    let fail = MapConfig {
        no_path: NoPathPolicy::Fail,
        ..m.config().clone()
    };
    m.set_config(fail, t1);
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Fail(NoPathReason::PolicyFail)
    );
    // Back to queueing: a window from now.
    let queue = MapConfig {
        no_path: NoPathPolicy::Queue(Duration::from_secs(10)),
        ..m.config().clone()
    };
    m.set_config(queue, t1);
    assert_eq!(
        m.no_path_verdict(),
        NoPathVerdict::Queue {
            until: Some(t1 + Duration::from_secs(10))
        }
    );
}
