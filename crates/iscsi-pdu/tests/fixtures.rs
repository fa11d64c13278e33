//! Byte fixtures from a real session: qemu-io (libiscsi 1.19) writing 72 KiB and reading 24 KiB
//! on tgtd 1.0.85, both directions of the TCP stream as captured. Every PDU decodes, and
//! re-encodes to exactly the bytes on the wire.

use bytes::BytesMut;
use iscsi_pdu::*;

const FROM_INITIATOR: &[u8] = include_bytes!("fixtures/libiscsi-1.19-to-tgtd.bin");
const FROM_TARGET: &[u8] = include_bytes!("fixtures/tgtd-1.0.85-to-libiscsi.bin");

fn all_pdus(stream: &[u8]) -> Vec<Pdu> {
    // No digests were negotiated; the login allowed data segments up to 256 KiB.
    let cfg = DecodeConfig {
        digests: Digests::NONE,
        max_recv_data_segment_length: 262_144,
    };
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    let mut offset = 0;
    while !buf.is_empty() {
        let before = buf.len();
        let pdu = Pdu::decode(&mut buf, &cfg)
            .unwrap_or_else(|e| panic!("PDU at byte {offset}: {e}"))
            .unwrap_or_else(|| panic!("truncated PDU at byte {offset}"));
        let used = before - buf.len();
        let mut again = BytesMut::new();
        pdu.encode(Digests::NONE, &mut again);
        assert_eq!(
            &again[..],
            &stream[offset..offset + used],
            "PDU at byte {offset} re-encodes differently"
        );
        offset += used;
        out.push(pdu);
    }
    out
}

#[test]
fn initiator_stream() {
    let pdus = all_pdus(FROM_INITIATOR);
    let ops: Vec<u8> = pdus.iter().map(|p| p.opcode().0).collect();
    assert_eq!(ops.first(), Some(&Opcode::LOGIN_REQUEST.0));
    assert_eq!(ops.last(), Some(&Opcode::LOGOUT_REQUEST.0));
    let Bhs::LoginRequest(login) = &pdus[0].bhs else {
        panic!()
    };
    assert!(login.transit && login.nsg == Stage::FULL_FEATURE);
    let text = TextParams::decode(&pdus[0].data).unwrap();
    assert_eq!(text.get("SessionType"), Some("Normal"));
    // The 72 KiB WRITE(16): Data-Out PDUs for the R2T-solicited part, in order, F on the last.
    let data_out: Vec<&DataOut> = pdus
        .iter()
        .filter_map(|p| match &p.bhs {
            Bhs::DataOut(d) => Some(d),
            _ => None,
        })
        .collect();
    assert!(!data_out.is_empty());
    assert!(data_out.last().unwrap().final_bit);
    // CmdSN increases by one per non-immediate command.
    let sns: Vec<SerialNumber> = pdus
        .iter()
        .filter_map(|p| match &p.bhs {
            Bhs::ScsiCommand(c) if !c.immediate => Some(c.cmd_sn),
            _ => None,
        })
        .collect();
    for w in sns.windows(2) {
        assert_eq!(w[1], w[0].next());
    }
}

#[test]
fn target_stream() {
    let pdus = all_pdus(FROM_TARGET);
    let Bhs::LoginResponse(r) = &pdus[0].bhs else {
        panic!()
    };
    assert!(r.status.is_success());
    assert!(pdus.iter().any(|p| matches!(p.bhs, Bhs::R2t(_))));
    // Data-In of the 24 KiB read: DataSN from 0, offsets contiguous, status in the last.
    let mut data_in = pdus.iter().filter_map(|p| match &p.bhs {
        Bhs::DataIn(d) => Some((d, p.data.len() as u32)),
        _ => None,
    });
    let (mut next_sn, mut next_off) = (SerialNumber(0), 0u32);
    for (d, len) in data_in.by_ref() {
        if d.data_sn == SerialNumber(0) {
            next_sn = SerialNumber(0);
            next_off = 0;
        }
        assert_eq!((d.data_sn, d.buffer_offset), (next_sn, next_off));
        next_sn = next_sn.next();
        next_off += len;
    }
    // StatSN increases by one per status-bearing PDU.
    let stat: Vec<SerialNumber> = pdus
        .iter()
        .filter_map(|p| match &p.bhs {
            Bhs::ScsiResponse(r) => Some(r.stat_sn),
            Bhs::DataIn(d) if d.status_present => Some(d.stat_sn),
            Bhs::LogoutResponse(r) => Some(r.stat_sn),
            _ => None,
        })
        .collect();
    for w in stat.windows(2) {
        assert_eq!(w[1], w[0].next());
    }
}
