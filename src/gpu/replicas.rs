//! EPLB in the replay: the policies `eplb` and `eplb+llep` run the same
//! layer as `ep` and `llep`, with physical experts (an EPLB placement's
//! slots, replicas included) as the EP unit.
//!
//! - Weights: before an EPLB setting is measured, each GPU's resident
//!   weight buffer is rebuilt to hold its placement slots (`phy2log`), every
//!   replica a full copy of its logical expert's blob (regenerated from the
//!   same seeds, so the same bits), and the down-bias table is indexed by
//!   physical slot. This happens outside the timed runs; the buffer is held
//!   while they run, so the replicas count in peak memory. The logical
//!   weights are put back before a plain setting.
//! - Tokens: every copy's logical expert id is mapped to a replica by the
//!   chosen [`ReplicaSplit`] with [`map_copies`], on the host before the
//!   runs (in an engine it is a per-copy gather or hash, a few microseconds,
//!   not timed here). Its aggregate is `split_counts`, which the simulated
//!   twin prices: the two walk one function.
//! - The rest (count exchange, planning, layout, dispatch, weight transfers
//!   of `eplb+llep`, compute, combine) is the ordinary layer over the
//!   physical ids; the planner plans `eplb` as `ep` and `eplb+llep` as
//!   `llep` (gated by lambda) over them. The dense check recomputes each
//!   copy through its logical expert, so it checks the replicas too.

use super::config::{Case, ReplayConfig};
use super::runtime::BufKind;
use super::worker::{part_seed, Worker};
use super::{Gate, GpuError};
use crate::plan::eplb::EplbPlacement;
use crate::plan::replica_split::{logical_counts, map_copies, ReplicaSplit};
use crate::plan::Policy;
use crate::results::ResultRow;
use crate::workload::RankRouting;

/// Whether `p` runs over an EPLB placement.
pub fn is_eplb(p: Policy) -> bool {
    matches!(p, Policy::Eplb | Policy::EplbLlep)
}

/// `case` with every rank's copies sent to replicas of `pl` by `split`:
/// the same tokens, weights and keys, physical expert ids.
pub fn physical_case(case: &Case, pl: &EplbPlacement, split: ReplicaSplit) -> Case {
    let gpus = case.routing.len();
    let per_rank = logical_counts(
        case.routing.iter().map(|r| r.ids.as_slice()),
        pl.logcnt.len(),
    );
    let routing = case
        .routing
        .iter()
        .enumerate()
        .map(|(r, rt)| {
            let mut ids = Vec::with_capacity(rt.ids.len());
            map_copies(&rt.ids, r, &per_rank, gpus, pl, split, &mut ids);
            RankRouting {
                ids,
                weights: rt.weights.clone(),
            }
        })
        .collect();
    Case {
        base: case.base.clone(),
        routing,
        placements: Vec::new(),
    }
}

/// Check the EPLB part of a replay before touching a GPU.
pub(super) fn validate(cfg: &ReplayConfig, cases: &[Case]) -> Result<(), GpuError> {
    let wants = cfg.settings.iter().any(|(p, _)| is_eplb(*p));
    if wants && cfg.eplb.is_empty() {
        return Err(GpuError::Input(
            "policy eplb / eplb+llep needs at least one EPLB setting (--redundant)".into(),
        ));
    }
    if !wants {
        return Ok(());
    }
    for c in cases {
        if c.placements.len() != cfg.eplb.len() {
            return Err(GpuError::Input(format!(
                "case has {} EPLB placements for {} EPLB settings",
                c.placements.len(),
                cfg.eplb.len()
            )));
        }
        for (pl, e) in c.placements.iter().zip(&cfg.eplb) {
            let np = pl.phy2log.len();
            if pl.logcnt.len() != cfg.experts
                || np != cfg.experts + e.redundant
                || np % cfg.gpus != 0
                || pl.phy2log.iter().any(|&x| x >= cfg.experts)
            {
                return Err(GpuError::Input(format!(
                    "EPLB placement of {np} slots does not fit {} experts + {} redundant on {} GPUs",
                    cfg.experts, e.redundant, cfg.gpus
                )));
            }
        }
    }
    Ok(())
}

impl Worker<'_> {
    /// EP units of the weights held now (physical experts under EPLB).
    pub(super) fn experts(&self) -> usize {
        self.slots.len()
    }

    /// Hold the weights of `slots` (unit -> logical expert): this GPU's
    /// units' blobs in the resident weight buffer, every unit's down bias in
    /// the bias table. A no-op when they are held already.
    pub(super) fn place_weights(&mut self, slots: &[usize]) -> Result<(), GpuError> {
        if self.slots == slots {
            return Ok(());
        }
        self.dev.sync()?;
        // between measurements only the weights, bias table and inputs are
        // held; free the first two so the new size is what peak memory sees
        self.dev.arena.release_except(&[BufKind::X])?;
        let per = slots.len() / self.world;
        let bb = self.blob.len * 2;
        let native = self.dev.arena.get(BufKind::Native, per * bb)?;
        for j in 0..per {
            self.gen_blob(native + (j * bb) as u64, slots[self.rank * per + j])?;
        }
        let d = self.cfg.hidden;
        let bt = self
            .dev
            .arena
            .get(BufKind::BiasTable, slots.len() * d * 2)?;
        for (s, &e) in slots.iter().enumerate() {
            self.gen(
                bt + (s * d * 2) as u64,
                d,
                part_seed(self.cfg.seed, e, 3),
                0.1,
            )?;
        }
        self.dev.sync()?;
        self.slots = slots.to_vec();
        Ok(())
    }

    /// Measure the plain (non-EPLB) settings of a case on the logical
    /// experts, together ([`Worker::measure_all`]); rank 0 gets the rows.
    pub(super) fn measure_plain(
        &mut self,
        case: &Case,
        settings: &[(Policy, Gate)],
    ) -> Result<Vec<Option<ResultRow>>, GpuError> {
        let identity: Vec<usize> = (0..self.cfg.experts).collect();
        self.place_weights(&identity)?;
        self.measure_all(case, settings)
    }

    /// Measure an EPLB policy on a case under EPLB setting `i` (its
    /// replicas placed first); rank 0 gets the row, keyed and labelled as
    /// `simulate` keys it.
    pub(super) fn measure_eplb(
        &mut self,
        case: &Case,
        policy: Policy,
        gate: Gate,
        i: usize,
    ) -> Result<Option<ResultRow>, GpuError> {
        let cfg = self.cfg;
        let pl = &case.placements[i];
        let e = &cfg.eplb[i];
        self.place_weights(&pl.phy2log)?;
        let phys = physical_case(case, pl, e.split);
        let row = self.measure(&phys, policy, gate)?;
        Ok(row.map(|mut r| {
            if policy == Policy::EplbLlep {
                r.gate = gate;
            }
            r.input_note = format!("{}; {}", r.input_note, e.label);
            r
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::eplb::{rebalance, EplbParams};
    use crate::plan::replica_split::split_counts;

    #[test]
    fn the_physical_case_keeps_tokens_and_aggregates_to_the_split() {
        let (gpus, experts, k) = (2usize, 8usize, 2usize);
        let ids: Vec<Vec<i32>> = vec![
            (0..40).map(|t| [0, 0, 1, 3][t % 4]).collect(),
            (0..40).map(|t| [0, 5, 7, 0, 2][t % 5]).collect(),
        ];
        let case = Case {
            base: ResultRow::default(),
            routing: ids
                .iter()
                .map(|v| RankRouting {
                    ids: v.clone(),
                    weights: (0..v.len()).map(|i| i as f32).collect(),
                })
                .collect(),
            placements: Vec::new(),
        };
        let per_rank = logical_counts(ids.iter().map(|v| v.as_slice()), experts);
        let global: Vec<f64> = (0..experts)
            .map(|e| (per_rank[e] + per_rank[experts + e]) as f64)
            .collect();
        let pl = rebalance(&global, &EplbParams::new(gpus, 4)).unwrap();
        for split in [ReplicaSplit::Even, ReplicaSplit::Sglang, ReplicaSplit::Vllm] {
            let pc = physical_case(&case, &pl, split);
            let mut want = Vec::new();
            split_counts(&per_rank, gpus, &pl, split, &mut want);
            let np = pl.phy2log.len();
            let got = logical_counts(pc.routing.iter().map(|r| r.ids.as_slice()), np);
            assert_eq!(got, want, "{split}");
            for (a, b) in pc.routing.iter().zip(&case.routing) {
                assert_eq!(a.weights, b.weights);
                assert_eq!(a.ids.len() % k, 0);
                for (&p, &l) in a.ids.iter().zip(&b.ids) {
                    assert_eq!(pl.phy2log[p as usize], l as usize);
                }
            }
        }
    }
}
