//! `llep-trace tune`: sweep lambda (and alpha, m), recommend a setting.

use super::settings::PlannerArgs;
use super::simulate::{run_sweep, EplbArgs, PassArg, PlotRows, SimInputArgs, Sweep};
use super::table::{count, gib, Table};
use super::Printer;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use llep_trace::env;
use llep_trace::plan::{Gate, Policy};
use llep_trace::tune::{fmt_lambda, Objective, TuneAcc, TuneResult};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// The lambda grid `tune` sweeps when --ratio is not given.
const DEFAULT_GRID: &str = "1.0:3.0:0.05";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ObjectiveArg {
    /// Minimise total layer time.
    Time,
    /// Minimise the largest per-GPU peak memory (then time).
    Memory,
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    input: SimInputArgs,
    /// The lambda grid is --ratio (default 1.0:3.0:0.05); "never" (plain EP)
    /// and "always" are always added. --alpha and --min-gemm lists are swept too.
    #[command(flatten)]
    planner: PlannerArgs,
    /// EPLB rows (R from --redundant, default E/8 and E/4) and EPLB+LLEP
    /// are compared with EP, LLEP and llep-auto after the lambda table.
    #[command(flatten)]
    eplb: EplbArgs,
    /// Leave the EPLB comparison out.
    #[arg(long)]
    no_eplb: bool,
    /// What to minimise.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Time)]
    objective: ObjectiveArg,
    /// Only settings whose peak memory per GPU stays under this many GiB.
    #[arg(long, value_name = "GIB")]
    mem_cap: Option<f64>,
    /// Print every lambda of the grid, not only the best per alpha/m and the neighbours.
    #[arg(long)]
    all: bool,
    /// Write the simulated rows of the sweep here (Parquet).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the recommendation as JSON.
    #[arg(long)]
    json: bool,
    /// Also draw speedup and regret against lambda, the recommendation marked
    /// (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub fn run(mut a: TuneArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    a.input.settle()?;
    let grid = a.planner.ratio.as_deref().unwrap_or(DEFAULT_GRID);
    let mut gates = Gate::parse_list(grid).map_err(|e| anyhow::anyhow!("--ratio: {e}"))?;
    gates.retain(|g| *g != Gate::Never); // EP rows stand for "never"
    if !gates.contains(&Gate::Always) {
        gates.push(Gate::Always);
    }
    let alphas = a.planner.alphas()?;
    let min_gemms = a.planner.min_gemms();
    let mem_cap = match a.mem_cap {
        Some(g) if !(g.is_finite() && g > 0.0) => {
            bail!("--mem-cap: {g} is not a positive number of GiB")
        }
        Some(g) => Some((g * (1u64 << 30) as f64) as u64),
        None => None,
    };
    let sweep = Sweep {
        policies: vec![Policy::Ep, Policy::Llep],
        gates: gates.clone(),
        alphas,
        min_gemms,
        eplb: None,
    };
    let mut acc = TuneAcc::default();
    let mut totals = super::tune_eplb::PolicyTotals::default();
    let mut plot_rows = PlotRows::default();
    let want_plot = a.plot.is_some();
    let sim = run_sweep(&a.input, sweep, p, a.out.as_deref(), &mut |r| {
        acc.add(r);
        totals.add(r);
        if want_plot {
            plot_rows.add(r);
        }
    })?;
    let objective = match a.objective {
        ObjectiveArg::Time => Objective::Time,
        ObjectiveArg::Memory => Objective::Memory,
    };
    let t = acc.finish(objective, mem_cap).context("tune")?;
    let best = &t.scored[t.best];
    let train = a.input.pass == super::simulate::PassArg::Train;
    if train && !a.no_eplb {
        p.warn(
            "the EPLB comparison is left out: --pass train is not modelled for eplb (forward only)",
        );
    }
    let eplb = if a.no_eplb || train {
        None
    } else {
        let (alpha, m) = (best.setting.alpha, best.setting.min_gemm);
        let c = super::tune_eplb::compare(
            &a.eplb,
            &sim,
            &totals.at(alpha, m),
            &gates,
            alpha,
            m,
            mem_cap,
            a.input.threads,
            (!best.setting.never).then(|| best.setting.lambda.map_or(Gate::Always, Gate::Ratio)),
            p,
        )?;
        Some((c, alpha, m))
    };
    if let Some(plot) = &a.plot {
        // the plot shows the recommended alpha/m's lambda curve
        let rows: Vec<_> = plot_rows
            .rows
            .iter()
            .filter(|r| {
                r.policy == Policy::Ep
                    || (r.alpha == best.setting.alpha && r.min_gemm == best.setting.min_gemm)
            })
            .cloned()
            .collect();
        llep_trace::report::plot_tune(
            &rows,
            best.setting.lambda.filter(|_| !best.setting.never),
            plot,
        )?;
        p.status(&format!("wrote {}", plot.display()));
    }
    if a.json {
        let obj = json!({
            "trace": sim.trace_name,
            "profile": sim.profile.name,
            "profile_status": sim.profile.label(),
            "measured_error": sim.profile.measured_error,
            "gpus": a.input.gpus,
            "recommended": {
                "lambda": best.setting.lambda, "never": best.setting.never, "alpha": best.setting.alpha, "min_gemm": best.setting.min_gemm,
                "total_ms": best.total_ms, "llep_on": best.llep_on, "layer_steps": best.layer_steps, "peak_mem_max_bytes": best.peak_mem_max_bytes,
            },
            "speedup_vs_ep": t.ep_ms / best.total_ms,
            "speedup_vs_lambda_1_3": t.default_ms.map(|d| d / best.total_ms),
            "exports": exports(&t),
            "eplb": eplb.as_ref().map(|(c, _, _)| super::tune_eplb::to_json(c)),
            "settings": t.scored.iter().map(|s| json!({
                "label": s.setting.label(), "lambda": s.setting.lambda, "never": s.setting.never, "alpha": s.setting.alpha,
                "min_gemm": s.setting.min_gemm, "total_ms": s.total_ms, "regret_pct": s.regret_pct, "llep_on": s.llep_on,
                "peak_mem_max_bytes": s.peak_mem_max_bytes, "feasible": s.feasible,
            })).collect::<Vec<_>>(),
        });
        p.out(&serde_json::to_string_pretty(&obj)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = render(&a, &sim, &t);
    if let Some((c, alpha, m)) = &eplb {
        text.push_str(&super::tune_eplb::render(c, *alpha, *m));
    }
    p.out(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn exports(t: &TuneResult) -> Vec<String> {
    let s = &t.scored[t.best].setting;
    vec![
        format!("export {}={}", env::ROUTING_RATIO, s.env_value()),
        format!("export {}={}", env::MAX_TOKENS_FACTOR, s.alpha),
        format!("export {}={}", env::MIN_TOKENS_PER_GEMM, s.min_gemm),
    ]
}

fn render(a: &TuneArgs, sim: &super::simulate::Simulated, t: &TuneResult) -> String {
    let best = &t.scored[t.best];
    let steps = best.layer_steps;
    let mut s = format!(
        "{} ({}), {} on {} GPUs; per-rank loads: {}\nprofile: {}\n\n",
        sim.trace_name,
        sim.model,
        count(steps as u64, "layer-step"),
        a.input.gpus,
        sim.input_note,
        sim.profile.label()
    );
    if let Some(note) = super::simulate::pass_note(&a.input, &sim.profile) {
        s.insert_str(s.len() - 1, &note);
    }
    let mut tab = Table::new(&[
        "lambda", "alpha", "m", "total ms", "regret", "vs EP", "LLEP on", "peak GiB", "fits",
    ])
    .left(0);
    // rows shown: every setting with --all, else the best per (alpha, m),
    // the grid neighbours of the recommendation, never, always and 1.3
    let near = |i: usize| -> bool {
        let sc = &t.scored[i];
        if a.all
            || i == t.best
            || sc.setting.never
            || sc.setting.lambda.is_none()
            || sc.setting.lambda == Some(env::DEFAULT_RATIO)
        {
            return true;
        }
        let same_am =
            sc.setting.alpha == best.setting.alpha && sc.setting.min_gemm == best.setting.min_gemm;
        match (sc.setting.lambda, best.setting.lambda) {
            (Some(x), Some(b)) if same_am => (x - b).abs() <= 0.101,
            _ => false,
        }
    };
    for (i, sc) in t.scored.iter().enumerate() {
        if !near(i) {
            continue;
        }
        let mark = if i == t.best { " <- recommended" } else { "" };
        tab.row(vec![
            format!("{}{}", sc.setting.label(), mark),
            if sc.setting.never {
                "-".into()
            } else {
                format!("{}", sc.setting.alpha)
            },
            if sc.setting.never {
                "-".into()
            } else {
                sc.setting.min_gemm.to_string()
            },
            format!("{:.2}", sc.total_ms),
            format!("{:+.2}%", sc.regret_pct),
            format!("{:.3}x", t.ep_ms / sc.total_ms),
            format!("{}/{}", sc.llep_on, sc.layer_steps),
            gib(sc.peak_mem_max_bytes),
            if sc.feasible {
                "yes".into()
            } else {
                "no".into()
            },
        ]);
    }
    s.push_str(&tab.render());
    if !a.all {
        s.push_str(&format!(
            "({} settings simulated; --all lists every one)\n",
            t.scored.len()
        ));
    }
    s.push_str(&disagreements(t));
    s.push_str("\nPaste into the shell that launches the model:\n");
    for e in exports(t) {
        s.push_str(&format!("  {e}\n"));
    }
    s.push_str(&format!(
        "Expected on this input with profile {}: {:.3}x faster than plain EP",
        sim.profile.name,
        t.ep_ms / best.total_ms
    ));
    match t.default_ms {
        Some(d) => s.push_str(&format!(
            ", {:.3}x against the reference default lambda {}",
            d / best.total_ms,
            env::DEFAULT_RATIO
        )),
        None => s.push_str(&format!(
            " (lambda {} was not in the grid)",
            env::DEFAULT_RATIO
        )),
    }
    s.push_str(&format!(
        "; LLEP switches on in {} of {}.\n",
        best.llep_on,
        count(best.layer_steps as u64, "layer-step")
    ));
    let chosen: Vec<&llep_trace::sim::Summary> = sim
        .summaries
        .iter()
        .filter(|x| {
            x.policy == Policy::Ep
                || (x.policy == Policy::Llep
                    && !best.setting.never
                    && x.gate.lambda() == best.setting.lambda
                    && x.alpha == best.setting.alpha
                    && x.min_gemm == best.setting.min_gemm)
        })
        .collect();
    s.push_str(&super::simulate::whole_model_memory(sim, &chosen));
    if sim.profile.measured_error.is_none() {
        s.push_str("Note: this profile's error against measurement is not known; treat the gain as an estimate.\n");
    }
    s.push_str(&graphs_hint(a, sim));
    s
}

/// At decode-sized batches, whether the expert GEMMs are issued one by one
/// or launched as CUDA graphs moves where LLEP pays: say which was priced.
fn graphs_hint(a: &TuneArgs, sim: &super::simulate::Simulated) -> String {
    let tokens = sim.summaries.iter().map(|x| x.max_tokens_per_rank).max();
    match tokens {
        Some(t) if t <= DECODE_TOKENS && !sim.profile.cuda_graphs && a.input.pass == PassArg::Forward => format!(
            "Priced with each expert GEMM issued from the host, as the reference layer does. At {t} tokens per GPU, an engine that launches its expert compute as CUDA graphs or grouped kernels runs the layer up to 38% faster on H200, and LLEP's extra units cost it less: for such an engine, add --cuda-graphs on.\n"
        ),
        _ => String::new(),
    }
}

/// Batches up to this many tokens per GPU are decode-sized: there, launching
/// the expert units as CUDA graphs changed layer times by 5-38% on H200
/// (reports/accuracy/session7).
const DECODE_TOKENS: u64 = 2048;

/// Where several lambdas tie, and where layers prefer another lambda.
fn disagreements(t: &TuneResult) -> String {
    let best = &t.scored[t.best];
    let mut s = String::new();
    if t.tied.len() > 1 {
        let same_am = |i: &usize| {
            t.scored[*i].setting.alpha == best.setting.alpha
                && t.scored[*i].setting.min_gemm == best.setting.min_gemm
        };
        let ls: Vec<f64> = t
            .tied
            .iter()
            .filter(|i| same_am(i))
            .filter_map(|&i| t.scored[i].setting.lambda)
            .collect();
        if let (Some(lo), Some(hi)) = (
            ls.iter().cloned().reduce(f64::min),
            ls.iter().cloned().reduce(f64::max),
        ) {
            if hi > lo {
                s.push_str(&format!(
                    "every lambda in [{}, {}] is equally good on this input; the middle one is recommended\n",
                    fmt_lambda(lo),
                    fmt_lambda(hi)
                ));
            }
        }
    }
    if !t.layers.is_empty() {
        s.push_str(&format!(
            "\n{} layers prefer another lambda (at alpha {}, m {}); what the recommendation costs there:\n",
            t.layers.len(),
            best.setting.alpha,
            best.setting.min_gemm
        ));
        let mut lt = Table::new(&["layer", "best lambda", "ms", "recommended costs"]);
        for l in &t.layers {
            lt.row(vec![
                l.layer.to_string(),
                l.best.label(),
                format!("{:.2}", l.best_ms),
                format!("{:+.2}%", l.chosen_regret_pct),
            ]);
        }
        s.push_str(&lt.render());
    }
    s
}
