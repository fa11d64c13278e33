//! The target side of full feature phase fed arbitrary PDU streams, with every command
//! completed at once: never panics, and never answers an ITT it did not receive.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use iscsi_pdu::*;
use iscsi_session::target::*;
use iscsi_session::{ConnectionParams, SessionParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut session = SessionParams::default();
    session.initial_r2t = flags & 1 != 0;
    session.immediate_data = flags & 2 != 0;
    session.max_burst_length = 4096;
    session.first_burst_length = 2048;
    session.max_outstanding_r2t = 2;
    let mut conn = ConnectionParams::default();
    conn.max_send_data_segment_length = 1024;
    let now = Instant::now();
    let mut c = TargetConnection::new(
        TargetConfig { max_write_buffer: 1 << 20, ..TargetConfig::default() },
        session,
        conn,
        SerialNumber(0),
        SerialNumber(0),
        SerialNumber(0),
        now,
    );
    let cfg = DecodeConfig { digests: Digests::NONE, max_recv_data_segment_length: 1 << 16 };
    let mut buf = BytesMut::from(rest);
    let mut seen = HashSet::new();
    let mut t = now;
    loop {
        match Pdu::decode(&mut buf, &cfg) {
            Ok(Some(p)) => {
                if let Some(itt) = p.bhs.itt() {
                    seen.insert(itt);
                }
                c.handle_pdu(p, t);
            }
            Ok(None) => break,
            Err(e) if e.is_fatal() => break,
            Err(e) => c.handle_decode_error(&e, t),
        }
        while let Some(ev) = c.poll_event() {
            if let TargetEvent::Execute(task) = ev {
                let outcome = ScsiOutcome {
                    data_in: bytes::Bytes::from(vec![0u8; task.cdb.first().copied().unwrap_or(0) as usize * 64]),
                    ..Default::default()
                };
                c.complete(task.itt, outcome);
            }
        }
        while let Some(p) = c.poll_transmit() {
            if let Some(itt) = p.bhs.itt() {
                assert!(itt == Itt::RESERVED || seen.contains(&itt), "answer to unknown {itt:?}");
            }
        }
        t += Duration::from_millis(100);
        c.handle_timeout(t);
    }
});
