//! Round-trip and totality properties of the PDU codec.

use bytes::{Bytes, BytesMut};
use iscsi_pdu::*;
use proptest::prelude::*;

fn sn() -> impl Strategy<Value = SerialNumber> {
    any::<u32>().prop_map(SerialNumber)
}
fn lun() -> impl Strategy<Value = Lun> {
    any::<[u8; 8]>().prop_map(Lun)
}
fn itt() -> impl Strategy<Value = Itt> {
    any::<u32>().prop_map(Itt)
}
fn ttt() -> impl Strategy<Value = Ttt> {
    any::<u32>().prop_map(Ttt)
}
fn stage() -> impl Strategy<Value = Stage> {
    (0u8..4).prop_map(Stage)
}

fn bhs() -> impl Strategy<Value = Bhs> {
    prop_oneof![
        (any::<bool>(), lun(), itt(), ttt(), sn(), sn()).prop_map(
            |(i, l, a, t, c, e)| Bhs::NopOut(NopOut {
                immediate: i,
                lun: l,
                itt: a,
                ttt: t,
                cmd_sn: c,
                exp_stat_sn: e
            })
        ),
        (
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                0u8..8
            ),
            (lun(), itt(), any::<u32>(), sn(), sn(), any::<[u8; 16]>())
        )
            .prop_map(
                |((i, f, r, w, a), (l, t, edtl, c, e, cdb))| Bhs::ScsiCommand(ScsiCommand {
                    immediate: i,
                    final_bit: f,
                    read: r,
                    write: w,
                    attr: TaskAttr(a),
                    lun: l,
                    itt: t,
                    expected_data_transfer_length: edtl,
                    cmd_sn: c,
                    exp_stat_sn: e,
                    cdb
                })
            ),
        (
            any::<bool>(),
            0u8..0x80,
            lun(),
            itt(),
            itt(),
            (sn(), sn(), sn(), sn())
        )
            .prop_map(|(i, f, l, t, r, (c, e, rc, ed))| Bhs::TaskMgmtRequest(
                TaskMgmtRequest {
                    immediate: i,
                    function: TmfFunction(f),
                    lun: l,
                    itt: t,
                    referenced_task_tag: r,
                    cmd_sn: c,
                    exp_stat_sn: e,
                    ref_cmd_sn: rc,
                    exp_data_sn: ed
                }
            )),
        (
            (
                any::<bool>(),
                any::<bool>(),
                stage(),
                stage(),
                any::<u8>(),
                any::<u8>()
            ),
            (
                any::<[u8; 6]>(),
                any::<u16>(),
                itt(),
                any::<u16>(),
                sn(),
                sn()
            )
        )
            .prop_map(|((t, c, cs, ns, vx, vn), (isid, tsih, i, cid, cmd, exp))| {
                Bhs::LoginRequest(LoginRequest {
                    transit: t,
                    continue_bit: c,
                    csg: cs,
                    nsg: ns,
                    version_max: vx,
                    version_min: vn,
                    isid: Isid(isid),
                    tsih: Tsih(tsih),
                    itt: i,
                    cid: Cid(cid),
                    cmd_sn: cmd,
                    exp_stat_sn: exp,
                })
            }),
        (
            any::<bool>(),
            lun(),
            itt(),
            ttt(),
            sn(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(f, l, i, t, e, off, _)| Bhs::DataOut(DataOut {
                final_bit: f,
                lun: l,
                itt: i,
                ttt: t,
                exp_stat_sn: e,
                data_sn: SerialNumber(off ^ 0x5a5a),
                buffer_offset: off
            })),
        (
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<u8>(),
                any::<u8>()
            ),
            (
                itt(),
                any::<u32>(),
                sn(),
                sn(),
                sn(),
                sn(),
                any::<u32>(),
                any::<u32>()
            )
        )
            .prop_map(|((bo, bu, o, u, r, s), (i, st, a, b, c, d, x, y))| {
                Bhs::ScsiResponse(ScsiResponse {
                    bidi_overflow: bo,
                    bidi_underflow: bu,
                    overflow: o,
                    underflow: u,
                    response: ScsiResponseCode(r),
                    status: s,
                    itt: i,
                    snack_tag: st,
                    stat_sn: a,
                    exp_cmd_sn: b,
                    max_cmd_sn: c,
                    exp_data_sn: d,
                    bidi_read_residual_count: x,
                    residual_count: y,
                })
            }),
        (
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<u8>()
            ),
            (
                lun(),
                itt(),
                ttt(),
                sn(),
                sn(),
                sn(),
                sn(),
                any::<u32>(),
                any::<u32>()
            )
        )
            .prop_map(
                |((f, a, o, u, s, st), (l, i, t, ss, e, m, d, off, r))| Bhs::DataIn(DataIn {
                    final_bit: f,
                    acknowledge: a,
                    overflow: o,
                    underflow: u,
                    status_present: s,
                    status: st,
                    lun: l,
                    itt: i,
                    ttt: t,
                    stat_sn: ss,
                    exp_cmd_sn: e,
                    max_cmd_sn: m,
                    data_sn: d,
                    buffer_offset: off,
                    residual_count: r,
                })
            ),
        (
            lun(),
            itt(),
            ttt(),
            sn(),
            sn(),
            sn(),
            sn(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(l, i, t, s, e, m, r, o, d)| Bhs::R2t(R2t {
                lun: l,
                itt: i,
                ttt: t,
                stat_sn: s,
                exp_cmd_sn: e,
                max_cmd_sn: m,
                r2t_sn: r,
                buffer_offset: o,
                desired_data_transfer_length: d
            })),
        (
            lun(),
            sn(),
            sn(),
            sn(),
            any::<u8>(),
            any::<u8>(),
            any::<[u16; 3]>()
        )
            .prop_map(|(l, s, e, m, ev, v, p)| Bhs::AsyncMessage(AsyncMessage {
                lun: l,
                stat_sn: s,
                exp_cmd_sn: e,
                max_cmd_sn: m,
                event: AsyncEvent(ev),
                vcode: v,
                parameter1: p[0],
                parameter2: p[1],
                parameter3: p[2]
            })),
        (any::<u8>(), sn(), sn(), sn(), sn()).prop_map(|(r, s, e, m, d)| Bhs::Reject(Reject {
            reason: RejectReason(r),
            stat_sn: s,
            exp_cmd_sn: e,
            max_cmd_sn: m,
            data_sn_or_r2t_sn: d
        })),
        (
            any::<u8>(),
            itt(),
            sn(),
            sn(),
            sn(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(r, i, s, e, m, w, t)| Bhs::LogoutResponse(LogoutResponse {
                response: LogoutResponseCode(r),
                itt: i,
                stat_sn: s,
                exp_cmd_sn: e,
                max_cmd_sn: m,
                time2wait: w,
                time2retain: t
            })),
    ]
}

fn digests() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(h, d)| Digests { header: h, data: d })
}

fn cfg(d: Digests) -> DecodeConfig {
    DecodeConfig {
        digests: d,
        max_recv_data_segment_length: MAX_DATA_SEGMENT_LENGTH,
    }
}

proptest! {
    /// typed → bytes → typed → bytes: both equal.
    #[test]
    fn typed_round_trip(h in bhs(), data in proptest::collection::vec(any::<u8>(), 0..70), d in digests()) {
        let pdu = Pdu::with_data(h, data);
        let mut buf = BytesMut::new();
        pdu.encode(d, &mut buf);
        prop_assert_eq!(buf.len(), pdu.encoded_len(d));
        let wire = buf.clone().freeze();
        let back = Pdu::decode(&mut buf, &cfg(d)).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&back, &pdu);
        let mut again = BytesMut::new();
        back.encode(d, &mut again);
        prop_assert_eq!(again.freeze(), wire);
    }

    /// Any bytes that decode re-encode to exactly themselves (reserved bits and padding kept).
    #[test]
    fn bytes_round_trip(mut raw in any::<[u8; 48]>(), ahs_words in 0u8..3, dlen in 0u32..40,
                        tail in proptest::collection::vec(any::<u8>(), 60)) {
        raw[4] = ahs_words;
        raw[5] = 0; raw[6] = 0; raw[7] = dlen as u8;
        let mut wire = raw.to_vec();
        let body = ahs_words as usize * 4 + ((dlen as usize + 3) & !3);
        wire.extend_from_slice(&tail[..body]);
        match Pdu::decode_slice(&wire, &cfg(Digests::NONE)) {
            Ok(Some((pdu, used))) => {
                prop_assert_eq!(used, wire.len());
                let mut out = BytesMut::new();
                pdu.encode(Digests::NONE, &mut out);
                prop_assert_eq!(&out[..], &wire[..]);
            }
            Ok(None) => prop_assert!(false, "complete PDU reported incomplete"),
            Err(e) => { let bad_ahs = matches!(e, DecodeError::BadAhs { .. }); prop_assert!(bad_ahs) }
        }
    }

    /// The decoder never panics, whatever the bytes, and a prefix is never an error that the
    /// whole would not also be.
    #[test]
    fn decode_is_total(data in proptest::collection::vec(any::<u8>(), 0..200), d in digests(), max in 0u32..100) {
        let c = DecodeConfig { digests: d, max_recv_data_segment_length: max };
        let _ = Pdu::decode_slice(&data, &c);
        let mut b = BytesMut::from(&data[..]);
        let _ = Pdu::decode(&mut b, &c);
    }

    /// Feeding the stream one byte at a time yields the same PDUs.
    #[test]
    fn byte_at_a_time(hs in proptest::collection::vec(bhs(), 1..4), d in digests()) {
        let mut wire = BytesMut::new();
        let pdus: Vec<Pdu> = hs.into_iter().enumerate().map(|(i, h)| Pdu::with_data(h, vec![i as u8; i * 5])).collect();
        for p in &pdus { p.encode(d, &mut wire); }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(p) = Pdu::decode(&mut buf, &cfg(d)).unwrap() { got.push(p); }
        }
        prop_assert_eq!(got, pdus);
    }
}

#[test]
fn header_digest_error_is_fatal() {
    let pdu = Pdu::new(Bhs::NopOut(NopOut::default()));
    let d = Digests {
        header: true,
        data: false,
    };
    let mut buf = BytesMut::new();
    pdu.encode(d, &mut buf);
    buf[10] ^= 1;
    let e = Pdu::decode(&mut buf, &cfg(d)).unwrap_err();
    assert!(matches!(e, DecodeError::HeaderDigest { .. }));
    assert!(e.is_fatal());
}

#[test]
fn data_digest_error_consumes_and_quotes_header() {
    let d = Digests {
        header: true,
        data: true,
    };
    let pdu = Pdu::with_data(
        Bhs::DataOut(DataOut {
            itt: Itt(7),
            ..Default::default()
        }),
        vec![1u8; 10],
    );
    let next = Pdu::new(Bhs::NopOut(NopOut {
        itt: Itt(8),
        ..Default::default()
    }));
    let mut buf = BytesMut::new();
    pdu.encode(d, &mut buf);
    let n = buf.len();
    buf[n - 6] ^= 0xff; // inside the padded data
    next.encode(d, &mut buf);
    let e = Pdu::decode(&mut buf, &cfg(d)).unwrap_err();
    assert!(!e.is_fatal());
    let quoted = e.rejected_header().unwrap();
    assert_eq!(quoted[0] & 0x3f, Opcode::DATA_OUT.0);
    // The stream resynchronises on the next PDU.
    assert_eq!(Pdu::decode(&mut buf, &cfg(d)).unwrap().unwrap(), next);
}

#[test]
fn oversized_data_segment_is_refused_before_it_arrives() {
    let pdu = Pdu::with_data(Bhs::DataOut(DataOut::default()), vec![0u8; 9000]);
    let mut buf = BytesMut::new();
    pdu.encode(Digests::NONE, &mut buf);
    buf.truncate(48);
    let e = Pdu::decode(&mut buf, &DecodeConfig::default()).unwrap_err();
    assert_eq!(
        e,
        DecodeError::DataSegmentTooLong {
            opcode: Opcode::DATA_OUT,
            len: 9000,
            max: 8192
        }
    );
    assert!(e.is_fatal());
}

#[test]
fn unknown_opcode_survives() {
    let mut raw = [0u8; 48];
    raw[0] = 0x1c;
    raw[20] = 0xab;
    let (pdu, _) = Pdu::decode_slice(&raw, &DecodeConfig::default())
        .unwrap()
        .unwrap();
    assert_eq!(pdu.opcode(), Opcode(0x1c));
    assert!(matches!(pdu.bhs, Bhs::Unknown(_)));
    let mut out = BytesMut::new();
    pdu.encode(Digests::NONE, &mut out);
    assert_eq!(&out[..], &raw[..]);
}

#[test]
fn extended_cdb_ahs() {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x7f;
    let tail: Vec<u8> = (0u8..16).collect();
    let mut pdu = Pdu::new(Bhs::ScsiCommand(ScsiCommand {
        cdb,
        ..Default::default()
    }));
    pdu.ahs = Pdu::build_ahs(&[(AhsType::EXTENDED_CDB, &tail)]);
    assert_eq!(pdu.ahs.len(), 20);
    let mut buf = BytesMut::new();
    pdu.encode(Digests::NONE, &mut buf);
    assert_eq!(buf[4], 5);
    let back = Pdu::decode(&mut buf, &DecodeConfig::default())
        .unwrap()
        .unwrap();
    let full = back.full_cdb().unwrap();
    assert_eq!(full.len(), 32);
    assert_eq!(&full[16..], &tail[..]);
    let segs: Vec<_> = back.ahs_segments().collect();
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].ahs_type, AhsType::EXTENDED_CDB);
}

#[test]
fn malformed_ahs_is_rejectable() {
    let mut raw = [0u8; 52];
    raw[0] = 0x01;
    raw[4] = 1;
    raw[48] = 0;
    raw[49] = 9; // AHSLength 9 does not fit in one word
    let e = Pdu::decode_slice(&raw, &DecodeConfig::default()).unwrap_err();
    assert!(!e.is_fatal());
    assert!(e.rejected_header().is_some());
}

#[test]
fn incomplete_is_not_an_error() {
    let pdu = Pdu::with_data(Bhs::NopOut(NopOut::default()), Bytes::from_static(b"ping"));
    let mut buf = BytesMut::new();
    pdu.encode(
        Digests {
            header: true,
            data: true,
        },
        &mut buf,
    );
    for cut in 0..buf.len() {
        assert_eq!(
            Pdu::decode_slice(
                &buf[..cut],
                &cfg(Digests {
                    header: true,
                    data: true
                })
            )
            .unwrap(),
            None
        );
    }
}
