//! `mpath bench engine` as a user runs it: it measures both variants over the same session
//! and reports them. (Its figures are benchmarks, recorded in BENCHMARKS.md; here only that
//! every read succeeded and each round measured both.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::run;

#[test]
fn bench_engine_reads_through_the_path_and_the_map() {
    let o = run(
        Command::new(Path::new(env!("CARGO_BIN_EXE_mpath"))).args([
            "bench",
            "engine",
            "--seconds",
            "1",
            "--depth",
            "4",
            "--json",
        ]),
        Duration::from_secs(120),
    );
    assert!(o.success(), "mpath bench engine failed:\n{}", o.all());
    let json = &o.stdout[o.stdout.find('{').expect("a JSON summary")..];
    let s: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("the summary is not JSON ({e}):\n{}", o.all()));
    for k in ["direct_iops", "engine_iops"] {
        let rounds = s[k].as_array().unwrap_or_else(|| panic!("{k}: {s:#}"));
        assert_eq!(rounds.len(), 5, "{k}: {s:#}");
        assert!(
            rounds.iter().all(|r| r.as_f64().is_some_and(|v| v > 0.0)),
            "{k}: {s:#}"
        );
    }
    assert!(s["ratio"].as_f64().is_some_and(|r| r > 0.0), "{s:#}");
}

/// `mpath bench metrics`: both sizes, the three layouts, each measured; the new layout is
/// smaller than every engine bucket exposed, which is smaller than the layout before.
#[test]
fn bench_metrics_measures_every_layout_at_both_sizes() {
    let o = run(
        Command::new(Path::new(env!("CARGO_BIN_EXE_mpath")))
            .args(["bench", "metrics", "--rounds", "1", "--json"]),
        Duration::from_secs(300),
    );
    assert!(o.success(), "mpath bench metrics failed:\n{}", o.all());
    let json = &o.stdout[o.stdout.find("\n{").expect("a JSON summary")..];
    let s: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("the summary is not JSON ({e}):\n{}", o.all()));
    let scrapes = s["scrapes"].as_array().expect("scrapes");
    let sizes: Vec<(u64, u64)> = scrapes
        .iter()
        .map(|r| {
            (
                r["maps"].as_u64().unwrap(),
                r["paths_per_map"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes, [(32, 2), (1024, 4)], "{s:#}");
    for r in scrapes {
        let bytes = |l: &str| {
            r[l]["bytes"]
                .as_u64()
                .unwrap_or_else(|| panic!("{l}: {r:#}"))
        };
        assert!(bytes("now") < bytes("all_engine_buckets"), "{r:#}");
        assert!(bytes("all_engine_buckets") < bytes("before"), "{r:#}");
        for l in ["now", "all_engine_buckets", "before"] {
            assert!(r[l]["gzip_bytes"].as_u64().unwrap() < bytes(l), "{r:#}");
            assert!(r[l]["text_ms"]["median"].as_f64().unwrap() > 0.0, "{r:#}");
        }
    }
    // 1024 x 4, every series: 10 + 11 lines per path, 11 + 3 x 11 per map, and 2 per
    // family (11 per path, 12 per map).
    let lines = scrapes[1]["now"]["lines"].as_u64().unwrap();
    assert_eq!(lines, 4096 * 21 + 1024 * 44 + 2 * 23, "{s:#}");
    assert!(s["record_ns"]["now"]["median"].as_f64().unwrap() > 0.0);
}
