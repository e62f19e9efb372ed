//! The evaluator: one layer-step planned and priced under one setting,
//! with what all of a layer-step's plans share (its native dispatch
//! matrix, global counts, GEMM group times) worked out once.

use super::cost::{self, price, Cost, CostScratch, Shape};
use super::profile::Profile;
use super::train;
use crate::plan::topo::{TopoPlanner, Topology};
use crate::plan::{dispatch_matrix, DispatchMatrix, Plan, PlanParams, Planner, Policy};
use crate::results::ResultRow;

/// One simulated layer-step under one setting (the shared core of
/// `simulate`, `tune` and the simulated twins of replays).
#[derive(Debug, Default)]
pub struct Evaluator {
    planner: Planner,
    topo: TopoPlanner,
    plan: Plan,
    dm: DispatchMatrix,
    scratch: CostScratch,
    /// The dispatch matrix of the native placement of the loaded
    /// layer-step ([`Evaluator::load`]): every plan's starts from it.
    native: DispatchMatrix,
    /// Where the dispatch matrix of the last plan priced is.
    matrix: Matrix,
    /// [`Evaluator::price_from_sums`]: whether `eval_loaded` prices from
    /// `native_sums` where the profile allows.
    from_sums: bool,
    /// The sums of `native` (when `native_sums_ok`: once per layer-step).
    native_sums: cost::MatrixSums,
    native_sums_ok: bool,
    /// Whether `native` is the loaded layer-step's (with `from_sums`, a
    /// load sums the native matrix without building it).
    native_ok: bool,
    /// Group times of the loaded layer-step, for the profile and shape of
    /// `memo_key` (profile address, D, I).
    memo: cost::GroupMemo,
    memo_key: (usize, u64, u64),
}

/// Where the last priced plan's dispatch matrix is.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Matrix {
    /// In `dm`.
    #[default]
    Built,
    /// `native` itself: the plan moved no copy off its native GPU.
    Native,
    /// Not built: the plan was priced from sums.
    Unbuilt,
}

impl Evaluator {
    /// Let [`Evaluator::eval_loaded`] price a plan without building its
    /// dispatch matrix where the profile reads only the matrix's sums
    /// ([`cost::prices_from_sums`]: one node, no per-message model): the
    /// same cost, but no training row ([`Evaluator::row`] with
    /// `Pass::Train` reads the matrix) can follow such a price.
    pub fn price_from_sums(&mut self, on: bool) {
        self.from_sums = on;
    }

    /// Plan and price one layer. Returns the plan (borrowed) and its cost.
    pub fn eval(
        &mut self,
        per_rank: &[u64],
        global: &[u64],
        params: &PlanParams,
        policy: Policy,
        shape: &Shape,
        prof: &Profile,
    ) -> (&Plan, Cost) {
        self.plan_only(global, params, policy, prof);
        dispatch_matrix(&self.plan, per_rank, &mut self.dm);
        self.matrix = Matrix::Built;
        let cost = price(&self.plan, &self.dm, global, shape, prof, &mut self.scratch);
        (&self.plan, cost)
    }

    /// Take a layer-step's per-rank counts (`[gpus][experts]`) for
    /// [`Evaluator::eval_loaded`]: what all its plans share is worked out
    /// once, not once per policy and setting.
    pub fn load(&mut self, per_rank: &[u64], gpus: usize) {
        self.memo_key = (0, 0, 0);
        self.native_sums_ok = false;
        native_dispatch(per_rank, gpus, &mut self.native, None);
        self.native_ok = true;
    }

    /// [`Evaluator::load`], also summing the per-rank counts into the
    /// global counts per expert (`global`, as `Loads::global_into`).
    pub fn load_with_global(&mut self, per_rank: &[u64], gpus: usize, global: &mut Vec<u64>) {
        self.memo_key = (0, 0, 0);
        if self.from_sums {
            // the matrix is built only if a price needs it after all
            native_sums(per_rank, gpus, global, &mut self.native_sums);
            (self.native_sums_ok, self.native_ok) = (true, false);
            return;
        }
        self.native_sums_ok = false;
        native_dispatch(per_rank, gpus, &mut self.native, Some(global));
        self.native_ok = true;
    }

    /// [`Evaluator::eval`] of the loaded layer-step: the same plan and
    /// cost, the dispatch matrix built from the native one.
    pub fn eval_loaded(
        &mut self,
        per_rank: &[u64],
        global: &[u64],
        params: &PlanParams,
        policy: Policy,
        shape: &Shape,
        prof: &Profile,
    ) -> (&Plan, Cost) {
        self.plan_only(global, params, policy, prof);
        // group times carry over between this layer-step's policies only
        // under the same profile and shape
        let key = (
            prof as *const Profile as usize,
            shape.hidden,
            shape.intermediate,
        );
        if key != self.memo_key {
            self.memo.clear(self.plan.experts);
            self.memo_key = key;
        }
        let memo = Some(&mut self.memo);
        if self.from_sums && cost::prices_from_sums(prof, self.plan.gpus) {
            if !self.native_sums_ok {
                self.native_sums.fill(&self.native);
                self.native_sums_ok = true;
            }
            self.matrix = Matrix::Unbuilt;
            let (plan, sums, scratch) = (&self.plan, &self.native_sums, &mut self.scratch);
            let cost = cost::price_moved(plan, sums, per_rank, global, shape, prof, scratch, memo);
            return (&self.plan, cost);
        }
        if !self.native_ok {
            native_dispatch(per_rank, self.plan.gpus, &mut self.native, None);
            self.native_ok = true;
        }
        // a plan that moves no copy (ep) is priced on the native matrix
        // itself, not a copy of it
        self.matrix = if dispatch_from_native(&self.plan, per_rank, &self.native, &mut self.dm) {
            Matrix::Built
        } else {
            Matrix::Native
        };
        let dm = match self.matrix {
            Matrix::Native => &self.native,
            _ => &self.dm,
        };
        let cost = cost::price_memo(&self.plan, dm, global, shape, prof, &mut self.scratch, memo);
        (&self.plan, cost)
    }

    fn plan_only(&mut self, global: &[u64], params: &PlanParams, policy: Policy, prof: &Profile) {
        if policy == Policy::LlepTopo && prof.nodes > 1 {
            let topo = Topology::new(params.gpus, prof.nodes as usize)
                .expect("topology checked before simulation");
            self.topo
                .plan_into(global, params, topo, &mut self.plan)
                .expect("shape checked before simulation");
        } else {
            self.planner
                .plan_into(global, params, policy, &mut self.plan)
                .expect("shape checked before simulation");
        }
    }

    /// [`Evaluator::row`], a forward row taking `cost`'s per-GPU peaks
    /// (left empty) instead of a copy of them: one allocation less per row.
    pub fn row_taking_peaks(
        &self,
        cost: &mut Cost,
        base: &ResultRow,
        shape: &Shape,
        prof: &Profile,
        pass: train::Pass,
        recompute: bool,
    ) -> ResultRow {
        if pass == train::Pass::Train {
            // the backward adds to the forward's peaks
            return self.row(cost, base, shape, prof, pass, recompute);
        }
        let peaks = std::mem::take(&mut cost.peak_mem_per_gpu);
        row_with_peaks(&self.plan, cost, peaks, base)
    }

    /// Price memory with the weight communicator's connections a replay
    /// recorded (peers in and out, per GPU), or by the model's rule (`None`).
    pub fn set_recorded_links(&mut self, links: Option<(Vec<u64>, Vec<u64>)>) {
        self.scratch.recorded_links = links;
    }

    /// The row of the last plan priced with `cost` (its forward cost, or
    /// a bound such as `ideal`'s), with the backward added for training.
    pub fn row(
        &self,
        cost: &Cost,
        base: &ResultRow,
        shape: &Shape,
        prof: &Profile,
        pass: train::Pass,
        recompute: bool,
    ) -> ResultRow {
        let mut r = row_from(&self.plan, cost, base);
        if pass == train::Pass::Train {
            let dm = match self.matrix {
                Matrix::Built => &self.dm,
                Matrix::Native => &self.native,
                Matrix::Unbuilt => panic!("a training row after a price without its dispatch matrix (Evaluator::price_from_sums)"),
            };
            train::backward(&self.plan, dm, cost, shape, prof, recompute).apply(&mut r);
            r.recompute = recompute;
        }
        r
    }
}

/// The global counts (`global`) and the sums of the native dispatch
/// matrix (see [`native_dispatch`]) in one pass over the per-rank counts,
/// without the matrix: a rank's row sum is its copies, its diagonal entry
/// its copies of its own experts, and a GPU's column sum its experts'
/// global counts.
fn native_sums(per_rank: &[u64], gpus: usize, global: &mut Vec<u64>, sums: &mut cost::MatrixSums) {
    let n = per_rank.len() / gpus.max(1);
    let per = n / gpus.max(1);
    let [rows, cols, diag] = sums.parts_mut();
    global.clear();
    global.resize(n, 0);
    for (r, row) in per_rank.chunks_exact(n.max(1)).enumerate() {
        let mut copies = 0u64;
        for (g, &c) in global.iter_mut().zip(row) {
            *g += c;
            copies += c;
        }
        rows.push(copies);
        diag.push(row[r * per..(r + 1) * per].iter().sum());
    }
    cols.extend(
        global
            .chunks_exact(per.max(1))
            .map(|b| b.iter().sum::<u64>()),
    );
}

/// The dispatch matrix with every expert on its native GPU: rank `r`
/// sends GPU `g` its copies of `g`'s experts (a block sum per pair).
fn native_dispatch(
    per_rank: &[u64],
    gpus: usize,
    out: &mut DispatchMatrix,
    global: Option<&mut Vec<u64>>,
) {
    let n = per_rank.len() / gpus.max(1);
    let per = (n / gpus.max(1)).max(1);
    out.gpus = gpus;
    out.send.clear();
    out.send.reserve(gpus * gpus);
    let Some(g) = global else {
        for row in per_rank.chunks_exact(n.max(1)) {
            out.send
                .extend(row.chunks_exact(per).map(|b| b.iter().sum::<u64>()));
        }
        return;
    };
    g.clear();
    g.resize(n, 0);
    // one pass over each rank's row (read once from memory): its blocks
    // summed while they are added to the global counts; the usual block
    // widths get a loop the compiler can unroll and vectorise
    match if per * gpus == n { per } else { 0 } {
        1 => native_rows::<1>(per_rank, n, g, &mut out.send),
        2 => native_rows::<2>(per_rank, n, g, &mut out.send),
        4 => native_rows::<4>(per_rank, n, g, &mut out.send),
        8 => native_rows::<8>(per_rank, n, g, &mut out.send),
        16 => native_rows::<16>(per_rank, n, g, &mut out.send),
        _ => {
            for row in per_rank.chunks_exact(n.max(1)) {
                for (o, c) in g.iter_mut().zip(row) {
                    *o += c;
                }
                out.send
                    .extend(row.chunks_exact(per).map(|b| b.iter().sum::<u64>()));
            }
        }
    }
}

/// [`native_dispatch`]'s pass for blocks of `K` experts per GPU.
fn native_rows<const K: usize>(per_rank: &[u64], n: usize, g: &mut [u64], send: &mut Vec<u64>) {
    for row in per_rank.chunks_exact(n.max(1)) {
        // `extend` over a zip of exact chunks reserves once and writes
        // without a capacity check per block (`push` had one)
        let blocks = g.chunks_exact_mut(K).zip(row.chunks_exact(K));
        send.extend(blocks.map(|(gb, rb)| {
            let (gb, rb): (&mut [u64; K], &[u64; K]) = (
                gb.try_into().expect("K wide"),
                rb.try_into().expect("K wide"),
            );
            let mut sum = 0u64;
            for i in 0..K {
                gb[i] += rb[i];
                sum += rb[i];
            }
            sum
        }));
    }
}

/// [`dispatch_matrix`] from the native matrix: only the experts a plan
/// spills are visited (the same arithmetic, so the same matrix). Returns
/// false, leaving `out` as it was, where the plan spills nothing (the
/// matrix is then `native`).
fn dispatch_from_native(
    plan: &Plan,
    per_rank: &[u64],
    native: &DispatchMatrix,
    out: &mut DispatchMatrix,
) -> bool {
    debug_assert_eq!(native.gpus, plan.gpus);
    if plan.spills.is_empty() {
        return false;
    }
    out.gpus = plan.gpus;
    out.send.clone_from(&native.send);
    out.move_spilled(plan, per_rank);
    true
}

/// Fill a result row from a plan and its cost.
pub fn row_from(plan: &Plan, cost: &Cost, base: &ResultRow) -> ResultRow {
    row_with_peaks(plan, cost, cost.peak_mem_per_gpu.clone(), base)
}

/// [`row_from`] with `peaks` for the cost's per-GPU peaks.
fn row_with_peaks(plan: &Plan, cost: &Cost, peaks: Vec<u64>, base: &ResultRow) -> ResultRow {
    let mut r = base.clone();
    r.fill_plan_stats(plan);
    r.t_overhead_ms = cost.overhead_ms;
    r.t_dispatch_ms = cost.dispatch_ms;
    r.t_transfer_ms = cost.transfer_ms;
    r.t_compute_ms = cost.compute_ms;
    r.t_combine_ms = cost.combine_ms;
    r.t_total_ms = cost.total_ms;
    r.overlap = cost.overlap_chunks > 1;
    r.overlap_chunks = if r.overlap { cost.overlap_chunks } else { 0 };
    r.cuda_graphs = cost.cuda_graphs;
    r.exchange = cost.exchange.as_str().into();
    r.gemm = if cost.fused { "fused" } else { "lt" }.into();
    r.t_exposed_comm_ms = Some(cost.total_ms - cost.overhead_ms - cost.compute_ms);
    r.transfer_bytes = cost.transfer_bytes;
    r.inter_node_bytes = cost.inter_node_bytes;
    r.dispatch_bytes_max = cost.dispatch_bytes_max;
    r.peak_mem_max_bytes = peaks.iter().copied().max().unwrap_or(0);
    r.peak_mem_per_gpu = peaks;
    r.oom = cost.oom;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Gate;
    use crate::trace::tokens::SplitMix64;

    #[test]
    fn the_native_matrix_and_global_counts_are_block_and_column_sums() {
        let mut rng = SplitMix64::new(5);
        let mut ev = Evaluator::default();
        for _ in 0..80 {
            let gpus = [1, 2, 3, 4, 8, 16][rng.below(6) as usize];
            // block widths with and without their own unrolled pass
            let per = 1 + rng.below(20) as usize;
            let n = gpus * per;
            let per_rank: Vec<u64> = (0..gpus * n).map(|_| rng.below(1000)).collect();
            let mut global = vec![7u64; 3];
            ev.load_with_global(&per_rank, gpus, &mut global);
            let mut want_global = vec![0u64; n];
            let mut want = vec![0u64; gpus * gpus];
            for r in 0..gpus {
                for e in 0..n {
                    want_global[e] += per_rank[r * n + e];
                    want[r * gpus + e / per] += per_rank[r * n + e];
                }
            }
            assert_eq!(global, want_global, "{gpus} GPUs x {per}");
            assert_eq!(ev.native.send, want, "{gpus} GPUs x {per}");
            // the sums of that matrix, summed without building it
            let mut sums_of = cost::MatrixSums::default();
            sums_of.fill(&ev.native);
            let mut by_sums = Evaluator::default();
            by_sums.price_from_sums(true);
            let mut g2 = vec![1u64; 5];
            by_sums.load_with_global(&per_rank, gpus, &mut g2);
            assert_eq!(g2, want_global);
            assert!(by_sums.native_sums_ok && !by_sums.native_ok);
            assert_eq!(by_sums.native_sums, sums_of, "{gpus} GPUs x {per}");
            let with_global = ev.native.clone();
            ev.load(&per_rank, gpus);
            assert_eq!(ev.native, with_global);
        }
    }

    #[test]
    fn the_dispatch_matrix_from_the_native_one_is_the_planners() {
        let mut rng = SplitMix64::new(11);
        let (mut ev, mut want) = (Evaluator::default(), DispatchMatrix::default());
        let mut planner = Planner::default();
        let mut plan = Plan::default();
        for _ in 0..60 {
            let gpus = [2, 4, 8][rng.below(3) as usize];
            let n = gpus * (1 + rng.below(6) as usize);
            let hot = rng.below(n as u64) as usize;
            let per_rank: Vec<u64> = (0..gpus * n)
                .map(|i| rng.below(50) + if i % n == hot { 400 } else { 0 })
                .collect();
            let mut global = vec![0u64; n];
            for (i, c) in per_rank.iter().enumerate() {
                global[i % n] += c;
            }
            ev.load(&per_rank, gpus);
            for policy in [Policy::Ep, Policy::Llep, Policy::Ideal] {
                let params = PlanParams {
                    gpus,
                    alpha: 1.0,
                    min_gemm: rng.below(64),
                    gate: Gate::Always,
                };
                planner
                    .plan_into(&global, &params, policy, &mut plan)
                    .unwrap();
                dispatch_matrix(&plan, &per_rank, &mut want);
                let moved = dispatch_from_native(&plan, &per_rank, &ev.native, &mut ev.dm);
                let got = if moved { &ev.dm } else { &ev.native };
                assert_eq!(got, &want, "{policy:?} on {gpus} GPUs, {n} experts");
            }
        }
    }
}
