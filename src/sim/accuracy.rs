//! The simulator's error against measurement: for every measured row,
//! simulate the same input (same per-rank loads, policy, lambda, alpha, m,
//! GPU count) with a profile, and compare layer time and peak memory.

use super::cost::charge_auto;
use super::eplb::{EplbEvaluator, EplbSim};
use super::profile::GateMargin;
use super::{
    auto_prefers_llep_at, prefers_llep_by, row_from, simulated_base, Evaluator, Profile, Shape,
};
use crate::plan::PlanParams;
use crate::plan::Policy;
use crate::results::{ResultRow, Source};
use crate::trace::{read_trace, Trace};
use crate::workload::{DimOverrides, InputSource, InputSpec, StepPick, Workload, WorkloadError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One measured row and its simulated twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub measured: ResultRow,
    pub simulated: ResultRow,
    /// (simulated - measured) / measured, layer time.
    pub time_err: f64,
    /// Measured peak memory compared: the driver's view (max over GPUs)
    /// when recorded, since the simulated peak includes the CUDA context,
    /// NCCL and cuBLAS baseline; else the allocator's high-water mark.
    pub measured_peak: u64,
    /// (simulated - measured) / measured, peak memory (max over GPUs).
    pub mem_err: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Accuracy {
    pub pairs: Vec<Pair>,
    pub median_abs_time_pct: f64,
    pub worst_abs_time_pct: f64,
    pub median_abs_mem_pct: f64,
    pub worst_abs_mem_pct: f64,
}

/// Error figures over a set of pairs, percent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorStats {
    pub rows: usize,
    pub median_abs_time_pct: f64,
    pub worst_abs_time_pct: f64,
    pub median_abs_mem_pct: f64,
    pub worst_abs_mem_pct: f64,
    /// Rows whose simulated peak memory is more than 3% below the measured
    /// one (the unsafe direction), and the lowest signed memory error.
    pub mem_below_3pct: usize,
    pub mem_lowest_pct: f64,
}

impl ErrorStats {
    pub fn of<'a>(pairs: impl Iterator<Item = &'a Pair>) -> ErrorStats {
        let (mut t, mut m) = (Vec::new(), Vec::new());
        let (mut lowest, mut below) = (f64::INFINITY, 0);
        for p in pairs {
            t.push(p.time_err.abs() * 100.0);
            m.push(p.mem_err.abs() * 100.0);
            lowest = lowest.min(p.mem_err * 100.0);
            below += usize::from(p.mem_err < -0.03);
        }
        let worst = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        let (wt, wm) = (worst(&t), worst(&m));
        ErrorStats {
            rows: t.len(),
            median_abs_time_pct: median(&mut t),
            worst_abs_time_pct: wt,
            median_abs_mem_pct: median(&mut m),
            worst_abs_mem_pct: wm,
            mem_below_3pct: below,
            mem_lowest_pct: if lowest.is_finite() { lowest } else { 0.0 },
        }
    }
}

/// Rows of these expert shapes (hidden, intermediate) were held out of
/// every fit: their error is reported apart.
pub fn is_held_out(r: &ResultRow, held_out: &[(u32, u32)]) -> bool {
    held_out.contains(&(r.hidden_size, r.intermediate_size))
}

impl Accuracy {
    /// Median |error| of the layer time per batch size (tokens per GPU) with
    /// at least 6 rows, percent, by size, over the rows replayed with CUDA
    /// graphs (`graphs`) or the others: what the cost-aware gate takes as
    /// its margin at that size in that mode (stamped as
    /// `MeasuredError::by_tokens` and `graph_by_tokens`).
    pub fn by_tokens(&self, graphs: bool) -> Vec<(u64, f64)> {
        let mut by: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
        for p in self
            .pairs
            .iter()
            .filter(|p| p.measured.cuda_graphs == graphs)
        {
            let t = p.measured.tokens_per_rank;
            by.entry(t).or_default().push(p.time_err.abs() * 100.0);
        }
        by.into_iter()
            .filter(|(_, v)| v.len() >= 6)
            .map(|(t, mut v)| (t, median(&mut v)))
            .collect()
    }

    /// Error over the rows of the calibration shapes and over the rows of
    /// the held-out shapes, apart.
    pub fn split(&self, held_out: &[(u32, u32)]) -> (ErrorStats, ErrorStats) {
        let held = |p: &&Pair| is_held_out(&p.measured, held_out);
        (
            ErrorStats::of(self.pairs.iter().filter(|p| !held(p))),
            ErrorStats::of(self.pairs.iter().filter(held)),
        )
    }
}

/// Margins, percent, at which [`gate_margin_of`] tries the gate: 0-10 in
/// steps of 0.5.
fn gate_margins_pct() -> impl Iterator<Item = f64> {
    (0..=20).map(|i| f64::from(i) * 0.5)
}

/// The gate loses an input when the plan it takes measured more than this
/// much slower than the other (issue 12's bound for llep-auto), percent.
pub const GATE_LOSS_PCT: f64 = 3.0;

/// One input both plans were measured on: (EP, LLEP) layer times,
/// measured and simulated, ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub measured: (f64, f64),
    pub simulated: (f64, f64),
    pub tokens_per_gpu: u64,
}

impl Decision {
    /// What the gate at `margin_pct` loses on this input: the plan it
    /// takes over the faster one, measured, minus 1.
    pub fn loss(&self, margin_pct: f64) -> f64 {
        let (e, l) = self.simulated;
        let (me, ml) = self.measured;
        let got = if prefers_llep_by(e, l, margin_pct / 100.0) {
            ml
        } else {
            me
        };
        got / me.min(ml) - 1.0
    }

    /// Whether the gate at `margin_pct` loses this input: takes the plan
    /// that measured more than [`GATE_LOSS_PCT`] slower than the other.
    pub fn lost(&self, margin_pct: f64) -> bool {
        self.loss(margin_pct) * 100.0 > GATE_LOSS_PCT
    }
}

/// The inputs of `pairs` with a measured EP row and a measured LLEP row
/// whose plan switched on (rows of one input matched by everything but
/// the policy, in file order: the k-th LLEP row at a lambda with the k-th
/// EP row), replayed as CUDA graphs or not (`graphs`).
pub fn decisions(pairs: &[Pair], graphs: bool) -> Vec<Decision> {
    let key = |r: &ResultRow| {
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            r.trace,
            r.scenario,
            r.step,
            r.layer,
            r.gpus,
            r.tokens_per_rank,
            r.hidden_size,
            r.intermediate_size,
            r.experts,
            r.top_k,
            r.alpha,
            r.min_gemm,
            r.overlap,
            r.exchange,
            r.compute_streams,
            r.pass,
            r.device
        )
    };
    let mut ep: HashMap<String, Vec<&Pair>> = HashMap::new();
    let mut llep: Vec<(String, &Pair)> = Vec::new();
    for p in pairs.iter().filter(|p| p.measured.cuda_graphs == graphs) {
        match p.measured.policy {
            Policy::Ep => ep.entry(key(&p.measured)).or_default().push(p),
            Policy::Llep => llep.push((key(&p.measured), p)),
            _ => {}
        }
    }
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut out = Vec::new();
    for (k, l) in llep {
        let lambda = format!("{:?}", l.measured.gate);
        let n = seen.entry((k.clone(), lambda)).or_default();
        let e = ep.get(&k).and_then(|v| v.get(*n));
        *n += 1;
        if let (Some(e), true) = (e, l.measured.use_llep) {
            out.push(Decision {
                measured: (e.measured.t_total_ms, l.measured.t_total_ms),
                simulated: (e.simulated.t_total_ms, l.simulated.t_total_ms),
                tokens_per_gpu: e.measured.tokens_per_rank,
            });
        }
    }
    out
}

/// The cost-aware gate's margin that the inputs `d` support: the gate is
/// tried at every margin of 0-10% in steps of 0.5; of the margins that
/// lose the fewest inputs ([`Decision::lost`]), the middle one. A margin
/// as large as the model's error per row misses LLEP's clear gains: the
/// errors of EP's and LLEP's prices on one input go together. None with
/// fewer than 6 inputs.
pub fn gate_margin_of(d: &[Decision]) -> Option<GateMargin> {
    if d.len() < 6 {
        return None;
    }
    let scored: Vec<(f64, usize, f64)> = gate_margins_pct()
        .map(|m| {
            let lost = d.iter().filter(|x| x.lost(m)).count();
            let mean = d.iter().map(|x| x.loss(m)).sum::<f64>() / d.len() as f64 * 100.0;
            (m, lost, mean)
        })
        .collect();
    let least = scored.iter().map(|s| s.1).min()?;
    let best: Vec<&(f64, usize, f64)> = scored.iter().filter(|s| s.1 == least).collect();
    let &(margin_pct, losses, mean_loss_pct) = best[(best.len() - 1) / 2];
    Some(GateMargin {
        margin_pct,
        inputs: d.len() as u32,
        losses: losses as u32,
        mean_loss_pct,
    })
}

impl Accuracy {
    /// [`gate_margin_of`] the inputs both plans were measured on
    /// ([`decisions`]), replayed as CUDA graphs (`graphs`) or not.
    pub fn gate_margin(&self, graphs: bool) -> Option<GateMargin> {
        gate_margin_of(&decisions(&self.pairs, graphs))
    }
}

/// One group of [`Accuracy::bias`]: the signed layer-time error of its
/// rows, percent (positive: priced slow).
#[derive(Debug, Clone, PartialEq)]
pub struct Bias {
    /// "sequential", or "pipelined, N chunks" and the exchange.
    pub schedule: String,
    /// The imbalance band of the layer's loads before planning (max/mean).
    pub imbalance: &'static str,
    pub rows: usize,
    pub median_pct: f64,
    pub min_pct: f64,
    pub max_pct: f64,
}

/// Imbalance bands (max/mean of the GPUs' loads before planning) that
/// [`Accuracy::bias`] groups by: near balance, moderate, strong.
fn imbalance_band(ratio: f64) -> (u8, &'static str) {
    if ratio < 1.1 {
        (0, "max/mean < 1.1")
    } else if ratio < 1.5 {
        (1, "max/mean 1.1-1.5")
    } else {
        (2, "max/mean >= 1.5")
    }
}

impl Accuracy {
    /// The signed layer-time error by schedule (sequential, or pipelined
    /// by chunk count and exchange) and imbalance band: where the model
    /// leans one way, which |error| alone hides. Groups in order of
    /// schedule, then band.
    pub fn bias(&self) -> Vec<Bias> {
        // (chunks, copy engines, band) -> (schedule, band name, errors)
        type Group = (String, &'static str, Vec<f64>);
        let mut by: std::collections::BTreeMap<(u32, bool, u8), Group> = Default::default();
        for p in &self.pairs {
            let m = &p.measured;
            let chunks = if m.overlap_chunks > 1 {
                m.overlap_chunks
            } else {
                0
            };
            let ce =
                crate::gpu::Exchange::parse(&m.exchange) == Some(crate::gpu::Exchange::CopyEngine);
            let schedule = match (chunks, ce) {
                (0, _) => "sequential".to_string(),
                (n, false) => format!("pipelined, {n} chunks, NCCL"),
                (n, true) => format!("pipelined, {n} chunks, copy engines"),
            };
            let (band, name) = imbalance_band(m.imbalance_ratio);
            by.entry((chunks, ce, band))
                .or_insert_with(|| (schedule, name, Vec::new()))
                .2
                .push(p.time_err * 100.0);
        }
        by.into_values()
            .map(|(schedule, imbalance, mut v)| Bias {
                schedule,
                imbalance,
                rows: v.len(),
                min_pct: v.iter().cloned().fold(f64::INFINITY, f64::min),
                max_pct: v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                median_pct: median(&mut v),
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccuracyError {
    #[error("no measured rows (source = measured) in the input")]
    NoMeasured,
    #[error("measured row for trace '{0}': cannot find the trace (looked in {1})")]
    MissingTrace(String, String),
    #[error("measured row: {0}")]
    Input(String),
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The simulated twin of a measured row: the same layer-step of the same
/// workload under the same policy, gate, alpha and m, priced with `profile`.
/// `simulate`, `replay --with-sim` and `compare` all pair rows through here.
pub fn twin(
    measured: &ResultRow,
    w: &Workload,
    profile: &Profile,
    ev: &mut Evaluator,
) -> Result<ResultRow, AccuracyError> {
    // memory as the replay process had its weight connections, where the
    // row recorded them
    let links = recorded_links(measured, w.gpus);
    ev.set_recorded_links(links);
    let r = twin_priced(measured, w, profile, ev);
    ev.set_recorded_links(None);
    r
}

/// The weight communicator's peers (in, out) per GPU a measured row
/// recorded. A measured row from before the record existed ran after an
/// unknown history: every peer both ways, the safe side. `None` (the
/// model's own rule) for simulated rows.
fn recorded_links(r: &ResultRow, gpus: usize) -> Option<(Vec<u64>, Vec<u64>)> {
    if r.source != Source::Measured {
        return None;
    }
    let (inn, out) = (&r.weight_peers_in_per_gpu, &r.weight_peers_out_per_gpu);
    if inn.len() == gpus && out.len() == gpus {
        return Some((inn.clone(), out.clone()));
    }
    let all = vec![gpus.saturating_sub(1) as u64; gpus];
    Some((all.clone(), all))
}

fn twin_priced(
    measured: &ResultRow,
    w: &Workload,
    profile: &Profile,
    ev: &mut Evaluator,
) -> Result<ResultRow, AccuracyError> {
    let loads = &w.loads;
    let s = loads.step_ids.iter().position(|&x| x == measured.step);
    let l = loads.layer_ids.iter().position(|&x| x == measured.layer);
    let (Some(s), Some(l)) = (s, l) else {
        return Err(AccuracyError::Input(format!(
            "{}: no step {} / layer {} in the input",
            measured.trace, measured.step, measured.layer
        )));
    };
    // the schedule the row ran (or was priced with)
    let sched = if measured.overlap {
        crate::gpu::pipeline::Overlap::On(measured.overlap_chunks as usize)
    } else {
        crate::gpu::pipeline::Overlap::Off
    };
    let exchange = crate::gpu::Exchange::parse(&measured.exchange).ok_or_else(|| {
        AccuracyError::Input(format!(
            "{}: unknown exchange {:?} (nccl or copy-engine)",
            measured.trace, measured.exchange
        ))
    })?;
    // the GEMM path the row ran (older files name none: cuBLASLt's)
    let gemm = match measured.gemm.as_str() {
        "" => crate::gpu::GemmImpl::Lt,
        g => g
            .parse()
            .map_err(|e| AccuracyError::Input(format!("{}: {e}", measured.trace)))?,
    };
    let with_sched;
    let profile = if profile.overlap == sched
        && profile.cuda_graphs == measured.cuda_graphs
        && profile.exchange == exchange
        && profile.gemm == gemm
    {
        profile
    } else {
        with_sched = Profile {
            overlap: sched,
            cuda_graphs: measured.cuda_graphs,
            exchange,
            gemm,
            ..profile.clone()
        };
        &with_sched
    };
    profile
        .check_exchange()
        .map_err(|e| AccuracyError::Input(format!("{}: {e}", measured.trace)))?;
    let policy = measured.policy;
    let params = PlanParams {
        gpus: w.gpus,
        alpha: measured.alpha,
        min_gemm: measured.min_gemm,
        gate: measured.gate,
    };
    let shape = Shape::from_model(&w.model);
    let global = loads.global(s, l);
    let per_rank = loads.block(s, l);
    let mut base = simulated_base(w, s, l, profile);
    base.policy = measured.policy;
    base.gate = measured.gate;
    base.alpha = measured.alpha;
    base.min_gemm = measured.min_gemm;
    let (pass, recompute) = (measured.pass, measured.recompute);
    let priced = |policy: Policy, ev: &mut Evaluator| {
        let (_, cost) = ev.eval(per_rank, &global, &params, policy, &shape, profile);
        ev.row(&cost, &base, &shape, profile, pass, recompute)
    };
    if matches!(policy, Policy::Eplb | Policy::EplbLlep) {
        let mut r = eplb_twin(measured, w, (s, l), &params, &shape, profile, base)?;
        (r.policy, r.gate) = (measured.policy, measured.gate);
        return Ok(r);
    }
    if policy == Policy::LlepAuto {
        // A measured row ran the plan its replay's gate chose (with the
        // profile of that day): the twin prices that plan, so the error is
        // the cost model's, not a disagreement between two profiles' gates.
        // Without a measurement, the gate decides as simulate does.
        let use_llep = if measured.source == Source::Measured {
            measured.use_llep
        } else {
            let ep = priced(Policy::Ep, ev);
            let llep = priced(Policy::Llep, ev);
            let t = measured.tokens_per_rank;
            auto_prefers_llep_at(ep.t_total_ms, llep.t_total_ms, profile, t)
        };
        let mut r = priced(if use_llep { Policy::Llep } else { Policy::Ep }, ev);
        charge_auto(&mut r, profile);
        (r.policy, r.gate) = (measured.policy, measured.gate);
        return Ok(r);
    }
    let mut r = priced(policy, ev);
    (r.policy, r.gate) = (measured.policy, measured.gate);
    Ok(r)
}

/// The twin of an `eplb` / `eplb+llep` row: its EPLB setting read back
/// from its note, the placement `simulate` would use at that step, the
/// copies split among replicas as the replay split them
/// ([`super::eplb::split_counts`]), priced as `simulate` prices EPLB rows.
/// A replay places its replicas before the timed runs, so a rebalance's
/// weight moves (which `simulate` charges on the rebalance step) are not
/// part of the twin.
fn eplb_twin(
    measured: &ResultRow,
    w: &Workload,
    (s, l): (usize, usize),
    params: &PlanParams,
    shape: &Shape,
    profile: &Profile,
    mut base: ResultRow,
) -> Result<ResultRow, AccuracyError> {
    let e = EplbSim::from_note(&measured.input_note).ok_or_else(|| {
        AccuracyError::Input(format!(
            "{}: an {} row whose input_note has no EPLB setting",
            measured.trace, measured.policy
        ))
    })?;
    e.check(w.model.num_experts as usize, w.gpus)
        .map_err(|x| AccuracyError::Input(x.to_string()))?;
    base.input_note = format!("{}; {}", base.input_note, e.label());
    let pl = e.placement(&w.loads, s, l, w.gpus);
    let mut ev = EplbEvaluator::default();
    ev.set_recorded_links(recorded_links(measured, w.gpus));
    ev.load(w.loads.block(s, l), w.gpus, &pl, e.split);
    let (plan, cost) = ev.eval(params, false, &[], shape, profile);
    let off = row_from(plan, &cost, &base);
    if measured.policy == Policy::Eplb {
        return Ok(off);
    }
    let (plan, cost) = ev.eval(params, true, &[], shape, profile);
    Ok(if measured.gate.admits(plan.imbalance_ratio) {
        row_from(plan, &cost, &base)
    } else {
        off
    })
}

/// The seed a row's input was resampled with (recorded in its note).
fn seed_of(note: &str) -> u64 {
    note.split("(seed ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Rebuild the workload a measured row ran on: one layer-step of it, and
/// for an EPLB row placed from a window of earlier steps, the trace's steps
/// up to its own.
fn workload_for(
    r: &ResultRow,
    trace_dirs: &[PathBuf],
    cache: &mut HashMap<PathBuf, Trace>,
) -> Result<Workload, AccuracyError> {
    let mut spec = InputSpec {
        source: InputSource::Synthetic(Vec::new()),
        dims: DimOverrides {
            hidden_size: Some(r.hidden_size),
            intermediate_size: Some(r.intermediate_size),
            ..Default::default()
        },
        gpus: r.gpus as usize,
        tokens_per_rank: None,
        seed: seed_of(&r.input_note),
        steps: StepPick::Ids(vec![r.step]),
        layers: vec![r.layer],
    };
    if !r.scenario.is_empty() {
        let s = r
            .scenario
            .parse()
            .map_err(|e: crate::trace::synthetic::ScenarioError| {
                AccuracyError::Input(e.to_string())
            })?;
        spec.source = InputSource::Synthetic(vec![s]);
        spec.dims.experts = Some(r.experts);
        spec.dims.top_k = Some(r.top_k);
        spec.tokens_per_rank = Some(r.tokens_per_rank);
        return Ok(spec.resolve()?.remove(0));
    }
    let path = trace_dirs
        .iter()
        .map(|d| d.join(&r.trace))
        .find(|p| p.exists())
        .ok_or_else(|| {
            AccuracyError::MissingTrace(
                r.trace.clone(),
                trace_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
    if !cache.contains_key(&path) {
        let t = read_trace(&path, true)?;
        cache.insert(path.clone(), t);
    }
    let rescaled = r.input_note.contains("rescaled") || r.input_note.contains("resampled");
    spec.tokens_per_rank = rescaled.then_some(r.tokens_per_rank);
    // an EPLB row placed from earlier steps needs them: the trace's steps up
    // to the row's (as a replay or simulate over the whole trace saw them)
    let windowed = matches!(r.policy, Policy::Eplb | Policy::EplbLlep)
        && EplbSim::from_note(&r.input_note).is_some_and(|e| !e.oracle);
    if windowed {
        let ids = &cache[&path].loads.step_ids;
        spec.steps = StepPick::Ids(ids.iter().copied().filter(|&x| x <= r.step).collect());
    }
    spec.source = InputSource::Trace(path.clone());
    Ok(spec.resolve_trace(&path, cache[&path].clone())?)
}

/// Simulate the twin of every measured row in `rows` with `profile`.
pub fn compare(
    rows: &[ResultRow],
    profile: &Profile,
    trace_dirs: &[PathBuf],
) -> Result<Accuracy, AccuracyError> {
    let measured: Vec<&ResultRow> = rows
        .iter()
        .filter(|r| r.source == Source::Measured && !r.oom)
        .collect();
    if measured.is_empty() {
        return Err(AccuracyError::NoMeasured);
    }
    let mut cache = HashMap::new();
    let mut ev = Evaluator::default();
    let mut pairs = Vec::with_capacity(measured.len());
    for m in measured {
        let w = workload_for(m, trace_dirs, &mut cache)?;
        let sim = twin(m, &w, profile, &mut ev)?;
        pairs.push(pair(m, sim));
    }
    let mut t: Vec<f64> = pairs.iter().map(|p| p.time_err.abs() * 100.0).collect();
    let mut mm: Vec<f64> = pairs.iter().map(|p| p.mem_err.abs() * 100.0).collect();
    let worst_t = t.iter().cloned().fold(0.0, f64::max);
    let worst_m = mm.iter().cloned().fold(0.0, f64::max);
    Ok(Accuracy {
        median_abs_time_pct: median(&mut t),
        worst_abs_time_pct: worst_t,
        median_abs_mem_pct: median(&mut mm),
        worst_abs_mem_pct: worst_m,
        pairs,
    })
}

fn pair(m: &ResultRow, simulated: ResultRow) -> Pair {
    debug_assert_eq!(simulated.source, Source::Simulated);
    let time_err = (simulated.t_total_ms - m.t_total_ms) / m.t_total_ms;
    let measured_peak = m
        .driver_mem_per_gpu
        .iter()
        .copied()
        .max()
        .unwrap_or(m.peak_mem_max_bytes);
    let mem_err =
        (simulated.peak_mem_max_bytes as f64 - measured_peak as f64) / measured_peak.max(1) as f64;
    Pair {
        measured: m.clone(),
        simulated,
        time_err,
        measured_peak,
        mem_err,
    }
}

/// Default places to look for a measured row's trace file.
pub fn default_trace_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = extra.to_vec();
    v.push(PathBuf::from("traces"));
    v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("traces"));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Gate, Policy};
    use crate::results::Source;

    /// A test fixture shaped like a measured row (not a measurement): the
    /// 95:1 scenario on 2 GPUs, gpt-oss-120b's layer at 4,096 tokens.
    fn fixture_95_1(policy: Policy, gate: Gate) -> ResultRow {
        ResultRow {
            trace: "synthetic".into(),
            scenario: "95:1".into(),
            policy,
            gate,
            alpha: 1.0,
            min_gemm: 1024,
            gpus: 2,
            tokens_per_rank: 4096,
            hidden_size: 2880,
            intermediate_size: 2880,
            experts: 128,
            top_k: 4,
            source: Source::Measured,
            ..Default::default()
        }
    }

    #[test]
    fn twins_reproduce_the_simulation_and_measure_the_error() {
        let prof = Profile::load("h200").unwrap();
        let mut m = fixture_95_1(Policy::Llep, Gate::Ratio(1.3));
        let first = compare(
            &[ResultRow {
                t_total_ms: 1.0,
                peak_mem_max_bytes: 1,
                ..m.clone()
            }],
            &prof,
            &[],
        )
        .unwrap();
        let sim = &first.pairs[0].simulated;
        assert!(sim.use_llep, "95:1 is far above lambda 1.3");
        assert_eq!(sim.source, Source::Simulated);
        m.t_total_ms = sim.t_total_ms * 1.25;
        m.peak_mem_max_bytes = sim.peak_mem_max_bytes;
        let acc = compare(&[m], &prof, &[]).unwrap();
        assert!((acc.pairs[0].time_err + 0.2).abs() < 1e-12);
        assert_eq!(acc.pairs[0].mem_err, 0.0);
        assert!((acc.median_abs_time_pct - 20.0).abs() < 1e-9);
        assert!(matches!(
            compare(&[], &prof, &[]),
            Err(AccuracyError::NoMeasured)
        ));
    }

    /// A measured row's twin charges the weight connections its replay
    /// recorded; a row from before the record, every peer both ways.
    #[test]
    fn twins_charge_the_recorded_weight_connections() {
        let prof = Profile::load("h200").unwrap();
        let mm = prof.mem_model.unwrap();
        let row = |policy, inn: Vec<u64>, out: Vec<u64>| ResultRow {
            t_total_ms: 1.0,
            peak_mem_max_bytes: 1,
            weight_peers_in_per_gpu: inn,
            weight_peers_out_per_gpu: out,
            ..fixture_95_1(policy, Gate::Never)
        };
        let mem = |r: ResultRow| {
            let acc = compare(&[r], &prof, &[]).unwrap();
            acc.pairs[0].simulated.peak_mem_per_gpu.clone()
        };
        // EP in a fresh process: no connection; after LLEP moved GPU 0's
        // experts to GPU 1: GPU 0 sent, GPU 1 received
        let fresh = mem(row(Policy::Ep, vec![0, 0], vec![0, 0]));
        let after = mem(row(Policy::Ep, vec![0, 1], vec![1, 0]));
        let (r, s) = (
            mm.nccl_xfer_recv_per_peer_bytes,
            mm.nccl_xfer_send_per_peer_bytes,
        );
        assert!(r > s && s > 0);
        assert_eq!(after[0] - fresh[0], s);
        assert_eq!(after[1] - fresh[1], r);
        // no record (an older file): both ways
        let unknown = mem(row(Policy::Ep, vec![], vec![]));
        assert_eq!(unknown[0] - fresh[0], r + s);
        // a simulated row is priced by the model's own rule
        let mut sim_row = row(Policy::Ep, vec![], vec![]);
        sim_row.source = Source::Simulated;
        assert_eq!(recorded_links(&sim_row, 2), None);
    }

    #[test]
    fn error_is_split_by_held_out_shape_and_memory_below_is_counted() {
        let prof = Profile::load("h200").unwrap();
        let row = |d: u32, i: u32, k: u32, experts: u32| ResultRow {
            trace: "synthetic".into(),
            scenario: "30:4".into(),
            policy: Policy::Ep,
            gate: Gate::Never,
            alpha: 1.0,
            min_gemm: 1024,
            gpus: 2,
            tokens_per_rank: 512,
            hidden_size: d,
            intermediate_size: i,
            experts,
            top_k: k,
            source: Source::Measured,
            t_total_ms: 1.0,
            peak_mem_max_bytes: 1,
            ..Default::default()
        };
        let rows = [row(2880, 2880, 4, 128), row(2048, 768, 8, 128)];
        let mut acc = compare(&rows, &prof, &[]).unwrap();
        // measured twice the simulated time; memory 10% above the model
        for p in &mut acc.pairs {
            p.time_err = if p.measured.hidden_size == 2880 {
                -0.5
            } else {
                0.25
            };
            p.mem_err = if p.measured.hidden_size == 2880 {
                -0.1
            } else {
                0.02
            };
        }
        let (cal, held) = acc.split(&[(2048, 768)]);
        assert_eq!((cal.rows, held.rows), (1, 1));
        assert_eq!(
            (cal.median_abs_time_pct, held.median_abs_time_pct),
            (50.0, 25.0)
        );
        assert_eq!((cal.mem_below_3pct, held.mem_below_3pct), (1, 0));
        assert!((cal.mem_lowest_pct + 10.0).abs() < 1e-12);
        assert!(is_held_out(&rows[1], &[(2048, 768)]) && !is_held_out(&rows[0], &[(2048, 768)]));
    }

    #[test]
    fn bias_is_the_signed_error_by_schedule_and_imbalance() {
        let prof = Profile::load("h200").unwrap();
        let row = |ratio: f64, chunks: u32, exchange: &str| ResultRow {
            trace: "synthetic".into(),
            scenario: "30:4".into(),
            policy: Policy::Ep,
            gate: Gate::Never,
            alpha: 1.0,
            min_gemm: 1024,
            gpus: 2,
            tokens_per_rank: 512,
            hidden_size: 2048,
            intermediate_size: 768,
            experts: 128,
            top_k: 8,
            source: Source::Measured,
            t_total_ms: 1.0,
            peak_mem_max_bytes: 1,
            imbalance_ratio: ratio,
            overlap_chunks: chunks,
            exchange: exchange.into(),
            ..Default::default()
        };
        let rows = [
            row(1.02, 0, "nccl"),
            row(1.05, 1, "nccl"),
            row(1.9, 0, "nccl"),
            row(1.02, 6, "nccl"),
            row(1.02, 6, "nccl"),
            row(1.02, 6, "copy-engine"),
        ];
        let mut acc = compare(&rows, &prof, &[]).unwrap();
        for (p, e) in acc
            .pairs
            .iter_mut()
            .zip([-0.04, 0.0, 0.09, -0.12, -0.10, -0.01])
        {
            p.time_err = e;
        }
        let b = acc.bias();
        let got: Vec<_> = b
            .iter()
            .map(|x| (x.schedule.as_str(), x.imbalance, x.rows))
            .collect();
        assert_eq!(
            got,
            [
                ("sequential", "max/mean < 1.1", 2),
                ("sequential", "max/mean >= 1.5", 1),
                ("pipelined, 6 chunks, NCCL", "max/mean < 1.1", 2),
                ("pipelined, 6 chunks, copy engines", "max/mean < 1.1", 1),
            ]
        );
        assert!((b[0].median_pct + 2.0).abs() < 1e-9);
        assert!((b[2].median_pct + 11.0).abs() < 1e-9);
        assert!((b[2].min_pct + 12.0).abs() < 1e-9 && (b[2].max_pct + 10.0).abs() < 1e-9);
    }

    /// A pair with the given measured and simulated layer times.
    fn timed(policy: Policy, scenario: &str, graphs: bool, measured: f64, simulated: f64) -> Pair {
        let mut m = fixture_95_1(policy, Gate::Ratio(1.3));
        m.scenario = scenario.into();
        m.cuda_graphs = graphs;
        m.use_llep = policy == Policy::Llep;
        m.t_total_ms = measured;
        let mut sim = m.clone();
        sim.source = Source::Simulated;
        sim.t_total_ms = simulated;
        pair(&m, sim)
    }

    #[test]
    fn inputs_pair_ep_with_switched_on_llep_in_file_order() {
        let mut off = timed(Policy::Llep, "c", false, 1.0, 1.0);
        off.measured.use_llep = false;
        let pairs = vec![
            // file 1
            timed(Policy::Ep, "a", false, 1.0, 1.1),
            timed(Policy::Llep, "a", false, 0.8, 0.9),
            timed(Policy::Ep, "c", false, 1.0, 1.0),
            off.clone(),
            // another mode: not this one's
            timed(Policy::Ep, "a", true, 1.0, 1.0),
            // file 2: the same input again
            timed(Policy::Ep, "a", false, 2.0, 2.1),
            timed(Policy::Llep, "a", false, 1.9, 2.2),
            // an LLEP row with no EP row
            timed(Policy::Llep, "b", false, 1.0, 1.0),
        ];
        let d = decisions(&pairs, false);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!((d[0].measured, d[0].simulated), ((1.0, 0.8), (1.1, 0.9)));
        assert_eq!((d[1].measured, d[1].simulated), ((2.0, 1.9), (2.1, 2.2)));
        assert_eq!(d[0].tokens_per_gpu, 4096);
        // file 1: LLEP predicted 18% faster and measured 25% faster
        assert_eq!(d[0].loss(10.0), 0.0);
        assert!((d[0].loss(25.0) - 0.25).abs() < 1e-12);
        // file 2: EP predicted faster and taken; LLEP measured 5% faster
        assert!((d[1].loss(0.0) - (2.0 / 1.9 - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn the_gate_margin_is_the_middle_of_those_that_lose_least() {
        let acc = |pairs: Vec<Pair>| Accuracy {
            pairs,
            median_abs_time_pct: 0.0,
            worst_abs_time_pct: 0.0,
            median_abs_mem_pct: 0.0,
            worst_abs_mem_pct: 0.0,
        };
        let input = |name: &str, (me, ml): (f64, f64), (se, sl): (f64, f64)| {
            vec![
                timed(Policy::Ep, name, false, me, se),
                timed(Policy::Llep, name, false, ml, sl),
            ]
        };
        let mut pairs = Vec::new();
        // predicted 2% faster, measured 10% slower: lost at margins below 2%
        pairs.extend(input("a", (1.0, 1.1), (1.02, 1.0)));
        // predicted 5% faster, measured 8% faster: lost at 5% and above
        pairs.extend(input("b", (1.08, 1.0), (1.05, 1.0)));
        // four inputs LLEP wins by far: never lost below 10%
        for n in ["c", "d", "e", "f"] {
            pairs.extend(input(n, (2.0, 1.0), (2.0, 1.0)));
        }
        let g = acc(pairs.clone()).gate_margin(false).unwrap();
        // margins 2.0-4.5% lose nothing: the middle of them
        assert_eq!(g.margin_pct, 3.0);
        assert_eq!((g.inputs, g.losses, g.mean_loss_pct), (6, 0, 0.0));
        // no inputs replayed as graphs
        assert_eq!(acc(pairs.clone()).gate_margin(true), None);
        // fewer than six inputs: none
        assert_eq!(acc(pairs[..10].to_vec()).gate_margin(false), None);
    }
}
