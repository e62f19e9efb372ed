//! Summaries of simulated rows: totals per setting, kept as running sums
//! so that a trace of any length is summarised in memory bounded by its
//! settings.

use super::train;
use crate::plan::{Gate, Policy};
use crate::results::ResultRow;

/// Summary of rows for one (policy, lambda, alpha, m) setting over a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Synthetic scenario ("" for traces).
    pub scenario: String,
    pub policy: Policy,
    pub gate: Gate,
    pub alpha: f64,
    pub min_gemm: u64,
    pub layer_steps: usize,
    pub total_ms: f64,
    pub speedup_vs_ep: f64,
    pub mean_ratio_before: f64,
    pub mean_ratio_after: f64,
    pub peak_mem_max_bytes: u64,
    pub oom_rows: usize,
    pub transfers: u64,
    pub duplicates: u64,
    pub llep_on: usize,
    pub phases_ms: [f64; 5],
    /// Bytes crossing nodes, summed over the layer-steps.
    pub inter_node_bytes: u64,
    /// Training rows: activations saved for backward, max over GPUs and
    /// layer-steps (0 for forward rows).
    pub saved_act_max_bytes: u64,
    pub pass: train::Pass,
    /// The largest batch among the rows, tokens per GPU.
    pub max_tokens_per_rank: u64,
}

/// Aggregate rows per (scenario, policy, lambda, alpha, m), in first-seen
/// order; speedups against the EP rows of the same scenario, alpha and m.
pub fn summarize(rows: &[ResultRow]) -> Vec<Summary> {
    let mut acc = Summarizer::default();
    for r in rows {
        acc.add(r);
    }
    acc.finish()
}

/// [`summarize`] as running totals: feed the rows in row order, then
/// [`Summarizer::finish`]; memory is one [`Summary`] per setting.
#[derive(Debug, Clone, Default)]
pub struct Summarizer {
    out: Vec<Summary>,
    /// Where the last row went: rows repeat the same order of settings
    /// every layer-step, so the next row's setting is usually the next one.
    last: usize,
}

impl Summarizer {
    fn same(s: &Summary, r: &ResultRow) -> bool {
        s.policy == r.policy
            && s.gate.lambda().map(f64::to_bits) == r.lambda().map(f64::to_bits)
            && s.alpha.to_bits() == r.alpha.to_bits()
            && s.min_gemm == r.min_gemm
            && s.scenario == r.scenario
    }

    pub fn add(&mut self, r: &ResultRow) {
        let n = self.out.len();
        let guess = if n == 0 { 0 } else { (self.last + 1) % n };
        let idx = if n > 0 && Self::same(&self.out[guess], r) {
            guess
        } else {
            match self.out.iter().position(|s| Self::same(s, r)) {
                Some(i) => i,
                None => {
                    self.out.push(Summary {
                        scenario: r.scenario.clone(),
                        policy: r.policy,
                        gate: r.gate,
                        alpha: r.alpha,
                        min_gemm: r.min_gemm,
                        layer_steps: 0,
                        total_ms: 0.0,
                        speedup_vs_ep: f64::NAN,
                        mean_ratio_before: 0.0,
                        mean_ratio_after: 0.0,
                        peak_mem_max_bytes: 0,
                        oom_rows: 0,
                        transfers: 0,
                        duplicates: 0,
                        llep_on: 0,
                        phases_ms: [0.0; 5],
                        inter_node_bytes: 0,
                        saved_act_max_bytes: 0,
                        pass: r.pass,
                        max_tokens_per_rank: 0,
                    });
                    self.out.len() - 1
                }
            }
        };
        self.last = idx;
        let s = &mut self.out[idx];
        s.layer_steps += 1;
        s.total_ms += r.t_total_ms;
        s.max_tokens_per_rank = s.max_tokens_per_rank.max(r.tokens_per_rank);
        s.mean_ratio_before += r.imbalance_ratio;
        s.mean_ratio_after += if r.mean_load > 0.0 {
            r.max_load_after as f64 / r.mean_load
        } else {
            1.0
        };
        s.peak_mem_max_bytes = s.peak_mem_max_bytes.max(r.peak_mem_max_bytes);
        s.oom_rows += r.oom as usize;
        s.saved_act_max_bytes = s.saved_act_max_bytes.max(r.saved_act_bytes);
        s.transfers += r.transfers as u64;
        s.duplicates += r.duplicate_transfers as u64;
        s.llep_on += r.use_llep as usize;
        s.inter_node_bytes += r.inter_node_bytes;
        for (acc, v) in s.phases_ms.iter_mut().zip([
            r.t_overhead_ms,
            r.t_dispatch_ms,
            r.t_transfer_ms,
            r.t_compute_ms,
            r.t_combine_ms,
        ]) {
            *acc += v;
        }
    }

    pub fn finish(&self) -> Vec<Summary> {
        let mut out = self.out.clone();
        for s in &mut out {
            let n = s.layer_steps.max(1) as f64;
            s.mean_ratio_before /= n;
            s.mean_ratio_after /= n;
        }
        let eps: Vec<(String, u64, u64, f64)> = out
            .iter()
            .filter(|s| s.policy == Policy::Ep)
            .map(|s| {
                (
                    s.scenario.clone(),
                    s.alpha.to_bits(),
                    s.min_gemm,
                    s.total_ms,
                )
            })
            .collect();
        for s in &mut out {
            if let Some((_, _, _, ep)) = eps.iter().find(|(sc, a, m, _)| {
                *sc == s.scenario && *a == s.alpha.to_bits() && *m == s.min_gemm
            }) {
                s.speedup_vs_ep = ep / s.total_ms;
            }
        }
        out
    }
}
