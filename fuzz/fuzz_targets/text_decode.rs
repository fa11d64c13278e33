//! Login/Text key=value decoding and binary values never panic, and round-trip.
#![no_main]

use iscsi_pdu::text::{decode_binary, TextParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TextParams::decode(data) {
        let again = TextParams::decode(&p.encode()).expect("encoded text decodes");
        assert_eq!(again, p);
        for (_, v) in p.iter() {
            let _ = decode_binary(v);
        }
    }
});
