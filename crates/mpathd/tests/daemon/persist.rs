//! Persistent reservations through a map (`mpath persist`): a key registered on every
//! path, also on a path that was down and comes back; a registrants-only reservation that
//! holds across a failover; another host preempted; all against mpath's target.

use std::time::Duration;

use block::{DataPhase, ScsiRequest};
use bytes::Bytes;
use iscsi_initiator::{IscsiPath, RetryPolicy, Session, SessionConfig};
use iscsi_target::Fault;
use mpathd::persist::{decode_keys, decode_reservation, pr_in, pr_out, PersistOp};
use mpathd::Request;
use scsi::pr::{PrInAction, PrOutAction, PrOutParams};
use workload::BlockClient;

use crate::common::*;

async fn persist(c: &mpathd::Control, map: &str, op: PersistOp) -> mpathd::Response {
    c.handle(Request::Persist {
        map: map.to_string(),
        op,
    })
    .await
}

async fn keys(p: &IscsiPath) -> Vec<u64> {
    let d = p.command(pr_in(PrInAction::READ_KEYS)).await.unwrap();
    decode_keys(&d).unwrap().1
}

fn write_block(lba: u32) -> ScsiRequest {
    ScsiRequest {
        cdb: Bytes::copy_from_slice(scsi::cdb::build::write_10(lba, 1, false).as_bytes()),
        data: DataPhase::Out(Bytes::from(vec![0x5a; 512])),
    }
}

async fn wait_for(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_every_path_a_reservation_across_a_failover_and_a_preempted_host() {
    let r = TwoPaths::start("persist", "iqn.2026-01.io.mpath:persist", |_| {}).await;
    let (c, map) = (r.c.clone(), r.map.clone());
    // Another host on the same LU, through the first portal.
    let mut other_cfg = SessionConfig::new(r.t.portals[0], &r.t.iqn);
    other_cfg.initiator_name = "iqn.2026-01.io.mpath:other-host".into();
    let other = IscsiPath::new(
        Session::open(other_cfg).await.unwrap(),
        1,
        RetryPolicy::default(),
    );

    // The second portal silent: its path goes down; a registration then skips it.
    r.t.ctl.set_fault(r.t.portals[1], Fault::Blackhole).unwrap();
    wait_for("the second path down", 15, async || {
        let s = c.handle(Request::ShowPaths).await;
        s.text.lines().filter(|l| l.contains("faulty")).count() == 1
    })
    .await;
    let reg = persist(
        &c,
        &map,
        PersistOp::Register {
            old: None,
            key: 0xabc,
            ignore_existing: false,
            aptpl: false,
        },
    )
    .await;
    assert!(reg.ok, "{}", reg.text);
    assert!(
        reg.text.contains("registered when it comes back"),
        "{}",
        reg.text
    );
    assert_eq!(keys(&other).await, vec![0xabc]);

    // Back: the path is registered before it carries I/O again.
    r.t.ctl.set_fault(r.t.portals[1], Fault::None).unwrap();
    wait_for("the key on both paths", 20, async || {
        keys(&other).await == vec![0xabc, 0xabc]
    })
    .await;
    let shown = persist(&c, &map, PersistOp::ReadKeys).await;
    assert!(
        shown.ok && shown.text.contains("2 registered"),
        "{}",
        shown.text
    );

    // The other host registers too; the map reserves, registrants only.
    let p = PrOutParams {
        service_action_key: 0xbad,
        ..PrOutParams::default()
    };
    other
        .command(pr_out(PrOutAction::REGISTER, 0, &p))
        .await
        .unwrap();
    let res = persist(
        &c,
        &map,
        PersistOp::Reserve {
            key: None,
            pr_type: 5,
        },
    )
    .await;
    assert!(res.ok, "{}", res.text);
    other
        .command(write_block(8))
        .await
        .expect("a registrant writes");

    // The map preempts the other host: its writes now conflict, the map's do not.
    let pre = persist(
        &c,
        &map,
        PersistOp::Preempt {
            key: None,
            victim: 0xbad,
            pr_type: 5,
            abort: false,
        },
    )
    .await;
    assert!(pre.ok, "{}", pre.text);
    let e = other.command(write_block(8)).await.unwrap_err();
    assert_eq!(e.scsi.as_ref().map(|s| s.status), Some(0x18), "{e}");
    let dev = r.device();
    dev.write(0, Bytes::from(vec![1u8; 4096]), false)
        .await
        .unwrap();

    // Failover: the first portal silent; writes go on through the second path, which
    // holds the registration — no conflict.
    r.t.ctl.set_fault(r.t.portals[0], Fault::Blackhole).unwrap();
    for i in 0..20u64 {
        dev.write(i * 4096, Bytes::from(vec![2u8; 4096]), false)
            .await
            .unwrap_or_else(|e| panic!("write {i} after the failover: {e}"));
    }
    assert_eq!(&dev.read(0, 4096).await.unwrap()[..], &[2u8; 4096][..]);
    let rr = persist(&c, &map, PersistOp::ReadReservation).await;
    assert!(
        rr.ok && rr.text.contains("Key = 0xabc") && rr.text.contains("registrants only"),
        "{}",
        rr.text
    );
    r.t.ctl.set_fault(r.t.portals[0], Fault::None).unwrap();

    // Release, after the failover, with both paths back: one of them holds it.
    wait_for("both sessions up again", 20, async || {
        let r = c.handle(Request::ShowPaths).await;
        r.data["paths"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|p| p["connection"] == "running"))
    })
    .await;
    let rel = persist(
        &c,
        &map,
        PersistOp::Release {
            key: None,
            pr_type: 5,
        },
    )
    .await;
    assert!(rel.ok, "{}", rel.text);
    let d = other
        .command(pr_in(PrInAction::READ_RESERVATION))
        .await
        .unwrap();
    assert_eq!(decode_reservation(&d).unwrap().1, None);
    // Unregister: the key leaves every path.
    let un = persist(
        &c,
        &map,
        PersistOp::Register {
            old: None,
            key: 0,
            ignore_existing: false,
            aptpl: false,
        },
    )
    .await;
    assert!(
        un.ok && un.text.matches(": unregistered").count() == 2,
        "{}",
        un.text
    );
    assert_eq!(keys(&other).await, Vec::<u64>::new());
    // With no key registered, a reservation needs one given.
    let no = persist(
        &c,
        &map,
        PersistOp::Reserve {
            key: None,
            pr_type: 5,
        },
    )
    .await;
    assert!(
        !no.ok && no.text.contains("registered no key"),
        "{}",
        no.text
    );
    r.stop().await;
}

#[test]
fn persist_requests_travel_as_json() {
    let req = Request::Persist {
        map: "mpatha".into(),
        op: PersistOp::Preempt {
            key: Some(1),
            victim: 2,
            pr_type: 5,
            abort: true,
        },
    };
    let text = serde_json::to_string(&req).unwrap();
    assert!(
        text.contains("\"cmd\":\"persist\"") && text.contains("\"op\":\"preempt\""),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
    assert!(req.mutates());
    let read = Request::Persist {
        map: "mpatha".into(),
        op: PersistOp::ReadKeys,
    };
    assert!(!read.mutates());
}

/// The key a map registered outlives the daemon (`prkeys` beside the bindings file): the
/// next daemon reserves with it and goes on registering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registered_key_survives_a_daemon_restart() {
    use iscsi_target::config::AluaState::ActiveOptimized as AO;
    let dir = testkit::TempDir::new("prkeys");
    let t = Target::start(
        "iqn.2026-01.io.mpath:prkeys",
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 1 << 20)],
    )
    .await;
    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let reg = persist(
        &c,
        &map,
        PersistOp::Register {
            old: None,
            key: 0x5eed,
            ignore_existing: false,
            aptpl: false,
        },
    )
    .await;
    assert!(reg.ok, "{}", reg.text);
    d.stop().await;
    let file = std::fs::read_to_string(dir.path().join("prkeys")).unwrap();
    assert!(file.contains(&format!("0x5eed {}", t.wwid(1))), "{file}");

    let (mut d, c) = start(config(&dir, &t.portals[..1]));
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    // No key given: the map's, from before the restart.
    let res = persist(
        &c,
        &map,
        PersistOp::Reserve {
            key: None,
            pr_type: 5,
        },
    )
    .await;
    assert!(res.ok && res.text.contains("0x5eed"), "{}", res.text);
    let clr = persist(&c, &map, PersistOp::Clear { key: None }).await;
    assert!(clr.ok, "{}", clr.text);
    d.stop().await;
    let file = std::fs::read_to_string(dir.path().join("prkeys")).unwrap();
    assert!(!file.contains("0x5eed"), "{file}");
    t.stop().await;
}
