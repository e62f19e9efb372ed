//! `replay` and `calibrate` end to end: on a machine without a GPU (CI) they
//! must fail with one clear line and a non-zero exit, leaving no output
//! file; where a GPU and its libraries are present, a tiny replay must run
//! and pass its dense check.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llep-trace"))
}

fn gpu_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    let lib = unsafe { cudarc::driver::sys::is_culib_present() };
    lib && std::env::var("LLEP_TRACE_SKIP_GPU_TESTS").is_err()
}

#[test]
fn replay_small_layer_or_fail_cleanly_without_gpu() {
    let dir = std::env::temp_dir().join(format!("llep-gpu-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("r.parquet");
    let o = Command::new(bin())
        .args([
            "replay",
            "--synthetic",
            "balanced,95:1",
            "--gpus",
            "1",
            "--tokens-per-rank",
            "256",
            "--experts",
            "8",
            "--top-k",
            "2",
            "--hidden-size",
            "64",
            "--intermediate-size",
            "32",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--ratio",
            "1.3",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !gpu_present() {
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        let errs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errs.len(), 1, "{stderr}");
        assert!(errs[0].contains("no GPU"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists());
        return;
    }
    assert!(o.status.success(), "{stderr}");
    let rows = llep_trace::results::read_results(&out).unwrap().1;
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r.source, llep_trace::results::Source::Measured);
        let e = r.rel_error.expect("checked against the dense reference");
        assert!(e < 1e-2, "relative error {e}");
        assert!(r.t_total_ms > 0.0);
    }
}

/// The training step on a tiny layer: without a GPU one clear error line
/// and no output; with one, every row is a train row whose forward and
/// backward (dX, router-weight and weight gradients, spilled experts
/// included) pass the dense fp32 check, with backward phases timed.
#[test]
fn replay_train_step_or_fail_cleanly_without_gpu() {
    let dir = std::env::temp_dir().join(format!("llep-gpu-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (act, recompute) in [("gpt-oss", false), ("swiglu", true)] {
        let out = dir.join(format!("t-{act}.parquet"));
        let mut cmd = Command::new(bin());
        cmd.args([
            "replay",
            "--pass",
            "train",
            "--act",
            act,
            "--synthetic",
            "balanced,95:1",
            "--gpus",
            "1",
            "--tokens-per-rank",
            "256",
            "--experts",
            "8",
            "--top-k",
            "2",
            "--hidden-size",
            "64",
            "--intermediate-size",
            "32",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--ratio",
            "1.3,always",
            "--min-gemm",
            "16",
            "--out",
        ])
        .arg(&out);
        if recompute {
            cmd.arg("--recompute");
        }
        let o = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        if !gpu_present() {
            assert_eq!(o.status.code(), Some(1), "{stderr}");
            let errs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errs.len(), 1, "{stderr}");
            assert!(errs[0].contains("no GPU"), "{stderr}");
            assert!(!out.exists());
            continue;
        }
        assert!(o.status.success(), "{stderr}");
        let rows = llep_trace::results::read_results(&out).unwrap().1;
        assert_eq!(rows.len(), 6, "2 scenarios x (ep, llep 1.3, llep always)");
        for r in &rows {
            assert_eq!(r.pass, llep_trace::results::Pass::Train);
            let e = r.rel_error.expect("checked against the dense reference");
            assert!(e < 1e-2, "relative error {e}");
            assert!(r.t_bwd_dgrad_ms > 0.0 && r.t_bwd_wgrad_ms > 0.0);
            assert!(r.t_total_ms > r.t_compute_ms + r.t_bwd_dgrad_ms);
            assert!(r.saved_act_bytes > 0);
        }
    }
}

#[test]
fn replay_recompute_needs_the_train_pass() {
    let o = Command::new(bin())
        .args(["replay", "--synthetic", "balanced", "--recompute"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--recompute"), "{stderr}");
}

#[test]
fn calibrate_fails_cleanly_without_gpu() {
    if gpu_present() {
        return; // measured on the GPU machine instead (reports/calibrate)
    }
    let dir = std::env::temp_dir().join(format!("llep-cal-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("p.json");
    let o = Command::new(bin())
        .args(["calibrate", "--gpus", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no GPU"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn replay_rejects_bad_input_before_any_gpu_work() {
    let o = Command::new(bin())
        .args(["replay", "--synthetic", "95:200", "--experts", "128"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("95:200"), "{stderr}");
    let o = Command::new(bin())
        .args(["replay", "--synthetic", "balanced", "--policy", "ideal"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ideal"));
}
