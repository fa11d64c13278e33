//! Changes to a running map: a LUN resize (`resize`) and a new policy (`set_config`),
//! with I/O in flight and running through them. Fake paths; paused time where timers
//! matter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use block::{BlockDevice, BlockOp, ByteOffset, DeviceInfo, IoErrorKind, Outcome, PathTransport};
use bytes::Bytes;
use mpath_engine::mpath_policy::{
    EventKind, Failback, Grouping, HstParams, MapConfig, NoPathPolicy, NoPathReason, PathInfo,
    SelectorKind,
};
use mpath_engine::{EngineConfig, MessageError, MultipathDevice, PathSpec};
use testkit::fake_path::{FakeLu, FakePath};
use tokio::task::JoinHandle;

const BS: u32 = 512;
/// The LU's blocks; the map may start smaller (to grow into it).
const BLOCKS: u64 = 2048;

struct Rig {
    lu: Arc<FakeLu>,
    paths: Vec<FakePath>,
    dev: MultipathDevice,
}

fn info(blocks: u64) -> DeviceInfo {
    DeviceInfo {
        size: blocks * u64::from(BS),
        block_size: BS,
        physical_block_size: BS,
        max_transfer: 64 * 1024,
        supports_discard: true,
        supports_write_zeroes: true,
        volatile_write_cache: true,
    }
}

/// `n` paths without a prioritizer to an LU of `BLOCKS` blocks; the map starts with
/// `map_blocks` of them.
fn rig(n: usize, map_blocks: u64, policy: MapConfig) -> Rig {
    let lu = FakeLu::new(BLOCKS, BS);
    let paths: Vec<FakePath> = (0..n)
        .map(|i| FakePath::new(format!("p{i}"), lu.clone()))
        .collect();
    let specs = paths
        .iter()
        .map(|p| {
            PathSpec::new(
                PathInfo::new(p.name()),
                Arc::new(p.clone()) as Arc<dyn PathTransport>,
            )
        })
        .collect();
    let config = EngineConfig {
        policy,
        ..EngineConfig::new("live", info(map_blocks))
    };
    let dev = MultipathDevice::start(config, specs).expect("start");
    Rig { lu, paths, dev }
}

fn quiet() -> MapConfig {
    MapConfig {
        flap: None,
        ..MapConfig::default()
    }
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

fn read(block: u64) -> BlockOp {
    BlockOp::Read {
        offset: ByteOffset(block * u64::from(BS)),
        len: BS,
    }
}

fn spawn(dev: &MultipathDevice, op: BlockOp) -> JoinHandle<Result<Outcome, block::IoError>> {
    let dev = dev.clone();
    tokio::spawn(async move { dev.submit(op).await })
}

fn commands(r: &Rig) -> u64 {
    r.paths.iter().map(|p| p.commands()).sum()
}

fn data(o: Outcome) -> Bytes {
    match o {
        Outcome::Data(d) => d,
        Outcome::Done => panic!("a read completed without data"),
    }
}

#[tokio::test]
async fn resize_grow_makes_the_new_end_usable() {
    let r = rig(2, BLOCKS / 2, quiet());
    let old_end = BLOCKS / 2;
    let err = r.dev.submit(write(old_end, 7)).await.unwrap_err();
    assert_eq!(err.kind, IoErrorKind::Invalid);
    assert_eq!(commands(&r), 0, "refused before any path sees it");
    let mut events = r.dev.events();

    r.dev.resize(BLOCKS * u64::from(BS)).await.unwrap();
    assert_eq!(r.dev.info().size, BLOCKS * u64::from(BS));
    assert_eq!(r.dev.size(), BLOCKS * u64::from(BS));
    r.dev.submit(write(old_end, 7)).await.unwrap();
    r.dev.submit(write(BLOCKS - 1, 9)).await.unwrap();
    let back = data(r.dev.submit(read(BLOCKS - 1)).await.unwrap());
    assert_eq!(&back[..], &vec![9; BS as usize][..]);
    assert_eq!(
        r.lu.read(old_end * u64::from(BS), BS as usize),
        vec![7; BS as usize]
    );
    // One past the new end is still out of range.
    let err = r.dev.submit(read(BLOCKS)).await.unwrap_err();
    assert_eq!(err.kind, IoErrorKind::Invalid);

    let ev = events.recv().await.unwrap();
    assert_eq!(
        ev.kind,
        EventKind::Resized {
            from: old_end * u64::from(BS),
            to: BLOCKS * u64::from(BS)
        }
    );
    assert_eq!(r.dev.status().await.unwrap().size, BLOCKS * u64::from(BS));
}

#[tokio::test]
async fn resize_shrink_fails_requests_beyond_the_new_end() {
    let r = rig(2, BLOCKS, quiet());
    r.dev.submit(write(BLOCKS - 1, 1)).await.unwrap();
    let new_blocks = BLOCKS / 4;
    r.dev.resize(new_blocks * u64::from(BS)).await.unwrap();
    assert_eq!(r.dev.info().size, new_blocks * u64::from(BS));
    let before = commands(&r);
    for op in [
        read(new_blocks),
        write(new_blocks, 2),
        read(BLOCKS - 1),
        BlockOp::Discard {
            offset: ByteOffset((new_blocks - 1) * u64::from(BS)),
            len: 2 * u64::from(BS),
        },
    ] {
        let err = r.dev.submit(op).await.unwrap_err();
        assert_eq!(err.kind, IoErrorKind::Invalid, "{err}");
        assert!(err.detail.contains("beyond"), "{err}");
    }
    assert_eq!(commands(&r), before, "nothing out of range reaches a path");
    // The last block of the new size works.
    r.dev.submit(write(new_blocks - 1, 3)).await.unwrap();
    data(r.dev.submit(read(new_blocks - 1)).await.unwrap());
    // A size that is not whole blocks is refused and changes nothing.
    assert_eq!(
        r.dev.resize(new_blocks * u64::from(BS) + 1).await,
        Err(MessageError::BadSize {
            size: new_blocks * u64::from(BS) + 1,
            block_size: BS
        })
    );
    assert_eq!(r.dev.size(), new_blocks * u64::from(BS));
    // Growing back makes the old end usable again.
    r.dev.resize(BLOCKS * u64::from(BS)).await.unwrap();
    let back = data(r.dev.submit(read(BLOCKS - 1)).await.unwrap());
    assert_eq!(&back[..], &vec![1; BS as usize][..]);
}

#[tokio::test]
async fn io_in_flight_during_a_resize_completes() {
    let r = rig(2, BLOCKS, quiet());
    for p in &r.paths {
        p.set_hold(true);
    }
    // Writes and reads near the end, all beyond the size the map shrinks to.
    let writes: Vec<_> = (0..8)
        .map(|i| spawn(&r.dev, write(BLOCKS - 1 - i, 0x40 + i as u8)))
        .collect();
    let reads: Vec<_> = (0..4)
        .map(|i| spawn(&r.dev, read(BLOCKS - 20 - i)))
        .collect();
    settle().await;
    let held: usize = r.paths.iter().map(|p| p.held()).sum();
    assert_eq!(held, 12);

    r.dev.resize(BLOCKS / 2 * u64::from(BS)).await.unwrap();
    // New requests see the new size at once...
    let err = r.dev.submit(read(BLOCKS - 1)).await.unwrap_err();
    assert_eq!(err.kind, IoErrorKind::Invalid);
    // ...while those already in flight finish where they were.
    for p in &r.paths {
        p.set_hold(false);
        p.release_all();
    }
    for w in writes {
        w.await.unwrap().unwrap();
    }
    for rd in reads {
        data(rd.await.unwrap().unwrap());
    }
    for i in 0..8u64 {
        assert_eq!(
            r.lu.read((BLOCKS - 1 - i) * u64::from(BS), BS as usize),
            vec![0x40 + i as u8; BS as usize]
        );
    }
    assert_eq!(r.dev.counters().map.errors, 1, "only the out-of-range read");
}

#[tokio::test]
async fn set_config_regroups_switches_selector_and_status_reports_it() {
    // Failover grouping: one path per group, all I/O on the first.
    let r = rig(
        3,
        BLOCKS,
        MapConfig {
            grouping: Grouping::Failover,
            ..quiet()
        },
    );
    for i in 0..6 {
        r.dev.submit(write(i, 1)).await.unwrap();
    }
    assert_eq!(r.paths[0].commands(), 6);
    assert_eq!(r.paths[1].commands() + r.paths[2].commands(), 0);
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.view.groups.len(), 3);
    assert_eq!(st.config.selector, SelectorKind::ServiceTime);
    let mut events = r.dev.events();

    let new = MapConfig {
        grouping: Grouping::Multibus,
        selector: SelectorKind::RoundRobin { repeat_count: 1 },
        failback: Failback::Manual,
        ..quiet()
    };
    r.dev.set_config(new.clone()).await.unwrap();
    let st = r.dev.status().await.unwrap();
    assert_eq!(st.config, new);
    assert_eq!(st.view.groups.len(), 1);
    assert_eq!(st.view.groups[0].paths.len(), 3);
    // Round-robin over the three paths: each gets every third I/O.
    for i in 0..9 {
        r.dev.submit(write(i, 2)).await.unwrap();
    }
    assert_eq!(
        r.paths.iter().map(|p| p.commands()).collect::<Vec<_>>(),
        vec![9, 3, 3]
    );
    let mut changed = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::PolicyChanged { setting, from, to } = e.kind {
            changed.push(format!("{setting}: {from} -> {to}"));
        }
    }
    assert_eq!(
        changed,
        vec![
            "selector: service-time -> round-robin",
            "grouping: failover -> multibus",
            "failback: immediate -> manual",
        ]
    );
    // The same configuration again: nothing to announce.
    r.dev.set_config(new).await.unwrap();
    settle().await;
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn io_in_flight_finishes_on_its_path_across_a_config_change() {
    let r = rig(
        2,
        BLOCKS,
        MapConfig {
            grouping: Grouping::Failover,
            ..quiet()
        },
    );
    r.paths[0].set_hold(true);
    let held: Vec<_> = (0..4).map(|i| spawn(&r.dev, write(i, 5))).collect();
    settle().await;
    assert_eq!(r.paths[0].held(), 4);
    // Both paths in one group, and a selector that counts what is in flight.
    r.dev
        .set_config(MapConfig {
            grouping: Grouping::Multibus,
            selector: SelectorKind::QueueLength,
            ..quiet()
        })
        .await
        .unwrap();
    // Queue-length: path 0 has 4 in flight, so new I/O goes to path 1.
    for i in 10..14 {
        r.dev.submit(write(i, 6)).await.unwrap();
    }
    assert_eq!(r.paths[1].commands(), 4);
    assert_eq!(r.paths[0].commands(), 4, "nothing moved off path 0");
    r.paths[0].set_hold(false);
    r.paths[0].release_all();
    for h in held {
        h.await.unwrap().unwrap();
    }
    assert_eq!(r.dev.counters().map.errors, 0);
    assert_eq!(r.dev.counters().map.requeues, 0, "no I/O was issued again");
}

#[tokio::test]
async fn io_runs_through_many_config_changes_without_errors() {
    let r = rig(3, BLOCKS, quiet());
    let stop = Arc::new(AtomicBool::new(false));
    // Writers, each on its own blocks, verifying every write by reading it back.
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let dev = r.dev.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let block = w * 100 + n % 100;
                    let fill = (n % 251) as u8;
                    dev.submit(write(block, fill)).await?;
                    let back = match dev.submit(read(block)).await? {
                        Outcome::Data(d) => d,
                        Outcome::Done => Bytes::new(),
                    };
                    assert_eq!(&back[..], &vec![fill; BS as usize][..], "block {block}");
                    n += 1;
                    tokio::task::yield_now().await;
                }
                Ok::<u64, block::IoError>(n)
            })
        })
        .collect();
    let selectors = [
        SelectorKind::RoundRobin { repeat_count: 4 },
        SelectorKind::QueueLength,
        SelectorKind::HistoricalServiceTime(HstParams {
            decay_shift: 2,
            ..HstParams::default()
        }),
        SelectorKind::ServiceTime,
    ];
    let groupings = [
        Grouping::Failover,
        Grouping::Multibus,
        Grouping::GroupByPrio,
        Grouping::GroupBySerial,
    ];
    for round in 0..12 {
        let config = MapConfig {
            selector: selectors[round % selectors.len()],
            grouping: groupings[(round / 2) % groupings.len()],
            no_path: if round % 3 == 0 {
                NoPathPolicy::Fail
            } else {
                NoPathPolicy::Queue(Duration::from_secs(5))
            },
            ..quiet()
        };
        r.dev.set_config(config.clone()).await.unwrap();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let st = r.dev.status().await.unwrap();
        assert_eq!(st.config, config);
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w
            .await
            .unwrap()
            .expect("no I/O error across config changes");
    }
    assert!(total > 50, "the workload ran ({total} verified writes)");
    assert_eq!(r.dev.counters().map.errors, 0);
}

#[tokio::test(start_paused = true)]
async fn set_config_no_path_retry_applies_to_queued_io() {
    let r = rig(
        1,
        BLOCKS,
        MapConfig {
            no_path: NoPathPolicy::Queue(Duration::from_secs(60)),
            ..quiet()
        },
    );
    r.paths[0].fail(block::PathFailKind::ConnectionReset);
    settle().await;
    let queued = spawn(&r.dev, read(0));
    settle().await;
    assert_eq!(r.dev.status().await.unwrap().queued, 1);
    // A shorter window, counted from the loss of the path: 10 s later it is over.
    r.dev
        .set_config(MapConfig {
            no_path: NoPathPolicy::Queue(Duration::from_secs(5)),
            ..quiet()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    settle().await;
    assert!(!queued.is_finished(), "still inside the 5 s window");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = queued.await.unwrap().unwrap_err();
    assert_eq!(err.kind, IoErrorKind::NoPath);
    assert_eq!(
        err.detail,
        NoPathReason::QueueExpired {
            after: Duration::from_secs(5)
        }
        .to_string()
    );
}

#[tokio::test(start_paused = true)]
async fn set_config_fail_releases_queued_io_with_an_error_now() {
    let r = rig(1, BLOCKS, quiet());
    r.paths[0].fail(block::PathFailKind::ConnectionReset);
    settle().await;
    let queued = spawn(&r.dev, read(0));
    settle().await;
    assert_eq!(r.dev.status().await.unwrap().queued, 1);
    r.dev
        .set_config(MapConfig {
            no_path: NoPathPolicy::Fail,
            ..quiet()
        })
        .await
        .unwrap();
    let err = queued.await.unwrap().unwrap_err();
    assert_eq!(err.kind, IoErrorKind::NoPath);
    assert_eq!(err.detail, NoPathReason::PolicyFail.to_string());
}
