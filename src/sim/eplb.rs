//! EPLB in the simulator: the policies `eplb` and `eplb+llep`.
//!
//! Per layer-step: an EPLB placement ([`crate::plan::eplb::rebalance`])
//! computed only from loads the engine could have seen (a moving window of
//! earlier steps, rebalanced every `period` steps) or, as a labelled upper
//! bound, from the same step's loads (`oracle`); each logical expert's
//! per-rank token-copies are split among its replicas as an engine does
//! ([`ReplicaSplit`]); the physical experts are then priced with the
//! ordinary cost model, their count being physical (every GPU holds
//! `physical / gpus` experts' weights, replicas included). `eplb` is plain
//! EP over the physical experts; `eplb+llep` runs the reference LLEP
//! planner over them, so that the imbalance EPLB leaves is spilled.
//!
//! Rules, stated once (and in `reports/eplb/simulate.md`):
//! - warm-up: at step 0 nothing has been seen, so the placement is EPLB's on
//!   equal loads; at a rebalance step `r < window` it is the mean of the
//!   `r` steps seen so far;
//! - window means are float32: loads summed in step order in f32, divided
//!   by the number of steps in f32;
//! - rebalance `k` happens at step `k * period` and uses steps
//!   `[k*period - window, k*period)`; its weight moves (a physical slot
//!   whose GPU did not hold that logical expert before) are charged on the
//!   step where it happens, each layer's moves on that layer's row, as p2p
//!   weight transfers priced by the cost model (time, overlapped with the
//!   dispatch as LLEP's transfers are, and received-weight memory); they
//!   show in the `transfers` column; the initial placement and the oracle
//!   are never charged.

use super::{price, Cost, CostScratch, Profile, Shape};
use crate::plan::eplb::{self, EplbError, EplbParams, EplbPlacement};
use crate::plan::{
    dispatch_matrix, DispatchMatrix, Gate, Plan, PlanParams, Planner, Policy, Transfer,
};
use crate::trace::Loads;
use std::collections::VecDeque;

pub use crate::plan::replica_split::{split_counts, ReplicaSplit, UnknownSplit};

/// EPLB settings of a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct EplbSim {
    /// Redundant physical experts per layer.
    pub redundant: usize,
    /// Steps averaged for a placement (at least 1).
    pub window: usize,
    /// Steps between rebalances (at least 1).
    pub period: usize,
    /// Placement from the same step's loads: an upper bound.
    pub oracle: bool,
    pub split: ReplicaSplit,
    pub nodes: usize,
    pub groups: usize,
}

/// Bad EPLB settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EplbSimError {
    /// The EPLB shape check, prefixed by the flag at fault.
    #[error("{flag}: {cause}")]
    Shape { flag: String, cause: EplbError },
    #[error("--eplb-window must be at least 1 step")]
    NoWindow,
    #[error("--eplb-period must be at least 1 step")]
    NoPeriod,
    #[error("policy {0} needs EPLB settings (give --redundant)")]
    Unset(Policy),
    #[error("--pass train: eplb and eplb+llep price the forward only (the replicas' weight gradients are not modelled); use --pass forward")]
    Train,
}

impl EplbSim {
    pub fn params(&self, gpus: usize) -> EplbParams {
        EplbParams {
            nodes: self.nodes,
            groups: self.groups,
            ..EplbParams::new(gpus, self.redundant)
        }
    }

    /// Check the settings against the model's shape before simulating.
    pub fn check(&self, experts: usize, gpus: usize) -> Result<(), EplbSimError> {
        if self.window == 0 {
            return Err(EplbSimError::NoWindow);
        }
        if self.period == 0 {
            return Err(EplbSimError::NoPeriod);
        }
        eplb::check(&vec![0.0; experts], &self.params(gpus)).map_err(|cause| {
            let flag = match cause {
                EplbError::GroupsNotDividingExperts { .. } | EplbError::NoGroups => {
                    format!("--eplb-groups {}", self.groups)
                }
                EplbError::NodesNotDividingGpus { .. } | EplbError::NoNodes => {
                    format!("--eplb-nodes {}", self.nodes)
                }
                _ => format!("--redundant {}", self.redundant),
            };
            EplbSimError::Shape { flag, cause }
        })
    }

    /// The setting in words, for `input_note` and the CLI.
    pub fn label(&self) -> String {
        let place = if self.oracle {
            "oracle placement from the same step's loads (an upper bound, not reachable online)"
                .to_string()
        } else {
            format!(
                "placement from the mean of the previous {} steps, rebalanced every {} steps",
                self.window, self.period
            )
        };
        let topo = if self.nodes > 1 || self.groups > 1 {
            format!(", {} nodes, {} groups", self.nodes, self.groups)
        } else {
            String::new()
        };
        format!(
            "eplb R={}{topo}: {place}; replica split {}",
            self.redundant, self.split
        )
    }

    /// The setting a row's `input_note` ends with ([`EplbSim::label`]), so
    /// that `compare` can rebuild an EPLB row's twin; `None` when the note
    /// holds no label this build writes. An oracle label does not record
    /// window and period (the oracle uses neither): they come back as 1.
    pub fn from_note(note: &str) -> Option<EplbSim> {
        let at = note.rfind("eplb R=")?;
        let text = &note[at..];
        let (head, rest) = text["eplb R=".len()..].split_once(": ")?;
        let mut parts = head.split(", ");
        let redundant = parts.next()?.parse().ok()?;
        let (mut nodes, mut groups) = (1, 1);
        for part in parts {
            if let Some(x) = part.strip_suffix(" nodes") {
                nodes = x.parse().ok()?;
            } else {
                groups = part.strip_suffix(" groups")?.parse().ok()?;
            }
        }
        let (place, split) = rest.rsplit_once("; replica split ")?;
        let oracle = place.starts_with("oracle ");
        let (window, period) = if oracle {
            (1, 1)
        } else {
            let (w, p) = place
                .strip_prefix("placement from the mean of the previous ")?
                .strip_suffix(" steps")?
                .split_once(" steps, rebalanced every ")?;
            (w.parse().ok()?, p.parse().ok()?)
        };
        let e = EplbSim {
            redundant,
            window,
            period,
            oracle,
            split: split.parse().ok()?,
            nodes,
            groups,
        };
        (e.label() == text).then_some(e)
    }

    /// The step whose rebalance is in force at step `s`.
    pub fn rebalance_step(&self, s: usize) -> usize {
        s / self.period * self.period
    }

    /// The placement in force at step `s` of layer `l`.
    pub fn placement<G: GlobalLoads + ?Sized>(
        &self,
        loads: &G,
        s: usize,
        l: usize,
        gpus: usize,
    ) -> EplbPlacement {
        let w = if self.oracle {
            let mut g = Vec::new();
            loads.global_into(s, l, &mut g);
            g.iter().map(|&c| c as f32 as f64).collect()
        } else {
            window_mean(loads, self.rebalance_step(s), l, self.window)
        };
        eplb::rebalance(&w, &self.params(gpus)).expect("EPLB settings checked before simulation")
    }

    /// The weight moves charged at step `s` (empty unless a rebalance
    /// happens there): `new` against the placement it replaces.
    pub fn moves_at<G: GlobalLoads + ?Sized>(
        &self,
        loads: &G,
        s: usize,
        l: usize,
        gpus: usize,
        new: &EplbPlacement,
    ) -> Vec<Transfer> {
        if self.oracle || s == 0 || s % self.period != 0 {
            return Vec::new();
        }
        let old = self.placement(loads, s - self.period, l, gpus);
        moves(&old, new, gpus)
    }
}

/// Global counts per expert of a (step, layer), the step counted from the
/// input's start: the whole loads in memory, or the recent steps a
/// streamed simulation keeps ([`History`]).
pub trait GlobalLoads {
    fn experts(&self) -> usize;
    fn global_into(&self, s: usize, l: usize, out: &mut Vec<u64>);
}

impl GlobalLoads for Loads {
    fn experts(&self) -> usize {
        self.experts
    }
    fn global_into(&self, s: usize, l: usize, out: &mut Vec<u64>) {
        Loads::global_into(self, s, l, out)
    }
}

/// The global counts of the last few steps of every layer: all EPLB's
/// rules look at (the window before a rebalance, or the same step for the
/// oracle), so a streamed input need not be kept whole.
#[derive(Debug)]
pub struct History {
    /// Step (from the input's start) of `steps[0]`.
    first: usize,
    /// Per step, `[layers][experts]` global counts.
    steps: VecDeque<Vec<u64>>,
    keep: usize,
    layers: usize,
    experts: usize,
}

impl History {
    /// Keeping the last `keep` steps (at least one).
    pub fn new(keep: usize, layers: usize, experts: usize) -> Self {
        Self {
            first: 0,
            steps: VecDeque::new(),
            keep: keep.max(1),
            layers,
            experts,
        }
    }

    /// Add step `s` (the step after the last one added, or any step when
    /// empty): the global counts of step `local` of `loads`, every layer.
    pub fn push(&mut self, s: usize, loads: &Loads, local: usize) {
        if self.steps.is_empty() {
            self.first = s;
        }
        assert_eq!(s, self.first + self.steps.len(), "steps come in order");
        let mut v = if self.steps.len() == self.keep {
            self.first += 1;
            self.steps.pop_front().expect("full")
        } else {
            Vec::new()
        };
        v.clear();
        v.resize(self.layers * self.experts, 0);
        let mut g = Vec::new();
        for (l, out) in v.chunks_exact_mut(self.experts).enumerate() {
            loads.global_into(local, l, &mut g);
            out.copy_from_slice(&g);
        }
        self.steps.push_back(v);
    }
}

impl GlobalLoads for History {
    fn experts(&self) -> usize {
        self.experts
    }
    fn global_into(&self, s: usize, l: usize, out: &mut Vec<u64>) {
        let i = s
            .checked_sub(self.first)
            .filter(|&i| i < self.steps.len())
            .unwrap_or_else(|| {
                panic!(
                    "EPLB history holds steps {}..{}, step {s} asked",
                    self.first,
                    self.first + self.steps.len()
                )
            });
        out.clear();
        out.extend_from_slice(&self.steps[i][l * self.experts..(l + 1) * self.experts]);
    }
}

/// The placement in force per layer, kept between the layer-steps a
/// simulation thread visits in step order, so that a placement is computed
/// once per rebalance (not once per layer-step, nor per lambda).
#[derive(Debug, Default)]
pub struct PlacementCache {
    by_layer: Vec<Option<(usize, EplbPlacement)>>,
}

impl PlacementCache {
    /// The placement at step `s` of layer `l`, and the moves charged there
    /// (as [`EplbSim::placement`] and [`EplbSim::moves_at`]).
    pub fn step<G: GlobalLoads + ?Sized>(
        &mut self,
        e: &EplbSim,
        loads: &G,
        s: usize,
        l: usize,
        gpus: usize,
    ) -> (&EplbPlacement, Vec<Transfer>) {
        if self.by_layer.len() <= l {
            self.by_layer.resize(l + 1, None);
        }
        let key = if e.oracle { s } else { e.rebalance_step(s) };
        let slot = &mut self.by_layer[l];
        let mut charged = Vec::new();
        if slot.as_ref().map(|(k, _)| *k) != Some(key) {
            let new = e.placement(loads, s, l, gpus);
            if !e.oracle && s > 0 && s % e.period == 0 {
                charged = match slot.as_ref() {
                    Some((k, old)) if k + e.period == key => moves(old, &new, gpus),
                    _ => moves(&e.placement(loads, s - e.period, l, gpus), &new, gpus),
                };
            }
            *slot = Some((key, new));
        }
        let pl = &slot.as_ref().expect("filled above").1;
        (pl, charged)
    }
}

/// Float32 mean of the global loads of steps `[r - window, r)` (fewer at
/// the start); equal loads at step 0, where nothing has been seen.
pub fn window_mean<G: GlobalLoads + ?Sized>(
    loads: &G,
    r: usize,
    l: usize,
    window: usize,
) -> Vec<f64> {
    let experts = loads.experts();
    if r == 0 {
        return vec![1.0; experts];
    }
    let lo = r.saturating_sub(window);
    let mut sum = vec![0f32; experts];
    let mut g = Vec::new();
    for s in lo..r {
        loads.global_into(s, l, &mut g);
        for (a, &c) in sum.iter_mut().zip(&g) {
            *a += c as f32;
        }
    }
    let n = (r - lo) as f32;
    sum.iter().map(|&x| (x / n) as f64).collect()
}

/// Slots of `new` whose GPU did not hold their logical expert in `old`:
/// each one expert's weights over p2p, from a GPU that held it.
pub fn moves(old: &EplbPlacement, new: &EplbPlacement, gpus: usize) -> Vec<Transfer> {
    let per = new.phy2log.len() / gpus;
    let held =
        |p: &EplbPlacement, e: usize, g: usize| p.phy2log[g * per..(g + 1) * per].contains(&e);
    let mut out = Vec::new();
    for (slot, &e) in new.phy2log.iter().enumerate() {
        let g = slot / per;
        if held(old, e, g) {
            continue;
        }
        let src = old
            .phy2log
            .iter()
            .position(|&x| x == e)
            .map_or(g, |s| s / per);
        out.push(Transfer {
            expert: slot as u32,
            src: src as u32,
            dst: g as u32,
            start: 0,
            end: 0,
        });
    }
    out
}

/// Plans and prices EPLB layer-steps, reusing its buffers.
#[derive(Debug, Default)]
pub struct EplbEvaluator {
    planner: Planner,
    plan: Plan,
    dm: DispatchMatrix,
    scratch: CostScratch,
    phys: Vec<u64>,
    global: Vec<u64>,
}

impl EplbEvaluator {
    /// As [`super::Evaluator::set_recorded_links`].
    pub fn set_recorded_links(&mut self, links: Option<(Vec<u64>, Vec<u64>)>) {
        self.scratch.recorded_links = links;
    }

    /// Split the counts among the placement's replicas (once per layer-step).
    pub fn load(&mut self, per_rank: &[u64], gpus: usize, pl: &EplbPlacement, split: ReplicaSplit) {
        split_counts(per_rank, gpus, pl, split, &mut self.phys);
        let np = pl.phy2log.len();
        self.global.clear();
        self.global.resize(np, 0);
        for row in self.phys.chunks_exact(np) {
            for (g, &c) in self.global.iter_mut().zip(row) {
                *g += c;
            }
        }
    }

    /// Global counts per physical expert of the loaded layer-step.
    pub fn physical_counts(&self) -> &[u64] {
        &self.global
    }

    /// Plan (EP or LLEP over the physical experts), add the moves, price.
    pub fn eval(
        &mut self,
        params: &PlanParams,
        llep: bool,
        moves: &[Transfer],
        shape: &Shape,
        prof: &Profile,
    ) -> (&Plan, Cost) {
        let params = PlanParams {
            gate: Gate::Always,
            ..*params
        };
        let policy = if llep { Policy::Llep } else { Policy::Ep };
        self.planner
            .plan_into(&self.global, &params, policy, &mut self.plan)
            .expect("physical experts are a multiple of the GPUs");
        self.plan.transfers.extend_from_slice(moves);
        dispatch_matrix(&self.plan, &self.phys, &mut self.dm);
        let cost = price(
            &self.plan,
            &self.dm,
            &self.global,
            shape,
            prof,
            &mut self.scratch,
        );
        (&self.plan, cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tokens::SplitMix64;

    fn loads(steps: usize, gpus: usize, experts: usize, seed: u64) -> Loads {
        let mut l = Loads::zeros((0..steps as u32).collect(), vec![0], gpus, experts);
        let mut rng = SplitMix64::new(seed);
        for s in 0..steps {
            for c in l.block_mut(s, 0) {
                *c = rng.below(200) * rng.below(3);
            }
        }
        l
    }

    fn sim(window: usize, period: usize, oracle: bool) -> EplbSim {
        EplbSim {
            redundant: 8,
            window,
            period,
            oracle,
            split: ReplicaSplit::Sglang,
            nodes: 1,
            groups: 1,
        }
    }

    #[test]
    fn every_split_conserves_each_ranks_counts_per_logical_expert() {
        let (gpus, experts) = (4, 16);
        let l = loads(6, gpus, experts, 3);
        let pl = sim(2, 1, false).placement(&l, 3, 0, gpus);
        let np = pl.phy2log.len();
        for split in [ReplicaSplit::Even, ReplicaSplit::Sglang, ReplicaSplit::Vllm] {
            let mut out = Vec::new();
            let per_rank = l.block(5, 0);
            split_counts(per_rank, gpus, &pl, split, &mut out);
            for r in 0..gpus {
                for e in 0..experts {
                    let got: u64 = (0..np)
                        .filter(|&s| pl.phy2log[s] == e)
                        .map(|s| out[r * np + s])
                        .sum();
                    if split != ReplicaSplit::Even {
                        assert_eq!(got, per_rank[r * experts + e], "{split} r{r} e{e}");
                    }
                }
            }
            for e in 0..experts {
                let want: u64 = (0..gpus).map(|r| per_rank[r * experts + e]).sum();
                let got: u64 = (0..gpus)
                    .flat_map(|r| (0..np).map(move |s| (r, s)))
                    .filter(|&(_, s)| pl.phy2log[s] == e)
                    .map(|(r, s)| out[r * np + s])
                    .sum();
                assert_eq!(got, want, "{split} e{e}");
            }
        }
    }

    #[test]
    fn even_split_differs_by_at_most_one_between_replicas() {
        let (gpus, experts) = (4, 8);
        let l = loads(3, gpus, experts, 9);
        let pl = sim(1, 1, true).placement(&l, 2, 0, gpus);
        let mut out = Vec::new();
        split_counts(l.block(2, 0), gpus, &pl, ReplicaSplit::Even, &mut out);
        let np = pl.phy2log.len();
        for e in 0..experts {
            let per: Vec<u64> = (0..np)
                .filter(|&s| pl.phy2log[s] == e)
                .map(|s| (0..gpus).map(|r| out[r * np + s]).sum())
                .collect();
            let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
            assert!(hi - lo <= 1, "expert {e}: {per:?}");
        }
    }

    #[test]
    fn sglang_split_keeps_copies_on_the_local_replica() {
        let (gpus, experts) = (4, 8);
        let l = loads(2, gpus, experts, 5);
        let pl = sim(1, 1, true).placement(&l, 1, 0, gpus);
        let np = pl.phy2log.len();
        let per = np / gpus;
        let mut out = Vec::new();
        split_counts(l.block(1, 0), gpus, &pl, ReplicaSplit::Sglang, &mut out);
        for r in 0..gpus {
            for s in 0..np {
                let e = pl.phy2log[s];
                let local = (r * per..(r + 1) * per).find(|&x| pl.phy2log[x] == e);
                if let Some(x) = local {
                    let want = if x == s {
                        l.block(1, 0)[r * experts + e]
                    } else {
                        0
                    };
                    assert_eq!(out[r * np + s], want);
                }
            }
        }
    }

    #[test]
    fn oracle_placement_is_rebalance_of_the_same_step() {
        let gpus = 4;
        let l = loads(5, gpus, 16, 11);
        let cfg = sim(3, 2, true);
        for s in 0..5 {
            let g: Vec<f64> = l.global(s, 0).iter().map(|&c| c as f64).collect();
            let want = eplb::rebalance(&g, &cfg.params(gpus)).unwrap();
            assert_eq!(cfg.placement(&l, s, 0, gpus), want, "step {s}");
            assert!(cfg.moves_at(&l, s, 0, gpus, &want).is_empty());
        }
    }

    #[test]
    fn warm_up_uses_equal_loads_then_the_steps_seen_so_far() {
        let gpus = 4;
        let l = loads(6, gpus, 16, 13);
        let cfg = sim(4, 1, false);
        let equal = eplb::rebalance(&[1.0; 16], &cfg.params(gpus)).unwrap();
        assert_eq!(cfg.placement(&l, 0, 0, gpus), equal);
        // step 2: the mean of steps 0 and 1, no look-ahead
        let (a, b) = (l.global(0, 0), l.global(1, 0));
        let mean: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| ((x as f32 + y as f32) / 2.0) as f64)
            .collect();
        let want = eplb::rebalance(&mean, &cfg.params(gpus)).unwrap();
        assert_eq!(cfg.placement(&l, 2, 0, gpus), want);
        // step 5 with window 4: steps 1..5
        assert_eq!(window_mean(&l, 5, 0, 4).len(), 16);
        let m = window_mean(&l, 5, 0, 4);
        let want0 = (1..5).map(|s| l.global(s, 0)[0] as f32).sum::<f32>() / 4.0;
        assert_eq!(m[0], want0 as f64);
    }

    #[test]
    fn moves_are_charged_only_on_rebalance_steps() {
        let gpus = 4;
        let l = loads(9, gpus, 16, 17);
        let cfg = sim(2, 3, false);
        let mut charged = 0;
        for s in 0..9 {
            let pl = cfg.placement(&l, s, 0, gpus);
            let m = cfg.moves_at(&l, s, 0, gpus, &pl);
            if s % 3 != 0 || s == 0 {
                assert!(m.is_empty(), "step {s} charged");
            } else {
                let old = cfg.placement(&l, s - 3, 0, gpus);
                assert_eq!(m, moves(&old, &pl, gpus));
                charged += m.len();
            }
            // the placement holds within a period
            assert_eq!(pl, cfg.placement(&l, cfg.rebalance_step(s), 0, gpus));
        }
        assert!(charged > 0, "random loads never moved an expert");
        // a move targets a GPU that did not hold the expert before
        let (old, new) = (cfg.placement(&l, 0, 0, gpus), cfg.placement(&l, 3, 0, gpus));
        let per = new.phy2log.len() / gpus;
        for t in moves(&old, &new, gpus) {
            let e = new.phy2log[t.expert as usize];
            assert_eq!(t.dst as usize, t.expert as usize / per);
            assert!(!old.phy2log[t.dst as usize * per..(t.dst as usize + 1) * per].contains(&e));
            assert!(old.phy2log[t.src as usize * per..(t.src as usize + 1) * per].contains(&e));
        }
    }

    #[test]
    fn the_cache_gives_what_the_rules_give() {
        let gpus = 4;
        let l = loads(11, gpus, 16, 19);
        for cfg in [sim(2, 3, false), sim(1, 1, false), sim(4, 2, true)] {
            // a thread may start anywhere, mid-period included
            for start in [0, 1, 4] {
                let mut cache = PlacementCache::default();
                for s in start..11 {
                    let want = cfg.placement(&l, s, 0, gpus);
                    let want_moves = cfg.moves_at(&l, s, 0, gpus, &want);
                    let (got, got_moves) = cache.step(&cfg, &l, s, 0, gpus);
                    assert_eq!(*got, want, "{cfg:?} step {s}");
                    assert_eq!(got_moves, want_moves, "{cfg:?} step {s}");
                }
            }
        }
    }

    #[test]
    fn labels_read_back_from_a_row_note() {
        for e in [
            sim(2, 3, false),
            sim(1, 1, true),
            EplbSim {
                nodes: 2,
                groups: 4,
                split: ReplicaSplit::Vllm,
                ..sim(8, 8, false)
            },
        ] {
            let note = format!("counts rescaled (seed 3); {}", e.label());
            let back = EplbSim::from_note(&note).unwrap();
            assert_eq!(back.label(), e.label());
            if !e.oracle {
                assert_eq!(back, e);
            }
        }
        assert_eq!(EplbSim::from_note("counts as recorded"), None);
        assert_eq!(EplbSim::from_note("eplb R=x: placement"), None);
    }

    #[test]
    fn bad_redundancy_fails_with_one_line() {
        let cfg = EplbSim {
            redundant: 5,
            ..sim(1, 1, false)
        };
        let e = cfg.check(64, 8).unwrap_err().to_string();
        assert!(
            e.starts_with("--redundant 5: 64 experts + 5 redundant"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let cfg = EplbSim {
            groups: 3,
            redundant: 8,
            ..sim(1, 1, false)
        };
        let e = cfg.check(64, 8).unwrap_err().to_string();
        assert!(e.starts_with("--eplb-groups 3: "), "{e}");
        let cfg = EplbSim {
            nodes: 3,
            redundant: 8,
            ..sim(1, 1, false)
        };
        let e = cfg.check(64, 8).unwrap_err().to_string();
        assert!(e.starts_with("--eplb-nodes 3: "), "{e}");
    }
}
