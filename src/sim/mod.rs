//! Simulation: plan every (step, layer) of a trace under each policy and
//! setting, price it with a hardware profile, and emit result rows.

pub mod accuracy;
pub mod cost;
pub mod profile;

pub use cost::{price, Cost, CostScratch, Shape};
pub use profile::{Profile, ProfileError};

use crate::plan::{dispatch_matrix, DispatchMatrix, Plan, PlanParams, Planner, Policy};
use crate::results::{ResultRow, SOURCE_SIMULATED};
use crate::trace::{EpSplit, Loads, Trace};

/// A lambda setting: a threshold, or `Always` (the planner always runs,
/// as when the variable is unset or <= 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    Always,
    Ratio(f64),
}

impl Gate {
    pub fn lambda(self) -> Option<f64> {
        match self {
            Gate::Always => None,
            Gate::Ratio(r) => Some(r),
        }
    }
}

/// Parse `--ratio`: one value, a comma list, or a range `start:end:step`
/// (inclusive of `end` within rounding). `always` (or a value <= 0, as in
/// the reference) means always plan.
pub fn parse_ratios(spec: &str) -> Result<Vec<Gate>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if part.eq_ignore_ascii_case("always") {
            out.push(Gate::Always);
            continue;
        }
        let nums: Vec<&str> = part.split(':').collect();
        let num = |s: &str| -> Result<f64, String> {
            let v: f64 = s
                .trim()
                .parse()
                .map_err(|_| format!("'{s}' is not a number"))?;
            if !v.is_finite() {
                return Err(format!("'{s}' is not a finite number"));
            }
            Ok(v)
        };
        match nums.len() {
            1 => {
                let v = num(nums[0])?;
                out.push(if v <= 0.0 {
                    Gate::Always
                } else {
                    Gate::Ratio(v)
                });
            }
            3 => {
                let (a, b, st) = (num(nums[0])?, num(nums[1])?, num(nums[2])?);
                if st <= 0.0 {
                    return Err(format!("range '{part}': step must be > 0"));
                }
                if a <= 0.0 || b < a {
                    return Err(format!("range '{part}': need 0 < start <= end"));
                }
                let n = ((b - a) / st + 1e-9).floor() as usize;
                if n > 100_000 {
                    return Err(format!("range '{part}' has too many values"));
                }
                for i in 0..=n {
                    // round to 1e-9 so 1.0:3.0:0.1 gives 1.3, not 1.3000000000000003
                    let v = ((a + st * i as f64) * 1e9).round() / 1e9;
                    out.push(Gate::Ratio(v));
                }
            }
            _ => {
                return Err(format!(
                    "'{part}' is neither a number nor a range start:end:step"
                ))
            }
        }
    }
    if out.is_empty() {
        return Err("no ratio given".into());
    }
    Ok(out)
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub gpus: usize,
    pub policies: Vec<Policy>,
    pub gates: Vec<Gate>,
    pub alphas: Vec<f64>,
    pub min_gemms: Vec<u64>,
    pub profile: Profile,
    /// Rescale (load level) or resample (token level) to this many tokens
    /// per rank per step.
    pub tokens_per_rank: Option<u64>,
    pub seed: u64,
    /// Worker threads (0 = all cores).
    pub threads: usize,
}

/// Per-rank loads at the configured EP size, and a note saying how.
pub fn prepare_loads(
    trace: &Trace,
    gpus: usize,
    tokens_per_rank: Option<u64>,
    seed: u64,
) -> (Loads, String) {
    let e_n = trace.meta.model.num_experts as usize;
    let k = trace.meta.model.top_k as u64;
    let (loads, split, scaled) = match (&trace.tokens, tokens_per_rank) {
        (Some(tok), Some(tpr)) => {
            let res = tok.resampled(tpr as usize * gpus, seed);
            let (l, _) = res.loads_at(e_n, gpus);
            (
                l,
                EpSplit::Rechunked,
                format!("; resampled whole sequences to {tpr} tokens/rank (seed {seed})"),
            )
        }
        (Some(tok), None) => {
            let (l, s) = tok.loads_at(e_n, gpus);
            (l, s, String::new())
        }
        (None, Some(tpr)) => {
            let (l, s) = trace.loads.at_ranks(gpus);
            (
                l.rescaled(tpr, k),
                s,
                format!("; counts rescaled to {tpr} tokens/rank"),
            )
        }
        (None, None) => {
            let (l, s) = trace.loads.at_ranks(gpus);
            (l, s, String::new())
        }
    };
    (loads, format!("{}{}", split.as_str(), scaled))
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
    fill_plan_stats(&mut r, plan);
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

/// The columns a plan decides, whoever prices it (the cost model or a
/// replay): gate, loads before and after, transfers.
pub fn fill_plan_stats(r: &mut ResultRow, plan: &Plan) {
    r.use_llep = plan.use_llep;
    r.imbalance_ratio = plan.imbalance_ratio;
    r.max_load_before = plan.native_max_load();
    r.mean_load = plan.native_loads.iter().sum::<u64>() as f64 / plan.gpus as f64;
    r.max_load_after = plan.max_load();
    r.min_load_after = plan.gpu_loads.iter().copied().min().unwrap_or(0);
    r.loads_before = plan.native_loads.clone();
    r.loads_after = plan.gpu_loads.clone();
    r.transfers = if plan.free_transfers {
        0
    } else {
        plan.transfers.len() as u32
    };
    r.duplicate_transfers = plan.duplicate_transfers;
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("trace '{0}' has no model dimensions (hidden_size / intermediate_size); give --hidden-size and --intermediate-size")]
    NoDims(String),
}

/// Simulate a trace. Rows come out ordered by (step, layer, alpha, m,
/// policy, ratio). The llep plan does not depend on lambda (lambda only
/// gates it), so each (step, layer, alpha, m) is planned once and each
/// lambda then picks the llep or the ep plan.
pub fn simulate(
    trace: &Trace,
    trace_name: &str,
    cfg: &SimConfig,
) -> Result<(Vec<ResultRow>, String), SimError> {
    simulate_with_progress(trace, trace_name, cfg, &indicatif::ProgressBar::hidden())
}

/// [`simulate`], advancing `progress` by one per layer-step.
pub fn simulate_with_progress(
    trace: &Trace,
    trace_name: &str,
    cfg: &SimConfig,
    progress: &indicatif::ProgressBar,
) -> Result<(Vec<ResultRow>, String), SimError> {
    let model = &trace.meta.model;
    if !model.has_dims() {
        return Err(SimError::NoDims(trace_name.into()));
    }
    let params0 = PlanParams {
        gpus: cfg.gpus,
        alpha: cfg.alphas.first().copied().unwrap_or(1.0),
        min_gemm: 0,
        lambda: None,
    };
    for &a in &cfg.alphas {
        crate::plan::check_shape(
            model.num_experts as usize,
            &PlanParams {
                alpha: a,
                ..params0
            },
        )?;
    }
    let (loads, note) = prepare_loads(trace, cfg.gpus, cfg.tokens_per_rank, cfg.seed);
    let shape = Shape::from_model(model);
    let n_ls = loads.layer_steps();
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cfg.threads
    }
    .clamp(1, n_ls.max(1));
    let chunk = n_ls.div_ceil(threads);
    let base = ResultRow {
        trace: trace_name.into(),
        gpus: cfg.gpus as u32,
        source: SOURCE_SIMULATED.into(),
        device: cfg.profile.card.clone(),
        profile: cfg.profile.name.clone(),
        input_note: note.clone(),
        hidden_size: model.hidden_size,
        intermediate_size: model.intermediate_size,
        experts: model.num_experts,
        top_k: model.top_k,
        runs: 0,
        ..Default::default()
    };
    let parts: Vec<Vec<ResultRow>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (loads, base, shape) = (&loads, &base, &shape);
                s.spawn(move || {
                    let lo = t * chunk;
                    let hi = ((t + 1) * chunk).min(n_ls);
                    simulate_range(loads, lo..hi, base, shape, cfg, progress)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    Ok((parts.into_iter().flatten().collect(), note))
}

fn simulate_range(
    loads: &Loads,
    range: std::ops::Range<usize>,
    base: &ResultRow,
    shape: &Shape,
    cfg: &SimConfig,
    progress: &indicatif::ProgressBar,
) -> Vec<ResultRow> {
    let mut ev = Evaluator::default();
    let mut rows = Vec::with_capacity(
        range.len() * (cfg.gates.len() + 2) * cfg.alphas.len() * cfg.min_gemms.len(),
    );
    let mut global = Vec::new();
    let layers = loads.layers();
    for ls in range {
        progress.inc(1);
        let (s, l) = (ls / layers, ls % layers);
        loads.global_into(s, l, &mut global);
        let per_rank = loads.block(s, l);
        let mut b = base.clone();
        b.step = loads.step_ids[s];
        b.layer = loads.layer_ids[l];
        b.tokens_per_rank = global.iter().sum::<u64>() / (cfg.gpus as u64 * shape.top_k.max(1));
        for &alpha in &cfg.alphas {
            for &m in &cfg.min_gemms {
                let params = PlanParams {
                    gpus: cfg.gpus,
                    alpha,
                    min_gemm: m,
                    lambda: None,
                };
                b.alpha = alpha;
                b.min_gemm = m;
                let mut ep_row = None;
                if cfg.policies.contains(&Policy::Ep) || cfg.policies.contains(&Policy::Llep) {
                    let (plan, cost) =
                        ev.eval(per_rank, &global, &params, Policy::Ep, shape, &cfg.profile);
                    let mut r = row_from(plan, &cost, &b);
                    r.policy = "ep".into();
                    ep_row = Some(r);
                }
                if cfg.policies.contains(&Policy::Ep) {
                    rows.push(ep_row.clone().unwrap());
                }
                if cfg.policies.contains(&Policy::Llep) {
                    let (plan, cost) = ev.eval(
                        per_rank,
                        &global,
                        &params,
                        Policy::Llep,
                        shape,
                        &cfg.profile,
                    );
                    let mut on = row_from(plan, &cost, &b);
                    on.policy = "llep".into();
                    let ratio = plan.imbalance_ratio;
                    for &g in &cfg.gates {
                        let gated_on = match g {
                            Gate::Always => true,
                            Gate::Ratio(l) => ratio >= l,
                        };
                        let mut r = if gated_on {
                            on.clone()
                        } else {
                            let mut r = ep_row.clone().unwrap();
                            r.policy = "llep".into();
                            r
                        };
                        r.lambda = g.lambda();
                        rows.push(r);
                    }
                }
                if cfg.policies.contains(&Policy::Ideal) {
                    let (plan, cost) = ev.eval(
                        per_rank,
                        &global,
                        &params,
                        Policy::Ideal,
                        shape,
                        &cfg.profile,
                    );
                    let mut r = row_from(plan, &cost, &b);
                    r.policy = "ideal".into();
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
    pub policy: String,
    pub lambda: Option<f64>,
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
            r.policy.clone(),
            r.lambda.map(f64::to_bits),
            r.alpha.to_bits(),
            r.min_gemm,
        )
    };
    let mut keys: Vec<(String, String, Option<u64>, u64, u64)> = Vec::new();
    for r in rows {
        let k = key(r);
        let idx = match keys.iter().position(|x| *x == k) {
            Some(i) => i,
            None => {
                keys.push(k);
                out.push(Summary {
                    scenario: r.scenario.clone(),
                    policy: r.policy.clone(),
                    lambda: r.lambda,
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
        .filter(|s| s.policy == "ep")
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

    #[test]
    fn ratio_specs() {
        assert_eq!(parse_ratios("1.3").unwrap(), vec![Gate::Ratio(1.3)]);
        assert_eq!(
            parse_ratios("1.1,always,0").unwrap(),
            vec![Gate::Ratio(1.1), Gate::Always, Gate::Always]
        );
        let r = parse_ratios("1.0:3.0:0.1").unwrap();
        assert_eq!(r.len(), 21);
        assert_eq!(r[3], Gate::Ratio(1.3));
        assert_eq!(r[20], Gate::Ratio(3.0));
        assert!(parse_ratios("nan").is_err());
        assert!(parse_ratios("1:2:0").is_err());
        assert!(parse_ratios("2:1:0.1").is_err());
        assert!(parse_ratios("").is_err());
    }
}
