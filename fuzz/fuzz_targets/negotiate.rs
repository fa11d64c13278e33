//! Operational negotiation, both roles, fed arbitrary key=value text: never panics, and what
//! it settles obeys RFC 7143's ranges.
#![no_main]

use iscsi_pdu::TextParams;
use iscsi_session::negotiate::*;
use iscsi_session::SessionType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 != 0 { Role::Target } else { Role::Initiator };
    let proposal = if role == Role::Target { Proposal::target() } else { Proposal::initiator() };
    let st = if flags & 2 != 0 { SessionType::Discovery } else { SessionType::Normal };
    let mut n = Negotiation::new(role, proposal, st, flags & 4 == 0);
    if role == Role::Initiator {
        let _ = n.operational_offers(&TextParams::new());
    }
    for chunk in rest.split(|b| *b == 0xff).take(8) {
        // Text as the peer would send it: make it NUL-terminated.
        let mut t = chunk.to_vec();
        t.push(0);
        if let Ok(p) = TextParams::decode(&t) {
            if n.receive(&p).is_err() {
                return;
            }
        }
    }
    if let Ok((s, c)) = n.finish() {
        assert!((512..=16_777_215).contains(&s.max_burst_length));
        assert!(s.first_burst_length <= s.max_burst_length);
        assert!(s.max_connections >= 1 && s.max_outstanding_r2t >= 1);
        assert!((512..=16_777_215).contains(&c.max_recv_data_segment_length));
        assert!((512..=16_777_215).contains(&c.max_send_data_segment_length));
    }
});
