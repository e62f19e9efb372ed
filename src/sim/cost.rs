//! The cost model: prices one plan of one layer with a [`Profile`].
//!
//! Layer time = overhead + max over GPUs of max(dispatch, weight transfer)
//! plus max over GPUs of compute plus max over GPUs of combine
//! (`docs/design.md`, "Planning and simulation"), or, with replay's
//! schedule, overhead + max over GPUs of (max(dispatch + native groups,
//! transfer) + foreign groups) + combine. Every term is kept. A profile's
//! `layer_fit` adds what replayed layers pay beyond the calibrated parts
//! (overhead by groups and copies, GEMM units inside a layer, link sharing).
//! A profile's `power` (GEMM tables timed in bursts) slows each GPU's
//! compute by how much of the layer it computes, the card's power cap
//! (`sim::power`).
//!
//! Topology: with the GPUs split over several nodes (`Profile::nodes`),
//! each GPU's token exchange and weight transfers are split into what
//! stays in its node (priced on the intra-node link, as on one node) and
//! what crosses nodes (priced on the GPU's NIC, `inter_gbps` and
//! `inter_latency_us`); both run at once, so a phase takes the slower of
//! the two, and the NIC, several times slower, is usually that one. On one
//! node the prices are exactly those of the single-node model. A shared
//! link (`Profile::inter_shared`: pseudo-nodes over one host's sockets)
//! carries every pair, both directions and the weights on one budget.

pub use super::groups::{GroupMemo, GroupPricer};
use super::model::{MsgModel, COMBINE_LAUNCHES, DISPATCH_LAUNCHES};
use super::profile::Profile;
use crate::plan::{walk_slices, DispatchMatrix, Plan, Range};

#[path = "cost_mem.rs"]
mod mem;
use mem::{mem_fixed, LayerMem};

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
    /// A bf16 expert of `hidden` x `intermediate` (gate_up and down), top-k
    /// `top_k`: the shape `plan --hidden-size` and the tests price.
    pub fn bf16(hidden: u64, intermediate: u64, top_k: u64) -> Shape {
        Shape {
            hidden,
            intermediate,
            dtype_bytes: 2,
            expert_bytes: crate::trace::meta::expert_bytes(hidden, intermediate, 2),
            top_k,
        }
    }

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
    /// Bytes that cross nodes in this layer: token-copies dispatched to and
    /// combined back from GPUs of other nodes, plus expert weights sent to
    /// them. 0 on one node.
    pub inter_node_bytes: u64,
    pub peak_mem_per_gpu: Vec<u64>,
    pub oom: bool,
    /// Chunks of the pipelined schedule priced (`sim::overlap`; 0 or 1:
    /// sequential). Then `compute_ms` is its chunked busy compute.
    pub overlap_chunks: u32,
    /// Priced with the expert units launched as CUDA graphs (the profile's
    /// `cuda_graphs`): no host floor per unit.
    pub cuda_graphs: bool,
    /// The exchange priced (the profile's `exchange`).
    pub exchange: crate::gpu::Exchange,
    /// Priced with the tables timed through `--gemm fused`.
    pub fused: bool,
}

/// Scratch buffers reused between calls.
#[derive(Debug, Default, Clone)]
pub struct CostScratch {
    compute: Vec<f64>,
    /// Compute of groups whose weights were transferred in.
    foreign: Vec<f64>,
    /// GEMM units per GPU, all and foreign (the host's floor counts them).
    units: Vec<u64>,
    foreign_units: Vec<u64>,
    /// Each GPU's weight transfers alone, ms.
    xfer: Vec<f64>,
    largest: Vec<u64>,
    w_sent: Vec<u64>,
    w_recv: Vec<u64>,
    w_count: Vec<u64>,
    w_nsent: Vec<u64>,
    /// `[g * p + q]`: GPU g sends weights to peer q, while
    /// `account_weights` counts peers; all false between calls.
    w_peer: Vec<bool>,
    /// `[g]`: the peers GPU g receives weights from, and sends them to.
    w_nin: Vec<u64>,
    w_nout: Vec<u64>,
    /// The weight communicator's connected peers per GPU (in, out) as a
    /// replay process had them (its row's record), in place of the rule of
    /// [`mem::weight_links`]; set only while a measured row's twin is priced.
    pub(crate) recorded_links: Option<(Vec<u64>, Vec<u64>)>,
    /// What every GPU's memory has the same of (see [`mem_fixed`]).
    mem_fixed: u64,
    /// Weight bytes sent and received across nodes, and their messages.
    x_sent: Vec<u64>,
    x_recv: Vec<u64>,
    x_msgs: Vec<u64>,
    /// Row and column sums of the dispatch matrix, computed once per price
    /// (each is O(P), and every GPU's terms use them several times).
    sums: Sums,
    /// Each GPU's communication terms for the pipelined schedule, and that
    /// schedule's own buffers.
    comm: Vec<super::overlap::GpuComm>,
    overlap: super::overlap::OverlapScratch,
    /// Sequential schedule, per GPU: (its dispatch, its weights in), ms.
    seq: Vec<(f64, f64)>,
    /// Each GPU's compute multiplier under the power cap.
    power_scale: Vec<f64>,
    /// Price the layer time only: no peak memory (`Cost::peak_mem_per_gpu`
    /// left empty, `oom` false). `llep-auto`'s decision reads the times
    /// alone, on the replayed layer's critical path.
    pub(crate) time_only: bool,
}

/// Per-GPU sums of a dispatch matrix.
#[derive(Debug, Default, Clone, PartialEq)]
struct Sums {
    rows: Vec<u64>,
    cols: Vec<u64>,
    diag: Vec<u64>,
    /// Non-zero entries off the diagonal per row and per column (messages
    /// sent and received), when asked for.
    nz_rows: Vec<u64>,
    nz_cols: Vec<u64>,
    /// On several nodes, per GPU: tokens and messages out and in, within
    /// its node and across nodes (see [`Sums::fill_nodes`]).
    nodes: Vec<NodeSplit>,
    /// Scratch of [`Sums::moved`]: where each rank's slice of an expert's
    /// copies starts.
    starts: Vec<u64>,
}

/// The row and column sums and the diagonal of a dispatch matrix (no
/// message counts): what [`price_moved`] starts from.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MatrixSums(Sums);

impl MatrixSums {
    /// The sums of `dm`.
    pub fn fill(&mut self, dm: &DispatchMatrix) {
        self.0.fill(dm, false);
    }

    /// The row sums, column sums and diagonal, emptied, for a caller that
    /// sums a matrix it does not build.
    pub fn parts_mut(&mut self) -> [&mut Vec<u64>; 3] {
        let s = &mut self.0;
        s.nz_rows.clear();
        s.nz_cols.clear();
        s.nodes.clear();
        for v in [&mut s.rows, &mut s.cols, &mut s.diag] {
            v.clear();
        }
        [&mut s.rows, &mut s.cols, &mut s.diag]
    }
}

/// Whether prices under `prof` on `p` GPUs read a plan's dispatch matrix
/// only through its row and column sums and diagonal (one node, and no
/// per-message model of the exchange): then [`price_moved`] prices a plan
/// without building its matrix.
pub fn prices_from_sums(prof: &Profile, p: usize) -> bool {
    gpus_per_node(prof, p) >= p && prof.token_msgs().is_none()
}

/// One GPU's exchange split by link, as [`split_exchange`] prices it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct NodeSplit {
    in_out: u64,
    in_in: u64,
    x_out: u64,
    x_in: u64,
    in_msgs: u64,
    x_msgs: u64,
}

impl Sums {
    /// The sums of the dispatch matrix of `plan` on the per-rank counts
    /// `per_rank` (`[gpus][experts]`), from `native`, the sums of their
    /// native matrix, without building the matrix. As
    /// `plan::dispatch_matrix` builds it, each spilled expert's copies,
    /// rank after rank, tile its order `[0, total)`, and each rank's slice
    /// leaves the native GPU's column for the columns of the ranges it
    /// meets. Where the ranges tile `[0, total)` in order (as the planners
    /// write them) the row sums stay (a rank sends the same copies), a
    /// range's column gains the range's length, and the diagonal changes
    /// only at the native GPU's rank and at each range's GPU's rank; other
    /// ranges are walked rank by rank. The same integers as [`Sums::fill`]
    /// of that matrix.
    fn moved(&mut self, native: &Sums, plan: &Plan, per_rank: &[u64]) {
        self.rows.clone_from(&native.rows);
        self.cols.clone_from(&native.cols);
        self.diag.clone_from(&native.diag);
        self.nz_rows.clear();
        self.nz_cols.clear();
        let (p, n) = (plan.gpus, plan.experts);
        let per = n / p;
        for (e, ranges) in plan.spilled() {
            let (e, home) = (e as usize, e as usize / per);
            if let [only] = ranges {
                if only.gpu as usize == home {
                    continue;
                }
            }
            // rank r's slice is [starts[r], starts[r + 1])
            self.starts.clear();
            let mut total = 0u64;
            for r in 0..p {
                self.starts.push(total);
                total += per_rank[r * n + e];
            }
            self.starts.push(total);
            let tiled = ranges.first().is_some_and(|r| r.start == 0)
                && ranges.iter().all(|r| r.start <= r.end)
                && ranges.windows(2).all(|w| w[0].end == w[1].start)
                && ranges.last().is_some_and(|r| r.end == total);
            if !tiled {
                self.moved_by_rank(home, e, ranges, per_rank, n);
                continue;
            }
            let slice = |r: usize| (self.starts[r], self.starts[r + 1]);
            self.cols[home] -= total;
            let (lo, hi) = slice(home);
            self.diag[home] -= hi - lo;
            for rg in ranges {
                let g = rg.gpu as usize;
                self.cols[g] += total.min(rg.end).saturating_sub(rg.start);
                let (lo, hi) = slice(g);
                self.diag[g] += hi.min(rg.end).saturating_sub(lo.max(rg.start));
            }
        }
    }

    /// [`Sums::moved`] of one expert `e` (native GPU `home`) whose ranges
    /// do not tile its copies in order: the dispatch matrix's walk
    /// ([`walk_slices`]), rank by rank, on the sums.
    fn moved_by_rank(
        &mut self,
        home: usize,
        e: usize,
        ranges: &[Range],
        per_rank: &[u64],
        n: usize,
    ) {
        let ranks = 0..self.rows.len();
        walk_slices(
            ranges,
            ranks.map(|r| (r, per_rank[r * n + e])),
            |r, to, c| match to {
                None => {
                    self.rows[r] -= c;
                    self.cols[home] -= c;
                    if r == home {
                        self.diag[r] -= c;
                    }
                }
                Some(g) => {
                    self.rows[r] += c;
                    self.cols[g] += c;
                    if g == r {
                        self.diag[r] += c;
                    }
                }
            },
        );
    }

    fn fill(&mut self, dm: &DispatchMatrix, msgs: bool) {
        let p = dm.gpus;
        self.rows.clear();
        self.cols.clear();
        self.cols.resize(p, 0);
        self.diag.clear();
        self.nz_rows.clear();
        self.nz_cols.clear();
        if msgs {
            self.nz_cols.resize(p, 0);
        }
        for (r, row) in dm.send.chunks_exact(p.max(1)).enumerate().take(p) {
            self.rows.push(row.iter().sum());
            for (c, &v) in self.cols.iter_mut().zip(row) {
                *c += v;
            }
            self.diag.push(row[r]);
            if msgs {
                let mut nz = 0;
                for (c, &v) in self.nz_cols.iter_mut().zip(row) {
                    let x = u64::from(v > 0);
                    *c += x;
                    nz += x;
                }
                let own = u64::from(row[r] > 0);
                self.nz_rows.push(nz - own);
                self.nz_cols[r] -= own;
            }
        }
    }
    /// Split every GPU's exchange by link, on `gpn` GPUs per node: one
    /// pass over the rows (reading the matrix by columns per GPU misses
    /// the cache at large P).
    fn fill_nodes(&mut self, dm: &DispatchMatrix, gpn: usize) {
        let p = dm.gpus;
        self.nodes.clear();
        self.nodes.resize(p, NodeSplit::default());
        for (r, row) in dm.send.chunks_exact(p.max(1)).enumerate().take(p) {
            // the node's GPUs are one contiguous block; the diagonal is
            // counted with them and taken off after
            let (lo, hi) = (r / gpn * gpn, (r / gpn + 1) * gpn);
            let (mut in_out, mut x_out, mut in_n, mut x_n) = (0u64, 0u64, 0u64, 0u64);
            let parts = [(0, lo, false), (lo, hi, true), (hi, p, false)];
            for (a, b, inside) in parts {
                for (&v, d) in row[a..b].iter().zip(&mut self.nodes[a..b]) {
                    let nz = u64::from(v > 0);
                    if inside {
                        in_out += v;
                        in_n += nz;
                        d.in_in += v;
                        d.in_msgs += nz;
                    } else {
                        x_out += v;
                        x_n += nz;
                        d.x_in += v;
                        d.x_msgs += nz;
                    }
                }
            }
            let (v, nz) = (row[r], u64::from(row[r] > 0));
            let s = &mut self.nodes[r];
            s.in_in -= v;
            s.in_msgs -= nz;
            s.in_out += in_out - v;
            s.x_out += x_out;
            s.in_msgs += in_n - nz;
            s.x_msgs += x_n;
        }
    }
    /// Messages GPU `g` sends and receives in the exchange (peers it has
    /// tokens for, peers that have tokens for it); needs `fill(_, true)`.
    fn msgs(&self, g: usize) -> u64 {
        self.nz_rows[g] + self.nz_cols[g]
    }
    fn row_sum(&self, g: usize) -> u64 {
        self.rows[g]
    }
    fn col_sum(&self, g: usize) -> u64 {
        self.cols[g]
    }
    fn sent_off(&self, g: usize) -> u64 {
        self.rows[g] - self.diag[g]
    }
    fn received(&self, g: usize) -> u64 {
        self.cols[g] - self.diag[g]
    }
}

impl Profile {
    /// The token exchange's message model under the run's exchange (the
    /// copy engines' when `exchange` says so).
    pub fn token_msgs(&self) -> Option<&MsgModel> {
        match self.exchange {
            crate::gpu::Exchange::Nccl => self.msg_tokens.as_ref(),
            crate::gpu::Exchange::CopyEngine => self.ce_tokens.as_ref(),
        }
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

    /// One exchange over the GPU's NIC: `msgs` sends and receives moving
    /// `bytes` (the larger direction); the message model's per-message
    /// cost applies when the profile has one.
    fn nic_ms(&self, msgs: u64, bytes: u64, per_msg_us: Option<f64>) -> f64 {
        if bytes == 0 && msgs == 0 {
            return 0.0;
        }
        (self.inter_latency_us + per_msg_us.unwrap_or(0.0) * msgs as f64) * 1e-3
            + bytes as f64 / (self.inter_gbps * 1e9) * 1e3
    }

    /// Bytes `out` and `inn` of one GPU on a shared link, ms (no fixed
    /// costs): the link's budget of `inter_gbps` carries both directions,
    /// and one direction alone runs no faster than a one-way stream (the
    /// weight transfer's rate, measured on the same link), so a lopsided
    /// exchange is priced by its larger side.
    fn shared_link_ms(&self, out: u64, inn: u64) -> f64 {
        let one_way = self.msg_weights.map_or(self.p2p_gbps, |m| m.gbps);
        let both = (out + inn) as f64 / (self.inter_gbps * 1e9);
        let larger = out.max(inn) as f64 / (one_way * 1e9);
        both.max(larger) * 1e3
    }

    fn p2p_ms(&self, bytes: u64) -> f64 {
        if bytes == 0 {
            0.0
        } else {
            self.p2p_latency_us * 1e-3 + bytes as f64 / (self.p2p_gbps * 1e9) * 1e3
        }
    }
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
    price_memo(plan, dm, counts, shape, prof, scratch, None)
}

/// [`price`], reusing and filling `memo`'s group times (cleared by the
/// caller for each layer-step, profile and shape).
pub fn price_memo(
    plan: &Plan,
    dm: &DispatchMatrix,
    counts: &[u64],
    shape: &Shape,
    prof: &Profile,
    scratch: &mut CostScratch,
    memo: Option<&mut GroupMemo>,
) -> Cost {
    let p = plan.gpus;
    let gpn = gpus_per_node(prof, p);
    let multi = gpn < p;
    let mut sums = std::mem::take(&mut scratch.sums);
    sums.fill(dm, !multi && prof.token_msgs().is_some());
    if multi {
        sums.fill_nodes(dm, gpn);
    }
    price_sums(plan, sums, counts, shape, prof, scratch, memo)
}

/// [`price_memo`] of `plan` on the per-rank counts `per_rank`, whose
/// native dispatch matrix has the sums `native`, without building the
/// plan's matrix (see [`Sums::moved`]): the same cost. Only where
/// [`prices_from_sums`] says a price reads no more of the matrix.
#[allow(clippy::too_many_arguments)]
pub fn price_moved(
    plan: &Plan,
    native: &MatrixSums,
    per_rank: &[u64],
    counts: &[u64],
    shape: &Shape,
    prof: &Profile,
    scratch: &mut CostScratch,
    memo: Option<&mut GroupMemo>,
) -> Cost {
    debug_assert!(prices_from_sums(prof, plan.gpus));
    let mut sums = std::mem::take(&mut scratch.sums);
    sums.moved(&native.0, plan, per_rank);
    price_sums(plan, sums, counts, shape, prof, scratch, memo)
}

/// Each GPU's native and foreign compute raised to the host's floor of
/// their units (`floor_ms` per unit): the host issues a GPU's units one
/// after another, and the foreign ones only once their weights are in.
fn host_floor(scratch: &mut CostScratch, floor_ms: f64) {
    if floor_ms <= 0.0 {
        return;
    }
    for g in 0..scratch.compute.len() {
        let fu = scratch.foreign_units[g];
        let nu = scratch.units[g] - fu;
        let native = (scratch.compute[g] - scratch.foreign[g]).max(nu as f64 * floor_ms);
        let foreign = scratch.foreign[g].max(fu as f64 * floor_ms);
        scratch.compute[g] = native + foreign;
        scratch.foreign[g] = foreign;
    }
}

/// Every expert group's GEMM time, summed per GPU into `scratch` (all and
/// foreign, with their units, and the largest group): one group per plan
/// range; without a plan, each expert whole on its native GPU. Returns the
/// number of groups (the overhead's planning grows with it).
fn price_groups(
    plan: &Plan,
    counts: &[u64],
    pricer: &GroupPricer,
    scratch: &mut CostScratch,
    mut memo: Option<&mut GroupMemo>,
) -> u64 {
    let (p, per) = (plan.gpus, plan.experts / plan.gpus);
    // the largest group sizes the activation scratch
    scratch.compute.clear();
    scratch.compute.resize(p, 0.0);
    scratch.foreign.clear();
    scratch.foreign.resize(p, 0.0);
    scratch.largest.clear();
    scratch.largest.resize(p, 0);
    scratch.units.clear();
    scratch.units.resize(p, 0);
    scratch.foreign_units.clear();
    scratch.foreign_units.resize(p, 0);
    let mut groups = 0u64;
    if let Some(m) = memo.as_deref_mut() {
        m.fit(plan.experts);
        m.bind(pricer);
    }
    let mut ms_of = |e: usize, tokens: u64| match memo.as_deref_mut() {
        Some(m) => m.group_ms(pricer, e, tokens),
        None => pricer.ms(tokens),
    };
    if plan.spills.is_empty() {
        // each GPU's own experts whole, summed in registers in the order
        // the plan's ranges would add them (the same sums, bit for bit)
        for (g, block) in counts.chunks_exact(per).enumerate() {
            let (mut ms, mut units, mut largest) = (0.0, 0u64, 0u64);
            for (j, &c) in block.iter().enumerate().filter(|&(_, &c)| c > 0) {
                groups += 1;
                ms += ms_of(g * per + j, c);
                units += pricer.units(c);
                largest = largest.max(c);
            }
            scratch.compute[g] = ms;
            scratch.units[g] = units;
            scratch.largest[g] = largest;
        }
    } else {
        // every expert with copies, those that do not spill as one native range
        for (e, ranges) in plan.iter() {
            let e = e as usize;
            for r in ranges {
                let (g, tokens) = (r.gpu as usize, r.end - r.start);
                groups += 1;
                let ms = ms_of(e, tokens);
                let units = pricer.units(tokens);
                scratch.compute[g] += ms;
                scratch.units[g] += units;
                if e / per != g {
                    scratch.foreign[g] += ms;
                    scratch.foreign_units[g] += units;
                }
                scratch.largest[g] = scratch.largest[g].max(tokens);
            }
        }
    }
    groups
}

/// Each GPU's peak memory under `plan` and whether any exceeds the card.
fn peak_memory(
    plan: &Plan,
    sums: &Sums,
    shape: &Shape,
    prof: &Profile,
    scratch: &mut CostScratch,
) -> (Vec<u64>, bool) {
    let mut peak = Vec::with_capacity(plan.gpus);
    let mut oom = false;
    if let Some(mm) = &prof.mem_model {
        scratch.mem_fixed = mem_fixed(mm, plan, shape, prof.exchange);
    }
    let layer = LayerMem {
        plan,
        sums,
        shape,
        prof,
        scratch,
    };
    for g in 0..plan.gpus {
        let m = match &prof.mem_model {
            Some(mm) => layer.by_buffer(mm, g),
            None => layer.lumped(g),
        };
        oom |= m > prof.gpu_mem_bytes;
        peak.push(m);
    }
    (peak, oom)
}

/// The price of `plan` whose dispatch matrix has the sums `sums`.
fn price_sums(
    plan: &Plan,
    sums: Sums,
    counts: &[u64],
    shape: &Shape,
    prof: &Profile,
    scratch: &mut CostScratch,
    mut memo: Option<&mut GroupMemo>,
) -> Cost {
    let p = plan.gpus;
    let tok_bytes = shape.hidden * shape.dtype_bytes;
    let gpn = gpus_per_node(prof, p);
    let multi = gpn < p;

    let pricer = prof.group_pricer(shape);
    let groups = price_groups(plan, counts, &pricer, scratch, memo.as_deref_mut());

    // with `--overlap on` the pipelined schedule prices the layer's total
    // and compute itself (per chunk, from the group prices, not these sums):
    // the sequential schedule's are worked out only without it
    let chunks = super::overlap::chunks(prof, plan);
    let sequential = chunks <= 1;
    if sequential {
        host_floor(scratch, pricer.floor_ms());
    }

    let (transfer_bytes, mut inter_node_bytes) = account_weights(plan, shape, gpn, scratch);

    // Dispatch per GPU: its own copies are packed (read + write on the
    // device), those for other GPUs cross the link (the larger of bytes out
    // and in); combine mirrors it. Weight transfers run on their own stream,
    // overlapped with dispatch. With a message model, each send and receive
    // of the grouped exchange is priced, and the kernels around it too.
    let launch_ms = prof.launches.map_or(0.0, |l| l.launch_us * 1e-3);
    // the GPUs sharing a port are the node's
    let contention = prof.layer_fit.map_or(0.0, |f| f.contention_on(gpn));
    // every GPU's dispatch waits on its slowest peer, so the longest weight
    // transfer anywhere slows them all (a fraction of it: they overlap)
    scratch.xfer.clear();
    let mut xfer_max = 0f64;
    for g in 0..p {
        let x = weights_ms(prof, scratch, g, multi.then(|| (&sums.nodes[g], tok_bytes)));
        xfer_max = xfer_max.max(x);
        scratch.xfer.push(x);
    }
    let waits = match prof.layer_fit {
        Some(f) if !multi => f.dispatch_wait * xfer_max,
        _ => 0.0,
    };
    let mut copies_max = 0u64;
    let (mut dispatch, mut combine, mut transfer, mut disp_or_xfer) = (0f64, 0f64, 0f64, 0f64);
    let mut dispatch_bytes_max = 0u64;
    // replay's schedule per GPU: dispatch, native groups, then (once its
    // weights are in) the foreign groups (`sequential_scaled`)
    let mut ov = std::mem::take(&mut scratch.comm);
    ov.clear();
    scratch.seq.clear();
    for g in 0..p {
        let link_b = sums.sent_off(g).max(sums.received(g)) * tok_bytes;
        dispatch_bytes_max = dispatch_bytes_max.max(link_b);
        let link = if multi {
            let (link, crossed) = split_exchange(&sums.nodes[g], tok_bytes, prof);
            inter_node_bytes += 2 * crossed;
            link
        } else {
            match prof.token_msgs() {
                Some(m) => m.ms(sums.msgs(g), link_b),
                None => prof.link_ms(link_b),
            }
        };
        copies_max = copies_max.max(sums.row_sum(g));
        let copy = prof.copy_ms(2 * sums.row_sum(g) * tok_bytes);
        // the exchange shares the link with this GPU's weight transfers;
        // copy engines pull the weights after the first round of tokens
        // instead (`gpu::copy_engine`), then share the link only with the
        // later rounds
        let moves = scratch.w_sent[g] + scratch.w_recv[g] > 0;
        let ce = prof.exchange == crate::gpu::Exchange::CopyEngine;
        let shared = if moves && !(ce && sequential) {
            contention * link
        } else {
            0.0
        };
        let dsp = link + shared + waits + copy + DISPATCH_LAUNCHES as f64 * launch_ms;
        let cmb = link + copy + COMBINE_LAUNCHES as f64 * launch_ms;
        let first_round = match prof.token_msgs() {
            Some(m) if ce && moves && !sequential => {
                let fixed = m.ms(sums.msgs(g), 0);
                fixed + (link - fixed).max(0.0) / crate::gpu::pipeline::parts(0, chunks)
            }
            _ if ce && moves => link,
            _ => 0.0,
        };
        let x = shared + scratch.xfer[g];
        // when this GPU's weights are in, from the end of planning
        let x_in = x + first_round;
        dispatch = dispatch.max(dsp);
        combine = combine.max(cmb);
        transfer = transfer.max(x);
        if sequential {
            disp_or_xfer = disp_or_xfer.max(dsp.max(x_in));
            scratch.seq.push((dsp, x_in));
        } else {
            let link_fixed_ms = match prof.token_msgs() {
                _ if multi => 0.0,
                Some(m) => m.ms(sums.msgs(g), 0),
                None => prof.link_latency_us * 1e-3,
            };
            ov.push(super::overlap::GpuComm {
                link_ms: link,
                link_fixed_ms,
                shared_ms: shared,
                copy_ms: copy,
                transfer_ms: x_in - shared,
                launch_ms,
                drag: super::overlap::comm_drag(prof.exchange),
            });
        }
    }
    let overhead = match &prof.layer_fit {
        Some(f) => f.overhead_ms(groups, copies_max),
        None => prof.overhead_us * 1e-3,
    };
    // the sequential layer's (total, busiest compute), GPU g's groups
    // taking scale(g) times their price
    let sequential_total = |scratch: &CostScratch, scale: &dyn Fn(usize) -> f64| {
        let (end, busiest) = sequential_scaled(scratch, scale);
        let total = if prof.transfer_overlaps_native {
            overhead + end + combine
        } else {
            overhead + disp_or_xfer + busiest + combine
        };
        (total, busiest)
    };
    let (mut total, mut compute) = if sequential {
        sequential_total(scratch, &|_| 1.0)
    } else {
        let o = super::overlap::price_in(plan, chunks, &pricer, memo, &ov, &mut scratch.overlap);
        (overhead + o.after_overhead_ms, o.compute_ms)
    };
    if let Some(pw) = prof.power {
        // the tables are burst speeds: each GPU pays the power cap by how
        // much of the layer its GEMMs fill, which its slowdown lengthens
        // in turn; two rounds settle it within a fraction of a percent
        let mut scale = std::mem::take(&mut scratch.power_scale);
        for round in 0..2 {
            scale.clear();
            for g in 0..p {
                // (a plan without loads computes nothing more)
                let rows = plan.gpu_loads.get(g).copied().unwrap_or(0);
                let c = if sequential {
                    scratch.compute[g]
                } else {
                    super::overlap::gpu_compute(&scratch.overlap, chunks, g)
                };
                let w = pw.work_ms(rows as f64, shape.hidden, shape.intermediate);
                let extra = pw.extra_ms(w.min(c), dispatch + combine, total);
                scale.push(if c > 0.0 { 1.0 + extra / c } else { 1.0 });
            }
            // no GPU busy enough to meet the cap (decode-sized layers):
            // the burst prices stand as they are
            if round == 0 && scale.iter().all(|&s| s == 1.0) {
                break;
            }
            (total, compute) = if sequential {
                sequential_total(scratch, &|g| scale[g])
            } else {
                let o = super::overlap::rescale_in(plan, chunks, &ov, &mut scratch.overlap, &scale);
                (overhead + o.after_overhead_ms, o.compute_ms)
            };
        }
        scratch.power_scale = scale;
    }

    scratch.comm = ov;
    let (peak, oom) = if scratch.time_only {
        (Vec::new(), false)
    } else {
        peak_memory(plan, &sums, shape, prof, scratch)
    };
    scratch.sums = sums;
    Cost {
        overhead_ms: overhead,
        dispatch_ms: dispatch,
        transfer_ms: transfer,
        compute_ms: compute,
        combine_ms: combine,
        total_ms: total,
        dispatch_bytes_max,
        transfer_bytes,
        inter_node_bytes,
        peak_mem_per_gpu: peak,
        oom,
        overlap_chunks: chunks as u32,
        cuda_graphs: prof.cuda_graphs,
        exchange: prof.exchange,
        fused: prof.prices_fused(),
    }
}

/// The sequential layer's latest compute end and busiest compute, GPU
/// `g`'s groups taking `scale(g)` times their price: each GPU's dispatch
/// (from `scratch.seq`), its native groups, then, once its weights are in,
/// its foreign groups.
fn sequential_scaled(scratch: &CostScratch, scale: &dyn Fn(usize) -> f64) -> (f64, f64) {
    let (mut end, mut busiest) = (0f64, 0f64);
    for (g, &(dsp, x_in)) in scratch.seq.iter().enumerate() {
        let s = scale(g);
        let (native, foreign) = (
            (scratch.compute[g] - scratch.foreign[g]) * s,
            scratch.foreign[g] * s,
        );
        end = end.max((dsp + native).max(x_in) + foreign);
        busiest = busiest.max(scratch.compute[g] * s);
    }
    (end, busiest)
}

/// GPU `g`'s weight transfers (from [`account_weights`]), ms: the larger
/// of bytes sent and received, per message with a message model; across
/// nodes (`nodes`: the GPU's exchange split by link, and bytes per token
/// copy), the slower of the intra-node part and the NIC part. On a shared
/// link ([`Profile::inter_shared`]) every transfer of the GPU crosses it,
/// beside the GPU's token exchange.
fn weights_ms(
    prof: &Profile,
    scratch: &CostScratch,
    g: usize,
    nodes: Option<(&NodeSplit, u64)>,
) -> f64 {
    let Some((split, tok_bytes)) = nodes else {
        let xb = scratch.w_sent[g].max(scratch.w_recv[g]);
        if prof.exchange == crate::gpu::Exchange::CopyEngine {
            // each borrower pulls its blobs: its own copies, one per blob
            return prof
                .ce_weights
                .map_or(0.0, |m| m.ms(scratch.w_count[g], scratch.w_recv[g]));
        }
        return match &prof.msg_weights {
            Some(m) => m.ms(scratch.w_nsent[g] + scratch.w_count[g], xb),
            None => prof.p2p_ms(xb),
        };
    };
    if prof.inter_shared {
        // the weights and the token exchange share the link while both
        // run, half each: the weights finish after their own bytes and as
        // many of the exchange's (each direction), not after all of them
        let (ws, wr) = (scratch.w_sent[g], scratch.w_recv[g]);
        if ws + wr == 0 {
            return 0.0;
        }
        // fixed costs as on a NIC: the link's latency, the message model's
        // price per message
        let per_msg = prof.msg_weights.map_or(0.0, |m| m.per_msg_us);
        let msgs = scratch.w_nsent[g] + scratch.w_count[g];
        let out = ws + ws.min((split.in_out + split.x_out) * tok_bytes);
        let inn = wr + wr.min((split.in_in + split.x_in) * tok_bytes);
        return (prof.inter_latency_us + per_msg * msgs as f64) * 1e-3
            + prof.shared_link_ms(out, inn);
    }
    let (xs, xr, xm) = (scratch.x_sent[g], scratch.x_recv[g], scratch.x_msgs[g]);
    let xb = (scratch.w_sent[g] - xs).max(scratch.w_recv[g] - xr);
    let intra = match &prof.msg_weights {
        Some(m) => m.ms(scratch.w_nsent[g] + scratch.w_count[g] - xm, xb),
        None => prof.p2p_ms(xb),
    };
    let per_msg = prof.msg_weights.map(|m| m.per_msg_us);
    // a NIC is full duplex: the larger direction
    intra.max(prof.nic_ms(xm, xs.max(xr), per_msg))
}

/// A replayed `llep-auto` row paid for its own decision in its overhead
/// phase: replay plans EP as well, clones its arbiter (a whole profile)
/// and prices both plans, per layer. The twins of replayed rows charge it
/// (`sim::accuracy`); `simulate` and `tune` price the gate's choice alone,
/// as an implementation that decides in microseconds would run it.
pub fn charge_auto(r: &mut crate::results::ResultRow, prof: &Profile) {
    let ms = auto_decision_ms(prof);
    r.t_overhead_ms += ms;
    r.t_total_ms += ms;
}

/// What `llep-auto`'s decision costs per layer, ms (0 without a layer fit).
pub fn auto_decision_ms(prof: &Profile) -> f64 {
    prof.layer_fit.map_or(0.0, |f| f.auto_us * 1e-3)
}

/// Weight transfers per GPU (one full expert per transfer entry,
/// duplicates too) into `scratch`: bytes and messages each way, peers, and
/// the part that crosses nodes on `gpn` GPUs per node. Returns the bytes
/// moved and the bytes crossing nodes.
fn account_weights(
    plan: &Plan,
    shape: &Shape,
    gpn: usize,
    scratch: &mut CostScratch,
) -> (u64, u64) {
    let p = plan.gpus;
    for v in [
        &mut scratch.w_sent,
        &mut scratch.w_recv,
        &mut scratch.w_count,
        &mut scratch.w_nsent,
        &mut scratch.w_nin,
        &mut scratch.w_nout,
    ] {
        v.clear();
        v.resize(p, 0);
    }
    // all false between calls (the entries set below are unset at the
    // end), so only a new size costs a fill
    if scratch.w_peer.len() != p * p {
        scratch.w_peer.clear();
        scratch.w_peer.resize(p * p, false);
    }
    let multi = gpn < p;
    if multi {
        for v in [
            &mut scratch.x_sent,
            &mut scratch.x_recv,
            &mut scratch.x_msgs,
        ] {
            v.clear();
            v.resize(p, 0);
        }
    }
    let mut inter_node_bytes = 0u64;
    let mut transfer_bytes = 0;
    if !plan.free_transfers {
        for t in &plan.transfers {
            let (src, dst) = (t.src as usize, t.dst as usize);
            scratch.w_sent[src] += shape.expert_bytes;
            scratch.w_recv[dst] += shape.expert_bytes;
            scratch.w_count[dst] += 1;
            scratch.w_nsent[src] += 1;
            if !scratch.w_peer[src * p + dst] {
                scratch.w_peer[src * p + dst] = true;
                scratch.w_nout[src] += 1;
                scratch.w_nin[dst] += 1;
            }
            transfer_bytes += shape.expert_bytes;
            if multi && src / gpn != dst / gpn {
                // the NIC's share ([`price`] takes it off the intra-node totals)
                scratch.x_sent[src] += shape.expert_bytes;
                scratch.x_recv[dst] += shape.expert_bytes;
                scratch.x_msgs[src] += 1;
                scratch.x_msgs[dst] += 1;
                inter_node_bytes += shape.expert_bytes;
            }
        }
    }
    if !plan.free_transfers {
        for t in &plan.transfers {
            let (src, dst) = (t.src as usize, t.dst as usize);
            scratch.w_peer[src * p + dst] = false;
        }
    }
    (transfer_bytes, inter_node_bytes)
}

/// GPUs per node under the profile's topology (all `p` on one node, or
/// when the node count does not divide `p`, which callers check first).
fn gpus_per_node(prof: &Profile, p: usize) -> usize {
    let nodes = prof.nodes.max(1) as usize;
    if nodes > 1 && p % nodes == 0 {
        p / nodes
    } else {
        p
    }
}

/// GPU `g`'s token exchange split by link: the slower of its intra-node
/// part (the single-node formula on those peers) and its NIC part, in ms;
/// and the bytes it sends across nodes. On a shared link
/// ([`Profile::inter_shared`]: pseudo-nodes over one host's sockets,
/// where the pairs inside a pseudo-node cross the same transport) every
/// byte the GPU sends or receives is on that one link.
fn split_exchange(s: &NodeSplit, tok_bytes: u64, prof: &Profile) -> (f64, u64) {
    let NodeSplit {
        in_out,
        in_in,
        x_out,
        x_in,
        in_msgs,
        x_msgs,
    } = *s;
    if prof.inter_shared {
        let (out, inn) = ((in_out + x_out) * tok_bytes, (in_in + x_in) * tok_bytes);
        if out + inn == 0 {
            return (0.0, 0);
        }
        let per_msg = prof.msg_tokens.map_or(0.0, |m| m.per_msg_us);
        let fixed = (prof.inter_latency_us + per_msg * (in_msgs + x_msgs) as f64) * 1e-3;
        return (fixed + prof.shared_link_ms(out, inn), x_out * tok_bytes);
    }
    let in_b = in_out.max(in_in) * tok_bytes;
    let x_b = x_out.max(x_in) * tok_bytes;
    let intra = match &prof.msg_tokens {
        Some(m) => m.ms(in_msgs, in_b),
        None => prof.link_ms(in_b),
    };
    let nic = if x_b == 0 {
        0.0
    } else {
        prof.nic_ms(x_msgs, x_b, prof.msg_tokens.map(|m| m.per_msg_us))
    };
    (intra.max(nic), x_out * tok_bytes)
}

#[cfg(test)]
#[path = "cost_tests.rs"]
mod tests;
