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
//! The backward GEMMs: when the profile has `calibrate --bwd`'s tables for
//! the expert shape, every expert group on every GPU is priced from them,
//! cut into units of at most the activation chunk as the forward is (wgrad
//! accumulating over the units), dgrad and wgrad apart (wgrad reduces over
//! the tokens, so its efficiency against M is its own); the slowest GPU
//! sets the time; the activation backward and bias gradients, memory
//! bound, at the profile's copy bandwidth. Without tables, the forward GEMM time times the
//! profile's `bwd_dgrad_factor` and `bwd_wgrad_factor` (fitted from the
//! tables of the shapes measured, 1.0 when nothing was).

use super::bwd::{bwd_table_ms, BwdGemm};
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
    let (dgrad, wgrad) = bwd_gemm_ms(plan, shape, prof).unwrap_or(
        // per-GPU backward GEMM time proportional to the forward's: the
        // slowest GPU stays the slowest, so scale the forward maximum
        (
            fwd.compute_ms * prof.bwd_dgrad_factor,
            fwd.compute_ms * prof.bwd_wgrad_factor,
        ),
    );
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

/// (dgrad, wgrad) ms of the GPU whose backward GEMMs take longest, from
/// the profile's backward tables; `None` unless all four exist for the
/// shape. Groups as the forward prices them: one per plan range, or each
/// expert whole on its native GPU.
pub fn bwd_gemm_ms(plan: &Plan, shape: &Shape, prof: &Profile) -> Option<(f64, f64)> {
    let (d, i) = (shape.hidden, shape.intermediate);
    let chunk = prof.act_chunk_tokens.max(1);
    // the activation backward (reads H and dA, writes dH) and the bias
    // gradients (read dH and dY again) are memory-bound: priced at the
    // copy bandwidth, in the dgrad phase where replay runs them
    let act_bytes_per_row = (7 * i + d) * shape.dtype_bytes;
    let copy = |m: u64| {
        if prof.copy_gbps > 0.0 {
            (m * act_bytes_per_row) as f64 / (prof.copy_gbps * 1e9) * 1e3
        } else {
            0.0
        }
    };
    // one unit's (dgrad, wgrad)
    let unit = |m: u64| -> Option<(f64, f64)> {
        let (mut dg, mut wg) = (copy(m), 0.0);
        for g in BwdGemm::ALL {
            let ms = bwd_table_ms(prof, g, m as f64, d, i)?;
            if g.is_wgrad() {
                wg += ms;
            } else {
                dg += ms;
            }
        }
        Some((dg, wg))
    };
    let full = unit(chunk)?;
    let group = |t: u64| -> (f64, f64) {
        let (n, rest) = (t / chunk, t % chunk);
        let r = if rest > 0 {
            unit(rest).unwrap_or_default()
        } else {
            (0.0, 0.0)
        };
        (n as f64 * full.0 + r.0, n as f64 * full.1 + r.1)
    };
    let per = (plan.experts / plan.gpus).max(1);
    let mut gpu = vec![(0.0f64, 0.0f64); plan.gpus];
    let mut add = |g: usize, t: u64| {
        let (dg, wg) = group(t);
        gpu[g].0 += dg;
        gpu[g].1 += wg;
    };
    if plan.spills.is_empty() {
        for (e, &c) in plan.counts.iter().enumerate().filter(|p| *p.1 > 0) {
            add((e / per).min(plan.gpus - 1), c);
        }
    } else {
        for (_, ranges) in plan.iter() {
            for r in ranges {
                add(r.gpu as usize, r.end - r.start);
            }
        }
    }
    gpu.into_iter()
        .max_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Gate, Policy};
    use crate::progress::Silent;
    use crate::sim::bwd::BwdTable;
    use crate::sim::{simulate, SimConfig};
    use crate::workload::InputSpec;

    /// Backward tables of (2880, 2880) linear in M: `dg` ms per row for
    /// each dgrad, `wg` for each wgrad.
    fn linear_tables(dg: f64, wg: f64) -> Vec<BwdTable> {
        BwdGemm::ALL
            .into_iter()
            .map(|g| {
                let c = if g.is_wgrad() { wg } else { dg };
                BwdTable {
                    hidden_size: 2880,
                    intermediate_size: 2880,
                    gemm: g,
                    points: vec![(1.0, c), (16384.0, 16384.0 * c)],
                }
            })
            .collect()
    }

    fn train_rows(prof: Profile, sc: &str) -> Vec<ResultRow> {
        let mut spec = InputSpec::synthetic(vec![sc.parse().unwrap()], 4);
        spec.tokens_per_rank = Some(8192);
        let w = spec.resolve().unwrap().remove(0);
        let cfg = SimConfig {
            policies: vec![Policy::Ep, Policy::Llep],
            gates: vec![Gate::Always],
            alphas: vec![1.0],
            min_gemms: vec![1024],
            profile: prof,
            threads: 1,
            pass: Pass::Train,
            recompute: false,
        };
        simulate(&w, &cfg, &Silent).unwrap()
    }

    #[test]
    fn measured_tables_price_each_gpus_groups_dgrad_and_wgrad_apart() {
        let mut prof = Profile::load("h200").unwrap();
        prof.copy_gbps = 0.0; // GEMMs alone
        prof.bwd_tables = linear_tables(1e-5, 3e-5);
        for sc in ["balanced", "95:1"] {
            for r in train_rows(prof.clone(), sc) {
                // linear tables: the slowest GPU's copies, twice (two GEMMs each)
                let most = r.max_load_after as f64;
                let want = (2.0 * 1e-5 * most, 2.0 * 3e-5 * most);
                assert!(
                    (r.t_bwd_dgrad_ms - want.0).abs() < 1e-9 * most
                        && (r.t_bwd_wgrad_ms - want.1).abs() < 1e-9 * most,
                    "{sc} {}: {} {} vs {want:?}",
                    r.policy,
                    r.t_bwd_dgrad_ms,
                    r.t_bwd_wgrad_ms
                );
            }
        }
        // with the copy bandwidth, the activation backward adds to dgrad only
        let mut with_copy = prof.clone();
        with_copy.copy_gbps = 4000.0;
        let (a, b) = (
            train_rows(prof, "balanced"),
            train_rows(with_copy, "balanced"),
        );
        assert!(b[0].t_bwd_dgrad_ms > a[0].t_bwd_dgrad_ms);
        assert_eq!(b[0].t_bwd_wgrad_ms, a[0].t_bwd_wgrad_ms);
    }

    #[test]
    fn without_tables_for_the_shape_the_factors_scale_the_forward() {
        let mut prof = Profile::load("h200").unwrap();
        prof.bwd_tables = linear_tables(1e-5, 3e-5);
        for t in &mut prof.bwd_tables {
            t.hidden_size = 4096; // another shape: not used for 2880:2880
        }
        prof.bwd_dgrad_factor = 0.8;
        prof.bwd_wgrad_factor = 1.7;
        for r in train_rows(prof, "80:4") {
            assert!((r.t_bwd_dgrad_ms - 0.8 * r.t_compute_ms).abs() < 1e-9);
            assert!((r.t_bwd_wgrad_ms - 1.7 * r.t_compute_ms).abs() < 1e-9);
        }
    }
}
