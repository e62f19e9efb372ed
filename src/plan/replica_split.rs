//! How a logical expert's token-copies are split among its EPLB replicas,
//! at two levels that cannot drift apart because both walk one function,
//! [`for_each_run`]:
//! - [`split_counts`]: per-rank logical counts -> per-rank physical counts
//!   (what `simulate` prices);
//! - [`map_copies`]: one rank's logical expert ids, copy by copy -> the
//!   physical expert (replica) each copy goes to (what `replay` runs).
//!
//! A *run* is a range `[lo, hi)` of one rank's copies of one logical expert,
//! counted in the rank's flat `topk_ids` order, all sent to one replica.
//! Summing run lengths gives the counts; walking a rank's copies through its
//! runs gives the per-copy choice, so the aggregate of the per-copy map is
//! [`split_counts`] exactly (tested in `tests/gpu_replay.rs` and below).

use super::eplb::EplbPlacement;
use std::fmt;
use std::str::FromStr;

/// How a logical expert's token-copies are split among its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaSplit {
    /// Each replica an equal share of the expert's global token order
    /// (rank 0's copies first), the remainder one each to the first
    /// replicas: the split EPLB's own load model assumes.
    Even,
    /// SGLang's default `ep_dispatch_algorithm="static"`: each source rank
    /// sends all its copies of an expert to one replica, the one on its own
    /// GPU if any, else one dealt fairly among the ranks without one.
    #[default]
    Sglang,
    /// vLLM: per token-copy, a replica chosen by a multiplicative hash of
    /// the copy's flat index in the rank's `topk_ids` (vllm-project/vllm
    /// #40810; before it, the index modulo the replica count, #24573);
    /// emulated by its expected split: each rank's copies of an expert in
    /// equal contiguous blocks, the remainder one each to the first
    /// replicas (the same counts per replica as a round robin).
    Vllm,
}

impl ReplicaSplit {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaSplit::Even => "even",
            ReplicaSplit::Sglang => "sglang",
            ReplicaSplit::Vllm => "vllm",
        }
    }
}

impl fmt::Display for ReplicaSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A replica-split name this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown replica split '{0}' (expected even, sglang or vllm)")]
pub struct UnknownSplit(pub String);

impl FromStr for ReplicaSplit {
    type Err = UnknownSplit;
    fn from_str(s: &str) -> Result<Self, UnknownSplit> {
        match s.trim().to_ascii_lowercase().as_str() {
            "even" => Ok(ReplicaSplit::Even),
            "sglang" => Ok(ReplicaSplit::Sglang),
            "vllm" => Ok(ReplicaSplit::Vllm),
            o => Err(UnknownSplit(o.into())),
        }
    }
}

/// Every run of the split, as `f(rank, logical, physical, lo, hi)`: rank
/// `rank`'s copies `[lo, hi)` of logical expert `logical` (in its flat
/// order) go to physical slot `physical`. Runs of one (rank, expert) come
/// in increasing `lo` and tile `[0, count)`; empty runs are skipped.
/// `per_rank` is `[gpus][experts]` logical counts.
pub fn for_each_run(
    per_rank: &[u64],
    gpus: usize,
    pl: &EplbPlacement,
    split: ReplicaSplit,
    mut f: impl FnMut(usize, usize, usize, u64, u64),
) {
    let n = pl.logcnt.len();
    let np = pl.phy2log.len();
    let per = np / gpus;
    let mut slots: Vec<usize> = Vec::new();
    let mut emit = |r: usize, e: usize, s: usize, lo: u64, hi: u64| {
        if hi > lo {
            f(r, e, s, lo, hi)
        }
    };
    for e in 0..n {
        slots.clear();
        match split {
            // SGLang's candidate list: physical ids ascending
            ReplicaSplit::Sglang => {
                slots.extend((0..np).filter(|&s| pl.phy2log[s] == e));
            }
            _ => slots.extend(
                pl.log2phy[e]
                    .iter()
                    .filter(|&&s| s >= 0)
                    .map(|&s| s as usize),
            ),
        }
        let k = slots.len() as u64;
        match split {
            ReplicaSplit::Even => {
                let total: u64 = (0..gpus).map(|r| per_rank[r * n + e]).sum();
                let (q, rem) = (total / k, total % k);
                // replica j holds [j*q + min(j, rem), ...) of the global order
                let start = |j: u64| j * q + j.min(rem);
                let mut at = 0u64;
                for r in 0..gpus {
                    let c = per_rank[r * n + e];
                    let (lo, hi) = (at, at + c);
                    at = hi;
                    for (j, &s) in slots.iter().enumerate() {
                        let (a, b) = (start(j as u64), start(j as u64 + 1));
                        let (x, y) = (lo.max(a), hi.min(b));
                        if y > x {
                            emit(r, e, s, x - lo, y - lo);
                        }
                    }
                }
            }
            ReplicaSplit::Vllm => {
                for r in 0..gpus {
                    let c = per_rank[r * n + e];
                    let (q, rem) = (c / k, c % k);
                    let mut lo = 0u64;
                    for (j, &s) in slots.iter().enumerate() {
                        let size = q + u64::from((j as u64) < rem);
                        emit(r, e, s, lo, lo + size);
                        lo += size;
                    }
                }
            }
            ReplicaSplit::Sglang => {
                // ranks with a local replica use the first one; the others
                // are dealt the candidates in turn (SGLang's `_fair_choices`
                // gives each replica the same number of ranks, then shuffles
                // with a seeded RNG; the deal here is that multiset unshuffled)
                let mut dealt = 0usize;
                for r in 0..gpus {
                    let c = per_rank[r * n + e];
                    let target = match slots.iter().find(|&&s| s / per == r) {
                        Some(&s) => s,
                        None => {
                            let s = slots[dealt % slots.len()];
                            dealt += 1;
                            s
                        }
                    };
                    emit(r, e, target, 0, c);
                }
            }
        }
    }
}

/// Split per-rank logical counts (`[gpus][experts]`) into per-rank
/// physical counts (`[gpus][physical]`) by `split`.
pub fn split_counts(
    per_rank: &[u64],
    gpus: usize,
    pl: &EplbPlacement,
    split: ReplicaSplit,
    out: &mut Vec<u64>,
) {
    let np = pl.phy2log.len();
    out.clear();
    out.resize(gpus * np, 0);
    for_each_run(per_rank, gpus, pl, split, |r, _, s, lo, hi| {
        out[r * np + s] += hi - lo;
    });
}

/// Logical counts `[gpus][experts]` of every rank's expert ids.
pub fn logical_counts<'a>(ids: impl IntoIterator<Item = &'a [i32]>, experts: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for rank_ids in ids {
        let at = out.len();
        out.resize(at + experts, 0);
        for &e in rank_ids {
            out[at + e as usize] += 1;
        }
    }
    out
}

/// Map rank `rank`'s logical expert ids (flat `topk_ids`, every id in
/// `0..experts`) to physical ones by `split`, copy by copy, into `out`.
/// `per_rank` is every rank's logical counts ([`logical_counts`]).
pub fn map_copies(
    ids: &[i32],
    rank: usize,
    per_rank: &[u64],
    gpus: usize,
    pl: &EplbPlacement,
    split: ReplicaSplit,
    out: &mut Vec<i32>,
) {
    let n = pl.logcnt.len();
    // this rank's runs per logical expert, in increasing lo
    let mut runs: Vec<Vec<(u64, usize)>> = vec![Vec::new(); n];
    for_each_run(per_rank, gpus, pl, split, |r, e, s, _, hi| {
        if r == rank {
            runs[e].push((hi, s));
        }
    });
    let mut seen = vec![0u64; n];
    let mut cur = vec![0usize; n];
    out.clear();
    out.extend(ids.iter().map(|&e| {
        let e = e as usize;
        let i = seen[e];
        seen[e] += 1;
        while runs[e][cur[e]].0 <= i {
            cur[e] += 1;
        }
        runs[e][cur[e]].1 as i32
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::eplb::{rebalance, EplbParams};
    use crate::trace::tokens::SplitMix64;

    #[test]
    fn the_per_copy_map_aggregates_to_the_counts() {
        let mut rng = SplitMix64::new(21);
        for case in 0..60 {
            let gpus = [1usize, 2, 4][case % 3];
            let experts = 8 * (1 + case % 4);
            let redundant = gpus * (1 + case % 3);
            let loads: Vec<f64> = (0..experts).map(|_| rng.below(500) as f64).collect();
            let pl = rebalance(&loads, &EplbParams::new(gpus, redundant)).unwrap();
            let ids: Vec<Vec<i32>> = (0..gpus)
                .map(|_| {
                    (0..rng.below(400))
                        .map(|_| {
                            let hot = rng.below(3) == 0;
                            (if hot {
                                rng.below(2)
                            } else {
                                rng.below(experts as u64)
                            }) as i32
                        })
                        .collect()
                })
                .collect();
            let per_rank = logical_counts(ids.iter().map(|v| v.as_slice()), experts);
            let np = pl.phy2log.len();
            for split in [ReplicaSplit::Even, ReplicaSplit::Sglang, ReplicaSplit::Vllm] {
                let mut want = Vec::new();
                split_counts(&per_rank, gpus, &pl, split, &mut want);
                let mut got = vec![0u64; gpus * np];
                let mut phys = Vec::new();
                for (r, v) in ids.iter().enumerate() {
                    map_copies(v, r, &per_rank, gpus, &pl, split, &mut phys);
                    assert_eq!(phys.len(), v.len());
                    for (&p, &l) in phys.iter().zip(v) {
                        assert_eq!(
                            pl.phy2log[p as usize], l as usize,
                            "a replica of its expert"
                        );
                        got[r * np + p as usize] += 1;
                    }
                }
                assert_eq!(got, want, "case {case} {split}");
            }
        }
    }
}
