//! Peak memory of one GPU under a plan, as the replay allocates it: the
//! profile's lumped baseline ([`LayerMem::lumped`]), or buffer by buffer
//! over the baseline by component ([`LayerMem::by_buffer`], with a
//! `MemModel`). Part of the cost model (`sim::cost`), whose scratch and
//! matrix sums it reads.

use super::super::model::MemModel;
use super::super::profile::Profile;
use super::{CostScratch, Shape, Sums};
use crate::plan::Plan;

/// What one layer's memory is priced from.
pub(super) struct LayerMem<'a> {
    pub plan: &'a Plan,
    pub sums: &'a Sums,
    pub shape: &'a Shape,
    pub prof: &'a Profile,
    pub scratch: &'a CostScratch,
}

impl LayerMem<'_> {
    /// Memory of GPU `g`, as the replay allocates it: baseline (context,
    /// cuBLAS) + communicator buffers per peer + native and received expert
    /// weights + own tokens' input and output + send and receive buffers of the
    /// exchange + one row per computed copy (the down output overwrites its
    /// input) + gate_up and activation scratch for one chunk of the largest
    /// group + routing tables. The profile's lumped baseline, no rounding.
    pub fn lumped(&self, g: usize) -> u64 {
        let (plan, sums, shape, prof, scratch) =
            (self.plan, self.sums, self.shape, self.prof, self.scratch);
        let (p, per) = (plan.gpus as u64, (plan.experts / plan.gpus) as u64);
        let (b, i) = (shape.dtype_bytes, shape.intermediate);
        let tok_bytes = shape.hidden * b;
        let own = sums.row_sum(g);
        let own_tokens = own / shape.top_k.max(1);
        let weights = (per + scratch.w_count[g]) * shape.expert_bytes;
        let tokens = own_tokens * tok_bytes * 2
            + (sums.sent_off(g) + sums.received(g) + sums.col_sum(g)) * tok_bytes;
        let act = self.scratch_rows(g) * 3 * i * b;
        let tables = (own + sums.col_sum(g)) * 14;
        let comm = if prof.exchange == crate::gpu::Exchange::CopyEngine {
            0
        } else {
            (p - 1) * prof.mem_per_peer_bytes
        };
        prof.mem_baseline_bytes + comm + weights + tokens + act + tables
    }

    /// Rows of gate_up and activation scratch GPU `g` holds: a batch of
    /// its units (`gpu::units`), at least its largest unit.
    fn scratch_rows(&self, g: usize) -> u64 {
        let (largest, computed) = (self.scratch.largest[g], self.sums.col_sum(g));
        crate::gpu::units::reused_rows(
            largest.min(self.prof.act_chunk_tokens),
            computed,
            self.shape.intermediate,
            crate::gpu::units::scratch_batching(self.prof.gemm),
        )
    }

    /// Memory of GPU `g` buffer by buffer, each rounded to the allocation
    /// grain as the replay's arena does (`gpu::runtime::Arena`), over the
    /// baseline by component: context, cuBLAS workspace, token communicator
    /// buffers for every peer, weight communicator buffers for the peers it
    /// is connected to ([`weight_links`]).
    pub fn by_buffer(&self, mm: &MemModel, g: usize) -> u64 {
        let (plan, sums, shape, prof, scratch) =
            (self.plan, self.sums, self.shape, self.prof, self.scratch);
        let (b, i) = (shape.dtype_bytes, shape.intermediate);
        let tok_bytes = shape.hidden * b;
        let copies = sums.row_sum(g);
        let own_tokens = copies / shape.top_k.max(1);
        let rows = self.scratch_rows(g);
        let r = |x: u64| mm.round(x);
        let buffers = [
            r(scratch.w_count[g] * shape.expert_bytes), // foreign weights
            r(own_tokens * tok_bytes),                  // input tokens
            r(own_tokens * tok_bytes),                  // output
            3 * r(copies * 4),                          // ids, router weights, slots
            r(copies.div_ceil(256).max(1) * plan.experts as u64 * 4), // per-block counts
            2 * r(copies * 8),                          // result and bias pointers
            r(sums.sent_off(g) * tok_bytes),            // send
            r(sums.received(g) * tok_bytes),            // receive
            r(sums.col_sum(g) * tok_bytes),             // computed rows
            r(rows * 2 * i * b),                        // gate_up output
            r(rows * i * b),                            // activation
            r(copies * 40),                             // pack table (<= one piece per copy)
            2 * r(sums.received(g) * 32),               // copy tables in and out
        ];
        let (inn, out) = weight_links(mm, plan, scratch, g, prof.exchange);
        scratch.mem_fixed + mm.weight_links_bytes(inn, out) + buffers.iter().sum::<u64>()
    }
}

/// The weight communicator's connections of GPU `g` (peers in, peers
/// out). NCCL connects a point-to-point pair on its first transfer and
/// keeps the buffers for the life of the process. A plan that moves no
/// weights is priced as a process that never did. One that does is priced,
/// under `xfer_all_peers`, at the steady state of a process running LLEP:
/// every GPU connected to every peer both ways (over many layers and steps
/// each GPU both lends and borrows); without it, at this layer's own peers.
/// Copy-engine transfers connect none. A measured row's twin takes the connections its replay recorded.
fn weight_links(
    mm: &MemModel,
    plan: &Plan,
    scratch: &CostScratch,
    g: usize,
    exchange: crate::gpu::Exchange,
) -> (u64, u64) {
    if let Some((inn, out)) = &scratch.recorded_links {
        return (inn[g], out[g]);
    }
    if exchange == crate::gpu::Exchange::CopyEngine {
        // weights pulled by the copy engines: the weight communicator
        // never connects
        return (0, 0);
    }
    let all = plan.gpus as u64 - 1;
    match (plan.transfers.is_empty(), mm.xfer_all_peers) {
        (true, _) => (0, 0),
        (false, true) => (all, all),
        (false, false) => (scratch.w_nin[g], scratch.w_nout[g]),
    }
}

/// The part of [`LayerMem::by_buffer`] every GPU has: baseline, token
/// communicators (their point-to-point buffers under NCCL's exchange), and
/// the buffers sized by the model alone.
pub(super) fn mem_fixed(
    mm: &MemModel,
    plan: &Plan,
    shape: &Shape,
    exchange: crate::gpu::Exchange,
) -> u64 {
    let (p, n) = (plan.gpus, plan.experts as u64);
    let per = n / p as u64;
    let tok_bytes = shape.hidden * shape.dtype_bytes;
    let r = |x: u64| mm.round(x);
    let buffers = [
        r(per * shape.expert_bytes),    // native weights
        r(n * tok_bytes),               // bias table
        r(n * 4) + r(n * 4 * p as u64), // counts, all ranks' counts
        r((n + 1) * 4),                 // segment starts
        2 * r(8 * p as u64),            // gather scratch
    ];
    // NCCL's point-to-point buffers: the copy engines' exchange never
    // connects the pairs (its communicator only gathers the counts)
    let p2p = match exchange {
        crate::gpu::Exchange::Nccl => (p as u64 - 1) * mm.nccl_per_peer_bytes,
        crate::gpu::Exchange::CopyEngine => 0,
    };
    mm.context_bytes + mm.cublas_workspace_bytes + p2p + buffers.iter().sum::<u64>()
}
