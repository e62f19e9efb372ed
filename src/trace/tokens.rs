//! The token level of a trace: per token, its top-k expert ids and weights.

use super::loads::{EpSplit, Loads};
use std::collections::{BTreeMap, BTreeSet};

/// Column-wise token rows. Row `i` is one token of one (step, layer) on one
/// source rank; its expert ids are `experts[i*k..(i+1)*k]` in the router's
/// slot order, its weights likewise. `logits`, when kept, holds
/// `num_experts` values per row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenTrace {
    pub top_k: usize,
    pub step: Vec<u32>,
    pub layer: Vec<u32>,
    pub rank: Vec<u32>,
    /// Index of the token within its (step, layer, rank).
    pub token: Vec<u32>,
    /// Sequence the token belongs to (for resampling whole sequences).
    pub sequence: Vec<u32>,
    pub experts: Vec<u16>,
    pub weights: Vec<f32>,
    pub logits: Option<Vec<f32>>,
}

impl TokenTrace {
    pub fn new(top_k: usize) -> Self {
        Self {
            top_k,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.step.len()
    }

    pub fn is_empty(&self) -> bool {
        self.step.is_empty()
    }

    // One argument per column of a token row: a struct would only be
    // unpacked again on the next line.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        step: u32,
        layer: u32,
        rank: u32,
        token: u32,
        sequence: u32,
        experts: &[u16],
        weights: &[f32],
    ) {
        debug_assert_eq!(experts.len(), self.top_k);
        self.step.push(step);
        self.layer.push(layer);
        self.rank.push(rank);
        self.token.push(token);
        self.sequence.push(sequence);
        self.experts.extend_from_slice(experts);
        self.weights.extend_from_slice(weights);
    }

    fn ids(col: &[u32]) -> Vec<u32> {
        col.iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Number of source ranks (max rank + 1).
    pub fn ranks(&self) -> usize {
        self.rank.iter().max().map_or(0, |&r| r as usize + 1)
    }

    /// Load level as recorded: per (step, layer, rank, expert) token-copies.
    pub fn to_loads(&self, num_experts: usize) -> Loads {
        let steps = Self::ids(&self.step);
        let layers = Self::ids(&self.layer);
        let ranks = self.ranks().max(1);
        let mut loads = Loads::zeros(steps.clone(), layers.clone(), ranks, num_experts);
        let k = self.top_k;
        for i in 0..self.len() {
            let s = steps.binary_search(&self.step[i]).unwrap();
            let l = layers.binary_search(&self.layer[i]).unwrap();
            let block = loads.block_mut(s, l);
            let base = self.rank[i] as usize * num_experts;
            for &e in &self.experts[i * k..(i + 1) * k] {
                block[base + e as usize] += 1;
            }
        }
        loads
    }

    /// Loads at `gpus` EP ranks: as recorded when the trace has that many
    /// ranks, else each (step, layer)'s tokens, in (rank, token) order, are
    /// cut into `gpus` contiguous chunks (the first `T mod gpus` chunks one
    /// token longer).
    pub fn loads_at(&self, num_experts: usize, gpus: usize) -> (Loads, EpSplit) {
        if self.ranks() == gpus {
            return (self.to_loads(num_experts), EpSplit::AsRecorded);
        }
        let steps = Self::ids(&self.step);
        let layers = Self::ids(&self.layer);
        let mut loads = Loads::zeros(steps.clone(), layers.clone(), gpus, num_experts);
        // Group row indices by (step, layer), ordered by (rank, token).
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| (self.step[i], self.layer[i], self.rank[i], self.token[i]));
        let k = self.top_k;
        let mut start = 0;
        while start < order.len() {
            let (s_id, l_id) = (self.step[order[start]], self.layer[order[start]]);
            let mut end = start;
            while end < order.len()
                && self.step[order[end]] == s_id
                && self.layer[order[end]] == l_id
            {
                end += 1;
            }
            let t = end - start;
            let s = steps.binary_search(&s_id).unwrap();
            let l = layers.binary_search(&l_id).unwrap();
            let block = loads.block_mut(s, l);
            let (q, r) = (t / gpus, t % gpus);
            let mut pos = 0;
            for g in 0..gpus {
                let len = q + usize::from(g < r);
                for &i in &order[start + pos..start + pos + len] {
                    for &e in &self.experts[i * k..(i + 1) * k] {
                        block[g * num_experts + e as usize] += 1;
                    }
                }
                pos += len;
            }
            start = end;
        }
        (loads, EpSplit::Rechunked)
    }

    /// Resample whole sequences with replacement (seeded) until each
    /// (step, layer) holds at least `tokens` tokens, then cut to exactly
    /// `tokens`. Every layer of a step draws the same sequences, so a
    /// resampled step is still one consistent batch. Ranks are dropped: the
    /// result is one rank of `tokens` tokens, to be re-chunked.
    pub fn resampled(&self, tokens: usize, seed: u64) -> TokenTrace {
        let k = self.top_k;
        let mut out = TokenTrace::new(k);
        // rows of each (step, layer, sequence), in row order
        let mut groups: BTreeMap<(u32, u32, u32), Vec<usize>> = BTreeMap::new();
        for i in 0..self.len() {
            groups
                .entry((self.step[i], self.layer[i], self.sequence[i]))
                .or_default()
                .push(i);
        }
        for s in Self::ids(&self.step) {
            let in_step = || groups.range((s, 0, 0)..=(s, u32::MAX, u32::MAX));
            let layers: Vec<u32> = in_step()
                .map(|(key, _)| key.1)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let seqs: Vec<u32> = in_step()
                .map(|(key, _)| key.2)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let lens: Vec<usize> = seqs
                .iter()
                .map(|&q| groups.get(&(s, layers[0], q)).map_or(0, Vec::len))
                .collect();
            if lens.iter().all(|&x| x == 0) {
                continue;
            }
            let mut rng = SplitMix64::new(seed ^ (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut picks = Vec::new();
            let mut have = 0usize;
            while have < tokens {
                let j = rng.below(seqs.len() as u64) as usize;
                picks.push(j);
                have += lens[j];
            }
            for &l in &layers {
                let mut n = 0usize;
                'outer: for (new_seq, &j) in picks.iter().enumerate() {
                    for &i in groups.get(&(s, l, seqs[j])).map_or(&[][..], Vec::as_slice) {
                        if n == tokens {
                            break 'outer;
                        }
                        out.push(
                            s,
                            l,
                            0,
                            n as u32,
                            new_seq as u32,
                            &self.experts[i * k..(i + 1) * k],
                            &self.weights[i * k..(i + 1) * k],
                        );
                        n += 1;
                    }
                }
            }
        }
        out
    }
}

/// Small, seedable, dependency-free generator (SplitMix64) for reproducible
/// resampling and synthetic data.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), without modulo bias worth caring about here.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in [0, 1).
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TokenTrace {
        let mut t = TokenTrace::new(2);
        // step 0, layer 5, 4 tokens on rank 0, sequences of 2
        t.push(0, 5, 0, 0, 0, &[0, 1], &[0.5, 0.5]);
        t.push(0, 5, 0, 1, 0, &[0, 2], &[0.5, 0.5]);
        t.push(0, 5, 0, 2, 1, &[3, 1], &[0.5, 0.5]);
        t.push(0, 5, 0, 3, 1, &[3, 2], &[0.5, 0.5]);
        t
    }

    #[test]
    fn loads_count_every_slot() {
        let l = tiny().to_loads(4);
        assert_eq!(l.layer_ids, vec![5]);
        assert_eq!(l.block(0, 0), &[2, 2, 2, 2]);
    }

    #[test]
    fn rechunk_is_contiguous() {
        let (l, how) = tiny().loads_at(4, 2);
        assert_eq!(how, EpSplit::Rechunked);
        assert_eq!(l.block(0, 0), &[2, 1, 1, 0, 0, 1, 1, 2]);
    }

    #[test]
    fn resample_is_seeded_and_exact() {
        let a = tiny().resampled(7, 42);
        let b = tiny().resampled(7, 42);
        assert_eq!(a, b);
        assert_eq!(a.len(), 7);
        // whole sequences: each pair of output tokens is one source sequence
        let seq0: &[u16] = &[0, 1, 0, 2];
        let seq1: &[u16] = &[3, 1, 3, 2];
        for pair in a.experts[..12].chunks(4) {
            assert!(pair == seq0 || pair == seq1, "{pair:?}");
        }
        assert_ne!(
            a,
            tiny().resampled(7, 43),
            "another seed draws other sequences"
        );
    }
}
