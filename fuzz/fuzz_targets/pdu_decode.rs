//! Any bytes: the decoder never panics; whatever decodes re-encodes to the same bytes; a
//! stream cut anywhere never yields a different first PDU.
#![no_main]

use bytes::BytesMut;
use iscsi_pdu::{DecodeConfig, Digests, Pdu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let cfg = DecodeConfig {
        digests: Digests {
            header: flags & 1 != 0,
            data: flags & 2 != 0,
        },
        max_recv_data_segment_length: if flags & 4 != 0 { 8192 } else { 1 << 20 },
    };
    let mut buf = BytesMut::from(rest);
    let mut offset = 0usize;
    while let Ok(Some(pdu)) = Pdu::decode(&mut buf, &cfg) {
        let used = rest.len() - buf.len() - offset;
        let mut out = BytesMut::new();
        pdu.encode(cfg.digests, &mut out);
        assert_eq!(&out[..], &rest[offset..offset + used], "re-encoding differs");
        offset += used;
    }
});
