//! Simulation: plan every (step, layer) of a trace under each policy and
//! setting, price it with a hardware profile, and emit result rows.

pub mod accuracy;
pub mod cost;
pub mod model;
pub mod profile;

pub use cost::{price, Cost, CostScratch, Shape};
pub use profile::{Profile, ProfileError};

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
}

/// One simulated layer-step under one setting (the shared core of
/// `simulate`, `tune` and the simulated twins of replays).
#[derive(Debug, Default)]
pub struct Evaluator {
    planner: Planner,
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
        self.planner
            .plan_into(global, params, policy, &mut self.plan)
            .expect("shape checked before simulation");
        dispatch_matrix(&self.plan, per_rank, &mut self.dm);
        let cost = price(&self.plan, &self.dm, global, shape, prof, &mut self.scratch);
        (&self.plan, cost)
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
    let model = &w.model;
    if !model.has_dims() {
        return Err(SimError::NoDims(w.name.clone()));
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
                    simulate_range(w, lo..hi, shape, cfg, progress)
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

fn simulate_range(
    w: &Workload,
    range: std::ops::Range<usize>,
    shape: &Shape,
    cfg: &SimConfig,
    progress: &dyn Progress,
) -> Vec<ResultRow> {
    let mut ev = Evaluator::default();
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
                let mut ep_row = None;
                if wants(Policy::Ep) || wants(Policy::Llep) {
                    let (plan, cost) = ev.eval(per_rank, &global, &params, Policy::Ep, shape, prof);
                    let mut r = row_from(plan, &cost, &b);
                    r.policy = Policy::Ep;
                    ep_row = Some(r);
                }
                if wants(Policy::Ep) {
                    rows.push(ep_row.clone().unwrap());
                }
                if wants(Policy::Llep) {
                    let (plan, cost) =
                        ev.eval(per_rank, &global, &params, Policy::Llep, shape, prof);
                    let mut on = row_from(plan, &cost, &b);
                    on.policy = Policy::Llep;
                    let ratio = plan.imbalance_ratio;
                    for &g in &cfg.gates {
                        let mut r = if g.admits(ratio) {
                            on.clone()
                        } else {
                            let mut r = ep_row.clone().unwrap();
                            r.policy = Policy::Llep;
                            r
                        };
                        r.gate = g;
                        rows.push(r);
                    }
                }
                if wants(Policy::Ideal) {
                    let (plan, cost) =
                        ev.eval(per_rank, &global, &params, Policy::Ideal, shape, prof);
                    let mut r = row_from(plan, &cost, &b);
                    r.policy = Policy::Ideal;
                    rows.push(r);
                }
            }
        }
    }
    rows
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
        s.transfers += r.transfers as u64;
        s.duplicates += r.duplicate_transfers as u64;
        s.llep_on += r.use_llep as usize;
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
