//! `llep-trace plan`: the planner from the command line.

use super::settings::{gate_label, parse_counts, PlannerArgs};
use super::table::Table;
use super::Printer;
use anyhow::bail;
use clap::Args;
use llep_trace::plan::{PlanParams, Planner, Policy};
use serde_json::json;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Global token-copies per expert for one layer, comma separated.
    #[arg(long, required = true)]
    counts: String,
    /// EP ranks (GPUs); the number of experts must be a multiple of it.
    #[arg(long, default_value_t = 8)]
    gpus: usize,
    /// Policy: llep (the reference planner), ep or ideal.
    #[arg(long, default_value = "llep")]
    policy: Policy,
    #[command(flatten)]
    planner: PlannerArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PlanArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    let counts = parse_counts(&a.counts, "--counts")?;
    if counts.is_empty() {
        bail!("--counts: no counts given");
    }
    let gates = a.planner.gates()?;
    let alphas = a.planner.alphas()?;
    let mins = a.planner.min_gemms();
    if gates.len() != 1 || alphas.len() != 1 || mins.len() != 1 {
        bail!("plan takes one --ratio, --alpha and --min-gemm (use `simulate` or `tune` to sweep)");
    }
    let params = PlanParams {
        gpus: a.gpus,
        alpha: alphas[0],
        min_gemm: mins[0],
        lambda: gates[0].lambda(),
    };
    let plan = Planner::new().plan(&counts, &params, a.policy)?;
    if a.json {
        let mut entries = serde_json::Map::new();
        for (e, ranges) in plan.in_visit_order() {
            entries.insert(
                e.to_string(),
                json!(ranges
                    .iter()
                    .map(|r| [r.gpu as u64, r.start, r.end])
                    .collect::<Vec<_>>()),
            );
        }
        let transfers: Vec<_> = plan
            .transfers
            .iter()
            .map(|t| [t.expert as u64, t.src as u64, t.dst as u64, t.start, t.end])
            .collect();
        let obj = json!({
            "policy": a.policy.as_str(),
            "gpus": a.gpus,
            "alpha": params.alpha,
            "min_gemm": params.min_gemm,
            "lambda": params.lambda,
            "use_llep": plan.use_llep,
            "imbalance_ratio": plan.imbalance_ratio,
            "capacity": plan.capacity,
            "plan": entries,
            "transfers": transfers,
            "gpu_loads": plan.gpu_loads,
            "native_loads": plan.native_loads,
            "duplicate_transfers": plan.duplicate_transfers,
        });
        p.out(&serde_json::to_string(&obj)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut s = format!(
        "policy {}  gpus {}  alpha {}  m {}  lambda {}\nimbalance max/mean {:.4}  capacity {}  -> {}\n\n",
        a.policy,
        a.gpus,
        params.alpha,
        params.min_gemm,
        gate_label(params.lambda),
        plan.imbalance_ratio,
        plan.capacity,
        if plan.use_llep { "LLEP plans this layer" } else { "plain EP (below the gate)" }
    );
    let mut t = Table::new(&["gpu", "native load", "assigned load", "experts computed"]);
    for g in 0..a.gpus {
        let groups = if !plan.use_llep {
            counts
                .chunks(counts.len() / a.gpus)
                .nth(g)
                .map_or(0, |c| c.iter().filter(|&&x| x > 0).count())
        } else {
            plan.iter()
                .flat_map(|(_, rs)| rs)
                .filter(|r| r.gpu as usize == g)
                .count()
        };
        t.row(vec![
            g.to_string(),
            plan.native_loads[g].to_string(),
            plan.gpu_loads[g].to_string(),
            groups.to_string(),
        ]);
    }
    s.push_str(&t.render());
    if !plan.transfers.is_empty() {
        s.push_str(&format!(
            "\n{} weight transfers ({} duplicate):\n",
            plan.transfers.len(),
            plan.duplicate_transfers
        ));
        let mut t = Table::new(&["expert", "from", "to", "tokens"]);
        for x in &plan.transfers {
            t.row(vec![
                x.expert.to_string(),
                x.src.to_string(),
                x.dst.to_string(),
                format!("[{}, {})", x.start, x.end),
            ]);
        }
        s.push_str(&t.render());
    }
    p.out(&s)?;
    Ok(ExitCode::SUCCESS)
}
