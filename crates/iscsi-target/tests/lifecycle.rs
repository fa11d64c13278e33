//! How sessions end and what survives them: logout, an initiator that vanishes with I/O in
//! flight, task management, server shutdown, and the failover case of a re-login while the
//! old connection is silenced.

mod common;

use std::time::Duration;

use common::*;
use iscsi_pdu::*;
use iscsi_target::Fault;
use scsi::cdb::build;

async fn wait_sessions(t: &TestTarget, n: usize) {
    let deadline = tokio::time::Instant::now() + ANSWER;
    while t.control.sessions().len() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} sessions, have {:?}",
            t.control.sessions()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_answers_then_closes() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = ready_client(t.portal(), normal(1)).await;
    let itt = c.next_itt();
    let h = LogoutRequest {
        immediate: true,
        reason: LogoutReason::CLOSE_SESSION,
        itt,
        cid: Cid(0),
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
    };
    c.send(&Pdu::new(Bhs::LogoutRequest(h))).await;
    let p = c.expect_pdu().await;
    let Bhs::LogoutResponse(r) = &p.bhs else {
        panic!("expected a Logout Response, got {p:?}");
    };
    assert_eq!(r.itt, itt);
    assert_eq!(r.response, LogoutResponseCode::SUCCESS);
    assert!(
        matches!(c.expect_closed().await, NoPdu::Eof),
        "a clean close"
    );
    wait_sessions(&t, 0).await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiator_vanishing_with_writes_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TestTarget::start(config(&["127.0.0.1:0"], sparse_backing(dir.path()))).await;
    let mut c = ready_client(t.portal(), normal(1)).await;
    let data = pattern(1, 256 << 10);
    for i in 0..6u64 {
        c.start(&build::write_16(i * 1024, 512, false), &data, 0)
            .await;
    }
    drop(c);
    // The session is released once its commands finished, and the initiator can return.
    wait_sessions(&t, 0).await;
    let mut back = login(t.portal(), normal(1)).await;
    assert_eq!(back.tur().await.sense_triplet(), Some((0x06, 0x29, 0x00)));
    for i in 0..6u64 {
        let r = back.read16(i * 1024, 512).await;
        assert!(r.good());
        assert!(
            r.data == data || r.data.iter().all(|&x| x == 0),
            "region {i} torn"
        );
    }
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_task_frees_the_itt_and_lu_reset_tells_the_others() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut a = ready_client(t.portal(), normal(1)).await;
    let mut b = ready_client(t.portal(), normal(2)).await;

    // ABORT TASK of a WRITE still waiting for its data.
    let itt = a.next_itt();
    let h = a.command(itt, &build::write_16(0, 8, false), 4096, false, true);
    let write_cmd_sn = h.cmd_sn;
    a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    assert!(matches!(a.expect_pdu().await.bhs, Bhs::R2t(_)));
    let tmf = |a: &mut Client, function, referenced, ref_cmd_sn| TaskMgmtRequest {
        immediate: true,
        function,
        lun: Lun::from_number(LUN),
        itt: a.next_itt(),
        referenced_task_tag: referenced,
        cmd_sn: a.cmd_sn,
        exp_stat_sn: a.exp_stat_sn,
        ref_cmd_sn,
        exp_data_sn: SerialNumber(0),
    };
    let req = tmf(&mut a, TmfFunction::ABORT_TASK, itt, write_cmd_sn);
    a.send(&Pdu::new(Bhs::TaskMgmtRequest(req.clone()))).await;
    let p = a.expect_pdu().await;
    assert!(
        matches!(p.bhs, Bhs::TaskMgmtResponse(ref r) if r.itt == req.itt && r.response == TmfResponse::COMPLETE),
        "{p:?}"
    );
    // Aborted twice: it no longer exists.
    let req = tmf(&mut a, TmfFunction::ABORT_TASK, itt, write_cmd_sn);
    a.send(&Pdu::new(Bhs::TaskMgmtRequest(req))).await;
    let p = a.expect_pdu().await;
    assert!(
        matches!(p.bhs, Bhs::TaskMgmtResponse(ref r) if r.response == TmfResponse::NO_TASK),
        "{p:?}"
    );
    // The ITT is free again.
    a.start_with(itt, &build::read_16(0, 8, false), &[], 4096)
        .await;
    let r = a.finish(itt, &[]).await;
    assert!(r.good() && r.data.iter().all(|&x| x == 0));
    assert_eq!(t.control.sessions()[0].outstanding_tasks, 0);

    // LOGICAL UNIT RESET: the other session hears of it.
    let req = tmf(
        &mut a,
        TmfFunction::LOGICAL_UNIT_RESET,
        Itt::RESERVED,
        SerialNumber(0),
    );
    a.send(&Pdu::new(Bhs::TaskMgmtRequest(req))).await;
    let p = a.expect_pdu().await;
    assert!(
        matches!(p.bhs, Bhs::TaskMgmtResponse(ref r) if r.response == TmfResponse::COMPLETE),
        "{p:?}"
    );
    assert_eq!(b.tur().await.sense_triplet(), Some((0x06, 0x29, 0x03)));
    assert!(b.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relogin_while_the_old_connection_is_silenced() {
    // One portal group with two portals: the initiator's path through the first dies
    // silently, and it logs in again (same ISID) through the second.
    let cfg = iscsi_target::ServerConfig {
        targets: vec![target_spec(
            TARGET,
            vec![group(1, &["127.0.0.1:0", "127.0.0.2:0"])],
            mem_backing(),
        )],
        ..Default::default()
    };
    let t = TestTarget::start(cfg).await;
    let (p1, p2) = (t.portals[0], t.portals[1]);
    let mut a = ready_client(p1, normal(1)).await;
    let data = pattern(4, 4096);
    assert!(a.write16(0, &data).await.good());

    t.control
        .set_fault(p1, Fault::Blackhole)
        .expect("blackhole");
    let stuck = a.start(&build::read_16(0, 8, false), &[], 4096).await;
    a.expect_silence().await;

    // The silenced session does not hold up the new one.
    let mut b = login(p2, normal(1)).await;
    assert_eq!(b.tur().await.sense_triplet(), Some((0x06, 0x29, 0x00)));
    let r = b.read16(0, 8).await;
    assert!(r.good() && r.data == data);
    wait_sessions(&t, 1).await;

    // Clearing the fault does not resurrect the old connection.
    t.control.set_fault(p1, Fault::None).expect("clear");
    loop {
        match a.recv(ANSWER).await {
            Ok(p) => assert!(
                p.bhs.itt() == Some(stuck),
                "only the held answer may still arrive: {p:?}"
            ),
            Err(e) => {
                assert!(e.is_closed(), "{e:?}");
                break;
            }
        }
    }
    assert!(b.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection() {
    let t = TestTarget::memory(&["127.0.0.1:0", "127.0.0.2:0"]).await;
    let mut a = ready_client(t.portals[0], normal(1)).await;
    let mut b = ready_client(t.portals[1], normal(2)).await;
    let portal = t.portal();
    t.stop().await;
    assert!(a.expect_closed().await.is_closed());
    assert!(b.expect_closed().await.is_closed());
    assert!(
        tokio::net::TcpStream::connect(portal).await.is_err(),
        "still listening"
    );
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_cold_reset_answers_then_closes() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut a = ready_client(t.portal(), normal(1)).await;
    let mut b = ready_client(t.portal(), normal(2)).await;
    let itt = a.next_itt();
    let req = TaskMgmtRequest {
        immediate: true,
        function: TmfFunction::TARGET_COLD_RESET,
        lun: Lun::default(),
        itt,
        referenced_task_tag: Itt::RESERVED,
        cmd_sn: a.cmd_sn,
        exp_stat_sn: a.exp_stat_sn,
        ref_cmd_sn: SerialNumber(0),
        exp_data_sn: SerialNumber(0),
    };
    a.send(&Pdu::new(Bhs::TaskMgmtRequest(req))).await;
    let p = a.expect_pdu().await;
    assert!(
        matches!(p.bhs, Bhs::TaskMgmtResponse(ref r) if r.itt == itt && r.response == TmfResponse::COMPLETE),
        "{p:?}"
    );
    assert!(matches!(a.expect_closed().await, NoPdu::Eof));
    // The LU was reset for everyone.
    assert_eq!(b.tur().await.sense_triplet(), Some((0x06, 0x29, 0x03)));
    assert!(b.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_a_missing_lun() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut a = ready_client(t.portal(), normal(1)).await;
    let itt = a.next_itt();
    let mut h = a.command(itt, &build::read_10(0, 1, false), 512, true, false);
    h.lun = Lun::from_number(7);
    a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    let r = a.finish(itt, &[]).await;
    assert_eq!(r.status, CHECK_CONDITION);
    assert_eq!(
        r.sense_triplet(),
        Some((0x05, 0x25, 0x00)),
        "LOGICAL UNIT NOT SUPPORTED"
    );
    // REPORT LUNS is answered whichever LUN it is sent to.
    let itt = a.next_itt();
    let mut h = a.command(itt, &build::report_luns(0, 64), 64, true, false);
    h.lun = Lun::from_number(7);
    a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    let r = a.finish(itt, &[]).await;
    assert!(r.good());
    assert_eq!(&r.data[..4], &8u32.to_be_bytes(), "one LUN listed");
    assert!(a.tur().await.good());
    assert_no_target_panics();
}
