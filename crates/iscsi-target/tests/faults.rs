//! Fault injection through `Control`, seen from the initiator's socket: blackhole (open but
//! silent, answers held until cleared), reset (RST), delay (answers late, never early),
//! drop-after (silent after N more PDUs).

mod common;

use std::time::{Duration, Instant};

use common::*;
use iscsi_target::Fault;
use scsi::cdb::build;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_holds_answers_until_cleared() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = ready_client(t.portal(), normal(1)).await;
    let data = pattern(1, 4096);
    assert!(c.write16(0, &data).await.good());

    t.control
        .set_fault(t.portal(), Fault::Blackhole)
        .expect("set fault");
    let itt = c.start(&build::read_10(0, 8, false), &[], 4096).await;
    // No answer, and the TCP connection stays open.
    match c.recv(Duration::from_millis(500)).await {
        Err(NoPdu::Timeout) => {}
        other => panic!("expected silence on an open connection, got {other:?}"),
    }
    // New logins on the portal hang too: the portal is dead, not just the connection.
    let hung = tokio::time::timeout(Duration::from_millis(300), async {
        try_login(t.portal(), normal(2)).await
    })
    .await;
    assert!(hung.is_err(), "a login went through a blackholed portal");

    t.control.set_fault(t.portal(), Fault::None).expect("clear");
    let r = c.finish(itt, &[]).await;
    assert!(r.good(), "{:?}", r.sense_triplet());
    assert!(r.data == data);
    assert!(c.tur().await.good(), "the connection keeps working");
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_portal_closes_with_rst_and_logins_work_again() {
    let t = TestTarget::memory(&["127.0.0.1:0", "127.0.0.2:0"]).await;
    let (p1, p2) = (t.portals[0], t.portals[1]);
    let mut c = ready_client(p1, normal(1)).await;
    let mut other = ready_client(p2, normal(2)).await;

    t.control.reset_portal(p1).expect("reset");
    match c.expect_closed().await {
        NoPdu::Reset => {}
        how => panic!("expected the connection reset (RST), got {how:?}"),
    }
    // Only that portal's connections.
    assert!(other.tur().await.good());
    // The reset is one-shot: new logins work.
    let mut again = ready_client(p1, normal(1)).await;
    assert!(again.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_makes_answers_late() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = ready_client(t.portal(), normal(1)).await;

    t.control
        .set_fault(t.portal(), Fault::Delay { ms: 100 })
        .expect("set fault");
    for _ in 0..3 {
        let start = Instant::now();
        assert!(c.tur().await.good());
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100),
            "answered after {took:?}"
        );
    }
    // Pipelining is kept: two commands sent together both take the delay, not twice it
    // (only the lower bound is asserted; wall-clock upper bounds are not reliable here).
    let start = Instant::now();
    let i1 = c.start(&build::test_unit_ready(), &[], 0).await;
    let i2 = c.start(&build::test_unit_ready(), &[], 0).await;
    assert!(c.finish(i1, &[]).await.good() && c.finish(i2, &[]).await.good());
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_goes_silent_after_n_pdus() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = ready_client(t.portal(), normal(1)).await;

    t.control
        .set_fault(t.portal(), Fault::DropAfter { pdus: 2 })
        .expect("set fault");
    // Two more PDUs are served as usual, answers included (the PDUs sent before the fault
    // was set do not count).
    assert!(c.tur().await.good());
    assert!(c.tur().await.good());
    // From then on nothing is read or answered, and the connection stays open.
    let third = c.start(&build::test_unit_ready(), &[], 0).await;
    c.expect_silence().await;
    let fourth = c.start(&build::test_unit_ready(), &[], 0).await;
    c.expect_silence().await;

    // Cleared, the unread commands are read and answered.
    t.control.set_fault(t.portal(), Fault::None).expect("clear");
    assert!(c.finish(third, &[]).await.good());
    assert!(c.finish(fourth, &[]).await.good());
    assert!(c.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_outlasting_the_keepalive_still_resumes() {
    // The target pings an idle initiator every 200 ms and gives up after 200 ms more; a
    // blackhole four times that long must still end with the connection working, as a
    // silenced connection neither reads, nor answers, nor times out.
    let mut cfg = config(&["127.0.0.1:0"], mem_backing());
    cfg.nop_in_interval = Some(Duration::from_millis(200));
    cfg.nop_in_timeout = Duration::from_millis(200);
    let t = TestTarget::start(cfg).await;
    let mut c = ready_client(t.portal(), normal(1)).await;
    let data = pattern(2, 4096);
    assert!(c.write16(0, &data).await.good());

    t.control
        .set_fault(t.portal(), Fault::Blackhole)
        .expect("set fault");
    let itt = c.start(&build::read_10(0, 8, false), &[], 4096).await;
    match c.recv(Duration::from_millis(1600)).await {
        Err(NoPdu::Timeout) => {}
        other => panic!("expected silence on an open connection, got {other:?}"),
    }
    t.control.set_fault(t.portal(), Fault::None).expect("clear");
    // `finish` answers the target's pings on the way.
    let r = c.finish(itt, &[]).await;
    assert!(r.good() && r.data == data);
    assert!(c.tur().await.good(), "the connection keeps working");
    assert_no_target_panics();
}
