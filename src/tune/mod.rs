//! Ratio tuning: given simulated rows over a lambda grid (and optionally
//! alpha and m), pick the setting that minimises total time (or peak
//! memory, or time under a memory cap), with every other setting's regret.

use crate::plan::{Gate, Policy};
use crate::results::ResultRow;
use std::collections::{BTreeMap, HashMap};

/// A candidate setting. `lambda`: `Some(x)` a threshold; `None` with
/// `always` = plan every layer; `never` = plain EP.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub never: bool,
    pub lambda: Option<f64>,
    pub alpha: f64,
    pub min_gemm: u64,
}

impl Setting {
    /// The setting's gate (EP rows stand for "never").
    pub fn gate(&self) -> Gate {
        match (self.never, self.lambda) {
            (true, _) => Gate::Never,
            (false, Some(l)) => Gate::Ratio(l),
            (false, None) => Gate::Always,
        }
    }

    pub fn label(&self) -> String {
        match self.gate() {
            Gate::Never => "never (EP)".into(),
            g => g.to_string(),
        }
    }

    /// The value to export: a threshold, 0 for always (<= 0 means always
    /// in the reference), and a threshold no layer reaches for never.
    pub fn env_value(&self) -> String {
        self.gate().env_value()
    }
}

pub use crate::plan::fmt_lambda;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// Minimise total simulated time.
    Time,
    /// Minimise the largest per-GPU peak memory (then time).
    Memory,
}

/// A setting scored over the whole input.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub setting: Setting,
    pub total_ms: f64,
    pub peak_mem_max_bytes: u64,
    pub llep_on: usize,
    pub layer_steps: usize,
    /// How much slower than the best feasible setting, in percent.
    pub regret_pct: f64,
    pub feasible: bool,
}

/// Best lambda of one layer alone, when layers disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAdvice {
    pub layer: u32,
    pub best: Setting,
    pub best_ms: f64,
    /// Regret of the global recommendation on this layer, percent.
    pub chosen_regret_pct: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TuneResult {
    pub scored: Vec<Scored>,
    pub best: usize,
    /// Indices of settings tied with the best (same total within 1e-9).
    pub tied: Vec<usize>,
    pub ep_ms: f64,
    /// Total with the reference default lambda (`env::DEFAULT_RATIO`) at the best alpha/m (the paper's setting).
    pub default_ms: Option<f64>,
    pub layers: Vec<LayerAdvice>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TuneError {
    #[error("no simulated rows to tune over")]
    Empty,
    #[error(
        "no setting keeps every GPU under the memory cap of {0:.2} GiB (smallest peak: {1:.2} GiB)"
    )]
    NothingFits(f64, f64),
}

type Key = (bool, Option<u64>, u64, u64);

fn key(r: &ResultRow) -> Key {
    (
        r.policy == Policy::Ep,
        if r.policy == Policy::Ep {
            None
        } else {
            r.lambda().map(f64::to_bits)
        },
        r.alpha.to_bits(),
        r.min_gemm,
    )
}

/// Per setting, its totals so far, in first-seen order.
#[derive(Debug, Clone, Default)]
struct Totals {
    order: Vec<Key>,
    acc: HashMap<Key, Scored>,
}

impl Totals {
    fn add(&mut self, r: &ResultRow) {
        let k = key(r);
        let order = &mut self.order;
        let e = self.acc.entry(k).or_insert_with(|| {
            order.push(k);
            Scored {
                setting: Setting {
                    never: r.policy == Policy::Ep,
                    lambda: if r.policy == Policy::Ep {
                        None
                    } else {
                        r.lambda()
                    },
                    alpha: r.alpha,
                    min_gemm: r.min_gemm,
                },
                total_ms: 0.0,
                peak_mem_max_bytes: 0,
                llep_on: 0,
                layer_steps: 0,
                regret_pct: 0.0,
                feasible: true,
            }
        });
        e.total_ms += r.t_total_ms;
        e.peak_mem_max_bytes = e.peak_mem_max_bytes.max(r.peak_mem_max_bytes);
        e.llep_on += r.use_llep as usize;
        e.layer_steps += 1;
    }

    /// The settings whose key passes `keep`, in first-seen order; EP does
    /// not depend on alpha and m, so only the first "never" is kept.
    fn settings(&self, keep: impl Fn(&Key) -> bool) -> Vec<Scored> {
        let mut scored: Vec<Scored> = Vec::new();
        for k in self.order.iter().filter(|k| keep(k)) {
            let s = &self.acc[k];
            if s.setting.never && scored.iter().any(|x| x.setting.never) {
                continue;
            }
            scored.push(s.clone());
        }
        scored
    }
}

/// What [`tune`] needs of the rows, kept as running totals (per setting,
/// and per layer and setting), so that a trace of any length is tuned in
/// memory bounded by its layers times the settings. Feed every row in row
/// order with [`TuneAcc::add`]; [`TuneAcc::finish`] gives what [`tune`]
/// gives on the same rows.
#[derive(Debug, Clone, Default)]
pub struct TuneAcc {
    all: Totals,
    /// Per layer id: its totals, and the sum of all its EP rows (what the
    /// per-layer advice charges "never" with).
    layers: BTreeMap<u32, (Totals, f64)>,
    rows: usize,
}

impl TuneAcc {
    pub fn add(&mut self, r: &ResultRow) {
        self.rows += 1;
        let layer = self.layers.entry(r.layer).or_default();
        if r.policy == Policy::Ep || r.policy == Policy::Llep {
            self.all.add(r);
            layer.0.add(r);
            if r.policy == Policy::Ep {
                layer.1 += r.t_total_ms;
            }
        }
    }

    pub fn finish(
        &self,
        objective: Objective,
        mem_cap: Option<u64>,
    ) -> Result<TuneResult, TuneError> {
        if self.rows == 0 {
            return Err(TuneError::Empty);
        }
        let mut t = score(self.all.settings(|_| true), objective, mem_cap)?;
        t.layers = self.per_layer(&t.scored[t.best].setting);
        Ok(t)
    }

    /// Per layer id, at the chosen alpha and m: the best lambda on that
    /// layer alone. Only layers where the global choice costs time are
    /// returned.
    fn per_layer(&self, chosen: &Setting) -> Vec<LayerAdvice> {
        if self.layers.len() < 2 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (&l, (totals, ep_all)) in &self.layers {
            let here = |k: &Key| k.0 || (k.2 == chosen.alpha.to_bits() && k.3 == chosen.min_gemm);
            let Ok(t) = score(totals.settings(here), Objective::Time, None) else {
                continue;
            };
            let chosen_ms = if chosen.never {
                *ep_all
            } else {
                let k = (
                    false,
                    chosen.lambda.map(f64::to_bits),
                    chosen.alpha.to_bits(),
                    chosen.min_gemm,
                );
                totals.acc.get(&k).map_or(0.0, |s| s.total_ms)
            };
            let b = &t.scored[t.best];
            out.push(LayerAdvice {
                layer: l,
                best: b.setting.clone(),
                best_ms: b.total_ms,
                chosen_regret_pct: (chosen_ms / b.total_ms - 1.0) * 100.0,
            });
        }
        out.retain(|a| a.chosen_regret_pct > 1e-9);
        out
    }
}

/// Score every setting present in `rows` (ep rows stand for "never").
pub fn tune(
    rows: &[ResultRow],
    objective: Objective,
    mem_cap: Option<u64>,
) -> Result<TuneResult, TuneError> {
    let mut acc = TuneAcc::default();
    for r in rows {
        acc.add(r);
    }
    acc.finish(objective, mem_cap)
}

/// The recommendation and every setting's regret (no per-layer advice).
fn score(
    mut scored: Vec<Scored>,
    objective: Objective,
    mem_cap: Option<u64>,
) -> Result<TuneResult, TuneError> {
    if scored.is_empty() {
        return Err(TuneError::Empty);
    }
    if let Some(cap) = mem_cap {
        for s in &mut scored {
            s.feasible = s.peak_mem_max_bytes <= cap;
        }
        if !scored.iter().any(|s| s.feasible) {
            let min = scored.iter().map(|s| s.peak_mem_max_bytes).min().unwrap();
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(TuneError::NothingFits(gib(cap), gib(min)));
        }
    }
    let (best, tied) = recommend(&scored, objective);
    let best_ms = scored[best].total_ms;
    for s in &mut scored {
        s.regret_pct = (s.total_ms / best_ms - 1.0) * 100.0;
    }
    let ep_ms = scored
        .iter()
        .find(|s| s.setting.never)
        .map_or(f64::NAN, |s| s.total_ms);
    let default_ms = scored
        .iter()
        .find(|s| {
            s.setting.lambda == Some(crate::env::DEFAULT_RATIO)
                && s.setting.alpha == scored[best].setting.alpha
                && s.setting.min_gemm == scored[best].setting.min_gemm
        })
        .map(|s| s.total_ms);
    Ok(TuneResult {
        scored,
        best,
        tied,
        ep_ms,
        default_ms,
        layers: Vec::new(),
    })
}

/// Two totals closer than this (relative) are the same time: summing the
/// same layer times in another order must not change the recommendation.
pub const TIE_REL: f64 = 1e-9;

/// The recommendation rule, the one `tune` prints and `report` marks (the
/// report calls [`tune`], which calls this): among the feasible settings,
/// the best by `objective` (first in `scored` order on exact equality);
/// then, among the lambdas tied with it (within [`TIE_REL`]) at its alpha
/// and m, the middle one (upper middle for an even count), the threshold
/// with the most margin either way. Returns the index of the
/// recommendation and of every setting tied with the best. `scored` must
/// hold at least one feasible setting.
pub fn recommend(scored: &[Scored], objective: Objective) -> (usize, Vec<usize>) {
    let better = |a: &Scored, b: &Scored| -> bool {
        match objective {
            Objective::Time => a.total_ms < b.total_ms,
            Objective::Memory => {
                (a.peak_mem_max_bytes, a.total_ms) < (b.peak_mem_max_bytes, b.total_ms)
            }
        }
    };
    let mut best = scored
        .iter()
        .position(|s| s.feasible)
        .expect("recommend needs a feasible setting");
    for (i, s) in scored.iter().enumerate() {
        if s.feasible && better(s, &scored[best]) {
            best = i;
        }
    }
    let same_time = |a: &Scored, b: &Scored| {
        (a.total_ms - b.total_ms).abs() <= TIE_REL * b.total_ms.abs().max(1e-12)
    };
    let same = |a: &Scored, b: &Scored| match objective {
        Objective::Time => same_time(a, b),
        Objective::Memory => a.peak_mem_max_bytes == b.peak_mem_max_bytes && same_time(a, b),
    };
    let tied: Vec<usize> = (0..scored.len())
        .filter(|&i| scored[i].feasible && same(&scored[i], &scored[best]))
        .collect();
    let mut lambdas: Vec<usize> = tied
        .iter()
        .copied()
        .filter(|&i| {
            scored[i].setting.lambda.is_some()
                && !scored[i].setting.never
                && scored[i].setting.alpha == scored[best].setting.alpha
                && scored[i].setting.min_gemm == scored[best].setting.min_gemm
        })
        .collect();
    if lambdas.len() > 1 {
        lambdas.sort_by(|&a, &b| {
            scored[a]
                .setting
                .lambda
                .partial_cmp(&scored[b].setting.lambda)
                .unwrap()
        });
        best = lambdas[lambdas.len() / 2];
    }
    (best, tied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(policy: &str, lambda: Option<f64>, layer: u32, ms: f64, on: bool) -> ResultRow {
        ResultRow {
            policy: policy.parse().unwrap(),
            gate: match (policy, lambda) {
                ("ep", _) => crate::plan::Gate::Never,
                (_, Some(l)) => crate::plan::Gate::Ratio(l),
                (_, None) => crate::plan::Gate::Always,
            },
            layer,
            alpha: 1.0,
            min_gemm: 1024,
            t_total_ms: ms,
            use_llep: on,
            peak_mem_max_bytes: if on { 5 } else { 9 },
            ..Default::default()
        }
    }

    #[test]
    fn picks_the_middle_of_a_tied_range_and_scores_regret() {
        // layer 0 gains from LLEP up to lambda 1.4; layer 1 only for always
        let mut rows = vec![
            row("ep", None, 0, 10.0, false),
            row("ep", None, 1, 10.0, false),
        ];
        for (l, ms0, ms1) in [
            (Some(1.2), 6.0, 10.0),
            (Some(1.3), 6.0, 10.0),
            (Some(1.4), 6.0, 10.0),
            (Some(1.5), 10.0, 10.0),
            (None, 6.0, 11.0),
        ] {
            rows.push(row("llep", l, 0, ms0, ms0 < 10.0));
            rows.push(row("llep", l, 1, ms1, l.is_none()));
        }
        let t = tune(&rows, Objective::Time, None).unwrap();
        let b = &t.scored[t.best];
        assert_eq!(b.setting.lambda, Some(1.3));
        assert_eq!(t.tied.len(), 3);
        assert_eq!(t.ep_ms, 20.0);
        assert_eq!(t.default_ms, Some(16.0));
        let always = t
            .scored
            .iter()
            .find(|s| s.setting.label() == "always")
            .unwrap();
        assert!((always.regret_pct - 6.25).abs() < 1e-9);
        assert!(
            t.layers.is_empty(),
            "layer 1 is indifferent among the tied lambdas"
        );
        // memory cap that only EP violates
        let m = tune(&rows, Objective::Time, Some(6)).unwrap();
        assert!(!m.scored.iter().find(|s| s.setting.never).unwrap().feasible);
        assert!(matches!(
            tune(&rows, Objective::Time, Some(1)),
            Err(TuneError::NothingFits(..))
        ));
        assert_eq!(
            Setting {
                never: false,
                lambda: None,
                alpha: 1.0,
                min_gemm: 1
            }
            .env_value(),
            "0"
        );
    }
}
