//! `llep-trace replay`: run EP and LLEP MoE layers on real GPUs, measure
//! them, and (optionally) put the simulated rows for the same inputs beside
//! them.

use super::settings::{gate_label, PlannerArgs};
use super::simulate::results_meta;
use super::table::Table;
use super::Printer;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use llep_trace::gpu::rendezvous::ProcessRank;
use llep_trace::gpu::{inputs, replay, Act, Case, Launch, ReplayConfig};
use llep_trace::plan::Policy;
use llep_trace::results::{write_results, ResultRow};
use llep_trace::sim::{self, Gate, Profile, SimConfig};
use llep_trace::trace::read_trace;
use llep_trace::trace::synthetic::Scenario;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ActArg {
    /// gpt-oss clamped SwiGLU.
    GptOss,
    /// silu(gate) * up.
    Swiglu,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Trace to replay (token level replays its tokens; load level
    /// synthesises tokens from the counts).
    #[arg(long, conflicts_with = "synthetic")]
    pub trace: Option<PathBuf>,
    /// Synthetic scenarios of the reference test instead of a trace, e.g.
    /// balanced,30:4,50:4,80:4,95:4,95:1.
    #[arg(long, value_delimiter = ',')]
    pub synthetic: Vec<String>,
    /// Steps of the trace to replay (ids; default: the first).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<u32>,
    /// Layers of the trace to replay (ids; default: all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<u32>,
    /// GPUs (EP ranks). One process drives this many local GPUs, a thread
    /// each; under a launcher (WORLD_SIZE set) it must equal WORLD_SIZE.
    #[arg(long, default_value_t = 2)]
    pub gpus: usize,
    /// Tokens per rank: synthetic batch size, or the trace's resampled /
    /// rescaled batch.
    #[arg(long)]
    pub tokens_per_rank: Option<u64>,
    /// Experts (synthetic; default 128, the gpt-oss-120b layer).
    #[arg(long)]
    pub experts: Option<u32>,
    /// Top-k (synthetic; default 4).
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Hidden size D (default 2880 for synthetic, the trace's otherwise).
    #[arg(long)]
    pub hidden_size: Option<u32>,
    /// Expert intermediate size I (default 2880 for synthetic, the trace's otherwise).
    #[arg(long)]
    pub intermediate_size: Option<u32>,
    /// Expert activation.
    #[arg(long, value_enum, default_value = "gpt-oss")]
    pub act: ActArg,
    /// Policies: ep, llep.
    #[arg(long, value_delimiter = ',', default_value = "ep,llep")]
    pub policy: Vec<Policy>,
    #[command(flatten)]
    pub planner: PlannerArgs,
    /// Untimed warm-up runs per case.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed runs per case.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Seed of weights, inputs and resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens per rank checked against the dense fp32 reference.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Also simulate the same inputs with this profile (h100, h200 or a
    /// JSON file) and show the simulated rows beside the measured ones.
    #[arg(long)]
    pub with_sim: Option<String>,
    /// Write the rows (measured, plus simulated with --with-sim) here (Parquet).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

struct Inputs {
    cases: Vec<Case>,
    /// (trace, name, scenario) for the simulated twins
    sims: Vec<(llep_trace::trace::Trace, String, String)>,
    dims: (u32, u32, u32, u32),
}

fn build_inputs(a: &ReplayArgs) -> anyhow::Result<Inputs> {
    if a.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    if a.tokens_per_rank == Some(0) {
        bail!("--tokens-per-rank must be at least 1");
    }
    if !a.synthetic.is_empty() {
        let n = a.experts.unwrap_or(128);
        let k = a.top_k.unwrap_or(4);
        let d = a.hidden_size.unwrap_or(2880);
        let i = a.intermediate_size.unwrap_or(2880);
        let t = a.tokens_per_rank.unwrap_or(32_768);
        let mut cases = Vec::new();
        let mut sims = Vec::new();
        for s in &a.synthetic {
            let sc: Scenario = s
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--synthetic: {e}"))?;
            cases.push(
                inputs::synthetic_case(sc, a.gpus, t, n, k, d, i)
                    .map_err(|e| anyhow::anyhow!("--synthetic: {e}"))?,
            );
            if a.with_sim.is_some() {
                let tr = inputs::synthetic_trace(sc, a.gpus as u32, t as u32, n, k, d, i);
                sims.push((tr, "synthetic".to_string(), sc.to_string()));
            }
        }
        return Ok(Inputs {
            cases,
            sims,
            dims: (d, i, n, k),
        });
    }
    let Some(path) = &a.trace else {
        bail!("give --trace PATH or --synthetic SCENARIOS");
    };
    let mut tr = read_trace(path, true)?;
    if let Some(d) = a.hidden_size {
        tr.meta.model.hidden_size = d;
    }
    if let Some(i) = a.intermediate_size {
        tr.meta.model.intermediate_size = i;
    }
    let m = &tr.meta.model;
    if !m.has_dims() {
        bail!(
            "{}: the trace has no hidden/intermediate size; give --hidden-size and --intermediate-size",
            path.display()
        );
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let steps: Vec<u32> = if a.steps.is_empty() {
        tr.loads.step_ids.first().copied().into_iter().collect()
    } else {
        a.steps.clone()
    };
    let layers = (!a.layers.is_empty()).then_some(a.layers.as_slice());
    let cases = inputs::trace_cases(
        &tr,
        &name,
        a.gpus,
        a.tokens_per_rank,
        a.seed,
        Some(&steps),
        layers,
    )
    .map_err(|e| anyhow::anyhow!(e))
    .with_context(|| path.display().to_string())?;
    let dims = (m.hidden_size, m.intermediate_size, m.num_experts, m.top_k);
    let sims = if a.with_sim.is_some() {
        vec![(tr.clone(), name, String::new())]
    } else {
        Vec::new()
    };
    Ok(Inputs { cases, sims, dims })
}

/// Simulated rows for the same inputs and settings, keyed like the
/// measured rows (only the (step, layer) pairs that were replayed).
fn simulated(
    a: &ReplayArgs,
    inp: &Inputs,
    prof: &Profile,
    gates: &[Gate],
) -> anyhow::Result<Vec<ResultRow>> {
    let cfg = SimConfig {
        gpus: a.gpus,
        policies: a.policy.clone(),
        gates: gates.to_vec(),
        alphas: a.planner.alphas()?,
        min_gemms: a.planner.min_gemms(),
        profile: prof.clone(),
        tokens_per_rank: if a.synthetic.is_empty() {
            a.tokens_per_rank
        } else {
            None
        },
        seed: a.seed,
        threads: 0,
    };
    let mut out = Vec::new();
    for (tr, name, scen) in &inp.sims {
        let (rows, _) = sim::simulate(tr, name, &cfg)?;
        for mut r in rows {
            if !inp.cases.iter().any(|c| {
                c.base.step == r.step && c.base.layer == r.layer && c.base.scenario == *scen
            }) {
                continue;
            }
            r.scenario = scen.clone();
            if !scen.is_empty() {
                r.input_note = "synthetic".into();
            }
            out.push(r);
        }
    }
    Ok(out)
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}")
    }
}

fn gib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1u64 << 30) as f64)
}

fn render(rows: &[ResultRow]) -> String {
    let mut t = Table::new(&[
        "input",
        "step",
        "layer",
        "policy",
        "source",
        "total ms",
        "p10-p90",
        "overhead",
        "dispatch",
        "transfer",
        "compute",
        "combine",
        "max/mean",
        "loads after",
        "xfers",
        "peak GiB/GPU",
        "driver GiB/GPU",
        "rel err",
        "oom",
    ])
    .left(0)
    .left(3)
    .left(4);
    for r in rows {
        let input = if r.scenario.is_empty() {
            r.trace.clone()
        } else {
            r.scenario.clone()
        };
        let pol = if r.policy == "llep" {
            format!("llep λ={}", gate_label(r.lambda))
        } else {
            r.policy.clone()
        };
        let list = |v: &[u64]| v.iter().map(|&b| gib(b)).collect::<Vec<_>>().join("/");
        t.row(vec![
            input,
            r.step.to_string(),
            r.layer.to_string(),
            pol,
            r.source.clone(),
            ms(r.t_total_ms),
            match (r.t_total_p10_ms, r.t_total_p90_ms) {
                (Some(a), Some(b)) => format!("{a:.2}-{b:.2}"),
                _ => "-".into(),
            },
            ms(r.t_overhead_ms),
            ms(r.t_dispatch_ms),
            ms(r.t_transfer_ms),
            ms(r.t_compute_ms),
            ms(r.t_combine_ms),
            format!("{:.2}", r.imbalance_ratio),
            r.loads_after
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            r.transfers.to_string(),
            list(&r.peak_mem_per_gpu),
            if r.driver_mem_per_gpu.is_empty() {
                "-".into()
            } else {
                list(&r.driver_mem_per_gpu)
            },
            r.rel_error.map_or("-".into(), |e| format!("{e:.1e}")),
            if r.oom { "OOM".into() } else { "".into() },
        ]);
    }
    t.render()
}

pub fn run(a: ReplayArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    if a.policy.is_empty() {
        bail!("--policy: give ep, llep or both");
    }
    if a.policy.contains(&Policy::Ideal) {
        bail!("--policy: the ideal bound has free weight transfers and cannot be replayed; use ep and llep (simulate shows ideal)");
    }
    let alphas = a.planner.alphas()?;
    let mgs = a.planner.min_gemms();
    if alphas.len() != 1 || mgs.len() != 1 {
        bail!("replay takes one --alpha and one --min-gemm");
    }
    let gates = a.planner.gates()?;
    let prof = match &a.with_sim {
        Some(s) => Some(Profile::load(s)?),
        None => None,
    };
    if a.samples == 0 {
        p.warn("--samples 0: outputs are not checked against the dense reference (rel err stays empty)");
    }
    let inp = build_inputs(&a)?;
    let (d, i, n, k) = inp.dims;
    let mut settings = Vec::new();
    for &pol in &a.policy {
        match pol {
            Policy::Llep => settings.extend(gates.iter().map(|&g| (pol, g))),
            _ => settings.push((pol, Gate::Always)),
        }
    }
    let cfg = ReplayConfig {
        gpus: a.gpus,
        hidden: d as usize,
        inter: i as usize,
        experts: n as usize,
        top_k: k as usize,
        act: match a.act {
            ActArg::GptOss => Act::GptOss,
            ActArg::Swiglu => Act::SwiGlu,
        },
        alpha: alphas[0],
        min_gemm: mgs[0],
        settings,
        warmup: a.warmup,
        runs: a.runs,
        seed: a.seed,
        samples: a.samples,
    };
    let launch = match ProcessRank::from_env(|k| std::env::var(k).ok())? {
        Some(pr) => Launch::Process(pr),
        None => Launch::Threads((0..a.gpus).collect()),
    };
    // check the output location before spending GPU time
    if let Some(out) = &a.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                bail!(
                    "--out {}: directory {} does not exist",
                    out.display(),
                    dir.display()
                );
            }
        }
    }
    p.status(&format!(
        "replaying {} case(s) x {} setting(s) on {} GPU(s): D={d} I={i} E={n} k={k}",
        inp.cases.len(),
        cfg.settings.len(),
        a.gpus
    ));
    let progress = |s: &str| p.status(s);
    let Some(mut rows) = replay(&cfg, &inp.cases, &launch, &progress)? else {
        return Ok(ExitCode::SUCCESS); // not the reporting rank
    };
    if let Some(prof) = &prof {
        rows.extend(simulated(&a, &inp, prof, &gates)?);
        rows.sort_by(|x, y| {
            (
                x.scenario.as_str(),
                x.step,
                x.layer,
                x.policy.as_str(),
                x.source.as_str(),
            )
                .cmp(&(
                    y.scenario.as_str(),
                    y.step,
                    y.layer,
                    y.policy.as_str(),
                    y.source.as_str(),
                ))
        });
    }
    if let Some(out) = &a.out {
        let meta_prof = prof
            .clone()
            .unwrap_or_else(|| Profile::load("h200").expect("built-in"));
        let mut meta = results_meta(&meta_prof);
        if prof.is_none() {
            meta.profile = None;
        }
        write_results(out, &rows, &meta)?;
        p.status(&format!("wrote {} rows to {}", rows.len(), out.display()));
    }
    let dev = rows
        .iter()
        .find(|r| r.source == "measured")
        .map(|r| format!("{} x {} ({})", a.gpus, r.device, r.driver))
        .unwrap_or_default();
    p.out(&format!(
        "measured on {dev}; D={d} I={i} E={n} k={k}; {} warm-up + {} timed runs, medians; total = slowest GPU, phases = the GPU whose compute ends last\n\n{}",
        a.warmup,
        a.runs,
        render(&rows)
    ))?;
    Ok(ExitCode::SUCCESS)
}
