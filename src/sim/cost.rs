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
/// in). `native[e]` are global counts per expert, needed for plain-EP groups.
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
    let tok_bytes = shape.hidden * shape.dtype_bytes;

    // compute: one group per plan range; experts without an entry are
    // computed whole on their native GPU
    scratch.compute.clear();
    scratch.compute.resize(p, 0.0);
    if plan.entries.is_empty() {
        for (e, &c) in counts.iter().enumerate() {
            if c > 0 {
                scratch.compute[e / per] += prof.gemm_ms(c, shape);
            }
        }
    } else {
        for (_, ranges) in plan.iter() {
            for r in ranges {
                scratch.compute[r.gpu as usize] += prof.gemm_ms(r.end - r.start, shape);
            }
        }
        // Zero-count experts have no entry and no work; every nonzero expert
        // has an entry when the planner ran.
    }

    // dispatch / combine: bytes out and in per GPU over the link
    let mut dispatch = 0f64;
    let mut combine = 0f64;
    let mut dispatch_bytes_max = 0u64;
    for g in 0..p {
        let out_b = dm.sent_off(g) * tok_bytes;
        let in_b = dm.received(g) * tok_bytes;
        dispatch_bytes_max = dispatch_bytes_max.max(out_b.max(in_b));
        // dispatch: g sends its copies out, receives others'; combine mirrors it
        dispatch = dispatch.max(prof.link_ms(out_b.max(in_b)));
        combine = combine.max(prof.link_ms(out_b.max(in_b)));
    }

    // weight transfers, overlapped with dispatch per GPU
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
    let mut transfer = 0f64;
    let mut disp_or_xfer = 0f64;
    for g in 0..p {
        let d = prof.link_ms(dm.sent_off(g).max(dm.received(g)) * tok_bytes);
        let x = prof.p2p_ms(scratch.w_sent[g].max(scratch.w_recv[g]));
        transfer = transfer.max(x);
        disp_or_xfer = disp_or_xfer.max(d.max(x));
    }
    let compute = scratch.compute.iter().cloned().fold(0.0, f64::max);
    let overhead = prof.overhead_us * 1e-3;
    let total = overhead + disp_or_xfer + compute + combine;

    // memory per GPU: baseline + native and received weights + token
    // buffers (own input and output, dispatch receive, combine receive) and
    // activations of the copies it computes (gate_up out 2I, act I, down out D)
    let mut peak = Vec::with_capacity(p);
    let mut oom = false;
    let b = shape.dtype_bytes;
    let (d, i) = (shape.hidden, shape.intermediate);
    for g in 0..p {
        let own_tokens = dm.row_sum(g) / shape.top_k.max(1);
        let computed = dm.col_sum(g);
        let weights = (per as u64 + scratch.w_count[g]) * shape.expert_bytes;
        let tokens = own_tokens * d * b * 2 + dm.row_sum(g) * d * b;
        let acts = computed * (d + 2 * i + i + d) * b;
        let m = prof.mem_baseline_bytes + weights + tokens + acts;
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
