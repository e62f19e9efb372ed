//! Cluster topology (GPUs split evenly over nodes) and the `llep-topo`
//! policy: the reference least-loaded planner (`planner.md`, step 2), except
//! that a spilled chunk goes first to the least-loaded helper in the native
//! GPU's own node, and crosses nodes only when that node has no room left.
//!
//! With one node every helper is in the native node, so the choices are the
//! reference's and the plan equals `llep`'s exactly (tested). This is a
//! plain transcription (every expert visited in the reference order), kept
//! apart from the optimised [`super::Planner`] so `llep` stays untouched.

use super::{Plan, PlanError, PlanParams, Planner, Policy, Range, Transfer};
use std::fmt;
use std::str::FromStr;

/// GPUs `0..gpus` split evenly over `nodes` nodes, node `i` holding GPUs
/// `i * gpus_per_node .. (i + 1) * gpus_per_node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub nodes: usize,
    pub gpus_per_node: usize,
}

/// A topology that does not fit the GPU count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopoError {
    #[error(
        "--nodes {nodes} does not divide --gpus {gpus}: the GPUs are split evenly over the nodes"
    )]
    NotDividing { nodes: usize, gpus: usize },
    #[error("--nodes must be at least 1")]
    NoNodes,
    #[error("--topology '{0}' is not NxG (nodes x GPUs per node, both >= 1, e.g. 4x8)")]
    BadSpec(String),
    #[error("--topology {nodes}x{per} is {} GPUs but --gpus is {gpus}", nodes * per)]
    Mismatch {
        nodes: usize,
        per: usize,
        gpus: usize,
    },
}

impl Topology {
    /// One node holding all `gpus`.
    pub fn single(gpus: usize) -> Topology {
        Topology {
            nodes: 1,
            gpus_per_node: gpus.max(1),
        }
    }

    /// `gpus` split evenly over `nodes`.
    pub fn new(gpus: usize, nodes: usize) -> Result<Topology, TopoError> {
        if nodes == 0 {
            return Err(TopoError::NoNodes);
        }
        if gpus % nodes != 0 || gpus < nodes {
            return Err(TopoError::NotDividing { nodes, gpus });
        }
        Ok(Topology {
            nodes,
            gpus_per_node: gpus / nodes,
        })
    }

    /// The node of GPU `g`.
    #[inline]
    pub fn node_of(&self, g: usize) -> usize {
        g / self.gpus_per_node
    }

    pub fn gpus(&self) -> usize {
        self.nodes * self.gpus_per_node
    }
}

/// `NxG`: N nodes of G GPUs each.
impl FromStr for Topology {
    type Err = TopoError;
    fn from_str(s: &str) -> Result<Topology, TopoError> {
        let bad = || TopoError::BadSpec(s.to_string());
        let (n, g) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        let g: usize = g.trim().parse().map_err(|_| bad())?;
        if n == 0 || g == 0 {
            return Err(bad());
        }
        Ok(Topology {
            nodes: n,
            gpus_per_node: g,
        })
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.nodes, self.gpus_per_node)
    }
}

/// The `llep-topo` planner, reusable between layers.
#[derive(Debug, Default, Clone)]
pub struct TopoPlanner {
    base: Planner,
    order: Vec<u64>,
    eff: Vec<i64>,
    helpers: Vec<u32>,
    spilled: Vec<Range>,
    spill_span: Vec<(u32, u32)>,
    seen: Vec<u64>,
}

const NO_SPILL: (u32, u32) = (u32::MAX, u32::MAX);

impl TopoPlanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Plan one layer under `llep-topo` on `topo`. The plan's statistics
    /// (native loads, capacity, ratio) are the reference's; the lambda gate
    /// switches it on as it does `llep`.
    pub fn plan_into(
        &mut self,
        counts: &[u64],
        params: &PlanParams,
        topo: Topology,
        out: &mut Plan,
    ) -> Result<(), PlanError> {
        // EP fills every statistic the reference computes before step 2
        self.base.plan_into(counts, params, Policy::Ep, out)?;
        if topo.gpus() != params.gpus {
            // a caller bug, not user input: the CLI checks the topology
            panic!("topology {topo} does not match {} GPUs", params.gpus);
        }
        out.use_llep = params.gate.admits(out.imbalance_ratio);
        if out.use_llep {
            self.least_loaded(counts, params.min_gemm, topo, out);
            self.count_duplicates(out);
        }
        Ok(())
    }

    /// Step 2 of `planner.md` with node-first helper choice.
    fn least_loaded(&mut self, counts: &[u64], m: u64, topo: Topology, out: &mut Plan) {
        let (n, p) = (counts.len(), out.gpus);
        let per = n / p;
        let cap = out.capacity as i64;
        let m = m as i64;
        self.eff.clear();
        self.eff.extend(out.native_loads.iter().map(|&x| x as i64));
        self.spilled.clear();
        self.spill_span.clear();
        self.spill_span.resize(n, NO_SPILL);
        // counts descending, equal counts by ascending id
        self.order.clear();
        for (e, &c) in counts.iter().enumerate() {
            if c > 0 {
                assert!(c < (1u64 << 48), "expert count {c} too large");
                self.order.push(((((1u64 << 48) - 1) - c) << 16) | e as u64);
            }
        }
        self.order.sort_unstable();
        for oi in 0..self.order.len() {
            let e = (self.order[oi] & 0xFFFF) as usize;
            let native = e / per;
            let t = counts[e] as i64;
            self.eff[native] -= t;
            let room = cap - self.eff[native];
            if room >= t {
                // case 1: the native GPU keeps every copy
                self.eff[native] += t;
                continue;
            }
            let first = self.spilled.len() as u32;
            if room > 0 {
                // case 2: keep `room`, spill the rest, one helper at a time
                self.spilled.push(Range {
                    gpu: native as u32,
                    start: 0,
                    end: room as u64,
                });
                self.eff[native] += room;
                let (mut rest, mut off) = (t - room, room);
                while rest > 0 {
                    let Some(h) = self.pick_helper(native, rest, m, cap, topo) else {
                        self.spilled.last_mut().unwrap().end += rest as u64;
                        self.eff[native] += rest;
                        break;
                    };
                    let free = cap - self.eff[h];
                    let chunk = if free > 0 && !(free.min(rest) < m && rest > free.min(rest)) {
                        rest.min(free)
                    } else {
                        rest
                    };
                    self.spill(out, e, native, h, off, chunk);
                    off += chunk;
                    rest -= chunk;
                }
            } else {
                self.case3(out, e, native, t, m, cap, topo);
            }
            self.spill_span[e] = (first, self.spilled.len() as u32);
        }
        self.emit(counts, out);
    }

    /// Case 3 of `planner.md`: the native GPU is full. Helpers are ranked
    /// once (same node first, each group by effective load), availability
    /// then stale, as the reference does.
    #[allow(clippy::too_many_arguments)]
    fn case3(
        &mut self,
        out: &mut Plan,
        e: usize,
        native: usize,
        t: i64,
        m: i64,
        cap: i64,
        topo: Topology,
    ) {
        let home = topo.node_of(native);
        self.helpers.clear();
        self.helpers
            .extend((0..out.gpus as u32).filter(|&g| g as usize != native));
        let eff = &self.eff;
        // stable: equal keys keep ascending ids
        self.helpers
            .sort_by_key(|&g| (topo.node_of(g as usize) != home, eff[g as usize]));
        let free: Vec<i64> = self
            .helpers
            .iter()
            .map(|&h| cap - eff[h as usize])
            .collect();
        // what nobody takes goes where the reference forces it: the helper
        // least loaded at ranking time, wherever it is
        let forced = self
            .helpers
            .iter()
            .copied()
            .min_by_key(|&g| (eff[g as usize], g));
        let (mut rest, mut off) = (t, 0i64);
        for (hi, &free) in free.iter().enumerate() {
            if rest == 0 {
                break;
            }
            if free <= 0 {
                continue;
            }
            let chunk = rest.min(free);
            if chunk < m && rest > chunk {
                continue;
            }
            let h = self.helpers[hi] as usize;
            self.spill(out, e, native, h, off, chunk);
            off += chunk;
            rest -= chunk;
        }
        if rest > 0 {
            if let Some(h0) = forced {
                self.spill(out, e, native, h0 as usize, off, rest);
            } else {
                self.spilled.push(Range {
                    gpu: native as u32,
                    start: 0,
                    end: t as u64,
                });
                self.eff[native] += t;
            }
        }
    }

    /// The least-loaded helper (ties: lower id) of the native GPU's node
    /// when it can take a chunk of `rest` under the reference's tests (room
    /// left, and a chunk of at least `m` unless it takes all the rest); else
    /// the least-loaded helper of the other nodes, under the same tests;
    /// else the reference's own choice, the least-loaded helper overall.
    fn pick_helper(
        &self,
        native: usize,
        rest: i64,
        m: i64,
        cap: i64,
        topo: Topology,
    ) -> Option<usize> {
        let home = topo.node_of(native);
        // (effective load, GPU) of the least-loaded helper in and out of the node
        let mut inside: Option<(i64, usize)> = None;
        let mut outside: Option<(i64, usize)> = None;
        for g in (0..self.eff.len()).filter(|&g| g != native) {
            let slot = if topo.node_of(g) == home {
                &mut inside
            } else {
                &mut outside
            };
            if slot.is_none_or(|(b, _)| self.eff[g] < b) {
                *slot = Some((self.eff[g], g));
            }
        }
        let takes = |load: i64| {
            let free = cap - load;
            free > 0 && !(free.min(rest) < m && rest > free.min(rest))
        };
        match (inside, outside) {
            (Some((l, g)), _) if takes(l) => Some(g),
            (_, Some((l, g))) if takes(l) => Some(g),
            // (load, id) order: least load, ties to the lower id
            (Some(a), Some(b)) => Some(a.min(b).1),
            (a, b) => a.or(b).map(|(_, g)| g),
        }
    }

    fn spill(&mut self, out: &mut Plan, e: usize, native: usize, h: usize, off: i64, chunk: i64) {
        let (start, end) = (off as u64, (off + chunk) as u64);
        self.spilled.push(Range {
            gpu: h as u32,
            start,
            end,
        });
        out.transfers.push(Transfer {
            expert: e as u32,
            src: native as u32,
            dst: h as u32,
            start,
            end,
        });
        self.eff[h] += chunk;
    }

    /// The plan lists only the experts that spill, by expert id, with their
    /// ranges kept in the order they were planned (as the reference's
    /// planner lays them out); an expert kept whole is implied by the counts.
    fn emit(&mut self, counts: &[u64], out: &mut Plan) {
        let base = out.spill_ranges.len() as u32;
        out.spill_ranges.extend_from_slice(&self.spilled);
        for (e, &span) in self.spill_span.iter().enumerate().take(counts.len()) {
            if span == NO_SPILL || counts[e] == 0 {
                continue;
            }
            out.spills.push((e as u32, base + span.0, base + span.1));
        }
        for (g, &x) in self.eff.iter().enumerate() {
            out.gpu_loads[g] = x as u64;
        }
    }

    fn count_duplicates(&mut self, out: &mut Plan) {
        let words = out.experts.div_ceil(64);
        self.seen.clear();
        self.seen.resize(words * out.gpus, 0);
        let mut dups = 0;
        for t in &out.transfers {
            let idx = t.dst as usize * words + t.expert as usize / 64;
            let bit = 1u64 << (t.expert % 64);
            dups += u32::from(self.seen[idx] & bit != 0);
            self.seen[idx] |= bit;
        }
        out.duplicate_transfers = dups;
    }
}

/// Transfers of `plan` whose source and destination are on different nodes.
pub fn cross_node_transfers(plan: &Plan, topo: Topology) -> usize {
    plan.transfers
        .iter()
        .filter(|t| topo.node_of(t.src as usize) != topo.node_of(t.dst as usize))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Gate;
    use crate::trace::tokens::SplitMix64;

    /// Skewed counts: a few hot experts, the rest small, some zero.
    fn counts(rng: &mut SplitMix64, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| match rng.below(10) {
                0 => 2000 + rng.below(20000),
                1 => 0,
                _ => rng.below(600),
            })
            .collect()
    }

    fn params(rng: &mut SplitMix64, gpus: usize) -> PlanParams {
        PlanParams {
            gpus,
            alpha: [1.0, 1.1, 1.5][rng.below(3) as usize],
            min_gemm: [0, 64, 1024][rng.below(3) as usize],
            gate: Gate::Always,
        }
    }

    /// Every expert's ranges cover `[0, count)` contiguously, once; the
    /// loads are the ranges' sums; each transfer is one off-native range.
    fn check_cover(plan: &Plan, counts: &[u64]) {
        let per = plan.experts / plan.gpus;
        let mut loads = vec![0u64; plan.gpus];
        let mut seen = 0;
        for (e, ranges) in plan.iter() {
            let mut at = 0;
            for r in ranges {
                assert_eq!(r.start, at, "expert {e}: gap or overlap");
                assert!(r.end > r.start, "expert {e}: empty range");
                at = r.end;
                loads[r.gpu as usize] += r.end - r.start;
            }
            assert_eq!(at, counts[e as usize], "expert {e} not covered");
            seen += 1;
        }
        assert_eq!(seen, counts.iter().filter(|&&c| c > 0).count());
        assert_eq!(loads, plan.gpu_loads);
        let off: usize = plan
            .iter()
            .map(|(e, rs)| {
                rs.iter()
                    .filter(|r| r.gpu as usize != e as usize / per)
                    .count()
            })
            .sum();
        assert_eq!(off, plan.transfers.len());
    }

    #[test]
    fn one_node_is_exactly_llep() {
        let mut rng = SplitMix64::new(11);
        let (mut reference, mut topo) = (Planner::new(), TopoPlanner::new());
        for _ in 0..400 {
            let gpus = [2, 4, 8, 16, 32][rng.below(5) as usize];
            let n = gpus * [1, 2, 8][rng.below(3) as usize];
            let c = counts(&mut rng, n);
            let pp = params(&mut rng, gpus);
            let want = reference.plan(&c, &pp, Policy::Llep).unwrap();
            let mut got = Plan::default();
            topo.plan_into(&c, &pp, Topology::single(gpus), &mut got)
                .unwrap();
            assert_eq!(got, want, "counts {c:?} params {pp:?}");
        }
    }

    #[test]
    fn multi_node_covers_every_copy_once_and_respects_capacity_like_llep() {
        let mut rng = SplitMix64::new(12);
        let (mut reference, mut topo) = (Planner::new(), TopoPlanner::new());
        let (mut fewer, mut within) = (0, 0);
        for _ in 0..400 {
            let gpus = [4, 8, 16, 32][rng.below(4) as usize];
            let nodes = [2, 4][rng.below(2) as usize].min(gpus);
            let t = Topology::new(gpus, nodes).unwrap();
            let n = gpus * [1, 2, 8][rng.below(3) as usize];
            let c = counts(&mut rng, n);
            let pp = params(&mut rng, gpus);
            let llep = reference.plan(&c, &pp, Policy::Llep).unwrap();
            let mut got = Plan::default();
            topo.plan_into(&c, &pp, t, &mut got).unwrap();
            check_cover(&got, &c);
            assert_eq!(got.capacity, llep.capacity);
            assert_eq!(got.native_loads, llep.native_loads);
            // within capacity wherever llep is (without the minimum-GEMM
            // quirk, which forces a whole rest onto one helper)
            if pp.min_gemm == 0 && llep.max_load() <= llep.capacity {
                within += 1;
                assert!(
                    got.max_load() <= got.capacity,
                    "topo max {} cap {}",
                    got.max_load(),
                    got.capacity
                );
            }
            let (a, b) = (
                cross_node_transfers(&got, t),
                cross_node_transfers(&llep, t),
            );
            fewer += usize::from(a < b);
        }
        assert!(within > 50, "only {within} cases within capacity");
        assert!(
            fewer > 100,
            "node-first spills crossed fewer nodes in only {fewer} of 400"
        );
    }

    #[test]
    fn a_hot_gpu_spills_inside_its_node_while_the_node_has_room() {
        // 8 GPUs on 2 nodes, one expert per GPU; GPU 4 (node 1) is hot,
        // node 0 is the least loaded
        let c = [20, 20, 20, 20, 300, 60, 60, 60];
        let pp = PlanParams {
            gpus: 8,
            alpha: 1.5,
            min_gemm: 0,
            gate: Gate::Always,
        };
        let t = Topology::new(8, 2).unwrap();
        let mut got = Plan::default();
        TopoPlanner::new().plan_into(&c, &pp, t, &mut got).unwrap();
        let llep = Planner::new().plan(&c, &pp, Policy::Llep).unwrap();
        // cap 105: 195 to spill, node 1's three other GPUs have 135 of room
        assert_eq!(got.capacity, 105);
        let moved = |plan: &Plan, node: usize| -> u64 {
            plan.transfers
                .iter()
                .filter(|x| t.node_of(x.dst as usize) == node)
                .map(|x| x.end - x.start)
                .sum()
        };
        assert_eq!((moved(&got, 1), moved(&got, 0)), (135, 60));
        assert_eq!(cross_node_transfers(&got, t), 1);
        // llep sends everything to the least-loaded node
        assert_eq!((moved(&llep, 1), moved(&llep, 0)), (0, 195));
        assert_eq!(cross_node_transfers(&llep, t), 3);
        assert_eq!(got.max_load(), 105);
        assert_eq!(llep.max_load(), 105);
    }

    #[test]
    fn topology_flags_are_checked() {
        assert_eq!(
            Topology::new(8, 3).unwrap_err().to_string(),
            "--nodes 3 does not divide --gpus 8: the GPUs are split evenly over the nodes"
        );
        assert!(Topology::new(8, 0).is_err());
        let t: Topology = "4x8".parse().unwrap();
        assert_eq!((t.nodes, t.gpus_per_node, t.gpus()), (4, 8, 32));
        for bad in ["4", "0x8", "4x", "ax8", "4x8x2"] {
            assert!(bad.parse::<Topology>().is_err(), "{bad}");
        }
        assert_eq!(t.node_of(7), 0);
        assert_eq!(t.node_of(8), 1);
    }
}
