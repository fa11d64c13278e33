//! The initiator fed an arbitrary stream of target PDUs while it has reads and writes in
//! flight: never panics, completes each command at most once, and never completes a read
//! with GOOD status and a data length other than what the target said it sent.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use iscsi_pdu::*;
use iscsi_session::initiator::*;
use iscsi_session::{ConnectionParams, SessionParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut s = SessionParams::default();
    s.immediate_data = flags & 1 != 0;
    s.initial_r2t = flags & 2 != 0;
    s.max_burst_length = 4096;
    s.first_burst_length = 1024;
    let mut c = InitiatorConnection::new(
        InitiatorConfig::default(),
        s,
        ConnectionParams::default(),
        SerialNumber(1),
        SerialNumber(1),
        SerialNumber(64),
        SerialNumber(1),
        None,
        now,
    );
    let mut expected: HashMap<Itt, u32> = HashMap::new();
    for i in 0..4u32 {
        let read = i % 2 == 0;
        let len = 512 * (i + 1);
        let cmd = Command {
            lun: Lun::from_number(1),
            cdb: Bytes::from_static(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
            data: if read { DataDir::Read(len) } else { DataDir::Write(Bytes::from(vec![7u8; len as usize])) },
            attr: TaskAttr::SIMPLE,
        };
        let itt = c.submit(cmd, now);
        if read {
            expected.insert(itt, len);
        }
    }
    let cfg = DecodeConfig { digests: Digests::NONE, max_recv_data_segment_length: 1 << 16 };
    let mut buf = BytesMut::from(rest);
    let mut done = HashSet::new();
    let mut t = now;
    loop {
        while c.poll_transmit().is_some() {}
        while let Some(ev) = c.poll_event() {
            if let InitiatorEvent::Completed { itt, result } = ev {
                assert!(done.insert(itt), "{itt:?} completed twice");
                if let (Ok(r), Some(edtl)) = (&result, expected.get(&itt)) {
                    if r.status == 0 {
                        let want = if r.residual > 0 { *edtl as i64 - r.residual } else { *edtl as i64 };
                        assert_eq!(r.data.len() as i64, want, "GOOD read with the wrong amount of data");
                    }
                }
            }
        }
        match Pdu::decode(&mut buf, &cfg) {
            Ok(Some(p)) => {
                c.on_bytes_received(t);
                c.handle_pdu(p, t);
            }
            Ok(None) => break,
            Err(e) if e.is_fatal() => break,
            Err(e) => c.handle_decode_error(&e),
        }
        t += Duration::from_millis(50);
        c.handle_timeout(t);
    }
});
