//! Simulation: plan every (step, layer) of a trace under each policy and
//! setting, price it with a hardware profile, and emit result rows.

pub mod accuracy;
pub mod bwd;
pub mod cost;
pub mod eplb;
mod evaluator;
#[cfg(test)]
mod golden;
mod groups;
pub mod model;
pub mod overlap;
pub mod power;
pub mod profile;
mod stream;
mod summary;
pub mod train;

pub use cost::{price, Cost, CostScratch, Shape};
pub use eplb::{EplbSim, EplbSimError, ReplicaSplit};
pub use evaluator::{row_from, Evaluator};
pub use profile::{Profile, ProfileError};
pub use stream::{
    chunk_layer_steps, simulate_chunked, simulate_stream, RowSink, CHUNK_INPUT_BYTES, CHUNK_ROWS,
};
pub use summary::{summarize, Summarizer, Summary};

use crate::plan::topo::TopoError;
use crate::plan::{dispatch_matrix, DispatchMatrix, Gate, Plan, PlanParams, Policy};
use crate::progress::Progress;
use crate::results::{ResultRow, Source};
use crate::trace::Loads;
use crate::workload::{Chunk, Workload};

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

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Topology(#[from] TopoError),
    #[error(transparent)]
    Eplb(#[from] EplbSimError),
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
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
    stream::check(&w.model, w.gpus, &w.name, cfg, eplb)?;
    let mut rows = Vec::new();
    stream::drive(
        std::iter::once(Ok(Chunk::Whole(w))),
        cfg,
        eplb,
        progress,
        &mut |r| {
            if rows.is_empty() {
                rows = r;
            } else {
                rows.extend(r);
            }
            Ok(())
        },
    )?;
    Ok(rows)
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
    eplb: Option<&stream::ChunkEplb>,
    progress: &dyn Progress,
) -> Vec<ResultRow> {
    if range.is_empty() {
        return Vec::new();
    }
    let mut ev = Evaluator::default();
    // a training row's backward reads each plan's dispatch matrix
    ev.price_from_sums(cfg.pass == train::Pass::Forward);
    let mut eplb_ev = eplb::EplbEvaluator::default();
    let mut rows = Vec::with_capacity(
        range.len() * (cfg.gates.len() + 2) * cfg.alphas.len() * cfg.min_gemms.len(),
    );
    let mut global = Vec::new();
    let loads: &Loads = &w.loads;
    let layers = loads.layers();
    let prof = &cfg.profile;
    let wants = |p: Policy| cfg.policies.contains(&p);
    let mut ticks = 0u64;
    let mut b = simulated_base(w, 0, 0, prof);
    for ls in range {
        // progress in batches: a shared bar's lock per layer-step costs
        ticks += 1;
        if ticks == 64 {
            progress.inc(ticks);
            ticks = 0;
        }
        let (s, l) = (ls / layers, ls % layers);
        let per_rank = loads.block(s, l);
        // one pass over the per-rank counts: global counts and native matrix
        ev.load_with_global(per_rank, w.gpus, &mut global);
        b.step = loads.step_ids[s];
        b.layer = loads.layer_ids[l];
        // as `Workload::tokens_per_rank`, from the global counts' total
        let k = w.model.top_k.max(1) as u64;
        b.tokens_per_rank = global.iter().sum::<u64>() / (w.gpus as u64 * k);
        // the EPLB placement and its moves: worked out before the chunk
        let eplb_step = eplb.map(|c| {
            let (pi, moves) = &c.at[ls];
            eplb_ev.load(per_rank, w.gpus, &c.placements[*pi], c.split);
            (&c.label, &moves[..])
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
                // each cost's per-GPU peaks move into its row (no later use
                // of the cost reads them)
                let row = |ev: &Evaluator, cost: &mut Cost, policy: Policy| {
                    let mut r = ev.row_taking_peaks(cost, &b, shape, prof, cfg.pass, cfg.recompute);
                    r.policy = policy;
                    r
                };
                let as_is = |_: &mut ResultRow| {};
                let (_, mut ep_cost) =
                    ev.eval_loaded(per_rank, &global, &params, Policy::Ep, shape, prof);
                let mut ep_row = Kept::Aside(row(&ev, &mut ep_cost, Policy::Ep));
                if wants(Policy::Ep) {
                    ep_row.emit(&mut rows, as_is);
                }
                let mut llep_cost = None;
                if need_llep {
                    let (_, mut cost) =
                        ev.eval_loaded(per_rank, &global, &params, Policy::Llep, shape, prof);
                    let mut on = Kept::Aside(row(&ev, &mut cost, Policy::Llep));
                    let ratio = on.get(&rows).imbalance_ratio;
                    if wants(Policy::Llep) {
                        for &g in &cfg.gates {
                            let src = if g.admits(ratio) {
                                &mut on
                            } else {
                                &mut ep_row
                            };
                            src.emit(&mut rows, |r| {
                                r.policy = Policy::Llep;
                                r.gate = g;
                            });
                        }
                    }
                    if wants(Policy::LlepAuto) {
                        // decided on the step's cost (forward, or forward + backward)
                        let (ep_ms, on_ms, t) = (
                            ep_row.get(&rows).t_total_ms,
                            on.get(&rows).t_total_ms,
                            b.tokens_per_rank,
                        );
                        let src = if auto_prefers_llep_at(ep_ms, on_ms, prof, t) {
                            &mut on
                        } else {
                            &mut ep_row
                        };
                        src.emit(&mut rows, |r| {
                            r.policy = Policy::LlepAuto;
                            r.gate = Gate::Auto;
                        });
                    }
                    llep_cost = Some((cost, on));
                }
                if wants(Policy::LlepTopo) {
                    // the node-first plan where the model prices it no slower
                    // than llep's (ties to fewer inter-node bytes), else llep's
                    let (llep, llep_row) = llep_cost.as_ref().expect("planned above");
                    let mut on = Kept::Aside(
                        (prof.nodes > 1)
                            .then(|| {
                                let (_, mut c) = ev.eval_loaded(
                                    per_rank,
                                    &global,
                                    &params,
                                    Policy::LlepTopo,
                                    shape,
                                    prof,
                                );
                                let r = row(&ev, &mut c, Policy::LlepTopo);
                                (c, r)
                            })
                            .filter(|(c, _)| {
                                (c.total_ms, c.inter_node_bytes)
                                    <= (llep.total_ms, llep.inter_node_bytes)
                            })
                            .map_or_else(|| llep_row.get(&rows).clone(), |(_, r)| r),
                    );
                    let ratio = on.get(&rows).imbalance_ratio;
                    for &g in &cfg.gates {
                        let src = if g.admits(ratio) {
                            &mut on
                        } else {
                            &mut ep_row
                        };
                        src.emit(&mut rows, |r| {
                            r.policy = Policy::LlepTopo;
                            r.gate = g;
                        });
                    }
                }
                if wants(Policy::Ideal) {
                    let (_, cost) =
                        ev.eval_loaded(per_rank, &global, &params, Policy::Ideal, shape, prof);
                    let llep = &llep_cost.as_ref().expect("planned above").0;
                    let mut bound = ideal_bound(cost, &ep_cost, llep, &global, shape, prof, w.gpus);
                    let mut r = row(&ev, &mut bound, Policy::Ideal);
                    if cfg.pass == train::Pass::Train {
                        let llep_row = llep_cost.as_ref().expect("planned above").1.get(&rows);
                        ideal_train_bound(&mut r, bound.total_ms, ep_row.get(&rows), llep_row);
                    }
                    rows.push(r);
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
    progress.inc(ticks);
    rows
}

/// A result row built once and emitted as often as the settings want it:
/// moved into the output the first time, cloned from there after. Every
/// emission sets the fields it changes (policy, gate), so reads through
/// [`Kept::get`] must be of other fields.
// a few live on the stack per setting; boxing would cost an allocation per row
#[allow(clippy::large_enum_variant)]
enum Kept {
    Aside(ResultRow),
    /// Its index in the output rows.
    Out(usize),
}

impl Kept {
    fn get<'a>(&'a self, rows: &'a [ResultRow]) -> &'a ResultRow {
        match self {
            Kept::Aside(r) => r,
            Kept::Out(i) => &rows[*i],
        }
    }

    fn emit(&mut self, rows: &mut Vec<ResultRow>, set: impl FnOnce(&mut ResultRow)) {
        let mut r = match std::mem::replace(self, Kept::Out(rows.len())) {
            Kept::Aside(r) => r,
            Kept::Out(i) => {
                *self = Kept::Out(i);
                rows[i].clone()
            }
        };
        set(&mut r);
        rows.push(r);
    }
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

/// The margin at a batch size of `tokens_per_gpu`, for the launch mode
/// priced (CUDA graphs or not):
/// - the margin stamped for that mode, chosen on measured inputs where both
///   plans ran (`MeasuredError::gate_margin`): it sends the fewest of them
///   to the slower plan;
/// - else, in profiles stamped before that, the median error of the
///   replayed batch size nearest it (in ratio): a margin that large keeps
///   LLEP off where it measured 5-20% faster, since EP's and LLEP's prices
///   of one input err together;
/// - else [`auto_margin`].
pub fn auto_margin_at(prof: &Profile, tokens_per_gpu: u64) -> f64 {
    let Some(e) = &prof.measured_error else {
        return auto_margin(prof);
    };
    let chosen = if prof.cuda_graphs {
        e.graph_gate_margin
    } else {
        e.gate_margin
    };
    if let Some(g) = chosen {
        return g.margin_pct / 100.0;
    }
    let by = if prof.cuda_graphs && !e.graph_by_tokens.is_empty() {
        &e.graph_by_tokens
    } else {
        &e.by_tokens
    };
    let x = (tokens_per_gpu.max(1) as f64).ln();
    let off = |t: u64| ((t.max(1) as f64).ln() - x).abs();
    by.iter()
        .min_by(|a, b| off(a.0).total_cmp(&off(b.0)))
        .map_or(auto_margin(prof), |&(_, pct)| pct / 100.0)
}

/// The cost-aware gate's rule, shared by `simulate` and (through
/// [`CostArbiter`]) `replay` and `plan`: use LLEP only when its predicted
/// time (a layer's forward, or a training step), inflated by the margin at
/// this batch size, still beats EP's.
pub fn auto_prefers_llep_at(ep_ms: f64, llep_ms: f64, prof: &Profile, tokens_per_gpu: u64) -> bool {
    prefers_llep_by(ep_ms, llep_ms, auto_margin_at(prof, tokens_per_gpu))
}

/// The gate's rule at a given margin (a fraction): LLEP's time, inflated
/// by it, still beats EP's.
pub fn prefers_llep_by(ep_ms: f64, llep_ms: f64, margin: f64) -> bool {
    llep_ms * (1.0 + margin) < ep_ms
}

/// [`crate::plan::Arbiter`] by the cost model, for the replay's `llep-auto`.
#[derive(Debug, Clone)]
pub struct CostArbiter {
    pub shape: Shape,
    pub profile: Profile,
}

impl CostArbiter {
    /// Predicted layer time of the EP and the LLEP plan, milliseconds.
    ///
    /// Replay decides on the host between the count all-gather and the
    /// tables' upload, so this time is on the layer's critical path: the
    /// scratch buffers are kept per thread, and the LLEP plan reuses the
    /// group times of every expert it leaves whole where EP has it.
    pub fn predict(&self, ep: &Plan, llep: &Plan, per_rank: &[u64], global: &[u64]) -> (f64, f64) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<(CostScratch, DispatchMatrix, cost::GroupMemo)> =
                std::cell::RefCell::default();
        }
        SCRATCH.with(|s| {
            let (scratch, dm, memo) = &mut *s.borrow_mut();
            // the decision reads the layer times alone
            scratch.time_only = true;
            memo.clear(ep.experts);
            let mut cost = |plan: &Plan| {
                dispatch_matrix(plan, per_rank, dm);
                let (shape, prof) = (&self.shape, &self.profile);
                cost::price_memo(plan, dm, global, shape, prof, scratch, Some(&mut *memo)).total_ms
            };
            (cost(ep), cost(llep))
        })
    }
}

impl CostArbiter {
    /// Tokens per GPU of a layer with `per_rank` copies (`[P][N]`).
    pub fn tokens_per_gpu(&self, ep: &Plan, per_rank: &[u64]) -> u64 {
        per_rank.iter().sum::<u64>() / (ep.gpus.max(1) as u64 * self.shape.top_k.max(1))
    }

    /// (EP ms, LLEP ms, use LLEP): the decision `replay` makes.
    pub fn decide(
        &self,
        ep: &Plan,
        llep: &Plan,
        per_rank: &[u64],
        global: &[u64],
    ) -> (f64, f64, bool) {
        let (e, l) = self.predict(ep, llep, per_rank, global);
        let t = self.tokens_per_gpu(ep, per_rank);
        (e, l, auto_prefers_llep_at(e, l, &self.profile, t))
    }
}

impl crate::plan::Arbiter for CostArbiter {
    fn prefers_llep(&self, ep: &Plan, llep: &Plan, per_rank: &[u64], global: &[u64]) -> bool {
        // an LLEP plan that splits and moves nothing is EP's plan: nothing
        // to price (replay decides on the layer's critical path)
        if llep.spills.is_empty() && llep.transfers.is_empty() {
            return false;
        }
        self.decide(ep, llep, per_rank, global).2
    }
}

/// The backward half of `ideal`'s training row as a bound too: each
/// backward phase the least of EP's and LLEP's (the ideal plan's split
/// groups would price its GEMMs above LLEP's whole ones), weight gradients
/// returned for free, and the step never above either policy's.
fn ideal_train_bound(r: &mut ResultRow, fwd_ms: f64, ep: &ResultRow, llep: &ResultRow) {
    let least = |own: f64, f: fn(&ResultRow) -> f64| own.min(f(ep)).min(f(llep));
    r.t_bwd_combine_ms = least(r.t_bwd_combine_ms, |x| x.t_bwd_combine_ms);
    r.t_bwd_dgrad_ms = least(r.t_bwd_dgrad_ms, |x| x.t_bwd_dgrad_ms);
    r.t_bwd_wgrad_ms = least(r.t_bwd_wgrad_ms, |x| x.t_bwd_wgrad_ms);
    r.t_bwd_dispatch_ms = least(r.t_bwd_dispatch_ms, |x| x.t_bwd_dispatch_ms);
    r.t_grad_return_ms = 0.0;
    let bwd = r.t_bwd_combine_ms + r.t_bwd_dgrad_ms + r.t_bwd_wgrad_ms + r.t_bwd_dispatch_ms;
    r.t_total_ms = (fwd_ms + bwd).min(ep.t_total_ms).min(llep.t_total_ms);
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
    let pricer = prof.group_pricer(shape);
    let whole: f64 = global.iter().map(|&c| pricer.ms(c)).sum();
    let dispatch = ep.dispatch_ms.min(llep.dispatch_ms);
    let combine = ep.combine_ms.min(llep.combine_ms);
    let overhead = ep.overhead_ms.min(llep.overhead_ms);
    // the tables are burst speeds: a GPU doing its even share pays the
    // power cap by its duty as every plan's GPUs do (`cost::price_sums`)
    let mut compute = whole / gpus as f64;
    if let Some(pw) = prof.power {
        let rows = global.iter().sum::<u64>() as f64 / gpus as f64;
        let work = pw
            .work_ms(rows, shape.hidden, shape.intermediate)
            .min(compute);
        let (burst, fixed) = (compute, overhead + dispatch + combine);
        for _ in 0..2 {
            compute = burst + pw.extra_ms(work, dispatch + combine, fixed + compute);
        }
    }
    let compute = compute.min(ep.compute_ms).min(llep.compute_ms);
    Cost {
        overhead_ms: overhead,
        dispatch_ms: dispatch,
        transfer_ms: 0.0,
        compute_ms: compute,
        combine_ms: combine,
        // under replay's schedule a GPU's dispatch and compute add up per
        // GPU, so the sum of the phases' maxima can pass a plan's total:
        // the bound is never above either plan's
        total_ms: (overhead + dispatch + compute + combine)
            .min(ep.total_ms)
            .min(llep.total_ms),
        transfer_bytes: 0,
        ..balanced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Planner;
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
    fn the_gates_time_only_prices_are_the_full_prices() {
        // the arbiter skips peak memory and reuses its buffers from call
        // to call: its layer times must be simulate's, bit for bit, with
        // the pipelined schedule and without, decode to prefill sizes
        let mut rng = SplitMix64::new(77);
        for overlap in [
            crate::gpu::pipeline::Overlap::Off,
            crate::gpu::pipeline::Overlap::On(0),
        ] {
            let mut profile = Profile::load("h200").unwrap();
            profile.overlap = overlap;
            let arb = CostArbiter {
                shape: Shape::bf16(2048, 768, 8),
                profile,
            };
            for tokens in [128u64, 2048, 8192, 32768] {
                let w = workload(&mut rng, 2, tokens);
                let per_rank = w.loads.block(0, 0).to_vec();
                let global = w.loads.global(0, 0);
                let params = PlanParams {
                    gpus: 2,
                    alpha: 1.0,
                    min_gemm: 64,
                    gate: Gate::Always,
                };
                let mut planner = Planner::new();
                let ep = planner.plan(&global, &params, Policy::Ep).unwrap();
                let llep = planner.plan(&global, &params, Policy::Llep).unwrap();
                let (e, l) = arb.predict(&ep, &llep, &per_rank, &global);
                let full = |plan: &Plan| {
                    let mut dm = DispatchMatrix::default();
                    dispatch_matrix(plan, &per_rank, &mut dm);
                    let mut sc = CostScratch::default();
                    let c = cost::price(plan, &dm, &global, &arb.shape, &arb.profile, &mut sc);
                    assert!(!c.peak_mem_per_gpu.is_empty());
                    c.total_ms
                };
                assert_eq!(e.to_bits(), full(&ep).to_bits(), "{overlap:?} {tokens}");
                assert_eq!(l.to_bits(), full(&llep).to_bits(), "{overlap:?} {tokens}");
            }
        }
    }

    #[test]
    fn replay_gate_skips_pricing_a_plan_that_is_eps_and_agrees_with_decide() {
        use crate::plan::Arbiter;
        let (d, i) = (2880u64, 2880u64);
        let arb = CostArbiter {
            shape: Shape::bf16(d, i, 4),
            profile: Profile::load("h200").unwrap(),
        };
        let p = 4;
        let params = PlanParams {
            gpus: p,
            alpha: 1.0,
            min_gemm: 64,
            gate: Gate::Auto,
        };
        let mut planner = Planner::new();
        for (hot, copies) in [(0u64, 2048u64), (60, 2048), (60, 131_072), (95, 512)] {
            // per rank: `hot`% of its copies on expert 0, the rest spread
            let n = 128;
            let mut per_rank = vec![0u64; p * n];
            for r in 0..p {
                per_rank[r * n] = copies * hot / 100;
                let rest = copies - per_rank[r * n];
                for e in 0..n {
                    per_rank[r * n + e] +=
                        rest / n as u64 + u64::from((e as u64) < rest % n as u64);
                }
            }
            let global: Vec<u64> = (0..n)
                .map(|e| (0..p).map(|r| per_rank[r * n + e]).sum())
                .collect();
            let llep = planner.plan(&global, &params, Policy::LlepAuto).unwrap();
            let ep = planner.plan(&global, &params, Policy::Ep).unwrap();
            let (e, l, use_llep) = arb.decide(&ep, &llep, &per_rank, &global);
            assert_eq!(arb.prefers_llep(&ep, &llep, &per_rank, &global), use_llep);
            if llep.spills.is_empty() && llep.transfers.is_empty() {
                // the same plan: the same price, and EP kept
                assert!((e - l).abs() < 1e-12 && !use_llep, "{e} {l}");
            }
            if hot == 60 && copies == 131_072 {
                assert!(use_llep, "a prefill-sized skewed layer: EP {e}, LLEP {l}");
            }
        }
    }

    #[test]
    fn ideal_is_a_lower_bound_and_auto_never_loses_by_more_than_its_margin() {
        let prof = Profile::load("h200").unwrap();
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
        for i in 0..60 {
            // a third of the inputs as training steps (with and without recompute)
            let mut cfg = cfg.clone();
            if i % 3 == 2 {
                cfg.pass = crate::results::Pass::Train;
                cfg.recompute = i % 2 == 0;
            }
            let gpus = [2, 4, 8][rng.below(3) as usize];
            let tokens = [64, 512, 2048, 8192, 32768][rng.below(5) as usize];
            let w = workload(&mut rng, gpus, tokens);
            let rows = simulate(&w, &cfg, &Silent).unwrap();
            for set in rows.chunks(5) {
                let margin = auto_margin_at(&cfg.profile, set[0].tokens_per_rank);
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
