//! The training step's backward half, priced from the forward half of the
//! same plan: what `simulate --pass train` adds to each layer.
//!
//! Backward of an expert-parallel MoE layer mirrors the forward: the upstream
//! gradient goes back to where each copy was computed (combine backward, the
//! combine's bytes), every expert group runs its input-gradient (dgrad) and
//! weight-gradient (wgrad) GEMMs (each as many FLOPs as the forward GEMMs),
//! input gradients return to their source ranks (dispatch backward, the
//! dispatch's bytes), and under LLEP the gradient of every foreign expert
//! goes back to its owner (the transfer's bytes, on the weight link,
//! overlapped with dispatch backward as the forward overlaps the transfer).
//! `--recompute` drops the saved gate_up output and activation and reruns
//! the gate_up GEMM (2/3 of the forward FLOPs) in backward instead.
//!
//! The backward GEMMs are priced as the forward ones times the profile's
//! `bwd_dgrad_factor` and `bwd_wgrad_factor`: 1.0 until `calibrate`
//! measures them (the profile says which).

use super::cost::{Cost, Shape};
use super::profile::Profile;
use crate::plan::{DispatchMatrix, Plan};
use crate::results::ResultRow;

/// The forward pass alone, or forward then backward.
pub use crate::results::Pass;

/// Backward terms of one layer, and the memory the step needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backward {
    pub combine_ms: f64,
    pub dgrad_ms: f64,
    pub wgrad_ms: f64,
    /// The gate_up GEMM rerun by `--recompute` (0 otherwise).
    pub recompute_ms: f64,
    pub dispatch_ms: f64,
    pub grad_return_ms: f64,
    pub total_ms: f64,
    /// Activations kept from forward for backward, max over GPUs.
    pub saved_bytes_max: u64,
    /// Forward peak plus saved activations, gradient buffers and the
    /// backward's token gradients, per GPU.
    pub peak_mem_per_gpu: Vec<u64>,
    pub oom: bool,
}

/// Price the backward of `plan` (with dispatch matrix `dm`) from its
/// forward cost `fwd`.
pub fn backward(
    plan: &Plan,
    dm: &DispatchMatrix,
    fwd: &Cost,
    shape: &Shape,
    prof: &Profile,
    recompute: bool,
) -> Backward {
    // per-GPU backward GEMM time is proportional to the forward's, so the
    // slowest GPU stays the slowest: scale the forward maximum
    let dgrad = fwd.compute_ms * prof.bwd_dgrad_factor;
    let wgrad = fwd.compute_ms * prof.bwd_wgrad_factor;
    let recompute_ms = if recompute {
        // gate_up is 2·D·2I of the 2·D·3I FLOPs of a group
        fwd.compute_ms * 2.0 / 3.0
    } else {
        0.0
    };
    let (combine, dispatch, grad_return) = (fwd.combine_ms, fwd.dispatch_ms, fwd.transfer_ms);
    let total = combine + recompute_ms + dgrad + wgrad + dispatch.max(grad_return);
    let (d, i, b) = (shape.hidden, shape.intermediate, shape.dtype_bytes);
    let per = (plan.experts / plan.gpus) as u64;
    let mut received = vec![0u64; plan.gpus];
    if !plan.free_transfers {
        for t in &plan.transfers {
            received[t.dst as usize] += 1;
        }
    }
    let mut saved_max = 0;
    let mut peak = Vec::with_capacity(plan.gpus);
    let mut oom = false;
    for (g, &fwd_peak) in fwd.peak_mem_per_gpu.iter().enumerate() {
        let copies = dm.col_sum(g);
        // the forward overwrites each expert input with its down output, so
        // backward must keep the input (D) and, unless recomputed, the
        // gate_up output (2I) and the activation (I)
        let saved = copies * if recompute { d } else { d + 3 * i } * b;
        // weight gradients of native and received experts, and the token
        // gradient rows (dY in, dX out) of every computed copy
        let grads = (per + received[g]) * shape.expert_bytes + copies * d * b;
        let m = fwd_peak + saved + grads;
        saved_max = saved_max.max(saved);
        oom |= m > prof.gpu_mem_bytes;
        peak.push(m);
    }
    Backward {
        combine_ms: combine,
        dgrad_ms: dgrad,
        wgrad_ms: wgrad,
        recompute_ms,
        dispatch_ms: dispatch,
        grad_return_ms: grad_return,
        total_ms: total,
        saved_bytes_max: saved_max,
        peak_mem_per_gpu: peak,
        oom,
    }
}

impl Backward {
    /// Turn a forward row into the training step's row.
    pub fn apply(&self, r: &mut ResultRow) {
        r.pass = Pass::Train;
        r.t_bwd_combine_ms = self.combine_ms;
        r.t_bwd_dgrad_ms = self.dgrad_ms + self.recompute_ms;
        r.t_bwd_wgrad_ms = self.wgrad_ms;
        r.t_bwd_dispatch_ms = self.dispatch_ms;
        r.t_grad_return_ms = self.grad_return_ms;
        r.t_total_ms += self.total_ms;
        r.saved_act_bytes = self.saved_bytes_max;
        r.peak_mem_per_gpu = self.peak_mem_per_gpu.clone();
        r.peak_mem_max_bytes = self.peak_mem_per_gpu.iter().copied().max().unwrap_or(0);
        r.oom |= self.oom;
    }
}
