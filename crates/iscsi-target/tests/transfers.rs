//! Reads and writes, large and small, through every data path: R2T-solicited Data-Out,
//! unsolicited Data-Out, Data-In sequences split by MaxRecvDataSegmentLength and
//! MaxBurstLength with the status collapsed into the last one, residuals — against a memory
//! LUN and a file-backed one (page-cache reads served inline, the rest on blocking threads).

mod common;

use std::os::unix::io::AsRawFd;

use common::*;
use iscsi_pdu::*;
use iscsi_session::InitiatorLoginConfig;
use scsi::cdb::build;

const MIB: usize = 1 << 20;
/// MaxBurstLength the initiator offers: 1 MiB takes 16 R2Ts and 16 Data-In sequences.
const BURST: u32 = 64 << 10;
/// MaxRecvDataSegmentLength the initiator declares: 4 Data-In PDUs per burst.
const SEGMENT: u32 = 16 << 10;
const OUTSTANDING_R2T: u16 = 4;

/// Solicited data only, small bursts, small Data-In segments.
fn r2t_only(n: u8) -> InitiatorLoginConfig {
    let mut cfg = normal(n);
    cfg.proposal.initial_r2t = true;
    cfg.proposal.immediate_data = false;
    cfg.proposal.max_burst_length = BURST;
    cfg.proposal.first_burst_length = BURST;
    cfg.proposal.max_recv_data_segment_length = SEGMENT;
    cfg.proposal.max_outstanding_r2t = OUTSTANDING_R2T;
    cfg
}

/// WRITE(16) of 1 MiB that the target must solicit in full, then READ(16) of it back.
async fn write_then_read_1mib(c: &mut Client, lba: u64, seed: u8) {
    let s = &c.login.session;
    assert!(s.initial_r2t && !s.immediate_data, "{s:?}");
    assert_eq!(s.max_burst_length, BURST);
    assert_eq!(s.max_outstanding_r2t, OUTSTANDING_R2T);

    let data = pattern(seed, MIB);
    let blocks = (MIB as u32) / BLOCK;
    let itt = c.next_itt();
    let h = c.command(
        itt,
        &build::write_16(lba, blocks, false),
        MIB as u32,
        false,
        true,
    );
    c.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    // No more R2Ts than MaxOutstandingR2T until some are answered.
    let mut first = Vec::new();
    for _ in 0..OUTSTANDING_R2T {
        let p = c.expect_pdu().await;
        assert!(matches!(p.bhs, Bhs::R2t(ref r) if r.itt == itt), "{p:?}");
        first.push(p);
    }
    c.expect_silence().await;
    for p in first.into_iter().rev() {
        c.unread(p);
    }
    let w = c.finish(itt, &data).await;
    assert!(w.good(), "WRITE(16): {:?}", w.sense_triplet());
    assert_eq!(w.r2ts.len(), MIB / BURST as usize);
    for (i, r) in w.r2ts.iter().enumerate() {
        assert_eq!(r.r2t_sn, SerialNumber(i as u32), "R2TSN counts from 0");
        assert_eq!(r.buffer_offset, i as u32 * BURST);
        assert_eq!(r.desired_data_transfer_length, BURST);
    }
    assert!(w.data_in.is_empty() && !w.overflow && !w.underflow);

    let r = c.read16(lba, blocks).await;
    assert!(r.good(), "READ(16): {:?}", r.sense_triplet());
    assert!(r.data == data, "data read back differs");
    assert!(
        r.response.is_none(),
        "GOOD status rides in the last Data-In"
    );
    assert_eq!(r.data_in.len(), MIB / SEGMENT as usize);
    let last = r.data_in.len() - 1;
    for (i, d) in r.data_in.iter().enumerate() {
        assert_eq!(d.data_sn, SerialNumber(i as u32), "DataSN counts from 0");
        assert_eq!(d.buffer_offset, i as u32 * SEGMENT);
        let end_of_burst = ((i + 1) * SEGMENT as usize).is_multiple_of(BURST as usize);
        assert_eq!(d.final_bit, end_of_burst, "F bit at each MaxBurstLength");
        assert_eq!(
            d.status_present,
            i == last,
            "status only in the last Data-In"
        );
    }
    assert!(!r.overflow && !r.underflow && r.residual == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_over_r2t_and_data_in_sequences_memory_lun() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = ready_client(t.portal(), r2t_only(1)).await;
    write_then_read_1mib(&mut c, 4096, 1).await;
    assert_no_target_panics();
}

/// Drop the file's pages from the page cache, so the next read must wait for the disk and
/// goes to a blocking thread.
fn evict(path: &std::path::Path) {
    let f = std::fs::File::open(path).expect("open backing file");
    f.sync_all().expect("fsync");
    // SAFETY: posix_fadvise on a valid fd with integer arguments.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_over_r2t_and_data_in_sequences_file_lun() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = sparse_backing(dir.path());
    let path = dir.path().join("lun1.img");
    let t = TestTarget::start(config(&["127.0.0.1:0"], backing)).await;
    let mut c = ready_client(t.portal(), r2t_only(1)).await;

    // Write (blocking pool) then read from the page cache (inline).
    write_then_read_1mib(&mut c, 8192, 2).await;
    // The same data once the page cache has forgotten it (blocking pool).
    evict(&path);
    let r = c.read16(8192, (MIB as u32) / BLOCK).await;
    assert!(r.good() && r.data == pattern(2, MIB));

    // Pipelined reads, some cached, some not, some of never-written (sparse) blocks:
    // completions from both paths interleave and each lands on its own task.
    evict(&path);
    let cached = pattern(3, 64 << 10);
    assert!(c.write16(0, &cached).await.good());
    let mut itts = Vec::new();
    for i in 0..8u64 {
        let lba = match i % 3 {
            0 => 0,
            1 => 8192 + i * 256,
            _ => 20_000 + i * 128,
        };
        let cdb = build::read_16(lba, 128, false);
        itts.push((lba, c.start(&cdb, &[], 128 * BLOCK).await));
    }
    for (lba, itt) in itts {
        let r = c.finish(itt, &[]).await;
        assert!(r.good(), "READ at {lba}: {:?}", r.sense_triplet());
        let expect: Vec<u8> = match lba {
            0 => cached.clone(),
            l if l < 20_000 => {
                let off = ((l - 8192) * BLOCK as u64) as usize;
                pattern(2, MIB)[off..off + 64 * 1024].to_vec()
            }
            _ => vec![0u8; 64 << 10],
        };
        assert!(r.data == expect, "READ at LBA {lba} returned other data");
    }

    // The file really holds what was written.
    let on_disk = std::fs::read(&path).expect("read backing file");
    let off = 8192 * BLOCK as usize;
    assert!(on_disk[off..off + MIB] == pattern(2, MIB)[..]);
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_data_out_then_r2t() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut cfg = normal(1);
    cfg.proposal.initial_r2t = false;
    cfg.proposal.immediate_data = false;
    cfg.proposal.first_burst_length = 64 << 10;
    let mut c = ready_client(t.portal(), cfg).await;
    assert!(!c.login.session.initial_r2t && !c.login.session.immediate_data);

    // The first burst goes unsolicited; the target solicits only the rest.
    let data = pattern(4, 256 << 10);
    let w = c.write16(100, &data).await;
    assert!(w.good(), "{:?}", w.sense_triplet());
    assert!(!w.r2ts.is_empty());
    assert_eq!(w.r2ts[0].buffer_offset, 64 << 10);
    assert_eq!(c.read16(100, 512).await.data, data);
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_residuals() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = ready_client(t.portal(), normal(1)).await;
    let data = pattern(5, 4096);
    assert!(c.write16(0, &data).await.good());

    // READ(10) of 8 blocks (4096 bytes) with room for only 2048: overflow.
    let r = c.execute(&build::read_10(0, 8, false), &[], 2048).await;
    assert!(r.good());
    assert_eq!(r.data, data[..2048]);
    assert!(r.overflow && !r.underflow);
    assert_eq!(r.residual, 2048);
    let last = r.data_in.last().expect("Data-In");
    assert!(last.status_present && last.overflow && last.residual_count == 2048);

    // READ(10) of 1 block with room for 8: underflow.
    let r = c.execute(&build::read_10(0, 1, false), &[], 4096).await;
    assert!(r.good());
    assert_eq!(r.data, data[..512]);
    assert!(r.underflow && !r.overflow);
    assert_eq!(r.residual, 3584);
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_fill_the_whole_window() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut c = ready_client(t.portal(), normal(1)).await;
    let data = pattern(6, 64 * BLOCK as usize);
    assert!(c.write16(0, &data).await.good());

    for round in 0..2 {
        // Every CmdSN up to MaxCmdSN, sent back to back before reading any answer.
        let n = c.max_cmd_sn.0.wrapping_sub(c.cmd_sn.0).wrapping_add(1);
        assert_eq!(
            n, t.config.queue_depth,
            "round {round}: the whole window is open"
        );
        let mut itts = Vec::new();
        for i in 0..n {
            let lba = (i % 8) * 8;
            let cdb = build::read_10(lba, 8, false);
            itts.push((lba, c.start(&cdb, &[], 8 * BLOCK).await));
        }
        for (lba, itt) in itts {
            let r = c.finish(itt, &[]).await;
            assert!(r.good(), "{:?}", r.sense_triplet());
            let off = (lba * BLOCK) as usize;
            assert!(r.data[..] == data[off..off + 8 * BLOCK as usize]);
        }
    }
    assert_no_target_panics();
}

async fn many_connections(t: &TestTarget) {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..16u8 {
        let portal = t.portal();
        tasks.spawn(async move {
            let mut c = ready_client(portal, normal(n)).await;
            let lba = n as u64 * 2048;
            for round in 0..6u8 {
                let data = pattern(n ^ (round << 4), (16 + round as usize * 40) * 512);
                let w = c.write16(lba, &data).await;
                assert!(w.good(), "{:?}", w.sense_triplet());
                let r = c.read16(lba, data.len() as u32 / BLOCK).await;
                assert!(r.good() && r.data == data, "connection {n} round {round}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_connections_at_once() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    many_connections(&t).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TestTarget::start(config(&["127.0.0.1:0"], sparse_backing(dir.path()))).await;
    many_connections(&t).await;
    assert_no_target_panics();
}
