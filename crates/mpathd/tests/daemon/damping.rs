//! Marginal paths: a path that keeps failing is held out until it stays healthy.

use std::time::Duration;

use iscsi_target::config::AluaState::ActiveOptimized as AO;
use mpath_policy::FlapDamping;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_path_is_held_until_it_stays_healthy() {
    const IQN: &str = "iqn.2026-01.io.mpath:flap";
    let dir = testkit::TempDir::new("flap");
    let t = Target::start(
        IQN,
        vec![group([127, 0, 0, 2], 0, AO), group([127, 0, 0, 3], 0, AO)],
        &[(1, 4 << 20)],
    )
    .await;
    let mut cfg = config(&dir, &t.portals[..1]);
    // On by default; short numbers for the test.
    assert!(cfg.policy.flap.is_some());
    cfg.policy.flap = Some(FlapDamping {
        failures: 3,
        window: Duration::from_secs(30),
        hold: Duration::from_secs(3),
    });
    let (mut d, c) = start(cfg);
    let map = wait_map_by_wwid(&c, &t.wwid(1), 2, Duration::from_secs(10)).await;
    let flappy = t.portals[1].to_string();
    let row = |ps: Vec<serde_json::Value>| {
        ps.into_iter()
            .find(|p| p["path"].as_str().unwrap().starts_with(&flappy))
            .unwrap()
    };
    // Reset the portal's connections until the path is held as marginal.
    let failures = || async {
        let ev = c
            .handle(mpathd::Request::ShowEvents {
                follow: false,
                last: None,
            })
            .await;
        ev.data["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["kind"] == "path-failed"
                    && e["path"].as_str().is_some_and(|p| p.starts_with(&flappy))
            })
            .count()
    };
    let mut held = None;
    for round in 0..6 {
        let before = failures().await;
        t.ctl.reset_portal(t.portals[1]).unwrap();
        wait_for(Duration::from_secs(5), "the reset path to fail", || async {
            failures().await > before
        })
        .await;
        // Back: either reinstated, or held with its session up.
        wait_for(
            Duration::from_secs(10),
            "the session to log in again",
            || async {
                let r = row(paths_of(&c, &map).await);
                r["connection"] == "running"
                    && (r["dm_state"] == "active"
                        || r["note"].as_str().unwrap().contains("marginal"))
            },
        )
        .await;
        let r = row(paths_of(&c, &map).await);
        if r["dm_state"] == "failed" {
            held = Some((round, r));
            break;
        }
    }
    let (round, r) = held.expect("the path was never held as marginal");
    assert!(round >= 1, "held after its first failure: {r}");
    let note = r["note"].as_str().unwrap();
    assert!(
        note.contains("marginal") && note.contains("failures") && note.contains("healthy"),
        "{note}"
    );
    let text = c.handle(mpathd::Request::ShowPaths).await.text;
    assert!(text.contains("marginal:"), "{text}");
    // How long the hold has left, as show paths says it.
    let left = |note: &str| -> f64 {
        note.split("after ")
            .nth(1)
            .and_then(|s| s.split('s').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no hold in {note:?}"))
    };
    let first_left = left(note);
    let first_seen = std::time::Instant::now();

    // It fails again while held: the hold starts over once it is back (it must stay
    // healthy for the whole hold), rather than ending at the first deadline.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // (The path is failed already: its session's failure is what shows.)
    let before = events_of(&c, "session-failed").await;
    t.ctl.reset_portal(t.portals[1]).unwrap();
    wait_for(
        Duration::from_secs(5),
        "the held path's session to fail",
        || async { events_of(&c, "session-failed").await > before },
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the session to log in again",
        || async {
            let r = row(paths_of(&c, &map).await);
            r["connection"] == "running" && r["note"].as_str().unwrap().contains("marginal")
        },
    )
    .await;
    let r = row(paths_of(&c, &map).await);
    assert_eq!(r["dm_state"], "failed", "{r}");
    let old_left = first_left - first_seen.elapsed().as_secs_f64();
    let new_left = left(r["note"].as_str().unwrap());
    assert!(
        new_left > old_left + 0.5,
        "hold not restarted: {new_left}s left, the first hold had {old_left}s"
    );
    // Healthy and up, it is reinstated once the hold has passed.
    wait_for(
        Duration::from_secs(6),
        "the held path to be reinstated",
        || async { row(paths_of(&c, &map).await)["dm_state"] == "active" },
    )
    .await;
    let ev = c
        .handle(mpathd::Request::ShowEvents {
            follow: false,
            last: None,
        })
        .await;
    assert!(ev.text.contains("path-reinstate-delayed"), "{}", ev.text);
    d.stop().await;
    t.stop().await;
}
