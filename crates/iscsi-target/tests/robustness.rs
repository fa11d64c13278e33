//! Bad input on one connection: the target answers it exactly as RFC 7143 says (Reject with
//! the right reason, CHECK CONDITION, silence, or closing the connection) and keeps serving
//! every other connection — checked each time by a bystander session that reads back data
//! it wrote before the misbehaviour.

mod common;

use bytes::Bytes;
use common::*;
use iscsi_pdu::*;
use scsi::cdb::build;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// LBA the bystander writes and reads back.
const BYSTANDER_LBA: u32 = 2048;

/// Connection B, logged in before the misbehaviour, with 8 blocks of its own data written.
struct Bystander {
    client: Client,
    data: Vec<u8>,
}

impl Bystander {
    async fn new(t: &TestTarget) -> Bystander {
        let mut client = ready_client(t.portal(), normal(0xbb)).await;
        let data = pattern(0xbb, 8 * BLOCK as usize);
        let w = client.write16(BYSTANDER_LBA as u64, &data).await;
        assert!(w.good(), "bystander WRITE: {:?}", w.sense_triplet());
        Bystander { client, data }
    }

    /// B still completes a READ(10) with the right data.
    async fn check(&mut self) {
        assert_reads(&mut self.client, BYSTANDER_LBA, &self.data).await;
    }
}

fn reject_of(p: &Pdu) -> RejectReason {
    match &p.bhs {
        Bhs::Reject(r) => r.reason,
        other => panic!("expected a Reject, got {other:?}"),
    }
}

/// The 48-byte header of `pdu` as sent without digests: what a Reject must quote.
fn header(pdu: &Pdu) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    pdu.encode(Digests::NONE, &mut b);
    b[..48].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_opcode_gets_reject_command_not_supported() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    // Opcode 0x1c is a vendor-specific initiator opcode we do not implement.
    let mut raw = [0u8; 48];
    raw[0] = 0x1c;
    raw[1] = 0x80;
    raw[16..20].copy_from_slice(&0x1234u32.to_be_bytes());
    raw[24..28].copy_from_slice(&a.cmd_sn.0.to_be_bytes());
    a.send_bytes(&raw).await;
    let p = a.expect_pdu().await;
    assert_eq!(reject_of(&p), RejectReason::COMMAND_NOT_SUPPORTED);
    assert_eq!(&p.data[..], &raw[..], "the Reject quotes the whole header");

    // The connection is still usable, and so is everyone else's.
    assert!(a.tur().await.good());
    b.check().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snack_gets_reject_snack_reject() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    let snack = Pdu::new(Bhs::SnackRequest(SnackRequest {
        kind: SnackType::STATUS,
        lun: Lun::default(),
        itt: Itt::RESERVED,
        ttt_or_snack_tag: 0,
        exp_stat_sn: a.exp_stat_sn,
        beg_run: 0,
        run_length: 0,
    }));
    a.send(&snack).await;
    let p = a.expect_pdu().await;
    assert_eq!(reject_of(&p), RejectReason::SNACK_REJECT);
    assert_eq!(&p.data[..], &header(&snack)[..]);

    assert!(a.tur().await.good());
    b.check().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_segment_over_max_recv_data_segment_length_closes_the_connection() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    let declared = a.max_send();
    assert_eq!(
        declared, t.config.negotiation.max_recv_data_segment_length,
        "the target declares its configured MaxRecvDataSegmentLength"
    );
    let len = declared + 512;
    let itt = a.next_itt();
    let h = a.command(
        itt,
        &build::write_16(0, len / BLOCK, false),
        len,
        false,
        true,
    );
    let pdu = Pdu::with_data(Bhs::ScsiCommand(h), vec![0xa5u8; len as usize]);
    a.send(&pdu).await;
    let how = a.expect_closed().await;
    assert!(how.is_closed(), "{how:?}");

    b.check().await;
    // Nothing of the refused write landed.
    let mut c = ready_client(t.portal(), normal(2)).await;
    let r = c.read16(0, 1).await;
    assert!(r.good() && r.data.iter().all(|&x| x == 0));
    assert_no_target_panics();
}

/// A raw connection must be closed by the target within [`ANSWER`], whatever it answers
/// first.
async fn expect_raw_close(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("the target kept the connection open"),
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_login_closes_only_that_connection() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;

    let http = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n";
    let ones = [0xffu8; 64];
    // A well-formed full feature PDU where a Login Request must come.
    let mut scsi = bytes::BytesMut::new();
    Pdu::new(Bhs::ScsiCommand(ScsiCommand {
        final_bit: true,
        read: true,
        lun: Lun::from_number(LUN),
        itt: Itt(1),
        expected_data_transfer_length: 512,
        cdb: build::read_10(0, 1, false).to_array(),
        ..Default::default()
    }))
    .encode(Digests::NONE, &mut scsi);
    for garbage in [&http[..], &ones[..], &scsi[..]] {
        let mut s = TcpStream::connect(t.portal()).await.expect("connect");
        s.write_all(garbage).await.expect("send");
        expect_raw_close(&mut s).await;
        b.check().await;
    }
    // New logins still work.
    let mut c = ready_client(t.portal(), normal(1)).await;
    assert!(c.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_login_header_then_eof() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;

    let mut login = iscsi_session::InitiatorLogin::new(normal(1)).expect("config");
    let first = login.start(&mut |b: &mut [u8]| b.fill(1));
    let mut bytes = bytes::BytesMut::new();
    first.encode(Digests::NONE, &mut bytes);
    for cut in [1usize, 20, 47] {
        let mut s = TcpStream::connect(t.portal()).await.expect("connect");
        s.write_all(&bytes[..cut]).await.expect("send");
        s.shutdown().await.expect("half-close");
        expect_raw_close(&mut s).await;
    }
    // A full header with its data segment cut short, then EOF.
    let mut s = TcpStream::connect(t.portal()).await.expect("connect");
    s.write_all(&bytes[..bytes.len() - 10]).await.expect("send");
    s.shutdown().await.expect("half-close");
    expect_raw_close(&mut s).await;

    b.check().await;
    let mut c = ready_client(t.portal(), normal(1)).await;
    assert!(c.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_itt_of_an_outstanding_task_gets_reject_task_in_progress() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    // A WRITE without unsolicited data stays outstanding until we answer its R2T.
    let data = pattern(7, 4096);
    let itt = a.next_itt();
    let h = a.command(itt, &build::write_10(16, 8, false), 4096, false, true);
    a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    let r2t = match a.expect_pdu().await.bhs {
        Bhs::R2t(r) if r.itt == itt => r,
        other => panic!("expected an R2T, got {other:?}"),
    };

    let dup_h = a.command(itt, &build::read_10(0, 1, false), 512, true, false);
    let dup = Pdu::new(Bhs::ScsiCommand(dup_h));
    a.send(&dup).await;
    let p = a.expect_pdu().await;
    assert_eq!(reject_of(&p), RejectReason::TASK_IN_PROGRESS);
    assert_eq!(&p.data[..], &header(&dup)[..]);

    // The first task is untouched: its data goes in and it completes.
    let out = a.data_out_for(&r2t, &data, 4096);
    a.send_bytes(&out).await;
    let done = a.finish(itt, &data).await;
    assert!(done.good(), "{:?}", done.sense_triplet());
    assert_reads(&mut a, 16, &data).await;
    b.check().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_data_sn_fails_the_task_and_the_connection_goes_on() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    let data = pattern(9, 4096);
    let itt = a.next_itt();
    let h = a.command(itt, &build::write_10(32, 8, false), 4096, false, true);
    a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    let r2t = match a.expect_pdu().await.bhs {
        Bhs::R2t(r) if r.itt == itt => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    // The first Data-Out of a sequence must carry DataSN 0.
    let bad = Pdu::with_data(
        Bhs::DataOut(DataOut {
            final_bit: true,
            lun: r2t.lun,
            itt,
            ttt: r2t.ttt,
            exp_stat_sn: a.exp_stat_sn,
            data_sn: SerialNumber(1),
            buffer_offset: 0,
        }),
        Bytes::from(data.clone()),
    );
    a.send(&bad).await;
    let p = a.expect_pdu().await;
    assert_eq!(reject_of(&p), RejectReason::PROTOCOL_ERROR);
    assert_eq!(&p.data[..], &header(&bad)[..]);
    let c = a.finish(itt, &[]).await;
    assert_eq!(c.status, CHECK_CONDITION);
    assert_eq!(
        c.sense_triplet(),
        Some((0x0b, 0x4b, 0x00)),
        "ABORTED COMMAND / DATA PHASE ERROR"
    );

    // The task is over: its ITT may be used again at once, and nothing of it was written.
    a.start_with(itt, &build::read_10(32, 8, false), &[], 4096)
        .await;
    let r = a.finish(itt, &[]).await;
    assert!(r.good(), "{:?}", r.sense_triplet());
    assert!(
        r.data.iter().all(|&x| x == 0),
        "the failed WRITE wrote data"
    );
    let w = a.write16(32, &data).await;
    assert!(w.good());
    assert_reads(&mut a, 32, &data).await;
    let sessions = t.control.sessions();
    let mine = sessions
        .iter()
        .find(|s| s.isid == isid(1).to_string())
        .expect("session listed");
    assert_eq!(mine.outstanding_tasks, 0, "the failed task was forgotten");
    b.check().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_sn_outside_the_window_is_ignored() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    let tur = build::test_unit_ready();
    let itt = a.next_itt();
    let mut h = a.command(itt, &tur, 0, false, false);
    // Give back the CmdSN `command` took; send beyond MaxCmdSN instead.
    a.cmd_sn = h.cmd_sn;
    h.cmd_sn = a.max_cmd_sn.next();
    a.send(&Pdu::new(Bhs::ScsiCommand(h.clone()))).await;
    a.expect_silence().await;
    // A CmdSN already used (behind ExpCmdSN) is a duplicate: ignored too.
    h.itt = a.next_itt();
    h.cmd_sn = SerialNumber(a.cmd_sn.0.wrapping_sub(1));
    a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    a.expect_silence().await;

    // The window did not move: the right CmdSN works.
    let c = a.tur().await;
    assert!(c.good(), "{:?}", c.sense_triplet());
    b.check().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_phase_and_wrong_direction_opcodes_get_protocol_error() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    // A Login Request in full feature phase, a target opcode (SCSI Response) from the
    // initiator, and an unknown opcode with a data segment (which must be skipped whole).
    let login = Pdu::new(Bhs::LoginRequest(LoginRequest {
        transit: true,
        csg: Stage::OPERATIONAL,
        nsg: Stage::FULL_FEATURE,
        isid: isid(1),
        itt: Itt(0x77),
        cmd_sn: a.cmd_sn,
        exp_stat_sn: a.exp_stat_sn,
        ..Default::default()
    }));
    let response = Pdu::new(Bhs::ScsiResponse(ScsiResponse {
        itt: Itt(0x78),
        ..Default::default()
    }));
    for pdu in [&login, &response] {
        a.send(pdu).await;
        let p = a.expect_pdu().await;
        assert_eq!(reject_of(&p), RejectReason::PROTOCOL_ERROR, "for {pdu:?}");
        assert_eq!(&p.data[..], &header(pdu)[..]);
    }
    let mut raw = vec![0u8; 48 + 100];
    raw[0] = 0x1d;
    raw[1] = 0x80;
    raw[7] = 100;
    raw[48..].fill(0x41);
    a.send_bytes(&raw).await;
    let p = a.expect_pdu().await;
    assert_eq!(reject_of(&p), RejectReason::COMMAND_NOT_SUPPORTED);
    assert_eq!(&p.data[..], &raw[..48]);

    assert!(a.tur().await.good(), "the stream stayed in step");
    b.check().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ahs_gets_reject_invalid_pdu_field() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    let itt = a.next_itt();
    let h = a.command(itt, &build::read_10(0, 1, false), 512, true, false);
    let mut bytes = a.encode(&Pdu::new(Bhs::ScsiCommand(h))).to_vec();
    // TotalAHSLength of one word holding an AHS that claims 100 bytes.
    bytes[4] = 1;
    bytes.splice(48..48, [0x00, 0x64, 0x01, 0x00]);
    a.send_bytes(&bytes).await;
    let p = a.expect_pdu().await;
    assert_eq!(reject_of(&p), RejectReason::INVALID_PDU_FIELD);
    assert_eq!(&p.data[..], &bytes[..48]);
    // The command was discarded whole; the next one is served.
    a.expect_silence().await;
    assert!(a.tur().await.good());
    b.check().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_larger_than_the_target_buffers_is_refused_without_data() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    // 64 MiB announced, nothing sent: refused at once, no R2T, nothing allocated.
    let len: u32 = 64 << 20;
    let itt = a.next_itt();
    let h = a.command(
        itt,
        &build::write_16(0, len / BLOCK, false),
        len,
        false,
        true,
    );
    a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    let c = a.finish(itt, &[]).await;
    assert_eq!(c.status, CHECK_CONDITION);
    assert_eq!(
        c.sense_triplet().map(|s| s.0),
        Some(0x05),
        "ILLEGAL REQUEST"
    );
    assert!(c.r2ts.is_empty());
    assert!(a.tur().await.good());
    b.check().await;
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_command_window_is_enforced() {
    const DEPTH: u32 = 4;
    let mut cfg = config(&["127.0.0.1:0"], mem_backing());
    cfg.queue_depth = DEPTH;
    let t = TestTarget::start(cfg).await;
    let mut b = Bystander::new(&t).await;
    let mut a = ready_client(t.portal(), normal(1)).await;
    assert_eq!(
        a.max_cmd_sn,
        SerialNumber(a.cmd_sn.0 + DEPTH - 1),
        "the window is the queue depth"
    );

    // Fill the window with WRITEs that wait for their data.
    let data = pattern(3, 4096);
    let mut writes = Vec::new();
    for i in 0..DEPTH {
        let itt = a.next_itt();
        let h = a.command(
            itt,
            &build::write_10(64 + 8 * i, 8, false),
            4096,
            false,
            true,
        );
        a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
        let r2t = match a.expect_pdu().await.bhs {
            Bhs::R2t(r) => r,
            other => panic!("expected an R2T, got {other:?}"),
        };
        writes.push((itt, r2t));
    }
    // ExpCmdSN is now past MaxCmdSN: a command there is outside the window and ignored.
    let itt = a.next_itt();
    let tur = a.command(itt, &build::test_unit_ready(), 0, false, false);
    assert!(tur.cmd_sn > a.max_cmd_sn);
    a.send(&Pdu::new(Bhs::ScsiCommand(tur.clone()))).await;
    a.expect_silence().await;

    // One task completes: its response opens the window by one, and the same command
    // sent again is served.
    let (w_itt, r2t) = writes.remove(0);
    let out = a.data_out_for(&r2t, &data, 4096);
    a.send_bytes(&out).await;
    assert!(a.finish(w_itt, &data).await.good());
    assert!(a.max_cmd_sn >= tur.cmd_sn, "the window opened");
    a.send(&Pdu::new(Bhs::ScsiCommand(tur))).await;
    assert!(a.finish(itt, &[]).await.good());
    for (w_itt, r2t) in writes {
        let out = a.data_out_for(&r2t, &data, 4096);
        a.send_bytes(&out).await;
        assert!(a.finish(w_itt, &data).await.good());
    }
    b.check().await;
    assert_no_target_panics();
}
