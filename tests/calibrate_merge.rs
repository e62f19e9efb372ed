//! `calibrate --merge` end to end (no GPU): a measured profile's GEMM
//! tables and models go into another profile, curves are dropped only when
//! asked, and bad input is refused with one line and no output file.

use llep_trace::sim::model::{GemmTable, MsgModel, Proj};
use llep_trace::sim::Profile;
use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The profile every merge here goes into.
const BASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/profiles/h200-curves-2026-11-28.json"
);

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("binary runs")
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-calib-merge-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A profile measured elsewhere: h200 with tables for gpt-oss and
/// DeepSeek-V3 and a token message model.
fn measured(d: &std::path::Path) -> PathBuf {
    let mut p = Profile::load(BASE).unwrap();
    p.gemm_curves.clear();
    p.measured_error = None;
    for (dh, i) in [(2880u32, 2880u32), (7168, 2048)] {
        for (proj, n, k) in [(Proj::GateUp, 2 * i, dh), (Proj::Down, dh, i)] {
            p.gemm_tables.push(GemmTable {
                proj,
                n,
                k,
                points: vec![(1.0, 0.01), (512.0, 0.04), (16384.0, 1.0)],
            });
        }
    }
    p.msg_tokens = Some(MsgModel {
        latency_us: 9.0,
        per_msg_us: 2.0,
        gbps: 310.0,
    });
    let path = d.join("measured.json");
    std::fs::write(&path, serde_json::to_string_pretty(&p).unwrap()).unwrap();
    path
}

#[test]
fn merge_keeps_curves_unless_asked_and_clears_stale_error() {
    let d = dir("ok");
    let new = measured(&d);
    let out = d.join("merged.json");
    let o = run(&[
        "calibrate",
        "--merge",
        new.to_str().unwrap(),
        "--into",
        BASE,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        stdout.contains("GEMM table gate_up N=4096 K=7168"),
        "{stdout}"
    );
    assert!(stdout.contains("token exchange: 9.0 us"), "{stdout}");
    let m = Profile::load(out.to_str().unwrap()).unwrap();
    let base = Profile::load(BASE).unwrap();
    assert_eq!(m.gemm_tables.len(), 4);
    assert_eq!(m.gemm_curves, base.gemm_curves);
    // the message model prices every row differently: the stamp is stale
    assert!(m.measured_error.is_none());
    assert_eq!(m.msg_tokens.unwrap().gbps, 310.0);

    let out2 = d.join("dropped.json");
    let o = run(&[
        "calibrate",
        "--merge",
        new.to_str().unwrap(),
        "--into",
        BASE,
        "--drop-curves",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = Profile::load(out2.to_str().unwrap()).unwrap();
    assert_eq!(m.gemm_curves.len(), base.gemm_curves.len() - 1);
    assert!(
        m.note.contains("1 whole-group curves dropped"),
        "{}",
        m.note
    );
}

#[test]
fn bad_merge_input_is_refused_without_output() {
    let d = dir("bad");
    let bad = d.join("bad.json");
    std::fs::write(&bad, "{\"name\": 3}").unwrap();
    let out = d.join("merged.json");
    let o = run(&[
        "calibrate",
        "--merge",
        bad.to_str().unwrap(),
        "--into",
        BASE,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.json"), "{err}");
    assert!(!out.exists());
    // --merge without --into is a usage error
    let o = run(&[
        "calibrate",
        "--merge",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(!out.exists());
}
