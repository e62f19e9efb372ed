//! What the plots show, computed from result rows alone (no drawing here), so
//! every number on a chart can be tested against the rows it came from.

use super::digest::Digest;
use super::ratios::RatioDist;
use crate::results::{ResultRow, Source};
use crate::tune::{Objective, Setting, TuneAcc};
use std::collections::HashMap;

/// One experimental setup: the same routing under the same planner knobs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetupKey {
    pub trace: String,
    pub scenario: String,
    pub gpus: u32,
    pub alpha_bits: u64,
    pub min_gemm: u64,
    /// How the per-rank loads were made (`input_note`): the same trace
    /// rescaled to another batch size is another setup.
    pub input: String,
    /// Expert units launched as CUDA graphs (`--cuda-graphs on`): the same
    /// routing issued one by one is another setup.
    pub cuda_graphs: bool,
    /// Tokens and weights moved by the copy engines (`--exchange
    /// copy-engine`): the same routing through NCCL is another setup.
    pub copy_engines: bool,
}

/// A row's exchange was the copy engines (older rows: NCCL).
fn by_copy_engines(r: &ResultRow) -> bool {
    crate::gpu::Exchange::parse(&r.exchange) == Some(crate::gpu::Exchange::CopyEngine)
}

impl SetupKey {
    pub fn of(r: &ResultRow) -> Self {
        Self {
            trace: r.trace.clone(),
            scenario: r.scenario.clone(),
            gpus: r.gpus,
            alpha_bits: r.alpha.to_bits(),
            min_gemm: r.min_gemm,
            input: r.input_note.clone(),
            cuda_graphs: r.cuda_graphs,
            copy_engines: by_copy_engines(r),
        }
    }
    /// The same setup whatever the input note says (for joining measured
    /// rows to simulated ones, whose notes may be worded differently).
    pub(super) fn loose(&self) -> Self {
        Self {
            input: String::new(),
            ..self.clone()
        }
    }
    pub fn alpha(&self) -> f64 {
        f64::from_bits(self.alpha_bits)
    }
    /// Short label, e.g. "olmoe-1b-7b.parquet, 8 GPUs" or with the scenario.
    pub fn label(&self, with_knobs: bool) -> String {
        let mut s = trace_stem(&self.trace);
        if !self.scenario.is_empty() {
            s.push_str(&format!(" [{}]", self.scenario));
        }
        s.push_str(&format!(", {} GPUs", self.gpus));
        if self.cuda_graphs {
            s.push_str(", CUDA graphs");
        }
        if self.copy_engines {
            s.push_str(", copy engines");
        }
        if with_knobs {
            s.push_str(&format!(", α={} m={}", self.alpha(), self.min_gemm));
            if !self.input.is_empty() {
                s.push_str(&format!(", loads: {}", self.input));
            }
        }
        s
    }
}

/// Setup plus where the numbers came from: simulated with a profile, or
/// measured on a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub setup: SetupKey,
    pub source: Source,
    /// Profile name for simulated rows, device name for measured ones.
    pub origin: String,
}

impl SeriesKey {
    pub fn of(r: &ResultRow) -> Self {
        Self {
            setup: SetupKey::of(r),
            source: r.source,
            origin: if r.source == Source::Measured {
                r.device.clone()
            } else {
                r.profile.clone()
            },
        }
    }
    pub fn measured(&self) -> bool {
        self.source == Source::Measured
    }
    /// Whether `r` belongs to this series (without building its key).
    pub fn is(&self, r: &ResultRow) -> bool {
        let s = &self.setup;
        let origin = if r.source == Source::Measured {
            &r.device
        } else {
            &r.profile
        };
        self.source == r.source
            && *origin == self.origin
            && s.trace == r.trace
            && s.scenario == r.scenario
            && s.gpus == r.gpus
            && s.alpha_bits == r.alpha.to_bits()
            && s.min_gemm == r.min_gemm
            && s.input == r.input_note
            && s.cuda_graphs == r.cuda_graphs
            && s.copy_engines == by_copy_engines(r)
    }
    pub fn label(&self, with_knobs: bool) -> String {
        let how = if self.measured() {
            format!("measured on {}", self.origin)
        } else if self.source == Source::Simulated {
            format!("simulated, {} profile", self.origin)
        } else {
            format!("{}, {}", self.source, self.origin)
        };
        format!("{} ({how})", self.setup.label(with_knobs))
    }
}

/// "olmoe-1b-7b.parquet" -> "olmoe-1b-7b".
pub fn trace_stem(t: &str) -> String {
    t.strip_suffix(".parquet").unwrap_or(t).to_string()
}

/// "λ=1.3" or "λ=always".
pub fn lambda_label(l: Option<f64>) -> String {
    match l {
        Some(v) => format!("λ={}", trim_float(v)),
        None => "λ=always".into(),
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// True when more than one (alpha, m, input note) appears among the rows of
/// one trace, so labels must say which.
pub fn knobs_vary(rows: &[ResultRow]) -> bool {
    digest(rows.iter()).knobs_vary
}

/// Every row fed to a [`Digest`], series in first-seen order; the LLEP
/// on-share counted exactly at every lambda of the rows.
fn digest<'a>(rows: impl Iterator<Item = &'a ResultRow> + Clone) -> Digest {
    let mut gates: Vec<f64> = vec![];
    for r in rows.clone() {
        if let (crate::plan::Policy::Llep, Some(l)) = (r.policy, r.lambda()) {
            if !gates.iter().any(|g| g.to_bits() == l.to_bits()) {
                gates.push(l);
            }
        }
    }
    let mut d = Digest::windowed(&gates);
    rows.clone().for_each(|r| d.add(r));
    if d.broken() {
        d = Digest::keeping(&gates);
        rows.for_each(|r| d.add(r));
    }
    d.order(None);
    d
}

pub(super) fn lkey(l: Option<f64>) -> Option<u64> {
    l.map(f64::to_bits)
}

/// Rows of each series, in first-seen order.
pub fn by_series(rows: &[ResultRow]) -> Vec<(SeriesKey, Vec<&ResultRow>)> {
    let mut order: Vec<SeriesKey> = Vec::new();
    let mut map: HashMap<SeriesKey, Vec<&ResultRow>> = HashMap::new();
    for r in rows {
        let k = SeriesKey::of(r);
        map.entry(k.clone())
            .or_insert_with(|| {
                order.push(k.clone());
                Vec::new()
            })
            .push(r);
    }
    order
        .into_iter()
        .map(|k| {
            let v = map.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect()
}

/// Speedup over EP of LLEP at each lambda for one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedupCurve {
    pub key: SeriesKey,
    /// (lambda, EP time / LLEP time) for numeric lambdas, sorted by lambda.
    pub points: Vec<(f64, f64)>,
    /// Speedup of LLEP with the gate off (always plan), if present.
    pub always: Option<f64>,
    /// Speedup of the ideal bound, if present.
    pub ideal: Option<f64>,
    /// (lambda, total ms) for the numeric lambdas, summed over the
    /// layer-steps that have an EP row, sorted by lambda.
    pub totals: Vec<(f64, f64)>,
    /// p10 and p90 of measured totals turned into speedups, per point.
    pub spread: Vec<Option<(f64, f64)>>,
    pub layer_steps: usize,
    /// What `llep-trace tune` recommends on these rows: [`crate::tune::tune`]
    /// itself, so the page and `tune` never disagree. May be "never (EP)".
    pub recommended: Option<Setting>,
    /// The LLEP gate the report shows by default: the recommendation, or,
    /// when that is plain EP, what the same rule picks among the LLEP
    /// settings alone. `Some(None)` is "always".
    pub shown: Option<Option<f64>>,
}

impl SpeedupCurve {
    /// The recommended numeric lambda (see [`Self::shown`]) and its speedup.
    pub fn best(&self) -> Option<(f64, f64)> {
        let l = self.shown??;
        self.points.iter().find(|p| p.0 == l).copied()
    }
}

/// `tune`'s recommendation on one series' EP and LLEP rows, and the LLEP
/// gate to show (see [`SpeedupCurve::shown`]).
pub(super) fn recommendation_of(
    all: &TuneAcc,
    llep: &TuneAcc,
) -> (Option<Setting>, Option<Option<f64>>) {
    let pick = |acc: &TuneAcc| {
        acc.finish(Objective::Time, None)
            .ok()
            .map(|t| t.scored[t.best].setting.clone())
    };
    let rec = pick(all);
    let shown = match &rec {
        Some(s) if !s.never => Some(s.lambda),
        _ => pick(llep).filter(|s| !s.never).map(|s| s.lambda),
    };
    (rec, shown)
}

/// Speedup curves, one per series that has EP rows and LLEP rows. Each
/// speedup sums EP time and policy time over the same layer-steps (those
/// present under both), so a partial measured run is compared fairly; a
/// layer-step run at several batch sizes or layer shapes (replays, or
/// files of one setup at different batches) compares each with the EP row
/// of the same batch and shape.
pub fn speedup_curves(rows: &[ResultRow]) -> Vec<SpeedupCurve> {
    digest(rows.iter()).curves()
}

/// The lambda the report shows LLEP at, per setup: the user's choice
/// (snapped to the nearest lambda the setup has rows for), else what
/// `tune` recommends on the simulated rows (see [`SpeedupCurve::shown`]) of
/// the setup, else of its simulated twin (the same setup, any input note),
/// else on the measured rows, else "always" (`None`).
pub fn chosen_lambda(curves: &[SpeedupCurve], setup: &SetupKey, user: Option<f64>) -> Option<f64> {
    let mine: Vec<&SpeedupCurve> = curves.iter().filter(|c| &c.key.setup == setup).collect();
    if let Some(u) = user {
        return mine
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.0))
            .min_by(|a, b| (a - u).abs().total_cmp(&(b - u).abs()))
            .or(Some(u));
    }
    let pick = |measured: bool| {
        mine.iter()
            .filter(|c| c.key.measured() == measured)
            .find_map(|c| c.shown)
    };
    // A measured series is shown at its simulated twin's lambda (input
    // notes of measured and simulated rows may be worded differently).
    let twin = || {
        curves
            .iter()
            .filter(|c| !c.key.measured() && c.key.setup.loose() == setup.loose())
            .find_map(|c| c.shown)
    };
    pick(false).or_else(twin).or_else(|| pick(true)).flatten()
}

/// Imbalance (max/mean native GPU load) of every layer-step of a setup.
#[derive(Debug, Clone, PartialEq)]
pub struct ImbalanceCdf {
    pub setup: SetupKey,
    /// Every layer-step's ratio, or past [`super::ratios::EXACT_CAP`]
    /// layer-steps a histogram of them (see [`RatioDist`]).
    pub ratios: RatioDist,
}

impl ImbalanceCdf {
    /// Fraction of layer-steps on which LLEP switches on at `lambda`
    /// (ratio >= lambda, as the reference gates it).
    pub fn on_fraction(&self, lambda: f64) -> f64 {
        self.ratios.on_fraction(lambda)
    }
}

/// One CDF per setup; each layer-step counted once whatever its policies.
pub fn imbalance_cdfs(rows: &[ResultRow]) -> Vec<ImbalanceCdf> {
    digest(rows.iter()).cdfs()
}

/// Per-GPU load over layer-steps, EP (native) against LLEP at one lambda,
/// in units of the planner's capacity for that layer-step.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub key: SeriesKey,
    pub lambda: Option<f64>,
    /// (step, layer) of each column, step-major.
    pub columns: Vec<(u32, u32)>,
    pub capacity: Vec<u64>,
    /// `ep[c][g]`: load of GPU g at column c divided by capacity.
    pub ep: Vec<Vec<f64>>,
    pub llep: Vec<Vec<f64>>,
    /// Raw token-copies, same layout.
    pub ep_raw: Vec<Vec<u64>>,
    pub llep_raw: Vec<Vec<u64>>,
    pub gpus: usize,
}

/// Columns beyond this are left out of a heatmap (and the page says so).
pub const HEATMAP_MAX_COLUMNS: usize = 1200;

/// The heatmap of one series at `lambda` (falls back to the LLEP rows of
/// the nearest lambda present, reported in `Heatmap::lambda`).
pub fn heatmap(rows: &[&ResultRow], key: &SeriesKey, lambda: Option<f64>) -> Option<Heatmap> {
    let d = digest(rows.iter().copied());
    d.series.iter().find(|s| &s.key == key)?.heatmap(lambda)
}

/// Forward phases, then a training step's backward ones (zero in forward
/// rows, so forward bars are unchanged).
pub const PHASES: [&str; 10] = [
    "overhead",
    "dispatch",
    "weight transfer",
    "compute",
    "combine",
    "bwd combine",
    "bwd dgrad",
    "bwd wgrad",
    "bwd dispatch",
    "weight-grad return",
];

/// Index of the first backward phase in [`PHASES`].
pub const FIRST_BWD_PHASE: usize = 5;

/// Mean per-layer-step phase times of one policy in one series.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseBar {
    pub key: SeriesKey,
    pub policy: String,
    pub lambda: Option<f64>,
    pub phases_ms: [f64; 10],
    pub total_ms: f64,
    pub layer_steps: usize,
}

impl PhaseBar {
    /// Whether the bar holds training rows (backward phases).
    pub fn has_backward(&self) -> bool {
        self.phases_ms[FIRST_BWD_PHASE..].iter().any(|&v| v > 0.0)
    }

    pub fn policy_label(&self) -> String {
        if self.policy == "llep" {
            format!("llep {}", lambda_label(self.lambda))
        } else {
            self.policy.clone()
        }
    }
}

/// EP, LLEP at the chosen lambda and ideal, per series.
pub fn phase_bars(
    rows: &[ResultRow],
    lambda_of: &dyn Fn(&SetupKey) -> Option<f64>,
) -> Vec<PhaseBar> {
    let d = digest(rows.iter());
    d.series
        .iter()
        .flat_map(|s| s.phase_bars(lambda_of(&s.key.setup)))
        .collect()
}

/// Peak memory per GPU (max over layer-steps), EP against LLEP.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPanel {
    pub key: SeriesKey,
    pub lambda: Option<f64>,
    pub ep: Vec<u64>,
    pub llep: Vec<u64>,
    pub oom_rows: usize,
    /// Layer-steps that run out of memory under EP.
    pub ep_oom_rows: usize,
    /// Activations saved for backward (training rows), the most any GPU
    /// keeps, max over layer-steps; 0 for forward rows.
    pub ep_saved: u64,
    pub llep_saved: u64,
    /// The card's memory, when known (filled by the caller from profiles).
    pub card_bytes: Option<u64>,
}

pub fn memory_panels(
    rows: &[ResultRow],
    lambda_of: &dyn Fn(&SetupKey) -> Option<f64>,
) -> Vec<MemoryPanel> {
    let d = digest(rows.iter());
    d.series
        .iter()
        .filter_map(|s| s.memory_panel(lambda_of(&s.key.setup)))
        .collect()
}

/// A measured layer-step and its simulated twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub policy: String,
    pub lambda: Option<f64>,
    pub step: u32,
    pub layer: u32,
    pub setup: SetupKey,
    pub device: String,
    pub profile: String,
    pub simulated_ms: f64,
    pub measured_ms: f64,
}

impl Pair {
    /// (simulated - measured) / measured.
    pub fn rel_error(&self) -> f64 {
        (self.simulated_ms - self.measured_ms) / self.measured_ms
    }
}

/// What joins a measured row to its simulated twin: the setup (any input
/// note), layer-step, policy, lambda, and batch and layer shape too (one
/// scenario replayed at two batch sizes or on two model shapes is four
/// different measurements).
pub(super) type PairKey = (
    SetupKey,
    u32,
    u32,
    String,
    Option<u64>,
    u64,
    (u32, u32, u32, u32),
);

pub(super) fn pair_key(r: &ResultRow) -> PairKey {
    (
        SetupKey::of(r).loose(),
        r.step,
        r.layer,
        r.policy.to_string(),
        lkey(r.lambda()),
        r.tokens_per_rank,
        (r.hidden_size, r.intermediate_size, r.experts, r.top_k),
    )
}

/// Join measured rows to simulated rows of the same setup, layer-step,
/// policy and lambda. Where several profiles simulated it, the one whose
/// card is the measured device wins, else the first.
pub fn sim_measured_pairs(rows: &[ResultRow]) -> Vec<Pair> {
    let k = pair_key;
    let mut sims: HashMap<PairKey, Vec<&ResultRow>> = HashMap::new();
    for r in rows.iter().filter(|r| r.source == Source::Simulated) {
        sims.entry(k(r)).or_default().push(r);
    }
    let mut out = Vec::new();
    for m in rows.iter().filter(|r| r.source == Source::Measured) {
        let Some(cands) = sims.get(&k(m)) else {
            continue;
        };
        let rank = |s: &&&ResultRow| (s.input_note != m.input_note, s.device != m.device);
        let s = cands.iter().min_by_key(rank).unwrap_or(&cands[0]);
        if m.t_total_ms <= 0.0 {
            continue;
        }
        out.push(Pair {
            policy: m.policy.to_string(),
            lambda: m.lambda(),
            step: m.step,
            layer: m.layer,
            setup: SetupKey::of(m),
            device: m.device.clone(),
            profile: s.profile.clone(),
            simulated_ms: s.t_total_ms,
            measured_ms: m.t_total_ms,
        });
    }
    out
}

/// Median and worst absolute relative error, in percent.
pub fn error_stats(pairs: &[Pair]) -> Option<(f64, f64)> {
    if pairs.is_empty() {
        return None;
    }
    let mut e: Vec<f64> = pairs.iter().map(|p| p.rel_error().abs() * 100.0).collect();
    e.sort_by(f64::total_cmp);
    let n = e.len();
    let median = if n % 2 == 1 {
        e[n / 2]
    } else {
        (e[n / 2 - 1] + e[n / 2]) / 2.0
    };
    Some((median, e[n - 1]))
}

/// How a series' per-GPU load is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadChart {
    /// GPUs against layer-steps, coloured by load over capacity.
    Heatmap,
    /// A single layer-step: per-GPU bars, EP beside LLEP, against the
    /// capacity line (a one-column heatmap would fill half the frame).
    Bars,
}

pub fn load_chart(h: &Heatmap) -> LoadChart {
    if h.columns.len() == 1 {
        LoadChart::Bars
    } else {
        LoadChart::Heatmap
    }
}

/// The scenarios of `--synthetic A,B,...` in the commands, in order.
pub(super) fn synthetic_lists(commands: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for c in commands {
        let words: Vec<&str> = c.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let list = match w.strip_prefix("--synthetic") {
                Some("") => words.get(i + 1).copied(),
                Some(v) => v.strip_prefix('='),
                None => None,
            };
            for s in list.unwrap_or("").trim_matches(['\'', '"']).split(',') {
                if !s.is_empty() && !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

/// Rows reordered (stably) so that each trace's scenarios come in the
/// order the user gave them: "balanced" (the baseline) first, then the
/// order of the `--synthetic` lists in `commands` (the commands that made
/// the results files), then first appearance. Files can hold scenarios
/// sorted as strings ("30:4" < "95:1" < "balanced"); the page should not.
pub fn in_user_order(rows: Vec<ResultRow>, commands: &[&str]) -> Vec<ResultRow> {
    let listed = synthetic_lists(commands);
    let mut traces: Vec<String> = vec![];
    let mut seen: Vec<String> = vec![];
    for r in &rows {
        if !traces.contains(&r.trace) {
            traces.push(r.trace.clone());
        }
        if !seen.contains(&r.scenario) {
            seen.push(r.scenario.clone());
        }
    }
    let rank = |r: &ResultRow| {
        let t = traces.iter().position(|t| *t == r.trace).unwrap_or(0);
        let s = &r.scenario;
        let within = if s == "balanced" {
            (0, 0)
        } else if let Some(p) = listed.iter().position(|l| l == s) {
            (1, p)
        } else {
            (2, seen.iter().position(|x| x == s).unwrap_or(0))
        };
        (t, within)
    };
    let mut keyed: Vec<_> = rows.into_iter().map(|r| (rank(&r), r)).collect();
    keyed.sort_by_key(|k| k.0);
    keyed.into_iter().map(|k| k.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same routing replayed with its expert units launched as CUDA
    /// graphs and issued one by one are two setups, and the label says
    /// which; a measured graph row and its simulated twin share the setup.
    #[test]
    fn cuda_graph_rows_are_a_setup_of_their_own() {
        let eager = ResultRow {
            trace: "synthetic".into(),
            scenario: "95:1".into(),
            gpus: 2,
            ..Default::default()
        };
        let graphed = ResultRow {
            cuda_graphs: true,
            ..eager.clone()
        };
        let (e, g) = (SetupKey::of(&eager), SetupKey::of(&graphed));
        assert_ne!(e, g);
        assert!(g.label(false).contains("CUDA graphs") && !e.label(false).contains("CUDA"));
        let twin = ResultRow {
            source: Source::Simulated,
            ..graphed.clone()
        };
        assert_eq!(SetupKey::of(&twin).loose(), g.loose());
        assert!(!SeriesKey::of(&graphed).is(&eager));
        assert!(SeriesKey::of(&graphed).is(&graphed));
    }

    #[test]
    fn copy_engine_rows_are_a_setup_of_their_own() {
        let older = ResultRow {
            trace: "synthetic".into(),
            scenario: "80:4".into(),
            gpus: 2,
            ..Default::default()
        };
        let nccl = ResultRow {
            exchange: "nccl".into(),
            ..older.clone()
        };
        let ce = ResultRow {
            exchange: "copy-engine".into(),
            ..older.clone()
        };
        // a file written before the column is NCCL's
        assert_eq!(SetupKey::of(&older), SetupKey::of(&nccl));
        assert_ne!(SetupKey::of(&nccl), SetupKey::of(&ce));
        assert!(SetupKey::of(&ce).label(false).contains("copy engines"));
        assert!(!SetupKey::of(&nccl).label(false).contains("copy"));
        assert!(!SeriesKey::of(&ce).is(&nccl));
        assert!(SeriesKey::of(&ce).is(&ce));
    }
}
