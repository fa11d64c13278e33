//! Property test: random sequences of operations — submit, complete, path fail and
//! recover, operator fail and reinstate, switch group, queueing on/off, a new selector or
//! grouping, target errors, paths added and removed while I/O is in flight, time passing
//! — against a small reference model of multipath behaviour.
//!
//! Checked:
//! - every request completes exactly once, and none is lost (after the paths come back,
//!   every request has completed);
//! - no request fails with `NoPath` unless, at some point while it was pending, the model
//!   had no usable path and its policy said fail (queueing off, or the 60 s window out),
//!   and then with that reason;
//! - target errors only where one was injected, never a path error or `Invalid`;
//! - each block ends holding the data of one of the writes to it that succeeded (no write
//!   executed twice out of order, none lost), and the LU executed exactly as many WRITEs
//!   as writes succeeded (none duplicated: a command handed back when its path failed or
//!   was removed never executes there as well — a removed path's transport is logged
//!   out, as the daemon does);
//! - a removed path is refused by every message, and ids are never given twice;
//! - the counters agree with the results;
//!
//! with and without the stale-write fence.

use std::sync::Arc;
use std::time::Duration;

use block::{BlockDevice, BlockOp, ByteOffset, DeviceInfo, IoError, IoErrorKind, Outcome};
use block::{PathFailKind, PathTransport};
use bytes::Bytes;
use mpath_engine::mpath_policy::{
    Grouping, HstParams, MapConfig, PathId, PathInfo, SelectorKind, DEFAULT_NO_PATH_QUEUE,
};
use mpath_engine::{EngineConfig, MultipathDevice, PathSpec};
use proptest::prelude::*;
use scsi::sense::UNRECOVERED_READ_ERROR;
use scsi::SenseKey;
use testkit::fake_path::{sense_error, FakeLu, FakePath};
use tokio::task::JoinHandle;

const BS: u32 = 512;
const BLOCKS: u64 = 8;
const PATHS: usize = 3;
/// Paths a run may reach by adding some: the initial three and a few more.
const MAX_PATHS: usize = 6;

/// Path operands are drawn from `0..MAX_PATHS` and taken modulo the number of paths
/// created so far (removed ones included: operations on them must be harmless).
#[derive(Clone, Debug)]
enum Op {
    Submit {
        block: u64,
        write: bool,
    },
    Release {
        path: usize,
    },
    Hold {
        path: usize,
        on: bool,
    },
    TransportFail {
        path: usize,
    },
    TransportRecover {
        path: usize,
    },
    OperatorFail {
        path: usize,
    },
    OperatorReinstate {
        path: usize,
    },
    SwitchGroup {
        group: usize,
    },
    QueueIfNoPath {
        on: bool,
    },
    /// A new selector and grouping for the running map (neither changes which paths
    /// are usable, so the model does not see it).
    SetConfig {
        selector: usize,
        grouping: usize,
    },
    InjectTargetError {
        path: usize,
    },
    Advance {
        secs: u64,
    },
    /// A path joins, in the preferred group (`high`) or below.
    AddPath {
        high: bool,
    },
    RemovePath {
        path: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let path = 0..MAX_PATHS;
    prop_oneof![
        6 => (0..BLOCKS, any::<bool>()).prop_map(|(block, write)| Op::Submit { block, write }),
        3 => path.clone().prop_map(|path| Op::Release { path }),
        3 => (path.clone(), any::<bool>()).prop_map(|(path, on)| Op::Hold { path, on }),
        3 => path.clone().prop_map(|path| Op::TransportFail { path }),
        2 => path.clone().prop_map(|path| Op::TransportRecover { path }),
        1 => path.clone().prop_map(|path| Op::OperatorFail { path }),
        1 => path.clone().prop_map(|path| Op::OperatorReinstate { path }),
        1 => (0..2usize).prop_map(|group| Op::SwitchGroup { group }),
        1 => any::<bool>().prop_map(|on| Op::QueueIfNoPath { on }),
        1 => (0..4usize, 0..3usize).prop_map(|(selector, grouping)| Op::SetConfig { selector, grouping }),
        1 => path.clone().prop_map(|path| Op::InjectTargetError { path }),
        1 => any::<bool>().prop_map(|high| Op::AddPath { high }),
        1 => path.clone().prop_map(|path| Op::RemovePath { path }),
        2 => prop_oneof![Just(1u64), Just(30), Just(59), Just(61)].prop_map(|secs| Op::Advance { secs }),
    ]
}

/// What the model says about failing for want of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failing {
    No,
    QueueingOff,
    Expired,
}

/// The reference model: which paths the engine may use, and the no-path policy
/// (bounded queueing, switchable at run time).
struct Model {
    up: Vec<bool>,
    active: Vec<bool>,
    /// Failed by the operator: only the operator reinstates it.
    held: Vec<bool>,
    removed: Vec<bool>,
    queue_on: bool,
    now: Duration,
    window_start: Option<Duration>,
    failing: Failing,
}

impl Model {
    fn usable(&self) -> bool {
        self.active.iter().any(|&a| a)
    }

    /// Re-derive the no-path state after a change of usability.
    fn paths_changed(&mut self, was_usable: bool) {
        match (was_usable, self.usable()) {
            (_, true) => {
                self.window_start = None;
                self.failing = Failing::No;
            }
            (true, false) => {
                if self.queue_on {
                    self.window_start = Some(self.now);
                } else {
                    self.failing = Failing::QueueingOff;
                }
            }
            (false, false) => {}
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if let Some(start) = self.window_start {
            if self.now >= start + DEFAULT_NO_PATH_QUEUE {
                self.window_start = None;
                self.failing = Failing::Expired;
            }
        }
    }
}

struct Request {
    handle: Option<JoinHandle<Result<Outcome, IoError>>>,
    block: u64,
    /// The fill of a write; `None` for a read.
    fill: Option<u8>,
    /// Failing reasons the model allowed while this request was pending.
    may_fail: Vec<Failing>,
    result: Option<Result<Outcome, IoError>>,
}

async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

fn check_failure(
    req: &Request,
    err: &IoError,
    target_errors: &mut u32,
) -> Result<(), TestCaseError> {
    match err.kind {
        IoErrorKind::NoPath => {
            let why = if err.detail.contains("queueing window expired") {
                Failing::Expired
            } else if err.detail.contains("queue_if_no_path is off") {
                Failing::QueueingOff
            } else {
                return Err(TestCaseError::fail(format!("unexpected reason: {err}")));
            };
            prop_assert!(
                req.may_fail.contains(&why),
                "request on block {} failed ({err}) but the model allowed only {:?}",
                req.block,
                req.may_fail
            );
        }
        IoErrorKind::Target => {
            prop_assert!(*target_errors > 0, "target error nobody injected: {err}");
            *target_errors -= 1;
        }
        _ => return Err(TestCaseError::fail(format!("unexpected error kind: {err}"))),
    }
    Ok(())
}

async fn run(
    ops: Vec<Op>,
    late: [bool; PATHS],
    hold: [bool; PATHS],
    fence: bool,
) -> Result<(), TestCaseError> {
    let lu = FakeLu::new(BLOCKS, BS);
    let mut paths: Vec<FakePath> = (0..PATHS)
        .map(|i| FakePath::new(format!("p{i}"), lu.clone()))
        .collect();
    for ((p, &l), &h) in paths.iter().zip(&late).zip(&hold) {
        p.set_late_failure(l);
        p.set_hold(h);
    }
    // Paths 0 and 1 in the preferred group, path 2 below; failback immediate.
    let prios = [10, 10, 1];
    let spec = |p: &FakePath, prio: u32| {
        let info = PathInfo {
            priority: Some(prio),
            ..PathInfo::new(p.name())
        };
        PathSpec::new(info, Arc::new(p.clone()) as Arc<dyn PathTransport>)
    };
    let specs = paths
        .iter()
        .zip(prios)
        .map(|(p, prio)| spec(p, prio))
        .collect();
    let device = DeviceInfo {
        size: BLOCKS * u64::from(BS),
        block_size: BS,
        physical_block_size: BS,
        max_transfer: 65536,
        supports_discard: true,
        supports_write_zeroes: true,
        volatile_write_cache: true,
    };
    let config = EngineConfig {
        policy: MapConfig {
            flap: None,
            ..MapConfig::default()
        },
        stale_write_fence: fence.then_some(Duration::from_secs(30)),
        ..EngineConfig::new("model", device)
    };
    let dev = MultipathDevice::start(config, specs).expect("start");
    let mut model = Model {
        up: vec![true; PATHS],
        active: vec![true; PATHS],
        held: vec![false; PATHS],
        removed: vec![false; PATHS],
        queue_on: true,
        now: Duration::ZERO,
        window_start: None,
        failing: Failing::No,
    };
    let mut reqs: Vec<Request> = Vec::new();
    let mut next_fill = 1u8;
    let mut injected = 0u32;

    for op in ops {
        let was_usable = model.usable();
        let n = paths.len();
        match op {
            Op::Submit { block, write } => {
                let offset = ByteOffset(block * u64::from(BS));
                let (op, fill) = if write {
                    let fill = next_fill;
                    next_fill = next_fill.wrapping_add(1).max(1);
                    let data = Bytes::from(vec![fill; BS as usize]);
                    let op = BlockOp::Write {
                        offset,
                        data,
                        fua: false,
                    };
                    (op, Some(fill))
                } else {
                    (BlockOp::Read { offset, len: BS }, None)
                };
                let d = dev.clone();
                reqs.push(Request {
                    handle: Some(tokio::spawn(async move { d.submit(op).await })),
                    block,
                    fill,
                    may_fail: Vec::new(),
                    result: None,
                });
            }
            Op::Release { path } => {
                paths[path % n].release_all();
                paths[path % n].release_failed();
            }
            Op::Hold { path, on } => paths[path % n].set_hold(on),
            Op::TransportFail { path } => {
                let path = path % n;
                paths[path].fail(PathFailKind::ConnectionReset);
                model.up[path] = false;
                model.active[path] = false;
            }
            Op::TransportRecover { path } => {
                let path = path % n;
                paths[path].recover();
                model.up[path] = true;
                model.active[path] = !model.held[path] && !model.removed[path];
            }
            Op::OperatorFail { path } => {
                let path = path % n;
                let r = dev.fail_path(PathId(path as u32)).await;
                prop_assert_eq!(r.is_ok(), model.active[path]);
                if model.active[path] {
                    model.held[path] = true;
                }
                model.active[path] = false;
            }
            Op::OperatorReinstate { path } => {
                let path = path % n;
                let r = dev.reinstate_path(PathId(path as u32)).await;
                let applies = !model.active[path] && model.up[path] && !model.removed[path];
                prop_assert_eq!(r.is_ok(), applies, "reinstate {}: {:?}", path, r);
                if applies {
                    model.active[path] = true;
                    model.held[path] = false;
                }
            }
            Op::SwitchGroup { group } => {
                let _ = dev.switch_group(group).await;
            }
            Op::QueueIfNoPath { on } => {
                let r = dev.set_queue_if_no_path(on).await;
                prop_assert_eq!(r.is_ok(), on != model.queue_on);
                if on != model.queue_on {
                    model.queue_on = on;
                    if !model.usable() {
                        if on {
                            model.window_start = Some(model.now);
                            model.failing = Failing::No;
                        } else {
                            model.window_start = None;
                            model.failing = Failing::QueueingOff;
                        }
                    }
                }
            }
            Op::SetConfig { selector, grouping } => {
                let selectors = [
                    SelectorKind::ServiceTime,
                    SelectorKind::RoundRobin { repeat_count: 2 },
                    SelectorKind::QueueLength,
                    SelectorKind::HistoricalServiceTime(HstParams::default()),
                ];
                let groupings = [
                    Grouping::GroupByPrio,
                    Grouping::Multibus,
                    Grouping::Failover,
                ];
                let config = MapConfig {
                    selector: selectors[selector],
                    grouping: groupings[grouping],
                    flap: None,
                    ..MapConfig::default()
                };
                prop_assert_eq!(dev.set_config(config).await, Ok(()));
            }
            Op::InjectTargetError { path } => {
                let path = path % n;
                if model.removed[path] {
                    // Nothing would ever consume it.
                    continue;
                }
                paths[path].inject(sense_error(SenseKey::MEDIUM_ERROR, UNRECOVERED_READ_ERROR));
                injected += 1;
            }
            Op::Advance { secs } => {
                let d = Duration::from_secs(secs);
                tokio::time::advance(d).await;
                model.advance(d);
            }
            Op::AddPath { high } => {
                if n == MAX_PATHS {
                    continue;
                }
                let p = FakePath::new(format!("p{n}"), lu.clone());
                let id = dev.add_path(spec(&p, if high { 10 } else { 1 })).await;
                prop_assert_eq!(id, Ok(PathId(n as u32)), "ids are given in order, once");
                paths.push(p);
                model.up.push(true);
                model.active.push(true);
                model.held.push(false);
                model.removed.push(false);
            }
            Op::RemovePath { path } => {
                let path = path % n;
                let r = dev.remove_path(PathId(path as u32)).await;
                prop_assert_eq!(r.is_ok(), !model.removed[path], "remove {}: {:?}", path, r);
                if r.is_ok() {
                    model.removed[path] = true;
                    model.active[path] = false;
                    // What was in flight on it goes elsewhere now, while its transport
                    // still holds the old attempts...
                    model.paths_changed(was_usable);
                    settle().await;
                    // ...which the logout then ends without executing them.
                    paths[path].fail(PathFailKind::ConnectionClosed);
                }
            }
        }
        model.paths_changed(was_usable);
        settle().await;
        for r in reqs.iter_mut().filter(|r| r.result.is_none()) {
            if model.failing != Failing::No {
                r.may_fail.push(model.failing);
            }
            if r.handle.as_ref().is_some_and(|h| h.is_finished()) {
                if let Some(h) = r.handle.take() {
                    r.result = Some(h.await.map_err(|e| TestCaseError::fail(e.to_string()))?);
                }
            }
        }
    }

    // Bring everything back: every request must complete.
    for (i, p) in paths.iter().enumerate() {
        if model.removed[i] {
            p.release_failed();
            continue;
        }
        p.set_hold(false);
        p.release_all();
        p.release_failed();
        if !p.is_up() {
            p.recover();
        }
    }
    settle().await;
    for p in 0..paths.len() {
        let r = dev.reinstate_path(PathId(p as u32)).await;
        if model.removed[p] {
            prop_assert!(r.is_err(), "removed {} reinstated", p);
        } else if r.is_ok() {
            settle().await;
        }
    }
    if model.removed.iter().all(|&r| r) {
        let p = FakePath::new("last", lu.clone());
        prop_assert!(dev.add_path(spec(&p, 1)).await.is_ok());
        paths.push(p);
    }
    settle().await;
    // Every path is usable now; let fence holds of writes put in doubt late run out.
    tokio::time::advance(Duration::from_secs(31)).await;
    settle().await;
    for r in reqs.iter_mut().filter(|r| r.result.is_none()) {
        let Some(h) = r.handle.take() else { continue };
        prop_assert!(h.is_finished(), "request on block {} lost", r.block);
        r.result = Some(h.await.map_err(|e| TestCaseError::fail(e.to_string()))?);
    }

    let mut ok = 0u64;
    let mut failed = 0u64;
    let mut target_errors = injected;
    for r in &reqs {
        match r.result.as_ref() {
            Some(Ok(_)) => ok += 1,
            Some(Err(e)) => {
                failed += 1;
                check_failure(r, e, &mut target_errors)?;
            }
            None => return Err(TestCaseError::fail("request without a result")),
        }
    }
    for block in 0..BLOCKS {
        let data = lu.read(block * u64::from(BS), BS as usize);
        let fill = data[0];
        prop_assert!(data.iter().all(|&b| b == fill), "torn block {block}");
        let written: Vec<u8> = reqs
            .iter()
            .filter(|r| r.block == block && matches!(r.result, Some(Ok(_))))
            .filter_map(|r| r.fill)
            .collect();
        if written.is_empty() {
            prop_assert_eq!(fill, 0, "block {} written by no successful write", block);
        } else {
            prop_assert!(
                written.contains(&fill),
                "block {block} holds {fill}, not one of {written:?}"
            );
        }
    }
    let writes_ok = reqs
        .iter()
        .filter(|r| r.fill.is_some() && matches!(r.result, Some(Ok(_))))
        .count() as u64;
    prop_assert_eq!(
        lu.writes(),
        writes_ok,
        "WRITEs executed vs writes that succeeded"
    );
    let c = dev.counters();
    prop_assert_eq!(
        c.paths.len(),
        dev.path_ids().len(),
        "counters of removed paths shown"
    );
    prop_assert_eq!(c.map.ios, ok);
    prop_assert_eq!(c.map.errors, failed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(
        ops in proptest::collection::vec(op(), 1..60),
        late in any::<[bool; PATHS]>(),
        hold in any::<[bool; PATHS]>(),
        fence in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(run(ops, late, hold, fence))?;
    }
}
