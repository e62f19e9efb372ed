//! The cost model: prices one plan of one layer with a [`Profile`].
//!
//! Layer time = overhead + max over GPUs of max(dispatch, weight transfer)
//! plus max over GPUs of compute plus max over GPUs of combine
//! (`docs/design.md`, "Planning and simulation"). Every term is kept.

use super::profile::Profile;
use crate::plan::{DispatchMatrix, Plan};

/// Model shape the cost model needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub hidden: u64,
    pub intermediate: u64,
    pub dtype_bytes: u64,
    /// Bytes of one expert's weights (see `ModelMeta::expert_bytes`).
    pub expert_bytes: u64,
    pub top_k: u64,
}

impl Shape {
    pub fn from_model(m: &crate::trace::ModelMeta) -> Shape {
        Shape {
            hidden: m.hidden_size as u64,
            intermediate: m.intermediate_size as u64,
            dtype_bytes: m.dtype_bytes(),
            expert_bytes: m.expert_bytes(),
            top_k: m.top_k as u64,
        }
    }
}

/// Priced layer: every term, per-GPU peaks, and the plan's statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cost {
    pub overhead_ms: f64,
    pub dispatch_ms: f64,
    pub transfer_ms: f64,
    pub compute_ms: f64,
    pub combine_ms: f64,
    pub total_ms: f64,
    pub dispatch_bytes_max: u64,
    pub transfer_bytes: u64,
    pub peak_mem_per_gpu: Vec<u64>,
    pub oom: bool,
}

/// Scratch buffers reused between calls.
#[derive(Debug, Default, Clone)]
pub struct CostScratch {
    compute: Vec<f64>,
    largest: Vec<u64>,
    w_sent: Vec<u64>,
    w_recv: Vec<u64>,
    w_count: Vec<u64>,
}

impl Profile {
    /// Time of one expert group of `tokens` token-copies (gate_up + down
    /// GEMMs and the activation), milliseconds. A measured curve for the
    /// shape wins; otherwise an efficiency curve t / (t + half).
    pub fn gemm_ms(&self, tokens: u64, s: &Shape) -> f64 {
        if tokens == 0 {
            return 0.0;
        }
        let t = tokens as f64;
        if let Some(c) = self.gemm_curves.iter().find(|c| {
            c.hidden_size as u64 == s.hidden && c.intermediate_size as u64 == s.intermediate
        }) {
            return interp(&c.points, t);
        }
        let flops = 6.0 * t * s.hidden as f64 * s.intermediate as f64;
        let eff = t / (t + self.gemm_half_tokens);
        flops / (self.gemm_peak_tflops * 1e12 * eff) * 1e3 + self.gemm_launch_us * 1e-3
    }

    fn link_ms(&self, bytes: u64) -> f64 {
        if bytes == 0 {
            0.0
        } else {
            self.link_latency_us * 1e-3 + bytes as f64 / (self.link_gbps * 1e9) * 1e3
        }
    }

    /// On-device copy, counting bytes read plus written.
    fn copy_ms(&self, bytes: u64) -> f64 {
        if self.copy_gbps > 0.0 {
            bytes as f64 / (self.copy_gbps * 1e9) * 1e3
        } else {
            0.0
        }
    }

    fn p2p_ms(&self, bytes: u64) -> f64 {
        if bytes == 0 {
            0.0
        } else {
            self.p2p_latency_us * 1e-3 + bytes as f64 / (self.p2p_gbps * 1e9) * 1e3
        }
    }
}

/// Piecewise-linear interpolation in tokens; beyond the ends, extend with
/// the slope of the outermost segment (time is ~linear in tokens there).
fn interp(points: &[(f64, f64)], t: f64) -> f64 {
    if points.len() == 1 {
        return points[0].1 * t / points[0].0;
    }
    let i = match points.iter().position(|p| p.0 >= t) {
        Some(0) => 1,
        Some(i) => i,
        None => points.len() - 1,
    };
    let (a, b) = (points[i - 1], points[i]);
    let v = a.1 + (b.1 - a.1) * (t - a.0) / (b.0 - a.0);
    v.max(0.0)
}

/// Price `plan` with dispatch matrix `dm` (per-rank counts already folded
/// in). `counts[e]` are global counts per expert, needed for plain-EP groups.
pub fn price(
    plan: &Plan,
    dm: &DispatchMatrix,
    counts: &[u64],
    shape: &Shape,
    prof: &Profile,
    scratch: &mut CostScratch,
) -> Cost {
    let p = plan.gpus;
    let per = plan.experts / p;
    let b = shape.dtype_bytes;
    let (d, i) = (shape.hidden, shape.intermediate);
    let tok_bytes = d * b;

    // compute: one GEMM group per plan range; without a plan, each expert
    // whole on its native GPU. The largest group sizes the activation scratch.
    scratch.compute.clear();
    scratch.compute.resize(p, 0.0);
    scratch.largest.clear();
    scratch.largest.resize(p, 0);
    let group = |g: usize, tokens: u64, scratch: &mut CostScratch| {
        scratch.compute[g] += prof.gemm_ms(tokens, shape);
        scratch.largest[g] = scratch.largest[g].max(tokens);
    };
    if plan.spills.is_empty() {
        for (g, block) in counts.chunks_exact(per).enumerate() {
            for &c in block.iter().filter(|&&c| c > 0) {
                group(g, c, scratch);
            }
        }
    } else {
        // every expert with copies, those that do not spill as one native range
        for (_, ranges) in plan.iter() {
            for r in ranges {
                group(r.gpu as usize, r.end - r.start, scratch);
            }
        }
    }

    // weight transfers (one full expert per transfer entry, duplicates too)
    scratch.w_sent.clear();
    scratch.w_sent.resize(p, 0);
    scratch.w_recv.clear();
    scratch.w_recv.resize(p, 0);
    scratch.w_count.clear();
    scratch.w_count.resize(p, 0);
    let mut transfer_bytes = 0;
    if !plan.free_transfers {
        for t in &plan.transfers {
            scratch.w_sent[t.src as usize] += shape.expert_bytes;
            scratch.w_recv[t.dst as usize] += shape.expert_bytes;
            scratch.w_count[t.dst as usize] += 1;
            transfer_bytes += shape.expert_bytes;
        }
    }

    // Dispatch per GPU: its own copies are packed (read + write on the
    // device), those for other GPUs cross the link (the larger of bytes out
    // and in); combine mirrors it. Weight transfers run on their own stream,
    // overlapped with dispatch.
    let (mut dispatch, mut combine, mut transfer, mut disp_or_xfer) = (0f64, 0f64, 0f64, 0f64);
    let mut dispatch_bytes_max = 0u64;
    for g in 0..p {
        let link_b = dm.sent_off(g).max(dm.received(g)) * tok_bytes;
        dispatch_bytes_max = dispatch_bytes_max.max(link_b);
        let dsp = prof.link_ms(link_b) + prof.copy_ms(2 * dm.row_sum(g) * tok_bytes);
        let x = prof.p2p_ms(scratch.w_sent[g].max(scratch.w_recv[g]));
        dispatch = dispatch.max(dsp);
        combine = combine.max(dsp);
        transfer = transfer.max(x);
        disp_or_xfer = disp_or_xfer.max(dsp.max(x));
    }
    let compute = scratch.compute.iter().cloned().fold(0.0, f64::max);
    let overhead = prof.overhead_us * 1e-3;
    let total = overhead + disp_or_xfer + compute + combine;

    // Memory per GPU, as the replay allocates it: baseline (context,
    // cuBLAS) + communicator buffers per peer + native and received expert weights + own tokens' input and
    // output + send and receive buffers of the exchange + one row per
    // computed copy (the down output overwrites its input) + gate_up and
    // activation scratch for one chunk of the largest group + routing tables.
    let mut peak = Vec::with_capacity(p);
    let mut oom = false;
    for g in 0..p {
        let own = dm.row_sum(g);
        let own_tokens = own / shape.top_k.max(1);
        let weights = (per as u64 + scratch.w_count[g]) * shape.expert_bytes;
        let tokens = own_tokens * tok_bytes * 2
            + (dm.sent_off(g) + dm.received(g) + dm.col_sum(g)) * tok_bytes;
        let act = scratch.largest[g].min(prof.act_chunk_tokens) * 3 * i * b;
        let tables = (own + dm.col_sum(g)) * 14;
        let comm = (p as u64 - 1) * prof.mem_per_peer_bytes;
        let m = prof.mem_baseline_bytes + comm + weights + tokens + act + tables;
        oom |= m > prof.gpu_mem_bytes;
        peak.push(m);
    }
    Cost {
        overhead_ms: overhead,
        dispatch_ms: dispatch,
        transfer_ms: transfer,
        compute_ms: compute,
        combine_ms: combine,
        total_ms: total,
        dispatch_bytes_max,
        transfer_bytes,
        peak_mem_per_gpu: peak,
        oom,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_extends_linearly() {
        let pts = [(1.0, 1.0), (3.0, 2.0)];
        assert_eq!(interp(&pts, 2.0), 1.5);
        assert_eq!(interp(&pts, 5.0), 3.0);
        assert_eq!(interp(&pts, 0.0), 0.5);
    }
}
