//! `llep-trace gemm-bench` (hidden): the expert GEMMs alone on GPU 0,
//! through cuBLAS and through autotuned cuBLASLt, in TFLOP/s per (M, N, K),
//! and a layer's expert units back to back.

use super::Printer;
use clap::Args;
use llep_trace::gpu::gemm::GemmImpl;
use llep_trace::gpu::gemm_bench::{bench, BenchConfig};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct GemmBenchArgs {
    /// Expert shape D:I (default: gpt-oss-120b).
    #[arg(long, default_value = "2880:2880")]
    pub shape: String,
    /// Rows M of the single-GEMM sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,512,1024,2048,3072,4096,6144,8192,12288,16384"
    )]
    pub rows: Vec<usize>,
    /// Experts of the layer run, each with --layer-rows rows.
    #[arg(long, default_value_t = 32)]
    pub layer_experts: usize,
    #[arg(long, default_value_t = 4096)]
    pub layer_rows: usize,
    /// Timed samples per point (medians).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// GEMM paths to compare (cublas, lt, fused). Under fused the gate_up
    /// rows time the fused kernel (gate_up with its activation) and a
    /// check compares its outputs with lt's.
    #[arg(long, value_delimiter = ',', default_value = "cublas,lt", value_parser = |s: &str| s.parse::<GemmImpl>())]
    pub gemm: Vec<GemmImpl>,
}

pub fn run(a: GemmBenchArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    let (d, i) = a
        .shape
        .split_once([':', ','])
        .and_then(|(d, i)| Some((d.trim().parse().ok()?, i.trim().parse().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--shape: '{}' is not D:I", a.shape))?;
    let cfg = BenchConfig {
        hidden: d,
        inter: i,
        rows: a.rows.clone(),
        layer_experts: a.layer_experts,
        layer_rows: a.layer_rows,
        reps: a.reps,
        paths: a.gemm.clone(),
    };
    let b = bench(&cfg, p)?;
    let mut s = format!(
        "{} ({}), D={d} I={i}, bf16 in/out, fp32 accumulation; median of {} samples\n",
        b.card,
        llep_trace::gpu::driver_version(),
        a.reps
    );
    if let Some(v) = &b.fused_variant {
        s.push_str(&format!("fused: kernel variant {v}\n"));
    }
    for (path, n) in &b.tuned {
        s.push_str(&format!("{}: {n} shape buckets tuned\n", path.as_str()));
    }
    s.push_str(&format!(
        "{:<7} {:<22} {:>6} {:>6} {:>6} {:>6} {:>10} {:>9}\n",
        "path", "what", "M", "N", "K", "count", "ms", "TFLOP/s"
    ));
    for r in &b.rows {
        s.push_str(&format!(
            "{:<7} {:<22} {:>6} {:>6} {:>6} {:>6} {:>10.4} {:>9.1}\n",
            r.path.as_str(),
            r.what,
            r.m,
            r.n,
            r.k,
            r.count,
            r.ms,
            r.tflops
        ));
    }
    s.push_str("layer rows: count experts x M rows, each gate_up (N = 2I) then down; N shown as 3I, ms per layer\n");
    s.push_str(
        "act alone: ms per unit of M rows, read cold; its last column is TB/s moved, not TFLOP/s\n",
    );
    // the rows above are timed sample after sample (session 12, call 1)
    s.push_str(
        "timed back to back: after 20-150 ms of large GEMMs a GPU meets its power cap and they run about 1.15x slower; calibrate times its tables in bursts, after light load, and measures the cap apart\n",
    );
    for t in &b.tunings {
        s.push_str(&t.summary());
        s.push('\n');
        if t.m == a.layer_rows {
            for (i, (cfg, ms)) in t.cands.iter().enumerate() {
                let tf = 2.0 * (t.m * t.n * t.k) as f64 / ms / 1e9;
                s.push_str(&format!(
                    "    #{i:<2} {cfg:<60} {ms:>8.4} ms {tf:>7.1} TFLOP/s\n"
                ));
            }
        }
    }
    let mut bad = false;
    for (form, err) in &b.agree {
        let ok = err.is_finite() && *err < 1e-2;
        bad |= !ok;
        s.push_str(&format!(
            "lt vs cublas, {form}: relative error {err:.2e} {}\n",
            if ok { "ok" } else { "FAIL (>= 1e-2)" }
        ));
    }
    let (units, rows, differ) = b.batched;
    bad |= differ > 0;
    s.push_str(&format!(
        "batched activation, {units} units of {rows} rows: {}\n",
        if differ == 0 {
            "identical to one launch per unit".to_string()
        } else {
            format!("FAIL ({differ} output values differ from one launch per unit)")
        }
    ));
    for (rows, err) in &b.fused_agree {
        let ok = err.is_finite() && *err < 1e-2;
        bad |= !ok;
        s.push_str(&format!(
            "fused vs lt, a unit of {rows} rows: relative error of its output {err:.2e} {}\n",
            if ok { "ok" } else { "FAIL (>= 1e-2)" }
        ));
    }
    p.out(&s)?;
    Ok(if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
