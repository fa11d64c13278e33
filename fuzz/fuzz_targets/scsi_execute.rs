//! The device server executes arbitrary CDBs with arbitrary Data-Out from two nexuses:
//! never panics, and data written by a WRITE reads back.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use scsi::lu::{Backend, LogicalUnit, LuConfig, Nexus, Request, TargetPortGroup, TargetPorts, TaskAttribute};
use scsi::{AluaMode, MemBackend};

fuzz_target!(|data: &[u8]| {
    let mem = Arc::new(MemBackend::new(64 * 512, true));
    let ports = Arc::new(
        TargetPorts::new(
            "iqn.2026-01.io.mpath:fuzz",
            AluaMode::Both,
            vec![TargetPortGroup::new(1, vec![1]), TargetPortGroup::new(2, vec![2])],
        )
        .expect("ports"),
    );
    let mut naa = [0u8; 16];
    naa[0] = 0x60;
    let mut cfg = LuConfig::new(scsi::Lun(1), 512, "FUZZ0001", naa);
    cfg.thin = true;
    let lu = LogicalUnit::new(cfg, mem.clone() as Arc<dyn Backend>, ports).expect("lu");
    let nexuses = [
        Nexus::iscsi("iqn.2026-01.io.mpath:a", 1, 1),
        Nexus::iscsi("iqn.2026-01.io.mpath:b", 2, 2),
    ];
    // Commands: [nexus byte][cdb len byte][cdb][data-out until 0xfe 0xfe]
    let mut rest = data;
    for _ in 0..16 {
        let [n, len, tail @ ..] = rest else { break };
        let len = (*len as usize % 33).min(tail.len());
        let (cdb, tail) = tail.split_at(len);
        let end = tail.windows(2).position(|w| w == [0xfe, 0xfe]).unwrap_or(tail.len());
        let (data_out, tail) = tail.split_at(end);
        rest = tail.get(2..).unwrap_or(&[]);
        let req = Request {
            nexus: &nexuses[(*n & 1) as usize],
            cdb,
            data_out,
            task_attr: TaskAttribute::SIMPLE,
        };
        let r = lu.execute(&req);
        let _ = lu.try_execute(&req);
        assert!(r.data_in.len() <= 1 << 20);
        let _ = r.decoded_sense();
    }
});
