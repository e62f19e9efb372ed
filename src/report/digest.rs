//! The report's data as running aggregates: result rows are fed one at a
//! time ([`Digest::add`], a results file a row group at a time), and every
//! section's data (speedup curves, `tune`'s recommendation, imbalance CDFs,
//! heatmaps, phase bars, memory panels, bytes across nodes) is kept as
//! per-series totals, so the report's memory is bounded by what it plots,
//! not by the number of rows.
//!
//! Layer-steps: each LLEP (or ideal) row is compared with the EP row of its
//! own layer-step and run shape. Where every series' rows come grouped by
//! layer-step in ascending (step, layer) order (what `simulate` and `tune`
//! write), a [`Digest::windowed`] digest holds only the current
//! layer-step's EP times per series; if a series goes back to an earlier
//! layer-step the digest says it is [`Digest::broken`] and the caller feeds
//! the rows again to a digest that keeps every EP time (as it always did).
//! Distinct layer-steps are counted in [`LayerSteps`], a bit per
//! layer-step (about 0.3 byte where steps run consecutively), and each
//! setup's max/mean ratios go to a [`RatioDist`] (exact up to a cap, then
//! a histogram). The heatmaps keep at most `2 x HEATMAP_MAX_COLUMNS`
//! layer-steps per series and lambda.

use super::data::{
    lkey, recommendation_of, Heatmap, ImbalanceCdf, MemoryPanel, PhaseBar, SeriesKey, SetupKey,
    SpeedupCurve, HEATMAP_MAX_COLUMNS,
};
use super::ratios::RatioDist;
use crate::plan::{capacity, Policy};
use crate::results::{ResultRow, Source};
use crate::tune::TuneAcc;
use std::collections::{BTreeMap, HashMap};

/// Layer-steps a heatmap keeps per series and lambda (the smallest
/// (step, layer) ids; twice the columns drawn, so that a few layer-steps
/// present under one policy only do not cut the map short).
const HEAT_KEEP: usize = 2 * HEATMAP_MAX_COLUMNS;

#[derive(Debug, Clone, Default)]
struct CurveSum {
    t: f64,
    ep: f64,
    p10: f64,
    p90: f64,
    spread: bool,
    n: usize,
}

#[derive(Debug, Clone, Default)]
struct PhaseSum {
    phases: [f64; 10],
    total: f64,
    n: usize,
}

#[derive(Debug, Clone, Default)]
struct MemMax {
    peak: Vec<u64>,
    oom: usize,
    saved: u64,
}

impl MemMax {
    fn add(&mut self, r: &ResultRow, gpus: usize) {
        if self.peak.is_empty() {
            self.peak = vec![0; gpus];
        }
        self.oom += r.oom as usize;
        self.saved = self.saved.max(r.saved_act_bytes);
        for (d, &v) in self.peak.iter_mut().zip(&r.peak_mem_per_gpu) {
            *d = (*d).max(v);
        }
    }
}

/// The first loads seen at each of the smallest `HEAT_KEEP` layer-steps;
/// `None` where the row's loads do not cover every GPU.
#[derive(Debug, Clone, Default)]
struct HeatKeep(BTreeMap<(u32, u32), Option<Vec<u64>>>);

impl HeatKeep {
    fn add(&mut self, ls: (u32, u32), loads: &[u64], gpus: usize) {
        if self.0.contains_key(&ls) {
            return;
        }
        if self.0.len() >= HEAT_KEEP {
            // Keys only leave from the top, so a key above the kept ones
            // was either evicted or never seen: first-seen still wins.
            match self.0.last_key_value() {
                Some((&last, _)) if ls > last => return,
                _ => {}
            }
        }
        self.0
            .insert(ls, (loads.len() == gpus).then(|| loads.to_vec()));
        if self.0.len() > HEAT_KEEP {
            self.0.pop_last();
        }
    }
}

/// A set of (step, layer) ids, a bit each: one 64-bit word per layer and
/// 64 consecutive steps (about 0.3 byte a layer-step where the steps run
/// consecutively, at most 20 where each is alone in its 64).
#[derive(Debug, Clone, Default)]
pub(super) struct LayerSteps {
    words: HashMap<u64, u64>,
    n: usize,
}

impl LayerSteps {
    /// Add `ls`; whether it was new.
    pub fn insert(&mut self, (step, layer): (u32, u32)) -> bool {
        let w = self
            .words
            .entry((u64::from(step >> 6) << 32) | u64::from(layer))
            .or_insert(0);
        let bit = 1u64 << (step & 63);
        let new = *w & bit == 0;
        *w |= bit;
        self.n += new as usize;
        new
    }

    pub fn len(&self) -> usize {
        self.n
    }
}

/// Running totals of one series.
#[derive(Debug, Clone)]
pub(super) struct SeriesAcc {
    pub key: SeriesKey,
    first: usize,
    /// Every layer-step of the series, and those with an EP row.
    steps: LayerSteps,
    ep_steps: LayerSteps,
    /// Hold EP times for the current layer-step only (see the module doc).
    windowed: bool,
    /// The layer-step of the last row, when windowed.
    current: Option<(u32, u32)>,
    /// A windowed series went back to an earlier layer-step.
    broken: bool,
    /// EP total ms per layer-step and run shape (index into `shapes`): a
    /// replay holds one layer-step at several batch sizes or layer shapes,
    /// and each is compared with its own EP row.
    ep_ms: HashMap<(u32, u32, u32), f64>,
    shapes: Vec<(u64, u32, u32, u32, u32)>,
    curve: BTreeMap<(String, Option<u64>), CurveSum>,
    /// Rows that came before their layer-step's EP row (none in files this
    /// tool writes), matched at the end.
    pending: Vec<ResultRow>,
    tune_all: TuneAcc,
    tune_llep: TuneAcc,
    phases: BTreeMap<(u8, Option<u64>), (Option<f64>, PhaseSum)>,
    first_llep: Option<Option<f64>>,
    mem_ep: Option<MemMax>,
    mem_llep: Vec<(Option<u64>, Option<f64>, MemMax)>,
    llep_lambdas: Vec<Option<f64>>,
    heat_ep: HeatKeep,
    heat_llep: HashMap<Option<u64>, HeatKeep>,
}

impl SeriesAcc {
    fn new(key: SeriesKey, first: usize, windowed: bool) -> Self {
        Self {
            key,
            first,
            steps: LayerSteps::default(),
            ep_steps: LayerSteps::default(),
            windowed,
            current: None,
            broken: false,
            ep_ms: HashMap::new(),
            shapes: vec![],
            curve: BTreeMap::new(),
            pending: vec![],
            tune_all: TuneAcc::default(),
            tune_llep: TuneAcc::default(),
            phases: BTreeMap::new(),
            first_llep: None,
            mem_ep: None,
            mem_llep: vec![],
            llep_lambdas: vec![],
            heat_ep: HeatKeep::default(),
            heat_llep: HashMap::new(),
        }
    }

    fn add(&mut self, r: &ResultRow) {
        let ls = (r.step, r.layer);
        let gpus = self.key.setup.gpus as usize;
        let mk = self.match_key(r);
        self.steps.insert(ls);
        if self.windowed {
            self.advance(ls);
        }
        if r.policy == Policy::Ep {
            self.ep_steps.insert(ls);
            self.ep_ms.insert(mk, r.t_total_ms);
            self.tune_all.add(r);
            self.mem_ep.get_or_insert_with(MemMax::default).add(r, gpus);
            self.heat_ep.add(ls, &r.loads_before, gpus);
        } else {
            match self.ep_ms.get(&mk) {
                Some(&e) => self.matched(r, e),
                None => self.pending.push(r.clone()),
            }
        }
        if r.policy == Policy::Llep {
            let l = r.lambda();
            if self.first_llep.is_none() {
                self.first_llep = Some(l);
            }
            if !self.llep_lambdas.iter().any(|x| lkey(*x) == lkey(l)) {
                self.llep_lambdas.push(l);
            }
            let i = match self.mem_llep.iter().position(|m| m.0 == lkey(l)) {
                Some(i) => i,
                None => {
                    self.mem_llep.push((lkey(l), l, MemMax::default()));
                    self.mem_llep.len() - 1
                }
            };
            self.mem_llep[i].2.add(r, gpus);
            self.heat_llep
                .entry(lkey(l))
                .or_default()
                .add(ls, &r.loads_after, gpus);
        }
        let p = match r.policy {
            Policy::Ep => Some((0u8, None)),
            Policy::Llep => Some((1, lkey(r.lambda()))),
            Policy::Ideal => Some((2, None)),
            _ => None,
        };
        if let Some(k) = p {
            let (_, s) = self
                .phases
                .entry(k)
                .or_insert_with(|| (r.lambda(), PhaseSum::default()));
            for (acc, v) in s.phases.iter_mut().zip([
                r.t_overhead_ms,
                r.t_dispatch_ms,
                r.t_transfer_ms,
                r.t_compute_ms,
                r.t_combine_ms,
                r.t_bwd_combine_ms,
                r.t_bwd_dgrad_ms,
                r.t_bwd_wgrad_ms,
                r.t_bwd_dispatch_ms,
                r.t_grad_return_ms,
            ]) {
                *acc += v;
            }
            s.total += r.t_total_ms;
            s.n += 1;
        }
    }

    /// A windowed series moves on to `ls`: the rows of the layer-step it
    /// leaves that found no EP row never will (unless the rows are not in
    /// order, which marks the series broken).
    fn advance(&mut self, ls: (u32, u32)) {
        match self.current {
            Some(c) if ls < c => self.broken = true,
            Some(c) if ls > c => {
                self.match_pending();
                self.pending.clear();
                self.ep_ms.clear();
            }
            _ => {}
        }
        self.current = Some(ls);
    }

    /// The layer-step and run shape (batch per rank, layer shape) of `r`.
    fn match_key(&mut self, r: &ResultRow) -> (u32, u32, u32) {
        let sh = (
            r.tokens_per_rank,
            r.hidden_size,
            r.intermediate_size,
            r.experts,
            r.top_k,
        );
        let i = match self.shapes.iter().position(|x| *x == sh) {
            Some(i) => i,
            None => {
                self.shapes.push(sh);
                self.shapes.len() - 1
            }
        };
        (r.step, r.layer, i as u32)
    }

    /// Compare the rows that came before their EP row with it, where it
    /// has come since.
    fn match_pending(&mut self) {
        for r in std::mem::take(&mut self.pending) {
            let mk = self.match_key(&r);
            if let Some(&e) = self.ep_ms.get(&mk) {
                self.matched(&r, e);
            }
        }
    }

    /// A non-EP row whose layer-step has an EP row taking `ep_ms`.
    fn matched(&mut self, r: &ResultRow, ep_ms: f64) {
        if r.policy == Policy::Llep {
            self.tune_all.add(r);
            self.tune_llep.add(r);
        }
        let a = self
            .curve
            .entry((r.policy.to_string(), lkey(r.lambda())))
            .or_insert_with(|| CurveSum {
                spread: true,
                ..Default::default()
            });
        a.t += r.t_total_ms;
        a.ep += ep_ms;
        a.n += 1;
        match (r.t_total_p10_ms, r.t_total_p90_ms) {
            (Some(lo), Some(hi)) => {
                a.p10 += lo;
                a.p90 += hi;
            }
            _ => a.spread = false,
        }
    }

    /// Distinct layer-steps of the series.
    pub fn layer_steps(&self) -> usize {
        self.steps.len()
    }

    /// The speedup curve (see [`super::data::speedup_curves`]); `None`
    /// without EP rows or anything to compare them with.
    pub fn curve(&mut self) -> Option<SpeedupCurve> {
        self.match_pending();
        if self.ep_steps.len() == 0 {
            return None;
        }
        let mut c = SpeedupCurve {
            key: self.key.clone(),
            points: vec![],
            always: None,
            ideal: None,
            totals: vec![],
            spread: vec![],
            layer_steps: self.ep_steps.len(),
            recommended: None,
            shown: None,
        };
        type Point = (f64, f64, f64, Option<(f64, f64)>);
        let mut pts: Vec<Point> = Vec::new();
        for ((policy, l), a) in &self.curve {
            if a.t <= 0.0 {
                continue;
            }
            let s = a.ep / a.t;
            match (policy.as_str(), l) {
                ("llep", Some(b)) => {
                    // The p90 time gives the low speedup and the p10 the high one.
                    let sp = (a.spread && a.p10 > 0.0).then(|| (a.ep / a.p90, a.ep / a.p10));
                    pts.push((f64::from_bits(*b), s, a.t, sp));
                }
                ("llep", None) => c.always = Some(s),
                ("ideal", _) => c.ideal = Some(s),
                _ => {}
            }
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        c.points = pts.iter().map(|p| (p.0, p.1)).collect();
        c.totals = pts.iter().map(|p| (p.0, p.2)).collect();
        c.spread = pts.iter().map(|p| p.3).collect();
        if c.points.is_empty() && c.always.is_none() && c.ideal.is_none() {
            return None;
        }
        (c.recommended, c.shown) = recommendation_of(&self.tune_all, &self.tune_llep);
        Some(c)
    }

    /// EP, LLEP at `lam` (else at the first LLEP row's lambda) and ideal.
    pub fn phase_bars(&self, lam: Option<f64>) -> Vec<PhaseBar> {
        let llep_l = if self.phases.contains_key(&(1, lkey(lam))) {
            lam
        } else {
            self.first_llep.flatten()
        };
        let mut out = vec![];
        for (p, name) in [(0u8, "ep"), (1, "llep"), (2, "ideal")] {
            let k = (p, if p == 1 { lkey(llep_l) } else { None });
            let Some((l, s)) = self.phases.get(&k) else {
                continue;
            };
            if s.n == 0 {
                continue;
            }
            let n = s.n as f64;
            let mut phases_ms = s.phases;
            phases_ms.iter_mut().for_each(|x| *x /= n);
            out.push(PhaseBar {
                key: self.key.clone(),
                policy: name.into(),
                lambda: if p == 1 { *l } else { None },
                phases_ms,
                total_ms: s.total / n,
                layer_steps: s.n,
            });
        }
        out
    }

    /// Peak memory per GPU, EP against LLEP at `lam` (else at the first
    /// LLEP row's lambda).
    pub fn memory_panel(&self, lam: Option<f64>) -> Option<MemoryPanel> {
        let lam = if self.mem_llep.iter().any(|m| m.0 == lkey(lam)) {
            lam
        } else {
            self.first_llep?
        };
        let ep = self.mem_ep.as_ref()?;
        let ll = &self.mem_llep.iter().find(|m| m.0 == lkey(lam))?.2;
        Some(MemoryPanel {
            key: self.key.clone(),
            lambda: lam,
            ep: ep.peak.clone(),
            llep: ll.peak.clone(),
            oom_rows: ll.oom,
            ep_oom_rows: ep.oom,
            ep_saved: ep.saved,
            llep_saved: ll.saved,
            card_bytes: None,
        })
    }

    /// The heatmap at `lambda` (see [`super::data::heatmap`]).
    pub fn heatmap(&self, lambda: Option<f64>) -> Option<Heatmap> {
        let mut lams = self.llep_lambdas.clone();
        lams.sort_by(|a, b| match (a, b) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, _) => std::cmp::Ordering::Less,
            (_, None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.total_cmp(y),
        });
        let lam = if lams.iter().any(|x| lkey(*x) == lkey(lambda)) {
            lambda
        } else {
            match lambda {
                Some(l) => lams
                    .iter()
                    .copied()
                    .min_by(|a, b| {
                        let d = |x: &Option<f64>| x.map_or(f64::INFINITY, |v| (v - l).abs());
                        d(a).total_cmp(&d(b))
                    })
                    .flatten(),
                None => lams.first().copied().flatten(),
            }
        };
        let empty = HeatKeep::default();
        let ll = self.heat_llep.get(&lkey(lam)).unwrap_or(&empty);
        let gpus = self.key.setup.gpus as usize;
        let alpha = self.key.setup.alpha();
        let mut h = Heatmap {
            key: self.key.clone(),
            lambda: lam,
            columns: vec![],
            capacity: vec![],
            ep: vec![],
            llep: vec![],
            ep_raw: vec![],
            llep_raw: vec![],
            gpus,
        };
        for (ls, e) in &self.heat_ep.0 {
            let Some(Some(l)) = ll.0.get(ls) else {
                continue;
            };
            let Some(e) = e else { continue };
            let total: u64 = e.iter().sum();
            let cap = capacity(total, gpus, alpha).max(1);
            h.columns.push(*ls);
            h.capacity.push(cap);
            h.ep.push(e.iter().map(|&x| x as f64 / cap as f64).collect());
            h.llep
                .push(l.iter().map(|&x| x as f64 / cap as f64).collect());
            h.ep_raw.push(e.clone());
            h.llep_raw.push(l.clone());
            if h.columns.len() == HEATMAP_MAX_COLUMNS {
                break;
            }
        }
        (!h.columns.is_empty()).then_some(h)
    }
}

/// Where a (trace, scenario) goes on the page: see [`super::data::in_user_order`].
#[derive(Debug, Clone, Default)]
struct Ranker {
    traces: Vec<String>,
    scenarios: Vec<String>,
    listed: Vec<String>,
    on: bool,
}

impl Ranker {
    fn rank(&self, trace: &str, scenario: &str) -> (usize, (u8, usize)) {
        if !self.on {
            return (0, (0, 0));
        }
        let t = self.traces.iter().position(|t| t == trace).unwrap_or(0);
        let within = if scenario == "balanced" {
            (0, 0)
        } else if let Some(p) = self.listed.iter().position(|l| l == scenario) {
            (1, p)
        } else {
            (
                2,
                self.scenarios
                    .iter()
                    .position(|x| x == scenario)
                    .unwrap_or(0),
            )
        };
        (t, within)
    }
}

/// A setup, where it first appears, its layer-steps, and their max/mean
/// ratios (each layer-step's first row's).
type SetupRatios = (SetupKey, usize, LayerSteps, RatioDist);

/// A setting's label, bytes across nodes, rows, and where it first appears
/// per (trace, scenario).
type InterNode = (String, u64, usize, Vec<(String, String, usize)>);

/// Running aggregates of every row fed, per series and per setup.
#[derive(Debug, Clone, Default)]
pub(super) struct Digest {
    pub series: Vec<SeriesAcc>,
    index: HashMap<SeriesKey, usize>,
    setups: Vec<SetupRatios>,
    setup_index: HashMap<SetupKey, usize>,
    ranker: Ranker,
    knobs: HashMap<String, (u64, u64, String)>,
    pub knobs_vary: bool,
    inter: Vec<InterNode>,
    any_inter: bool,
    pub measured: usize,
    pub eplb: bool,
    rows: usize,
    windowed: bool,
    /// Gates whose LLEP on-share the page may print (counted exactly).
    gates: Vec<f64>,
}

impl Digest {
    /// A digest that holds EP times for each series' current layer-step
    /// only, and counts the ratios at or above each of `gates` exactly.
    /// Feed it rows and, if it ends [`Self::broken`], feed them again to
    /// [`Self::keeping`].
    pub fn windowed(gates: &[f64]) -> Self {
        Self {
            windowed: true,
            gates: gates.to_vec(),
            ..Default::default()
        }
    }

    /// A digest that keeps every EP time (rows in any order).
    pub fn keeping(gates: &[f64]) -> Self {
        Self {
            gates: gates.to_vec(),
            ..Default::default()
        }
    }

    /// Whether a windowed series went back to an earlier layer-step (its
    /// speedups would miss rows): feed the rows to [`Self::keeping`].
    pub fn broken(&self) -> bool {
        self.series.iter().any(|s| s.broken)
    }

    /// Rows fed so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn add(&mut self, r: &ResultRow) {
        let idx = self.rows;
        self.rows += 1;
        if !self.ranker.traces.contains(&r.trace) {
            self.ranker.traces.push(r.trace.clone());
        }
        if !self.ranker.scenarios.contains(&r.scenario) {
            self.ranker.scenarios.push(r.scenario.clone());
        }
        let key = SeriesKey::of(r);
        let si = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.index.insert(key.clone(), self.series.len());
                self.series
                    .push(SeriesAcc::new(key.clone(), idx, self.windowed));
                self.series.len() - 1
            }
        };
        self.series[si].add(r);
        let ui = match self.setup_index.get(&key.setup) {
            Some(&i) => i,
            None => {
                self.setup_index
                    .insert(key.setup.clone(), self.setups.len());
                let mut d = RatioDist::default();
                d.track(&self.gates);
                self.setups
                    .push((key.setup.clone(), idx, LayerSteps::default(), d));
                self.setups.len() - 1
            }
        };
        let u = &mut self.setups[ui];
        if u.2.insert((r.step, r.layer)) {
            u.3.add(r.imbalance_ratio);
        }
        if r.source != Source::Measured {
            let k = (r.alpha.to_bits(), r.min_gemm, r.input_note.clone());
            let seen = self
                .knobs
                .entry(r.trace.clone())
                .or_insert_with(|| k.clone());
            self.knobs_vary |= *seen != k;
        }
        self.measured += (r.source == Source::Measured) as usize;
        self.eplb |= matches!(r.policy, Policy::Eplb | Policy::EplbLlep);
        self.any_inter |= r.inter_node_bytes != 0;
        let label = r.setting_label();
        let i = match self.inter.iter().position(|x| x.0 == label) {
            Some(i) => i,
            None => {
                self.inter.push((label, 0, 0, vec![]));
                self.inter.len() - 1
            }
        };
        let x = &mut self.inter[i];
        x.1 += r.inter_node_bytes;
        x.2 += 1;
        if !x.3.iter().any(|f| f.0 == r.trace && f.1 == r.scenario) {
            x.3.push((r.trace.clone(), r.scenario.clone(), idx));
        }
    }

    /// Put series and setups in page order: with `commands` (the commands
    /// that made the inputs), the user's scenario order as
    /// [`super::data::in_user_order`] gives it; without, first-seen order.
    pub fn order(&mut self, commands: Option<&[&str]>) {
        self.ranker.on = commands.is_some();
        self.ranker.listed = super::data::synthetic_lists(commands.unwrap_or(&[]));
        let rk = self.ranker.clone();
        self.series
            .sort_by_key(|s| (rk.rank(&s.key.setup.trace, &s.key.setup.scenario), s.first));
        self.index = (self.series.iter().enumerate())
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
        self.setups
            .sort_by_key(|s| (rk.rank(&s.0.trace, &s.0.scenario), s.1));
        self.setup_index = (self.setups.iter().enumerate())
            .map(|(i, s)| (s.0.clone(), i))
            .collect();
        self.inter.sort_by_key(|x| {
            x.3.iter()
                .map(|f| (rk.rank(&f.0, &f.1), f.2))
                .min()
                .unwrap_or_default()
        });
    }

    /// Rank of a row's place on the page (for rows kept whole, sorted
    /// with their file position after [`Self::order`]).
    pub fn rank(&self, r: &ResultRow) -> (usize, (u8, usize)) {
        self.ranker.rank(&r.trace, &r.scenario)
    }

    /// One speedup curve per series that has one, in series order.
    pub fn curves(&mut self) -> Vec<SpeedupCurve> {
        self.series.iter_mut().filter_map(|s| s.curve()).collect()
    }

    /// One imbalance CDF per setup, in setup order.
    pub fn cdfs(&self) -> Vec<ImbalanceCdf> {
        self.setups
            .iter()
            .map(|(k, _, _, d)| {
                let mut ratios = d.clone();
                ratios.finish();
                ImbalanceCdf {
                    setup: k.clone(),
                    ratios,
                }
            })
            .collect()
    }

    /// Bytes crossing nodes per layer-step for each setting (see
    /// `sections::inter_node_line`); `None` when no row crosses nodes.
    pub fn inter_node(&self) -> Option<Vec<(String, u64, usize)>> {
        self.any_inter
            .then(|| self.inter.iter().map(|x| (x.0.clone(), x.1, x.2)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Gate;

    fn row(step: u32, layer: u32, policy: Policy, ms: f64) -> ResultRow {
        ResultRow {
            step,
            layer,
            policy,
            gate: if policy == Policy::Llep {
                Gate::Ratio(1.3)
            } else {
                Gate::Always
            },
            t_total_ms: ms,
            imbalance_ratio: 1.0 + f64::from(step % 7) / 10.0,
            gpus: 8,
            ..Default::default()
        }
    }

    /// Rows grouped by layer-step in order: the windowed digest holds one
    /// layer-step's EP times, and its numbers are the keeping digest's.
    #[test]
    fn windowed_digest_holds_one_layer_step_of_ep_times() {
        let mut w = Digest::windowed(&[1.3]);
        let mut k = Digest::keeping(&[1.3]);
        for s in 0..500 {
            for l in 0..4 {
                // the LLEP row first in odd layers: matched at the group's end
                let mut g = [
                    row(s, l, Policy::Ep, 2.0 + f64::from(s)),
                    row(s, l, Policy::Llep, 1.0 + f64::from(l)),
                ];
                if l % 2 == 1 {
                    g.reverse();
                }
                for r in &g {
                    w.add(r);
                    k.add(r);
                }
            }
        }
        assert!(!w.broken());
        assert_eq!(w.series.len(), 1);
        assert!(w.series[0].ep_ms.len() <= 1);
        assert!(w.series[0].pending.len() <= 1);
        assert_eq!(k.series[0].ep_ms.len(), 2000);
        assert_eq!(w.series[0].layer_steps(), 2000);
        let (cw, ck) = (w.curves(), k.curves());
        assert_eq!(cw, ck);
        let ep: f64 = (0..500).map(|s| 4.0 * (2.0 + f64::from(s))).sum();
        let llep: f64 = 500.0 * (1.0 + 2.0 + 3.0 + 4.0);
        assert_eq!(cw[0].points, vec![(1.3, ep / llep)]);
        assert_eq!(cw[0].layer_steps, 2000);
        assert_eq!(w.cdfs(), k.cdfs());
        assert_eq!(w.cdfs()[0].ratios.len(), 2000);
        // a row going back to an earlier layer-step breaks the window
        w.add(&row(3, 0, Policy::Llep, 1.0));
        assert!(w.broken());
        k.add(&row(3, 0, Policy::Llep, 1.0));
        assert!(!k.broken());
    }

    #[test]
    fn layer_steps_count_each_once() {
        let mut s = LayerSteps::default();
        for step in [0u32, 63, 64, 1_000_000, u32::MAX] {
            for layer in [0u32, 1, 60, u32::MAX] {
                assert!(s.insert((step, layer)));
                assert!(!s.insert((step, layer)));
            }
        }
        assert_eq!(s.len(), 20);
        // 64 consecutive steps of one layer share a word
        let mut d = LayerSteps::default();
        (0..64).for_each(|st| {
            d.insert((st, 5));
        });
        assert_eq!((d.len(), d.words.len()), (64, 1));
    }
}
