//! Planner and simulator benchmarks (run: `cargo bench --bench planner`).
//!
//! (a) reference planner time per plan on skewed loads, for the sizes the
//!     reference's Python planner is compared at and the larger EP sizes;
//! (b) `simulate` throughput in (step, layer, ratio) evaluations per second,
//!     cost model included, on a generated load-level trace;
//! (c) `llep-auto`'s decision as `replay` makes it per layer (plan LLEP,
//!     plan EP, price both: `gpu::decider::decide`), on the matrix's five
//!     expert shapes, warm and with every cache flushed first, inline and
//!     through the warm helper thread (`gpu::decider`).
//!
//! Prints a Markdown report to stdout; the committed copy is
//! `reports/bench/planner.md`. The built binary also runs on its own (it
//! needs no cargo), with options after `--bench`:
//! - `--planner-only`: skip (b) and (c); `--decision-only`: only (c);
//! - `--vectors FILE`: write every load vector that (a) plans, one JSON
//!   object a line (`n`, `gpus`, `alpha`, `min_gemm`, `counts`), so
//!   `scripts/bench/reference_planner_timing.py` times the reference's
//!   Python planner on the same vectors;
//! - `--results FILE`: write (a) as tab-separated values for that script.
//!
//! `LLEP_BENCH_N=128` runs (a) for N = 128 only, and `LLEP_BENCH_REPS=10`
//! sets the passes over the vectors (and skips (b)): what `valgrind
//! --tool=callgrind` needs.

use llep_trace::gpu::decider::{self, Decider, Layer};
use llep_trace::plan::Gate;
use llep_trace::plan::{Plan, PlanParams, Planner, Policy};
use llep_trace::progress::Silent;
use llep_trace::sim::{simulate, CostArbiter, Profile, Shape, SimConfig};
use llep_trace::trace::meta::{ModelMeta, RoutingFn};
use llep_trace::trace::tokens::SplitMix64;
use llep_trace::trace::Loads;
use llep_trace::workload::InputSpec;
use std::hint::black_box;
use std::sync::Arc;
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

/// The planner cases: (experts N, GPUs P, seed, target). The first three
/// are the sizes the reference's Python planner is compared at, seeded as
/// before so earlier reports stay comparable.
const CASES: [(usize, usize, u64, &str); 6] = [
    (128, 8, 42 + 128, ">= 500x reference"),
    (256, 8, 42 + 256, ">= 500x reference"),
    (384, 16, 42 + 384, ">= 500x reference"),
    (256, 32, 7_256_032, "-"),
    (256, 64, 7_256_064, "<= 20 us"),
    (256, 256, 7_256_256, "-"),
];
const ALPHA: f64 = 1.0;
const MIN_GEMM: u64 = 1024;

/// 1,000 skewed load vectors: 32,768 tokens per GPU x top-4 copies.
fn vectors(n: usize, p: usize, seed: u64) -> Vec<Vec<u64>> {
    let mut rng = SplitMix64::new(seed);
    (0..1000)
        .map(|_| skewed(&mut rng, n, 32768 * p as u64 * 4))
        .collect()
}

fn bench_planner(vectors: &[Vec<u64>], p: usize) -> PlannerBench {
    let prm = PlanParams {
        gpus: p,
        alpha: ALPHA,
        min_gemm: MIN_GEMM,
        gate: llep_trace::plan::Gate::Always,
    };
    let mut pl = Planner::new();
    let mut plan = Default::default();
    let mut dups = 0usize;
    let mut transfers = 0usize;
    for v in vectors {
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
        for v in vectors {
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

/// (c): microseconds per `llep-auto` decision of one layer on 2 GPUs, as
/// replay's host makes it after the count exchange (the LLEP plan, the EP
/// plan, both priced with the profile replay decides with: pipelined
/// schedule, CUDA graphs).
struct DecisionBench {
    /// The same layer decided over and over, inline.
    warm: f64,
    /// Medians, 64 MiB streamed through the caches before each run (closer to a
    /// host that ran the rest of a layer in between): the LLEP plan alone
    /// (what the `llep` setting pays), the decision inline (`replay
    /// --decision-thread off`), and through the warm helper thread while
    /// this thread plans (`--decision-thread on`).
    cold_plan: f64,
    cold_inline: f64,
    cold_thread: f64,
    use_llep: bool,
}

fn bench_decision(d: u64, i: u64, n: usize, k: u64, tokens: u64) -> DecisionBench {
    let mut spec = InputSpec::synthetic(vec!["30:4".parse().unwrap()], 2);
    spec.tokens_per_rank = Some(tokens);
    spec.dims.experts = Some(n as u32);
    spec.dims.top_k = Some(k as u32);
    let w = spec.resolve().unwrap().remove(0);
    let per_rank = w.loads.block(0, 0).to_vec();
    let global = w.loads.global(0, 0);
    let mut profile = Profile::load("h200").unwrap();
    profile.overlap = llep_trace::gpu::pipeline::Overlap::On(0);
    profile.cuda_graphs = true;
    let arb = CostArbiter {
        shape: Shape::bf16(d, i, k),
        profile,
    };
    // replay plans llep-auto's LLEP plan under the auto gate (always
    // planned; the arbiter decides)
    let prm = PlanParams {
        gpus: 2,
        alpha: 1.0,
        min_gemm: 1024,
        gate: Gate::Auto,
    };
    let layer = Layer {
        per_rank: &per_rank,
        global: &global,
        params: prm,
    };
    let mut pl = Planner::new();
    let (mut llep, mut ep) = (Plan::default(), Plan::default());
    // the decision inline, as `replay --decision-thread off` makes it
    let mut decide = |pl: &mut Planner| {
        decider::decide(&arb, pl, black_box(&layer), &mut llep, &mut ep).unwrap()
    };
    let use_llep = decide(&mut pl);
    let reps = 20_000;
    let t0 = Instant::now();
    for _ in 0..reps {
        black_box(decide(&mut pl));
    }
    let warm = t0.elapsed().as_secs_f64() / reps as f64 * 1e6;
    let mut junk = vec![1u64; 8 << 20];
    let mut flushed = |r: u64, f: &mut dyn FnMut()| {
        for (j, v) in junk.iter_mut().enumerate() {
            *v = v.wrapping_add(j as u64 ^ r);
        }
        black_box(&junk);
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e6
    };
    let helper = Decider::start(Arc::new(arb.clone())).unwrap();
    let mut own = Plan::default();
    let (mut plan, mut inline, mut thread) = (vec![], vec![], vec![]);
    let cold_reps = 200;
    for r in 0..cold_reps {
        // in turns, so drift falls on all three alike
        plan.push(flushed(r, &mut || {
            pl.plan_into(black_box(&global), &prm, Policy::LlepAuto, &mut own)
                .unwrap();
        }));
        inline.push(flushed(r, &mut || {
            black_box(decide(&mut pl));
        }));
        // as `replay --decision-thread on`: post, plan, collect the answer
        thread.push(flushed(r, &mut || {
            helper.post(&per_rank, &global, prm);
            pl.plan_into(black_box(&global), &prm, Policy::LlepAuto, &mut own)
                .unwrap();
            if own.use_llep && helper.answer() == Some(false) {
                pl.plan_into(&global, &prm, Policy::Ep, &mut own).unwrap();
            }
        }));
    }
    // medians: on a machine of few cores, a spinning helper and the
    // bench share them with the OS, which preempts either now and then
    let per = |mut x: Vec<f64>| {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    DecisionBench {
        warm,
        cold_plan: per(plan),
        cold_inline: per(inline),
        cold_thread: per(thread),
        use_llep,
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
    let gates = Gate::parse_list("1.0:3.0:0.1").unwrap();
    let w = InputSpec::from_loads("bench", model, loads).unwrap();
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

/// The value after `flag` on the command line, if given.
fn arg_value(args: &[String], flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    let v = args.get(i + 1).cloned();
    assert!(v.is_some(), "{flag} needs a value");
    v
}

/// Write `text` to `path` through a temporary file, so a half-written file
/// is never left under the final name.
fn write_file(path: &str, text: &str) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {tmp}: {e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` passes --bench-less args; only run when benched
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let vectors_out = arg_value(&args, "--vectors");
    let results_out = arg_value(&args, "--results");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine load average while running: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!("| planner case | wall time per plan | on-CPU time per plan | target | plans with a duplicate transfer | transfers per plan |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let only: Option<usize> = std::env::var("LLEP_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut dump = String::new();
    let mut tsv = String::from(
        "n\tgpus\twall_us\tcpu_us\ttransfers_per_plan\tdup_share\tvectors\tcount_sum\n",
    );
    for (n, p, seed, target) in CASES {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let vs = vectors(n, p, seed);
        if vectors_out.is_some() {
            for v in &vs {
                let counts: Vec<String> = v.iter().map(|c| c.to_string()).collect();
                dump.push_str(&format!(
                    "{{\"n\":{n},\"gpus\":{p},\"alpha\":{ALPHA:?},\"min_gemm\":{MIN_GEMM},\"counts\":[{}]}}\n",
                    counts.join(",")
                ));
            }
        }
        let b = bench_planner(&vs, p);
        println!(
            "| N={n}, P={p} | {:.3} us | {:.3} us | {target} | {:.0}% | {:.1} |",
            b.wall_us,
            b.cpu_us,
            b.dup_share * 100.0,
            b.transfers
        );
        // the sum of every count: the timing script checks it read the same vectors
        let sum: u64 = vs.iter().flatten().sum();
        tsv.push_str(&format!(
            "{n}\t{p}\t{:.4}\t{:.4}\t{:.3}\t{:.4}\t{}\t{sum}\n",
            b.wall_us,
            b.cpu_us,
            b.transfers,
            b.dup_share,
            vs.len()
        ));
    }
    if let Some(path) = &vectors_out {
        write_file(path, &dump);
    }
    if let Some(path) = &results_out {
        write_file(path, &tsv);
    }
    if std::env::var("LLEP_BENCH_REPS").is_ok() || args.iter().any(|a| a == "--planner-only") {
        return;
    }
    println!();
    println!("| llep-auto decision, 2 GPUs, 30:4 | tokens per GPU | warm, us | flushed: LLEP plan alone, us | flushed: inline, us | flushed: warm thread, us | llep-auto takes |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, d, i, n, k) in [
        ("gpt-oss-120b", 2880, 2880, 128, 4),
        ("Qwen3-30B-A3B", 2048, 768, 128, 8),
        ("OLMoE", 2048, 1024, 64, 8),
        ("DeepSeek-V3", 7168, 2048, 256, 8),
        ("Mixtral-8x7B", 4096, 14336, 8, 2),
    ] {
        for tokens in [128u64, 2048] {
            let b = bench_decision(d, i, n, k, tokens);
            let llep = if b.use_llep { "LLEP" } else { "EP" };
            println!(
                "| {name} | {tokens} | {:.2} | {:.1} | {:.1} | {:.1} | {llep} |",
                b.warm, b.cold_plan, b.cold_inline, b.cold_thread
            );
        }
    }
    if args.iter().any(|a| a == "--decision-only") {
        return;
    }
    let (ls, rows, secs, eps) = bench_simulate();
    println!();
    println!("| simulate | layer-steps | ratios | policies | rows | seconds (wall, 2 threads) | evaluations/s | target |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!("| N=128, P=8, 21 ratios | {ls} | 21 | ep, llep, ideal | {rows} | {secs:.3} | {eps:.0} | >= 200,000 |");
}
