//! CRC32C header and data digests: I/O with both on, and what a corrupted digest costs — a
//! data digest error loses one PDU (Reject 0x02) but not the connection, a header digest
//! error loses the connection (its lengths cannot be trusted).

mod common;

use bytes::Bytes;
use common::*;
use iscsi_pdu::*;
use scsi::cdb::build;

/// Flip one bit of the data digest (the last 4 bytes of an encoded PDU with data).
fn corrupt_data_digest(b: &mut [u8]) {
    let n = b.len();
    b[n - 1] ^= 0x01;
}

async fn digest_client(t: &TestTarget, n: u8) -> Client {
    let c = ready_client(t.portal(), with_digests(normal(n))).await;
    assert!(
        c.digests.header && c.digests.data,
        "both digests negotiated"
    );
    c
}

fn reject(p: &Pdu) -> (RejectReason, Bytes) {
    match &p.bhs {
        Bhs::Reject(r) => (r.reason, p.data.clone()),
        other => panic!("expected a Reject, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_round_trip_with_digests() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = digest_client(&t, 1).await;
    let s = t.control.sessions();
    assert!(s[0].header_digest && s[0].data_digest, "{s:?}");

    // Small (immediate data only) and large (immediate + unsolicited + solicited, and
    // several Data-In) transfers.
    for (lba, len) in [(0u64, 4096usize), (1024, 1 << 20)] {
        let data = pattern(lba as u8 ^ 0x3c, len);
        let w = c.write16(lba, &data).await;
        assert!(w.good(), "{:?}", w.sense_triplet());
        let r = c.read16(lba, len as u32 / BLOCK).await;
        assert!(r.good(), "{:?}", r.sense_triplet());
        assert!(r.data == data, "data read back differs ({len} bytes)");
    }
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_digest_error_on_immediate_data_rejects_only_that_pdu() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = digest_client(&t, 1).await;

    let data = pattern(5, 4096);
    let itt = c.next_itt();
    let h = c.command(itt, &build::write_16(8, 8, false), 4096, false, true);
    let pdu = Pdu::with_data(Bhs::ScsiCommand(h), Bytes::from(data.clone()));
    let mut bytes = c.encode(&pdu);
    corrupt_data_digest(&mut bytes);
    c.send_bytes(&bytes).await;

    let (reason, quoted) = reject(&c.expect_pdu().await);
    assert_eq!(reason, RejectReason::DATA_DIGEST_ERROR);
    assert_eq!(&quoted[..], &bytes[..48], "the Reject quotes the BHS");
    // The command was discarded whole: no status for it, nothing written.
    c.expect_silence().await;
    let r = c.read16(8, 8).await;
    assert!(r.good(), "the connection survives: {:?}", r.sense_triplet());
    assert!(r.data.iter().all(|&x| x == 0));
    // Retried under a new CmdSN, the write works.
    let w = c.write16(8, &data).await;
    assert!(w.good());
    assert_eq!(c.read16(8, 8).await.data, data);
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_digest_error_on_data_out_fails_the_task() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = digest_client(&t, 1).await;

    let data = pattern(6, 4096);
    let itt = c.next_itt();
    let h = c.command(itt, &build::write_16(8, 8, false), 4096, false, true);
    c.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    let r2t = match c.expect_pdu().await.bhs {
        Bhs::R2t(r) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    let mut out = c.data_out_for(&r2t, &data, 4096);
    corrupt_data_digest(&mut out);
    c.send_bytes(&out).await;

    let (reason, quoted) = reject(&c.expect_pdu().await);
    assert_eq!(reason, RejectReason::DATA_DIGEST_ERROR);
    assert_eq!(&quoted[..], &out[..48]);
    // ERL 0 cannot ask for the data again: the task ends with CHECK CONDITION.
    let done = c.finish(itt, &[]).await;
    assert_eq!(done.status, CHECK_CONDITION);
    assert_eq!(
        done.sense_triplet(),
        Some((0x0b, 0x47, 0x05)),
        "ABORTED COMMAND / PROTOCOL SERVICE CRC ERROR"
    );
    let r = c.read16(8, 8).await;
    assert!(r.good() && r.data.iter().all(|&x| x == 0));
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_digest_error_on_a_nop_out_does_not_stall_the_window() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = digest_client(&t, 1).await;

    // A non-immediate NOP-Out ping takes a CmdSN like a command does.
    let nop = NopOut {
        immediate: false,
        lun: Lun::default(),
        itt: c.next_itt(),
        ttt: Ttt::RESERVED,
        cmd_sn: c.take_cmd_sn(),
        exp_stat_sn: c.exp_stat_sn,
    };
    let mut bytes = c.encode(&Pdu::with_data(Bhs::NopOut(nop), vec![0x11u8; 64]));
    corrupt_data_digest(&mut bytes);
    c.send_bytes(&bytes).await;
    let (reason, _) = reject(&c.expect_pdu().await);
    assert_eq!(reason, RejectReason::DATA_DIGEST_ERROR);

    // The initiator cannot resend the ping under its old CmdSN (the Reject tells it the PDU
    // is gone), so the next command must be accepted.
    let r = c.tur().await;
    assert!(r.good(), "{:?}", r.sense_triplet());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_digest_error_closes_the_connection() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut other = digest_client(&t, 2).await;
    let mut c = digest_client(&t, 1).await;

    let itt = c.next_itt();
    let h = c.command(itt, &build::test_unit_ready(), 0, false, false);
    let mut bytes = c.encode(&Pdu::new(Bhs::ScsiCommand(h)));
    assert_eq!(bytes.len(), 52, "BHS + header digest");
    bytes[49] ^= 0x80;
    c.send_bytes(&bytes).await;
    let how = c.expect_closed().await;
    assert!(how.is_closed(), "{how:?}");

    assert!(other.tur().await.good());
    assert_no_target_panics();
}
