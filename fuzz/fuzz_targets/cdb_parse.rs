//! CDB parsing and sense decoding on arbitrary bytes: never panics; every parse error maps
//! to a sense that encodes and decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scsi::{Command, CommandType, Sense, SenseFormat};

fuzz_target!(|data: &[u8]| {
    let _ = CommandType::classify(data);
    match Command::parse(data) {
        Ok(c) => {
            let _ = c.data_out_len(512);
            let _ = c.data_out_len(4096);
        }
        Err(e) => {
            let s = e.sense();
            for f in [SenseFormat::Fixed, SenseFormat::Descriptor] {
                let enc = s.encode(f);
                let back = Sense::decode(&enc).expect("our own sense decodes");
                assert_eq!(back.key, s.key);
                assert_eq!(back.asc, s.asc);
            }
        }
    }
    let _ = Sense::decode(data);
});
