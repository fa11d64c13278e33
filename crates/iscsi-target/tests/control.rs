//! The control plane seen from initiators: ALUA state changes (sense and unit attentions on
//! every portal), LUN offline, the session list, and discovery (SendTargets lists every
//! portal of every target the initiator may see, with its TPGT).

mod common;

use bytes::Bytes;
use common::*;
use iscsi_pdu::*;
use iscsi_session::InitiatorLoginConfig;
use iscsi_target::{AluaState, CtlRequest, CtlResponse, ServerConfig};
use scsi::alua::TargetPortGroupsData;
use scsi::cdb::build;

const P1: &str = "127.0.0.1:0";
const P2: &str = "127.0.0.2:0";
const PRIVATE: &str = "iqn.2026-01.test.mpath:private";
const OTHER_INITIATOR: &str = "iqn.2026-01.test.mpath:other";

/// [`TARGET`] on two portal groups (1 on 127.0.0.1, 2 on 127.0.0.2), and [`PRIVATE`] on the
/// same portals, open only to [`OTHER_INITIATOR`].
fn two_targets() -> ServerConfig {
    let mut cfg = config(&[P1, P2], mem_backing());
    let mut private = target_spec(
        PRIVATE,
        vec![group(1, &[P1]), group(2, &[P2])],
        mem_backing(),
    );
    private.allowed_initiators = vec![OTHER_INITIATOR.into()];
    cfg.targets.push(private);
    cfg
}

async fn read_sense(c: &mut Client) -> Option<(u8, u8, u8)> {
    let r = c.read16(0, 8).await;
    if r.good() {
        None
    } else {
        assert_eq!(r.status, CHECK_CONDITION);
        Some(r.sense_triplet().expect("sense"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alua_standby_and_lun_offline() {
    let t = TestTarget::memory(&[P1, P2]).await;
    let (p1, p2) = (t.portals[0], t.portals[1]);
    let mut s1 = ready_client(p1, normal(1)).await;
    let mut s2 = ready_client(p2, normal(2)).await;

    t.control
        .set_alua(TARGET, 1, AluaState::Standby)
        .expect("set_alua");
    // Through group 1: the change is announced, then media access is refused as standby.
    assert_eq!(read_sense(&mut s1).await, Some((0x06, 0x2a, 0x06)));
    assert_eq!(read_sense(&mut s1).await, Some((0x02, 0x04, 0x0b)));
    assert_eq!(read_sense(&mut s1).await, Some((0x02, 0x04, 0x0b)));
    // Identification still works in standby, and reports the new states.
    let rtpg = s1
        .execute(&build::report_target_port_groups(false, 1024), &[], 1024)
        .await;
    assert!(rtpg.good(), "{:?}", rtpg.sense_triplet());
    let groups = TargetPortGroupsData::parse(&rtpg.data).expect("RTPG data");
    let state = |id: u16| {
        groups
            .groups
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.state)
            .expect("group listed")
    };
    assert_eq!(state(1), scsi::AluaState::STANDBY);
    assert_eq!(state(2), scsi::AluaState::ACTIVE_OPTIMIZED);
    // Through group 2: the unit attention, then I/O as usual.
    assert_eq!(read_sense(&mut s2).await, Some((0x06, 0x2a, 0x06)));
    assert_eq!(read_sense(&mut s2).await, None);

    // Back to active, through the JSON control request the socket uses.
    let r = t.control.handle(CtlRequest::SetAlua {
        target: TARGET.into(),
        group: 1,
        state: AluaState::ActiveOptimized,
    });
    assert_eq!(r, CtlResponse::Ok);
    assert_eq!(read_sense(&mut s1).await, Some((0x06, 0x2a, 0x06)));
    assert_eq!(read_sense(&mut s1).await, None);
    s2.clear_unit_attentions().await;

    // Offline: TEST UNIT READY says NOT READY, MANUAL INTERVENTION REQUIRED on every path.
    t.control
        .set_lun_online(TARGET, LUN, false)
        .expect("offline");
    for c in [&mut s1, &mut s2] {
        let r = c.tur().await;
        assert_eq!(r.status, CHECK_CONDITION);
        assert_eq!(r.sense_triplet(), Some((0x02, 0x04, 0x03)));
    }
    // INQUIRY is not media access.
    assert!(s1.execute(&build::inquiry(None, 96), &[], 96).await.good());
    t.control.set_lun_online(TARGET, LUN, true).expect("online");
    for c in [&mut s1, &mut s2] {
        let seen = c.clear_unit_attentions().await;
        assert_eq!(seen, vec![(0x06, 0x28, 0x00)], "NOT READY TO READY CHANGE");
        assert!(c.read16(0, 8).await.good());
    }

    // Errors name what is wrong and change nothing.
    assert!(t.control.set_alua(TARGET, 9, AluaState::Standby).is_err());
    assert!(t
        .control
        .set_alua("iqn.2026-01.x:none", 1, AluaState::Standby)
        .is_err());
    assert!(t.control.set_lun_online(TARGET, 99, false).is_err());
    assert!(t
        .control
        .set_fault(
            "127.0.0.9:1".parse().unwrap(),
            iscsi_target::Fault::Blackhole
        )
        .is_err());
    assert!(s2.read16(0, 8).await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lists_initiator_isid_tsih() {
    let t = TestTarget::memory(&[P1, P2]).await;
    let (p1, p2) = (t.portals[0], t.portals[1]);
    let a = login(p1, normal(1)).await;
    let b = login(p2, with_digests(normal(2))).await;

    let sessions = t.control.sessions();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let find = |n: u8| {
        sessions
            .iter()
            .find(|s| s.isid == isid(n).to_string())
            .unwrap_or_else(|| panic!("no session with ISID {}", isid(n)))
    };
    let (sa, sb) = (find(1), find(2));
    for (s, c, portal) in [(sa, &a, p1), (sb, &b, p2)] {
        assert_eq!(s.initiator, INITIATOR);
        assert_eq!(s.target, TARGET);
        assert!(!s.discovery);
        assert_eq!(s.tsih, c.login.tsih.0);
        assert_eq!(s.portal, portal);
        assert_eq!(s.outstanding_tasks, 0);
    }
    assert_eq!(sa.isid, "0x8000023d0001");
    assert!(!sa.header_digest && sb.header_digest && sb.data_digest);
    let status = t.control.status();
    assert!(status.portals.iter().all(|p| p.connections == 1));

    // A closed connection leaves the list.
    drop(a);
    let deadline = tokio::time::Instant::now() + ANSWER;
    while t.control.sessions().len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session not released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_no_target_panics();
}

/// SendTargets=All on a discovery session from `initiator`: the text answer, reassembled.
async fn send_targets(portal: std::net::SocketAddr, initiator: &str) -> TextParams {
    send_targets_with(portal, initiator, 8192).await.0
}

/// The same, declaring `max_recv` as MaxRecvDataSegmentLength; also the number of Text
/// Responses the answer took.
async fn send_targets_with(
    portal: std::net::SocketAddr,
    initiator: &str,
    max_recv: u32,
) -> (TextParams, usize) {
    let mut cfg = InitiatorLoginConfig::discovery(initiator, isid(0x0d));
    cfg.proposal.max_recv_data_segment_length = max_recv;
    let mut c = login(portal, cfg).await;
    let mut responses = 0;
    let mut text = TextParams::new();
    text.push("SendTargets", "All");
    let itt = c.next_itt();
    let mut ttt = Ttt::RESERVED;
    let mut body = Bytes::from(text.encode());
    let mut answer = Vec::new();
    loop {
        let h = TextRequest {
            immediate: false,
            final_bit: true,
            continue_bit: false,
            lun: Lun::default(),
            itt,
            ttt,
            cmd_sn: c.take_cmd_sn(),
            exp_stat_sn: c.exp_stat_sn,
        };
        c.send(&Pdu::with_data(
            Bhs::TextRequest(h),
            std::mem::take(&mut body),
        ))
        .await;
        let p = c.expect_pdu().await;
        let Bhs::TextResponse(r) = &p.bhs else {
            panic!("expected a Text Response, got {p:?}");
        };
        assert_eq!(r.itt, itt);
        assert!(p.data.len() <= max_recv as usize);
        responses += 1;
        answer.extend_from_slice(&p.data);
        if !r.continue_bit {
            assert!(r.final_bit);
            break;
        }
        ttt = r.ttt;
    }
    let text = TextParams::decode(&answer).expect("SendTargets answer decodes");
    (text, responses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_targets_lists_every_portal_and_honours_acls() {
    let t = TestTarget::start(two_targets()).await;
    let (p1, p2) = (t.portals[0], t.portals[1]);
    let expected_addresses = vec![format!("{p1},1"), format!("{p2},2")];

    for portal in [p1, p2] {
        let a = send_targets(portal, INITIATOR).await;
        let names: Vec<&str> = a
            .iter()
            .filter(|(k, _)| *k == "TargetName")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(names, vec![TARGET], "the ACL hides {PRIVATE}");
        let addresses: Vec<String> = a
            .iter()
            .filter(|(k, _)| *k == "TargetAddress")
            .map(|(_, v)| v.to_string())
            .collect();
        assert_eq!(addresses, expected_addresses, "asked on {portal}");
    }

    // The initiator in the ACL sees both targets, each with both portals.
    let a = send_targets(p2, OTHER_INITIATOR).await;
    let pairs: Vec<(String, String)> = a
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut expected = Vec::new();
    for name in [TARGET, PRIVATE] {
        expected.push(("TargetName".to_string(), name.to_string()));
        for addr in &expected_addresses {
            expected.push(("TargetAddress".to_string(), addr.clone()));
        }
    }
    assert_eq!(pairs, expected);

    // And the ACL is enforced at login, not only in discovery.
    let mut cfg = normal(1);
    cfg.target_name = Some(PRIVATE.into());
    let e = try_login(p1, cfg).await.err().expect("refused");
    assert!(e.contains("0202") || e.contains("AUTHORIZATION"), "{e}");
    let mut cfg = InitiatorLoginConfig::normal(OTHER_INITIATOR, PRIVATE, isid(1));
    cfg.proposal = normal(1).proposal;
    let mut ok = login(p1, cfg).await;
    ok.clear_unit_attentions().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_send_targets_answer_is_continued() {
    // Twelve targets with long names on both portals: well over 512 bytes of answer.
    let mut cfg = config(&[P1, P2], mem_backing());
    for i in 0..11 {
        cfg.targets.push(target_spec(
            &format!("iqn.2026-01.test.mpath:a-rather-long-target-name-number-{i:02}"),
            vec![group(1, &[P1]), group(2, &[P2])],
            mem_backing(),
        ));
    }
    let t = TestTarget::start(cfg).await;
    let (full, one) = send_targets_with(t.portals[0], INITIATOR, 8192).await;
    assert_eq!(one, 1);
    assert_eq!(full.count("TargetName"), 12);
    assert_eq!(full.count("TargetAddress"), 24);
    let (split, pieces) = send_targets_with(t.portals[0], INITIATOR, 512).await;
    assert!(pieces > 2, "{pieces} Text Responses");
    assert_eq!(split, full, "reassembled answer differs");
    assert_no_target_panics();
}
