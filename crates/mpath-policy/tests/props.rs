//! Property test of the map state machine: any sequence of inputs keeps its invariants.

use std::time::{Duration, Instant};

use block::{PathFailKind, PathFailReason};
use mpath_policy::*;
use proptest::prelude::*;
use scsi::AluaState;

const PATHS: u32 = 4;

#[derive(Clone, Debug)]
enum Input {
    Fail(u32, bool),
    Reinstate(u32, bool),
    Checker(u32, u8),
    Switch(usize),
    Disable(usize),
    Enable(usize),
    Queue(bool),
    Priority(u32, u32),
    Alua(u32, u8),
    Advance(u64),
    /// A path joins: its TPG, and whether its transport is up.
    Add(u16, bool),
    Remove(u32),
    /// A new policy for the running map (`reconfigure`).
    SetConfig(MapConfig),
}

fn input() -> impl Strategy<Value = Input> {
    // Ids past the initial paths: added ones, and ones that never exist.
    let p = 0..PATHS + 4;
    prop_oneof![
        3 => (p.clone(), any::<bool>()).prop_map(|(p, admin)| Input::Fail(p, admin)),
        3 => (p.clone(), any::<bool>()).prop_map(|(p, op)| Input::Reinstate(p, op)),
        2 => (p.clone(), 0u8..6).prop_map(|(p, c)| Input::Checker(p, c)),
        1 => (0usize..5).prop_map(Input::Switch),
        1 => (0usize..5).prop_map(Input::Disable),
        1 => (0usize..5).prop_map(Input::Enable),
        1 => any::<bool>().prop_map(Input::Queue),
        1 => (p.clone(), 0u32..3).prop_map(|(p, prio)| Input::Priority(p, prio * 10)),
        1 => (p.clone(), 0u8..4).prop_map(|(p, s)| Input::Alua(p, s)),
        3 => prop_oneof![Just(1u64), Just(10), Just(31), Just(61)].prop_map(Input::Advance),
        1 => (0u16..3, any::<bool>()).prop_map(|(tpg, up)| Input::Add(tpg, up)),
        1 => p.prop_map(Input::Remove),
        1 => config().prop_map(Input::SetConfig),
    ]
}

fn config() -> impl Strategy<Value = MapConfig> {
    (
        prop_oneof![
            Just(Grouping::Failover),
            Just(Grouping::Multibus),
            Just(Grouping::GroupByPrio),
            Just(Grouping::GroupByTpg),
        ],
        prop_oneof![
            Just(Failback::Immediate),
            Just(Failback::Manual),
            Just(Failback::Followover),
            Just(Failback::Deferred(Duration::from_secs(20))),
        ],
        prop_oneof![
            Just(NoPathPolicy::Fail),
            Just(NoPathPolicy::Queue(Duration::from_secs(60))),
            Just(NoPathPolicy::QueueForever),
        ],
        any::<bool>(),
        prop_oneof![
            Just(SelectorKind::ServiceTime),
            Just(SelectorKind::RoundRobin { repeat_count: 1 }),
            Just(SelectorKind::QueueLength),
        ],
    )
        .prop_map(|(grouping, failback, no_path, flap, selector)| MapConfig {
            grouping,
            failback,
            no_path,
            selector,
            flap: flap.then(FlapDamping::default),
            ..MapConfig::default()
        })
}

const CHECKER: [CheckerState; 6] = [
    CheckerState::Up,
    CheckerState::Down,
    CheckerState::Ghost,
    CheckerState::Pending,
    CheckerState::Shaky,
    CheckerState::Delayed,
];

const ALUA: [AluaState; 4] = [
    AluaState::ACTIVE_OPTIMIZED,
    AluaState::ACTIVE_NON_OPTIMIZED,
    AluaState::STANDBY,
    AluaState::UNAVAILABLE,
];

fn check(m: &Multipath, now: Instant) -> Result<(), TestCaseError> {
    let v = m.view();
    let any_usable = v.paths.iter().any(|p| p.state.is_usable());
    for p in &v.paths {
        prop_assert!(p.state.is_valid(), "{}: {}", p.id, p.state);
        prop_assert!(p.group.is_some(), "{} in no group", p.id);
    }
    // Removed paths are nowhere: every grouped path is a path of the map.
    for g in &v.groups {
        prop_assert!(!g.paths.is_empty(), "empty group");
        for p in &g.paths {
            prop_assert!(v.path(*p).is_some(), "{} grouped but not in the map", p);
        }
    }
    let usable = |p: &PathId| v.path(*p).is_some_and(|p| p.state.is_usable());
    prop_assert_eq!(v.active_group.is_some(), any_usable);
    let routing = m.routing();
    prop_assert_eq!(routing.is_empty(), !any_usable);
    if let Some(g) = v.active_group {
        for p in &routing {
            prop_assert!(v.groups[g].paths.contains(p));
            prop_assert!(usable(p));
        }
        // An enabled group with a usable path beats a disabled active one.
        if v.groups[g].status == GroupStatus::Disabled {
            prop_assert!(!v
                .groups
                .iter()
                .any(|gr| gr.status == GroupStatus::Enabled && gr.paths.iter().any(usable)));
        }
    }
    for g in &v.groups {
        if g.pinned {
            prop_assert_eq!(Some(g.index), v.active_group, "pinned group not active");
        }
    }
    match m.no_path_verdict() {
        NoPathVerdict::Retry => prop_assert!(any_usable),
        NoPathVerdict::Queue { until } => {
            prop_assert!(!any_usable);
            prop_assert!(m.queue_if_no_path());
            if let Some(u) = until {
                prop_assert!(u > now, "queueing past its window");
            }
        }
        NoPathVerdict::Fail(_) => prop_assert!(!any_usable),
    }
    Ok(())
}

fn run(config: MapConfig, inputs: Vec<Input>) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let paths = (0..PATHS)
        .map(|i| {
            (
                PathInfo {
                    tpg: Some((i % 2) as u16),
                    ..PathInfo::new(format!("p{i}"))
                },
                true,
            )
        })
        .collect();
    let mut m = Multipath::new(config, paths, t0);
    let mut now = t0;
    let mut generation = m.generation();
    let mut last_event = t0;
    let mut removed: Vec<PathId> = Vec::new();
    for input in inputs {
        let reason = |admin: bool| {
            PathFailReason::new(
                if admin {
                    PathFailKind::Administrative
                } else {
                    PathFailKind::Stalled
                },
                "",
            )
        };
        let _ = match input {
            Input::Fail(p, admin) => m.fail_path(PathId(p), reason(admin), now),
            Input::Reinstate(p, op) => m
                .reinstate_path(
                    PathId(p),
                    if op {
                        ReinstateCause::Operator
                    } else {
                        ReinstateCause::Checker
                    },
                    now,
                )
                .map(|_| ()),
            Input::Checker(p, c) => m.checker_report(PathId(p), CHECKER[c as usize], now),
            Input::Switch(g) => m.switch_group(g, now),
            Input::Disable(g) => m.disable_group(g, now),
            Input::Enable(g) => m.enable_group(g, now),
            Input::Queue(on) => m.set_queue_if_no_path(on, now),
            Input::Priority(p, prio) => match m.path_info(PathId(p)).cloned() {
                Some(mut info) => {
                    info.priority = Some(prio);
                    m.update_path(PathId(p), info, now)
                }
                None => Ok(()),
            },
            Input::Alua(p, s) => m.set_path_alua(PathId(p), ALUA[s as usize], now),
            Input::Advance(secs) => {
                let target = now + Duration::from_secs(secs);
                // Fire every deadline on the way, as the owner task does.
                while let Some(t) = m.poll_timeout().filter(|&t| t <= target) {
                    prop_assert!(t >= now, "deadline in the past");
                    now = t;
                    m.handle_timeout(now);
                }
                now = target;
                m.handle_timeout(now);
                Ok(())
            }
            Input::Add(tpg, up) => {
                let next = m.next_path_id();
                let info = PathInfo {
                    tpg: Some(tpg),
                    ..PathInfo::new("added")
                };
                let id = m.add_path(info, up, now);
                prop_assert_eq!(id, next);
                prop_assert!(!removed.contains(&id), "{} given twice", id);
                Ok(())
            }
            Input::SetConfig(config) => {
                let changed = m.set_config(config.clone(), now);
                prop_assert_eq!(m.config(), &config);
                if !changed.is_empty() {
                    prop_assert!(m.generation() > generation);
                }
                Ok(())
            }
            Input::Remove(p) => {
                let r = m.remove_path(PathId(p), now);
                if r.is_ok() {
                    removed.push(PathId(p));
                }
                r.map(|_| ())
            }
        };
        for id in &removed {
            prop_assert!(!m.contains_path(*id) && m.path_state(*id).is_none());
        }
        prop_assert!(m.generation() >= generation);
        generation = m.generation();
        while let Some(e) = m.poll_event() {
            prop_assert!(e.at >= last_event && e.at <= now);
            last_event = e.at;
        }
        check(&m, now)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(config in config(), inputs in proptest::collection::vec(input(), 1..80)) {
        run(config, inputs)?;
    }
}
