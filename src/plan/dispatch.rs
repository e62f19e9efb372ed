//! Step 3 of `planner.md`: which token-copies each rank sends to each GPU.

use super::Plan;

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
    for (e, ranges) in plan.spilled() {
        let e = e as usize;
        let native = e / per;
        if let [only] = ranges {
            if only.gpu as usize == native {
                continue; // kept whole at home: already counted native
            }
        }
        let mut cum = 0u64;
        for r in 0..p {
            let cnt = per_rank[r * n + e];
            if cnt == 0 {
                continue;
            }
            let (lo, hi) = (cum, cum + cnt);
            cum = hi;
            out.send[r * p + native] -= cnt;
            for rg in ranges {
                let a = lo.max(rg.start);
                let b = hi.min(rg.end);
                if b > a {
                    out.send[r * p + rg.gpu as usize] += b - a;
                }
            }
        }
    }
}
