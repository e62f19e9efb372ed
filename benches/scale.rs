//! Scale benchmarks of the topology-aware simulation (issue 16), run with
//! `cargo bench --bench scale`, on the DeepSeek-V3 MoE layer shape (256
//! experts, top-8, D 7168, I 2048) with synthetic Zipf skew:
//!
//! (a) `llep-topo` planner time per plan at (N, P) = (256, 32), (256, 64),
//!     (256, 256), 8 GPUs per node (the reference `llep` planner timed
//!     beside it on the same vectors);
//! (b) `simulate` throughput in layer-steps per second at P = 64 and 256,
//!     each layer-step planned and priced under ep and llep (one node) or
//!     ep, llep and llep-topo (8 GPUs per node), cost model included.
//!
//! Prints a Markdown report to stdout; the committed copy is
//! `reports/bench/scale.md`. With `-- sweep DIR`: instead, the results
//! sweep of `reports/scale/` (ep, llep, llep-topo from 8 to 256 GPUs) and
//! its plot `DIR/scale.svg`.

use llep_trace::gpu::Overlap;
use llep_trace::plan::topo::{TopoPlanner, Topology};
use llep_trace::plan::{Gate, Plan, PlanParams, Planner, Policy};
use llep_trace::progress::Silent;
use llep_trace::report::plots::{render, Figure};
use llep_trace::report::FAMILY;
use llep_trace::sim::{simulate, Profile, SimConfig};
use llep_trace::trace::meta::{ModelMeta, RoutingFn};
use llep_trace::trace::tokens::SplitMix64;
use llep_trace::trace::Loads;
use llep_trace::workload::{DimOverrides, InputSpec, Workload};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::hint::black_box;
use std::time::Instant;

const N: usize = 256;
const TOP_K: u64 = 8;
const TOKENS_PER_RANK: u64 = 4096;

/// Zipf-like skew (exponent 1.1) over a random permutation of experts, with
/// a little noise, so every layer differs.
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

/// Microseconds per plan: (llep-topo, llep), and llep-topo's mean
/// transfers and cross-node transfers per plan.
fn bench_planner(p: usize) -> (f64, f64, f64, f64) {
    let mut rng = SplitMix64::new(42 + p as u64);
    let vectors: Vec<Vec<u64>> = (0..500)
        .map(|_| skewed(&mut rng, N, TOKENS_PER_RANK * TOP_K * p as u64))
        .collect();
    let prm = PlanParams {
        gpus: p,
        alpha: 1.0,
        min_gemm: 1024,
        gate: Gate::Always,
    };
    let topo = Topology::new(p, p / 8).unwrap();
    let (mut tp, mut rp) = (TopoPlanner::new(), Planner::new());
    let mut plan = Plan::default();
    let (mut transfers, mut cross) = (0usize, 0usize);
    for v in &vectors {
        tp.plan_into(v, &prm, topo, &mut plan).unwrap();
        transfers += plan.transfers.len();
        cross += llep_trace::plan::topo::cross_node_transfers(&plan, topo);
    }
    let reps = 20;
    let t0 = Instant::now();
    for _ in 0..reps {
        for v in &vectors {
            tp.plan_into(black_box(v), &prm, topo, &mut plan).unwrap();
            black_box(&plan);
        }
    }
    let plans = (reps * vectors.len()) as f64;
    let topo_us = t0.elapsed().as_secs_f64() / plans * 1e6;
    let t0 = Instant::now();
    for _ in 0..reps {
        for v in &vectors {
            rp.plan_into(black_box(v), &prm, Policy::Llep, &mut plan)
                .unwrap();
            black_box(&plan);
        }
    }
    let llep_us = t0.elapsed().as_secs_f64() / plans * 1e6;
    let n = vectors.len() as f64;
    (topo_us, llep_us, transfers as f64 / n, cross as f64 / n)
}

/// A load-level trace of `steps` x 61 layers on `p` ranks, each rank
/// holding an even share of every expert's copies.
fn workload(p: usize, steps: usize) -> Workload {
    let layers = 61usize;
    let mut rng = SplitMix64::new(7 + p as u64);
    let mut loads = Loads::zeros(
        (0..steps as u32).collect(),
        (0..layers as u32).collect(),
        p,
        N,
    );
    for s in 0..steps {
        for l in 0..layers {
            let global = skewed(&mut rng, N, TOKENS_PER_RANK * TOP_K * p as u64);
            let block = loads.block_mut(s, l);
            for (e, &c) in global.iter().enumerate() {
                for r in 0..p {
                    block[r * N + e] = c / p as u64 + u64::from((r as u64) < c % p as u64);
                }
            }
        }
    }
    let model = ModelMeta {
        name: "deepseek-v3 shape".into(),
        num_experts: N as u32,
        top_k: TOP_K as u32,
        hidden_size: 7168,
        intermediate_size: 2048,
        num_layers: layers as u32,
        dtype: "bf16".into(),
        routing: RoutingFn::Recorded,
    };
    InputSpec::from_loads("bench", model, loads).unwrap()
}

/// CPU seconds (user + system) this process has used, from
/// `/proc/self/stat` (clock ticks of 1/100 s): on a shared machine the
/// wall time also counts other programs' turns.
fn cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Times each simulate is run (after one warm-up): the figures are the
/// median wall rate and the CPU rate over all of them (one run is about
/// 0.1 s, and CPU time is counted in 10 ms ticks).
const SIM_REPS: usize = 5;

/// Layer-steps, median wall seconds, median layer-steps per wall second
/// and layer-steps per CPU second simulating `w` under `policies` on
/// `nodes`, over `reps` runs.
fn bench_simulate(
    w: &Workload,
    nodes: u32,
    policies: &[Policy],
    overlap: Overlap,
    reps: usize,
) -> (usize, f64, f64, f64) {
    let mut profile = Profile::load("h200").unwrap();
    profile.nodes = nodes;
    profile.overlap = overlap;
    let cfg = SimConfig {
        policies: policies.to_vec(),
        gates: vec![Gate::Always],
        alphas: vec![1.0],
        min_gemms: vec![1024],
        profile,
        threads: 0,
        pass: llep_trace::results::Pass::Forward,
        recompute: false,
    };
    let _ = simulate(w, &cfg, &Silent).unwrap(); // warm
    let ls = w.loads.layer_steps();
    let c0 = cpu_secs();
    let mut walls = Vec::with_capacity(reps);
    // the rows are freed after the CPU time is read, as they were before
    // repetitions (freeing them is the caller's business)
    let mut kept = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        let rows = simulate(w, &cfg, &Silent).unwrap();
        walls.push(t0.elapsed().as_secs_f64());
        kept.push(black_box(rows));
    }
    let cpu = match (c0, cpu_secs()) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    drop(kept);
    walls.sort_by(f64::total_cmp);
    let secs = walls[walls.len() / 2];
    (ls, secs, ls as f64 / secs, (ls * reps) as f64 / cpu)
}

/// `-- single-p64`: P = 64 on one node (ep, llep), one thread, `reps`
/// runs per schedule over 10 steps x 61 layers; the least and the median
/// microseconds per layer-step. On a shared machine the least of many
/// runs is the one least disturbed by other programs, so it compares
/// builds run back to back better than the two-thread rates do.
fn single_p64(reps: usize) {
    let w = workload(64, 10);
    println!("| simulate P=64, 1 node, ep + llep, 1 thread ({reps} runs of {} layer-steps) | least us per layer-step (wall) | median us (wall) | CPU us per layer-step (all runs) | layer-steps/s (least) |", w.loads.layer_steps());
    println!("| --- | --- | --- | --- | --- |");
    for overlap in [Overlap::Off, Overlap::On(0)] {
        let mut profile = Profile::load("h200").unwrap();
        profile.overlap = overlap;
        let cfg = SimConfig {
            policies: vec![Policy::Ep, Policy::Llep],
            gates: vec![Gate::Always],
            alphas: vec![1.0],
            min_gemms: vec![1024],
            profile,
            threads: 1,
            pass: llep_trace::results::Pass::Forward,
            recompute: false,
        };
        let _ = simulate(&w, &cfg, &Silent).unwrap(); // warm
        let ls = w.loads.layer_steps() as f64;
        let c0 = cpu_secs();
        let mut us: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                black_box(simulate(&w, &cfg, &Silent).unwrap());
                t0.elapsed().as_secs_f64() / ls * 1e6
            })
            .collect();
        let cpu_us = match (c0, cpu_secs()) {
            (Some(a), Some(b)) => (b - a) / (ls * reps as f64) * 1e6,
            _ => f64::NAN,
        };
        us.sort_by(f64::total_cmp);
        println!(
            "| overlap {} | {:.2} | {:.2} | {cpu_us:.2} | {:.0} |",
            if overlap == Overlap::Off { "off" } else { "on" },
            us[0],
            us[reps / 2],
            1e6 / us[0]
        );
    }
}

fn main() {
    // `cargo test --benches` runs this with --list-like args: skip then
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if args.iter().any(|a| a == "single-p64") {
        single_p64(30);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "sweep") {
        sweep(args.get(i + 1).map_or("reports/scale", String::as_str));
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine load average at the start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!("| planner case (DeepSeek-V3 layer, Zipf 1.1, 4096 tokens/rank) | llep-topo per plan (8 GPUs/node) | llep per plan (reference planner, same vectors) | llep-topo transfers per plan | of them across nodes |");
    println!("| --- | --- | --- | --- | --- |");
    // `-- simulate-only` skips the planner table (for profiling simulate)
    let planner_sizes: &[usize] = if args
        .iter()
        .any(|a| a == "simulate-only" || a.starts_with("profile-p64"))
    {
        &[]
    } else {
        &[32, 64, 256]
    };
    for &p in planner_sizes {
        let (t, l, x, c) = bench_planner(p);
        println!("| N={N}, P={p} | {t:.2} us | {l:.2} us | {x:.1} | {c:.1} |");
    }
    println!();
    // `-- profile-p64`: only P = 64 on one node, simulated many times
    // (for `perf record`: the workload's generation is then a small share)
    // (`-- profile-p64-off` / `-- profile-p64-on`: one schedule only)
    let profile_only = args.iter().any(|a| a.starts_with("profile-p64"));
    let only_overlap = args.iter().find_map(|a| match a.as_str() {
        "profile-p64-off" => Some(Overlap::Off),
        "profile-p64-on" => Some(Overlap::On(0)),
        _ => None,
    });
    let reps = if profile_only { 20 } else { SIM_REPS };
    println!("| simulate (DeepSeek-V3 layer, 61 layers, Zipf 1.1) | layer-steps | policies | seconds (wall, 2 threads, median of {reps}) | layer-steps/s (wall, median of {reps}) | layer-steps per CPU-second ({reps} runs) | target |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let sizes: &[(usize, usize)] = if profile_only {
        &[(64, 60)]
    } else {
        &[(64, 60), (256, 8)]
    };
    for &(p, steps) in sizes {
        let w = workload(p, steps);
        for (nodes, pols) in [
            (1u32, &[Policy::Ep, Policy::Llep][..]),
            (
                (p / 8) as u32,
                &[Policy::Ep, Policy::Llep, Policy::LlepTopo][..],
            ),
        ] {
            if profile_only && nodes > 1 {
                continue;
            }
            // the sequential schedule, and on one node the pipelined one
            // that `simulate` prices by default (`--overlap on`)
            for overlap in [Overlap::Off, Overlap::On(0)] {
                if (nodes > 1 && overlap != Overlap::Off)
                    || only_overlap.is_some_and(|o| o != overlap)
                {
                    continue;
                }
                let (ls, secs, lps, per_cpu) = bench_simulate(&w, nodes, pols, overlap, reps);
                let names: Vec<&str> = pols.iter().map(|p| p.as_str()).collect();
                let target = if p == 64 { ">= 50,000" } else { "-" };
                println!(
                    "| P={p}, {nodes} node{}, overlap {} | {ls} | {} | {secs:.3} | {lps:.0} | {per_cpu:.0} | {target} |",
                    if nodes == 1 { "" } else { "s" },
                    if overlap == Overlap::Off { "off" } else { "on" },
                    names.join(", ")
                );
            }
        }
    }
}

/// One point of the sweep: GPUs, nodes, and per policy (ep, llep,
/// llep-topo) the simulated time summed over the layer-steps and the bytes
/// crossing nodes per layer-step.
struct Point {
    gpus: usize,
    nodes: usize,
    ms: [f64; 3],
    inter_gb: [f64; 3],
}

const SWEEP_POLICIES: [Policy; 3] = [Policy::Ep, Policy::Llep, Policy::LlepTopo];

/// Simulate `spec` on `gpus` GPUs, 8 per node, under ep, llep and
/// llep-topo; the per-rank note of the first workload is returned too.
fn sweep_point(mut spec: InputSpec, gpus: usize) -> (Point, String) {
    let nodes = (gpus / 8).max(1);
    spec.gpus = gpus;
    let ws = spec.resolve().unwrap();
    let mut profile = Profile::load("h200").unwrap();
    profile.nodes = nodes as u32;
    let cfg = SimConfig {
        policies: SWEEP_POLICIES.to_vec(),
        gates: vec![Gate::Always],
        alphas: vec![1.0],
        min_gemms: vec![1024],
        profile,
        threads: 0,
        pass: llep_trace::results::Pass::Forward,
        recompute: false,
    };
    let mut pt = Point {
        gpus,
        nodes,
        ms: [0.0; 3],
        inter_gb: [0.0; 3],
    };
    let mut layer_steps = 0usize;
    for w in &ws {
        for r in simulate(w, &cfg, &Silent).unwrap() {
            let i = SWEEP_POLICIES.iter().position(|&p| p == r.policy).unwrap();
            pt.ms[i] += r.t_total_ms;
            pt.inter_gb[i] += r.inter_node_bytes as f64 / 1e9;
            layer_steps += usize::from(i == 0);
        }
    }
    for v in &mut pt.inter_gb {
        *v /= layer_steps.max(1) as f64;
    }
    (pt, ws[0].note.clone())
}

fn dsv3_synthetic() -> InputSpec {
    let scenarios = ["30:4", "50:4", "80:4", "95:4", "95:1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let mut spec = InputSpec::synthetic(scenarios, 8);
    spec.dims = DimOverrides {
        experts: Some(N as u32),
        top_k: Some(TOP_K as u32),
        hidden_size: Some(7168),
        intermediate_size: Some(2048),
        num_layers: Some(61),
    };
    spec.tokens_per_rank = Some(TOKENS_PER_RANK);
    spec
}

/// The OLMoE trace (64 experts, top-8) priced at DeepSeek-V3's D and I,
/// 4096 tokens per rank.
fn olmoe_rescaled() -> InputSpec {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/traces/olmoe-1b-7b.parquet");
    let mut spec = InputSpec::trace(path, 8);
    spec.dims.hidden_size = Some(7168);
    spec.dims.intermediate_size = Some(2048);
    spec.tokens_per_rank = Some(TOKENS_PER_RANK);
    spec
}

/// Speedup over EP and inter-node GB per layer-step against GPU count.
struct ScaleFig {
    title: String,
    series: Vec<(String, Vec<Point>)>,
}

impl Figure for ScaleFig {
    fn size(&self) -> (u32, u32) {
        (1400, 560)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), llep_trace::report::plots::DrawError> {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| {
            llep_trace::report::plots::DrawError(x.to_string())
        };
        root.fill(&WHITE).map_err(e)?;
        let (top, body) = root.split_vertically(50);
        top.draw_text(
            &self.title,
            &(FAMILY, 22).into_font().color(&BLACK),
            (20, 14),
        )
        .map_err(e)?;
        let panels = body.split_evenly((1, 2));
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(214, 39, 40),
            RGBColor(44, 160, 44),
        ];
        let xs: Vec<f64> = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| (p.gpus as f64).log2()))
            .collect();
        let (x0, x1) = (
            xs.iter().cloned().fold(f64::MAX, f64::min),
            xs.iter().cloned().fold(0.0, f64::max),
        );
        for (pi, panel) in panels.iter().enumerate() {
            let val = |p: &Point, i: usize| -> f64 {
                if pi == 0 {
                    p.ms[0] / p.ms[i]
                } else {
                    p.inter_gb[i]
                }
            };
            let pols: &[usize] = if pi == 0 { &[1, 2] } else { &[0, 1, 2] };
            let ymax = self
                .series
                .iter()
                .flat_map(|(_, v)| v.iter().flat_map(|p| pols.iter().map(move |&i| val(p, i))))
                .fold(0.0, f64::max)
                * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .margin(20)
                .margin_top(30)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .caption(
                    if pi == 0 {
                        "speedup over EP (higher is better)"
                    } else {
                        "inter-node GB per layer-step (lower is better)"
                    },
                    (FAMILY, 18),
                )
                .build_cartesian_2d(x0 - 0.2..x1 + 0.2, 0.0..ymax.max(1e-9))
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("GPUs (8 per node)")
                .x_labels(12)
                .x_label_formatter(&|v| {
                    // ticks at powers of two only
                    if (v - v.round()).abs() < 1e-6 {
                        format!("{:.0}", 2f64.powf(v.round()))
                    } else {
                        String::new()
                    }
                })
                .light_line_style(WHITE)
                .label_style((FAMILY, 14))
                .draw()
                .map_err(e)?;
            for (si, (name, pts)) in self.series.iter().enumerate() {
                for &i in pols {
                    let col = colors[i];
                    let style = if si == 0 {
                        col.stroke_width(3)
                    } else {
                        col.mix(0.6).stroke_width(2)
                    };
                    let line: Vec<(f64, f64)> = pts
                        .iter()
                        .map(|p| ((p.gpus as f64).log2(), val(p, i)))
                        .collect();
                    let label = format!("{}, {name}", SWEEP_POLICIES[i].as_str());
                    chart
                        .draw_series(LineSeries::new(line.clone(), style))
                        .map_err(e)?
                        .label(label)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3))
                        });
                    let mark = |c: (f64, f64)| -> DynElement<'static, DB, (f64, f64)> {
                        if si == 0 {
                            Circle::new(c, 4, col.filled()).into_dyn()
                        } else {
                            TriangleMarker::new(c, 5, col.filled()).into_dyn()
                        }
                    };
                    chart.draw_series(line.into_iter().map(mark)).map_err(e)?;
                }
            }
            chart
                .configure_series_labels()
                .position(if pi == 0 {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperLeft
                })
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FAMILY, 13))
                .draw()
                .map_err(e)?;
        }
        Ok(())
    }
}

/// `cargo bench --bench scale -- sweep DIR`: the GPU-count sweep, a table
/// on stdout and `DIR/scale.svg`.
fn sweep(dir: &str) {
    let mut series = Vec::new();
    println!("| input | GPUs | nodes | per-rank loads | ep ms | llep ms | llep-topo ms | llep vs EP | llep-topo vs EP | llep-topo vs llep | inter-node GB/layer-step ep | llep | llep-topo |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, spec, sizes) in [
        (
            "DeepSeek-V3 shape, synthetic 30:4..95:1",
            dsv3_synthetic(),
            &[8usize, 16, 32, 64, 128, 256][..],
        ),
        (
            "OLMoE trace at DeepSeek-V3 D, I",
            olmoe_rescaled(),
            &[8, 16, 32, 64][..],
        ),
    ] {
        let mut pts = Vec::new();
        for &g in sizes {
            let (p, note) = sweep_point(spec.clone(), g);
            println!(
                "| {name} | {} | {} | {note} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.3}x | {:.2} | {:.2} | {:.2} |",
                p.gpus, p.nodes, p.ms[0], p.ms[1], p.ms[2],
                p.ms[0] / p.ms[1], p.ms[0] / p.ms[2], p.ms[1] / p.ms[2],
                p.inter_gb[0], p.inter_gb[1], p.inter_gb[2]
            );
            pts.push(p);
        }
        series.push((name.to_string(), pts));
    }
    let fig = ScaleFig {
        title: "LLEP and llep-topo against GPU count (h200 profile, 8 GPUs per node, NIC 50 GB/s per GPU: estimate)".into(),
        series,
    };
    for name in ["scale.svg", "scale.png"] {
        let out = std::path::Path::new(dir).join(name);
        render(&fig, &out).unwrap();
        eprintln!("wrote {}", out.display());
    }
}
