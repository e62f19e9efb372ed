//! The load level of a trace: token-copies per (step, layer, rank, expert).

/// Dense load-level counts. `counts` is indexed
/// `((step * layers + layer) * ranks + rank) * experts + expert`; step and
/// layer are positions, `step_ids`/`layer_ids` hold the ids they stand for
/// (the `step` and `layer` columns of the Parquet file).
#[derive(Debug, Clone, PartialEq)]
pub struct Loads {
    pub step_ids: Vec<u32>,
    pub layer_ids: Vec<u32>,
    pub ranks: usize,
    pub experts: usize,
    pub counts: Vec<u64>,
}

/// How per-rank counts at another EP size were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpSplit {
    /// The trace had exactly this many ranks: used as recorded.
    AsRecorded,
    /// Load level only: each expert's count split evenly over the ranks, the
    /// remainder spread one each from rank 0.
    EvenSplit,
    /// Token level: tokens re-chunked contiguously over the ranks.
    Rechunked,
}

impl EpSplit {
    pub fn as_str(self) -> &'static str {
        match self {
            EpSplit::AsRecorded => "as-recorded",
            EpSplit::EvenSplit => "even-split",
            EpSplit::Rechunked => "rechunked",
        }
    }
}

impl Loads {
    pub fn zeros(step_ids: Vec<u32>, layer_ids: Vec<u32>, ranks: usize, experts: usize) -> Self {
        let n = step_ids.len() * layer_ids.len() * ranks * experts;
        Self {
            step_ids,
            layer_ids,
            ranks,
            experts,
            counts: vec![0; n],
        }
    }

    pub fn steps(&self) -> usize {
        self.step_ids.len()
    }

    pub fn layers(&self) -> usize {
        self.layer_ids.len()
    }

    /// Number of (step, layer) pairs.
    pub fn layer_steps(&self) -> usize {
        self.steps() * self.layers()
    }

    fn base(&self, step: usize, layer: usize) -> usize {
        (step * self.layers() + layer) * self.ranks * self.experts
    }

    /// `[ranks][experts]` counts of one (step, layer), row-major.
    pub fn block(&self, step: usize, layer: usize) -> &[u64] {
        let b = self.base(step, layer);
        &self.counts[b..b + self.ranks * self.experts]
    }

    pub fn block_mut(&mut self, step: usize, layer: usize) -> &mut [u64] {
        let b = self.base(step, layer);
        let n = self.ranks * self.experts;
        &mut self.counts[b..b + n]
    }

    /// Global counts per expert of one (step, layer), into `out`.
    pub fn global_into(&self, step: usize, layer: usize, out: &mut Vec<u64>) {
        out.clear();
        out.resize(self.experts, 0);
        for row in self.block(step, layer).chunks_exact(self.experts) {
            for (o, c) in out.iter_mut().zip(row) {
                *o += c;
            }
        }
    }

    pub fn global(&self, step: usize, layer: usize) -> Vec<u64> {
        let mut v = Vec::new();
        self.global_into(step, layer, &mut v);
        v
    }

    /// Total token-copies of one (step, layer).
    pub fn total(&self, step: usize, layer: usize) -> u64 {
        self.block(step, layer).iter().sum()
    }

    /// Per-rank counts at `gpus` EP ranks. Used as recorded when the trace has
    /// that many ranks; otherwise each expert's global count is split evenly
    /// (remainder one each from rank 0). Token-level traces are re-chunked by
    /// [`crate::trace::TokenTrace::loads_at`] instead.
    pub fn at_ranks(&self, gpus: usize) -> (Loads, EpSplit) {
        if gpus == self.ranks {
            return (self.clone(), EpSplit::AsRecorded);
        }
        let mut out = Loads::zeros(
            self.step_ids.clone(),
            self.layer_ids.clone(),
            gpus,
            self.experts,
        );
        let mut global = Vec::new();
        for s in 0..self.steps() {
            for l in 0..self.layers() {
                self.global_into(s, l, &mut global);
                let e_n = self.experts;
                let block = out.block_mut(s, l);
                for (e, &c) in global.iter().enumerate() {
                    let q = c / gpus as u64;
                    let r = (c % gpus as u64) as usize;
                    for g in 0..gpus {
                        block[g * e_n + e] = q + u64::from(g < r);
                    }
                }
            }
        }
        (out, EpSplit::EvenSplit)
    }

    /// Keep only the given step ids and layer ids (empty keeps all); `None`
    /// when nothing is left.
    pub fn select(&self, steps: &[u32], layers: &[u32]) -> Option<Loads> {
        let s_keep: Vec<usize> = (0..self.steps())
            .filter(|&s| steps.is_empty() || steps.contains(&self.step_ids[s]))
            .collect();
        let l_keep: Vec<usize> = (0..self.layers())
            .filter(|&l| layers.is_empty() || layers.contains(&self.layer_ids[l]))
            .collect();
        if s_keep.is_empty() || l_keep.is_empty() {
            return None;
        }
        let mut out = Loads::zeros(
            s_keep.iter().map(|&s| self.step_ids[s]).collect(),
            l_keep.iter().map(|&l| self.layer_ids[l]).collect(),
            self.ranks,
            self.experts,
        );
        for (si, &s) in s_keep.iter().enumerate() {
            for (li, &l) in l_keep.iter().enumerate() {
                out.block_mut(si, li).copy_from_slice(self.block(s, l));
            }
        }
        Some(out)
    }

    /// Scale every (step, layer) so each rank holds about `tokens_per_rank`
    /// tokens (`tokens_per_rank * ranks * top_k` token-copies), keeping the
    /// expert distribution. Rounding uses largest remainders so the total is
    /// exact; ties go to the lower index.
    pub fn rescaled(&self, tokens_per_rank: u64, top_k: u64) -> Loads {
        let mut out = self.clone();
        let target = tokens_per_rank * self.ranks as u64 * top_k;
        for s in 0..self.steps() {
            for l in 0..self.layers() {
                let block = out.block_mut(s, l);
                scale_exact(block, target);
            }
        }
        out
    }
}

/// Scale `v` in place to sum to `target`, proportionally, with largest
/// remainder rounding (stable: ties to the lower index).
pub fn scale_exact(v: &mut [u64], target: u64) {
    let total: u128 = v.iter().map(|&x| x as u128).sum();
    if total == 0 {
        return;
    }
    let mut rems: Vec<(u128, usize)> = Vec::with_capacity(v.len());
    let mut assigned: u128 = 0;
    for (i, x) in v.iter_mut().enumerate() {
        let num = *x as u128 * target as u128;
        let q = num / total;
        rems.push((num % total, i));
        *x = q as u64;
        assigned += q;
    }
    let mut left = target as u128 - assigned;
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems {
        if left == 0 {
            break;
        }
        v[i] += 1;
        left -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_spreads_remainder_from_rank_zero() {
        let mut l = Loads::zeros(vec![0], vec![0], 1, 2);
        l.block_mut(0, 0).copy_from_slice(&[10, 3]);
        let (at, how) = l.at_ranks(4);
        assert_eq!(how, EpSplit::EvenSplit);
        assert_eq!(at.block(0, 0), &[3, 1, 3, 1, 2, 1, 2, 0]);
        assert_eq!(at.global(0, 0), vec![10, 3]);
    }

    #[test]
    fn rescale_hits_the_target_exactly() {
        let mut v = vec![1, 1, 1];
        scale_exact(&mut v, 10);
        assert_eq!(v, vec![4, 3, 3]);
        let mut v = vec![7, 0, 2];
        scale_exact(&mut v, 9000);
        assert_eq!(v, vec![7000, 0, 2000]);
    }
}
