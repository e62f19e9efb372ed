//! Step 3 of `planner.md`: which token-copies each rank sends to each GPU.

use super::{Plan, Range};

/// One expert's copies against its plan `ranges`, rank by rank: rank r's
/// `cnt` copies (of `counts`, in rank order, zero counts skipped) are the
/// slice [lo, lo + cnt) of the expert's copies in global order. Calls
/// `moved(r, None, cnt)` for each slice (it leaves the native GPU), then
/// `moved(r, Some(gpu), over)` for each range the slice meets by `over` > 0
/// copies. The dispatch matrix and the simulator's matrix sums both move
/// spilled copies by this walk.
pub(crate) fn walk_slices(
    ranges: &[Range],
    counts: impl Iterator<Item = (usize, u64)>,
    mut moved: impl FnMut(usize, Option<usize>, u64),
) {
    // ranges in order and apart (as the planners write them): each rank's
    // slice only meets the ranges from the first one not yet passed, so a
    // cursor replaces the scan of all of them
    let ordered = ranges.iter().all(|r| r.start <= r.end)
        && ranges.windows(2).all(|w| w[0].end <= w[1].start);
    let mut first = 0;
    let mut cum = 0u64;
    for (r, cnt) in counts {
        if cnt == 0 {
            continue;
        }
        let (lo, hi) = (cum, cum + cnt);
        cum = hi;
        moved(r, None, cnt);
        if ordered {
            while first < ranges.len() && ranges[first].end <= lo {
                first += 1;
            }
        }
        for rg in &ranges[first..] {
            if ordered && rg.start >= hi {
                break;
            }
            let (a, b) = (lo.max(rg.start), hi.min(rg.end));
            if b > a {
                moved(r, Some(rg.gpu as usize), b - a);
            }
        }
    }
}

/// `send[r][g]`: token-copies rank `r` sends to GPU `g` (the diagonal is
/// what stays local). Combine sends the same amounts back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DispatchMatrix {
    pub gpus: usize,
    pub send: Vec<u64>,
}

impl DispatchMatrix {
    pub fn get(&self, r: usize, g: usize) -> u64 {
        self.send[r * self.gpus + g]
    }
    /// Copies rank `r` originates (row sum).
    pub fn row_sum(&self, r: usize) -> u64 {
        self.send[r * self.gpus..(r + 1) * self.gpus].iter().sum()
    }
    /// Copies GPU `g` computes (column sum).
    pub fn col_sum(&self, g: usize) -> u64 {
        (0..self.gpus).map(|r| self.get(r, g)).sum()
    }

    /// Move the copies of every expert `plan` spills off its native GPU:
    /// each rank's slice of the expert's copies (in global order, rank 0's
    /// first) leaves the native GPU's column for the GPUs of the ranges it
    /// meets, by their overlap. `self` must hold the native placement of
    /// `per_rank` (`[P][N]`) for `plan`'s P; [`dispatch_matrix`] and the
    /// simulator (from a native matrix it keeps) both finish with this.
    pub(crate) fn move_spilled(&mut self, plan: &Plan, per_rank: &[u64]) {
        let p = plan.gpus;
        let n = plan.experts;
        let per = n / p;
        debug_assert_eq!(self.gpus, p);
        for (e, ranges) in plan.spilled() {
            let e = e as usize;
            let native = e / per;
            if let [only] = ranges {
                if only.gpu as usize == native {
                    continue; // kept whole at home: already counted native
                }
            }
            let send = &mut self.send;
            walk_slices(
                ranges,
                (0..p).map(|r| (r, per_rank[r * n + e])),
                |r, to, c| match to {
                    None => send[r * p + native] -= c,
                    Some(g) => send[r * p + g] += c,
                },
            );
        }
    }
    /// Copies rank `r` sends to other GPUs.
    pub fn sent_off(&self, r: usize) -> u64 {
        self.row_sum(r) - self.get(r, r)
    }
    /// Copies GPU `g` receives from other ranks.
    pub fn received(&self, g: usize) -> u64 {
        self.col_sum(g) - self.get(g, g)
    }
}

/// Build the dispatch matrix of `plan` for per-rank counts `per_rank`
/// (`[P][N]`, row-major). Plan ranges index each expert's copies in global
/// order, rank 0's first; rank r's copies `[cum, cum + cnt)` go to each
/// range's GPU in proportion to the overlap. Experts without a plan entry go
/// to their native GPU, so only the experts that spill are visited.
pub fn dispatch_matrix(plan: &Plan, per_rank: &[u64], out: &mut DispatchMatrix) {
    let p = plan.gpus;
    let n = plan.experts;
    let per = n / p;
    assert_eq!(
        per_rank.len(),
        p * n,
        "per-rank counts must be [gpus][experts]"
    );
    out.gpus = p;
    out.send.clear();
    out.send.resize(p * p, 0);
    // Everything native first; planned experts are then moved off.
    for r in 0..p {
        let row = &per_rank[r * n..(r + 1) * n];
        for (g, block) in row.chunks_exact(per).enumerate() {
            out.send[r * p + g] += block.iter().sum::<u64>();
        }
    }
    out.move_spilled(plan, per_rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tokens::SplitMix64;

    /// The matrix copy by copy: copy `i` of expert `e` (global order, rank
    /// 0's first) goes to the GPU of every range holding `i`, or home when
    /// the expert does not spill or has one range, at home (the planners'
    /// way to say "kept whole").
    fn by_copy(plan: &Plan, per_rank: &[u64]) -> Vec<u64> {
        let (p, n) = (plan.gpus, plan.experts);
        let mut send = vec![0u64; p * p];
        let spilled: Vec<_> = plan.spilled().collect();
        for e in 0..n {
            let home = e / (n / p);
            let ranges = spilled
                .iter()
                .find(|s| s.0 as usize == e)
                .map(|s| s.1)
                .filter(|rs| !matches!(rs, [only] if only.gpu as usize == home));
            let mut i = 0u64;
            for r in 0..p {
                for _ in 0..per_rank[r * n + e] {
                    match ranges {
                        None => send[r * p + home] += 1,
                        Some(rs) => {
                            for rg in rs.iter().filter(|rg| (rg.start..rg.end).contains(&i)) {
                                send[r * p + rg.gpu as usize] += 1;
                            }
                        }
                    }
                    i += 1;
                }
            }
        }
        send
    }

    /// Ranges in order (tiling, with gaps, or kept whole at home) take the
    /// cursor's walk, and ranges out of order or overlapping the scan of
    /// all of them: both are the copy-by-copy matrix.
    #[test]
    fn moved_copies_match_the_copy_by_copy_matrix() {
        let mut rng = SplitMix64::new(5);
        let mut dm = DispatchMatrix::default();
        for case in 0..300 {
            let p = [1, 2, 4, 8][rng.below(4) as usize];
            let n = p * (1 + rng.below(4) as usize);
            let per_rank: Vec<u64> = (0..p * n).map(|_| rng.below(4) * rng.below(9)).collect();
            let mut plan = Plan {
                gpus: p,
                experts: n,
                ..Plan::default()
            };
            for e in 0..n {
                let total: u64 = (0..p).map(|r| per_rank[r * n + e]).sum();
                if rng.below(3) == 0 {
                    continue; // not planned: native
                }
                let a = plan.spill_ranges.len() as u32;
                let mut cuts: Vec<u64> = (0..rng.below(4)).map(|_| rng.below(total + 2)).collect();
                cuts.extend([0, total]);
                cuts.sort_unstable();
                for w in cuts.windows(2) {
                    let (start, end) = match case % 3 {
                        0 => (w[0], w[1]),                                 // tiling in order
                        1 => (w[0] + rng.below(2), w[1]),                  // gaps, maybe empty
                        _ => (rng.below(total + 1), rng.below(total + 3)), // any
                    };
                    let gpu = rng.below(p as u64) as u32;
                    plan.spill_ranges.push(Range { gpu, start, end });
                }
                if case % 3 == 2 && rng.below(2) == 0 {
                    plan.spill_ranges[a as usize..].reverse();
                }
                plan.spills
                    .push((e as u32, a, plan.spill_ranges.len() as u32));
            }
            dispatch_matrix(&plan, &per_rank, &mut dm);
            assert_eq!(dm.send, by_copy(&plan, &per_rank), "case {case}: {plan:?}");
        }
    }
}
