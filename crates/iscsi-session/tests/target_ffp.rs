//! The target side of full feature phase, driven PDU by PDU in simulated time.
#![allow(clippy::field_reassign_with_default)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use iscsi_pdu::*;
use iscsi_session::target::*;
use iscsi_session::{ConnectionParams, SessionParams};

struct Harness {
    c: TargetConnection,
    now: Instant,
    cmd_sn: SerialNumber,
}

fn harness(session: SessionParams, conn: ConnectionParams, cfg: TargetConfig) -> Harness {
    let now = Instant::now();
    let c = TargetConnection::new(
        cfg,
        session,
        conn,
        SerialNumber(100),
        SerialNumber(100),
        SerialNumber(7),
        now,
    );
    Harness {
        c,
        now,
        cmd_sn: SerialNumber(100),
    }
}

fn default_harness() -> Harness {
    harness(
        SessionParams::default(),
        ConnectionParams::default(),
        TargetConfig::default(),
    )
}

impl Harness {
    fn send(&mut self, pdu: Pdu) {
        self.c.handle_pdu(pdu, self.now);
    }

    fn command(
        &mut self,
        itt: u32,
        read: bool,
        write: bool,
        edtl: u32,
        data: &[u8],
        final_bit: bool,
    ) {
        let h = ScsiCommand {
            immediate: false,
            final_bit,
            read,
            write,
            attr: TaskAttr::SIMPLE,
            lun: Lun::from_number(1),
            itt: Itt(itt),
            expected_data_transfer_length: edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: SerialNumber(0),
            cdb: [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        };
        self.cmd_sn = self.cmd_sn.next();
        self.send(Pdu::with_data(Bhs::ScsiCommand(h), data.to_vec()));
    }

    fn data_out(
        &mut self,
        itt: u32,
        ttt: Ttt,
        data_sn: u32,
        offset: u32,
        data: &[u8],
        final_bit: bool,
    ) {
        let h = DataOut {
            final_bit,
            lun: Lun::from_number(1),
            itt: Itt(itt),
            ttt,
            exp_stat_sn: SerialNumber(0),
            data_sn: SerialNumber(data_sn),
            buffer_offset: offset,
        };
        self.send(Pdu::with_data(Bhs::DataOut(h), data.to_vec()));
    }

    fn sent(&mut self) -> Vec<Pdu> {
        std::iter::from_fn(|| self.c.poll_transmit()).collect()
    }

    fn events(&mut self) -> Vec<TargetEvent> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    fn executed(&mut self) -> Vec<ScsiTask> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                TargetEvent::Execute(t) => Some(t),
                _ => None,
            })
            .collect()
    }
}

fn r2ts(pdus: &[Pdu]) -> Vec<R2t> {
    pdus.iter()
        .filter_map(|p| match &p.bhs {
            Bhs::R2t(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn read_is_split_into_data_in_with_status_collapsed() {
    let mut conn = ConnectionParams::default();
    conn.max_send_data_segment_length = 4096;
    let mut session = SessionParams::default();
    session.max_burst_length = 8192;
    let mut h = harness(session, conn, TargetConfig::default());
    h.command(1, true, false, 20000, &[], true);
    let t = h.executed().pop().unwrap();
    assert_eq!(t.expected_data_transfer_length, 20000);
    h.c.complete(
        Itt(1),
        ScsiOutcome {
            data_in: Bytes::from(vec![0xab; 20000]),
            ..Default::default()
        },
    );
    let pdus = h.sent();
    assert_eq!(pdus.len(), 5); // 4096 ×4 + 3616
    let mut expect_off = 0;
    for (i, p) in pdus.iter().enumerate() {
        let Bhs::DataIn(d) = &p.bhs else {
            panic!("{p:?}")
        };
        assert_eq!(d.data_sn, SerialNumber(i as u32));
        assert_eq!(d.buffer_offset, expect_off);
        expect_off += p.data.len() as u32;
        // F closes each MaxBurstLength sequence and the last PDU.
        assert_eq!(d.final_bit, i == 1 || i == 3 || i == 4, "pdu {i}");
        assert_eq!(d.status_present, i == 4);
    }
    let Bhs::DataIn(last) = &pdus[4].bhs else {
        unreachable!()
    };
    assert_eq!(last.stat_sn, SerialNumber(7));
    assert!(!last.underflow && !last.overflow);
}

#[test]
fn read_residuals() {
    let mut h = default_harness();
    h.command(1, true, false, 1000, &[], true);
    h.executed();
    h.c.complete(
        Itt(1),
        ScsiOutcome {
            data_in: Bytes::from(vec![1; 512]),
            ..Default::default()
        },
    );
    let p = h.sent();
    let Bhs::DataIn(d) = &p[0].bhs else { panic!() };
    assert!(d.underflow && d.status_present);
    assert_eq!(d.residual_count, 488);

    h.command(2, true, false, 256, &[], true);
    h.executed();
    h.c.complete(
        Itt(2),
        ScsiOutcome {
            data_in: Bytes::from(vec![1; 512]),
            ..Default::default()
        },
    );
    let p = h.sent();
    assert_eq!(p[0].data.len(), 256);
    let Bhs::DataIn(d) = &p[0].bhs else { panic!() };
    assert!(d.overflow);
    assert_eq!(d.residual_count, 256);
}

#[test]
fn check_condition_goes_in_a_scsi_response_with_sense_length() {
    let mut h = default_harness();
    h.command(9, true, false, 512, &[], true);
    h.executed();
    let sense = Bytes::from_static(&[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0]);
    h.c.complete(
        Itt(9),
        ScsiOutcome {
            status: 2,
            sense: Some(sense.clone()),
            ..Default::default()
        },
    );
    let p = h.sent();
    assert_eq!(p.len(), 1);
    let Bhs::ScsiResponse(r) = &p[0].bhs else {
        panic!()
    };
    assert_eq!(r.status, 2);
    assert_eq!(r.stat_sn, SerialNumber(7));
    assert_eq!(&p[0].data[..2], &[0, 18]);
    assert_eq!(&p[0].data[2..], &sense[..]);
}

#[test]
fn write_with_all_data_immediate_executes_at_once() {
    let mut h = default_harness();
    h.command(3, false, true, 4096, &[7u8; 4096], true);
    let t = h.executed().pop().unwrap();
    assert_eq!(t.data_out.len(), 4096);
    assert!(h.sent().is_empty());
    h.c.complete(
        Itt(3),
        ScsiOutcome {
            data_out_wanted: Some(4096),
            ..Default::default()
        },
    );
    let p = h.sent();
    let Bhs::ScsiResponse(r) = &p[0].bhs else {
        panic!()
    };
    assert_eq!(r.status, 0);
    assert!(!r.underflow && !r.overflow);
}

#[test]
fn write_solicited_by_r2ts_within_burst_and_outstanding_limits() {
    let mut session = SessionParams::default();
    session.initial_r2t = true;
    session.immediate_data = false;
    session.max_burst_length = 4096;
    session.max_outstanding_r2t = 2;
    let mut h = harness(
        session,
        ConnectionParams::default(),
        TargetConfig::default(),
    );
    h.command(5, false, true, 12288, &[], true);
    let first = r2ts(&h.sent());
    assert_eq!(first.len(), 2);
    assert_eq!(
        (
            first[0].buffer_offset,
            first[0].desired_data_transfer_length
        ),
        (0, 4096)
    );
    assert_eq!(
        (first[1].buffer_offset, first[1].r2t_sn),
        (4096, SerialNumber(1))
    );
    assert_ne!(first[0].ttt, first[1].ttt);
    // First burst in two PDUs.
    h.data_out(5, first[0].ttt, 0, 0, &[1u8; 2048], false);
    h.data_out(5, first[0].ttt, 1, 2048, &[1u8; 2048], true);
    let third = r2ts(&h.sent());
    assert_eq!(third.len(), 1);
    assert_eq!(
        (third[0].buffer_offset, third[0].r2t_sn),
        (8192, SerialNumber(2))
    );
    h.data_out(5, third[0].ttt, 0, 8192, &[3u8; 4096], true);
    assert!(h.executed().is_empty());
    h.data_out(5, first[1].ttt, 0, 4096, &[2u8; 4096], true);
    let t = h.executed().pop().unwrap();
    assert_eq!(&t.data_out[..4096], &[1u8; 4096][..]);
    assert_eq!(&t.data_out[4096..8192], &[2u8; 4096][..]);
    assert_eq!(&t.data_out[8192..], &[3u8; 4096][..]);
}

#[test]
fn unsolicited_data_then_r2t_for_the_rest() {
    let mut session = SessionParams::default();
    session.initial_r2t = false;
    session.immediate_data = true;
    session.first_burst_length = 8192;
    let mut h = harness(
        session,
        ConnectionParams::default(),
        TargetConfig::default(),
    );
    // 1 KiB immediate, F clear: unsolicited Data-Out up to FirstBurstLength follows.
    h.command(6, false, true, 16384, &[9u8; 1024], false);
    let r = r2ts(&h.sent());
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].buffer_offset, r[0].desired_data_transfer_length),
        (8192, 8192)
    );
    h.data_out(6, Ttt::RESERVED, 0, 1024, &[9u8; 7168], true);
    h.data_out(6, r[0].ttt, 0, 8192, &[8u8; 8192], true);
    let t = h.executed().pop().unwrap();
    assert_eq!(&t.data_out[..8192], &[9u8; 8192][..]);
    assert_eq!(&t.data_out[8192..], &[8u8; 8192][..]);
}

#[test]
fn wrong_data_sn_fails_the_write_and_late_data_is_ignored() {
    let mut session = SessionParams::default();
    session.initial_r2t = false;
    session.immediate_data = false;
    let mut h = harness(
        session,
        ConnectionParams::default(),
        TargetConfig::default(),
    );
    h.command(8, false, true, 1024, &[], false);
    h.sent();
    h.data_out(8, Ttt::RESERVED, 0, 0, &[0u8; 512], false);
    h.data_out(8, Ttt::RESERVED, 0, 512, &[0u8; 512], true); // DataSN should be 1
    let p = h.sent();
    assert!(matches!(p[0].bhs, Bhs::Reject(ref r) if r.reason == RejectReason::PROTOCOL_ERROR));
    let Bhs::ScsiResponse(r) = &p[1].bhs else {
        panic!("{p:?}")
    };
    assert_eq!(r.status, 2);
    assert!(h.executed().is_empty());
    h.data_out(8, Ttt::RESERVED, 2, 1024, &[0u8; 16], true);
    assert!(h.sent().is_empty());
}

#[test]
fn write_overflow_is_refused_with_residual() {
    let mut h = default_harness();
    h.command(4, false, true, 512, &[0u8; 512], true);
    h.executed();
    h.c.complete(Itt(4), ScsiOutcome::write_overflow(1024));
    let p = h.sent();
    let Bhs::ScsiResponse(r) = &p[0].bhs else {
        panic!()
    };
    assert!(r.overflow);
    assert_eq!(r.residual_count, 512);
    assert_eq!(p[0].data[2 + 12], 0x0e);
}

#[test]
fn cmd_sn_window_and_out_of_window_commands() {
    let mut cfg = TargetConfig::default();
    cfg.queue_depth = 4;
    let mut h = harness(SessionParams::default(), ConnectionParams::default(), cfg);
    assert_eq!(h.c.max_cmd_sn(), SerialNumber(103));
    h.command(1, true, false, 512, &[], true);
    h.command(2, true, false, 512, &[], true);
    assert_eq!(h.c.exp_cmd_sn(), SerialNumber(102));
    // MaxCmdSN does not shrink while tasks are outstanding.
    assert_eq!(h.c.max_cmd_sn(), SerialNumber(103));
    h.executed();
    // Too high (beyond MaxCmdSN) and duplicate: silently ignored.
    h.cmd_sn = SerialNumber(200);
    h.command(3, true, false, 512, &[], true);
    h.cmd_sn = SerialNumber(100);
    h.command(4, true, false, 512, &[], true);
    assert!(h.executed().is_empty());
    assert!(h.sent().is_empty());
    assert_eq!(h.c.exp_cmd_sn(), SerialNumber(102));
    h.c.complete(Itt(1), ScsiOutcome::default());
    // The response that frees a slot advertises it.
    let Bhs::ScsiResponse(r) = &h.sent()[0].bhs else {
        panic!()
    };
    assert_eq!(r.max_cmd_sn, SerialNumber(104));
    h.c.complete(Itt(2), ScsiOutcome::default());
    h.cmd_sn = SerialNumber(102);
    h.command(5, true, false, 512, &[], true);
    // Four slots from ExpCmdSN 103, one of them busy with command 5.
    assert_eq!(h.c.max_cmd_sn(), SerialNumber(105));
}

#[test]
fn nop_out_ping_is_echoed_and_advances_stat_sn() {
    let mut h = default_harness();
    let ping = NopOut {
        immediate: true,
        lun: Lun::default(),
        itt: Itt(0x55),
        ttt: Ttt::RESERVED,
        cmd_sn: SerialNumber(100),
        exp_stat_sn: SerialNumber(7),
    };
    h.send(Pdu::with_data(Bhs::NopOut(ping), &b"hello"[..]));
    let p = h.sent();
    let Bhs::NopIn(n) = &p[0].bhs else { panic!() };
    assert_eq!(
        (n.itt, n.ttt, n.stat_sn),
        (Itt(0x55), Ttt::RESERVED, SerialNumber(7))
    );
    assert_eq!(&p[0].data[..], b"hello");
    assert_eq!(
        h.c.exp_cmd_sn(),
        SerialNumber(100),
        "immediate NOP-Out takes no CmdSN"
    );
}

#[test]
fn idle_initiator_is_pinged_and_dropped_when_silent() {
    let mut cfg = TargetConfig::default();
    cfg.nop_in_interval = Some(Duration::from_secs(5));
    cfg.nop_in_timeout = Duration::from_secs(2);
    let mut h = harness(SessionParams::default(), ConnectionParams::default(), cfg);
    let t0 = h.now;
    assert_eq!(h.c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    h.c.handle_timeout(t0 + Duration::from_secs(5));
    let p = h.sent();
    let Bhs::NopIn(n) = &p[0].bhs else { panic!() };
    assert_eq!(n.itt, Itt::RESERVED);
    assert_ne!(n.ttt, Ttt::RESERVED);
    assert_eq!(n.stat_sn, SerialNumber(7));
    assert_eq!(h.c.poll_timeout(), Some(t0 + Duration::from_secs(7)));
    h.c.handle_timeout(t0 + Duration::from_secs(7));
    assert!(h
        .events()
        .iter()
        .any(|e| matches!(e, TargetEvent::Failed(ConnectionFailure::PingTimeout(_)))));
    assert_eq!(h.c.poll_timeout(), None);
}

#[test]
fn answered_ping_keeps_the_connection() {
    let mut cfg = TargetConfig::default();
    cfg.nop_in_interval = Some(Duration::from_secs(5));
    cfg.nop_in_timeout = Duration::from_secs(2);
    let mut h = harness(SessionParams::default(), ConnectionParams::default(), cfg);
    let t0 = h.now;
    h.c.handle_timeout(t0 + Duration::from_secs(5));
    let p = h.sent();
    let Bhs::NopIn(n) = &p[0].bhs else { panic!() };
    h.now = t0 + Duration::from_secs(6);
    h.send(Pdu::new(Bhs::NopOut(NopOut {
        immediate: true,
        itt: Itt::RESERVED,
        ttt: n.ttt,
        cmd_sn: SerialNumber(100),
        ..Default::default()
    })));
    h.c.handle_timeout(t0 + Duration::from_secs(8));
    assert!(h.events().is_empty());
    assert_eq!(h.c.poll_timeout(), Some(t0 + Duration::from_secs(11)));
}

#[test]
fn abort_task_found_and_not_found() {
    let mut h = default_harness();
    h.command(1, true, false, 512, &[], true);
    h.executed();
    let tmf = |itt, rtt| {
        Pdu::new(Bhs::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TmfFunction::ABORT_TASK,
            lun: Lun::from_number(1),
            itt: Itt(itt),
            referenced_task_tag: Itt(rtt),
            cmd_sn: SerialNumber(101),
            ..Default::default()
        }))
    };
    h.send(tmf(50, 1));
    let p = h.sent();
    let Bhs::TaskMgmtResponse(r) = &p[0].bhs else {
        panic!()
    };
    assert_eq!(r.response, TmfResponse::COMPLETE);
    assert!(h
        .events()
        .iter()
        .any(|e| matches!(e, TargetEvent::Aborted { itts } if itts == &[Itt(1)])));
    // The aborted task's completion is dropped.
    h.c.complete(Itt(1), ScsiOutcome::default());
    assert!(h.sent().is_empty());
    h.send(tmf(51, 1));
    let p = h.sent();
    let Bhs::TaskMgmtResponse(r) = &p[0].bhs else {
        panic!()
    };
    assert_eq!(r.response, TmfResponse::NO_TASK);
}

#[test]
fn lun_reset_waits_for_the_owner() {
    let mut h = default_harness();
    h.command(1, true, false, 512, &[], true);
    h.executed();
    h.send(Pdu::new(Bhs::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: TmfFunction::LOGICAL_UNIT_RESET,
        lun: Lun::from_number(1),
        itt: Itt(60),
        referenced_task_tag: Itt::RESERVED,
        cmd_sn: SerialNumber(101),
        ..Default::default()
    })));
    let ev = h.events();
    assert!(ev
        .iter()
        .any(|e| matches!(e, TargetEvent::Reset { itt: Itt(60), .. })));
    assert!(h.sent().is_empty());
    h.c.task_management_done(Itt(60), TmfResponse::COMPLETE);
    assert!(matches!(h.sent()[0].bhs, Bhs::TaskMgmtResponse(_)));
}

#[test]
fn long_text_response_is_continued() {
    let mut conn = ConnectionParams::default();
    conn.max_send_data_segment_length = 512;
    let mut h = harness(SessionParams::default(), conn, TargetConfig::default());
    let req = TextRequest {
        immediate: false,
        final_bit: true,
        continue_bit: false,
        lun: Lun::default(),
        itt: Itt(70),
        ttt: Ttt::RESERVED,
        cmd_sn: SerialNumber(100),
        exp_stat_sn: SerialNumber(7),
    };
    h.send(Pdu::with_data(
        Bhs::TextRequest(req.clone()),
        &b"SendTargets=All\0"[..],
    ));
    let ev = h.events();
    assert!(
        matches!(&ev[0], TargetEvent::Text { params, .. } if params.get("SendTargets") == Some("All"))
    );
    let mut answer = TextParams::new();
    for i in 0..40 {
        answer.push(
            "TargetName",
            format!("iqn.2026-01.io.mpath:target-number-{i}"),
        );
    }
    h.c.text_response(Itt(70), answer.clone());
    let mut got = Vec::new();
    let mut cmd_sn = SerialNumber(101);
    loop {
        let p = h.sent();
        assert_eq!(p.len(), 1);
        let Bhs::TextResponse(r) = &p[0].bhs else {
            panic!()
        };
        got.extend_from_slice(&p[0].data);
        if r.final_bit {
            assert_eq!(r.ttt, Ttt::RESERVED);
            break;
        }
        assert!(r.continue_bit);
        let mut more = req.clone();
        more.ttt = r.ttt;
        more.cmd_sn = cmd_sn;
        cmd_sn = cmd_sn.next();
        h.send(Pdu::new(Bhs::TextRequest(more)));
    }
    assert_eq!(TextParams::decode(&got).unwrap(), answer);
}

#[test]
fn logout_closes_after_response() {
    let mut h = default_harness();
    h.send(Pdu::new(Bhs::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: LogoutReason::CLOSE_SESSION,
        itt: Itt(80),
        cid: Cid(0),
        cmd_sn: SerialNumber(100),
        exp_stat_sn: SerialNumber(7),
    })));
    let p = h.sent();
    let Bhs::LogoutResponse(r) = &p[0].bhs else {
        panic!()
    };
    assert_eq!(r.response, LogoutResponseCode::SUCCESS);
    assert!(h
        .events()
        .iter()
        .any(|e| matches!(e, TargetEvent::LoggedOut { .. })));
    h.command(1, true, false, 512, &[], true);
    assert!(h.sent().is_empty() && h.events().is_empty());
}

#[test]
fn snack_and_unknown_opcodes_are_rejected() {
    let mut h = default_harness();
    h.send(Pdu::new(Bhs::SnackRequest(SnackRequest::default())));
    let mut raw = [0u8; 48];
    raw[0] = 0x1c;
    let (unknown, _) = Pdu::decode_slice(&raw, &DecodeConfig::default())
        .unwrap()
        .unwrap();
    h.send(unknown);
    let p = h.sent();
    let reasons: Vec<_> = p
        .iter()
        .map(|p| match &p.bhs {
            Bhs::Reject(r) => r.reason,
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            RejectReason::SNACK_REJECT,
            RejectReason::COMMAND_NOT_SUPPORTED
        ]
    );
    assert_eq!(p[1].data.len(), 48);
    assert_eq!(p[1].data[0], 0x1c);
}
