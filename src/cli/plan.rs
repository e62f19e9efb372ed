//! `llep-trace plan`: the planners from the command line, for one layer.
//!
//! `ep`, `llep` and `ideal` run the one planner (`plan::Planner`) once per
//! combination of the given lambdas, alphas and minimum GEMM sizes; `eplb`
//! runs DeepSeek's EPLB placement (`plan::eplb`), which has none of those
//! knobs but takes GPUs, redundant experts, nodes and expert groups.
//! With `--nodes` (or `--topology NxG`) the planner's policies mark the
//! weight transfers that cross nodes, and `llep-topo` plans node-first.

use super::settings::{parse_counts, PlannerArgs};
use super::table::Table;
use super::Printer;
use anyhow::{bail, Context};
use clap::Args;
use llep_trace::plan::eplb::{self, EplbParams, EplbPlacement};
use llep_trace::plan::topo::{cross_node_transfers, TopoError, TopoPlanner, Topology};
use llep_trace::plan::{Gate, Plan, PlanParams, Planner, Policy};
use llep_trace::sim::{CostArbiter, Profile, Shape};
use serde_json::json;
use std::process::ExitCode;
use std::str::FromStr;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Global token-copies per expert for one layer, comma separated
    /// (for eplb: loads, which may be fractional, e.g. window averages).
    #[arg(long, required = true)]
    counts: String,
    /// EP ranks (GPUs); the number of experts must be a multiple of it
    /// (for eplb: the experts plus --redundant).
    #[arg(long, default_value_t = 8, allow_negative_numbers = true,
          value_parser = positive())]
    gpus: usize,
    /// Policy: llep (the reference planner), ep, ideal, llep-topo (llep,
    /// spilling within a node first; see --nodes), or eplb (DeepSeek's
    /// expert-parallelism load balancer: replicas and their placement).
    #[arg(long, default_value = "llep")]
    policy: PlanPolicy,
    /// eplb: redundant physical experts beyond one per expert (default 0);
    /// experts + redundant must be a multiple of --gpus.
    #[arg(long, allow_negative_numbers = true, value_parser = non_negative())]
    redundant: Option<usize>,
    /// Server nodes, the GPUs split evenly over them; must divide --gpus
    /// (default 1). eplb places by node; the other policies mark the
    /// transfers that cross nodes; llep-topo spills within a node first.
    #[arg(long, allow_negative_numbers = true, value_parser = positive())]
    nodes: Option<usize>,
    /// N nodes of G GPUs each, e.g. 4x8 (instead of --nodes; N x G must be
    /// --gpus).
    #[arg(long, value_name = "NxG")]
    topology: Option<String>,
    /// eplb: expert groups; must divide the number of experts (default 1).
    /// A multiple of --nodes (other than one group on one node) selects
    /// EPLB's hierarchical policy, anything else its global one.
    #[arg(long, allow_negative_numbers = true, value_parser = positive())]
    groups: Option<usize>,
    #[command(flatten)]
    planner: PlannerArgs,
    /// llep-auto (--ratio auto): the expert shape D the cost model prices
    /// the two plans with.
    #[arg(long)]
    hidden_size: Option<u32>,
    /// llep-auto: the expert intermediate size I.
    #[arg(long)]
    intermediate_size: Option<u32>,
    /// llep-auto: the hardware profile (h100, h200 or a JSON file).
    #[arg(long, default_value = "h200")]
    profile: String,
    /// llep-auto: price the layer with its expert units launched as CUDA
    /// graphs (as `simulate --cuda-graphs on`), or issued one by one.
    #[arg(long, value_enum, default_value = "off")]
    cuda_graphs: super::replay::OnOff,
    /// llep-auto: price the exchange through NCCL or the copy engines (as
    /// `simulate --exchange`).
    #[arg(long, value_enum, default_value = "nccl")]
    exchange: super::replay::ExchangeArg,
    /// llep-auto: price the expert GEMMs through lt or fused (as
    /// `simulate --gemm`).
    #[arg(long, default_value = "lt", value_parser = super::simulate::parse_gemm)]
    gemm: llep_trace::gpu::GemmImpl,
    /// Print JSON instead of a table: one object, or a list of objects when
    /// several lambdas, alphas or minimum GEMM sizes are given.
    #[arg(long)]
    json: bool,
}

/// `--policy`: the simulator's policies plus EPLB, which only `plan` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlanPolicy {
    Planner(Policy),
    Eplb,
}

impl FromStr for PlanPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("eplb") {
            return Ok(PlanPolicy::Eplb);
        }
        if s.trim().eq_ignore_ascii_case("eplb+llep") {
            return Err("eplb+llep is simulated only (simulate --policy eplb+llep); plan takes ep, llep, ideal or eplb".into());
        }
        Policy::from_str(s).map(PlanPolicy::Planner).map_err(|_| {
            format!(
                "unknown policy '{}' (expected ep, llep, llep-topo, ideal or eplb)",
                s.trim()
            )
        })
    }
}

/// A clap value parser for an integer >= `min`, with one clear message
/// (negative numbers included, which clap would otherwise read as flags).
fn int_at_least(
    min: usize,
    what: &'static str,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| match s.trim().parse::<usize>() {
        Ok(v) if v >= min => Ok(v),
        _ => Err(format!("must be a {what}")),
    }
}

fn positive() -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    int_at_least(1, "positive integer")
}

fn non_negative() -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    int_at_least(0, "non-negative integer")
}

pub fn run(a: PlanArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    match a.policy {
        PlanPolicy::Eplb => run_eplb(&a, p),
        PlanPolicy::Planner(policy) => run_planner(&a, policy, p),
    }
}

/// The topology of `--nodes` / `--topology` over `--gpus`; `None` when
/// neither is given.
fn topology(a: &PlanArgs) -> anyhow::Result<Option<Topology>> {
    Ok(match (&a.topology, a.nodes) {
        (Some(_), Some(_)) => bail!("give --nodes or --topology, not both"),
        (Some(spec), None) => {
            let t: Topology = spec.parse()?;
            if t.gpus() != a.gpus {
                return Err(TopoError::Mismatch {
                    nodes: t.nodes,
                    per: t.gpus_per_node,
                    gpus: a.gpus,
                }
                .into());
            }
            Some(t)
        }
        (None, Some(n)) => Some(Topology::new(a.gpus, n)?),
        (None, None) => None,
    })
}

fn run_planner(a: &PlanArgs, policy: Policy, p: &Printer) -> anyhow::Result<ExitCode> {
    if a.redundant.is_some() || a.groups.is_some() {
        bail!("--redundant and --groups apply to --policy eplb only");
    }
    let topo = topology(a)?;
    let counts = parse_counts(&a.counts, "--counts")?;
    if counts.is_empty() {
        bail!("--counts: no counts given");
    }
    let gates = a.planner.gates(p)?;
    let alphas = a.planner.alphas()?;
    let mins = a.planner.min_gemms();
    let mut planner = Planner::new();
    let mut topo_planner = TopoPlanner::new();
    let mut objects = Vec::new();
    let mut sections = Vec::new();
    let judge = (policy == Policy::LlepAuto || gates.contains(&Gate::Auto))
        .then(|| auto_judge(a, &counts, p))
        .transpose()?;
    for gate in &gates {
        let (policy, gate) = match (policy, *gate) {
            (Policy::Llep, Gate::Auto) | (Policy::LlepAuto, _) => (Policy::LlepAuto, Gate::Auto),
            other => other,
        };
        for &alpha in &alphas {
            for &min_gemm in &mins {
                let params = PlanParams {
                    gpus: a.gpus,
                    alpha,
                    min_gemm,
                    gate,
                };
                let mut plan = match topo {
                    Some(t) if policy == Policy::LlepTopo => {
                        let mut plan = Plan::default();
                        topo_planner.plan_into(&counts, &params, t, &mut plan)?;
                        plan
                    }
                    _ => planner.plan(&counts, &params, policy)?,
                };
                let mut verdict = None;
                if let (Policy::LlepAuto, Some(j)) = (policy, &judge) {
                    let ep = planner.plan(&counts, &params, Policy::Ep)?;
                    let (ep_ms, llep_ms, use_llep) = j.decide(&ep, &plan);
                    verdict = Some(format!(
                        "cost-aware gate: predicted EP {ep_ms:.3} ms, LLEP {llep_ms:.3} ms (profile {}, margin {:.1}%) -> {}\n",
                        j.arbiter.profile.name,
                        j.margin(&ep) * 100.0,
                        if use_llep { "LLEP" } else { "plain EP" }
                    ));
                    if !use_llep {
                        plan = ep;
                    }
                }
                if a.json {
                    objects.push(plan_json(&plan, &params, policy, topo));
                } else {
                    let mut t = plan_table(&plan, &params, policy, &counts, topo);
                    if let Some(v) = verdict {
                        let at = t.find('\n').map_or(t.len(), |i| i + 1);
                        t.insert_str(at, &v);
                    }
                    sections.push(t);
                }
            }
        }
    }
    if a.json {
        let out = match <[_; 1]>::try_from(objects) {
            Ok([one]) => one,
            Err(many) => serde_json::Value::Array(many),
        };
        p.out(&serde_json::to_string(&out)?)?;
    } else {
        p.out(&sections.join("\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The cost model that decides `llep-auto` for one layer of counts, split
/// evenly over the ranks (as `simulate` splits load-level counts).
struct AutoJudge {
    arbiter: CostArbiter,
    per_rank: Vec<u64>,
}

impl AutoJudge {
    /// (EP ms, LLEP ms, use LLEP) by the same rule as simulate and replay.
    fn decide(&self, ep: &Plan, llep: &Plan) -> (f64, f64, bool) {
        self.arbiter.decide(ep, llep, &self.per_rank, &ep.counts)
    }

    /// The gate's margin at this layer's batch size.
    fn margin(&self, ep: &Plan) -> f64 {
        let t = self.arbiter.tokens_per_gpu(ep, &self.per_rank);
        llep_trace::sim::auto_margin_at(&self.arbiter.profile, t)
    }
}

fn auto_judge(a: &PlanArgs, counts: &[u64], p: &Printer) -> anyhow::Result<AutoJudge> {
    let (Some(d), Some(i)) = (a.hidden_size, a.intermediate_size) else {
        bail!("llep-auto (--ratio auto) prices both plans with the cost model: give --hidden-size and --intermediate-size (and --profile)");
    };
    let mut profile = Profile::load(&a.profile)?;
    profile.cuda_graphs = a.cuda_graphs == super::replay::OnOff::On;
    profile.exchange = a.exchange.into();
    super::simulate::set_gemm(&mut profile, a.gemm, p);
    super::simulate::check_exchange(&profile)?;
    let g = a.gpus as u64;
    let n = counts.len();
    let mut per_rank = vec![0u64; a.gpus * n];
    for (e, &c) in counts.iter().enumerate() {
        for r in 0..a.gpus {
            per_rank[r * n + e] = c / g + u64::from((r as u64) < c % g);
        }
    }
    let shape = Shape::bf16(d as u64, i as u64, 1);
    Ok(AutoJudge {
        arbiter: CostArbiter { shape, profile },
        per_rank,
    })
}

fn plan_json(
    plan: &Plan,
    params: &PlanParams,
    policy: Policy,
    topo: Option<Topology>,
) -> serde_json::Value {
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
    let mut o = json!({
        "policy": policy.as_str(),
        "gpus": params.gpus,
        "alpha": params.alpha,
        "min_gemm": params.min_gemm,
        "lambda": params.gate.lambda(),
        "use_llep": plan.use_llep,
        "imbalance_ratio": plan.imbalance_ratio,
        "capacity": plan.capacity,
        "plan": entries,
        "transfers": transfers,
        "gpu_loads": plan.gpu_loads,
        "native_loads": plan.native_loads,
        "duplicate_transfers": plan.duplicate_transfers,
    });
    // topology fields only when given, so the one-node output is unchanged
    if let Some(t) = topo {
        o["nodes"] = json!(t.nodes);
        o["cross_node_transfers"] = json!(cross_node_transfers(plan, t));
        o["transfer_crosses_node"] = json!(plan
            .transfers
            .iter()
            .map(|x| t.node_of(x.src as usize) != t.node_of(x.dst as usize))
            .collect::<Vec<_>>());
    }
    o
}

fn plan_table(
    plan: &Plan,
    params: &PlanParams,
    policy: Policy,
    counts: &[u64],
    topo: Option<Topology>,
) -> String {
    let gpus = params.gpus;
    let mut s = format!(
        "policy {}  gpus {}  alpha {}  m {}  lambda {}",
        policy, gpus, params.alpha, params.min_gemm, params.gate,
    );
    if let Some(t) = topo {
        s.push_str(&format!("  nodes {} ({t})", t.nodes));
    }
    s.push('\n');
    if counts.iter().all(|&c| c == 0) {
        s.push_str("no token-copies: nothing to plan\n");
        return s;
    }
    s.push_str(&format!(
        "imbalance max/mean {:.4}  capacity {}  -> {}\n\n",
        plan.imbalance_ratio,
        plan.capacity,
        match (plan.use_llep, policy) {
            (true, _) => "LLEP plans this layer",
            (false, Policy::LlepAuto) => "plain EP (the cost model predicts no gain)",
            (false, _) => "plain EP (below the gate)",
        }
    ));
    let mut t = Table::new(&["gpu", "native load", "assigned load", "experts computed"]);
    for g in 0..gpus {
        let groups = if !plan.use_llep {
            counts
                .chunks(counts.len() / gpus)
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
            "\n{} weight transfers ({} duplicate",
            plan.transfers.len(),
            plan.duplicate_transfers
        ));
        if let Some(t) = topo {
            s.push_str(&format!(", {} across nodes", cross_node_transfers(plan, t)));
        }
        s.push_str("):\n");
        let mut head = vec!["expert", "from", "to", "tokens"];
        if topo.is_some() {
            head.push("nodes");
        }
        let mut t = Table::new(&head);
        for x in &plan.transfers {
            let mut row = vec![
                x.expert.to_string(),
                x.src.to_string(),
                x.dst.to_string(),
                format!("[{}, {})", x.start, x.end),
            ];
            if let Some(tp) = topo {
                let (a, b) = (tp.node_of(x.src as usize), tp.node_of(x.dst as usize));
                row.push(if a == b {
                    format!("{a}")
                } else {
                    format!("{a} -> {b} CROSS")
                });
            }
            t.row(row);
        }
        s.push_str(&t.render());
    }
    s
}

/// Loads for EPLB: non-negative finite numbers, fractional allowed.
fn parse_loads(spec: &str) -> anyhow::Result<Vec<f64>> {
    let items: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        bail!("--counts: no counts given");
    }
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v: f64 = s
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .with_context(|| {
                    format!("--counts: item {} ('{s}') is not a finite number", i + 1)
                })?;
            if v < 0.0 {
                bail!("--counts: item {} ('{s}') is negative", i + 1);
            }
            Ok(v)
        })
        .collect()
}

fn run_eplb(a: &PlanArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    let pa = &a.planner;
    if pa.ratio.is_some() || !pa.alpha.is_empty() || !pa.min_gemm.is_empty() {
        bail!("--ratio, --alpha and --min-gemm do not apply to --policy eplb (it has no gate, capacity or GEMM minimum)");
    }
    let loads = parse_loads(&a.counts)?;
    let params = EplbParams {
        gpus: a.gpus,
        redundant: a.redundant.unwrap_or(0),
        // eplb checks --nodes itself; --topology is read here
        nodes: match &a.topology {
            Some(_) => topology(a)?.map_or(1, |t| t.nodes),
            None => a.nodes.unwrap_or(1),
        },
        groups: a.groups.unwrap_or(1),
        ..EplbParams::new(a.gpus, 0)
    };
    let pl = eplb::rebalance(&loads, &params)?;
    if a.json {
        let obj = json!({
            "policy": "eplb",
            "mode": pl.policy.as_str(),
            "gpus": params.gpus,
            "nodes": params.nodes,
            "groups": params.groups,
            "redundant": params.redundant,
            "phy2log": pl.phy2log,
            "log2phy": pl.log2phy,
            "logcnt": pl.logcnt,
            "gpu_loads": pl.gpu_loads,
            "max_gpu_load": pl.max_gpu_load(),
            "sort_ties": pl.sort_ties,
        });
        p.out(&serde_json::to_string(&obj)?)?;
    } else {
        p.out(&eplb_table(&loads, &params, &pl))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn eplb_table(loads: &[f64], params: &EplbParams, pl: &EplbPlacement) -> String {
    let gpus = params.gpus;
    let mut s = format!(
        "policy eplb ({})  gpus {}  nodes {}  groups {}  experts {}  redundant {}\n",
        pl.policy.as_str(),
        gpus,
        params.nodes,
        params.groups,
        loads.len(),
        params.redundant
    );
    let total: f64 = loads.iter().sum();
    if total == 0.0 {
        s.push_str("all loads are 0: any placement is balanced\n");
    }
    let mean = pl.gpu_loads.iter().map(|&x| x as f64).sum::<f64>() / gpus as f64;
    let ratio = |max: f64| if mean > 0.0 { max / mean } else { 1.0 };
    s.push_str(&format!(
        "GPU load max {}  max/mean {:.4}",
        pl.max_gpu_load(),
        ratio(pl.max_gpu_load() as f64)
    ));
    if loads.len() % gpus == 0 {
        // The same layer under plain EP: expert e on GPU e / (experts / gpus).
        let native = loads
            .chunks(loads.len() / gpus)
            .map(|c| c.iter().sum::<f64>())
            .fold(0.0, f64::max);
        s.push_str(&format!(
            "  (plain EP without replicas: max {}  max/mean {:.4})",
            native,
            ratio(native)
        ));
    }
    s.push_str("\n\n");
    let per_gpu = pl.phy2log.len() / gpus;
    let mut t = Table::new(&["gpu", "node", "load", "experts"]).left(3);
    for (g, slots) in pl.phy2log.chunks(per_gpu).enumerate() {
        let experts: Vec<String> = slots.iter().map(|e| e.to_string()).collect();
        t.row(vec![
            g.to_string(),
            (g / (gpus / params.nodes)).to_string(),
            pl.gpu_loads[g].to_string(),
            experts.join(" "),
        ]);
    }
    s.push_str(&t.render());
    let replicated: Vec<String> = pl
        .logcnt
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 1)
        .map(|(e, c)| format!("{e} x{c}"))
        .collect();
    if !replicated.is_empty() {
        s.push_str(&format!(
            "\nreplicated experts: {}\n",
            replicated.join(", ")
        ));
    }
    s
}
