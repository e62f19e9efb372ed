//! Planner and simulator benchmarks (run: `cargo bench --bench planner`).
//!
//! (a) reference planner time per plan on skewed loads for the sizes the
//!     reference's Python planner was timed at (docs/anchors.md);
//! (b) `simulate` throughput in (step, layer, ratio) evaluations per second,
//!     cost model included, on a generated load-level trace.
//!
//! Prints a Markdown report to stdout; the committed copy is
//! `reports/bench/planner.md`.

use llep_trace::plan::Gate;
use llep_trace::plan::{PlanParams, Planner, Policy};
use llep_trace::progress::Silent;
use llep_trace::sim::{simulate, Profile, SimConfig};
use llep_trace::trace::meta::{CaptureMeta, ModelMeta, RoutingFn, TraceMeta};
use llep_trace::trace::tokens::SplitMix64;
use llep_trace::trace::{Loads, Trace};
use llep_trace::workload::{DimOverrides, InputSource, InputSpec, StepPick};
use std::hint::black_box;
use std::time::Instant;

/// Zipf-like skew (exponent 1.1) over a random permutation of experts, plus
/// a little noise: every vector differs, as real layers do.
fn skewed(rng: &mut SplitMix64, n: usize, total: u64) -> Vec<u64> {
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let w: Vec<f64> = (0..n)
        .map(|i| 1.0 / ((perm[i] + 1) as f64).powf(1.1) * (0.8 + 0.4 * rng.unit_f64()))
        .collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|x| (x / s * total as f64) as u64).collect()
}

/// On-CPU time of this thread in seconds (Linux schedstat): a busy machine
/// inflates wall time but not this.
fn thread_cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

struct PlannerBench {
    wall_us: f64,
    cpu_us: f64,
    dup_share: f64,
    transfers: f64,
}

fn bench_planner(n: usize, p: usize) -> PlannerBench {
    let mut rng = SplitMix64::new(42 + n as u64);
    let vectors: Vec<Vec<u64>> = (0..1000)
        .map(|_| skewed(&mut rng, n, 32768 * p as u64 * 4))
        .collect();
    let prm = PlanParams {
        gpus: p,
        alpha: 1.0,
        min_gemm: 1024,
        gate: llep_trace::plan::Gate::Always,
    };
    let mut pl = Planner::new();
    let mut plan = Default::default();
    let mut dups = 0usize;
    let mut transfers = 0usize;
    for v in &vectors {
        pl.plan_into(v, &prm, Policy::Llep, &mut plan).unwrap();
        dups += (plan.duplicate_transfers > 0) as usize;
        transfers += plan.transfers.len();
    }
    // LLEP_BENCH_REPS=1 lets `valgrind --tool=callgrind` count instructions
    let reps: usize = std::env::var("LLEP_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let c0 = thread_cpu_secs();
    let t0 = Instant::now();
    for _ in 0..reps {
        for v in &vectors {
            pl.plan_into(black_box(v), &prm, Policy::Llep, &mut plan)
                .unwrap();
            black_box(&plan);
        }
    }
    let plans = (reps * vectors.len()) as f64;
    let wall = t0.elapsed().as_secs_f64() / plans;
    let cpu = match (c0, thread_cpu_secs()) {
        (Some(a), Some(b)) => (b - a) / plans,
        _ => f64::NAN,
    };
    PlannerBench {
        wall_us: wall * 1e6,
        cpu_us: cpu * 1e6,
        dup_share: dups as f64 / vectors.len() as f64,
        transfers: transfers as f64 / vectors.len() as f64,
    }
}

fn bench_simulate() -> (usize, usize, f64, f64) {
    let (steps, layers, ranks, n) = (500usize, 40usize, 8usize, 128usize);
    let mut rng = SplitMix64::new(7);
    let mut loads = Loads::zeros(
        (0..steps as u32).collect(),
        (0..layers as u32).collect(),
        ranks,
        n,
    );
    for s in 0..steps {
        for l in 0..layers {
            let global = skewed(&mut rng, n, 16384 * ranks as u64 * 4);
            let block = loads.block_mut(s, l);
            for (e, &c) in global.iter().enumerate() {
                for r in 0..ranks {
                    block[r * n + e] = c / ranks as u64 + u64::from((r as u64) < c % ranks as u64);
                }
            }
        }
    }
    let model = ModelMeta {
        name: "bench".into(),
        num_experts: n as u32,
        top_k: 4,
        hidden_size: 2880,
        intermediate_size: 2880,
        num_layers: layers as u32,
        dtype: "bf16".into(),
        routing: RoutingFn::Recorded,
    };
    let capture = CaptureMeta {
        ranks: ranks as u32,
        rank_assignment: "recorded".into(),
        ..Default::default()
    };
    let trace = Trace {
        meta: TraceMeta::new(model, capture),
        loads,
        tokens: None,
    };
    let gates = Gate::parse_list("1.0:3.0:0.1").unwrap();
    let spec = InputSpec {
        source: InputSource::Trace("bench".into()),
        dims: DimOverrides::default(),
        gpus: ranks,
        tokens_per_rank: None,
        seed: 0,
        steps: StepPick::All,
        layers: Vec::new(),
    };
    let w = spec.resolve_trace("bench".as_ref(), trace).unwrap();
    let cfg = SimConfig {
        policies: Policy::ALL.to_vec(),
        gates: gates.clone(),
        alphas: vec![1.0],
        min_gemms: vec![1024],
        profile: Profile::load("h200").unwrap(),
        threads: 0,
        pass: llep_trace::results::Pass::Forward,
        recompute: false,
    };
    let _ = simulate(&w, &cfg, &Silent).unwrap(); // warm
    let t0 = Instant::now();
    let rows = simulate(&w, &cfg, &Silent).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let evals = steps * layers * gates.len();
    (steps * layers, rows.len(), secs, evals as f64 / secs)
}

fn main() {
    // `cargo test --benches` passes --bench-less args; only run when benched
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine load average while running: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!("| planner case | wall time per plan | on-CPU time per plan | target | reference (Python) | plans with a duplicate transfer | transfers per plan |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let only: Option<usize> = std::env::var("LLEP_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok());
    for (n, p, refms) in [(128, 8, "1.0 ms"), (256, 8, "1.9 ms"), (384, 16, "2.9 ms")] {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let b = bench_planner(n, p);
        let target = if n == 128 { "<= 2 us" } else { "-" };
        println!(
            "| N={n}, P={p} | {:.3} us | {:.3} us | {target} | {refms} | {:.0}% | {:.1} |",
            b.wall_us,
            b.cpu_us,
            b.dup_share * 100.0,
            b.transfers
        );
    }
    if std::env::var("LLEP_BENCH_REPS").is_ok() {
        return;
    }
    let (ls, rows, secs, eps) = bench_simulate();
    println!();
    println!("| simulate | layer-steps | ratios | policies | rows | seconds (wall, 2 threads) | evaluations/s | target |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!("| N=128, P=8, 21 ratios | {ls} | 21 | ep, llep, ideal | {rows} | {secs:.3} | {eps:.0} | >= 200,000 |");
}
