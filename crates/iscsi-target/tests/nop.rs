//! NOP-Out / NOP-In: the target answers pings, pings an idle initiator, and drops a
//! connection whose initiator stops answering.
//!
//! Real time: the target's keepalive reads `std::time::Instant`, so paused tokio time would
//! not move it. Bounds are loose and only check what the configuration implies.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use iscsi_pdu::*;

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(200);

async fn keepalive_target() -> TestTarget {
    let mut cfg = config(&["127.0.0.1:0"], mem_backing());
    cfg.nop_in_interval = Some(INTERVAL);
    cfg.nop_in_timeout = TIMEOUT;
    TestTarget::start(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nop_out_ping_is_echoed() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = ready_client(t.portal(), normal(1)).await;

    for immediate in [true, false] {
        let itt = c.next_itt();
        let cmd_sn = if immediate { c.cmd_sn } else { c.take_cmd_sn() };
        let payload = Bytes::from(pattern(immediate as u8, 1000));
        let h = NopOut {
            immediate,
            lun: Lun::default(),
            itt,
            ttt: Ttt::RESERVED,
            cmd_sn,
            exp_stat_sn: c.exp_stat_sn,
        };
        c.send(&Pdu::with_data(Bhs::NopOut(h), payload.clone()))
            .await;
        let p = c.expect_pdu().await;
        let Bhs::NopIn(r) = &p.bhs else {
            panic!("expected a NOP-In, got {p:?}");
        };
        assert_eq!(r.itt, itt);
        assert_eq!(r.ttt, Ttt::RESERVED, "an answer, not a ping of its own");
        assert_eq!(p.data, payload, "the ping data comes back");
    }
    // CmdSN accounting survived both kinds.
    assert!(c.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_initiator_that_never_answers_is_dropped() {
    let t = keepalive_target().await;
    let mut c = login(t.portal(), normal(1)).await;
    let since = Instant::now();

    // The target pings after the idle interval ...
    let p = c.expect_pdu().await;
    let Bhs::NopIn(ping) = &p.bhs else {
        panic!("expected a NOP-In ping, got {p:?}");
    };
    assert_eq!(ping.itt, Itt::RESERVED);
    assert_ne!(ping.ttt, Ttt::RESERVED, "a ping wants an answer");
    assert!(since.elapsed() >= INTERVAL - Duration::from_millis(20));

    // ... and, unanswered, closes the connection once the ping times out.
    let how = c.expect_closed().await;
    assert!(how.is_closed(), "{how:?}");
    let took = since.elapsed();
    assert!(
        took >= INTERVAL + TIMEOUT - Duration::from_millis(20),
        "{took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The session is released.
    let deadline = tokio::time::Instant::now() + ANSWER;
    while !t.control.sessions().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiator_that_answers_pings_stays() {
    let t = keepalive_target().await;
    let mut c = ready_client(t.portal(), normal(1)).await;

    let until = tokio::time::Instant::now() + 4 * (INTERVAL + TIMEOUT);
    let mut pings = 0;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match c.recv(left).await {
            Ok(p) => match &p.bhs {
                Bhs::NopIn(h) if h.ttt != Ttt::RESERVED => {
                    pings += 1;
                    c.answer_ping(h.ttt).await;
                }
                other => panic!("unexpected {other:?}"),
            },
            Err(NoPdu::Timeout) => break,
            Err(e) => panic!("connection lost although pings were answered: {e:?}"),
        }
    }
    assert!(
        pings >= 2,
        "only {pings} pings in {:?}",
        4 * (INTERVAL + TIMEOUT)
    );
    assert!(c.tur().await.good());
    assert_no_target_panics();
}
