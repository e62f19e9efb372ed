//! The two GEMM paths (`--gemm cublas|lt`) end to end: without a GPU each
//! command fails with one clear `no GPU` line; with one, a tiny replay
//! through cuBLASLt (forward and training step) passes the dense fp32
//! check, and `gemm-bench` finds every GEMM form of the replay agreeing
//! between the two paths.

use llep_trace::results::{read_results, Pass};
use std::process::{Command, Output};

fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_llep-trace"))
}

fn gpu_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    let lib = unsafe { cudarc::driver::sys::is_culib_present() };
    lib && std::env::var("LLEP_TRACE_SKIP_GPU_TESTS").is_err()
}

/// Without a GPU: exit 1, one error line saying so, no panic. Returns
/// whether a GPU ran the command (which must then have succeeded).
fn ran_on_gpu(o: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !gpu_present() {
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        let errs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errs.len(), 1, "{stderr}");
        assert!(errs[0].contains("no GPU"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        return false;
    }
    assert!(o.status.success(), "{stderr}");
    true
}

#[test]
fn replay_through_cublaslt_passes_the_dense_check_or_fails_cleanly() {
    let dir = std::env::temp_dir().join(format!("llep-gemm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for pass in ["forward", "train"] {
        let out = dir.join(format!("{pass}.parquet"));
        let o = Command::new(bin())
            .args(["replay", "--gpus", "1", "--tokens-per-rank", "256"])
            .args(["--experts", "8", "--top-k", "2", "--hidden-size", "64"])
            .args(["--intermediate-size", "32", "--runs", "2", "--warmup", "1"])
            .args(["--synthetic", "balanced,95:1", "--ratio", "1.3"])
            .args(["--min-gemm", "16", "--gemm", "lt", "--pass", pass])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        if !ran_on_gpu(&o) {
            assert!(!out.exists());
            continue;
        }
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains("GEMMs through lt"), "{stdout}");
        let rows = read_results(&out).unwrap().1;
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert_eq!(r.pass == Pass::Train, pass == "train");
            let e = r.rel_error.expect("checked against the dense reference");
            assert!(e < 1e-2, "relative error {e}");
        }
    }
}

#[test]
fn gemm_bench_finds_the_paths_agreeing_or_fails_cleanly() {
    let o = Command::new(bin())
        .args(["gemm-bench", "--shape", "64:32", "--rows", "8,100"])
        .args(["--layer-experts", "4", "--layer-rows", "64", "--reps", "2"])
        .output()
        .unwrap();
    if !ran_on_gpu(&o) {
        return;
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    let agree: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("lt vs cublas"))
        .collect();
    assert_eq!(agree.len(), 4, "{stdout}");
    assert!(agree.iter().all(|l| l.ends_with(" ok")), "{stdout}");
    // units batched under one activation launch give the same bits
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("batched activation, 35 units of 64 rows: identical")),
        "{stdout}"
    );
    // per path: 2 rows x 2 projections, the layer with and without the
    // activation, the activation alone
    for path in ["cublas ", "lt "] {
        let mine: Vec<&str> = stdout.lines().filter(|l| l.starts_with(path)).collect();
        for what in ["gate_up", "down", "layer ", "layer+act ", "act alone"] {
            assert!(
                mine.iter().any(|l| l.contains(what)),
                "{path}{what}: {stdout}"
            );
        }
        assert!(mine.len() >= 7, "{stdout}");
    }
}

/// `--gemm fused` (the own Hopper kernel with the activation in the gate_up
/// epilogue) on a layer whose shape ends mid-tile everywhere (D = 64: one
/// K-slice; I = 40: a third of a column tile): the forward passes the
/// dense check, and a training step (whose units run unfused) too. On a
/// GPU other than Hopper it refuses with one clear line.
#[test]
fn replay_through_the_fused_kernel_passes_the_dense_check_or_fails_cleanly() {
    let dir = std::env::temp_dir().join(format!("llep-fused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for pass in ["forward", "train"] {
        let out = dir.join(format!("{pass}.parquet"));
        let o = Command::new(bin())
            .args(["replay", "--gpus", "1", "--tokens-per-rank", "300"])
            .args(["--experts", "8", "--top-k", "2", "--hidden-size", "64"])
            .args(["--intermediate-size", "40", "--runs", "2", "--warmup", "1"])
            .args(["--synthetic", "balanced,95:1", "--ratio", "1.3"])
            .args(["--min-gemm", "16", "--gemm", "fused", "--pass", pass])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        if gpu_present() && stderr.contains("sm_90a (Hopper) kernel") {
            assert_eq!(o.status.code(), Some(1), "{stderr}");
            return;
        }
        if !ran_on_gpu(&o) {
            assert!(!out.exists());
            continue;
        }
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains("GEMMs through fused"), "{stdout}");
        let rows = read_results(&out).unwrap().1;
        assert_eq!(rows.len(), 4);
        for r in &rows {
            let e = r.rel_error.expect("checked against the dense reference");
            assert!(e < 1e-2, "{pass}: relative error {e}");
        }
    }
}

/// `gemm-bench --gemm lt,fused`: units of uneven rows (1, 77, 129, ...,
/// more than one launch's worth) through the fused kernel agree with lt's.
#[test]
fn gemm_bench_finds_the_fused_kernel_agreeing_with_lt_or_fails_cleanly() {
    let o = Command::new(bin())
        .args(["gemm-bench", "--shape", "2880:2880", "--rows", "256"])
        .args([
            "--layer-experts",
            "8",
            "--layer-rows",
            "1024",
            "--reps",
            "2",
        ])
        .args(["--gemm", "lt,fused"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    if gpu_present() && stderr.contains("sm_90a (Hopper) kernel") {
        return;
    }
    if !ran_on_gpu(&o) {
        return;
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    let agree: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("fused vs lt"))
        .collect();
    // 18 units: more than one launch serves (FUSED_UNITS)
    assert_eq!(agree.len(), 18, "{stdout}");
    assert!(agree.len() > llep_trace::gpu::fused::FUSED_UNITS);
    assert!(agree.iter().all(|l| l.ends_with(" ok")), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("fused ") && l.contains("layer+act fused")),
        "{stdout}"
    );
}

#[test]
fn gemm_flag_rejects_an_unknown_path_before_any_gpu_work() {
    let o = Command::new(bin())
        .args(["replay", "--synthetic", "balanced", "--gemm", "cutlass"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("lt, fused or cublas"), "{stderr}");
    let o = Command::new(bin())
        .args([
            "replay",
            "--synthetic",
            "balanced",
            "--gemm",
            "lt",
            "--warmup",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--warmup 1 or more"), "{stderr}");
}

/// `calibrate --gemm-only --cuda-graphs on` times its grid with each
/// sample launched as one CUDA graph and puts the tables in the profile's
/// `graph_gemm_tables`, leaving `gemm_tables` as the base had them;
/// without `--gemm-only` it refuses before any GPU work.
#[test]
fn calibrate_times_the_grid_as_cuda_graphs_or_fails_cleanly() {
    let dir = std::env::temp_dir().join(format!("llep-calgraph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("p.json");
    let o = Command::new(bin())
        .args(["calibrate", "--cuda-graphs", "on", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--gemm-only"), "{stderr}");
    assert!(!out.exists());
    let o = Command::new(bin())
        .args([
            "calibrate",
            "--gpus",
            "1",
            "--gemm-only",
            "--cuda-graphs",
            "on",
        ])
        .args([
            "--base",
            "h200",
            "--grid-shapes",
            "256:128",
            "--grid-rows",
            "1,16,256",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    if !ran_on_gpu(&o) {
        assert!(!out.exists());
        return;
    }
    let p = llep_trace::sim::Profile::load(out.to_str().unwrap()).unwrap();
    let base = llep_trace::sim::Profile::load("h200").unwrap();
    assert_eq!(p.gemm_tables, base.gemm_tables);
    let mine: Vec<_> = p
        .graph_gemm_tables
        .iter()
        .filter(|t| (t.n, t.k) == (256, 256) || (t.n, t.k) == (256, 128))
        .collect();
    assert_eq!(mine.len(), 2, "{:?}", p.graph_gemm_tables.len());
    for t in mine {
        assert_eq!(t.points.len(), 3);
        assert!(
            t.points.iter().all(|&(_, ms)| ms > 0.0 && ms < 1.0),
            "{:?}",
            t.points
        );
    }
}
