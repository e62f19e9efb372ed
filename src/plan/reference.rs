//! The `reference` LLEP planner (`docs/planner.md`, steps 1 and 2), and the
//! `ep` and `ideal` policies, behind one allocation-free [`Planner`].

use super::{check_shape, Plan, PlanError, PlanParams, Policy, Range, Transfer};

/// Reusable planner: keeps its scratch buffers between calls so planning a
/// layer allocates nothing once warm.
#[derive(Debug, Default, Clone)]
pub struct Planner {
    /// Effective load per GPU: work placed so far plus native work not yet
    /// visited (`assigned + pending` of `planner.md`). The reference's state
    /// enters every decision only through this sum.
    eff: Vec<i64>,
    /// Per GPU, its nonzero experts' visit keys in visit order, built the
    /// first time the GPU goes over capacity (most never do): GPU g's are
    /// `keys[g * per .. g * per + len[g]]`.
    keys: Vec<u64>,
    len: Vec<usize>,
    built: Vec<bool>,
    /// Next unvisited position of each GPU in its keys.
    next: Vec<usize>,
    helpers: Vec<u32>,
    free: Vec<i64>,
    seen: Vec<u64>,
    /// Ranges of the experts that spilled, and where each expert's are.
    spilled: Vec<Range>,
    spill_span: Vec<(u32, u32)>,
}

/// Sort key for "counts descending, equal counts by ascending expert id".
/// Counts are < 2^48 (checked), ids < 2^16.
#[inline]
fn visit_key(count: u64, expert: usize) -> u64 {
    ((((1u64 << 48) - 1) - count) << 16) | expert as u64
}

const NO_SPILL: (u32, u32) = (u32::MAX, u32::MAX);

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Plan one layer under `policy`. `counts[e]` are global token-copies per
    /// expert.
    pub fn plan(
        &mut self,
        counts: &[u64],
        params: &PlanParams,
        policy: Policy,
    ) -> Result<Plan, PlanError> {
        let mut out = Plan::default();
        self.plan_into(counts, params, policy, &mut out)?;
        Ok(out)
    }

    /// As [`Planner::plan`], reusing `out`'s buffers.
    pub fn plan_into(
        &mut self,
        counts: &[u64],
        params: &PlanParams,
        policy: Policy,
        out: &mut Plan,
    ) -> Result<(), PlanError> {
        check_shape(counts.len(), params)?;
        let p = params.gpus;
        let n = counts.len();
        let per = n / p;
        out.gpus = p;
        out.experts = n;
        out.entries.clear();
        out.ranges.clear();
        out.transfers.clear();
        out.duplicate_transfers = 0;
        out.free_transfers = false;
        out.native_loads.clear();
        out.native_loads.resize(p, 0);
        for (load, block) in out.native_loads.iter_mut().zip(counts.chunks_exact(per)) {
            *load = block.iter().sum();
        }
        let total: u64 = out.native_loads.iter().sum();
        out.imbalance_ratio = imbalance_ratio_f32(&out.native_loads);
        out.capacity = capacity(total, p, params.alpha);
        out.gpu_loads.clear();
        out.gpu_loads.extend_from_slice(&out.native_loads);
        match policy {
            Policy::Ep => {
                out.use_llep = false;
            }
            // llep-auto plans as llep; an Arbiter then decides. On one node
            // llep-topo is llep (topo::TopoPlanner plans it on several)
            Policy::Llep | Policy::LlepAuto | Policy::LlepTopo => {
                out.use_llep = params.gate.admits(out.imbalance_ratio);
                if out.use_llep {
                    self.least_loaded(counts, p, params.min_gemm, out);
                    self.count_duplicates(out);
                }
            }
            Policy::Ideal => {
                out.use_llep = true;
                out.free_transfers = true;
                ideal(counts, p, out);
            }
        }
        Ok(())
    }

    /// Step 2 of `planner.md`, exactly, but visiting only the experts that
    /// can change anything.
    ///
    /// With `E` the effective load of an expert's native GPU when it is
    /// visited, case 1 (keep all) happens iff `E <= cap`, and leaves `E`
    /// unchanged (pending moves to assigned). So a GPU at or below capacity
    /// keeps every expert it is visited for, with no effect on any state, until
    /// a forced spill pushes it over capacity. Only experts of GPUs above
    /// capacity need visiting, still in the global order (counts descending,
    /// ties by id): each GPU's experts are sorted once, and the next event is
    /// the smallest key among GPUs above capacity, each resuming after the
    /// last visited key. Every other expert is "case 1": one native range.
    fn least_loaded(&mut self, counts: &[u64], p: usize, m: u64, out: &mut Plan) {
        let n = counts.len();
        let per = n / p;
        let cap = out.capacity as i64;
        let m = m as i64;
        self.eff.clear();
        self.eff.extend(out.native_loads.iter().map(|&x| x as i64));
        self.keys.resize(n, 0);
        self.len.clear();
        self.len.resize(p, 0);
        self.built.clear();
        self.built.resize(p, false);
        self.next.clear();
        self.next.resize(p, 0);
        self.spilled.clear();
        self.spill_span.clear();
        self.spill_span.resize(n, NO_SPILL);

        let mut last_key = 0u64;
        loop {
            // next event: the smallest unvisited key among GPUs above capacity
            let mut event: Option<(u64, usize)> = None;
            for g in 0..p {
                if self.eff[g] <= cap {
                    continue;
                }
                if !self.built[g] {
                    // first time over capacity: order this GPU's experts now
                    let keys = &mut self.keys[g * per..(g + 1) * per];
                    let mut len = 0;
                    for (i, &c) in counts[g * per..(g + 1) * per].iter().enumerate() {
                        if c > 0 {
                            assert!(c < (1u64 << 48), "expert count {c} too large");
                            keys[len] = visit_key(c, g * per + i);
                            len += 1;
                        }
                    }
                    keys[..len].sort_unstable();
                    self.len[g] = len;
                    self.built[g] = true;
                }
                let keys = &self.keys[g * per..g * per + self.len[g]];
                let mut i = self.next[g];
                while i < keys.len() && keys[i] < last_key {
                    i += 1; // visited as case 1 while the GPU was not over capacity
                }
                self.next[g] = i;
                if i < keys.len() && event.is_none_or(|(k, _)| keys[i] < k) {
                    event = Some((keys[i], g));
                }
            }
            let Some((key, native)) = event else { break };
            self.next[native] += 1;
            last_key = key;
            let e = (key & 0xFFFF) as usize;
            let t = counts[e] as i64;
            self.eff[native] -= t;
            let room = cap - self.eff[native];
            let first = self.spilled.len() as u32;
            if room > 0 {
                // case 2: keep `room`, spill the rest. The reference ranks the
                // helpers by effective load and takes the first that
                // qualifies, else forces the rest onto the first. The
                // least-loaded helper has the most free room, so if it fails
                // either test every later one fails too: the choice is always
                // the least-loaded helper (ties: lower id), and only the chunk
                // size depends on the tests.
                self.spilled.push(Range {
                    gpu: native as u32,
                    start: 0,
                    end: room as u64,
                });
                self.eff[native] += room;
                let mut rest = t - room;
                let mut off = room;
                while rest > 0 {
                    let Some(h) = self.least_loaded_helper(native, p) else {
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
                // case 3: the native GPU is full; helpers ranked once, availability stale
                self.sort_helpers(native, p);
                self.free.clear();
                for &h in &self.helpers {
                    self.free.push(cap - self.eff[h as usize]);
                }
                let mut rest = t;
                let mut off = 0i64;
                for hi in 0..self.helpers.len() {
                    if rest == 0 {
                        break;
                    }
                    let free = self.free[hi];
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
                    if let Some(&h0) = self.helpers.first() {
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
            self.spill_span[e] = (first, self.spilled.len() as u32);
        }

        // entries by expert id: spilled experts' ranges, else one native range
        out.ranges.reserve(n + self.spilled.len());
        out.entries.reserve(n);
        for (g, block) in counts.chunks_exact(per).enumerate() {
            for (i, &c) in block.iter().enumerate() {
                if c == 0 {
                    continue;
                }
                let e = g * per + i;
                let first = out.ranges.len() as u32;
                match self.spill_span[e] {
                    NO_SPILL => out.ranges.push(Range {
                        gpu: g as u32,
                        start: 0,
                        end: c,
                    }),
                    (a, b) => out
                        .ranges
                        .extend_from_slice(&self.spilled[a as usize..b as usize]),
                }
                out.entries.push((e as u32, first, out.ranges.len() as u32));
            }
        }
        for (g, &x) in self.eff.iter().enumerate() {
            out.gpu_loads[g] = x as u64;
        }
    }

    /// Move `chunk` copies of expert `e` from `native` to `h`: a range and
    /// a weight transfer.
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

    /// The GPU other than `native` with the lowest effective load, ties to
    /// the lower id; `None` when there is no other GPU.
    fn least_loaded_helper(&self, native: usize, p: usize) -> Option<usize> {
        let mut best: Option<(i64, usize)> = None;
        for g in (0..p).filter(|&g| g != native) {
            let eff = self.eff[g];
            if best.is_none_or(|(b, _)| eff < b) {
                best = Some((eff, g));
            }
        }
        best.map(|(_, g)| g)
    }

    /// GPUs other than `native`, by effective load ascending, ties to the
    /// lower id (a stable sort of ids in order).
    fn sort_helpers(&mut self, native: usize, p: usize) {
        self.helpers.clear();
        self.helpers
            .extend((0..p as u32).filter(|&g| g as usize != native));
        let eff = &self.eff;
        // stable: equal loads keep ascending ids
        self.helpers.sort_by_key(|&g| eff[g as usize]);
    }

    fn count_duplicates(&mut self, out: &mut Plan) {
        // bitset per destination GPU over experts
        let words = out.experts.div_ceil(64);
        self.seen.clear();
        self.seen.resize(words * out.gpus, 0);
        let mut dups = 0;
        for t in &out.transfers {
            let idx = t.dst as usize * words + t.expert as usize / 64;
            let bit = 1u64 << (t.expert % 64);
            if self.seen[idx] & bit != 0 {
                dups += 1;
            }
            self.seen[idx] |= bit;
        }
        out.duplicate_transfers = dups;
    }
}

/// `cap = floor(alpha * (total div P))` if that quotient is positive, else
/// `total`; at least 1.
pub fn capacity(total: u64, p: usize, alpha: f64) -> u64 {
    let base = total / p as u64;
    let cap = if base > 0 {
        (alpha * base as f64) as i64
    } else {
        total as i64
    };
    cap.max(1) as u64
}

/// max/mean of the native loads in float32, 1.0 when the mean is 0.
pub fn imbalance_ratio_f32(loads: &[u64]) -> f64 {
    let sum: f32 = loads.iter().map(|&x| x as f32).sum();
    let mean = sum / loads.len() as f32;
    if mean == 0.0 {
        return 1.0;
    }
    let max = loads.iter().copied().max().unwrap_or(0) as f32;
    (max / mean) as f64
}

/// The `ideal` bound: all copies, in expert order, cut into P contiguous
/// near-equal shares (the first `total mod P` GPUs one more). Transfers are
/// listed for accounting but cost nothing.
fn ideal(counts: &[u64], p: usize, out: &mut Plan) {
    let per = counts.len() / p;
    let total: u64 = counts.iter().sum();
    let (q, r) = (total / p as u64, total % p as u64);
    let share = |g: usize| q + u64::from((g as u64) < r);
    let mut g = 0usize;
    let mut room = share(0);
    for (e, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let first = out.ranges.len() as u32;
        let mut off = 0;
        while off < c {
            while room == 0 && g + 1 < p {
                g += 1;
                room = share(g);
            }
            // shares sum to the total, so the last GPU always has room left
            let chunk = (c - off).min(room);
            out.ranges.push(Range {
                gpu: g as u32,
                start: off,
                end: off + chunk,
            });
            if g != e / per {
                out.transfers.push(Transfer {
                    expert: e as u32,
                    src: (e / per) as u32,
                    dst: g as u32,
                    start: off,
                    end: off + chunk,
                });
            }
            room = room.saturating_sub(chunk);
            off += chunk;
        }
        out.entries.push((e as u32, first, out.ranges.len() as u32));
    }
    for (gi, l) in out.gpu_loads.iter_mut().enumerate() {
        *l = share(gi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_follows_the_reference() {
        assert_eq!(capacity(100, 4, 1.0), 25);
        assert_eq!(capacity(103, 4, 1.1), 27); // floor(1.1 * 25) = 27
        assert_eq!(capacity(3, 4, 1.0), 3); // total div P = 0 -> total
        assert_eq!(capacity(0, 4, 1.0), 1); // at least 1
    }

    #[test]
    fn ratio_is_one_when_empty() {
        assert_eq!(imbalance_ratio_f32(&[0, 0]), 1.0);
        assert!((imbalance_ratio_f32(&[3, 1]) - 1.5).abs() < 1e-7);
    }
}
