//! Device-server tests over the in-memory backend.

use super::mem::MemBackend;
use super::*;
use crate::alua::{AluaMode, AluaStatus, TargetPortGroupsData};
use crate::cdb::build;
use crate::inquiry::DeviceIdentification;
use crate::opcodes::SupportedOpcodes;
use crate::pr::{
    Capabilities, FullStatus, PrInAction, PrOutParams, ReadKeys, ReadReservation,
    RegisterAndMoveParams,
};
use crate::provisioning::UnmapParams;
use proptest::prelude::*;

const BLOCKS: u64 = 2048;

fn naa() -> [u8; 16] {
    let mut n = [0u8; 16];
    n[0] = 0x60;
    n[1] = 0x01;
    n[2] = 0x40;
    n[15] = 0x01;
    n
}

struct Rig {
    lu: LogicalUnit,
    mem: Arc<MemBackend>,
    ports: Arc<TargetPorts>,
}

fn ports(mode: AluaMode) -> Arc<TargetPorts> {
    let mut a = TargetPortGroup::new(1, vec![1]);
    a.preferred = true;
    let mut b = TargetPortGroup::new(2, vec![2]);
    b.state = AluaState::ACTIVE_NON_OPTIMIZED;
    Arc::new(TargetPorts::new("iqn.2024-01.test:target", mode, vec![a, b]).unwrap())
}

fn rig_with(block_size: u32, thin: bool, volatile: bool, mode: AluaMode) -> Rig {
    let mem = Arc::new(MemBackend::new(BLOCKS * 512, volatile));
    let ports = ports(mode);
    let mut cfg = LuConfig::new(Lun(1), block_size, "SERIAL0001", naa());
    cfg.thin = thin;
    let lu = LogicalUnit::new(cfg, mem.clone(), ports.clone()).unwrap();
    Rig { lu, mem, ports }
}

fn rig() -> Rig {
    rig_with(512, true, true, AluaMode::Both)
}

fn nexus(i: u64, rtp: u16) -> Nexus {
    Nexus::iscsi(
        &format!("iqn.2024-01.test:init{i}"),
        0x23d0_0000_0000 | i,
        rtp,
    )
}

impl Rig {
    fn exec(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Response {
        self.lu.execute(&Request {
            nexus: n,
            cdb,
            data_out: data,
            task_attr: TaskAttribute::SIMPLE,
        })
    }

    #[track_caller]
    fn ok(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Bytes {
        let r = self.exec(n, cdb, data);
        assert_eq!(r.status, Status::GOOD, "{:?}", r.decoded_sense());
        r.data_in
    }

    #[track_caller]
    fn sense(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Sense {
        let r = self.exec(n, cdb, data);
        assert_eq!(r.status, Status::CHECK_CONDITION);
        r.decoded_sense().unwrap()
    }

    #[track_caller]
    fn conflict(&self, n: &Nexus, cdb: &[u8], data: &[u8]) {
        let r = self.exec(n, cdb, data);
        assert_eq!(r.status, Status::RESERVATION_CONFLICT);
        assert!(r.sense.is_none());
    }

    /// First contact: the POWER ON/RESET unit attention, then clean.
    #[track_caller]
    fn login(&self, n: &Nexus) {
        let s = self.sense(n, &build::test_unit_ready(), &[]);
        assert!(s.is_power_on_or_reset(), "{s:?}");
        self.ok(n, &build::test_unit_ready(), &[]);
    }

    fn write(&self, n: &Nexus, lba: u64, data: &[u8]) {
        let blocks = (data.len() / 512) as u32;
        self.ok(n, &build::write_16(lba, blocks, false), data);
    }

    fn read(&self, n: &Nexus, lba: u64, blocks: u32) -> Bytes {
        self.ok(n, &build::read_16(lba, blocks, false), &[])
    }

    fn pr_out(&self, n: &Nexus, sa: PrOutAction, t: PrType, p: &PrOutParams) -> Response {
        let data = p.build();
        self.exec(
            n,
            &build::persistent_reserve_out(sa, t, data.len() as u32),
            &data,
        )
    }

    #[track_caller]
    fn pr_ok(&self, n: &Nexus, sa: PrOutAction, t: PrType, rk: u64, sark: u64) {
        let r = self.pr_out(
            n,
            sa,
            t,
            &PrOutParams {
                reservation_key: rk,
                service_action_key: sark,
                ..Default::default()
            },
        );
        assert_eq!(r.status, Status::GOOD, "{:?}", r.decoded_sense());
    }

    fn pr_in(&self, n: &Nexus, a: PrInAction) -> Bytes {
        self.ok(n, &build::persistent_reserve_in(a, 8192), &[])
    }

    fn keys(&self, n: &Nexus) -> ReadKeys {
        ReadKeys::parse(&self.pr_in(n, PrInAction::READ_KEYS)).unwrap()
    }

    fn reservation(&self, n: &Nexus) -> ReadReservation {
        ReadReservation::parse(&self.pr_in(n, PrInAction::READ_RESERVATION)).unwrap()
    }
}

fn pattern(blocks: usize, seed: u8) -> Vec<u8> {
    (0..blocks * 512)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- unit attention sequencing ----

#[test]
fn new_nexus_sees_power_on_reset_once() {
    let r = rig();
    let a = nexus(1, 1);
    // INQUIRY does not report (nor clear) the pending unit attention.
    r.ok(&a, &build::inquiry(None, 96), &[]);
    r.login(&a);
    // A different ISID is a different I_T nexus.
    let b = nexus(2, 1);
    r.login(&b);
    // So is the same initiator port through another target port.
    let a2 = nexus(1, 2);
    r.login(&a2);
}

#[test]
fn unit_attention_precedes_cdb_errors() {
    let r = rig();
    let a = nexus(1, 1);
    let s = r.sense(&a, &[0xff, 0, 0, 0, 0, 0], &[]);
    assert!(s.is_power_on_or_reset());
    let s = r.sense(&a, &[0xff, 0, 0, 0, 0, 0], &[]);
    assert!(s.is_invalid_opcode());
}

#[test]
fn request_sense_returns_and_clears_unit_attention() {
    let r = rig();
    let a = nexus(1, 1);
    let d = r.ok(&a, &build::request_sense(false, 252), &[]);
    let s = Sense::decode(&d).unwrap();
    assert_eq!(s.asc, sense::POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED);
    assert_eq!(d[0], 0x70);
    // Cleared: TEST UNIT READY is now good, REQUEST SENSE reports NO SENSE.
    r.ok(&a, &build::test_unit_ready(), &[]);
    let d = r.ok(&a, &build::request_sense(true, 252), &[]);
    assert_eq!(d[0], 0x72, "DESC asks for descriptor format");
    assert_eq!(Sense::decode(&d).unwrap().key, SenseKey::NO_SENSE);
    // Allocation length truncates.
    assert_eq!(r.ok(&a, &build::request_sense(false, 4), &[]).len(), 4);
}

#[test]
fn reset_reaches_every_nexus() {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    r.login(&a);
    r.login(&b);
    r.lu.reset();
    for n in [&a, &b] {
        let s = r.sense(n, &build::test_unit_ready(), &[]);
        assert_eq!(s.asc, sense::BUS_DEVICE_RESET_FUNCTION_OCCURRED);
        r.ok(n, &build::test_unit_ready(), &[]);
    }
}

#[test]
fn capacity_change_is_announced() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.mem.resize(4096 * 512);
    r.lu.resize_notify();
    let s = r.sense(&a, &build::read_capacity_10(), &[]);
    assert!(s.is_capacity_changed());
    let d = r.ok(&a, &build::read_capacity_10(), &[]);
    assert_eq!(ReadCapacity10Data::parse(&d).unwrap().last_lba, 4095);
    // No change, no attention.
    r.lu.resize_notify();
    r.ok(&a, &build::test_unit_ready(), &[]);
}

// ---- reads and writes ----

#[test]
fn write_then_read_back() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let data = pattern(8, 7);
    r.write(&a, 10, &data);
    assert_eq!(r.read(&a, 10, 8), data);
    r.ok(&a, &build::write_10(100, 1, false), &data[..512]);
    assert_eq!(r.ok(&a, &build::read_10(100, 1, false), &[]), data[..512]);
    // Zero blocks: nothing transferred, not an error.
    assert!(r.read(&a, 0, 0).is_empty());
    // READ(6) with TRANSFER LENGTH 0 reads 256 blocks.
    let d = r.ok(&a, &[0x08, 0, 0, 0, 0, 0], &[]);
    assert_eq!(d.len(), 256 * 512);
}

#[test]
fn lba_out_of_range() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    for (lba, n) in [
        (BLOCKS, 1),
        (BLOCKS - 1, 2),
        (u64::MAX, 1),
        (1 << 63, 1),
        (BLOCKS + 1, 0),
    ] {
        let s = r.sense(&a, &build::read_16(lba, n, false), &[]);
        assert!(s.is_lba_out_of_range(), "{lba} {n}");
    }
    // The last block, and zero blocks right at the end, are fine.
    r.read(&a, BLOCKS - 1, 1);
    r.read(&a, BLOCKS, 0);
    let s = r.sense(&a, &build::write_16(BLOCKS, 1, false), &[0; 512]);
    assert!(s.is_lba_out_of_range());
}

#[test]
fn transfer_length_limit() {
    let mem = Arc::new(MemBackend::new(BLOCKS * 512, false));
    let mut cfg = LuConfig::new(Lun(0), 512, "S1", naa());
    cfg.max_transfer_bytes = 64 * 512;
    let lu = LogicalUnit::new(cfg, mem, ports(AluaMode::Implicit)).unwrap();
    let r = Rig {
        lu,
        mem: Arc::new(MemBackend::new(0, false)),
        ports: ports(AluaMode::Implicit),
    };
    let a = nexus(1, 1);
    r.login(&a);
    r.read(&a, 0, 64);
    let s = r.sense(&a, &build::read_16(0, 65, false), &[]);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn short_data_out_writes_only_whole_blocks_sent() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.write(&a, 0, &[b'a'; 1024]);
    // Two blocks in the CDB, one block of Data-Out (EDTL < TL): GOOD, and
    // only the first block changes.
    r.ok(&a, &build::write_10(0, 2, false), &[b'b'; 512]);
    let d = r.read(&a, 0, 2);
    assert!(d[..512].iter().all(|&c| c == b'b'));
    assert!(d[512..].iter().all(|&c| c == b'a'));
    // Extra Data-Out (EDTL > TL) is ignored.
    r.ok(&a, &build::write_10(0, 1, false), &[b'c'; 1024]);
    let d = r.read(&a, 0, 2);
    assert!(d[512..].iter().all(|&c| c == b'a'));
}

#[test]
fn fua_and_synchronize_cache_flush() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let f0 = r.mem.flush_count();
    r.ok(&a, &build::write_10(0, 1, false), &[1; 512]);
    assert_eq!(r.mem.flush_count(), f0, "no FUA, write cache on: no flush");
    r.ok(&a, &build::write_10(0, 1, true), &[1; 512]);
    assert_eq!(r.mem.flush_count(), f0 + 1);
    r.ok(&a, &build::synchronize_cache_10(0, 0, false), &[]);
    r.ok(&a, &build::synchronize_cache_16(0, 16, true), &[]);
    assert_eq!(r.mem.flush_count(), f0 + 3);
    let s = r.sense(&a, &build::synchronize_cache_16(BLOCKS, 1, false), &[]);
    assert!(s.is_lba_out_of_range());
    // FUA flushes even when the backend claims no volatile cache.
    let r2 = rig_with(512, false, false, AluaMode::Implicit);
    r2.login(&a);
    r2.ok(&a, &build::write_16(0, 1, true), &[1; 512]);
    assert_eq!(r2.mem.flush_count(), 1);
}

#[test]
fn io_errors_map_to_medium_errors() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.mem.fail_flushes(true);
    let s = r.sense(&a, &build::write_10(0, 1, true), &[0; 512]);
    assert_eq!((s.key, s.asc), (SenseKey::MEDIUM_ERROR, sense::WRITE_ERROR));
    let s = r.sense(&a, &build::synchronize_cache_10(0, 0, false), &[]);
    assert_eq!(s.asc, sense::WRITE_ERROR);
    r.mem.fail_flushes(false);
    r.mem.fail_reads(true);
    let s = r.sense(&a, &build::read_10(5, 1, false), &[]);
    assert_eq!(
        (s.key, s.asc),
        (SenseKey::MEDIUM_ERROR, sense::UNRECOVERED_READ_ERROR)
    );
    assert_eq!(s.info, Some(5));
    r.mem.fail_reads(false);
    r.mem.fail_writes(true);
    let s = r.sense(&a, &build::write_10(0, 1, false), &[0; 512]);
    assert_eq!(s.asc, sense::WRITE_ERROR);
}

#[test]
fn verify_compares_with_bytchk() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let data = pattern(4, 3);
    r.write(&a, 20, &data);
    r.ok(&a, &build::verify_16(20, 4, 0), &[]);
    r.ok(&a, &build::verify_16(20, 4, 1), &data);
    let mut bad = data.clone();
    bad[1500] ^= b'X';
    let s = r.sense(&a, &build::verify_16(20, 4, 1), &bad);
    assert!(s.is_miscompare());
    assert_eq!(s.asc, sense::MISCOMPARE_DURING_VERIFY_OPERATION);
    assert_eq!(s.info, Some(1500));
    // BYTCHK 11b: one block compared with every block.
    r.write(&a, 40, &[9; 4 * 512]);
    r.ok(&a, &build::verify_16(40, 4, 3), &[9; 512]);
    let s = r.sense(&a, &build::verify_16(40, 4, 3), &[8; 512]);
    assert_eq!(s.info, Some(0));
    // BYTCHK 10b is reserved.
    let s = r.sense(&a, &build::verify_16(40, 4, 2), &[]);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
    let s = r.sense(&a, &build::verify_16(BLOCKS, 1, 0), &[]);
    assert!(s.is_lba_out_of_range());
}

#[test]
fn write_and_verify() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let data = pattern(2, 9);
    let cdb = [0x2e, 0x02, 0, 0, 0, 50, 0, 0, 2, 0];
    let f0 = r.mem.flush_count();
    r.ok(&a, &cdb, &data);
    assert_eq!(r.read(&a, 50, 2), data);
    assert_eq!(
        r.mem.flush_count(),
        f0 + 1,
        "verification is against the medium"
    );
}

#[test]
fn compare_and_write() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.write(&a, 7, &[b'A'; 1024]);
    let mut buf = vec![b'A'; 1024];
    buf.extend_from_slice(&[b'B'; 1024]);
    r.ok(&a, &build::compare_and_write(7, 2, false), &buf);
    assert!(r.read(&a, 7, 2).iter().all(|&c| c == b'B'));
    // Now the compare data no longer matches: MISCOMPARE, nothing written,
    // INFORMATION is the offset of the first differing byte.
    buf[..1024].copy_from_slice(&[b'B'; 1024]);
    buf[700] = b'C';
    buf[1024..].copy_from_slice(&[b'D'; 1024]);
    let s = r.sense(&a, &build::compare_and_write(7, 2, false), &buf);
    assert!(s.is_miscompare());
    assert_eq!(s.info, Some(700));
    assert!(r.read(&a, 7, 2).iter().all(|&c| c == b'B'));
    // Data-Out not exactly twice the blocks: malformed.
    let s = r.sense(&a, &build::compare_and_write(7, 1, false), &buf);
    assert!(s.is_illegal_request());
    // Zero blocks, no data: nothing to do.
    r.ok(&a, &build::compare_and_write(7, 0, false), &[]);
    let s = r.sense(
        &a,
        &build::compare_and_write(BLOCKS - 1, 2, false),
        &vec![0; 2048],
    );
    assert!(s.is_lba_out_of_range());
    // FUA flushes.
    let f0 = r.mem.flush_count();
    let mut ok = vec![b'B'; 512];
    ok.extend_from_slice(&[b'E'; 512]);
    r.ok(&a, &build::compare_and_write(7, 1, true), &ok);
    assert_eq!(r.mem.flush_count(), f0 + 1);
}

#[test]
fn compare_and_write_is_atomic_across_threads() {
    let r = Arc::new(rig());
    let a = nexus(1, 1);
    r.login(&a);
    r.write(&a, 0, &[0; 512]);
    let threads = 4;
    let per_thread = 50;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                let n = nexus(10 + t, 1);
                let _ = r.exec(&n, &build::test_unit_ready(), &[]);
                let mut done = 0;
                while done < per_thread {
                    let cur = r.read(&n, 0, 1);
                    let v = u64::from_be_bytes(cur[..8].try_into().unwrap());
                    let mut buf = cur.to_vec();
                    let mut next = cur.to_vec();
                    next[..8].copy_from_slice(&(v + 1).to_be_bytes());
                    buf.extend_from_slice(&next);
                    let resp = r.exec(&n, &build::compare_and_write(0, 1, false), &buf);
                    if resp.status == Status::GOOD {
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let d = r.read(&a, 0, 1);
    assert_eq!(
        u64::from_be_bytes(d[..8].try_into().unwrap()),
        threads * per_thread
    );
}

#[test]
fn or_write() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.write(&a, 3, &[0x0f; 512]);
    let cdb = [0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0];
    r.ok(&a, &cdb, &[0xf0; 512]);
    assert!(r.read(&a, 3, 1).iter().all(|&c| c == 0xff));
}

#[test]
fn write_same() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let mut block = vec![0u8; 512];
    block[..4].copy_from_slice(b"WSWS");
    r.ok(&a, &build::write_same_16(100, 300, false, false), &block);
    let d = r.read(&a, 100, 300);
    assert!(d.chunks(512).all(|c| c == block.as_slice()));
    // Zero blocks: through the end of the medium (WSNZ=0).
    r.ok(
        &a,
        &build::write_same_16(BLOCKS - 3, 0, false, false),
        &block,
    );
    assert!(r
        .read(&a, BLOCKS - 3, 3)
        .chunks(512)
        .all(|c| c == block.as_slice()));
    // Range and Data-Out size errors.
    let s = r.sense(
        &a,
        &build::write_same_16(BLOCKS - 1, 2, false, false),
        &block,
    );
    assert!(s.is_lba_out_of_range());
    let s = r.sense(
        &a,
        &build::write_same_16(BLOCKS + 1, 0, false, false),
        &block,
    );
    assert!(s.is_lba_out_of_range());
    let s = r.sense(&a, &build::write_same_16(0, 1, false, false), &[0; 256]);
    assert!(s.is_illegal_request());
    // ANCHOR without UNMAP, and ANCHOR at all (ANC_SUP=0).
    let s = r.sense(
        &a,
        &[0x93, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        &block,
    );
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
    let s = r.sense(
        &a,
        &[0x93, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        &block,
    );
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn write_same_unmap_deallocates_when_thin() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.write(&a, 0, &[0xff; 8 * 512]);
    r.ok(&a, &build::write_same_16(0, 8, true, false), &[0; 512]);
    assert!(r.read(&a, 0, 8).iter().all(|&c| c == 0));
    let st = LbaStatus::parse(&r.ok(&a, &build::get_lba_status(0, 24), &[])).unwrap();
    assert_eq!(st.descriptors[0].status, ProvisioningStatus::DEALLOCATED);
    // NDOB: no Data-Out, zeroes.
    r.write(&a, 0, &[0xff; 512]);
    r.ok(&a, &build::write_same_16(0, 1, true, true), &[]);
    assert!(r.read(&a, 0, 1).iter().all(|&c| c == 0));
    // WRITE SAME(10) with UNMAP too (LBPWS10).
    r.write(&a, 0, &[0xff; 512]);
    r.ok(&a, &[0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]);
    assert!(r.read(&a, 0, 1).iter().all(|&c| c == 0));
    // Fully provisioned LU: UNMAP bit refused.
    let full = rig_with(512, false, false, AluaMode::Implicit);
    full.login(&a);
    let s = full.sense(&a, &build::write_same_16(0, 1, true, false), &[0; 512]);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn unmap_and_get_lba_status() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.write(&a, 0, &[0xaa; 64 * 512]);
    let p = build::unmap_params(&[(8, 8), (32, 0), (40, 4)]);
    r.ok(&a, &build::unmap(p.len() as u16), &p);
    let d = r.read(&a, 0, 64);
    assert!(d[8 * 512..16 * 512].iter().all(|&c| c == 0));
    assert!(d[..8 * 512].iter().all(|&c| c == 0xaa));
    assert!(d[40 * 512..44 * 512].iter().all(|&c| c == 0));
    let st = LbaStatus::parse(&r.ok(&a, &build::get_lba_status(0, 8 + 16 * 4), &[])).unwrap();
    assert_eq!(
        st.descriptors[0],
        LbaStatusDescriptor {
            lba: 0,
            blocks: 8,
            status: ProvisioningStatus::MAPPED
        }
    );
    assert_eq!(
        st.descriptors[1],
        LbaStatusDescriptor {
            lba: 8,
            blocks: 8,
            status: ProvisioningStatus::DEALLOCATED
        }
    );
    assert_eq!(st.descriptors.len(), 4);
    // One descriptor when the allocation length only fits one.
    let st = LbaStatus::parse(&r.ok(&a, &build::get_lba_status(9, 24), &[])).unwrap();
    assert_eq!(st.descriptors.len(), 1);
    assert_eq!(st.descriptors[0].lba, 9);
    let s = r.sense(&a, &build::get_lba_status(BLOCKS, 24), &[]);
    assert!(s.is_lba_out_of_range());
    // No descriptors, or zero-length ones at the very end, are fine.
    r.ok(&a, &build::unmap(0), &[]);
    let p = build::unmap_params(&[]);
    r.ok(&a, &build::unmap(p.len() as u16), &p);
    let p = build::unmap_params(&[(BLOCKS, 0)]);
    r.ok(&a, &build::unmap(p.len() as u16), &p);
    // Errors.
    let p = build::unmap_params(&[(BLOCKS - 1, 2)]);
    assert!(r
        .sense(&a, &build::unmap(p.len() as u16), &p)
        .is_lba_out_of_range());
    let s = r.sense(&a, &build::unmap(4), &[0, 2, 0, 0]);
    assert_eq!(s.asc, sense::PARAMETER_LIST_LENGTH_ERROR);
    let p = build::unmap_params(&[(0, MAX_UNMAP_LBA_COUNT + 1)]);
    let s = r.sense(&a, &build::unmap(p.len() as u16), &p);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_PARAMETER_LIST);
    let many: Vec<(u64, u32)> = (0..=MAX_UNMAP_DESCRIPTORS as u64).map(|i| (i, 0)).collect();
    let p = UnmapParams { descriptors: many }.build();
    let s = r.sense(&a, &build::unmap(p.len() as u16), &p);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_PARAMETER_LIST);
    let s = r.sense(&a, &[0x42, 0x01, 0, 0, 0, 0, 0, 0, 8, 0], &[0; 8]);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB, "ANCHOR");
    // Fully provisioned LU: UNMAP is not implemented.
    let full = rig_with(512, false, false, AluaMode::Implicit);
    full.login(&a);
    let p = build::unmap_params(&[(0, 1)]);
    assert!(full
        .sense(&a, &build::unmap(p.len() as u16), &p)
        .is_invalid_opcode());
}

#[test]
fn block_size_4096() {
    let r = rig_with(4096, false, false, AluaMode::Implicit);
    let a = nexus(1, 1);
    r.login(&a);
    let d = r.ok(&a, &build::read_capacity_16(32), &[]);
    let rc = ReadCapacity16Data::parse(&d).unwrap();
    assert_eq!((rc.last_lba, rc.block_len), (BLOCKS / 8 - 1, 4096));
    let data: Vec<u8> = (0..8192).map(|i| i as u8).collect();
    r.ok(&a, &build::write_10(3, 2, false), &data);
    assert_eq!(r.ok(&a, &build::read_10(3, 2, false), &[]), data);
    assert_eq!(r.lu.data_out_len(&build::write_10(3, 2, false)), Ok(8192));
}

// ---- identification ----

#[test]
fn inquiry_standard_and_vpd() {
    let r = rig();
    let a = nexus(1, 2);
    let d = r.ok(&a, &build::inquiry(None, 260), &[]);
    assert_eq!(d.len(), 96);
    let inq = StandardInquiry::parse(&d).unwrap();
    assert_eq!(inq.version, 0x06);
    assert_eq!(inq.tpgs, 3);
    assert!(inq.version_descriptors.contains(&0x04c0));
    assert_eq!(inq.vendor, "MPATH");
    assert_eq!(d[4] as usize, d.len() - 5);
    // Allocation lengths 0..=255 all succeed and truncate.
    for len in [0u16, 1, 5, 36, 255, 256] {
        assert_eq!(
            r.ok(&a, &build::inquiry(None, len), &[]).len(),
            (len as usize).min(96)
        );
    }
    let pages = SupportedVpdPages::parse(&r.ok(&a, &build::inquiry(Some(0), 255), &[])).unwrap();
    for p in &pages.pages {
        r.ok(&a, &build::inquiry(Some(*p), 255), &[]);
    }
    let di = DeviceIdentification::parse(&r.ok(&a, &build::inquiry(Some(0x83), 255), &[])).unwrap();
    assert_eq!(di.lu_naa(), Some(&naa()[..]));
    assert_eq!(di.relative_target_port(), Some(2));
    assert_eq!(di.target_port_group(), Some(2));
    assert_eq!(
        di.target_port_name().as_deref(),
        Some("iqn.2024-01.test:target,t,0x0002")
    );
    assert_eq!(di.target_name().as_deref(), Some("iqn.2024-01.test:target"));
    let serial = UnitSerialNumber::parse(&r.ok(&a, &build::inquiry(Some(0x80), 255), &[])).unwrap();
    assert_eq!(serial.serial, "SERIAL0001");
    let bl_raw = r.ok(&a, &build::inquiry(Some(0xb0), 64), &[]);
    assert_eq!(bl_raw.len(), 64);
    let bl = BlockLimits::parse(&bl_raw).unwrap();
    assert_eq!(bl.max_compare_and_write, 255);
    assert_eq!(bl.max_unmap_lba_count, MAX_UNMAP_LBA_COUNT);
    assert_eq!(bl.max_transfer, 65536);
    let lbp =
        LogicalBlockProvisioning::parse(&r.ok(&a, &build::inquiry(Some(0xb2), 64), &[])).unwrap();
    assert!(lbp.lbpu && lbp.lbpws && lbp.lbpws10 && lbp.lbprz);
    let bdc =
        BlockDeviceCharacteristics::parse(&r.ok(&a, &build::inquiry(Some(0xb1), 64), &[])).unwrap();
    assert_eq!(bdc.rotation_rate, 1);
    // Unknown page; page code without EVPD; CMDDT.
    let s = r.sense(&a, &build::inquiry(Some(0x99), 255), &[]);
    assert_eq!(s.field_pointer.map(|f| f.byte), Some(2));
    assert_eq!(
        r.sense(&a, &[0x12, 0, 1, 0, 255, 0], &[]).asc,
        sense::INVALID_FIELD_IN_CDB
    );
    assert_eq!(
        r.sense(&a, &[0x12, 2, 0, 0, 255, 0], &[]).asc,
        sense::INVALID_FIELD_IN_CDB
    );
}

#[test]
fn fully_provisioned_reports_no_unmap() {
    let r = rig_with(512, false, false, AluaMode::Implicit);
    let a = nexus(1, 1);
    let bl = BlockLimits::parse(&r.ok(&a, &build::inquiry(Some(0xb0), 64), &[])).unwrap();
    assert_eq!((bl.max_unmap_lba_count, bl.max_unmap_descriptors), (0, 0));
    let lbp =
        LogicalBlockProvisioning::parse(&r.ok(&a, &build::inquiry(Some(0xb2), 64), &[])).unwrap();
    assert!(!lbp.lbpu && !lbp.lbpws);
    r.login(&a);
    let rc = ReadCapacity16Data::parse(&r.ok(&a, &build::read_capacity_16(32), &[])).unwrap();
    assert!(!rc.lbpme && !rc.lbprz);
}

#[test]
fn read_capacity() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let rc = ReadCapacity10Data::parse(&r.ok(&a, &build::read_capacity_10(), &[])).unwrap();
    assert_eq!((rc.last_lba, rc.block_len), (BLOCKS as u32 - 1, 512));
    let d = r.ok(&a, &build::read_capacity_16(32), &[]);
    let rc = ReadCapacity16Data::parse(&d).unwrap();
    assert!(rc.lbpme && rc.lbprz);
    for len in 0..16 {
        assert_eq!(
            r.ok(&a, &build::read_capacity_16(len), &[]).len(),
            len as usize
        );
    }
    // PMI=0 with an LBA is invalid.
    let s = r.sense(&a, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[]);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
}

#[test]
fn report_luns_and_missing_luns() {
    let r = rig();
    let a = nexus(1, 1);
    let d = ReportLunsData::parse(&r.ok(&a, &build::report_luns(0, 4096), &[])).unwrap();
    assert_eq!(d.luns, vec![Lun(1)]);
    let resp = report_luns(&build::report_luns(2, 4096), &[Lun(300), Lun(0), Lun(5)]);
    let d = ReportLunsData::parse(&resp.data_in).unwrap();
    assert_eq!(d.luns, vec![Lun(0), Lun(5), Lun(300)]);
    assert_eq!(&resp.data_in[24..26], &[0x41, 0x2c]);
    let resp = report_luns(&build::report_luns(0x10, 4096), &[Lun(0)]);
    assert_eq!(resp.status, Status::CHECK_CONDITION);
    let resp = lun_not_supported(&build::inquiry(None, 96));
    assert_eq!(resp.data_in[0], 0x7f);
    let resp = lun_not_supported(&build::test_unit_ready());
    assert_eq!(
        resp.decoded_sense().unwrap().asc,
        sense::LOGICAL_UNIT_NOT_SUPPORTED
    );
}

#[test]
fn report_supported_operation_codes() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let all = SupportedOpcodes::parse(&r.ok(
        &a,
        &build::report_supported_operation_codes(true, 0, 0, 0, 65535),
        &[],
    ))
    .unwrap();
    assert_eq!(all.descriptors.len(), CommandType::ALL.len());
    assert!(all.descriptors.iter().all(|d| d.timeouts.is_some()));
    for d in &all.descriptors {
        let options = if d.servactv { 2 } else { 1 };
        let one = crate::opcodes::OneCommand::parse(&r.ok(
            &a,
            &build::report_supported_operation_codes(
                false,
                options,
                d.opcode.0,
                d.service_action,
                65535,
            ),
            &[],
        ))
        .unwrap();
        assert_eq!(one.usage[0], d.opcode.0);
        // The wrong option for the opcode is INVALID FIELD IN CDB pointing
        // at REPORTING OPTIONS, never at byte 1.
        let wrong = if d.servactv { 1 } else { 2 };
        let s = r.sense(
            &a,
            &build::report_supported_operation_codes(
                false,
                wrong,
                d.opcode.0,
                d.service_action,
                65535,
            ),
            &[],
        );
        assert_eq!(s.field_pointer.map(|f| f.byte), Some(2));
    }
}

#[test]
fn cdb_errors_carry_field_pointers() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    assert!(r.sense(&a, &[0xc0, 0, 0, 0, 0, 0], &[]).is_invalid_opcode());
    // RDPROTECT without protection information.
    let s = r.sense(&a, &[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    assert_eq!(
        s.field_pointer,
        Some(sense::FieldPointer {
            in_cdb: true,
            byte: 1,
            bit: Some(7)
        })
    );
    // Unsupported MAINTENANCE IN service action: pointer at byte 1.
    let s = r.sense(&a, &[0xa3, 0x05, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(s.field_pointer.map(|f| f.byte), Some(1));
    // PR IN service actions past READ FULL STATUS.
    for sa in 4..0x20 {
        let s = r.sense(&a, &[0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
        assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
    }
    // NACA.
    let s = r.sense(&a, &[0, 0, 0, 0, 0, 0x04], &[]);
    assert_eq!(s.field_pointer.map(|f| f.byte), Some(5));
}

#[test]
fn start_stop_unit() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.ok(&a, &build::start_stop_unit(true, false), &[]);
    r.ok(&a, &build::start_stop_unit(false, false), &[]);
    r.ok(&a, &build::start_stop_unit(true, true), &[]);
    // Not removable: eject fails.
    let s = r.sense(&a, &build::start_stop_unit(false, true), &[]);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
    r.ok(&a, &build::test_unit_ready(), &[]);
}

#[test]
fn read_defect_data_is_empty() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let d = r.ok(&a, &[0x37, 0, 0x18 | 0x05, 0, 0, 0, 0, 0, 32, 0], &[]);
    assert_eq!(&d[..], &[0, 0x1d, 0, 0]);
    let d = r.ok(&a, &[0xb7, 0x05, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[]);
    assert_eq!(d.len(), 8);
}

// ---- mode parameters ----

fn mode_params(r: &Rig, n: &Nexus, pc: u8, page: u8) -> ModeParameters {
    ModeParameters::parse(
        &r.ok(n, &build::mode_sense_10(false, pc, page, 0, 4096), &[]),
        true,
    )
    .unwrap()
}

#[test]
fn mode_sense_pages() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let m = mode_params(&r, &a, 0, 0x3f);
    assert_eq!(m.device_specific, DSP_DPOFUA);
    assert_eq!(
        m.block_descriptors,
        vec![BlockDescriptor {
            blocks: BLOCKS,
            block_len: 512
        }]
    );
    assert!(
        m.caching().unwrap().wce,
        "volatile backend: WCE reflects it"
    );
    let c = m.control().unwrap();
    assert!(!c.d_sense && c.tst == 0 && c.qerr != 2);
    assert_eq!(m.pages.len(), 3);
    // MODE SENSE(6), DBD, allocation length 4.
    let d = r.ok(&a, &build::mode_sense_6(true, 0, 0x3f, 0, 255), &[]);
    let m6 = ModeParameters::parse(&d, false).unwrap();
    assert!(m6.block_descriptors.is_empty());
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(
        r.ok(&a, &build::mode_sense_6(false, 0, 0x3f, 0, 4), &[])
            .len(),
        4
    );
    // Single pages, and changeable masks.
    assert_eq!(mode_params(&r, &a, 0, 0x0a).pages.len(), 1);
    let ch = mode_params(&r, &a, 1, 0x0a).control().unwrap();
    assert!(ch.d_sense && ch.swp);
    // Non-volatile backend: WCE clear and not changeable.
    let nv = rig_with(512, false, false, AluaMode::Implicit);
    nv.login(&a);
    assert!(!mode_params(&nv, &a, 0, 0x08).caching().unwrap().wce);
    assert!(!mode_params(&nv, &a, 1, 0x08).caching().unwrap().wce);
    // Saved values are not supported; unknown pages and subpages invalid.
    let s = r.sense(&a, &build::mode_sense_10(false, 3, 0x3f, 0, 255), &[]);
    assert_eq!(s.asc, sense::SAVING_PARAMETERS_NOT_SUPPORTED);
    assert_eq!(
        r.sense(&a, &build::mode_sense_10(false, 0, 0x19, 0, 255), &[])
            .asc,
        sense::INVALID_FIELD_IN_CDB
    );
    assert_eq!(
        r.sense(&a, &build::mode_sense_10(false, 0, 0x0a, 1, 255), &[])
            .asc,
        sense::INVALID_FIELD_IN_CDB
    );
    r.ok(&a, &build::mode_sense_10(false, 0, 0x3f, 0xff, 255), &[]);
}

fn select_control(r: &Rig, n: &Nexus, c: ControlPage) -> Response {
    let mut list = vec![0u8; 8];
    list.extend_from_slice(&c.to_bytes());
    r.exec(n, &build::mode_select_10(list.len() as u16), &list)
}

#[test]
fn mode_select_d_sense_switches_sense_format() {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 1));
    r.login(&a);
    r.login(&b);
    let mut c = mode_params(&r, &a, 0, 0x0a).control().unwrap();
    c.d_sense = true;
    assert_eq!(select_control(&r, &a, c).status, Status::GOOD);
    let resp = r.exec(&a, &build::read_16(u64::MAX, 1, false), &[]);
    let raw = resp.sense.unwrap();
    assert_eq!(raw[0], 0x72, "descriptor format now");
    assert!(Sense::decode(&raw).unwrap().is_lba_out_of_range());
    // The other nexus is told the parameters changed.
    let s = r.sense(&b, &build::test_unit_ready(), &[]);
    assert_eq!(s.asc, sense::MODE_PARAMETERS_CHANGED);
    r.ok(&a, &build::test_unit_ready(), &[]);
    // A non-changeable bit (QERR) is refused with a pointer at its byte.
    c.qerr = 1;
    let resp = select_control(&r, &a, c);
    let s = resp.decoded_sense().unwrap();
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_PARAMETER_LIST);
    assert_eq!(s.field_pointer.map(|f| f.byte), Some(8 + 3));
    // Truncated list, SP bit.
    let s = r.sense(&a, &build::mode_select_10(20), &[0; 10]);
    assert_eq!(s.asc, sense::PARAMETER_LIST_LENGTH_ERROR);
    let s = r.sense(&a, &[0x55, 0x11, 0, 0, 0, 0, 0, 0, 8, 0], &[0; 8]);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_CDB);
    // LU reset restores defaults.
    r.lu.reset();
    r.sense(&a, &build::test_unit_ready(), &[]);
    let raw = r
        .exec(&a, &build::read_16(u64::MAX, 1, false), &[])
        .sense
        .unwrap();
    assert_eq!(raw[0], 0x70);
}

#[test]
fn software_write_protect() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let mut c = mode_params(&r, &a, 0, 0x0a).control().unwrap();
    c.swp = true;
    assert_eq!(select_control(&r, &a, c).status, Status::GOOD);
    assert_eq!(
        mode_params(&r, &a, 0, 0x3f).device_specific & DSP_WRITE_PROTECT,
        DSP_WRITE_PROTECT
    );
    r.read(&a, 0, 1);
    let s = r.sense(&a, &build::write_10(0, 1, false), &[0; 512]);
    assert!(s.is_write_protected());
    c.swp = false;
    assert_eq!(select_control(&r, &a, c).status, Status::GOOD);
    r.ok(&a, &build::write_10(0, 1, false), &[0; 512]);
}

#[test]
fn read_only_lu() {
    let mem = Arc::new(MemBackend::new(BLOCKS * 512, false));
    let mut cfg = LuConfig::new(Lun(0), 512, "RO1", naa());
    cfg.read_only = true;
    let lu = LogicalUnit::new(cfg, mem.clone(), ports(AluaMode::Implicit)).unwrap();
    let r = Rig {
        lu,
        mem,
        ports: ports(AluaMode::Implicit),
    };
    let a = nexus(1, 1);
    r.login(&a);
    assert!(r
        .sense(&a, &build::write_16(0, 1, false), &[0; 512])
        .is_write_protected());
    assert!(r
        .sense(&a, &build::write_same_16(0, 1, false, true), &[])
        .is_write_protected());
    r.read(&a, 0, 1);
}

#[test]
fn write_cache_disable_writes_through() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let mut list = vec![0u8; 8];
    list.extend_from_slice(
        &CachingPage {
            wce: false,
            rcd: false,
        }
        .to_bytes(),
    );
    r.ok(&a, &build::mode_select_10(list.len() as u16), &list);
    assert!(!mode_params(&r, &a, 0, 0x08).caching().unwrap().wce);
    let f0 = r.mem.flush_count();
    r.ok(&a, &build::write_10(0, 1, false), &[1; 512]);
    assert_eq!(r.mem.flush_count(), f0 + 1);
}

// ---- ALUA ----

#[test]
fn alua_states_gate_commands() {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    r.login(&a);
    r.login(&b);
    r.ports.set_state(2, AluaState::STANDBY).unwrap();
    // Everyone hears about it once.
    for n in [&a, &b] {
        r.ok(n, &build::inquiry(None, 36), &[]);
        let s = r.sense(n, &build::read_capacity_10(), &[]);
        assert!(s.is_alua_state_changed(), "{s:?}");
    }
    let s = r.sense(&b, &build::read_10(0, 1, false), &[]);
    assert!(s.is_alua_standby());
    assert!(r
        .sense(&b, &build::test_unit_ready(), &[])
        .is_alua_standby());
    assert!(r
        .sense(&b, &build::write_10(0, 1, false), &[0; 512])
        .is_alua_standby());
    // Allowed in standby.
    r.ok(&b, &build::inquiry(Some(0x83), 255), &[]);
    r.ok(&b, &build::report_luns(0, 64), &[]);
    r.ok(&b, &build::report_target_port_groups(false, 1024), &[]);
    r.ok(&b, &build::mode_sense_10(false, 0, 0x3f, 0, 255), &[]);
    r.ok(
        &b,
        &build::persistent_reserve_in(PrInAction::READ_KEYS, 64),
        &[],
    );
    let d = r.ok(&b, &build::request_sense(false, 32), &[]);
    assert!(Sense::decode(&d).unwrap().is_alua_standby());
    // The other port is unaffected.
    r.read(&a, 0, 1);
    r.ports.set_state(2, AluaState::UNAVAILABLE).unwrap();
    let _ = r.exec(&b, &build::test_unit_ready(), &[]);
    assert!(r
        .sense(&b, &build::read_10(0, 1, false), &[])
        .is_alua_unavailable());
    assert!(r
        .sense(&b, &build::mode_sense_10(false, 0, 0x3f, 0, 255), &[])
        .is_alua_unavailable());
    r.ok(&b, &build::report_target_port_groups(false, 1024), &[]);
    r.ports.set_state(2, AluaState::TRANSITIONING).unwrap();
    let _ = r.exec(&b, &build::test_unit_ready(), &[]);
    assert!(r
        .sense(&b, &build::read_10(0, 1, false), &[])
        .is_alua_transitioning());
    r.ports.set_state(2, AluaState::ACTIVE_OPTIMIZED).unwrap();
    let _ = r.exec(&b, &build::test_unit_ready(), &[]);
    r.read(&b, 0, 1);
}

#[test]
fn report_target_port_groups() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let d =
        TargetPortGroupsData::parse(&r.ok(&a, &build::report_target_port_groups(false, 1024), &[]))
            .unwrap();
    assert!(!d.extended);
    assert_eq!(d.groups.len(), 2);
    assert!(d.groups[0].preferred);
    assert_eq!(d.groups[1].state, AluaState::ACTIVE_NON_OPTIMIZED);
    assert_eq!(d.groups[1].relative_target_ports, vec![2]);
    let d =
        TargetPortGroupsData::parse(&r.ok(&a, &build::report_target_port_groups(true, 1024), &[]))
            .unwrap();
    assert!(d.extended);
    assert_eq!(
        r.ok(&a, &build::report_target_port_groups(false, 4), &[])
            .len(),
        4
    );
}

#[test]
fn set_target_port_groups_explicit() {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    r.login(&a);
    r.login(&b);
    let p = build::set_target_port_groups_params(&[
        (1, AluaState::STANDBY),
        (2, AluaState::ACTIVE_OPTIMIZED),
    ]);
    r.ok(&b, &build::set_target_port_groups(p.len() as u32), &p);
    assert_eq!(r.ports.port_state(1), AluaState::STANDBY);
    // The requester is not told; the other nexus is.
    r.ok(&b, &build::read_10(0, 1, false), &[]);
    assert!(r
        .sense(&a, &build::test_unit_ready(), &[])
        .is_alua_state_changed());
    assert!(r
        .sense(&a, &build::read_10(0, 1, false), &[])
        .is_alua_standby());
    let d =
        TargetPortGroupsData::parse(&r.ok(&a, &build::report_target_port_groups(false, 1024), &[]))
            .unwrap();
    assert_eq!(d.groups[0].status, AluaStatus::CHANGED_BY_STPG);
    // Transitioning cannot be requested; unknown groups are refused.
    let p = build::set_target_port_groups_params(&[(1, AluaState::TRANSITIONING)]);
    let s = r.sense(&b, &build::set_target_port_groups(p.len() as u32), &p);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_PARAMETER_LIST);
    let p = build::set_target_port_groups_params(&[(9, AluaState::STANDBY)]);
    let s = r.sense(&b, &build::set_target_port_groups(p.len() as u32), &p);
    assert_eq!(s.asc, sense::INVALID_FIELD_IN_PARAMETER_LIST);
    // Implicit-only targets do not offer the service action.
    let imp = rig_with(512, true, true, AluaMode::Implicit);
    imp.login(&a);
    let p = build::set_target_port_groups_params(&[(1, AluaState::STANDBY)]);
    let s = imp.sense(&a, &build::set_target_port_groups(p.len() as u32), &p);
    assert_eq!(s.field_pointer.map(|f| f.byte), Some(1));
}

/// Linux's scsi_dh_alua fails over by naming only the group it activates; the target
/// demotes the group that was optimized, and both nexuses learn it from RTPG after 2a/06.
#[test]
fn stpg_of_one_group_demotes_the_optimized_one() {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    r.login(&a);
    r.login(&b);
    let p = build::set_target_port_groups_params(&[(2, AluaState::ACTIVE_OPTIMIZED)]);
    r.ok(&b, &build::set_target_port_groups(p.len() as u32), &p);
    assert_eq!(r.ports.port_state(2), AluaState::ACTIVE_OPTIMIZED);
    assert_eq!(r.ports.port_state(1), AluaState::ACTIVE_NON_OPTIMIZED);
    assert!(r
        .sense(&a, &build::test_unit_ready(), &[])
        .is_alua_state_changed());
    let d =
        TargetPortGroupsData::parse(&r.ok(&a, &build::report_target_port_groups(true, 1024), &[]))
            .unwrap();
    assert_eq!(
        (d.groups[0].state, d.groups[0].status),
        (
            AluaState::ACTIVE_NON_OPTIMIZED,
            AluaStatus::CHANGED_IMPLICITLY
        )
    );
    assert_eq!(
        (d.groups[1].state, d.groups[1].status),
        (AluaState::ACTIVE_OPTIMIZED, AluaStatus::CHANGED_BY_STPG)
    );
    // Non-optimized still serves I/O.
    r.ok(&a, &build::read_10(0, 1, false), &[]);
}

#[test]
fn offline_lu_is_not_ready_but_identifies() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.lu.set_online(false);
    for cdb in [
        build::test_unit_ready(),
        build::read_10(0, 1, false),
        build::read_capacity_16(32),
        build::synchronize_cache_10(0, 0, false),
    ] {
        assert!(r.sense(&a, &cdb, &[]).is_manual_intervention_required());
    }
    assert!(r
        .sense(&a, &build::write_10(0, 1, false), &[0; 512])
        .is_manual_intervention_required());
    r.ok(&a, &build::inquiry(None, 96), &[]);
    r.ok(&a, &build::inquiry(Some(0x83), 255), &[]);
    r.ok(&a, &build::report_luns(0, 64), &[]);
    r.lu.set_online(true);
    let s = r.sense(&a, &build::test_unit_ready(), &[]);
    assert_eq!(
        s.asc,
        sense::NOT_READY_TO_READY_CHANGE_MEDIUM_MAY_HAVE_CHANGED
    );
    r.ok(&a, &build::test_unit_ready(), &[]);
}

#[test]
fn read_errors_fail_reads_but_not_test_unit_ready() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    r.ok(&a, &build::write_10(8, 1, false), &[0x5a; 512]);
    r.lu.set_read_errors(true);
    r.ok(&a, &build::test_unit_ready(), &[]);
    let s = r.sense(&a, &build::read_10(8, 1, false), &[]);
    assert_eq!(s.key, SenseKey::MEDIUM_ERROR);
    assert_eq!(s.asc, sense::UNRECOVERED_READ_ERROR);
    r.ok(&a, &build::write_10(8, 1, false), &[0x5b; 512]);
    r.lu.set_read_errors(false);
    r.ok(&a, &build::read_10(8, 1, false), &[]);
}

// ---- persistent reservations ----

const K1: u64 = 0x1111;
const K2: u64 = 0x2222;

fn two_registered() -> (Rig, Nexus, Nexus) {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    r.login(&a);
    r.login(&b);
    r.pr_ok(
        &a,
        PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY,
        PrType(0),
        0,
        K1,
    );
    r.pr_ok(
        &b,
        PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY,
        PrType(0),
        0,
        K2,
    );
    (r, a, b)
}

/// Can `n` read and write under the current reservation?
fn access(r: &Rig, n: &Nexus) -> (bool, bool) {
    let rd = r.exec(n, &build::read_10(1, 1, false), &[]).status;
    let wr = r.exec(n, &build::write_10(1, 1, false), &[0; 512]).status;
    for s in [rd, wr] {
        assert!(
            s == Status::GOOD || s == Status::RESERVATION_CONFLICT,
            "{s:?}"
        );
    }
    (rd == Status::GOOD, wr == Status::GOOD)
}

#[test]
fn reservation_access_table() {
    // (type, registered non-holder (read, write), unregistered (read, write))
    let table = [
        (PrType::EXCLUSIVE_ACCESS, (false, false), (false, false)),
        (PrType::WRITE_EXCLUSIVE, (true, false), (true, false)),
        (
            PrType::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
            (true, true),
            (false, false),
        ),
        (
            PrType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            (true, true),
            (true, false),
        ),
        (
            PrType::EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
            (true, true),
            (false, false),
        ),
        (
            PrType::WRITE_EXCLUSIVE_ALL_REGISTRANTS,
            (true, true),
            (true, false),
        ),
    ];
    for (t, reg, unreg) in table {
        let (r, a, b) = two_registered();
        r.pr_ok(&a, PrOutAction::RESERVE, t, K1, 0);
        let rr = r.reservation(&a).reservation.unwrap();
        assert_eq!(rr.pr_type, t);
        assert_eq!(rr.key, if t.is_all_registrants() { 0 } else { K1 });
        assert_eq!(access(&r, &a), (true, true), "{t:?} holder");
        assert_eq!(access(&r, &b), reg, "{t:?} registered");
        r.pr_ok(&b, PrOutAction::REGISTER, PrType(0), K2, 0);
        assert_eq!(access(&r, &b), unreg, "{t:?} unregistered");
        // INQUIRY, TEST UNIT READY and READ CAPACITY are never blocked.
        r.ok(&b, &build::inquiry(None, 36), &[]);
        r.ok(&b, &build::read_capacity_10(), &[]);
        // Releasing with the wrong type is an error, then the right one.
        if !t.is_all_registrants() {
            let resp = r.pr_out(
                &a,
                PrOutAction::RELEASE,
                PrType(0x0f & (t.0 ^ 2)),
                &PrOutParams {
                    reservation_key: K1,
                    ..Default::default()
                },
            );
            assert_eq!(
                resp.decoded_sense().map(|s| s.asc),
                Some(sense::INVALID_RELEASE_OF_PERSISTENT_RESERVATION)
            );
        }
        r.pr_ok(&a, PrOutAction::RELEASE, t, K1, 0);
        assert_eq!(r.reservation(&a).reservation, None);
        assert_eq!(access(&r, &b), (true, true));
    }
}

#[test]
fn register_rules_and_generation() {
    let r = rig();
    let a = nexus(1, 1);
    r.login(&a);
    let g0 = r.keys(&a).generation;
    // Unregistered REGISTER with a non-zero reservation key conflicts.
    let resp = r.pr_out(
        &a,
        PrOutAction::REGISTER,
        PrType(0),
        &PrOutParams {
            reservation_key: 5,
            service_action_key: K1,
            ..Default::default()
        },
    );
    assert_eq!(resp.status, Status::RESERVATION_CONFLICT);
    r.pr_ok(&a, PrOutAction::REGISTER, PrType(0), 0, K1);
    assert_eq!(
        r.keys(&a),
        ReadKeys {
            generation: g0 + 1,
            keys: vec![K1]
        }
    );
    // Re-registering with the wrong key conflicts.
    let resp = r.pr_out(
        &a,
        PrOutAction::REGISTER,
        PrType(0),
        &PrOutParams {
            reservation_key: 0,
            service_action_key: K1 + 1,
            ..Default::default()
        },
    );
    assert_eq!(resp.status, Status::RESERVATION_CONFLICT);
    // Key change, then unregister; RESERVE does not bump the generation.
    r.pr_ok(&a, PrOutAction::REGISTER, PrType(0), K1, K2);
    r.pr_ok(&a, PrOutAction::RESERVE, PrType::WRITE_EXCLUSIVE, K2, 0);
    assert_eq!(r.keys(&a).generation, g0 + 2);
    r.pr_ok(&a, PrOutAction::REGISTER, PrType(0), K2, 0);
    assert_eq!(
        r.keys(&a),
        ReadKeys {
            generation: g0 + 3,
            keys: vec![]
        }
    );
    assert_eq!(r.reservation(&a).reservation, None, "holder unregistered");
    // Parameter list must be exactly 24 bytes.
    let s = r.sense(
        &a,
        &build::persistent_reserve_out(PrOutAction::REGISTER, PrType(0), 20),
        &[0; 20],
    );
    assert_eq!(s.asc, sense::PARAMETER_LIST_LENGTH_ERROR);
    // Truncated READ KEYS keeps its ADDITIONAL LENGTH.
    r.pr_ok(&a, PrOutAction::REGISTER, PrType(0), 0, K1);
    let d = r.ok(
        &a,
        &build::persistent_reserve_in(PrInAction::READ_KEYS, 8),
        &[],
    );
    assert_eq!(d.len(), 8);
    assert_eq!(&d[4..8], &[0, 0, 0, 8]);
    // Reserving requires registration with the right key, LU scope, a type.
    let b = nexus(2, 1);
    r.login(&b);
    let resp = r.pr_out(
        &b,
        PrOutAction::RESERVE,
        PrType::WRITE_EXCLUSIVE,
        &PrOutParams::default(),
    );
    assert_eq!(resp.status, Status::RESERVATION_CONFLICT);
    let resp = r.pr_out(
        &a,
        PrOutAction::RESERVE,
        PrType(2),
        &PrOutParams {
            reservation_key: K1,
            ..Default::default()
        },
    );
    assert_eq!(
        resp.decoded_sense().unwrap().asc,
        sense::INVALID_FIELD_IN_CDB
    );
}

#[test]
fn reservation_ownership() {
    // Non-shared types: the reservation goes when the holder unregisters.
    let (r, a, b) = two_registered();
    r.pr_ok(
        &a,
        PrOutAction::RESERVE,
        PrType::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
        K1,
        0,
    );
    r.pr_ok(&a, PrOutAction::REGISTER, PrType(0), K1, 0);
    // Registrants-only: the remaining registrant is told RESERVATIONS RELEASED.
    assert_eq!(
        r.sense(&b, &build::test_unit_ready(), &[]).asc,
        sense::RESERVATIONS_RELEASED
    );
    assert_eq!(r.reservation(&b).reservation, None);
    // All-registrants types stay while any registrant remains, and any
    // registrant can release them.
    let (r, a, b) = two_registered();
    r.pr_ok(
        &a,
        PrOutAction::RESERVE,
        PrType::WRITE_EXCLUSIVE_ALL_REGISTRANTS,
        K1,
        0,
    );
    r.pr_ok(&a, PrOutAction::REGISTER, PrType(0), K1, 0);
    let rr = r.reservation(&a).reservation.unwrap();
    assert_eq!(
        (rr.key, rr.pr_type),
        (0, PrType::WRITE_EXCLUSIVE_ALL_REGISTRANTS)
    );
    r.pr_ok(
        &b,
        PrOutAction::RELEASE,
        PrType::WRITE_EXCLUSIVE_ALL_REGISTRANTS,
        K2,
        0,
    );
    assert_eq!(r.reservation(&b).reservation, None);
}

#[test]
fn reserve_by_another_nexus_conflicts() {
    let (r, a, b) = two_registered();
    r.pr_ok(&a, PrOutAction::RESERVE, PrType::WRITE_EXCLUSIVE, K1, 0);
    // Same holder and type again: fine. Other nexus or type: conflict.
    r.pr_ok(&a, PrOutAction::RESERVE, PrType::WRITE_EXCLUSIVE, K1, 0);
    let p = PrOutParams {
        reservation_key: K2,
        ..Default::default()
    };
    assert_eq!(
        r.pr_out(&b, PrOutAction::RESERVE, PrType::WRITE_EXCLUSIVE, &p)
            .status,
        Status::RESERVATION_CONFLICT
    );
    let p1 = PrOutParams {
        reservation_key: K1,
        ..Default::default()
    };
    assert_eq!(
        r.pr_out(&a, PrOutAction::RESERVE, PrType::EXCLUSIVE_ACCESS, &p1)
            .status,
        Status::RESERVATION_CONFLICT
    );
    // A non-holder's RELEASE is a successful no-op.
    r.pr_ok(&b, PrOutAction::RELEASE, PrType::WRITE_EXCLUSIVE, K2, 0);
    assert!(r.reservation(&a).reservation.is_some());
}

#[test]
fn preempt_and_clear() {
    // PREEMPT without a reservation removes registrations (not the
    // caller's, even with the same key) and bumps the generation once.
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    r.login(&a);
    r.login(&b);
    r.pr_ok(
        &a,
        PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY,
        PrType(0),
        0,
        K1,
    );
    r.pr_ok(
        &b,
        PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY,
        PrType(0),
        0,
        K1,
    );
    let g = r.keys(&a).generation;
    r.pr_ok(&b, PrOutAction::PREEMPT, PrType::EXCLUSIVE_ACCESS, K1, K1);
    assert_eq!(
        r.keys(&b),
        ReadKeys {
            generation: g + 1,
            keys: vec![K1]
        }
    );
    assert_eq!(
        r.sense(&a, &build::test_unit_ready(), &[]).asc,
        sense::REGISTRATIONS_PREEMPTED
    );
    // PREEMPT of the holder takes the reservation over.
    let (r, a, b) = two_registered();
    r.pr_ok(&a, PrOutAction::RESERVE, PrType::WRITE_EXCLUSIVE, K1, 0);
    r.pr_ok(
        &b,
        PrOutAction::PREEMPT_AND_ABORT,
        PrType::EXCLUSIVE_ACCESS,
        K2,
        K1,
    );
    let rr = r.reservation(&b).reservation.unwrap();
    assert_eq!((rr.key, rr.pr_type), (K2, PrType::EXCLUSIVE_ACCESS));
    assert_eq!(r.keys(&b).keys, vec![K2]);
    assert_eq!(
        r.exec(&a, &build::read_10(0, 1, false), &[]).status,
        Status::CHECK_CONDITION
    );
    assert_eq!(
        r.exec(&a, &build::read_10(0, 1, false), &[]).status,
        Status::RESERVATION_CONFLICT
    );
    // Unknown key: conflict. Key zero without a reservation: invalid.
    let p = PrOutParams {
        reservation_key: K2,
        service_action_key: 0x9999,
        ..Default::default()
    };
    assert_eq!(
        r.pr_out(&b, PrOutAction::PREEMPT, PrType::EXCLUSIVE_ACCESS, &p)
            .status,
        Status::RESERVATION_CONFLICT
    );
    // CLEAR drops everything, tells the others, bumps the generation.
    let (r, a, b) = two_registered();
    r.pr_ok(&a, PrOutAction::RESERVE, PrType::EXCLUSIVE_ACCESS, K1, 0);
    let g = r.keys(&a).generation;
    r.pr_ok(&a, PrOutAction::CLEAR, PrType(0), K1, 0);
    assert_eq!(
        r.keys(&a),
        ReadKeys {
            generation: g + 1,
            keys: vec![]
        }
    );
    assert_eq!(r.reservation(&a).reservation, None);
    assert_eq!(
        r.sense(&b, &build::test_unit_ready(), &[]).asc,
        sense::RESERVATIONS_PREEMPTED
    );
    let p = PrOutParams {
        reservation_key: K1,
        ..Default::default()
    };
    assert_eq!(
        r.pr_out(&a, PrOutAction::PREEMPT, PrType::EXCLUSIVE_ACCESS, &p)
            .status,
        Status::RESERVATION_CONFLICT
    );
}

#[test]
fn preempt_all_registrants_with_zero_key() {
    let (r, a, b) = two_registered();
    r.pr_ok(
        &a,
        PrOutAction::RESERVE,
        PrType::EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
        K1,
        0,
    );
    r.pr_ok(&b, PrOutAction::PREEMPT, PrType::WRITE_EXCLUSIVE, K2, 0);
    assert_eq!(r.keys(&b).keys, vec![K2]);
    let rr = r.reservation(&b).reservation.unwrap();
    assert_eq!((rr.key, rr.pr_type), (K2, PrType::WRITE_EXCLUSIVE));
}

#[test]
fn pr_in_capabilities_and_full_status() {
    let (r, a, _b) = two_registered();
    let caps = Capabilities::parse(&r.pr_in(&a, PrInAction::REPORT_CAPABILITIES)).unwrap();
    assert!(caps.crh && caps.sip_c && caps.atp_c && caps.tmv);
    assert!(!caps.ptpl_c, "nothing persists across restarts");
    assert_eq!(caps.type_mask, 0xea01);
    assert_eq!(r.pr_in(&a, PrInAction::REPORT_CAPABILITIES).len(), 8);
    r.pr_ok(&a, PrOutAction::RESERVE, PrType::WRITE_EXCLUSIVE, K1, 0);
    let fs = FullStatus::parse(&r.pr_in(&a, PrInAction::READ_FULL_STATUS)).unwrap();
    assert_eq!(fs.descriptors.len(), 2);
    let d0 = &fs.descriptors[0];
    assert!(d0.holder && d0.key == K1 && d0.pr_type == PrType::WRITE_EXCLUSIVE);
    assert_eq!(d0.relative_target_port, 1);
    assert_eq!(
        d0.transport_id,
        TransportId::from_initiator_port(&a.initiator_port)
    );
    assert!(!fs.descriptors[1].holder);
}

#[test]
fn spec_i_pt_and_all_tg_pt() {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    r.login(&a);
    r.login(&b);
    // Register A on every target port, and B's port through SPEC_I_PT.
    let p = PrOutParams {
        service_action_key: K1,
        spec_i_pt: true,
        all_tg_pt: true,
        transport_ids: vec![TransportId::from_initiator_port(&b.initiator_port)],
        ..Default::default()
    };
    assert_eq!(
        r.pr_out(&a, PrOutAction::REGISTER, PrType(0), &p).status,
        Status::GOOD
    );
    assert_eq!(r.keys(&a).keys, vec![K1, K1]);
    // B is registered (through any port), so it may reserve with K1.
    r.pr_ok(&b, PrOutAction::RESERVE, PrType::WRITE_EXCLUSIVE, K1, 0);
    // A through port 2 is the same registration.
    let a2 = nexus(1, 2);
    r.login(&a2);
    r.pr_ok(&a2, PrOutAction::REGISTER, PrType(0), K1, K2);
    let fs = FullStatus::parse(&r.pr_in(&a, PrInAction::READ_FULL_STATUS)).unwrap();
    assert!(fs.descriptors[0].all_tg_pt);
    // SPEC_I_PT from a registered nexus is invalid.
    let p = PrOutParams {
        reservation_key: K2,
        service_action_key: K2,
        spec_i_pt: true,
        transport_ids: vec![TransportId::from_initiator_port("iqn.x,i,0x1")],
        ..Default::default()
    };
    let resp = r.pr_out(&a, PrOutAction::REGISTER, PrType(0), &p);
    assert_eq!(
        resp.decoded_sense().unwrap().asc,
        sense::INVALID_FIELD_IN_PARAMETER_LIST
    );
}

#[test]
fn register_and_move() {
    let (r, a, b) = two_registered();
    r.pr_ok(&a, PrOutAction::RESERVE, PrType::WRITE_EXCLUSIVE, K1, 0);
    let p = RegisterAndMoveParams {
        reservation_key: K1,
        service_action_key: 0x3333,
        unreg: true,
        aptpl: false,
        relative_target_port: 2,
        transport_id: TransportId::from_initiator_port(&b.initiator_port),
    }
    .build();
    r.ok(
        &a,
        &build::persistent_reserve_out(
            PrOutAction::REGISTER_AND_MOVE,
            PrType::WRITE_EXCLUSIVE,
            p.len() as u32,
        ),
        &p,
    );
    let rr = r.reservation(&b).reservation.unwrap();
    assert_eq!(rr.key, 0x3333);
    assert_eq!(r.keys(&b).keys, vec![0x3333]);
    assert_eq!(access(&r, &b), (true, true));
    assert_eq!(access(&r, &a), (true, false));
}

#[test]
fn spc2_reserve_release() {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 1));
    r.login(&a);
    r.login(&b);
    let reserve = [0x16, 0, 0, 0, 0, 0];
    let release = [0x17, 0, 0, 0, 0, 0];
    r.ok(&a, &reserve, &[]);
    r.ok(&a, &reserve, &[]);
    r.conflict(&b, &reserve, &[]);
    r.ok(&b, &release, &[]);
    r.ok(&a, &build::mode_sense_6(false, 0, 0x3f, 0, 255), &[]);
    r.conflict(&b, &build::mode_sense_6(false, 0, 0x3f, 0, 255), &[]);
    r.conflict(&b, &build::read_10(0, 1, false), &[]);
    r.ok(&b, &build::inquiry(None, 36), &[]);
    r.ok(&b, &build::report_luns(0, 64), &[]);
    // Under RESERVE every PR command conflicts, from anyone.
    r.conflict(
        &a,
        &build::persistent_reserve_in(PrInAction::READ_KEYS, 64),
        &[],
    );
    r.ok(&a, &release, &[]);
    r.ok(&b, &reserve, &[]);
    // I_T nexus loss releases it.
    r.lu.nexus_lost(&b);
    r.ok(&a, &reserve, &[]);
    // So does a LU reset.
    r.lu.reset();
    r.sense(&a, &build::test_unit_ready(), &[]);
    r.sense(&b, &build::test_unit_ready(), &[]);
    r.ok(&b, &reserve, &[]);
    r.ok(&b, &release, &[]);
    // With a PR registration, RESERVE conflicts and RELEASE is a no-op.
    r.pr_ok(&a, PrOutAction::REGISTER, PrType(0), 0, K1);
    r.conflict(&b, &reserve, &[]);
    r.ok(&b, &release, &[]);
}

#[test]
fn data_out_lengths() {
    let r = rig();
    assert_eq!(r.lu.data_out_len(&build::write_16(0, 8, false)), Ok(4096));
    assert_eq!(r.lu.data_out_len(&build::read_16(0, 8, false)), Ok(0));
    assert_eq!(
        r.lu.data_out_len(&build::compare_and_write(0, 2, false)),
        Ok(2048)
    );
    assert_eq!(r.lu.data_out_len(&build::unmap(24)), Ok(24));
    assert_eq!(
        r.lu.data_out_len(&build::persistent_reserve_out(
            PrOutAction::REGISTER,
            PrType(0),
            24
        )),
        Ok(24)
    );
    assert_eq!(
        r.lu.data_out_len(&build::write_same_16(0, 8, false, false)),
        Ok(512)
    );
    assert_eq!(r.lu.data_out_len(&build::verify_16(0, 4, 1)), Ok(2048));
    assert!(r.lu.data_out_len(&[0xff]).is_err());
}

#[test]
fn config_validation() {
    let mem: Arc<dyn Backend> = Arc::new(MemBackend::new(4096, false));
    let p = ports(AluaMode::Implicit);
    let mut c = LuConfig::new(Lun(0), 1024, "S", naa());
    assert_eq!(
        LogicalUnit::new(c.clone(), mem.clone(), p.clone()).unwrap_err(),
        LuConfigError::BlockSize(1024)
    );
    c.block_size = 512;
    c.naa_id[0] = 0x50;
    assert_eq!(
        LogicalUnit::new(c.clone(), mem.clone(), p.clone()).unwrap_err(),
        LuConfigError::Naa
    );
    c.naa_id = naa();
    c.serial = "has space".into();
    assert_eq!(
        LogicalUnit::new(c, mem, p).unwrap_err(),
        LuConfigError::Serial
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever bytes arrive as CDB and Data-Out, the device server answers
    /// with a well-formed response and never panics.
    #[test]
    fn execute_is_total(
        cdb in proptest::collection::vec(any::<u8>(), 0..17),
        op in proptest::sample::select(CommandType::ALL.iter().map(|t| t.opcode().0).collect::<Vec<_>>()),
        use_known in any::<bool>(),
        data in proptest::collection::vec(any::<u8>(), 0..1100),
        rtp in 1u16..3,
    ) {
        let r = rig();
        let n = nexus(1, rtp);
        let mut cdb = cdb;
        if use_known && !cdb.is_empty() {
            cdb[0] = op;
            // Keep transfers small so the test stays fast.
            for b in cdb.iter_mut().skip(2) { *b &= 0x03; }
        }
        for _ in 0..2 {
            let resp = r.exec(&n, &cdb, &data);
            match resp.status {
                Status::GOOD => prop_assert!(resp.sense.is_none()),
                Status::CHECK_CONDITION => prop_assert!(resp.decoded_sense().is_some()),
                Status::RESERVATION_CONFLICT => {}
                s => prop_assert!(false, "unexpected status {:?}", s),
            }
        }
    }
}

/// libiscsi's tests derive both initiators' keys from the same seed, so
/// they usually register the same key: holders must be told apart by
/// registration, not by key.
#[test]
fn identical_keys_on_two_nexuses() {
    let r = rig();
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    r.login(&a);
    r.login(&b);
    r.pr_ok(
        &a,
        PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY,
        PrType(0),
        0,
        K1,
    );
    r.pr_ok(
        &b,
        PrOutAction::REGISTER_AND_IGNORE_EXISTING_KEY,
        PrType(0),
        0,
        K1,
    );
    r.pr_ok(&a, PrOutAction::RESERVE, PrType::EXCLUSIVE_ACCESS, K1, 0);
    assert_eq!(access(&r, &a), (true, true));
    assert_eq!(access(&r, &b), (false, false), "same key, not the holder");
    // B unregisters with the shared key; A keeps the reservation.
    r.pr_ok(&b, PrOutAction::REGISTER, PrType(0), K1, 0);
    assert_eq!(r.keys(&a).keys, vec![K1]);
    assert!(r.reservation(&a).reservation.is_some());
    // A unregisters: the reservation goes with it.
    r.pr_ok(&a, PrOutAction::REGISTER, PrType(0), K1, 0);
    assert_eq!(r.reservation(&a).reservation, None);
}

fn plain<'a>(nexus: &'a Nexus, cdb: &'a [u8]) -> Request<'a> {
    Request {
        nexus,
        cdb,
        data_out: &[],
        task_attr: TaskAttribute::SIMPLE,
    }
}

/// A backend whose non-blocking reads always "would block".
struct SlowReads(MemBackend);

impl Backend for SlowReads {
    fn len_bytes(&self) -> u64 {
        self.0.len_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.unmap(offset, len)
    }
    fn volatile_write_cache(&self) -> bool {
        false
    }
}

#[test]
fn try_execute_serves_reads_without_blocking_and_nothing_else() {
    let r = rig();
    let n = nexus(1, 1);
    let _ = r.exec(&n, &build::test_unit_ready(), &[]); // POWER ON UA
    r.ok(&n, &build::write_16(8, 1, false), &[0x5a; 512]);
    let req = |cdb| plain(&n, cdb);
    let read = build::read_16(8, 1, false);
    let got = r.lu.try_execute(&req(&read)).expect("memory never blocks");
    assert_eq!(got.status, Status::GOOD);
    assert_eq!(&got.data_in[..], &[0x5a; 512][..]);
    // Anything but a READ goes to `execute`.
    let (write, tur) = (build::write_16(8, 1, false), build::test_unit_ready());
    assert!(r.lu.try_execute(&req(&write)).is_none());
    assert!(r.lu.try_execute(&req(&tur)).is_none());
}

#[test]
fn abandoned_try_execute_leaves_no_trace() {
    let ports = ports(AluaMode::Both);
    let cfg = LuConfig::new(Lun(1), 512, "SERIAL0002", naa());
    let lu = LogicalUnit::new(
        cfg,
        Arc::new(SlowReads(MemBackend::new(BLOCKS * 512, false))),
        ports.clone(),
    )
    .unwrap();
    let n = nexus(2, 1);
    let req = |cdb| plain(&n, cdb);
    let read = build::read_16(0, 1, false);
    // The first command of a nexus answers POWER ON/RESET: that is a complete answer.
    let first = lu
        .try_execute(&req(&read))
        .expect("unit attention is an answer");
    assert_eq!(first.status, Status::CHECK_CONDITION);
    // Now the read itself would block: nothing happens, and `execute` does it.
    assert!(lu.try_execute(&req(&read)).is_none());
    assert_eq!(lu.execute(&req(&read)).status, Status::GOOD);
    // A pending unit attention is reported by the attempt, not swallowed by it.
    ports.set_state(2, AluaState::STANDBY).unwrap();
    let ua = lu.try_execute(&req(&read)).expect("reports the UA");
    assert!(ua.decoded_sense().unwrap().is_alua_state_changed());
    assert!(lu.try_execute(&req(&read)).is_none());
}
