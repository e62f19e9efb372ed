//! `llep-trace simulate`: EP against LLEP (and the ideal bound) over a trace.

use super::settings::{default_trace, expand_auto, positive_count, InputArgs, PlannerArgs};
use super::table::{count, gib, Table};
use super::Printer;
use anyhow::{bail, Context};
use clap::Args;
use llep_trace::plan::topo::{TopoError, Topology};
use llep_trace::plan::{Gate, Policy};
use llep_trace::progress::Progress;
use llep_trace::results::{Pass, ResultRow, ResultsMeta, ResultsWriter};
use llep_trace::sim::{self, EplbSim, Profile, ReplicaSplit, SimConfig, Summary};
use llep_trace::trace::{meta::command_line, meta::tool_version};
use llep_trace::workload::{InputSource, Streamed};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where and how to simulate, shared by `simulate` and `tune`.
#[derive(Args, Debug, Clone)]
pub struct SimInputArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// EP ranks (GPUs) [default: 8, or N x G of --topology].
    #[arg(long = "gpus", value_name = "GPUS", value_parser = positive_count, allow_hyphen_values = true)]
    gpus_arg: Option<usize>,
    /// The GPU count in force, set by [`SimInputArgs::settle`].
    #[arg(skip)]
    pub gpus: usize,
    /// The layer's schedule priced (`simulate --overlap`; sequential for
    /// the other commands sharing these inputs).
    #[arg(skip)]
    pub overlap: llep_trace::gpu::Overlap,
    /// Nodes the GPUs are split over, evenly: traffic between nodes is
    /// priced on each GPU's NIC (the profile's inter_gbps). Default 1.
    #[arg(long, value_parser = positive_count, allow_hyphen_values = true)]
    pub nodes: Option<usize>,
    /// N nodes of G GPUs each, e.g. 4x8 (instead of --nodes; sets --gpus).
    #[arg(long, value_name = "NxG")]
    pub topology: Option<String>,
    /// Hardware profile: h100, h200, or a profile JSON file.
    #[arg(long, default_value = "h200")]
    pub profile: String,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// What to price: the layer's forward, or a training step (forward
    /// then backward: gradient exchanges, dgrad and wgrad GEMMs, LLEP's
    /// weight-gradient return, saved activations in memory).
    #[arg(long, value_enum, default_value = "forward")]
    pub pass: PassArg,
    /// Training: recompute gate_up and the activation in backward instead
    /// of keeping them (less memory, more compute).
    #[arg(long)]
    pub recompute: bool,
    /// How the priced replay issues its expert units: off, one host call
    /// per GEMM and activation (the reference layer; decode-sized layers
    /// then pay the host's time per unit); on, each compute phase as one
    /// CUDA graph (`replay --cuda-graphs on`: serving engines' grouped
    /// kernels or graphs).
    #[arg(long, value_enum, default_value = "off")]
    pub cuda_graphs: super::replay::OnOff,
    /// How the priced replay moves tokens and weights: nccl, or
    /// copy-engine (`replay --exchange copy-engine`: priced with the
    /// profile's copy-engine measurements; one node).
    #[arg(long, value_enum, default_value = "nccl")]
    pub exchange: super::replay::ExchangeArg,
    /// The priced replay's GEMM path (as `replay --gemm`): lt, or fused
    /// (priced with the profile's tables timed through the fused kernel;
    /// a profile without them prices lt's tables, and says so).
    #[arg(long, default_value = "lt", value_parser = parse_gemm)]
    pub gemm: llep_trace::gpu::GemmImpl,
}

/// `--gemm` of the pricing commands: the paths a profile has tables for.
pub fn parse_gemm(s: &str) -> Result<llep_trace::gpu::GemmImpl, String> {
    match s.parse()? {
        llep_trace::gpu::GemmImpl::Cublas => {
            Err("the profiles price lt and fused (cublas has no tables)".into())
        }
        g => Ok(g),
    }
}

/// Set the run's GEMM path on `profile`, warning when it has no tables for
/// it.
pub fn set_gemm(profile: &mut Profile, gemm: llep_trace::gpu::GemmImpl, p: &Printer) {
    profile.gemm = gemm;
    if gemm == llep_trace::gpu::GemmImpl::Fused && !profile.prices_fused() {
        p.warn(&format!(
            "--gemm fused: profile {} has no tables timed through the fused kernel (calibrate --gemm-only --gemm fused); priced with its lt tables",
            profile.name
        ));
    }
}

/// The profile can price the exchange asked for (`Profile::check_exchange`).
pub fn check_exchange(prof: &Profile) -> anyhow::Result<()> {
    prof.check_exchange().map_err(anyhow::Error::msg)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PassArg {
    Forward,
    Train,
}

impl PassArg {
    pub fn pass(self) -> Pass {
        match self {
            PassArg::Forward => Pass::Forward,
            PassArg::Train => Pass::Train,
        }
    }
}

/// EPLB settings of the `eplb` and `eplb+llep` policies (`sim::eplb`).
#[derive(Args, Debug, Clone)]
pub struct EplbArgs {
    /// eplb: redundant physical experts added per layer; experts + R must be
    /// a multiple of --gpus (tune: a list, default E/8 and E/4 rounded up to
    /// what the GPUs allow).
    #[arg(long, value_delimiter = ',')]
    pub redundant: Vec<usize>,
    /// eplb: the placement is EPLB's on the mean loads of the previous W
    /// steps (no look-ahead; step 0 uses equal loads).
    #[arg(long, default_value_t = 8, value_name = "W")]
    pub eplb_window: usize,
    /// eplb: rebalance every N steps (default: the window), charging each
    /// rebalance's weight moves on the step where it happens.
    #[arg(long, value_name = "N")]
    pub eplb_period: Option<usize>,
    /// eplb: place from the same step's loads instead, an upper bound.
    #[arg(long)]
    pub eplb_oracle: bool,
    /// eplb: how a logical expert's tokens are split among its replicas:
    /// sglang (SGLang's default static dispatch: the local replica, else one
    /// dealt per rank), vllm (vLLM's per-copy hashed choice, by its
    /// expected split) or even.
    #[arg(long, default_value = "sglang")]
    pub replica_split: ReplicaSplit,
    /// eplb: server nodes for EPLB's hierarchical policy; must divide --gpus.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub eplb_nodes: usize,
    /// eplb: expert groups for EPLB's hierarchical policy; must divide the
    /// experts (a multiple of --eplb-nodes selects the hierarchical policy).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub eplb_groups: usize,
}

impl EplbArgs {
    /// The settings at `redundant` replicas.
    pub fn at(&self, redundant: usize) -> EplbSim {
        EplbSim {
            redundant,
            window: self.eplb_window,
            period: self.eplb_period.unwrap_or(self.eplb_window),
            oracle: self.eplb_oracle,
            split: self.replica_split,
            nodes: self.eplb_nodes,
            groups: self.eplb_groups,
        }
    }

    /// Whether any EPLB option was given (they need an EPLB policy).
    pub fn given(&self) -> bool {
        !self.redundant.is_empty()
            || self.eplb_period.is_some()
            || self.eplb_oracle
            || self.eplb_window != 8
            || self.replica_split != ReplicaSplit::default()
            || self.eplb_nodes != 1
            || self.eplb_groups != 1
    }
}

impl SimInputArgs {
    /// The GPU count and topology the flags give: `--topology NxG` sets the
    /// GPUs (and must agree with `--gpus` when both are given); `--nodes`
    /// must divide them.
    pub fn topology(&self) -> anyhow::Result<Topology> {
        let topo = match (&self.topology, self.nodes) {
            (Some(_), Some(_)) => bail!("give --nodes or --topology, not both"),
            (Some(spec), None) => {
                let t: Topology = spec.parse()?;
                let gpus = self.gpus_arg.unwrap_or(t.gpus());
                if gpus != t.gpus() {
                    return Err(TopoError::Mismatch {
                        nodes: t.nodes,
                        per: t.gpus_per_node,
                        gpus,
                    }
                    .into());
                }
                t
            }
            (None, nodes) => Topology::new(self.gpus_arg.unwrap_or(8), nodes.unwrap_or(1))?,
        };
        Ok(topo)
    }

    /// Resolve the flags into [`SimInputArgs::gpus`]; call before using it.
    pub fn settle(&mut self) -> anyhow::Result<Topology> {
        let t = self.topology()?;
        self.gpus = t.gpus();
        Ok(t)
    }
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub input: SimInputArgs,
    /// Policies to simulate, comma separated: ep, llep, ideal, llep-auto
    /// (LLEP where the cost model predicts a gain; also `--ratio auto`),
    /// llep-topo (LLEP spilling within a node first; see --nodes), eplb and
    /// eplb+llep (need --redundant).
    #[arg(long, value_delimiter = ',', default_value = "ep,llep,ideal")]
    pub policy: Vec<Policy>,
    #[command(flatten)]
    pub eplb: EplbArgs,
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
    /// Write the per-rank token routing of the inputs to this new folder
    /// (.npy files and routing.json) and simulate nothing
    /// (`scripts/train_reference.py` runs the reference on it).
    #[arg(long, hide = true, value_name = "DIR")]
    pub export_routing: Option<PathBuf>,
    #[command(flatten)]
    pub overlap: super::replay::OverlapArgs,
}

/// Planner settings to sweep.
pub struct Sweep {
    pub policies: Vec<Policy>,
    pub gates: Vec<Gate>,
    pub alphas: Vec<f64>,
    pub min_gemms: Vec<u64>,
    /// Settings of the `eplb` policies, when they are simulated.
    pub eplb: Option<EplbSim>,
}

pub struct Simulated {
    /// The inputs, streamed: their loads are not held.
    pub inputs: Vec<Streamed>,
    pub summaries: Vec<Summary>,
    pub profile: Profile,
    pub trace_name: String,
    pub input_note: String,
    pub model: String,
    /// The EPLB setting of the `eplb` rows, if any.
    pub eplb: Option<EplbSim>,
}

/// Resolve the inputs and simulate the sweep (shared with `tune`). Rows are
/// never all held: each chunk's rows go to `out` (Parquet, when given), to
/// the summaries and to `each` (the caller's running totals), in row order.
pub fn run_sweep(
    a: &SimInputArgs,
    sweep: Sweep,
    p: &Printer,
    out: Option<&Path>,
    each: &mut dyn FnMut(&ResultRow),
) -> anyhow::Result<Simulated> {
    if sweep.policies.is_empty() {
        bail!("--policy: give at least one of ep, llep, ideal");
    }
    if a.recompute && a.pass != PassArg::Train {
        bail!("--recompute applies to --pass train only");
    }
    if a.cuda_graphs == super::replay::OnOff::On && a.pass == PassArg::Train {
        bail!("--cuda-graphs on prices the forward pass only (replay graphs no backward); use --cuda-graphs off with --pass train");
    }
    let topo = a.topology()?;
    let mut profile = Profile::load(&a.profile)?;
    profile.nodes = topo.nodes as u32;
    profile.cuda_graphs = a.cuda_graphs == super::replay::OnOff::On;
    profile.exchange = a.exchange.into();
    set_gemm(&mut profile, a.gemm, p);
    check_exchange(&profile)?;
    // a training step's backward runs the sequential schedule (as replay)
    profile.overlap = if a.pass == PassArg::Train {
        llep_trace::gpu::Overlap::Off
    } else {
        a.overlap
    };
    let spec = a.input.spec(topo.gpus(), Some(default_trace()), false)?;
    let synthetic = matches!(spec.source, InputSource::Synthetic(_));
    let inputs = spec.resolve_stream(p)?;
    for w in &inputs {
        for warning in &w.warnings {
            p.warn(warning);
        }
    }
    // bad EPLB settings fail before any work, in one line
    if sweep.eplb.is_some() && a.pass == PassArg::Train {
        return Err(sim::EplbSimError::Train.into());
    }
    if let Some(e) = &sweep.eplb {
        for w in &inputs {
            e.check(w.model.num_experts as usize, w.gpus)
                .with_context(|| w.label())?;
        }
    }
    let cfg = SimConfig {
        policies: sweep.policies,
        gates: sweep.gates,
        alphas: sweep.alphas,
        min_gemms: sweep.min_gemms,
        profile: profile.clone(),
        threads: a.threads,
        pass: a.pass.pass(),
        recompute: a.recompute,
    };
    let trace_name = match &a.input.synthetic {
        Some(spec) => format!(
            "synthetic {spec} ({} tokens/rank)",
            a.input
                .tokens_per_rank
                .unwrap_or(llep_trace::workload::DEFAULT_SYNTHETIC_TOKENS)
        ),
        None => inputs[0].name.clone(),
    };
    p.status(&format!(
        "simulating {} on {} GPUs with profile {}",
        if synthetic {
            &trace_name
        } else {
            &inputs[0].name
        },
        if topo.nodes > 1 {
            format!("{} ({topo} nodes x GPUs)", topo.gpus())
        } else {
            topo.gpus().to_string()
        },
        profile.label()
    ));
    if let (Some(e), Some(w)) = (&sweep.eplb, inputs.first()) {
        warn_short_input(e, w.steps(), p);
    }
    let total: usize = inputs.iter().map(|w| w.layer_steps()).sum();
    let mut writer = out
        .map(|o| ResultsWriter::create(o, &results_meta(&profile)))
        .transpose()?;
    let mut summ = sim::Summarizer::default();
    p.start("simulate", total as u64);
    let mut notes = Vec::new();
    let mut models = Vec::new();
    for w in &inputs {
        sim::simulate_stream(w, &cfg, sweep.eplb.as_ref(), p, &mut |rows| {
            for r in &rows {
                summ.add(r);
                each(r);
            }
            if let Some(wr) = writer.as_mut() {
                wr.write(&rows)?;
            }
            Ok(())
        })
        .with_context(|| w.label())?;
        if !notes.contains(&w.note) {
            notes.push(w.note.clone());
        }
        if !models.contains(&w.model.name) {
            models.push(w.model.name.clone());
        }
    }
    p.finish();
    if let (Some(wr), Some(out)) = (writer, out) {
        let n = wr.finish()?;
        p.status(&format!("wrote {n} rows to {}", out.display()));
    }
    Ok(Simulated {
        summaries: summ.finish(),
        profile,
        trace_name,
        input_note: notes.join("; "),
        model: models.join(", "),
        inputs,
        eplb: sweep.eplb,
    })
}

/// Rows collapsed to one per setup and setting, times summed in row order:
/// all the speedup plots read (totals per setting against EP's), kept in
/// memory bounded by the settings.
#[derive(Debug, Default)]
pub struct PlotRows {
    pub rows: Vec<ResultRow>,
    last: usize,
}

impl PlotRows {
    fn same(x: &ResultRow, r: &ResultRow) -> bool {
        x.policy == r.policy
            && x.gate.lambda().map(f64::to_bits) == r.gate.lambda().map(f64::to_bits)
            && x.gate == r.gate
            && x.alpha.to_bits() == r.alpha.to_bits()
            && x.min_gemm == r.min_gemm
            && x.gpus == r.gpus
            && x.source == r.source
            && x.trace == r.trace
            && x.scenario == r.scenario
            && x.input_note == r.input_note
            && x.profile == r.profile
            && x.device == r.device
    }

    pub fn add(&mut self, r: &ResultRow) {
        let n = self.rows.len();
        let guess = if n == 0 { 0 } else { (self.last + 1) % n };
        let i = if n > 0 && Self::same(&self.rows[guess], r) {
            Some(guess)
        } else {
            self.rows.iter().position(|x| Self::same(x, r))
        };
        match i {
            Some(i) => {
                self.rows[i].t_total_ms += r.t_total_ms;
                self.last = i;
            }
            None => {
                self.rows.push(ResultRow {
                    step: 0,
                    layer: 0,
                    t_total_p10_ms: None,
                    t_total_p90_ms: None,
                    ..r.clone()
                });
                self.last = self.rows.len() - 1;
            }
        }
    }
}

/// Warn when the input is too short for EPLB ever to rebalance.
pub fn warn_short_input(e: &EplbSim, steps: usize, p: &Printer) {
    if !e.oracle && steps <= e.period {
        p.warn(&format!(
            "--eplb-period {}: the input has {steps} steps, so EPLB never rebalances after its warm-up placement (equal loads); give a smaller --eplb-period and --eplb-window, or --eplb-oracle for the bound",
            e.period
        ));
    }
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
    llep_trace::results::setting_label(s.policy, s.gate)
}

/// The lines saying what was priced beyond the defaults: a training step
/// (`--pass train`), expert units launched as CUDA graphs.
pub fn pass_note(a: &SimInputArgs, prof: &Profile) -> Option<String> {
    let mut s = String::new();
    if a.pass == PassArg::Train {
        s.push_str(&format!(
            "pass: train (forward + backward{}); {}\n",
            if a.recompute {
                ", gate_up recomputed"
            } else {
                ", activations saved"
            },
            llep_trace::sim::bwd::describe(prof)
        ));
    }
    if prof.exchange == llep_trace::gpu::Exchange::CopyEngine {
        s.push_str("exchange: tokens pushed and weights pulled by the copy engines (the profile's ce_tokens and ce_weights)\n");
    }
    if prof.prices_fused() {
        s.push_str(&format!(
            "GEMMs: through the fused kernels, gate_up with its activation, the down GEMMs of units under {} rows grouped (the profile's fused_gemm_tables)\n",
            llep_trace::gpu::fused::DOWN_GROUPED_ROWS
        ));
    }
    if prof.cuda_graphs {
        s.push_str(&format!(
            "expert units: launched as CUDA graphs ({}; no host time per unit)\n",
            if prof.graph_gemm_tables.is_empty() {
                "the profile has no GEMM tables timed that way: its others price them"
            } else {
                "GEMM tables timed that way"
            }
        ));
    }
    (!s.is_empty()).then_some(s)
}

/// One layer's simulated peak is not what a GPU holds for the whole model:
/// every MoE layer's native experts stay resident. The whole-model figure is
/// the worst layer's peak plus the other layers' native expert weights.
pub fn whole_model_memory(sim: &Simulated, summaries: &[&Summary]) -> String {
    let Some(w) = sim.inputs.first() else {
        return String::new();
    };
    let m = &w.model;
    let layers = m.num_layers as u64;
    if layers == 0 {
        return "whole model: the number of MoE layers is unknown (give --num-layers), so only one layer's peak is shown\n".into();
    }
    let per_layer = (m.num_experts as u64 / w.gpus as u64) * m.expert_bytes();
    // a training step keeps every layer's weight gradients and saved
    // activations until its backward runs
    let train = summaries.first().is_some_and(|s| s.pass == Pass::Train);
    let mut seen: Vec<String> = Vec::new();
    let mut parts = Vec::new();
    let mut fits = true;
    for s in summaries {
        let label = policy_label(s);
        if seen.contains(&label) {
            continue;
        }
        let worst = summaries
            .iter()
            .filter(|x| policy_label(x) == label)
            .map(|x| x.peak_mem_max_bytes)
            .max()
            .unwrap_or(0);
        // EPLB's replicas are resident on every layer too
        let per_layer = match (&sim.eplb, s.policy) {
            (Some(e), Policy::Eplb | Policy::EplbLlep) => {
                ((m.num_experts as u64 + e.redundant as u64) / w.gpus as u64) * m.expert_bytes()
            }
            _ => per_layer,
        };
        let saved = summaries
            .iter()
            .filter(|x| policy_label(x) == label)
            .map(|x| x.saved_act_max_bytes)
            .max()
            .unwrap_or(0);
        let other = if train {
            2 * per_layer + saved
        } else {
            per_layer
        };
        let whole = worst + (layers - 1) * other;
        let over = whole > sim.profile.gpu_mem_bytes;
        fits &= !over;
        parts.push(format!(
            "{label} {}{}",
            gib(whole),
            if over { " (does NOT fit)" } else { "" }
        ));
        seen.push(label);
    }
    format!(
        "whole model ({layers} MoE layers): expert weights resident on each GPU {} GiB; {}: {} GiB of {} GiB{}\n",
        gib(layers * per_layer),
        if train {
            "with every layer's weight gradients and saved activations, and the worst layer's peak"
        } else {
            "with the worst layer's peak on top"
        },
        parts.join(", "),
        gib(sim.profile.gpu_mem_bytes),
        if fits { "" } else { "; over the card's memory" }
    )
}

/// The summary table; `inter_node` adds the bytes that cross nodes (per
/// layer-step, GB), shown only for multi-node runs.
pub fn summary_table(sims: &[Summary], show_am: bool, inter_node: bool) -> String {
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
    if inter_node {
        head.push("inter-node GB");
    }
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
            if matches!(
                s.policy,
                Policy::Llep | Policy::LlepAuto | Policy::EplbLlep | Policy::LlepTopo
            ) {
                format!("{}/{}", s.llep_on, s.layer_steps)
            } else {
                "-".into()
            },
            gib(s.peak_mem_max_bytes),
            s.oom_rows.to_string(),
            s.transfers.to_string(),
            s.duplicates.to_string(),
        ]);
        if inter_node {
            let per = s.inter_node_bytes as f64 / s.layer_steps.max(1) as f64;
            r.push(format!("{:.3}", per / 1e9));
        }
        t.row(r);
    }
    t.render()
}

/// The EPLB setting `simulate` runs: one --redundant, given exactly when an
/// EPLB policy is asked for.
fn eplb_setting(policies: &[Policy], a: &EplbArgs) -> anyhow::Result<Option<EplbSim>> {
    let wanted = policies
        .iter()
        .any(|p| matches!(p, Policy::Eplb | Policy::EplbLlep));
    if !wanted {
        if a.given() {
            bail!("--redundant and the --eplb-* / --replica-split options apply to --policy eplb or eplb+llep only");
        }
        return Ok(None);
    }
    match a.redundant.as_slice() {
        [r] => Ok(Some(a.at(*r))),
        [] => bail!("--policy eplb needs --redundant R: the replicas added per layer (experts + R a multiple of --gpus)"),
        _ => bail!("--redundant: simulate takes one value (tune compares several)"),
    }
}

pub fn run(mut a: SimulateArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    a.input.settle()?;
    a.input.overlap = a.overlap.get(super::replay::OnOff::Off)?;
    if a.input.pass == PassArg::Train && a.input.overlap != llep_trace::gpu::Overlap::Off {
        p.status("--pass train: the backward runs on the sequential schedule; overlap off");
    }
    if let Some(dir) = &a.export_routing {
        return super::routing_export::run(&a.input, dir, p);
    }
    let (policies, gates) = expand_auto(&a.policy, &a.planner.gates(p)?);
    let sweep = Sweep {
        policies,
        gates,
        alphas: a.planner.alphas()?,
        min_gemms: a.planner.min_gemms(),
        eplb: eplb_setting(&a.policy, &a.eplb)?,
    };
    let eplb_line = sweep.eplb.as_ref().map(|e| format!("{}\n", e.label()));
    let mut plot_rows = PlotRows::default();
    let want_plot = a.plot.is_some();
    let sim = run_sweep(&a.input, sweep, p, a.out.as_deref(), &mut |r| {
        if want_plot {
            plot_rows.add(r)
        }
    })?;
    if let Some(plot) = &a.plot {
        llep_trace::report::plot_speedup_vs_lambda(&plot_rows.rows, plot)?;
        p.status(&format!("wrote {}", plot.display()));
    }
    let layer_steps = sim.summaries.first().map_or(0, |s| s.layer_steps);
    if a.json {
        let summ: Vec<_> = sim
            .summaries
            .iter()
            .map(|s| {
                let mut o = json!({
                    "scenario": s.scenario, "policy": s.policy, "lambda": s.gate.lambda(), "alpha": s.alpha, "min_gemm": s.min_gemm,
                    "layer_steps": s.layer_steps, "total_ms": s.total_ms,
                    "speedup_vs_ep": if s.speedup_vs_ep.is_nan() { None } else { Some(s.speedup_vs_ep) },
                    "mean_ratio_before": s.mean_ratio_before, "mean_ratio_after": s.mean_ratio_after,
                    "llep_on": s.llep_on, "peak_mem_max_bytes": s.peak_mem_max_bytes, "oom_rows": s.oom_rows,
                    "transfers": s.transfers, "duplicate_transfers": s.duplicates,
                    "phases_ms": {"overhead": s.phases_ms[0], "dispatch": s.phases_ms[1], "transfer": s.phases_ms[2], "compute": s.phases_ms[3], "combine": s.phases_ms[4]},
                });
                // multi-node fields only, so one-node output is unchanged
                if sim.profile.nodes > 1 {
                    o["inter_node_bytes"] = json!(s.inter_node_bytes);
                }
                o
            })
            .collect();
        let mut obj = json!({
            "trace": sim.trace_name, "model": sim.model, "gpus": a.input.gpus, "input": sim.input_note,
            "profile": sim.profile.name, "profile_status": sim.profile.label(),
            "measured_error": sim.profile.measured_error, "summary": summ,
            "eplb": sim.eplb.as_ref().map(|e| e.label()),
            "whole_model_memory": whole_model_memory(&sim, &sim.summaries.iter().collect::<Vec<_>>()).trim(),
        });
        if sim.profile.nodes > 1 {
            obj["nodes"] = json!(sim.profile.nodes);
            obj["inter_gbps"] = json!(sim.profile.inter_gbps);
        }
        p.out(&serde_json::to_string_pretty(&obj)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let show_am = a.planner.alpha.len() > 1 || a.planner.min_gemm.len() > 1;
    let mut s = format!(
        "{} ({}), {} on {} GPUs; per-rank loads: {}\nprofile: {}\n\n",
        sim.trace_name,
        sim.model,
        count(layer_steps as u64, "layer-step"),
        a.input.gpus,
        sim.input_note,
        sim.profile.label()
    );
    if let Some(note) = pass_note(&a.input, &sim.profile) {
        s.insert_str(s.len() - 1, &note);
    }
    s.push_str(eplb_line.as_deref().unwrap_or(""));
    let multi = sim.profile.nodes > 1;
    s.push_str(&summary_table(&sim.summaries, show_am, multi));
    s.push_str("\ntotal ms: simulated layer time summed over all layer-steps; max/mean: GPU load imbalance, mean over layer-steps; peak GiB: one layer's peak per GPU\n");
    if multi {
        s.push_str(&format!(
            "{} nodes of {} GPUs; inter-node GB: bytes crossing nodes per layer-step (tokens dispatched and combined, weights sent), priced at {} GB/s per GPU NIC{}\n",
            sim.profile.nodes,
            a.input.gpus / sim.profile.nodes as usize,
            sim.profile.inter_gbps,
            if sim.profile.note.contains("ESTIMATE") { " (an estimate, not measured)" } else { "" }
        ));
    }
    s.push_str(&whole_model_memory(
        &sim,
        &sim.summaries.iter().collect::<Vec<_>>(),
    ));
    p.out(&s)?;
    Ok(ExitCode::SUCCESS)
}
