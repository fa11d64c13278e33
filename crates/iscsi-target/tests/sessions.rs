//! Session reinstatement (RFC 7143 §6.3.5): a new login with the same initiator name and
//! ISID and TSIH 0 replaces the old session — the old connection is closed, its writes
//! either landed before the new login completed or never land, and the new I_T nexus starts
//! with a POWER ON / RESET unit attention.

mod common;

use common::*;
use iscsi_pdu::*;
use scsi::cdb::build;

/// Writes A leaves in flight: 8 regions of 256 KiB, each wholly in the immediate data of
/// its command.
const REGIONS: u64 = 8;
const REGION_BLOCKS: u32 = 512;

fn region_lba(i: u64) -> u64 {
    1024 + i * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinstatement_closes_the_old_connection_and_fences_its_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TestTarget::start(config(&["127.0.0.1:0"], sparse_backing(dir.path()))).await;
    let mut bystander = ready_client(t.portal(), normal(0x77)).await;
    let mut a = ready_client(t.portal(), normal(1)).await;
    let tsih_a = a.login.tsih;

    // Pattern 1 writes on A, not waited for; then at once the same ISID logs in again.
    let old = pattern(1, (REGION_BLOCKS * BLOCK) as usize);
    for i in 0..REGIONS {
        a.start(
            &build::write_16(region_lba(i), REGION_BLOCKS, false),
            &old,
            0,
        )
        .await;
    }
    let mut b = login(t.portal(), normal(1)).await;
    assert_ne!(b.login.tsih, tsih_a, "a new session gets a new TSIH");

    // The target closed A (whatever answers it got before that).
    let how = a.expect_closed().await;
    assert!(how.is_closed(), "{how:?}");

    // The new session is a new I_T nexus: POWER ON, RESET first, then the command works.
    let first = b.tur().await;
    assert_eq!(first.status, CHECK_CONDITION);
    assert_eq!(first.sense_triplet(), Some((0x06, 0x29, 0x00)));
    assert!(b.tur().await.good(), "the retry works");

    // Each of A's writes landed before B's login completed, or not at all: a region is all
    // pattern 1 or all zeros, and stays so.
    let zeros = vec![0u8; old.len()];
    let mut before = Vec::new();
    for i in 0..REGIONS {
        let r = b.read16(region_lba(i), REGION_BLOCKS).await;
        assert!(r.good());
        assert!(r.data == old || r.data == zeros, "region {i} is torn");
        before.push(r.data);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for i in 0..REGIONS {
        let r = b.read16(region_lba(i), REGION_BLOCKS).await;
        assert!(
            r.data == before[i as usize],
            "region {i} changed after the new login"
        );
    }

    // B's own writes are what B reads back.
    let new = pattern(2, old.len());
    for i in 0..REGIONS {
        assert!(b.write16(region_lba(i), &new).await.good());
    }
    for i in 0..REGIONS {
        assert!(b.read16(region_lba(i), REGION_BLOCKS).await.data == new);
    }

    // One session for the ISID, B's; the other initiator's session was not touched.
    let sessions = t.control.sessions();
    let mine: Vec<_> = sessions
        .iter()
        .filter(|s| s.isid == isid(1).to_string())
        .collect();
    assert_eq!(mine.len(), 1, "{sessions:?}");
    assert_eq!(mine[0].tsih, b.login.tsih.0);
    assert!(bystander.tur().await.good());
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinstatement_drops_a_write_still_collecting_data() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut a = ready_client(t.portal(), normal(1)).await;

    // A WRITE whose data the target still waits for (the R2T is never answered).
    let itt = a.next_itt();
    let h = a.command(itt, &build::write_16(0, 8, false), 4096, false, true);
    a.send(&Pdu::new(Bhs::ScsiCommand(h))).await;
    assert!(matches!(a.expect_pdu().await.bhs, Bhs::R2t(_)));

    let mut b = ready_client(t.portal(), normal(1)).await;
    assert!(a.expect_closed().await.is_closed());
    // A's late Data-Out cannot reach anything: its connection is gone.
    let r = b.read16(0, 8).await;
    assert!(r.good() && r.data.iter().all(|&x| x == 0));
    assert_eq!(t.control.sessions().len(), 1);
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_isids_and_tsih_logins() {
    let t = TestTarget::memory(&["127.0.0.1:0"]).await;
    let mut a = ready_client(t.portal(), normal(1)).await;
    let mut b = ready_client(t.portal(), normal(2)).await;
    assert_ne!(a.login.tsih, b.login.tsih);
    // A different ISID is a different session: both live.
    assert!(a.tur().await.good() && b.tur().await.good());

    // MaxConnections=1: joining A's session is refused; so is a session that never was.
    let mut join = normal(3);
    join.tsih = a.login.tsih;
    let e = try_login(t.portal(), join).await.err().expect("refused");
    assert!(e.contains("0206") || e.contains("TOO_MANY"), "{e}");
    let mut ghost = normal(3);
    ghost.tsih = Tsih(0x7fff);
    let e = try_login(t.portal(), ghost).await.err().expect("refused");
    assert!(
        e.contains("020a") || e.contains("SESSION_DOES_NOT_EXIST"),
        "{e}"
    );
    // The refusals touched nothing.
    assert!(a.tur().await.good() && b.tur().await.good());
    assert_eq!(t.control.sessions().len(), 2);
    assert_no_target_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_isid_through_another_portal_group_is_another_session() {
    // Portal group 1 on 127.0.0.1, portal group 2 on 127.0.0.2 and 127.0.0.3.
    let cfg = iscsi_target::ServerConfig {
        targets: vec![target_spec(
            TARGET,
            vec![
                group(1, &["127.0.0.1:0"]),
                group(2, &["127.0.0.2:0", "127.0.0.3:0"]),
            ],
            mem_backing(),
        )],
        ..Default::default()
    };
    let t = TestTarget::start(cfg).await;
    let (g1, g2a, g2b) = (t.portals[0], t.portals[1], t.portals[2]);

    // RFC 7143 §4.4.3 (ISID rule): a session is the ISID and the target portal group; one
    // initiator port reaching two target ports is two paths, not a reinstatement.
    let mut path1 = ready_client(g1, normal(1)).await;
    let mut path2 = ready_client(g2a, normal(1)).await;
    assert!(
        path1.tur().await.good(),
        "path 1 survives a login on path 2"
    );
    assert!(path2.tur().await.good());
    assert_eq!(t.control.sessions().len(), 2);

    // Through another portal of the same portal group it is the same session: reinstated.
    let mut again = login(g2b, normal(1)).await;
    assert!(path2.expect_closed().await.is_closed());
    assert_eq!(again.tur().await.sense_triplet(), Some((0x06, 0x29, 0x00)));
    assert!(again.tur().await.good());
    assert!(path1.tur().await.good(), "path 1 untouched");
    assert_eq!(t.control.sessions().len(), 2);
    assert_no_target_panics();
}
