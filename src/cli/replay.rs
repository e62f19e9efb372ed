//! `llep-trace replay`: run EP, LLEP and EPLB MoE layers on real GPUs,
//! measure them, and (optionally) put the simulated rows for the same
//! inputs beside them.

use super::settings::{expand_auto, positive_count, InputArgs, PlannerArgs};
use super::simulate::results_meta;
use super::table::Table;
use super::Printer;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use llep_trace::env;
use llep_trace::gpu::gemm::GemmImpl;
use llep_trace::gpu::rendezvous::{self, ProcessRank};
use llep_trace::gpu::replicas::is_eplb;
use llep_trace::gpu::{
    inputs, replay, Act, Case, EplbReplay, Exchange, Launch, Overlap, ReplayConfig,
};
use llep_trace::plan::{Arbiter, Gate, Policy};
use llep_trace::results::{write_results, ResultRow};
use llep_trace::results::{Pass, Source};
use llep_trace::sim::accuracy::twin;
use llep_trace::sim::{CostArbiter, EplbSim, Evaluator, Profile, Shape};
use llep_trace::workload::Workload;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ActArg {
    /// gpt-oss clamped SwiGLU.
    GptOss,
    /// silu(gate) * up.
    Swiglu,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// What to replay: --trace (token level replays its tokens; load level
    /// synthesises tokens from the counts; default the first step) or
    /// --synthetic scenarios of the reference test.
    #[command(flatten)]
    pub input: InputArgs,
    /// GPUs (EP ranks). One process drives this many local GPUs, a thread
    /// each; under a launcher (torchrun, mpirun, srun) one process per GPU,
    /// and it must equal the launcher's world size.
    #[arg(long, default_value = "2", value_parser = positive_count, allow_hyphen_values = true)]
    pub gpus: usize,
    /// Nodes the GPUs are split over, evenly: must agree with the launcher
    /// (world / local size, or SLURM_NNODES). Without a launcher it splits
    /// the local GPUs into pseudo-nodes. The simulated twin (--with-sim)
    /// prices this topology [default: the launcher's, else 1].
    #[arg(long, value_parser = positive_count, allow_hyphen_values = true)]
    pub nodes: Option<usize>,
    /// Seconds any rank waits for the others to meet over TCP before NCCL
    /// starts (rank 0 for every check-in, the others for rank 0).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub rendezvous_timeout: u64,
    /// forward, or train: each timed run is the forward, then its backward
    /// (combine-bwd, expert dgrad and wgrad, dispatch-bwd, and under LLEP the
    /// weight-gradient return), checked against a dense fp32 reference.
    #[arg(long, value_enum, default_value = "forward")]
    pub pass: super::simulate::PassArg,
    /// Training: recompute gate_up and the activation in backward instead
    /// of keeping them from the forward.
    #[arg(long)]
    pub recompute: bool,
    /// Expert activation.
    #[arg(long, value_enum, default_value = "gpt-oss")]
    pub act: ActArg,
    /// Policies: ep, llep, llep-auto, eplb and eplb+llep (need --redundant;
    /// the placement follows simulate's rule: the previous --eplb-window
    /// steps, or --eplb-oracle for the same step's loads).
    #[arg(long, value_delimiter = ',', default_value = "ep,llep")]
    pub policy: Vec<Policy>,
    /// EPLB settings (as simulate's); --redundant takes a list here, each R
    /// a row of its own.
    #[command(flatten)]
    pub eplb: super::simulate::EplbArgs,
    #[command(flatten)]
    pub planner: PlannerArgs,
    /// Library of the bf16 expert GEMMs: cublas (default algorithm), lt
    /// (cuBLASLt, algorithm autotuned per shape during the warm-ups), or
    /// fused (lt, except the forward gate_up GEMM: an own Hopper kernel
    /// with the activation in its epilogue; H100/H200 only).
    #[arg(long, default_value = "lt", value_parser = gemm_path)]
    pub gemm: GemmImpl,
    /// Untimed warm-up runs per case.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed runs per case.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// on: a case's plain settings (ep, llep at each lambda, llep-auto,
    /// llep-topo) take turns, one timed run of each per round, after each
    /// ran its warm-ups alone, so drift over the minutes a case takes falls
    /// on all of them alike; off: each setting's runs back to back. EPLB
    /// settings, which place replicas first, and training steps are timed
    /// back to back either way.
    #[arg(long, value_enum, default_value = "on")]
    pub interleave: OnOff,
    /// Tokens per rank checked against the dense fp32 reference.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Profile the cost-aware gate (llep-auto, --ratio auto) prices plans
    /// with, when --with-sim names none.
    #[arg(long, default_value = "h200")]
    pub profile: String,
    /// Also simulate the same inputs with this profile (h100, h200 or a
    /// JSON file) and show the simulated rows beside the measured ones.
    #[arg(long)]
    pub with_sim: Option<String>,
    /// Write the rows (measured, plus simulated with --with-sim) here (Parquet).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub overlap: OverlapArgs,
    /// Pipelined schedule: run the token exchange's stream at high
    /// priority (measured no faster on 2 x H200; kept to measure it).
    #[arg(long, hide = true)]
    pub overlap_high_priority: bool,
    /// llep-auto: on, each GPU's decision (plan both, price both) runs on
    /// a helper thread that keeps it warm by deciding the last layer again,
    /// experts rotated, while idle (one busy CPU core per GPU), while the
    /// worker plans; off,
    /// on the worker thread after planning, cold. The same decisions
    /// either way; on the layer's critical path, on is faster.
    #[arg(long, value_enum, default_value = "on")]
    pub decision_thread: OnOff,
    /// on: each compute phase's expert units (a GPU's native ones, then its
    /// foreign ones; per chunk when pipelined) are launched as one CUDA
    /// graph, captured during the warm-ups, as serving engines launch
    /// their expert compute as grouped kernels or graphs; off: one host
    /// call per GEMM and activation, as the reference layer issues them
    /// (then decode-sized layers measure the host). Forward pass only;
    /// needs --warmup 2 or more.
    #[arg(long, value_enum, default_value = "off")]
    pub cuda_graphs: OnOff,
    /// How tokens and expert weights move between GPUs: nccl (grouped
    /// send/recv, kernels on the SMs, as the reference layer and most
    /// engines) or copy-engine (peer-to-peer copies over NVLink that leave
    /// the SMs to the GEMMs; every GPU in this one process).
    #[arg(long, value_enum, default_value = "nccl")]
    pub exchange: ExchangeArg,
    /// Compute streams: 2 alternates the large expert units (a batch of
    /// 12 MiB of gate_up output or more, e.g. gpt-oss-120b's from about
    /// 1,100 rows) between two streams, each with its own scratch, so one
    /// unit's activation overlaps the other's GEMMs; small units stay on
    /// one. Needs --gemm lt and --cuda-graphs off. `simulate` prices one
    /// stream.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub compute_streams: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExchangeArg {
    Nccl,
    CopyEngine,
}

impl From<ExchangeArg> for Exchange {
    fn from(a: ExchangeArg) -> Self {
        match a {
            ExchangeArg::Nccl => Exchange::Nccl,
            ExchangeArg::CopyEngine => Exchange::CopyEngine,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The layer's schedule, for `replay` and `simulate` alike.
#[derive(Args, Debug, Clone, Copy)]
pub struct OverlapArgs {
    /// on: dispatch, expert compute and combine pipelined in chunks, the
    /// exchanges hidden under compute (below 8,192 rows on the busiest GPU
    /// the layer stays sequential: not measured to pay there); off: one phase
    /// after the other, as the reference LLEP layer runs. Default: on for
    /// replay; off for simulate, whose question is the reference's lambda
    /// and whose sequential model is the one the accuracy matrix validates.
    /// Phase times of a pipelined row are busy times; its exposed
    /// communication is in t_exposed_comm_ms.
    #[arg(long, value_enum)]
    pub overlap: Option<OnOff>,
    /// Chunks of the pipelined schedule (2-8); 0 chooses by size (2, then 6
    /// from 65,536 rows on the busiest GPU).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=8))]
    pub overlap_chunks: u32,
}

impl OverlapArgs {
    /// The schedule asked for, `default` when `--overlap` is not given
    /// (`--overlap-chunks N` alone means on).
    pub fn get(&self, default: OnOff) -> anyhow::Result<Overlap> {
        let on_off = match (self.overlap, self.overlap_chunks) {
            (Some(v), _) => v,
            (None, 0) => default,
            (None, _) => OnOff::On,
        };
        match (on_off, self.overlap_chunks) {
            (OnOff::Off, 0) => Ok(Overlap::Off),
            (OnOff::Off, _) => bail!("--overlap-chunks applies to --overlap on only"),
            (OnOff::On, 1) => {
                bail!("--overlap-chunks 1 is the sequential schedule; use --overlap off")
            }
            (OnOff::On, n) => Ok(Overlap::On(n as usize)),
        }
    }
}

/// How the ranks start (a launcher's process, or threads) and the nodes
/// they span, checked before any GPU work.
fn launch_and_nodes(a: &ReplayArgs, p: &Printer) -> anyhow::Result<(Launch, usize)> {
    let pr = ProcessRank::from_env(env::launcher_var)?;
    let nodes = rendezvous::nodes_for(pr.as_ref(), a.gpus, a.nodes)?;
    let launch = match pr {
        Some(mut pr) if pr.world > 1 => {
            pr.timeout = std::time::Duration::from_secs(a.rendezvous_timeout);
            if pr.rank == 0 {
                p.status(&format!(
                    "{} launch ({}): rank 0 of {} on {nodes} node(s), rendezvous on {} (timeout {} s)",
                    pr.launcher,
                    pr.launcher.vars(),
                    pr.world,
                    pr.addr(),
                    a.rendezvous_timeout
                ));
            }
            Launch::Process(pr)
        }
        // a world of one is this process alone
        _ => Launch::Threads((0..a.gpus).collect()),
    };
    if nodes > 1 && matches!(launch, Launch::Threads(_)) && !env::nccl_network_forced() {
        p.warn(&format!(
            "--nodes {nodes}: GPUs of one host still talk over NVLink/PCIe; set NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 to push them through NCCL's network transport as pseudo-nodes"
        ));
    }
    Ok((launch, nodes))
}

/// The simulated twin of every measured row, through the same path as
/// `compare`, on the very workloads that were replayed.
fn simulated(
    measured: &[ResultRow],
    workloads: &[Workload],
    prof: &Profile,
) -> anyhow::Result<Vec<ResultRow>> {
    let mut ev = Evaluator::default();
    let mut out = Vec::with_capacity(measured.len());
    for m in measured {
        let w = workloads
            .iter()
            .find(|w| w.scenario_label() == m.scenario)
            .expect("every measured row comes from a replayed workload");
        out.push(twin(m, w, prof, &mut ev)?);
    }
    Ok(out)
}

/// The EPLB settings the `eplb` policies replay under: one per
/// `--redundant` value, checked against every input in one line.
fn eplb_settings(
    a: &ReplayArgs,
    workloads: &[Workload],
    p: &Printer,
) -> anyhow::Result<Vec<EplbSim>> {
    if !a.policy.iter().any(|&x| is_eplb(x)) {
        if a.eplb.given() {
            bail!("--redundant and the --eplb-* / --replica-split options apply to --policy eplb or eplb+llep only");
        }
        return Ok(Vec::new());
    }
    if a.eplb.redundant.is_empty() {
        bail!("--policy eplb needs --redundant R: the replicas added per layer (experts + R a multiple of --gpus)");
    }
    let mut sims = Vec::new();
    for &r in &a.eplb.redundant {
        let e = a.eplb.at(r);
        for w in workloads {
            e.check(w.model.num_experts as usize, w.gpus)
                .with_context(|| w.label())?;
        }
        sims.push(e);
    }
    if let (Some(e), Some(w)) = (sims.first(), workloads.first()) {
        super::simulate::warn_short_input(e, w.loads.steps(), p);
    }
    Ok(sims)
}

/// Every layer-step of `w` as a case, with the EPLB placement of each
/// setting in force there (simulate's rule: [`EplbSim::placement`]).
fn with_placements(w: &Workload, sims: &[EplbSim]) -> Vec<Case> {
    let layers = w.loads.layers();
    inputs::cases(w)
        .into_iter()
        .enumerate()
        .map(|(ls, mut c)| {
            let (s, l) = (ls / layers, ls % layers);
            c.placements = sims
                .iter()
                .map(|e| e.placement(&w.loads, s, l, w.gpus))
                .collect();
            c
        })
        .collect()
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

/// The training step's columns (forward rows show "-").
const TRAIN_COLS: [&str; 7] = [
    "pass",
    "bwd comb",
    "dgrad",
    "wgrad",
    "bwd disp",
    "grad ret",
    "saved GiB",
];

fn train_cells(r: &ResultRow) -> Vec<String> {
    if r.pass != Pass::Train {
        let mut v = vec![r.pass.to_string()];
        v.extend(std::iter::repeat_n("-".to_string(), TRAIN_COLS.len() - 1));
        return v;
    }
    vec![
        r.pass.to_string(),
        ms(r.t_bwd_combine_ms),
        ms(r.t_bwd_dgrad_ms),
        ms(r.t_bwd_wgrad_ms),
        ms(r.t_bwd_dispatch_ms),
        ms(r.t_grad_return_ms),
        gib(r.saved_act_bytes),
    ]
}

fn render(rows: &[ResultRow]) -> String {
    let train = rows.iter().any(|r| r.pass == Pass::Train);
    let mut head = vec![
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
        "exposed",
        "chunks",
        "max/mean",
        "loads after",
        "xfers",
        "peak GiB/GPU",
        "driver GiB/GPU",
        "rel err",
        "oom",
    ];
    if train {
        head.extend(TRAIN_COLS);
    }
    let mut t = Table::new(&head).left(0).left(3).left(4);
    for r in rows {
        let input = if r.scenario.is_empty() {
            r.trace.clone()
        } else {
            r.scenario.clone()
        };
        let pol = match EplbSim::from_note(&r.input_note).filter(|_| is_eplb(r.policy)) {
            Some(e) => format!("{} R={}", r.setting_label(), e.redundant),
            None => r.setting_label(),
        };
        let list = |v: &[u64]| v.iter().map(|&b| gib(b)).collect::<Vec<_>>().join("/");
        let mut cells = vec![
            input,
            r.step.to_string(),
            r.layer.to_string(),
            pol,
            r.source.to_string(),
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
            r.t_exposed_comm_ms.map_or("-".into(), ms),
            if r.overlap {
                r.overlap_chunks.to_string()
            } else {
                "off".into()
            },
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
        ];
        if train {
            cells.extend(train_cells(r));
        }
        t.row(cells);
    }
    t.render()
}

pub fn run(a: ReplayArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    let train = a.pass == super::simulate::PassArg::Train;
    if a.recompute && !train {
        bail!("--recompute applies to --pass train only");
    }
    if train && a.policy.iter().any(|&p| is_eplb(p)) {
        bail!("--pass train: eplb and eplb+llep are replayed forward only; use --pass forward");
    }
    if a.policy.is_empty() {
        bail!("--policy: give ep, llep, llep-auto, eplb or eplb+llep");
    }
    if a.policy.contains(&Policy::Ideal) {
        bail!("--policy: the ideal bound has free weight transfers and cannot be replayed; use ep and llep (simulate shows ideal)");
    }
    let alphas = a.planner.alphas()?;
    let mgs = a.planner.min_gemms();
    if alphas.len() != 1 || mgs.len() != 1 {
        bail!("replay takes one --alpha and one --min-gemm");
    }
    let mut overlap = a.overlap.get(OnOff::On)?;
    if train && overlap != Overlap::Off {
        p.status("--pass train: the backward runs on the sequential schedule; overlap off");
        overlap = Overlap::Off;
    }
    let cuda_graphs = a.cuda_graphs == OnOff::On;
    if cuda_graphs && train {
        bail!("--cuda-graphs on: forward pass only (the backward's GEMMs are issued one by one); use --cuda-graphs off with --pass train");
    }
    if cuda_graphs && a.warmup < 2 {
        bail!("--cuda-graphs on captures its graphs during the warm-up runs (the first tunes the GEMMs, the next captures): give --warmup 2 or more");
    }
    if a.compute_streams == 2 && cuda_graphs {
        bail!("--compute-streams 2: expert units on two streams are issued from the host; use --cuda-graphs off");
    }
    if a.compute_streams == 2 && a.gemm != GemmImpl::Lt {
        bail!("--compute-streams 2: the second stream's GEMMs go through cuBLASLt with their own workspace, and it overlaps the activation kernel --gemm fused does not have; use --gemm lt");
    }
    let (policies, gates) = expand_auto(&a.policy, &a.planner.gates(p)?);
    let (launch, nodes) = launch_and_nodes(&a, p)?;
    let exchange: Exchange = a.exchange.into();
    if let (Exchange::CopyEngine, Launch::Process(pr)) = (exchange, &launch) {
        bail!(
            "--exchange copy-engine needs every GPU in this one process (the default launch), not one process per GPU under {}; use --exchange nccl",
            pr.launcher
        );
    }
    let prof = match &a.with_sim {
        Some(s) => {
            let mut prof = Profile::load(s)?;
            prof.nodes = nodes as u32;
            prof.cuda_graphs = cuda_graphs;
            prof.exchange = exchange;
            super::simulate::set_gemm(&mut prof, a.gemm, p);
            super::simulate::check_exchange(&prof)?;
            Some(prof)
        }
        None => None,
    };
    if a.samples == 0 {
        p.warn("--samples 0: outputs are not checked against the dense reference (rel err stays empty)");
    }
    let workloads = a.input.spec(a.gpus, None, true)?.resolve_with(p)?;
    for w in &workloads {
        for warning in &w.warnings {
            p.warn(warning);
        }
    }
    let m = &workloads[0].model;
    if !m.has_dims() {
        bail!(
            "{}: the trace has no hidden/intermediate size; give --hidden-size and --intermediate-size",
            workloads[0].name
        );
    }
    let (d, i, n, k) = (m.hidden_size, m.intermediate_size, m.num_experts, m.top_k);
    let sims = eplb_settings(&a, &workloads, p)?;
    let cases: Vec<Case> = workloads
        .iter()
        .flat_map(|w| with_placements(w, &sims))
        .collect();
    let mut settings = Vec::new();
    for &pol in &policies {
        match pol {
            Policy::Llep => settings.extend(gates.iter().map(|&g| (pol, g))),
            Policy::LlepAuto => settings.push((pol, Gate::Auto)),
            // with only `--ratio auto`, eplb+llep plans every layer (as simulate)
            Policy::EplbLlep if gates.is_empty() => settings.push((pol, Gate::Always)),
            Policy::EplbLlep => settings.extend(gates.iter().map(|&g| (pol, g))),
            _ => settings.push((pol, Gate::Never)),
        }
    }
    // plain settings first, so each case places EPLB's replicas once per R
    settings.sort_by_key(|(pol, _)| is_eplb(*pol));
    let arbiter: Option<Arc<dyn Arbiter>> = if policies.contains(&Policy::LlepAuto) {
        let mut profile = Profile::load(a.with_sim.as_deref().unwrap_or(&a.profile))?;
        profile.nodes = nodes as u32;
        profile.overlap = overlap;
        profile.cuda_graphs = cuda_graphs;
        profile.exchange = exchange;
        super::simulate::check_exchange(&profile)?;
        p.status(&format!(
            "llep-auto decides with profile {}",
            profile.label()
        ));
        Some(Arc::new(CostArbiter {
            shape: Shape::from_model(&workloads[0].model),
            profile,
        }))
    } else {
        None
    };
    if a.gemm.uses_lt() && a.warmup == 0 {
        bail!(
            "--gemm {} tunes its GEMM algorithms during the warm-up runs: give --warmup 1 or more, or --gemm cublas",
            a.gemm.as_str()
        );
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
        seed: a.input.seed,
        samples: a.samples,
        arbiter,
        train,
        recompute: a.recompute,
        eplb: sims
            .iter()
            .map(|e| EplbReplay {
                redundant: e.redundant,
                split: e.split,
                label: e.label(),
            })
            .collect(),
        gemm: a.gemm,
        overlap,
        net_priority: a.overlap_high_priority,
        interleave: a.interleave == OnOff::On,
        decision_thread: a.decision_thread == OnOff::On,
        cuda_graphs,
        exchange,
        compute_streams: a.compute_streams as usize,
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
        "replaying {} case(s) x {} setting(s) on {} GPU(s){}: D={d} I={i} E={n} k={k}",
        cases.len(),
        cfg.settings
            .iter()
            .map(|(pol, _)| if is_eplb(*pol) { cfg.eplb.len() } else { 1 })
            .sum::<usize>(),
        a.gpus,
        if nodes > 1 {
            format!(" over {nodes} nodes")
        } else {
            String::new()
        }
    ));
    let Some(mut rows) = replay(&cfg, &cases, &launch, p)? else {
        return Ok(ExitCode::SUCCESS); // not the reporting rank
    };
    if let Some(prof) = &prof {
        let twins = simulated(&rows, &workloads, prof)?;
        rows.extend(twins);
        rows.sort_by(|x, y| {
            (
                x.scenario.as_str(),
                x.step,
                x.layer,
                x.policy.as_str(),
                x.input_note.as_str(),
                x.source.as_str(),
            )
                .cmp(&(
                    y.scenario.as_str(),
                    y.step,
                    y.layer,
                    y.policy.as_str(),
                    y.input_note.as_str(),
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
        .find(|r| r.source == Source::Measured)
        .map(|r| format!("{} x {} ({})", a.gpus, r.device, r.driver))
        .unwrap_or_default();
    p.out(&format!(
        "measured on {dev}; D={d} I={i} E={n} k={k}; GEMMs through {}{}{}{}; {} warm-up + {} timed runs{}, medians; total = slowest GPU, phases = the GPU whose compute ends last (pipelined rows: busy times, overlapping; exposed = total - overhead - compute)\n\n{}",
        a.gemm.as_str(),
        if a.cuda_graphs == OnOff::On {
            ", expert units launched as CUDA graphs"
        } else {
            ""
        },
        if a.exchange == ExchangeArg::CopyEngine {
            "; tokens and weights moved by the copy engines"
        } else {
            ""
        },
        if a.compute_streams == 2 {
            "; large expert units on two compute streams"
        } else {
            ""
        },
        a.warmup,
        a.runs,
        // training steps are always timed back to back
        if a.interleave == OnOff::On && !train {
            " (a case's plain settings in turns)"
        } else {
            ""
        },
        render(&rows)
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `--gemm`: the library's own parser, for clap.
fn gemm_path(s: &str) -> Result<GemmImpl, String> {
    s.parse()
}
