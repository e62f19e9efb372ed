//! Backward GEMM tables end to end: `calibrate --merge --bwd-only` takes
//! only the backward tables (and their fitted factors) from a measured
//! profile, keeping the base's stamped error, and `simulate --pass train`
//! prices with them and says so.

use llep_trace::plan::Policy;
use llep_trace::results::read_results;
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");
const BASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/profiles/h200-curves-2026-11-28.json"
);

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-bwd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The base profile with backward tables for gpt-oss (dgrad `dg` ms and
/// wgrad `wg` ms per row, each GEMM) and a different link (which the merge
/// must not take).
fn measured(dg: f64, wg: f64) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(BASE).unwrap()).unwrap();
    let tables: Vec<serde_json::Value> = [
        ("gate_up_dgrad", dg),
        ("gate_up_wgrad", wg),
        ("down_dgrad", dg),
        ("down_wgrad", wg),
    ]
    .iter()
    .map(|(g, c)| {
        serde_json::json!({"hidden_size": 2880, "intermediate_size": 2880, "gemm": g,
            "points": [[1.0, c], [16384.0, 16384.0 * c]]})
    })
    .collect();
    v["bwd_tables"] = tables.into();
    v["link_gbps"] = 1.0.into();
    v
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn bwd_only_merge_takes_the_backward_tables_alone_and_train_uses_them() {
    let d = tmp("merge");
    let new = d.join("new.json");
    std::fs::write(&new, measured(1e-5, 2e-5).to_string()).unwrap();
    let out = d.join("merged.json");
    let (ok, stdout, err) = run(&[
        "-q",
        "calibrate",
        "--merge",
        new.to_str().unwrap(),
        "--into",
        BASE,
        "--bwd-only",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("backward gate_up wgrad D=2880 I=2880: 2 points"),
        "{stdout}"
    );
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(BASE).unwrap()).unwrap();
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(m["bwd_tables"].as_array().unwrap().len(), 4);
    for key in [
        "link_gbps",
        "measured_error",
        "gemm_curves",
        "mem_baseline_bytes",
    ] {
        assert_eq!(m[key], base[key], "{key} changed");
    }
    // a train step priced by the tables: wgrad is the slowest GPU's
    // copies through two GEMMs of 2e-5 ms a row
    let rows_at = d.join("rows.parquet");
    let (ok, text, err) = run(&[
        "-q",
        "simulate",
        "--synthetic",
        "95:1",
        "--gpus",
        "4",
        "--pass",
        "train",
        "--profile",
        out.to_str().unwrap(),
        "--out",
        rows_at.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        text.contains("backward GEMMs from measured tables for D:I 2880:2880"),
        "{text}"
    );
    let (_, rows) = read_results(&rows_at).unwrap();
    assert!(!rows.is_empty());
    for r in rows.iter().filter(|r| r.policy != Policy::Ideal) {
        let want = 2.0 * 2e-5 * r.max_load_after as f64;
        assert!(
            (r.t_bwd_wgrad_ms - want).abs() < 1e-6 * want,
            "{}: {} vs {want}",
            r.policy,
            r.t_bwd_wgrad_ms
        );
        assert!(r.t_bwd_dgrad_ms >= 2.0 * 1e-5 * r.max_load_after as f64);
    }
    std::fs::remove_dir_all(&d).unwrap();
}
