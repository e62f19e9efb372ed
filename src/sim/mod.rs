//! Simulation: plan every (step, layer) of a trace under each policy and
//! setting, price it with a hardware profile, and emit result rows.

pub mod accuracy;
pub mod bwd;
pub mod cost;
pub mod eplb;
pub mod model;
pub mod profile;
pub mod train;

pub use cost::{price, Cost, CostScratch, Shape};
pub use eplb::{EplbSim, EplbSimError, ReplicaSplit};
pub use profile::{Profile, ProfileError};

use crate::plan::topo::{TopoError, TopoPlanner, Topology};
use crate::plan::{dispatch_matrix, DispatchMatrix, Gate, Plan, PlanParams, Planner, Policy};
use crate::progress::Progress;
use crate::results::{ResultRow, Source};
use crate::trace::Loads;
use crate::workload::Workload;

/// What to simulate on each workload.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub policies: Vec<Policy>,
    pub gates: Vec<Gate>,
    pub alphas: Vec<f64>,
    pub min_gemms: Vec<u64>,
    pub profile: Profile,
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Forward only, or a training step.
    pub pass: train::Pass,
    /// Training: recompute gate_up in backward instead of saving it.
    pub recompute: bool,
}

/// One simulated layer-step under one setting (the shared core of
/// `simulate`, `tune` and the simulated twins of replays).
#[derive(Debug, Default)]
pub struct Evaluator {
    planner: Planner,
    topo: TopoPlanner,
    plan: Plan,
    dm: DispatchMatrix,
    scratch: CostScratch,
}

impl Evaluator {
    /// Plan and price one layer. Returns the plan (borrowed) and its cost.
    pub fn eval(
        &mut self,
        per_rank: &[u64],
        global: &[u64],
        params: &PlanParams,
        policy: Policy,
        shape: &Shape,
        prof: &Profile,
    ) -> (&Plan, Cost) {
        if policy == Policy::LlepTopo && prof.nodes > 1 {
            let topo = Topology::new(params.gpus, prof.nodes as usize)
                .expect("topology checked before simulation");
            self.topo
                .plan_into(global, params, topo, &mut self.plan)
                .expect("shape checked before simulation");
        } else {
            self.planner
                .plan_into(global, params, policy, &mut self.plan)
                .expect("shape checked before simulation");
        }
        dispatch_matrix(&self.plan, per_rank, &mut self.dm);
        let cost = price(&self.plan, &self.dm, global, shape, prof, &mut self.scratch);
        (&self.plan, cost)
    }

    /// The row of the last plan priced with `cost` (its forward cost, or
    /// a bound such as `ideal`'s), with the backward added for training.
    pub fn row(
        &self,
        cost: &Cost,
        base: &ResultRow,
        shape: &Shape,
        prof: &Profile,
        pass: train::Pass,
        recompute: bool,
    ) -> ResultRow {
        let mut r = row_from(&self.plan, cost, base);
        if pass == train::Pass::Train {
            train::backward(&self.plan, &self.dm, cost, shape, prof, recompute).apply(&mut r);
        }
        r
    }
}

/// Fill a result row from a plan and its cost.
pub fn row_from(plan: &Plan, cost: &Cost, base: &ResultRow) -> ResultRow {
    let mut r = base.clone();
    r.fill_plan_stats(plan);
    r.t_overhead_ms = cost.overhead_ms;
    r.t_dispatch_ms = cost.dispatch_ms;
    r.t_transfer_ms = cost.transfer_ms;
    r.t_compute_ms = cost.compute_ms;
    r.t_combine_ms = cost.combine_ms;
    r.t_total_ms = cost.total_ms;
    r.transfer_bytes = cost.transfer_bytes;
    r.inter_node_bytes = cost.inter_node_bytes;
    r.dispatch_bytes_max = cost.dispatch_bytes_max;
    r.peak_mem_max_bytes = cost.peak_mem_per_gpu.iter().copied().max().unwrap_or(0);
    r.peak_mem_per_gpu = cost.peak_mem_per_gpu.clone();
    r.oom = cost.oom;
    r
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Topology(#[from] TopoError),
    #[error(transparent)]
    Eplb(#[from] EplbSimError),
    #[error("trace '{0}' has no model dimensions (hidden_size / intermediate_size); give --hidden-size and --intermediate-size")]
    NoDims(String),
}

/// Simulate a workload. Rows come out ordered by (step, layer, alpha, m,
/// policy, ratio). The llep plan does not depend on lambda (lambda only
/// gates it), so each (step, layer, alpha, m) is planned once and each
/// gate then picks the llep or the ep plan. `progress` advances by one per
/// layer-step.
pub fn simulate(
    w: &Workload,
    cfg: &SimConfig,
    progress: &dyn Progress,
) -> Result<Vec<ResultRow>, SimError> {
    simulate_with(w, cfg, None, progress)
}

/// [`simulate`], with the EPLB settings the `eplb` and `eplb+llep`
/// policies need (their rows follow each (alpha, m)'s other rows).
pub fn simulate_with(
    w: &Workload,
    cfg: &SimConfig,
    eplb: Option<&EplbSim>,
    progress: &dyn Progress,
) -> Result<Vec<ResultRow>, SimError> {
    let model = &w.model;
    if !model.has_dims() {
        return Err(SimError::NoDims(w.name.clone()));
    }
    let eplb = eplb.filter(|_| wants_eplb(&cfg.policies));
    if let Some(&p) = cfg.policies.iter().find(|p| is_eplb(**p)) {
        let e = eplb.ok_or(EplbSimError::Unset(p))?;
        e.check(model.num_experts as usize, w.gpus)?;
        if cfg.pass == train::Pass::Train {
            return Err(EplbSimError::Train.into());
        }
    }
    for &a in &cfg.alphas {
        crate::plan::check_shape(
            model.num_experts as usize,
            &PlanParams {
                gpus: w.gpus,
                alpha: a,
                min_gemm: 0,
                gate: Gate::Always,
            },
        )?;
    }
    Topology::new(w.gpus, cfg.profile.nodes as usize)?;
    let shape = Shape::from_model(model);
    let n_ls = w.loads.layer_steps();
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.threads
    }
    .clamp(1, n_ls.max(1));
    let chunk = n_ls.div_ceil(threads);
    let parts: Vec<Vec<ResultRow>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let shape = &shape;
                s.spawn(move || {
                    let lo = t * chunk;
                    let hi = ((t + 1) * chunk).min(n_ls);
                    simulate_range(w, lo..hi, shape, cfg, eplb, progress)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    Ok(parts.into_iter().flatten().collect())
}

/// The keys of a simulated row of layer-step `(s, l)`.
pub fn simulated_base(w: &Workload, s: usize, l: usize, prof: &Profile) -> ResultRow {
    ResultRow {
        source: Source::Simulated,
        device: prof.card.clone(),
        profile: prof.name.clone(),
        runs: 0,
        ..w.row_base(s, l)
    }
}

fn is_eplb(p: Policy) -> bool {
    matches!(p, Policy::Eplb | Policy::EplbLlep)
}

fn wants_eplb(policies: &[Policy]) -> bool {
    policies.iter().any(|&p| is_eplb(p))
}

fn simulate_range(
    w: &Workload,
    range: std::ops::Range<usize>,
    shape: &Shape,
    cfg: &SimConfig,
    eplb: Option<&EplbSim>,
    progress: &dyn Progress,
) -> Vec<ResultRow> {
    let mut ev = Evaluator::default();
    let mut eplb_ev = eplb::EplbEvaluator::default();
    let mut placements = eplb::PlacementCache::default();
    let eplb_label = eplb.map(|e| e.label()).unwrap_or_default();
    let mut rows = Vec::with_capacity(
        range.len() * (cfg.gates.len() + 2) * cfg.alphas.len() * cfg.min_gemms.len(),
    );
    let mut global = Vec::new();
    let loads: &Loads = &w.loads;
    let layers = loads.layers();
    let prof = &cfg.profile;
    let wants = |p: Policy| cfg.policies.contains(&p);
    for ls in range {
        progress.inc(1);
        let (s, l) = (ls / layers, ls % layers);
        loads.global_into(s, l, &mut global);
        let per_rank = loads.block(s, l);
        let mut b = simulated_base(w, s, l, prof);
        // the EPLB placement and its moves: once per layer-step
        let eplb_step = eplb.map(|e| {
            let (pl, moves) = placements.step(e, loads, s, l, w.gpus);
            eplb_ev.load(per_rank, w.gpus, pl, e.split);
            (eplb_label.clone(), moves)
        });
        for &alpha in &cfg.alphas {
            for &m in &cfg.min_gemms {
                let params = PlanParams {
                    gpus: w.gpus,
                    alpha,
                    min_gemm: m,
                    gate: Gate::Always,
                };
                b.alpha = alpha;
                b.min_gemm = m;
                let need_llep = wants(Policy::Llep)
                    || wants(Policy::Ideal)
                    || wants(Policy::LlepAuto)
                    || wants(Policy::LlepTopo);
                let row = |ev: &Evaluator, cost: &Cost, policy: Policy| {
                    let mut r = ev.row(cost, &b, shape, prof, cfg.pass, cfg.recompute);
                    r.policy = policy;
                    r
                };
                let (_, ep_cost) = ev.eval(per_rank, &global, &params, Policy::Ep, shape, prof);
                let ep_row = row(&ev, &ep_cost, Policy::Ep);
                if wants(Policy::Ep) {
                    rows.push(ep_row.clone());
                }
                let mut llep_cost = None;
                if need_llep {
                    let (_, cost) = ev.eval(per_rank, &global, &params, Policy::Llep, shape, prof);
                    let on = row(&ev, &cost, Policy::Llep);
                    let ratio = on.imbalance_ratio;
                    if wants(Policy::Llep) {
                        for &g in &cfg.gates {
                            let mut r = if g.admits(ratio) {
                                on.clone()
                            } else {
                                let mut r = ep_row.clone();
                                r.policy = Policy::Llep;
                                r
                            };
                            r.gate = g;
                            rows.push(r);
                        }
                    }
                    if wants(Policy::LlepAuto) {
                        // decided on the step's cost (forward, or forward + backward)
                        let mut r = if auto_prefers_llep(ep_row.t_total_ms, on.t_total_ms, prof) {
                            on.clone()
                        } else {
                            ep_row.clone()
                        };
                        r.policy = Policy::LlepAuto;
                        r.gate = Gate::Auto;
                        rows.push(r);
                    }
                    llep_cost = Some((cost, on));
                }
                if wants(Policy::LlepTopo) {
                    // the node-first plan where the model prices it no slower
                    // than llep's (ties to fewer inter-node bytes), else llep's
                    let (llep, llep_row) = llep_cost.as_ref().expect("planned above");
                    let on = (prof.nodes > 1)
                        .then(|| {
                            let (_, c) =
                                ev.eval(per_rank, &global, &params, Policy::LlepTopo, shape, prof);
                            let r = row(&ev, &c, Policy::LlepTopo);
                            (c, r)
                        })
                        .filter(|(c, _)| {
                            (c.total_ms, c.inter_node_bytes)
                                <= (llep.total_ms, llep.inter_node_bytes)
                        })
                        .map_or_else(|| llep_row.clone(), |(_, r)| r);
                    for &g in &cfg.gates {
                        let mut r = if g.admits(on.imbalance_ratio) {
                            on.clone()
                        } else {
                            ep_row.clone()
                        };
                        r.policy = Policy::LlepTopo;
                        r.gate = g;
                        rows.push(r);
                    }
                }
                if wants(Policy::Ideal) {
                    let (_, cost) = ev.eval(per_rank, &global, &params, Policy::Ideal, shape, prof);
                    let llep = &llep_cost.as_ref().expect("planned above").0;
                    let bound = ideal_bound(cost, &ep_cost, llep, &global, shape, prof, w.gpus);
                    rows.push(row(&ev, &bound, Policy::Ideal));
                }
                if let Some((label, moves)) = &eplb_step {
                    let mut b = b.clone();
                    b.input_note = format!("{}; {label}", b.input_note);
                    let ctx = EplbRowCtx {
                        params: &params,
                        moves,
                        shape,
                        prof,
                        base: &b,
                    };
                    eplb_rows(&mut eplb_ev, &ctx, cfg, &mut rows);
                }
            }
        }
    }
    rows
}

struct EplbRowCtx<'a> {
    params: &'a PlanParams,
    moves: &'a [crate::plan::Transfer],
    shape: &'a Shape,
    prof: &'a Profile,
    base: &'a ResultRow,
}

/// The `eplb` row and the `eplb+llep` rows (one per gate, LLEP over the
/// physical experts where the gate admits their residual imbalance).
fn eplb_rows(
    ev: &mut eplb::EplbEvaluator,
    c: &EplbRowCtx,
    cfg: &SimConfig,
    rows: &mut Vec<ResultRow>,
) {
    let (plan, cost) = ev.eval(c.params, false, c.moves, c.shape, c.prof);
    let mut off = row_from(plan, &cost, c.base);
    off.policy = Policy::Eplb;
    if cfg.policies.contains(&Policy::Eplb) {
        rows.push(off.clone());
    }
    if !cfg.policies.contains(&Policy::EplbLlep) {
        return;
    }
    let (plan, cost) = ev.eval(c.params, true, c.moves, c.shape, c.prof);
    let ratio = plan.imbalance_ratio;
    let mut on = row_from(plan, &cost, c.base);
    on.policy = Policy::EplbLlep;
    off.policy = Policy::EplbLlep;
    // with only `--ratio auto`, eplb+llep plans every layer
    let always = [Gate::Always];
    let gates = if cfg.gates.is_empty() {
        &always[..]
    } else {
        &cfg.gates[..]
    };
    for &g in gates {
        let mut r = if g.admits(ratio) {
            on.clone()
        } else {
            off.clone()
        };
        r.gate = g;
        rows.push(r);
    }
}

/// The safety margin of the cost-aware gate: LLEP must win by more than the
/// profile's measured median error (5% when it was never measured).
pub fn auto_margin(prof: &Profile) -> f64 {
    prof.measured_error
        .as_ref()
        .map_or(0.05, |e| e.median_abs_pct / 100.0)
}

/// The cost-aware gate's rule, shared by `simulate` and (through
/// [`CostArbiter`]) `replay`: use LLEP only when its predicted time (a
/// layer's forward, or a training step), inflated by the margin, still
/// beats EP's.
pub fn auto_prefers_llep(ep_ms: f64, llep_ms: f64, prof: &Profile) -> bool {
    llep_ms * (1.0 + auto_margin(prof)) < ep_ms
}

/// [`crate::plan::Arbiter`] by the cost model, for the replay's `llep-auto`.
#[derive(Debug, Clone)]
pub struct CostArbiter {
    pub shape: Shape,
    pub profile: Profile,
}

impl CostArbiter {
    /// Predicted layer time of the EP and the LLEP plan, milliseconds.
    pub fn predict(&self, ep: &Plan, llep: &Plan, per_rank: &[u64], global: &[u64]) -> (f64, f64) {
        let mut scratch = CostScratch::default();
        let mut dm = DispatchMatrix::default();
        let mut cost = |plan: &Plan| {
            dispatch_matrix(plan, per_rank, &mut dm);
            price(plan, &dm, global, &self.shape, &self.profile, &mut scratch).total_ms
        };
        (cost(ep), cost(llep))
    }
}

impl crate::plan::Arbiter for CostArbiter {
    fn prefers_llep(&self, ep: &Plan, llep: &Plan, per_rank: &[u64], global: &[u64]) -> bool {
        let (e, l) = self.predict(ep, llep, per_rank, global);
        auto_prefers_llep(e, l, &self.profile)
    }
}

/// The `ideal` policy's price: a lower bound on every policy's layer time in
/// this cost model. Compute is every expert's whole-group GEMM time spread
/// perfectly over the GPUs (splitting an expert only loses efficiency), and
/// never more than EP's or LLEP's; the exchange is the cheaper of EP's and
/// LLEP's; weights move for free. Memory is that of the balanced plan.
#[allow(clippy::too_many_arguments)]
pub fn ideal_bound(
    balanced: Cost,
    ep: &Cost,
    llep: &Cost,
    global: &[u64],
    shape: &Shape,
    prof: &Profile,
    gpus: usize,
) -> Cost {
    let whole: f64 = global.iter().map(|&c| prof.gemm_ms(c, shape)).sum();
    let compute = (whole / gpus as f64)
        .min(ep.compute_ms)
        .min(llep.compute_ms);
    let dispatch = ep.dispatch_ms.min(llep.dispatch_ms);
    let combine = ep.combine_ms.min(llep.combine_ms);
    let overhead = ep.overhead_ms.min(llep.overhead_ms);
    Cost {
        overhead_ms: overhead,
        dispatch_ms: dispatch,
        transfer_ms: 0.0,
        compute_ms: compute,
        combine_ms: combine,
        total_ms: overhead + dispatch + compute + combine,
        transfer_bytes: 0,
        ..balanced
    }
}

/// Summary of rows for one (policy, lambda, alpha, m) setting over a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Synthetic scenario ("" for traces).
    pub scenario: String,
    pub policy: Policy,
    pub gate: Gate,
    pub alpha: f64,
    pub min_gemm: u64,
    pub layer_steps: usize,
    pub total_ms: f64,
    pub speedup_vs_ep: f64,
    pub mean_ratio_before: f64,
    pub mean_ratio_after: f64,
    pub peak_mem_max_bytes: u64,
    pub oom_rows: usize,
    pub transfers: u64,
    pub duplicates: u64,
    pub llep_on: usize,
    pub phases_ms: [f64; 5],
    /// Bytes crossing nodes, summed over the layer-steps.
    pub inter_node_bytes: u64,
    /// Training rows: activations saved for backward, max over GPUs and
    /// layer-steps (0 for forward rows).
    pub saved_act_max_bytes: u64,
    pub pass: train::Pass,
}

/// Aggregate rows per (scenario, policy, lambda, alpha, m), in first-seen
/// order; speedups against the EP rows of the same scenario, alpha and m.
pub fn summarize(rows: &[ResultRow]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    let key = |r: &ResultRow| {
        (
            r.scenario.clone(),
            r.policy,
            r.lambda().map(f64::to_bits),
            r.alpha.to_bits(),
            r.min_gemm,
        )
    };
    let mut keys: Vec<(String, Policy, Option<u64>, u64, u64)> = Vec::new();
    for r in rows {
        let k = key(r);
        let idx = match keys.iter().position(|x| *x == k) {
            Some(i) => i,
            None => {
                keys.push(k);
                out.push(Summary {
                    scenario: r.scenario.clone(),
                    policy: r.policy,
                    gate: r.gate,
                    alpha: r.alpha,
                    min_gemm: r.min_gemm,
                    layer_steps: 0,
                    total_ms: 0.0,
                    speedup_vs_ep: f64::NAN,
                    mean_ratio_before: 0.0,
                    mean_ratio_after: 0.0,
                    peak_mem_max_bytes: 0,
                    oom_rows: 0,
                    transfers: 0,
                    duplicates: 0,
                    llep_on: 0,
                    phases_ms: [0.0; 5],
                    inter_node_bytes: 0,
                    saved_act_max_bytes: 0,
                    pass: r.pass,
                });
                out.len() - 1
            }
        };
        let s = &mut out[idx];
        s.layer_steps += 1;
        s.total_ms += r.t_total_ms;
        s.mean_ratio_before += r.imbalance_ratio;
        s.mean_ratio_after += if r.mean_load > 0.0 {
            r.max_load_after as f64 / r.mean_load
        } else {
            1.0
        };
        s.peak_mem_max_bytes = s.peak_mem_max_bytes.max(r.peak_mem_max_bytes);
        s.oom_rows += r.oom as usize;
        s.saved_act_max_bytes = s.saved_act_max_bytes.max(r.saved_act_bytes);
        s.transfers += r.transfers as u64;
        s.duplicates += r.duplicate_transfers as u64;
        s.llep_on += r.use_llep as usize;
        s.inter_node_bytes += r.inter_node_bytes;
        for (acc, v) in s.phases_ms.iter_mut().zip([
            r.t_overhead_ms,
            r.t_dispatch_ms,
            r.t_transfer_ms,
            r.t_compute_ms,
            r.t_combine_ms,
        ]) {
            *acc += v;
        }
    }
    for s in &mut out {
        let n = s.layer_steps.max(1) as f64;
        s.mean_ratio_before /= n;
        s.mean_ratio_after /= n;
    }
    let eps: Vec<(String, u64, u64, f64)> = out
        .iter()
        .filter(|s| s.policy == Policy::Ep)
        .map(|s| {
            (
                s.scenario.clone(),
                s.alpha.to_bits(),
                s.min_gemm,
                s.total_ms,
            )
        })
        .collect();
    for s in &mut out {
        if let Some((_, _, _, ep)) = eps
            .iter()
            .find(|(sc, a, m, _)| *sc == s.scenario && *a == s.alpha.to_bits() && *m == s.min_gemm)
        {
            s.speedup_vs_ep = ep / s.total_ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use crate::trace::tokens::SplitMix64;
    use crate::workload::InputSpec;

    /// Random skewed workloads from decode to prefill sizes.
    fn workload(rng: &mut SplitMix64, gpus: usize, tokens: u64) -> Workload {
        let sc = match rng.below(4) {
            0 => "balanced".to_string(),
            _ => format!("{}:{}", 10 + rng.below(90), 1 + rng.below(8)),
        };
        let mut spec = InputSpec::synthetic(vec![sc.parse().unwrap()], gpus);
        spec.tokens_per_rank = Some(tokens);
        spec.resolve().unwrap().remove(0)
    }

    #[test]
    fn ideal_is_a_lower_bound_and_auto_never_loses_by_more_than_its_margin() {
        let prof = Profile::load("h200").unwrap();
        let margin = auto_margin(&prof);
        let cfg = SimConfig {
            policies: vec![Policy::Ep, Policy::Llep, Policy::LlepAuto, Policy::Ideal],
            gates: vec![Gate::Always, Gate::Ratio(1.3)],
            alphas: vec![1.0],
            min_gemms: vec![1024, 64],
            profile: prof,
            threads: 1,
            pass: crate::results::Pass::Forward,
            recompute: false,
        };
        let mut rng = SplitMix64::new(7);
        for _ in 0..40 {
            let gpus = [2, 4, 8][rng.below(3) as usize];
            let tokens = [64, 512, 2048, 8192, 32768][rng.below(5) as usize];
            let w = workload(&mut rng, gpus, tokens);
            let rows = simulate(&w, &cfg, &Silent).unwrap();
            for set in rows.chunks(5) {
                let t = |p: Policy, g: Gate| {
                    set.iter()
                        .find(|r| r.policy == p && (p != Policy::Llep || r.gate == g))
                        .unwrap()
                        .t_total_ms
                };
                let (ep, llep, llep13) = (
                    t(Policy::Ep, Gate::Never),
                    t(Policy::Llep, Gate::Always),
                    t(Policy::Llep, Gate::Ratio(1.3)),
                );
                let (auto, ideal) = (
                    t(Policy::LlepAuto, Gate::Auto),
                    t(Policy::Ideal, Gate::Never),
                );
                let best = ep.min(llep);
                assert!(
                    ideal <= best + 1e-12,
                    "ideal {ideal} above min(ep {ep}, llep {llep})"
                );
                assert!(ideal <= llep13 + 1e-12);
                assert!(auto <= ep + 1e-12, "auto {auto} above ep {ep}");
                assert!(
                    auto <= best * (1.0 + margin) + 1e-12,
                    "auto {auto}, best {best}"
                );
            }
        }
    }

    #[test]
    fn a_training_step_costs_its_backward_and_recompute_trades_memory_for_time() {
        let w = workload(&mut SplitMix64::new(3), 4, 8192);
        let run = |pass, recompute| {
            let cfg = SimConfig {
                policies: vec![Policy::Ep, Policy::Llep],
                gates: vec![Gate::Always],
                alphas: vec![1.0],
                min_gemms: vec![1024],
                profile: Profile::load("h200").unwrap(),
                threads: 1,
                pass,
                recompute,
            };
            simulate(&w, &cfg, &Silent).unwrap()
        };
        let (fwd, train, rec) = (
            run(train::Pass::Forward, false),
            run(train::Pass::Train, false),
            run(train::Pass::Train, true),
        );
        for ((f, t), r) in fwd.iter().zip(&train).zip(&rec) {
            assert_eq!(t.pass, train::Pass::Train);
            // backward: at least the forward's GEMMs twice and its exchanges
            assert!(t.t_total_ms >= f.t_total_ms + 2.0 * f.t_compute_ms + f.t_combine_ms - 1e-9);
            assert!(t.peak_mem_max_bytes > f.peak_mem_max_bytes);
            assert!(r.t_total_ms > t.t_total_ms && r.saved_act_bytes < t.saved_act_bytes);
            // only LLEP's foreign experts send gradients back
            assert_eq!(t.t_grad_return_ms > 0.0, t.transfers > 0, "{t:?}");
        }
    }
}
