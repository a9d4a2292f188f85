//! `carelayer bench --quick` runs end to end: the table is printed with a
//! row per workload, non-zero throughput and no errors, and the JSON file
//! agrees. (Performance itself is measured by hand, not asserted here.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_quick_runs_create_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_carelayer"))
        .args(["bench", "--quick", "--json"])
        .arg(&json_path)
        .env("CARELAYER_LOG", "warn")
        .output()
        .expect("run carelayer bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );

    // The table: a header and one row per workload.
    let header = stdout
        .lines()
        .position(|l| l.starts_with("server ") && l.contains("req/s") && l.contains("p99_ms"))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"));
    let columns: Vec<&str> = stdout
        .lines()
        .nth(header)
        .unwrap()
        .split_whitespace()
        .collect();
    let col = |name: &str| columns.iter().position(|c| *c == name).unwrap();
    let (rps, errors) = (col("req/s"), col("errors"));
    for workload in ["create", "read"] {
        let row: Vec<&str> = stdout
            .lines()
            .skip(header + 1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.get(1) == Some(&workload))
            .unwrap_or_else(|| panic!("no {workload} row in:\n{stdout}"));
        let throughput: f64 = row[rps].parse().unwrap();
        assert!(throughput > 0.0, "{workload}: req/s {throughput}\n{stdout}");
        assert_eq!(
            row[errors], "0",
            "{workload} had errors:\n{stdout}\n{stderr}"
        );
    }

    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let workloads = report["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 2);
    for w in workloads {
        assert!(w["requests"].as_u64().unwrap() > 0, "{w}");
        assert_eq!(w["errors"], 0, "{w}");
        assert!(w["req_per_s"].as_f64().unwrap() > 0.0, "{w}");
        assert!(
            w["p99_ms"].as_f64().unwrap() >= w["p50_ms"].as_f64().unwrap(),
            "{w}"
        );
        assert!(w["peak_rss_mib"].as_f64().unwrap() > 0.0, "{w}");
    }
    // Reads read what the creates made.
    assert!(workloads[1]["data_size"].as_u64().unwrap() > 0);
}
