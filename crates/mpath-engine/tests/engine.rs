//! The engine driven by fake paths and synthetic path events; timers under paused time.

use std::sync::Arc;
use std::time::Duration;

use block::{
    BlockDevice, BlockOp, ByteOffset, DeviceInfo, IoErrorKind, Outcome, PathFailKind, PathTransport,
};
use bytes::Bytes;
use mpath_engine::mpath_policy::{
    CheckerState, DmState, EventKind, Failback, FlapDamping, Grouping, MapConfig, NoPathPolicy,
    PathId, PathInfo, PolicyError, ReinstateCause, Reinstatement, RequeueCause, SelectorKind,
    DEFAULT_NO_PATH_QUEUE,
};
use mpath_engine::{EngineConfig, MessageError, MultipathDevice, PathSpec};
use scsi::cdb::{Command, ReadWrite};
use scsi::sense::{
    ASYMMETRIC_ACCESS_STATE_TRANSITION, TARGET_PORT_IN_STANDBY_STATE, UNRECOVERED_READ_ERROR,
};
use scsi::SenseKey;
use testkit::fake_path::{path_error, sense_error, status_error, FakeLu, FakePath};
use tokio::task::JoinHandle;

const BS: u32 = 512;
const BLOCKS: u64 = 2048;

struct Rig {
    lu: Arc<FakeLu>,
    paths: Vec<FakePath>,
    dev: MultipathDevice,
}

fn info(max_transfer: u32, wce: bool) -> DeviceInfo {
    DeviceInfo {
        size: BLOCKS * u64::from(BS),
        block_size: BS,
        physical_block_size: BS,
        max_transfer,
        supports_discard: true,
        supports_write_zeroes: true,
        volatile_write_cache: wce,
    }
}

fn quiet_policy() -> MapConfig {
    MapConfig {
        flap: None,
        ..MapConfig::default()
    }
}

/// `prios`: one path per entry, with that priority (`None`: no prioritizer).
fn rig_with(prios: &[Option<u32>], config: EngineConfig) -> Rig {
    let lu = FakeLu::new(BLOCKS, BS);
    let paths: Vec<FakePath> = (0..prios.len())
        .map(|i| FakePath::new(format!("p{i}"), lu.clone()))
        .collect();
    let specs = paths
        .iter()
        .zip(prios)
        .map(|(p, prio)| {
            let info = PathInfo {
                priority: *prio,
                ..PathInfo::new(p.name())
            };
            PathSpec::new(info, Arc::new(p.clone()) as Arc<dyn PathTransport>)
        })
        .collect();
    let dev = MultipathDevice::start(config, specs).expect("start");
    Rig { lu, paths, dev }
}

fn config(policy: MapConfig) -> EngineConfig {
    EngineConfig {
        policy,
        ..EngineConfig::new("test", info(64 * 1024, true))
    }
}

fn rig(n: usize) -> Rig {
    rig_with(&vec![None; n], config(quiet_policy()))
}

/// Path 0 alone in the first group (priority 10), the others below (priority 1).
fn rig_primary(n: usize, policy: MapConfig) -> Rig {
    let mut prios = vec![Some(1); n];
    prios[0] = Some(10);
    rig_with(&prios, config(policy))
}

async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

fn write(block: u64, fill: u8) -> BlockOp {
    BlockOp::Write {
        offset: ByteOffset(block * u64::from(BS)),
        data: Bytes::from(vec![fill; BS as usize]),
        fua: false,
    }
}

fn read(block: u64, blocks: u32) -> BlockOp {
    BlockOp::Read {
        offset: ByteOffset(block * u64::from(BS)),
        len: blocks * BS,
    }
}

fn spawn(dev: &MultipathDevice, op: BlockOp) -> JoinHandle<Result<Outcome, block::IoError>> {
    let dev = dev.clone();
    tokio::spawn(async move { dev.submit(op).await })
}

async fn path_dm(dev: &MultipathDevice, p: u32) -> DmState {
    dev.status().await.unwrap().view.paths[p as usize].state.dm
}

fn events_of(
    rx: &mut tokio::sync::broadcast::Receiver<mpath_engine::mpath_policy::Event>,
) -> Vec<EventKind> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e.kind);
    }
    v
}

#[tokio::test]
async fn read_write_round_trip_uses_every_path() {
    let r = rig(2);
    for b in 0..16 {
        assert_eq!(r.dev.submit(write(b, b as u8 + 1)).await, Ok(Outcome::Done));
    }
    for b in 0..16 {
        let Ok(Outcome::Data(d)) = r.dev.submit(read(b, 1)).await else {
            panic!("read failed");
        };
        assert!(d.iter().all(|&x| x == b as u8 + 1));
    }
    assert!(r.paths[0].commands() > 0 && r.paths[1].commands() > 0);
    let c = r.dev.counters();
    assert_eq!(c.map.ios, 32);
    assert_eq!(c.map.bytes, 32 * u64::from(BS));
    assert_eq!(c.paths.iter().map(|(_, s)| s.ios).sum::<u64>(), 32);
    assert_eq!(c.map.latency.count(), 32);
}

#[tokio::test]
async fn large_operations_are_split_and_reassembled() {
    let r = rig_with(&[None, None], config(quiet_policy()));
    let small = rig_with(
        &[None],
        EngineConfig {
            policy: quiet_policy(),
            ..EngineConfig::new("small", info(4096, true))
        },
    );
    let data: Vec<u8> = (0..40 * 512).map(|i| (i % 251) as u8).collect();
    let op = BlockOp::Write {
        offset: ByteOffset(512),
        data: Bytes::from(data.clone()),
        fua: false,
    };
    assert_eq!(small.dev.submit(op).await, Ok(Outcome::Done));
    assert_eq!(small.paths[0].commands(), 5, "40 blocks in 8-block WRITEs");
    let got = small.dev.submit(read(1, 40)).await;
    assert_eq!(got, Ok(Outcome::Data(Bytes::from(data.clone()))));
    assert_eq!(small.lu.read(512, data.len()), data);
    drop(r);
}

#[tokio::test]
async fn path_error_fails_the_path_and_reissues_the_same_request() {
    let r = rig_primary(2, quiet_policy());
    let mut ev = r.dev.events();
    r.paths[0].inject(path_error("connection reset by peer"));
    assert_eq!(r.dev.submit(write(3, 0xab)).await, Ok(Outcome::Done));
    assert_eq!(r.lu.read(3 * 512, 512), vec![0xab; 512]);
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Failed);
    assert_eq!(r.paths[1].commands(), 1);
    let kinds = events_of(&mut ev);
    assert!(kinds.iter().any(|k| matches!(
        k,
        EventKind::PathFailed { path: PathId(0), reason } if reason.detail.contains("reset")
    )));
    assert!(kinds.contains(&EventKind::IoRequeued {
        path: PathId(0),
        cause: RequeueCause::PathError
    }));
    let c = r.dev.counters();
    assert_eq!(c.map.requeues, 1);
    assert_eq!(c.map.errors, 0);
    assert_eq!(c.paths[0].1.errors, 1);
    assert_eq!(c.paths[0].1.requeues, 1);
}

#[tokio::test]
async fn target_error_completes_to_caller_and_fails_no_path() {
    let r = rig_primary(2, quiet_policy());
    r.paths[0].inject(sense_error(SenseKey::MEDIUM_ERROR, UNRECOVERED_READ_ERROR));
    let err = r.dev.submit(read(0, 1)).await.unwrap_err();
    assert_eq!(err.kind, IoErrorKind::Target);
    assert!(err.scsi.is_some());
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Active);
    assert_eq!(r.paths[1].commands(), 0);
    assert_eq!(r.dev.counters().map.errors, 1);
}

#[tokio::test]
async fn path_failure_reissues_in_flight_at_once_and_ignores_late_errors() {
    let r = rig_primary(2, quiet_policy());
    r.paths[0].set_hold(true);
    r.paths[0].set_late_failure(true);
    let reqs: Vec<_> = (0..8)
        .map(|b| spawn(&r.dev, write(b, 0x40 + b as u8)))
        .collect();
    settle().await;
    assert_eq!(r.paths[0].held(), 8);
    assert_eq!(r.dev.status().await.unwrap().in_flight, vec![8, 0]);
    // The connection dies; its commands' errors have not arrived yet.
    r.paths[0].fail(PathFailKind::Stalled);
    settle().await;
    for (b, h) in reqs.into_iter().enumerate() {
        assert!(h.is_finished(), "request {b} waited for the dead path");
        assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
        assert_eq!(r.lu.read(b as u64 * 512, 512), vec![0x40 + b as u8; 512]);
    }
    assert_eq!(r.paths[1].commands(), 8);
    // The late path errors reach nobody: no second completion, no second re-issue.
    assert_eq!(r.paths[0].release_failed(), 8);
    settle().await;
    assert_eq!(r.paths[1].commands(), 8);
    assert_eq!(r.lu.writes(), 8);
    let c = r.dev.counters();
    assert_eq!(c.map.ios, 8);
    assert_eq!(c.map.requeues, 8);
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.in_flight, vec![0, 0]);
    assert!(st.recent_events.iter().any(|e| matches!(
        &e.kind,
        EventKind::PathFailed { path: PathId(0), reason } if reason.kind == PathFailKind::Stalled
    )));
}

#[tokio::test]
async fn operator_fail_lets_in_flight_finish_on_the_path() {
    let r = rig_primary(2, quiet_policy());
    r.paths[0].set_hold(true);
    let h = spawn(&r.dev, write(1, 1));
    settle().await;
    r.dev.fail_path(PathId(0)).await.unwrap();
    settle().await;
    assert!(!h.is_finished());
    // New I/O goes elsewhere.
    assert_eq!(r.dev.submit(write(2, 2)).await, Ok(Outcome::Done));
    assert_eq!(r.paths[1].commands(), 1);
    r.paths[0].release_all();
    assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
    assert_eq!(r.paths[1].commands(), 1);
}

#[tokio::test]
async fn stale_path_error_after_reinstatement_does_not_fail_the_path() {
    let r = rig_primary(2, quiet_policy());
    r.paths[0].set_hold(true);
    let h = spawn(&r.dev, write(1, 1));
    settle().await;
    r.dev.fail_path(PathId(0)).await.unwrap();
    assert_eq!(
        r.dev.reinstate_path(PathId(0)).await,
        Ok(Reinstatement::Now)
    );
    r.paths[0].set_hold(false);
    // The old command now fails with a path error: it is about the connection before the
    // reinstatement, so it is re-issued without failing the path again.
    r.paths[0].complete_held_with(path_error("old connection"));
    assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Active);
}

#[tokio::test(start_paused = true)]
async fn no_path_queues_and_completes_when_a_path_returns() {
    let r = rig(2);
    r.paths[0].fail(PathFailKind::ConnectionReset);
    r.paths[1].fail(PathFailKind::ConnectionReset);
    settle().await;
    let h = spawn(&r.dev, write(5, 5));
    settle().await;
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    assert!(!h.is_finished());
    assert_eq!(r.dev.status().await.unwrap().queued, 1);
    r.paths[1].recover();
    settle().await;
    assert!(h.is_finished());
    assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
    let t = r.dev.counters().no_path_time;
    assert!(
        t >= Duration::from_secs(30) && t < Duration::from_secs(31),
        "{t:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn queue_window_expires_then_requests_fail_until_a_path_returns() {
    let r = rig(1);
    let mut ev = r.dev.events();
    r.paths[0].fail(PathFailKind::KeepaliveTimeout);
    settle().await;
    let h = spawn(&r.dev, read(0, 1));
    settle().await;
    tokio::time::advance(DEFAULT_NO_PATH_QUEUE - Duration::from_millis(10)).await;
    settle().await;
    assert!(!h.is_finished());
    tokio::time::advance(Duration::from_millis(20)).await;
    settle().await;
    let err = h.await.unwrap().unwrap_err();
    assert_eq!(err.kind, IoErrorKind::NoPath);
    assert!(
        err.detail.contains("queueing window expired"),
        "{}",
        err.detail
    );
    // New I/O fails at once now.
    let err = r.dev.submit(read(0, 1)).await.unwrap_err();
    assert_eq!(err.kind, IoErrorKind::NoPath);
    let kinds = events_of(&mut ev);
    assert!(kinds
        .iter()
        .any(|k| matches!(k, EventKind::QueueingStarted { until: Some(_) })));
    assert!(kinds
        .iter()
        .any(|k| matches!(k, EventKind::QueueingEnded { .. })));
    assert!(kinds.iter().any(|k| matches!(
        k,
        EventKind::IoFailed {
            kind: IoErrorKind::NoPath,
            ..
        }
    )));
    // A path back: I/O works, and losing it again opens a new window.
    r.paths[0].recover();
    settle().await;
    assert!(r.dev.submit(read(0, 1)).await.is_ok());
    r.paths[0].fail(PathFailKind::KeepaliveTimeout);
    settle().await;
    let h = spawn(&r.dev, read(0, 1));
    settle().await;
    assert!(!h.is_finished());
    h.abort();
}

#[tokio::test(start_paused = true)]
async fn queue_forever_only_when_configured() {
    let r = rig_with(
        &[None],
        config(MapConfig {
            no_path: NoPathPolicy::QueueForever,
            ..quiet_policy()
        }),
    );
    r.paths[0].fail(PathFailKind::ConnectionClosed);
    settle().await;
    let h = spawn(&r.dev, read(0, 1));
    for _ in 0..24 {
        tokio::time::advance(Duration::from_secs(3600)).await;
        settle().await;
    }
    assert!(!h.is_finished());
    r.paths[0].recover();
    settle().await;
    assert!(h.await.unwrap().is_ok());
}

#[tokio::test]
async fn fail_policy_fails_at_once() {
    let r = rig_with(
        &[None],
        config(MapConfig {
            no_path: NoPathPolicy::Fail,
            ..quiet_policy()
        }),
    );
    r.paths[0].fail(PathFailKind::ConnectionClosed);
    settle().await;
    let err = r.dev.submit(read(0, 1)).await.unwrap_err();
    assert_eq!(err.kind, IoErrorKind::NoPath);
    assert!(err.detail.contains("no-path policy: fail"));
}

#[tokio::test(start_paused = true)]
async fn disabling_queueing_fails_queued_io_and_restoring_queues_again() {
    let r = rig(1);
    r.paths[0].fail(PathFailKind::ConnectionClosed);
    settle().await;
    let h = spawn(&r.dev, read(0, 1));
    settle().await;
    r.dev.set_queue_if_no_path(false).await.unwrap();
    settle().await;
    let err = h.await.unwrap().unwrap_err();
    assert!(
        err.detail.contains("queue_if_no_path is off"),
        "{}",
        err.detail
    );
    assert_eq!(
        r.dev.set_queue_if_no_path(false).await,
        Err(MessageError::Policy(PolicyError::QueueIfNoPathAlready(
            false
        )))
    );
    r.dev.set_queue_if_no_path(true).await.unwrap();
    let h = spawn(&r.dev, read(0, 1));
    settle().await;
    assert!(!h.is_finished());
    r.paths[0].recover();
    settle().await;
    assert!(h.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn deferred_failback_waits_its_delay() {
    let r = rig_primary(
        2,
        MapConfig {
            failback: Failback::Deferred(Duration::from_secs(10)),
            ..quiet_policy()
        },
    );
    r.paths[0].fail(PathFailKind::ConnectionReset);
    settle().await;
    r.dev.submit(read(0, 1)).await.unwrap();
    assert_eq!(r.paths[1].commands(), 1);
    r.paths[0].recover();
    settle().await;
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Active);
    tokio::time::advance(Duration::from_secs(9)).await;
    settle().await;
    r.dev.submit(read(0, 1)).await.unwrap();
    assert_eq!(r.paths[1].commands(), 2, "still on the lower group");
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    let before = r.paths[0].commands();
    r.dev.submit(read(0, 1)).await.unwrap();
    assert_eq!(r.paths[0].commands(), before + 1, "failed back");
    assert_eq!(r.paths[1].commands(), 2);
}

#[tokio::test]
async fn operator_switch_is_not_undone_by_failback() {
    let r = rig_primary(2, quiet_policy());
    r.dev.switch_group(1).await.unwrap();
    r.dev.submit(read(0, 1)).await.unwrap();
    assert_eq!(r.paths[1].commands(), 1);
    // Path events in the better group would trigger an immediate failback.
    r.paths[0].fail(PathFailKind::ConnectionReset);
    settle().await;
    r.paths[0].recover();
    settle().await;
    r.dev
        .checker_report(PathId(0), CheckerState::Up)
        .await
        .unwrap();
    r.dev.submit(read(0, 1)).await.unwrap();
    assert_eq!(r.paths[1].commands(), 2);
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.active_group, Some(1));
    assert!(st.view.groups[1].pinned);
}

#[tokio::test(start_paused = true)]
async fn flapping_path_is_held_back() {
    let flap = FlapDamping {
        failures: 3,
        window: Duration::from_secs(60),
        hold: Duration::from_secs(30),
    };
    let r = rig_with(
        &[None, None],
        config(MapConfig {
            flap: Some(flap),
            grouping: Grouping::Multibus,
            ..MapConfig::default()
        }),
    );
    for _ in 0..3 {
        r.paths[0].fail(PathFailKind::ConnectionReset);
        settle().await;
        tokio::time::advance(Duration::from_secs(1)).await;
        r.paths[0].recover();
        settle().await;
    }
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.paths[0].state.checker, CheckerState::Delayed);
    assert!(st.recent_events.iter().any(|e| matches!(
        e.kind,
        EventKind::PathReinstateDelayed {
            path: PathId(0),
            ..
        }
    )));
    let before = r.paths[0].commands();
    for b in 0..4 {
        r.dev.submit(read(b, 1)).await.unwrap();
    }
    assert_eq!(r.paths[0].commands(), before);
    tokio::time::advance(flap.hold).await;
    settle().await;
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.paths[0].state.dm, DmState::Active);
    assert!(st.recent_events.iter().any(|e| e.kind
        == EventKind::PathReinstated {
            path: PathId(0),
            cause: ReinstateCause::HoldElapsed
        }));
}

#[tokio::test(start_paused = true)]
async fn a_held_back_path_whose_transport_fails_again_is_not_reinstated() {
    let r = rig_with(
        &[None, None],
        config(MapConfig {
            flap: Some(FlapDamping::default()),
            ..MapConfig::default()
        }),
    );
    for _ in 0..3 {
        r.paths[0].fail(PathFailKind::ConnectionReset);
        settle().await;
        r.paths[0].recover();
        settle().await;
    }
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.paths[0].state.checker, CheckerState::Delayed);
    r.paths[0].fail(PathFailKind::ConnectionReset);
    settle().await;
    tokio::time::advance(FlapDamping::default().hold * 2).await;
    settle().await;
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.paths[0].state.dm, DmState::Failed);
    assert_eq!(st.view.paths[0].state.checker, CheckerState::Down);
}

#[tokio::test(start_paused = true)]
async fn alua_transitioning_retries_in_the_same_group_without_failing_the_path() {
    let r = rig_primary(2, quiet_policy());
    let transitioning = || sense_error(SenseKey::NOT_READY, ASYMMETRIC_ACCESS_STATE_TRANSITION);
    r.paths[0].inject(transitioning());
    r.paths[0].inject(transitioning());
    let h = spawn(&r.dev, write(1, 9));
    settle().await;
    assert!(!h.is_finished());
    for _ in 0..2 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
    assert_eq!(r.paths[0].commands(), 3);
    assert_eq!(r.paths[1].commands(), 0);
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Active);
}

#[tokio::test(start_paused = true)]
async fn alua_transition_that_never_ends_fails_the_path() {
    let r = rig_primary(
        2,
        MapConfig {
            alua_transition_timeout: Duration::from_secs(1),
            ..quiet_policy()
        },
    );
    for _ in 0..20 {
        r.paths[0].inject(sense_error(
            SenseKey::NOT_READY,
            ASYMMETRIC_ACCESS_STATE_TRANSITION,
        ));
    }
    let h = spawn(&r.dev, write(1, 9));
    for _ in 0..12 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Failed);
    assert_eq!(r.paths[1].commands(), 1);
}

const BUSY: u8 = 0x08;
const TASK_SET_FULL: u8 = 0x28;

#[tokio::test(start_paused = true)]
async fn busy_goes_to_another_path_and_fails_none() {
    // Round-robin over both, from path 0, which answers BUSY; the retry goes to path 1.
    let r = rig_with(
        &[None, None],
        config(MapConfig {
            selector: SelectorKind::RoundRobin { repeat_count: 1 },
            ..quiet_policy()
        }),
    );
    r.paths[0].inject(status_error(BUSY));
    let h = spawn(&r.dev, write(1, 7));
    settle().await;
    tokio::time::advance(Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
    // One BUSY, then the other path: 2 commands, one busy answer, nothing failed.
    let busy: u64 = r.dev.counters().paths.iter().map(|(_, s)| s.busy).sum();
    assert_eq!(busy, 1);
    assert_eq!(r.paths[0].commands(), 1);
    assert_eq!(r.paths[1].commands(), 1, "the retry went to the other path");
    for p in 0..2 {
        assert_eq!(path_dm(&r.dev, p).await, DmState::Active);
    }
    assert_eq!(r.lu.read(u64::from(BS), BS as usize), vec![7; BS as usize]);
    // Round-robin's turn is path 0 again, but the target said BUSY through it a moment
    // ago: new I/O goes to the other path for a while.
    assert_eq!(r.dev.submit(write(2, 8)).await, Ok(Outcome::Done));
    assert_eq!(r.paths[0].commands(), 1, "steered off the busy path");
    assert_eq!(r.paths[1].commands(), 2);
    // Later, path 0 takes its turns again.
    tokio::time::advance(Duration::from_millis(200)).await;
    for b in 3..7 {
        assert_eq!(r.dev.submit(write(b, 9)).await, Ok(Outcome::Done));
    }
    assert!(
        r.paths[0].commands() > 1,
        "path 0 used again after the steer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_storm_shorter_than_the_budget_is_waited_out() {
    let r = rig(1);
    // 60 answers BUSY / TASK SET FULL: 10, 20, 40, 80 ms, then 100 ms apart — about 5.7 s,
    // longer than the 4.6 s that once failed a path.
    for i in 0..60 {
        r.paths[0].inject(status_error(if i % 2 == 0 { BUSY } else { TASK_SET_FULL }));
    }
    let mut ev = r.dev.events();
    let h = spawn(&r.dev, read(0, 1));
    for _ in 0..70 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    assert!(matches!(h.await.unwrap(), Ok(Outcome::Data(_))));
    assert_eq!(r.dev.counters().paths[0].1.busy, 60);
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Active);
    let kinds = events_of(&mut ev);
    assert!(
        !kinds
            .iter()
            .any(|k| matches!(k, EventKind::PathFailed { .. })),
        "a busy target failed a path: {kinds:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_storm_longer_than_the_budget_fails_the_command_not_the_path() {
    let r = rig_with(
        &[None],
        config(MapConfig {
            busy_timeout: Duration::from_secs(2),
            ..quiet_policy()
        }),
    );
    for _ in 0..100 {
        r.paths[0].inject(status_error(BUSY));
    }
    let h = spawn(&r.dev, write(3, 1));
    for _ in 0..30 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    let err = h.await.unwrap().unwrap_err();
    assert_eq!(err.kind, IoErrorKind::Target);
    assert_eq!(err.condition(), Some(block::Condition::Busy));
    assert!(err.detail.contains("busy_timeout"), "{}", err.detail);
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Active);
    // The next command finds the path usable.
    r.paths[0].release_all();
    let left = r.paths[0].commands();
    assert!(left < 100, "retries stopped at the budget: {left} commands");
}

#[tokio::test]
async fn alua_standby_fails_the_path_and_regroups() {
    let r = rig_with(&[None, None, None], config(quiet_policy()));
    // Multibus by priority: all three in one group; path 0 answers standby.
    r.paths[0].inject(sense_error(
        SenseKey::NOT_READY,
        TARGET_PORT_IN_STANDBY_STATE,
    ));
    assert_eq!(r.dev.submit(write(0, 1)).await, Ok(Outcome::Done));
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.paths[0].state.dm, DmState::Failed);
    assert_eq!(
        st.view.groups.len(),
        2,
        "standby path in a group of its own"
    );
    assert_eq!(st.view.groups[1].paths, vec![PathId(0)]);
    assert_eq!(st.view.active_group, Some(0));
}

fn parsed_cdbs(p: &FakePath) -> Vec<Command> {
    p.cdbs()
        .iter()
        .map(|c| Command::parse(c).unwrap())
        .collect()
}

#[tokio::test]
async fn flush_and_fua_keep_their_meaning() {
    let r = rig(1);
    r.dev
        .submit(BlockOp::Write {
            offset: ByteOffset(0),
            data: Bytes::from(vec![1; 512]),
            fua: true,
        })
        .await
        .unwrap();
    r.dev.submit(BlockOp::Flush).await.unwrap();
    let cdbs = parsed_cdbs(&r.paths[0]);
    assert!(matches!(
        cdbs[0],
        Command::Write(ReadWrite { fua: true, .. })
    ));
    assert_eq!(
        cdbs[1],
        Command::SynchronizeCache {
            lba: 0,
            blocks: 0,
            immed: false
        }
    );
    assert_eq!(r.lu.flushes(), 2);

    // A write-through LU: FLUSH has nothing to do.
    let wt = rig_with(
        &[None],
        EngineConfig {
            policy: quiet_policy(),
            ..EngineConfig::new("wt", info(65536, false))
        },
    );
    wt.dev.submit(BlockOp::Flush).await.unwrap();
    assert_eq!(wt.paths[0].commands(), 0);
}

#[tokio::test]
async fn flush_after_a_failover_covers_writes_completed_on_the_old_path() {
    // Writes complete on path 0, path 0 dies, the flush goes through path 1: the LU's
    // cache is one cache, so the flush covers them (see docs/engine.md).
    let r = rig_primary(2, quiet_policy());
    r.dev.submit(write(0, 1)).await.unwrap();
    r.paths[0].fail(PathFailKind::ConnectionReset);
    settle().await;
    r.dev.submit(BlockOp::Flush).await.unwrap();
    assert!(matches!(
        parsed_cdbs(&r.paths[1])[..],
        [Command::SynchronizeCache { .. }]
    ));
}

#[tokio::test]
async fn discard_and_write_zeroes() {
    let r = rig(2);
    r.dev
        .submit(BlockOp::Write {
            offset: ByteOffset(0),
            data: Bytes::from(vec![7; 8 * 512]),
            fua: false,
        })
        .await
        .unwrap();
    r.dev
        .submit(BlockOp::Discard {
            offset: ByteOffset(0),
            len: 2 * 512,
        })
        .await
        .unwrap();
    r.dev
        .submit(BlockOp::WriteZeroes {
            offset: ByteOffset(4 * 512),
            len: 2 * 512,
            may_unmap: false,
        })
        .await
        .unwrap();
    let d = r.lu.read(0, 8 * 512);
    let expect: Vec<u8> = [0u8, 0, 7, 7, 0, 0, 7, 7]
        .iter()
        .flat_map(|&b| vec![b; 512])
        .collect();
    assert_eq!(d, expect);
    let err = r.dev.submit(read(BLOCKS, 1)).await.unwrap_err();
    assert_eq!(err.kind, IoErrorKind::Invalid);
}

#[tokio::test]
async fn messages_return_typed_errors() {
    let r = rig_primary(2, quiet_policy());
    assert_eq!(
        r.dev.fail_path(PathId(7)).await,
        Err(MessageError::Policy(PolicyError::NoSuchPath(PathId(7))))
    );
    r.dev.fail_path(PathId(0)).await.unwrap();
    assert_eq!(
        r.dev.fail_path(PathId(0)).await,
        Err(MessageError::Policy(PolicyError::PathAlreadyFailed(
            PathId(0)
        )))
    );
    assert_eq!(
        r.dev.reinstate_path(PathId(1)).await,
        Err(MessageError::Policy(PolicyError::PathAlreadyActive(
            PathId(1)
        )))
    );
    r.paths[0].set_up(false);
    assert_eq!(
        r.dev.reinstate_path(PathId(0)).await,
        Err(MessageError::PathDown(PathId(0)))
    );
    assert_eq!(
        r.dev.switch_group(0).await,
        Err(MessageError::Policy(PolicyError::GroupHasNoUsablePath(0)))
    );
    assert_eq!(
        r.dev.enable_group(1).await,
        Err(MessageError::Policy(PolicyError::GroupNotDisabled(1)))
    );
    assert_eq!(
        r.dev.switch_group(4).await,
        Err(MessageError::Policy(PolicyError::NoSuchGroup(4)))
    );
    r.dev.shutdown();
    settle().await;
    assert_eq!(r.dev.status().await, Err(MessageError::Stopped));
}

#[tokio::test]
async fn checker_reports_fail_and_reinstate() {
    let r = rig_with(
        &[None, None],
        EngineConfig {
            reinstate_on_recovery: false,
            ..config(quiet_policy())
        },
    );
    r.dev
        .checker_report(PathId(0), CheckerState::Down)
        .await
        .unwrap();
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Failed);
    // Without reinstate_on_recovery a recovered transport waits for the checker.
    r.paths[0].recover();
    settle().await;
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.paths[0].state.dm, DmState::Failed);
    assert_eq!(st.view.paths[0].state.checker, CheckerState::Pending);
    r.dev
        .checker_report(PathId(0), CheckerState::Up)
        .await
        .unwrap();
    assert_eq!(path_dm(&r.dev, 0).await, DmState::Active);
}

#[tokio::test]
async fn selectors_all_work() {
    for selector in [
        SelectorKind::RoundRobin { repeat_count: 2 },
        SelectorKind::QueueLength,
        SelectorKind::ServiceTime,
        SelectorKind::HistoricalServiceTime(Default::default()),
    ] {
        let r = rig_with(
            &[None, None, None],
            config(MapConfig {
                selector,
                ..quiet_policy()
            }),
        );
        for b in 0..12 {
            r.dev.submit(write(b, 1)).await.unwrap();
        }
        if let SelectorKind::RoundRobin { .. } = selector {
            assert!(r.paths.iter().all(|p| p.commands() == 4), "{selector}");
        }
        assert_eq!(
            r.paths.iter().map(|p| p.commands()).sum::<u64>(),
            12,
            "{selector}"
        );
    }
}

#[tokio::test]
async fn shutdown_fails_queued_requests() {
    let r = rig(1);
    r.paths[0].fail(PathFailKind::ConnectionReset);
    settle().await;
    let h = spawn(&r.dev, read(0, 1));
    settle().await;
    r.dev.shutdown();
    let err = h.await.unwrap().unwrap_err();
    assert_eq!(err.kind, IoErrorKind::NoPath);
    assert!(err.detail.contains("stopped"));
}

#[tokio::test]
async fn dropping_a_waiting_request_leaves_nothing_behind() {
    let r = rig_primary(2, quiet_policy());
    r.paths[0].set_hold(true);
    let h = spawn(&r.dev, read(0, 1));
    settle().await;
    assert_eq!(r.dev.status().await.unwrap().in_flight[0], 1);
    h.abort();
    settle().await;
    assert_eq!(r.dev.status().await.unwrap().in_flight[0], 0);
}

fn fenced(hold: Option<Duration>) -> Rig {
    let mut prios = vec![Some(1); 2];
    prios[0] = Some(10);
    rig_with(
        &prios,
        EngineConfig {
            stale_write_fence: hold,
            ..config(quiet_policy())
        },
    )
}

/// A write left in doubt on path 0: held there, path 0 fails, the write is re-issued on
/// path 1 and completes.
async fn write_in_doubt(r: &Rig) {
    r.paths[0].set_hold(true);
    r.paths[0].set_late_failure(true);
    let w1 = spawn(&r.dev, write(4, 1));
    settle().await;
    r.paths[0].fail(PathFailKind::Stalled);
    settle().await;
    assert_eq!(w1.await.unwrap(), Ok(Outcome::Done));
    assert_eq!(r.dev.counters().in_doubt_writes, 1);
}

#[tokio::test(start_paused = true)]
async fn stale_write_fence_holds_overlapping_writes_until_the_path_logs_in_again() {
    let r = fenced(Some(Duration::from_secs(30)));
    write_in_doubt(&r).await;
    assert_eq!(r.dev.status().await.unwrap().in_doubt, 1);
    // An overlapping write waits; reads and other blocks do not.
    let w2 = spawn(&r.dev, write(4, 2));
    assert!(r.dev.submit(read(4, 1)).await.is_ok());
    assert!(r.dev.submit(write(5, 3)).await.is_ok());
    settle().await;
    assert!(!w2.is_finished());
    // The old connection is replaced by a new login: nothing of it can land any more.
    r.paths[0].release_failed();
    r.paths[0].set_hold(false);
    r.paths[0].recover();
    settle().await;
    assert_eq!(w2.await.unwrap(), Ok(Outcome::Done));
    assert_eq!(r.lu.read(4 * 512, 512), vec![2; 512]);
    let c = r.dev.counters();
    assert_eq!(c.fenced_writes, 1);
    assert_eq!(r.dev.status().await.unwrap().in_doubt, 0);
}

#[tokio::test(start_paused = true)]
async fn stale_write_fence_is_bounded_by_its_hold() {
    let r = fenced(Some(Duration::from_secs(5)));
    write_in_doubt(&r).await;
    let w2 = spawn(&r.dev, write(4, 2));
    settle().await;
    tokio::time::advance(Duration::from_secs(4)).await;
    settle().await;
    assert!(!w2.is_finished());
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(w2.await.unwrap(), Ok(Outcome::Done));
}

#[tokio::test]
async fn without_the_fence_writes_go_at_once_and_the_exposure_is_counted() {
    let r = fenced(None);
    write_in_doubt(&r).await;
    assert_eq!(r.dev.submit(write(4, 2)).await, Ok(Outcome::Done));
    let c = r.dev.counters();
    assert_eq!((c.in_doubt_writes, c.fenced_writes), (1, 0));
}

fn spec(p: &FakePath, priority: Option<u32>) -> PathSpec {
    let info = PathInfo {
        priority,
        ..PathInfo::new(p.name())
    };
    PathSpec::new(info, Arc::new(p.clone()) as Arc<dyn PathTransport>)
}

#[tokio::test]
async fn a_path_added_during_io_takes_io_and_reports_events() {
    let r = rig(1);
    let mut ev = r.dev.events();
    // I/O in flight on path 0 while the path is added.
    r.paths[0].set_hold(true);
    let held: Vec<_> = (0..4).map(|b| spawn(&r.dev, write(b, 1))).collect();
    settle().await;
    let p1 = FakePath::new("p1", r.lu.clone());
    let id = r.dev.add_path(spec(&p1, None)).await.unwrap();
    assert_eq!(id, PathId(1));
    assert_eq!(r.dev.path_ids(), vec![PathId(0), PathId(1)]);
    assert_eq!(r.dev.path_count(), 2);
    // Path 0 is busy: the service-time selector sends new I/O to the new path.
    for b in 8..12 {
        assert_eq!(r.dev.submit(write(b, 2)).await, Ok(Outcome::Done));
    }
    assert_eq!(p1.commands(), 4);
    r.paths[0].release_all();
    for h in held {
        assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
    }
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.paths.len(), 2);
    assert_eq!(st.in_flight, vec![0, 0]);
    assert_eq!(r.dev.counters().paths.len(), 2);
    let kinds = events_of(&mut ev);
    assert!(kinds.contains(&EventKind::PathAdded {
        path: PathId(1),
        name: "p1".into()
    }));
    // The new path's transport events reach the map.
    p1.fail(PathFailKind::ConnectionReset);
    settle().await;
    assert_eq!(path_dm(&r.dev, 1).await, DmState::Failed);
}

#[tokio::test]
async fn a_path_added_down_is_reinstated_when_its_transport_logs_in() {
    let r = rig(1);
    let p1 = FakePath::new("p1", r.lu.clone());
    p1.set_up(false);
    let id = r.dev.add_path(spec(&p1, None)).await.unwrap();
    assert_eq!(path_dm(&r.dev, id.0).await, DmState::Failed);
    p1.recover();
    settle().await;
    assert_eq!(path_dm(&r.dev, id.0).await, DmState::Active);
}

#[tokio::test]
async fn removing_a_path_reissues_its_in_flight_commands_at_once_and_forgets_it() {
    let r = rig(2);
    let mut ev = r.dev.events();
    r.paths[0].set_hold(true);
    r.paths[1].set_hold(true);
    let reqs: Vec<_> = (0..8)
        .map(|b| spawn(&r.dev, write(b, 0x60 + b as u8)))
        .collect();
    settle().await;
    let on0 = r.paths[0].held();
    assert!(on0 > 0 && r.paths[1].held() > 0, "spread over both paths");
    r.paths[1].set_hold(false);
    r.paths[1].release_all();
    settle().await;
    // Path 0 is removed while it holds commands; its transport still looks healthy.
    r.dev.remove_path(PathId(0)).await.unwrap();
    settle().await;
    for (b, h) in reqs.into_iter().enumerate() {
        assert!(h.is_finished(), "request {b} waited for the removed path");
        assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
        assert_eq!(r.lu.read(b as u64 * 512, 512), vec![0x60 + b as u8; 512]);
    }
    assert_eq!(r.lu.writes(), 8, "each write executed once");
    // Gone from status, views and counters; its events are ignored; its id is refused.
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.paths.len(), 1);
    assert_eq!(st.view.paths[0].id, PathId(1));
    assert_eq!(st.in_flight, vec![0]);
    assert_eq!(r.dev.path_ids(), vec![PathId(1)]);
    assert_eq!(r.dev.counters().paths.len(), 1);
    let c = r.dev.counters();
    assert_eq!((c.map.ios, c.map.requeues), (8, on0 as u64));
    // The held commands the removed path still has reach nobody if it answers late.
    assert_eq!(r.paths[0].complete_held_with(path_error("late")), on0);
    settle().await;
    assert_eq!(r.lu.writes(), 8);
    r.paths[0].fail(PathFailKind::ConnectionReset);
    r.paths[0].recover();
    settle().await;
    assert_eq!(
        r.dev.fail_path(PathId(0)).await,
        Err(MessageError::Policy(PolicyError::NoSuchPath(PathId(0))))
    );
    assert_eq!(
        r.dev.remove_path(PathId(0)).await,
        Err(MessageError::Policy(PolicyError::NoSuchPath(PathId(0))))
    );
    let kinds = events_of(&mut ev);
    assert!(kinds.contains(&EventKind::PathRemoved {
        path: PathId(0),
        name: "p0".into()
    }));
    assert!(kinds.contains(&EventKind::IoRequeued {
        path: PathId(0),
        cause: RequeueCause::PathRemoved
    }));
    assert!(!kinds.iter().any(|k| matches!(
        k,
        EventKind::PathFailed {
            path: PathId(0),
            ..
        }
    )));
    let p2 = FakePath::new("p2", r.lu.clone());
    assert_eq!(r.dev.add_path(spec(&p2, None)).await, Ok(PathId(2)));
}

#[tokio::test(start_paused = true)]
async fn removing_the_last_path_queues_until_a_path_is_added() {
    let r = rig(1);
    let mut ev = r.dev.events();
    r.paths[0].set_hold(true);
    let h = spawn(&r.dev, write(3, 3));
    settle().await;
    r.dev.remove_path(PathId(0)).await.unwrap();
    settle().await;
    // Not an error: the in-flight write and new I/O queue (no-path policy).
    let h2 = spawn(&r.dev, read(3, 1));
    tokio::time::advance(Duration::from_secs(10)).await;
    settle().await;
    assert!(!h.is_finished() && !h2.is_finished());
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.queued, 2);
    assert!(st.view.paths.is_empty() && st.view.active_group.is_none());
    assert_eq!(r.dev.path_count(), 0);
    let p1 = FakePath::new("p1", r.lu.clone());
    r.dev.add_path(spec(&p1, None)).await.unwrap();
    settle().await;
    assert_eq!(h.await.unwrap(), Ok(Outcome::Done));
    assert_eq!(
        h2.await.unwrap(),
        Ok(Outcome::Data(Bytes::from(vec![3; 512])))
    );
    let kinds = events_of(&mut ev);
    assert!(kinds
        .iter()
        .any(|k| matches!(k, EventKind::QueueingStarted { until: Some(_) })));
    assert!(kinds.contains(&EventKind::QueueingEnded {
        cause: mpath_engine::mpath_policy::QueueEndCause::PathAvailable
    }));
}

#[tokio::test]
async fn removing_the_last_path_with_the_fail_policy_fails_io() {
    let r = rig_with(
        &[None],
        config(MapConfig {
            no_path: NoPathPolicy::Fail,
            ..quiet_policy()
        }),
    );
    r.dev.remove_path(PathId(0)).await.unwrap();
    let err = r.dev.submit(read(0, 1)).await.unwrap_err();
    assert_eq!(err.kind, IoErrorKind::NoPath);
}

#[tokio::test]
async fn a_path_added_in_a_better_group_is_failed_back_to_per_policy() {
    for failback in [Failback::Immediate, Failback::Manual] {
        let r = rig_with(
            &[Some(1)],
            config(MapConfig {
                failback,
                ..quiet_policy()
            }),
        );
        let better = FakePath::new("better", r.lu.clone());
        let id = r.dev.add_path(spec(&better, Some(10))).await.unwrap();
        r.dev.submit(read(0, 1)).await.unwrap();
        let st = r.dev.status().await.unwrap();
        assert_eq!(st.view.groups.len(), 2);
        assert_eq!(st.view.groups[0].paths, vec![id]);
        match failback {
            Failback::Immediate => {
                assert_eq!(
                    better.commands(),
                    1,
                    "immediate: I/O moved to the new group"
                );
                assert_eq!(st.view.active_group, Some(0));
            }
            _ => {
                assert_eq!(better.commands(), 0, "manual: I/O stays");
                assert_eq!(st.view.active_group, Some(1));
                r.dev.switch_group(0).await.unwrap();
                r.dev.submit(read(0, 1)).await.unwrap();
                assert_eq!(better.commands(), 1);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_first_seen_through_an_io_error_takes_the_transports_reason() {
    let r = rig_primary(2, quiet_policy());
    let mut ev = r.dev.events();
    // The command's error does not say why: the reason is inferred.
    r.paths[0].inject(path_error("connection failed"));
    assert_eq!(r.dev.submit(write(1, 1)).await, Ok(Outcome::Done));
    let st = r.dev.status().await.unwrap();
    let why = st.view.path(PathId(0)).and_then(|p| p.last_failure.clone());
    assert_eq!(why.map(|r| r.kind), Some(PathFailKind::SocketError));
    // The transport's own report follows a little later and replaces it.
    tokio::time::advance(Duration::from_millis(5)).await;
    r.paths[0].fail(PathFailKind::KeepaliveTimeout);
    settle().await;
    let st = r.dev.status().await.unwrap();
    let p0 = st.view.path(PathId(0)).unwrap();
    assert_eq!(
        p0.last_failure.as_ref().map(|r| r.kind.clone()),
        Some(PathFailKind::KeepaliveTimeout)
    );
    assert_eq!(p0.failures, 1, "one failure, better described");
    // Both steps stay visible, each with its time.
    let mut failed_at = None;
    let mut updated = None;
    while let Ok(e) = ev.try_recv() {
        match e.kind {
            EventKind::PathFailed {
                path: PathId(0),
                reason,
            } => {
                assert_eq!(reason.kind, PathFailKind::SocketError);
                failed_at = Some(e.at);
            }
            EventKind::PathFailReasonUpdated {
                path: PathId(0),
                from,
                to,
            } => updated = Some((e.at, from.kind, to.kind)),
            _ => {}
        }
    }
    let (at, from, to) = updated.expect("PathFailReasonUpdated");
    assert_eq!(
        (from, to),
        (PathFailKind::SocketError, PathFailKind::KeepaliveTimeout)
    );
    let failed_at = failed_at.expect("PathFailed");
    assert_eq!(at - failed_at, Duration::from_millis(5));
    // The first account from the transport stands: a later one does not replace it.
    r.paths[0].send_event(block::PathEvent::Failed {
        reason: block::PathFailReason::new(PathFailKind::ConnectionReset, "again"),
    });
    settle().await;
    let st = r.dev.status().await.unwrap();
    let why = st.view.path(PathId(0)).and_then(|p| p.last_failure.clone());
    assert_eq!(why.map(|r| r.kind), Some(PathFailKind::KeepaliveTimeout));
    assert!(!events_of(&mut ev)
        .iter()
        .any(|k| matches!(k, EventKind::PathFailReasonUpdated { .. })));
}

#[tokio::test]
async fn an_io_error_that_names_the_path_failure_is_recorded_at_once() {
    let r = rig_primary(2, quiet_policy());
    let mut ev = r.dev.events();
    r.paths[0].inject(block::IoError::path_failed(
        PathFailKind::Stalled,
        "nothing received for 500 ms",
    ));
    assert_eq!(r.dev.submit(write(1, 1)).await, Ok(Outcome::Done));
    let st = r.dev.status().await.unwrap();
    let why = st.view.path(PathId(0)).and_then(|p| p.last_failure.clone());
    assert_eq!(
        why,
        Some(block::PathFailReason::new(
            PathFailKind::Stalled,
            "nothing received for 500 ms"
        ))
    );
    r.paths[0].fail(PathFailKind::KeepaliveTimeout);
    settle().await;
    let st = r.dev.status().await.unwrap();
    let why = st.view.path(PathId(0)).and_then(|p| p.last_failure.clone());
    assert_eq!(why.map(|r| r.kind), Some(PathFailKind::Stalled));
    assert!(!events_of(&mut ev)
        .iter()
        .any(|k| matches!(k, EventKind::PathFailReasonUpdated { .. })));
}

/// A caller that gives up on a request (drops its future: a timeout, a client gone)
/// takes its command out of the path's load: the selector is not steered off that path
/// for ever after.
#[tokio::test]
async fn a_cancelled_request_leaves_no_load_on_its_path() {
    let r = rig(2);
    // One request waits on path 0 (service-time sends the others to the idle path 1).
    r.paths[0].set_hold(true);
    let reqs: Vec<_> = (0..4).map(|b| spawn(&r.dev, read(b, 1))).collect();
    settle().await;
    assert_eq!(r.paths[0].held(), 1);
    for h in reqs {
        h.abort();
    }
    settle().await;
    r.paths[0].set_hold(false);
    r.paths[0].release_all();
    // Both paths idle again: one request at a time goes to either.
    let before = (r.paths[0].commands(), r.paths[1].commands());
    for b in 0..20 {
        assert_eq!(r.dev.submit(read(b, 1)).await.map(|_| ()), Ok(()));
    }
    let on0 = r.paths[0].commands() - before.0;
    let on1 = r.paths[1].commands() - before.1;
    assert!(on0 >= 5 && on1 >= 5, "path 0: {on0}, path 1: {on1}");
}

// Hedged reads.

/// Both paths hold what they get; one request spawned; which path holds it. The other
/// path stops holding.
async fn held_on_one_path(
    r: &Rig,
    op: BlockOp,
) -> (JoinHandle<Result<Outcome, block::IoError>>, usize) {
    for p in &r.paths {
        p.set_hold(true);
    }
    let h = spawn(&r.dev, op);
    settle().await;
    let slow = r
        .paths
        .iter()
        .position(|p| p.held() == 1)
        .expect("held somewhere");
    assert_eq!(r.paths.iter().map(|p| p.held()).sum::<usize>(), 1);
    r.paths[1 - slow].set_hold(false);
    (h, slow)
}

/// Reads on both paths, so that each has a latency estimate (its deadline is the floor,
/// 5 ms, then: the fake paths answer in microseconds).
async fn warm_up(r: &Rig) {
    for i in 0..64 {
        r.dev.submit(read(i, 1)).await.unwrap();
    }
}

/// A read stuck on one path is issued on the other once its deadline passes, not before;
/// the first good answer completes it, with the data; the stuck attempt's late answer is
/// dropped.
#[tokio::test(start_paused = true)]
async fn a_read_stuck_past_its_deadline_is_hedged_and_the_first_good_answer_wins() {
    let r = rig(2);
    r.dev.submit(write(7, 0xab)).await.unwrap();
    warm_up(&r).await;
    let before = r.dev.counters();
    let (h, slow) = held_on_one_path(&r, read(7, 1)).await;
    let fast = 1 - slow;
    let fast_cmds = r.paths[fast].commands();

    // Before the floor (5 ms): nothing on the other path yet.
    tokio::time::advance(Duration::from_millis(4)).await;
    settle().await;
    assert!(!h.is_finished());
    assert_eq!(r.paths[fast].commands(), fast_cmds);

    tokio::time::sleep(Duration::from_millis(2)).await;
    let out = tokio::time::timeout(Duration::from_millis(10), h)
        .await
        .expect("answered by the other path")
        .unwrap()
        .unwrap();
    assert_eq!(out, Outcome::Data(Bytes::from(vec![0xab; BS as usize])));
    assert_eq!(r.paths[fast].commands(), fast_cmds + 1);
    let c = r.dev.counters();
    assert_eq!(c.map.hedged - before.map.hedged, 1);
    assert_eq!(c.map.hedges_won - before.map.hedges_won, 1);
    assert_eq!(c.paths[slow].1.hedged - before.paths[slow].1.hedged, 1);
    assert_eq!(
        r.paths[slow].suspects(),
        1,
        "its transport is asked to check now"
    );
    assert_eq!(r.paths[fast].suspects(), 0);
    assert_eq!(c.map.ios - before.map.ios, 1);
    assert_eq!(c.map.errors, 0);

    // The stuck attempt answers late: nothing more happens.
    assert_eq!(r.paths[slow].release_all(), 1);
    settle().await;
    let after = r.dev.counters();
    assert_eq!(after.map.ios, c.map.ios);
    assert_eq!(after.map.hedged, c.map.hedged);
    assert_eq!(after.map.errors, 0);
}

/// Writes and flushes are never hedged: one stuck on a path waits there, however long,
/// and nothing else is sent.
#[tokio::test(start_paused = true)]
async fn a_hedge_never_duplicates_a_write_or_a_flush() {
    let r = rig(2);
    warm_up(&r).await;
    for op in [write(9, 0x5a), BlockOp::Flush] {
        let (h, slow) = held_on_one_path(&r, op).await;
        let fast = 1 - slow;
        let fast_cmds = r.paths[fast].commands();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!h.is_finished());
        assert_eq!(
            r.paths[fast].commands(),
            fast_cmds,
            "nothing sent elsewhere"
        );
        assert_eq!(r.paths[slow].release_all(), 1);
        h.await.unwrap().unwrap();
        r.paths[slow].set_hold(false);
    }
    assert_eq!(r.dev.counters().map.hedged, 0);
    assert_eq!(r.lu.writes(), 1);
}

/// A target slow on every path alike: reads all pass their deadline, but hedges stay
/// within the budget (2 % of reads, after a burst of 64), and every read completes once.
#[tokio::test(start_paused = true)]
async fn the_hedge_budget_holds_when_every_path_is_slow() {
    let r = rig(2);
    warm_up(&r).await;
    for p in &r.paths {
        p.set_delay(Some(Duration::from_millis(50)));
    }
    let before = r.dev.counters();
    let n = 8000u64;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16u64 {
        let dev = r.dev.clone();
        tasks.spawn(async move {
            for i in 0..n / 16 {
                dev.submit(read((w * 512 + i) % BLOCKS, 1)).await.unwrap();
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let c = r.dev.counters();
    let hedged = c.map.hedged - before.map.hedged;
    assert!(
        hedged > 0,
        "reads past the 5 ms floor are hedged while the budget lasts"
    );
    assert!(
        // The burst, and 2 % of every read so far (the warm-up's too).
        hedged <= 64 + (n + 64) * 20 / 1000 + 1,
        "{hedged} hedges for {n} reads"
    );
    assert_eq!(c.map.ios - before.map.ios, n);
    assert_eq!(c.map.errors, 0);
}

/// `hedge: None` turns hedging off: a stuck read waits on its path.
#[tokio::test(start_paused = true)]
async fn hedging_off_leaves_a_stuck_read_on_its_path() {
    let r = rig_with(
        &[None, None],
        EngineConfig {
            hedge: None,
            ..config(quiet_policy())
        },
    );
    warm_up(&r).await;
    let (h, slow) = held_on_one_path(&r, read(3, 1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!h.is_finished());
    r.paths[slow].release_all();
    h.await.unwrap().unwrap();
    assert_eq!(r.dev.counters().map.hedged, 0);
}

/// A read a hedge abandoned stays counted on the path that holds it: new reads go to the
/// other path instead of piling up there; after a second (or once the path answers) the
/// path takes its share again.
#[tokio::test(start_paused = true)]
async fn a_path_holding_an_abandoned_read_is_not_refilled() {
    let r = rig(2);
    warm_up(&r).await;
    let (h, slow) = held_on_one_path(&r, read(1, 1)).await;
    tokio::time::sleep(Duration::from_millis(6)).await;
    h.await.unwrap().unwrap();
    assert_eq!(r.dev.counters().map.hedges_won, 1);
    let slow_cmds = r.paths[slow].commands();
    for i in 0..20 {
        r.dev.submit(read(i, 1)).await.unwrap();
    }
    assert_eq!(
        r.paths[slow].commands(),
        slow_cmds,
        "nothing more for the path that holds a read"
    );
    r.paths[slow].set_hold(false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..20 {
        r.dev.submit(read(i, 1)).await.unwrap();
    }
    assert!(r.paths[slow].commands() > slow_cmds, "its share again");
    assert_eq!(r.paths[slow].release_all(), 1);
}
