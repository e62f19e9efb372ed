//! EPLB: DeepSeek's expert-parallelism load balancer, reproduced exactly.
//!
//! A port of `rebalance_experts` from DeepSeek's EPLB (`eplb.py`,
//! <https://github.com/deepseek-ai/EPLB>, MIT) for one layer: given each
//! logical expert's load, choose how many physical replicas each expert gets
//! and on which GPU each replica lives. Two policies, as in `eplb.py`:
//! - hierarchical (the number of expert groups is a multiple of the number
//!   of nodes): pack expert groups onto nodes, replicate experts within each
//!   node, then pack the node's replicas onto its GPUs;
//! - global (otherwise, or one group on one node): the same steps with one
//!   group and one node.
//!
//! Exactness. `eplb.py` computes in float32 with PyTorch on the CPU, and so
//! does this port, operation for operation:
//! - group loads are summed in the order of PyTorch's CPU `sum` kernel
//!   (ATen's `cascade_sum`: four interleaved partial sums over SIMD
//!   registers of 8 floats when a group fills one, scalar otherwise; see
//!   [`CpuCapability::sum_lanes`] for why AVX512 CPUs also use 8);
//! - `weight / count` is an IEEE float32 division;
//! - the replica greedy takes the first expert with the largest
//!   `load / replicas` (PyTorch's `max` keeps the first maximum);
//! - the packing greedy sorts descending with PyTorch's CPU `sort`, which
//!   (with `stable=False`) is libstdc++'s `std::sort` on (value, index)
//!   pairs compared by value only. That sort is not stable, so the order of
//!   equal loads is whatever introsort leaves; [`std_sort_desc`] replays
//!   introsort step for step so that ties land where PyTorch puts them;
//! - the pack chosen is the first among the not-full packs with the least
//!   float32 accumulated load (Python's `min` keeps the first minimum).
//!
//! Checked against the real `eplb.py` under PyTorch 2.11.0 on an AVX512 Xeon
//! (`tests/data/eplb_fixture.json`): its sums bit for bit, its tie order on
//! every tie-heavy row, and 4000 placements element for element, ties
//! included. Where a sort meets equal loads, [`EplbPlacement::sort_ties`]
//! says so and what rests on their order (see [`SortTies`]): a PyTorch
//! build that sorted float32 otherwise (x86-simd-sort was proposed for x86
//! sorts, pytorch/pytorch#149362) would agree on those layers only in what
//! [`SortTies`] names as fixed.

use serde::Serialize;

/// The CPU capability PyTorch dispatches its kernels for, as
/// `torch.backends.cpu.get_cpu_capability()` names it, on the machine whose
/// `eplb.py` run is reproduced. Only group loads (the hierarchical policy's
/// first step) depend on it, through the order of the sum's additions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum CpuCapability {
    /// `DEFAULT`: the portable build.
    Default,
    /// `AVX2`.
    #[default]
    Avx2,
    /// `AVX512`.
    Avx512,
}

impl CpuCapability {
    /// Parse PyTorch's name for it (`DEFAULT`, `AVX2`, `AVX512`); `None`
    /// for any other (non-x86 builds), whose sum order is not known here.
    pub fn from_torch(name: &str) -> Option<Self> {
        match name.trim().to_ascii_uppercase().as_str() {
            "DEFAULT" => Some(CpuCapability::Default),
            "AVX2" => Some(CpuCapability::Avx2),
            "AVX512" => Some(CpuCapability::Avx512),
            _ => None,
        }
    }

    /// Floats per SIMD register in the `sum` kernel PyTorch runs: 8 on all
    /// three. ATen registers its sum kernel (`SumKernel.cpp`) with
    /// `REGISTER_DISPATCH`, which for the AVX512 build registers nothing, so
    /// AVX512 CPUs run the AVX2 kernel (`Vectorized<float>` of 8); the
    /// portable build's `Vectorized<float>` is 32 bytes too, added lane by
    /// lane, so the same order. (PyTorch 2.11's own sums on an AVX512 Xeon,
    /// `tests/data/eplb_fixture.json`, agree with 8 lanes on every row, and
    /// with 16 on 60 of 100.)
    pub fn sum_lanes(self) -> usize {
        match self {
            CpuCapability::Default | CpuCapability::Avx2 | CpuCapability::Avx512 => 8,
        }
    }
}

/// EPLB inputs besides the loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EplbParams {
    /// GPUs; the physical experts (experts + redundant) must be a multiple.
    pub gpus: usize,
    /// Redundant physical experts (replicas beyond one per expert).
    pub redundant: usize,
    /// Server nodes; must divide `gpus`.
    pub nodes: usize,
    /// Expert groups; must divide the number of experts. When it is not a
    /// multiple of `nodes`, EPLB uses its global policy.
    pub groups: usize,
    /// Where PyTorch ran: picks the order of the group sums.
    pub cpu: CpuCapability,
}

impl EplbParams {
    /// One node, one group: the global policy.
    pub fn new(gpus: usize, redundant: usize) -> Self {
        EplbParams {
            gpus,
            redundant,
            nodes: 1,
            groups: 1,
            cpu: CpuCapability::default(),
        }
    }
}

/// Which of `eplb.py`'s two policies planned the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EplbPolicy {
    Hierarchical,
    Global,
}

impl EplbPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            EplbPolicy::Hierarchical => "hierarchical",
            EplbPolicy::Global => "global",
        }
    }
}

/// Whether a packing sort met equal loads, and whose: what of the
/// placement rests on how the sort orders equal values (the worst kind met).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SortTies {
    /// Every sorted load was distinct: the placement follows from the loads.
    None,
    /// Only replicas of one expert were equal: another order changes which
    /// replica rank sits where (`log2phy`), never `phy2log`, `logcnt` or
    /// the GPU loads.
    Replicas,
    /// Replicas of different experts had equal loads: another order swaps
    /// them between GPUs (`phy2log`), never `logcnt` or the GPU loads.
    Loads,
    /// Expert groups had equal loads: another order swaps them between
    /// nodes, which can change which experts are replicated (`logcnt`) and
    /// the GPU loads; only each node's total load is fixed.
    Groups,
}

/// One layer's placement, with `eplb.py`'s outputs for that layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EplbPlacement {
    pub policy: EplbPolicy,
    /// Logical expert of each physical slot; slot `s` is on GPU
    /// `s / (slots / gpus)`.
    pub phy2log: Vec<usize>,
    /// Physical slots of each logical expert by replica rank, padded with
    /// -1 to the largest replica count (as `eplb.py` returns it).
    pub log2phy: Vec<Vec<i64>>,
    /// Replicas of each logical expert.
    pub logcnt: Vec<usize>,
    /// Each GPU's load: the float32 sum, slot by slot, of
    /// `load / replicas` of the expert in each slot.
    pub gpu_loads: Vec<f32>,
    pub sort_ties: SortTies,
}

impl EplbPlacement {
    pub fn max_gpu_load(&self) -> f32 {
        self.gpu_loads.iter().copied().fold(0.0, f32::max)
    }
}

/// Bad EPLB input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EplbError {
    #[error("no expert loads given")]
    NoExperts,
    #[error("at most 65536 experts are supported (got {0})")]
    TooManyExperts(usize),
    #[error("at most 65536 redundant experts are supported (got {0})")]
    TooManyRedundant(usize),
    #[error("the number of GPUs must be at least 1")]
    NoGpus,
    #[error("the number of nodes must be at least 1")]
    NoNodes,
    #[error("the number of expert groups must be at least 1")]
    NoGroups,
    #[error("load of expert {expert} is {value}: loads must be finite and >= 0")]
    BadLoad { expert: usize, value: f64 },
    #[error("{experts} experts cannot be split into {groups} groups: the number of groups must divide the number of experts")]
    GroupsNotDividingExperts { experts: usize, groups: usize },
    #[error("{gpus} GPUs cannot be split over {nodes} nodes: the number of nodes must divide the number of GPUs")]
    NodesNotDividingGpus { gpus: usize, nodes: usize },
    #[error("{experts} experts + {redundant} redundant = {physical} physical experts cannot be split over {gpus} GPUs: the redundant count must make the total a multiple of the GPUs (e.g. {suggest})")]
    ReplicasNotMultipleOfGpus {
        experts: usize,
        redundant: usize,
        physical: usize,
        gpus: usize,
        suggest: usize,
    },
}

/// Check the shape and the loads; EPLB's own asserts, plus the two that its
/// global fallback skips (groups dividing experts, nodes dividing GPUs).
pub fn check(loads: &[f64], p: &EplbParams) -> Result<(), EplbError> {
    let e = loads.len();
    if e == 0 {
        return Err(EplbError::NoExperts);
    }
    if e > 1 << 16 {
        return Err(EplbError::TooManyExperts(e));
    }
    if p.redundant > 1 << 16 {
        return Err(EplbError::TooManyRedundant(p.redundant));
    }
    if p.gpus == 0 {
        return Err(EplbError::NoGpus);
    }
    if p.nodes == 0 {
        return Err(EplbError::NoNodes);
    }
    if p.groups == 0 {
        return Err(EplbError::NoGroups);
    }
    if let Some((i, &v)) = loads
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
    {
        return Err(EplbError::BadLoad {
            expert: i,
            value: v,
        });
    }
    if e % p.groups != 0 {
        return Err(EplbError::GroupsNotDividingExperts {
            experts: e,
            groups: p.groups,
        });
    }
    if p.gpus % p.nodes != 0 {
        return Err(EplbError::NodesNotDividingGpus {
            gpus: p.gpus,
            nodes: p.nodes,
        });
    }
    let physical = e + p.redundant;
    if physical % p.gpus != 0 {
        return Err(EplbError::ReplicasNotMultipleOfGpus {
            experts: e,
            redundant: p.redundant,
            physical,
            gpus: p.gpus,
            suggest: physical.div_ceil(p.gpus) * p.gpus - e,
        });
    }
    Ok(())
}

/// Plan one layer. Loads are rounded to float32 first, as `eplb.py`'s
/// `weight.float()` does.
pub fn rebalance(loads: &[f64], p: &EplbParams) -> Result<EplbPlacement, EplbError> {
    check(loads, p)?;
    let w: Vec<f32> = loads.iter().map(|&x| x as f32).collect();
    let physical = w.len() + p.redundant;
    let (groups, nodes) = if p.groups % p.nodes == 0 {
        (p.groups, p.nodes)
    } else {
        (1, 1)
    };
    // `eplb.py` calls one group on one node "hierarchical" when asked for
    // it, but that is the global computation, and is named so here.
    let policy = if (groups, nodes) == (1, 1) {
        EplbPolicy::Global
    } else {
        EplbPolicy::Hierarchical
    };
    let h = hierarchical(&w, physical, groups, nodes, p.gpus, p.cpu.sum_lanes());
    let maxcnt = h.logcnt.iter().copied().max().unwrap_or(1);
    let mut log2phy = vec![vec![-1i64; maxcnt]; w.len()];
    for (slot, (&e, &r)) in h.phy2log.iter().zip(&h.phyrank).enumerate() {
        log2phy[e][r] = slot as i64;
    }
    let gpu_loads = gpu_loads(&w, &h.phy2log, &h.logcnt, p.gpus);
    Ok(EplbPlacement {
        policy,
        phy2log: h.phy2log,
        log2phy,
        logcnt: h.logcnt,
        gpu_loads,
        sort_ties: h.ties,
    })
}

/// Per-GPU load of a placement: for each GPU, the float32 sum over its
/// slots in slot order of `load / replicas`.
pub fn gpu_loads(w: &[f32], phy2log: &[usize], logcnt: &[usize], gpus: usize) -> Vec<f32> {
    let per = phy2log.len() / gpus.max(1);
    phy2log
        .chunks(per.max(1))
        .map(|slots| {
            slots
                .iter()
                .fold(0.0f32, |acc, &e| acc + w[e] / logcnt[e] as f32)
        })
        .collect()
}

struct Hier {
    phy2log: Vec<usize>,
    phyrank: Vec<usize>,
    logcnt: Vec<usize>,
    ties: SortTies,
}

/// `rebalance_experts_hierarchical` for one layer. "mlog" numbers experts
/// node by node after the groups are packed onto nodes.
fn hierarchical(
    w: &[f32],
    physical: usize,
    groups: usize,
    nodes: usize,
    gpus: usize,
    lanes: usize,
) -> Hier {
    let e = w.len();
    let gsize = e / groups;
    let groups_per_node = groups / nodes;
    let per_gpu = physical / gpus;
    let mut ties = SortTies::None;

    // Step 1: groups to nodes by their summed load.
    let group_loads: Vec<f32> = w.chunks(gsize).map(|g| torch_sum(g, lanes)).collect();
    let (gpack, grank, t) = balanced_packing(&group_loads, nodes, None);
    ties = ties.max(t);
    let log2mlog: Vec<usize> = (0..e)
        .map(|x| {
            let g = x / gsize;
            (gpack[g] * groups_per_node + grank[g]) * gsize + x % gsize
        })
        .collect();
    let mlog2log = inverse(&log2mlog);

    // Steps 2 and 3, node by node: replicate, then pack onto the node's GPUs.
    let per_node = e / nodes;
    let phy_per_node = physical / nodes;
    let mut phy2log = Vec::with_capacity(physical);
    let mut phyrank = Vec::with_capacity(physical);
    let mut mlogcnt = Vec::with_capacity(e);
    for n in 0..nodes {
        let tokens: Vec<f32> = (0..per_node)
            .map(|j| w[mlog2log[n * per_node + j]])
            .collect();
        let (phy2mlog, rank, cnt) = replicate_experts(&tokens, phy_per_node);
        let per_phy: Vec<f32> = phy2mlog
            .iter()
            .map(|&m| tokens[m] / cnt[m] as f32)
            .collect();
        let (pack, rk, t) = balanced_packing(&per_phy, gpus / nodes, Some(&phy2mlog));
        ties = ties.max(t);
        let phy2pphy: Vec<usize> = pack
            .iter()
            .zip(&rk)
            .map(|(&p, &r)| p * per_gpu + r)
            .collect();
        for &phy in &inverse(&phy2pphy) {
            phy2log.push(mlog2log[n * per_node + phy2mlog[phy]]);
            phyrank.push(rank[phy]);
        }
        mlogcnt.extend(cnt);
    }
    let logcnt = log2mlog.iter().map(|&m| mlogcnt[m]).collect();
    Hier {
        phy2log,
        phyrank,
        logcnt,
        ties,
    }
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// `replicate_experts`: give each new replica to the first expert with the
/// largest load per replica. Returns (phy2log, replica rank, count).
fn replicate_experts(w: &[f32], physical: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let mut phy2log: Vec<usize> = (0..w.len()).collect();
    let mut rank = vec![0; w.len()];
    let mut cnt = vec![1usize; w.len()];
    for _ in w.len()..physical {
        let mut best = 0;
        let mut best_v = w[0] / cnt[0] as f32;
        for (j, (&x, &c)) in w.iter().zip(&cnt).enumerate().skip(1) {
            let v = x / c as f32;
            if v > best_v {
                best = j;
                best_v = v;
            }
        }
        phy2log.push(best);
        rank.push(cnt[best]);
        cnt[best] += 1;
    }
    (phy2log, rank, cnt)
}

/// `balanced_packing`: items by load descending (PyTorch's sort), each to
/// the first not-full pack with the least load. `owner` names the expert
/// behind each replica (`None`: the items are groups), to classify ties.
/// Returns (pack, rank in pack, ties met by the sort).
fn balanced_packing(
    w: &[f32],
    packs: usize,
    owner: Option<&[usize]>,
) -> (Vec<usize>, Vec<usize>, SortTies) {
    let per_pack = w.len() / packs;
    if per_pack == 1 {
        return ((0..w.len()).collect(), vec![0; w.len()], SortTies::None);
    }
    let order = std_sort_desc(w);
    let mut ties = SortTies::None;
    for pair in order.windows(2) {
        if w[pair[0]] == w[pair[1]] {
            ties = ties.max(match owner {
                None => SortTies::Groups,
                Some(o) if o[pair[0]] == o[pair[1]] => SortTies::Replicas,
                Some(_) => SortTies::Loads,
            });
        }
    }
    let mut pack_load = vec![0.0f32; packs];
    let mut pack_items = vec![0usize; packs];
    let mut pack = vec![0; w.len()];
    let mut rank = vec![0; w.len()];
    for &item in &order {
        let mut best: Option<usize> = None;
        for p in (0..packs).filter(|&p| pack_items[p] < per_pack) {
            if best.is_none_or(|b| pack_load[p] < pack_load[b]) {
                best = Some(p);
            }
        }
        let b = best.expect("a pack has room: items = packs * per_pack");
        pack[item] = b;
        rank[item] = pack_items[b];
        pack_load[b] += w[item];
        pack_items[b] += 1;
    }
    (pack, rank, ties)
}

/// PyTorch's float32 CPU `sum` of one contiguous row, `lanes` floats per
/// SIMD register ([`CpuCapability::sum_lanes`]). `eplb.py` sums
/// `weight.unflatten(-1, (groups, size)).sum(-1)`: each group is a
/// contiguous innermost row, which ATen's `cascade_sum` gives to
/// `vectorized_inner_sum` when the row fills a register, and otherwise to
/// `scalar_inner_sum` (or, for one group, `scalar_outer_sum` with one row:
/// the same `row_sum`). One thread: ATen splits a sum across threads only
/// from 32768 elements (its grain size), a layer size this does not model.
pub fn torch_sum(x: &[f32], lanes: usize) -> f32 {
    // The kernel accumulates into an output zeroed beforehand: `0 + sum`.
    if x.len() < lanes {
        return 0.0 + row_sum(x, 1, x.len())[0];
    }
    let nvec = x.len() / lanes;
    let vec_acc = row_sum(&x[..nvec * lanes], lanes, nvec);
    let mut acc = 0.0f32;
    for &v in &x[nvec * lanes..] {
        acc += v;
    }
    for &v in &vec_acc {
        acc += v;
    }
    0.0 + acc
}

/// PyTorch's `row_sum` over `size` items of `width` floats each (one float,
/// or one SIMD register): four interleaved partial sums, the leftover items
/// into the first, then the partials folded in order. Lane-wise throughout.
fn row_sum(x: &[f32], width: usize, size: usize) -> Vec<f32> {
    const ILP: usize = 4;
    let size_ilp = size / ILP;
    let mut partial = multi_row_sum(x, width, size_ilp);
    let item = |i: usize| &x[i * width..(i + 1) * width];
    for i in size_ilp * ILP..size {
        add_into(&mut partial[0], item(i));
    }
    let (first, rest) = partial.split_at_mut(1);
    for p in rest.iter() {
        add_into(&mut first[0], p);
    }
    partial.swap_remove(0)
}

/// PyTorch's `multi_row_sum` with 4 rows: row `i` holds items `4i..4i+4`;
/// a cascade of 4 levels, each flushed into the next every `2^level_power`
/// rows, keeps long sums accurate.
fn multi_row_sum(x: &[f32], width: usize, size: usize) -> Vec<Vec<f32>> {
    const ROWS: usize = 4;
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 2 {
        1
    } else {
        (size - 1).ilog2() as usize + 1
    };
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = vec![vec![vec![0.0f32; width]; ROWS]; LEVELS];
    let add_row = |level: &mut [Vec<f32>], i: usize| {
        for (k, a) in level.iter_mut().enumerate() {
            add_into(a, &x[(i * ROWS + k) * width..(i * ROWS + k + 1) * width]);
        }
    };
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (a, b) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                add_into(a, b);
                b.fill(0.0);
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        add_row(&mut acc[0], i);
        i += 1;
    }
    // Fold the levels into the first, in level order.
    let mut levels = acc.into_iter();
    let mut out = levels.next().expect("LEVELS > 0");
    for level in levels {
        for (a, b) in out.iter_mut().zip(&level) {
            add_into(a, b);
        }
    }
    out
}

fn add_into(acc: &mut [f32], x: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// Indices of `w` sorted descending the way PyTorch's CPU
/// `sort(descending=True)` leaves them: libstdc++'s `std::sort` (introsort:
/// median-of-three quicksort down to blocks of 16, heapsort past the depth
/// limit, then insertion sort) on (value, index) pairs, comparing values
/// only. Equal values keep no guaranteed order; this replays the algorithm
/// so they land where libstdc++ puts them.
pub fn std_sort_desc(w: &[f32]) -> Vec<usize> {
    let mut v: Vec<(f32, usize)> = w.iter().copied().zip(0..).collect();
    introsort::sort(&mut v);
    v.into_iter().map(|(_, i)| i).collect()
}

mod introsort {
    //! libstdc++'s `std::sort`, step for step, for (value, index) pairs
    //! ordered by value descending (PyTorch's `KeyValueCompDesc`).

    type Item = (f32, usize);
    const THRESHOLD: usize = 16;

    fn less(a: &Item, b: &Item) -> bool {
        a.0 > b.0
    }

    pub fn sort(v: &mut [Item]) {
        if v.len() < 2 {
            return;
        }
        let depth = 2 * v.len().ilog2() as usize;
        introsort_loop(v, depth);
        final_insertion_sort(v);
    }

    #[cfg(test)]
    pub fn sort_with_depth_for_test(v: &mut [Item], depth: usize) {
        introsort_loop(v, depth);
        final_insertion_sort(v);
    }

    fn introsort_loop(v: &mut [Item], mut depth: usize) {
        let mut last = v.len();
        while last > THRESHOLD {
            if depth == 0 {
                heap_sort(&mut v[..last]);
                return;
            }
            depth -= 1;
            let cut = partition_pivot(&mut v[..last]);
            introsort_loop(&mut v[cut..last], depth);
            last = cut;
        }
    }

    fn partition_pivot(v: &mut [Item]) -> usize {
        let n = v.len();
        let mid = n / 2;
        move_median_to_first(v, 1, mid, n - 1);
        unguarded_partition(v, 1, n)
    }

    fn move_median_to_first(v: &mut [Item], a: usize, b: usize, c: usize) {
        let pick = if less(&v[a], &v[b]) {
            if less(&v[b], &v[c]) {
                b
            } else if less(&v[a], &v[c]) {
                c
            } else {
                a
            }
        } else if less(&v[a], &v[c]) {
            a
        } else if less(&v[b], &v[c]) {
            c
        } else {
            b
        };
        v.swap(0, pick);
    }

    /// Hoare partition of `v[first..last]` around the pivot at `v[0]`.
    fn unguarded_partition(v: &mut [Item], mut first: usize, mut last: usize) -> usize {
        loop {
            while less(&v[first], &v[0]) {
                first += 1;
            }
            last -= 1;
            while less(&v[0], &v[last]) {
                last -= 1;
            }
            if first >= last {
                return first;
            }
            v.swap(first, last);
            first += 1;
        }
    }

    fn final_insertion_sort(v: &mut [Item]) {
        if v.len() > THRESHOLD {
            insertion_sort(&mut v[..THRESHOLD]);
            for i in THRESHOLD..v.len() {
                unguarded_linear_insert(v, i);
            }
        } else {
            insertion_sort(v);
        }
    }

    fn insertion_sort(v: &mut [Item]) {
        for i in 1..v.len() {
            if less(&v[i], &v[0]) {
                let val = v[i];
                v.copy_within(0..i, 1);
                v[0] = val;
            } else {
                unguarded_linear_insert(v, i);
            }
        }
    }

    fn unguarded_linear_insert(v: &mut [Item], mut last: usize) {
        let val = v[last];
        while less(&val, &v[last - 1]) {
            v[last] = v[last - 1];
            last -= 1;
        }
        v[last] = val;
    }

    /// `std::__partial_sort(first, last, last)`: make_heap then sort_heap.
    fn heap_sort(v: &mut [Item]) {
        let len = v.len();
        if len >= 2 {
            let mut parent = (len - 2) / 2;
            loop {
                let val = v[parent];
                adjust_heap(v, parent, len, val);
                if parent == 0 {
                    break;
                }
                parent -= 1;
            }
        }
        let mut last = len;
        while last > 1 {
            last -= 1;
            let val = v[last];
            v[last] = v[0];
            adjust_heap(&mut v[..last], 0, last, val);
        }
    }

    fn adjust_heap(v: &mut [Item], mut hole: usize, len: usize, val: Item) {
        let top = hole;
        let mut child = hole;
        while child < (len.saturating_sub(1)) / 2 {
            child = 2 * (child + 1);
            if less(&v[child], &v[child - 1]) {
                child -= 1;
            }
            v[hole] = v[child];
            hole = child;
        }
        if len & 1 == 0 && len >= 2 && child == (len - 2) / 2 {
            child = 2 * (child + 1);
            v[hole] = v[child - 1];
            hole = child - 1;
        }
        // push_heap back up from the hole.
        while hole > top {
            let parent = (hole - 1) / 2;
            if !less(&v[parent], &val) {
                break;
            }
            v[hole] = v[parent];
            hole = parent;
        }
        v[hole] = val;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_is_descending_and_small_runs_keep_index_order() {
        let w = [3.0, 1.0, 3.0, 2.0, 1.0];
        assert_eq!(std_sort_desc(&w), vec![0, 2, 3, 1, 4]);
        let many: Vec<f32> = (0..200).map(|i| ((i * 37) % 11) as f32).collect();
        let o = std_sort_desc(&many);
        let mut seen = o.clone();
        seen.sort();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        assert!(o.windows(2).all(|p| many[p[0]] >= many[p[1]]));
    }

    #[test]
    fn heap_sort_replays_std_partial_sort() {
        // Orders from the real libstdc++ (tests/support/std_sort_cases.cpp).
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/std_sort_cases.json"
        );
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut checked = 0;
        for c in &cases {
            let values: Vec<f32> = serde_json::from_value(c["values"].clone()).unwrap();
            let want: Vec<usize> = serde_json::from_value(c["heap"].clone()).unwrap();
            if values.len() <= 16 {
                continue; // introsort never heapsorts so short a range
            }
            let mut v: Vec<(f32, usize)> = values.iter().copied().zip(0..).collect();
            // depth 0: the heapsort fallback over the whole range
            introsort::sort_with_depth_for_test(&mut v, 0);
            let got: Vec<usize> = v.into_iter().map(|(_, i)| i).collect();
            assert_eq!(got, want, "{values:?}");
            checked += 1;
        }
        assert!(checked > 300, "{checked}");
    }

    #[test]
    fn cpu_capability_names_and_sum_width() {
        for (name, cap) in [
            ("DEFAULT", CpuCapability::Default),
            ("AVX2", CpuCapability::Avx2),
            ("avx512", CpuCapability::Avx512),
        ] {
            assert_eq!(CpuCapability::from_torch(name), Some(cap));
            assert_eq!(cap.sum_lanes(), 8);
        }
        assert_eq!(CpuCapability::from_torch("SVE256"), None);
    }

    #[test]
    fn torch_sum_orders() {
        // Scalar path: partials over stride 4, tail into the first.
        let x = [1.0f32, 1e8, -1e8, 1.0, 1.0];
        // p0 = 1 + 1 (tail) = 2, p1 = 1e8, p2 = -1e8, p3 = 1:
        // ((2 + 1e8) + -1e8) + 1 = 1 in float32.
        assert_eq!(torch_sum(&x, 8), 1.0);
        let y: Vec<f32> = (0..40).map(|i| i as f32).collect();
        assert_eq!(torch_sum(&y, 8), 780.0);
        assert_eq!(torch_sum(&y, 16), 780.0);
    }
}
