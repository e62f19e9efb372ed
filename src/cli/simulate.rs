//! `llep-trace simulate`: EP against LLEP (and the ideal bound) over a trace.

use super::settings::{default_trace, gate_label, PlannerArgs};
use super::table::{gib, Table};
use super::Printer;
use anyhow::{bail, Context};
use clap::Args;
use llep_trace::plan::Policy;
use llep_trace::results::{write_results, ResultRow, ResultsMeta};
use llep_trace::sim::{self, summarize, Gate, Profile, SimConfig, Summary};
use llep_trace::trace::synthetic::{parse_scenarios, scenario_trace, SyntheticShape};
use llep_trace::trace::{meta::command_line, meta::tool_version, read_trace, Trace};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// What to simulate on, shared by `simulate` and `tune`.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Trace to simulate (default: the bundled OLMoE-1B-7B trace).
    #[arg(long, conflicts_with = "synthetic")]
    pub trace: Option<PathBuf>,
    /// Instead of a trace, the reference's synthetic scenarios, e.g.
    /// balanced,30:4,50:4,80:4,95:4,95:1 (shape from --experts, --top-k,
    /// --hidden-size, --intermediate-size, --tokens-per-rank; default the
    /// gpt-oss-120b layer with 32768 tokens per GPU).
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Experts of a synthetic run.
    #[arg(long, default_value_t = 128)]
    pub experts: u32,
    /// Top-k of a synthetic run.
    #[arg(long, default_value_t = 4)]
    pub top_k: u32,
    /// EP ranks (GPUs).
    #[arg(long, default_value_t = 8)]
    pub gpus: usize,
    /// Hardware profile: h100, h200, or a profile JSON file.
    #[arg(long, default_value = "h200")]
    pub profile: String,
    /// Tokens per rank per step: rescales load-level counts, resamples
    /// whole sequences of token-level traces (seeded).
    #[arg(long)]
    pub tokens_per_rank: Option<u64>,
    /// Seed for resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the trace's hidden size D.
    #[arg(long)]
    pub hidden_size: Option<u32>,
    /// Override the trace's expert intermediate size I.
    #[arg(long)]
    pub intermediate_size: Option<u32>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Only these step ids of the trace (default: all).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<u32>,
    /// Only these layer ids of the trace (default: all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<u32>,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Policies to simulate, comma separated: ep, llep, ideal.
    #[arg(long, value_delimiter = ',', default_value = "ep,llep,ideal")]
    pub policy: Vec<Policy>,
    #[command(flatten)]
    pub planner: PlannerArgs,
    /// Write one row per (step, layer, policy, ratio, alpha, m) here (Parquet).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw the key plot, speedup over EP against lambda (.png or .svg);
    /// give a list or range to --ratio for a curve.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Planner settings to sweep.
pub struct Sweep {
    pub policies: Vec<Policy>,
    pub gates: Vec<Gate>,
    pub alphas: Vec<f64>,
    pub min_gemms: Vec<u64>,
}

pub struct Simulated {
    pub rows: Vec<ResultRow>,
    pub summaries: Vec<Summary>,
    pub profile: Profile,
    pub trace_name: String,
    pub input_note: String,
    pub model: String,
}

/// The inputs a simulate-like command runs on: one trace, or one synthetic
/// trace per scenario. Each comes as (trace name, scenario, trace).
pub fn load_inputs(a: &InputArgs) -> anyhow::Result<Vec<(String, String, Trace)>> {
    if let Some(spec) = &a.synthetic {
        let shape = SyntheticShape {
            experts: a.experts,
            top_k: a.top_k,
            hidden_size: a
                .hidden_size
                .unwrap_or(SyntheticShape::GPT_OSS_120B.hidden_size),
            intermediate_size: a
                .intermediate_size
                .unwrap_or(SyntheticShape::GPT_OSS_120B.intermediate_size),
        };
        let tokens = a.tokens_per_rank.unwrap_or(32768);
        return parse_scenarios(spec)
            .map_err(|e| anyhow::anyhow!("--synthetic: {e}"))?
            .into_iter()
            .map(|s| {
                let t = scenario_trace(s, a.gpus as u32, tokens, shape)
                    .map_err(|e| anyhow::anyhow!("--synthetic: {e}"))?;
                Ok(("synthetic".to_string(), s.to_string(), t))
            })
            .collect();
    }
    let path = a.trace.clone().unwrap_or_else(default_trace);
    let mut trace = read_trace(&path, true)?;
    if let Some(d) = a.hidden_size {
        trace.meta.model.hidden_size = d;
    }
    if let Some(i) = a.intermediate_size {
        trace.meta.model.intermediate_size = i;
    }
    if !a.steps.is_empty() || !a.layers.is_empty() {
        trace.loads = trace.loads.select(&a.steps, &a.layers).with_context(|| {
            format!(
                "{}: no such steps {:?} / layers {:?} (it has steps {:?}, layers {:?})",
                path.display(),
                a.steps,
                a.layers,
                trace.loads.step_ids,
                trace.loads.layer_ids
            )
        })?;
        if let Some(t) = trace.tokens.as_mut() {
            let keep: Vec<usize> = (0..t.len())
                .filter(|&i| {
                    (a.steps.is_empty() || a.steps.contains(&t.step[i]))
                        && (a.layers.is_empty() || a.layers.contains(&t.layer[i]))
                })
                .collect();
            let mut sub = llep_trace::trace::TokenTrace::new(t.top_k);
            let k = t.top_k;
            for i in keep {
                sub.push(
                    t.step[i],
                    t.layer[i],
                    t.rank[i],
                    t.token[i],
                    t.sequence[i],
                    &t.experts[i * k..(i + 1) * k],
                    &t.weights[i * k..(i + 1) * k],
                );
            }
            *t = sub;
        }
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(vec![(name, String::new(), trace)])
}

/// Read the inputs and simulate the sweep (shared with `tune`).
pub fn run_sweep(a: &InputArgs, sweep: Sweep, p: &Printer) -> anyhow::Result<Simulated> {
    if a.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    if sweep.policies.is_empty() {
        bail!("--policy: give at least one of ep, llep, ideal");
    }
    if a.tokens_per_rank == Some(0) {
        bail!("--tokens-per-rank must be at least 1");
    }
    let profile = Profile::load(&a.profile)?;
    let inputs = load_inputs(a)?;
    let cfg = SimConfig {
        gpus: a.gpus,
        policies: sweep.policies,
        gates: sweep.gates,
        alphas: sweep.alphas,
        min_gemms: sweep.min_gemms,
        profile: profile.clone(),
        // synthetic traces are generated at their size already
        tokens_per_rank: if a.synthetic.is_some() {
            None
        } else {
            a.tokens_per_rank
        },
        seed: a.seed,
        threads: a.threads,
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut models = Vec::new();
    for (name, scenario, trace) in &inputs {
        let what = if scenario.is_empty() {
            name.clone()
        } else {
            format!("synthetic {scenario}")
        };
        p.status(&format!(
            "simulating {what} on {} GPUs with profile {}",
            a.gpus,
            profile.label()
        ));
        let pb = llep_trace::progress::bar(trace.loads.layer_steps() as u64, "simulate", p.quiet);
        let (mut r, note) =
            sim::simulate_with_progress(trace, name, &cfg, &pb).with_context(|| what.clone())?;
        pb.finish_and_clear();
        for row in &mut r {
            row.scenario = scenario.clone();
        }
        rows.extend(r);
        if !notes.contains(&note) {
            notes.push(note);
        }
        if !models.contains(&trace.meta.model.name) {
            models.push(trace.meta.model.name.clone());
        }
    }
    let trace_name = match &a.synthetic {
        Some(spec) => format!(
            "synthetic {spec} ({} tokens/rank)",
            a.tokens_per_rank.unwrap_or(32768)
        ),
        None => inputs[0].0.clone(),
    };
    let summaries = summarize(&rows);
    Ok(Simulated {
        rows,
        summaries,
        profile,
        trace_name,
        input_note: notes.join("; "),
        model: models.join(", "),
    })
}

/// Write the simulated rows to `out` (Parquet), when asked.
pub fn write_rows(
    out: Option<&std::path::Path>,
    sim: &Simulated,
    p: &Printer,
) -> anyhow::Result<()> {
    if let Some(out) = out {
        write_results(out, &sim.rows, &results_meta(&sim.profile))?;
        p.status(&format!(
            "wrote {} rows to {}",
            sim.rows.len(),
            out.display()
        ));
    }
    Ok(())
}

pub fn results_meta(profile: &Profile) -> ResultsMeta {
    ResultsMeta {
        schema_version: llep_trace::results::SCHEMA_VERSION,
        command: command_line(),
        tool_version: tool_version(),
        profile: serde_json::to_value(profile).ok().map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("raw");
            }
            v
        }),
        created: String::new(),
    }
}

fn policy_label(s: &Summary) -> String {
    match s.policy.as_str() {
        "llep" => format!("llep λ={}", gate_label(s.lambda)),
        other => other.to_string(),
    }
}

pub fn summary_table(sims: &[Summary], show_am: bool) -> String {
    let show_sc = sims.iter().any(|s| !s.scenario.is_empty());
    let mut head = vec![];
    if show_sc {
        head.push("scenario");
    }
    head.push("policy");
    if show_am {
        head.extend(["alpha", "m"]);
    }
    head.extend([
        "total ms",
        "vs EP",
        "max/mean before",
        "after",
        "LLEP on",
        "peak GiB",
        "OOM",
        "transfers",
        "dup",
    ]);
    let mut t = Table::new(&head).left(0);
    if show_sc {
        t = t.left(1);
    }
    for s in sims {
        let mut r = vec![];
        if show_sc {
            r.push(s.scenario.clone());
        }
        r.push(policy_label(s));
        if show_am {
            r.push(format!("{}", s.alpha));
            r.push(s.min_gemm.to_string());
        }
        r.extend([
            format!("{:.2}", s.total_ms),
            if s.speedup_vs_ep.is_nan() {
                "-".into()
            } else {
                format!("{:.2}x", s.speedup_vs_ep)
            },
            format!("{:.2}", s.mean_ratio_before),
            format!("{:.2}", s.mean_ratio_after),
            if s.policy == "llep" {
                format!("{}/{}", s.llep_on, s.layer_steps)
            } else {
                "-".into()
            },
            gib(s.peak_mem_max_bytes),
            s.oom_rows.to_string(),
            s.transfers.to_string(),
            s.duplicates.to_string(),
        ]);
        t.row(r);
    }
    t.render()
}

pub fn run(a: SimulateArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    let sweep = Sweep {
        policies: a.policy.clone(),
        gates: a.planner.gates()?,
        alphas: a.planner.alphas()?,
        min_gemms: a.planner.min_gemms(),
    };
    let sim = run_sweep(&a.input, sweep, p)?;
    if let Some(plot) = &a.plot {
        llep_trace::report::plot_speedup_vs_lambda(&sim.rows, plot)?;
        p.status(&format!("wrote {}", plot.display()));
    }
    write_rows(a.out.as_deref(), &sim, p)?;
    let layer_steps = sim.summaries.first().map_or(0, |s| s.layer_steps);
    if a.json {
        let summ: Vec<_> = sim
            .summaries
            .iter()
            .map(|s| {
                json!({
                    "scenario": s.scenario, "policy": s.policy, "lambda": s.lambda, "alpha": s.alpha, "min_gemm": s.min_gemm,
                    "layer_steps": s.layer_steps, "total_ms": s.total_ms,
                    "speedup_vs_ep": if s.speedup_vs_ep.is_nan() { None } else { Some(s.speedup_vs_ep) },
                    "mean_ratio_before": s.mean_ratio_before, "mean_ratio_after": s.mean_ratio_after,
                    "llep_on": s.llep_on, "peak_mem_max_bytes": s.peak_mem_max_bytes, "oom_rows": s.oom_rows,
                    "transfers": s.transfers, "duplicate_transfers": s.duplicates,
                    "phases_ms": {"overhead": s.phases_ms[0], "dispatch": s.phases_ms[1], "transfer": s.phases_ms[2], "compute": s.phases_ms[3], "combine": s.phases_ms[4]},
                })
            })
            .collect();
        let obj = json!({
            "trace": sim.trace_name, "model": sim.model, "gpus": a.input.gpus, "input": sim.input_note,
            "profile": sim.profile.name, "profile_status": sim.profile.label(),
            "measured_error": sim.profile.measured_error, "summary": summ,
        });
        p.out(&serde_json::to_string_pretty(&obj)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let show_am = a.planner.alpha.len() > 1 || a.planner.min_gemm.len() > 1;
    let mut s = format!(
        "{} ({}), {} layer-steps on {} GPUs; per-rank loads: {}\nprofile: {}\n\n",
        sim.trace_name,
        sim.model,
        layer_steps,
        a.input.gpus,
        sim.input_note,
        sim.profile.label()
    );
    s.push_str(&summary_table(&sim.summaries, show_am));
    s.push_str("\ntotal ms: simulated layer time summed over all layer-steps; max/mean: GPU load imbalance, mean over layer-steps\n");
    p.out(&s)?;
    Ok(ExitCode::SUCCESS)
}
