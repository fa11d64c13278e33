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
