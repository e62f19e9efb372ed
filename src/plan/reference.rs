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
    /// GPUs whose effective load is above capacity, in no particular order
    /// (while planning, the first `n_over` entries; one spare slot).
    over: Vec<u32>,
    /// Per GPU, the number of the last visit that sent it a transfer.
    sent_in: Vec<u32>,
    /// Each GPU's experts in visit order, for the GPUs that go over capacity.
    order: VisitOrder,
    /// Plan entries of the experts that spilled, in visit order, and where
    /// each expert's entry is (`slot[e]`, valid where `marked` has bit e).
    visited: Vec<(u32, u32, u32)>,
    slot: Vec<u32>,
    marked: Vec<u64>,
}

/// `visit_key(c, e)` orders "counts descending, equal counts by ascending
/// expert id". Counts are below 2^47 (the total is checked), ids below 2^16,
/// so every key of a nonzero count is below `ZERO_KEYS` and every key of a
/// zero count is at or above it.
#[inline]
fn visit_key(count: u64, expert: usize) -> u64 {
    ((MAX_TOTAL - count) << 16) | expert as u64
}

/// Totals at or above this are refused (see [`PlanError::TotalTooLarge`]).
const MAX_TOTAL: u64 = 1 << 47;
const ZERO_KEYS: u64 = MAX_TOTAL << 16;

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
        out.counts.clear();
        out.counts.extend_from_slice(counts);
        out.spills.clear();
        out.spill_ranges.clear();
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
            Policy::Ep | Policy::Eplb => {
                out.use_llep = false;
            }
            // llep-auto plans as llep; an Arbiter then decides. On one node
            // llep-topo is llep (topo::TopoPlanner plans it on several)
            Policy::Llep | Policy::LlepAuto | Policy::EplbLlep | Policy::LlepTopo => {
                out.use_llep = params.gate.admits(out.imbalance_ratio);
                if out.use_llep {
                    if total >= MAX_TOTAL {
                        return Err(PlanError::TotalTooLarge(total));
                    }
                    self.least_loaded(counts, p, params.min_gemm as i64, out);
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
    /// can change anything, and writing plan entries only for the experts
    /// that do not stay whole on their native GPU.
    ///
    /// With `E` the effective load of an expert's native GPU when it is
    /// visited, case 1 (keep all) happens iff `E <= cap`, and leaves every
    /// state unchanged (pending moves to assigned). So a GPU at or below
    /// capacity keeps every expert it is visited for until a forced spill
    /// pushes it over capacity, and every visit of a GPU above capacity is a
    /// spill (case 2 or 3). Only those visits are made, still in the global
    /// order (counts descending, ties by id): the next one is the smallest
    /// visit key, among GPUs above capacity, of an expert not yet passed.
    ///
    /// The spill itself: case 2 ranks the helpers by effective load before
    /// every chunk and takes the first that qualifies (free room > 0, and a
    /// chunk of at least `m` unless it is the whole rest), else forces the
    /// rest onto the first. The least-loaded helper has the most free room,
    /// so if it fails either test every later one fails too: each chunk goes
    /// to the least-loaded helper (ties: lower id), and only its size depends
    /// on the tests. Case 3 ranks the helpers once and walks that order, but
    /// the same argument stops the walk at the first helper that fails, and
    /// until then only helpers filled exactly to capacity changed, so the
    /// walk visits the same least-loaded helpers; only the forced rest
    /// differs: it goes to the helper ranked first before the walk.
    fn least_loaded(&mut self, counts: &[u64], p: usize, m: i64, out: &mut Plan) {
        if p == 1 {
            // every copy stays on the one GPU, whatever the cases say
            return;
        }
        let n = counts.len();
        let per = n / p;
        let cap = out.capacity as i64;
        let Planner {
            eff,
            over,
            sent_in,
            order,
            visited,
            slot,
            marked,
        } = self;
        eff.clear();
        eff.extend(out.native_loads.iter().map(|&x| x as i64));
        // a list with room for every GPU, appended to without a branch
        over.clear();
        over.resize(p + 1, 0);
        let mut n_over = 0;
        for (g, &x) in eff.iter().enumerate() {
            over[n_over] = g as u32;
            n_over += usize::from(x > cap);
        }
        sent_in.clear();
        sent_in.resize(p, u32::MAX);
        order.reset(p, per);
        visited.clear();
        slot.resize(n, 0);
        marked.clear();
        marked.resize(n.div_ceil(64), 0);
        let eff = &mut eff[..p];

        let mut last = 0u64;
        loop {
            // the next visit: the smallest unpassed key among GPUs over capacity
            let mut best = ZERO_KEYS;
            let mut at = usize::MAX;
            for (i, &g) in over[..n_over].iter().enumerate() {
                // keys passed while the GPU was not over capacity were case 1
                let k = order.next_after(g as usize, last, counts);
                if k < best {
                    best = k;
                    at = i;
                }
            }
            if at == usize::MAX {
                break; // no GPU over capacity has an expert with copies left
            }
            last = best;
            let native = over[at] as usize;
            n_over -= 1;
            over[at] = over[n_over];
            let visit = visited.len() as u32;
            let e = (best & 0xFFFF) as usize;
            let t = counts[e] as i64;
            let left = eff[native] - t; // pending -= t
            let first_range = out.spill_ranges.len();
            let (mut off, mut rest, native_eff) = if cap - left > 0 {
                // case 2: keep `room` (< t, as the GPU was over capacity)
                let room = cap - left;
                out.spill_ranges.push(Range {
                    gpu: native as u32,
                    start: 0,
                    end: room as u64,
                });
                (room, t - room, cap)
            } else {
                (0, t, left) // case 3
            };
            let case3 = off == 0;
            // the native GPU is never a helper
            eff[native] = i64::MAX;
            let first = argmin(eff);
            let mut h = first;
            loop {
                let free = cap - eff[h];
                let chunk = rest.min(free);
                let (to, amount) = if free > 0 && !(chunk < m && rest > chunk) {
                    (h, chunk)
                } else {
                    (if case3 { first } else { h }, rest)
                };
                let (start, end) = (off as u64, (off + amount) as u64);
                out.spill_ranges.push(Range {
                    gpu: to as u32,
                    start,
                    end,
                });
                // a repeated (expert, destination) pair can only be this visit's
                out.duplicate_transfers += u32::from(sent_in[to] == visit);
                sent_in[to] = visit;
                out.transfers.push(Transfer {
                    expert: e as u32,
                    src: native as u32,
                    dst: to as u32,
                    start,
                    end,
                });
                // only a forced rest can push a helper over capacity
                over[n_over] = to as u32;
                n_over += usize::from(eff[to] <= cap && eff[to] + amount > cap);
                eff[to] += amount;
                off += amount;
                rest -= amount;
                if rest == 0 {
                    break;
                }
                h = argmin(eff);
            }
            eff[native] = native_eff;
            over[n_over] = native as u32;
            n_over += usize::from(native_eff > cap);
            slot[e] = visited.len() as u32;
            marked[e / 64] |= 1 << (e % 64);
            visited.push((e as u32, first_range as u32, out.spill_ranges.len() as u32));
        }

        // entries by expert id
        for (w, &word) in marked.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let e = w * 64 + bits.trailing_zeros() as usize;
                out.spills.push(visited[slot[e] as usize]);
                bits &= bits - 1;
            }
        }
        for (load, &x) in out.gpu_loads.iter_mut().zip(eff.iter()) {
            *load = x as u64;
        }
    }
}

/// Each GPU's experts in visit order, built the first time the GPU goes
/// over capacity (most never do), and asked for the next key after the last
/// visited one. A GPU's later visits use only about half its experts, and
/// sorting short slices costs a mispredicted branch per key, so up to 32
/// experts per GPU the keys are kept as sorted runs of 4 (a 5-comparator
/// network each, padded with `u64::MAX`, one more `u64::MAX` after each
/// run) and a query takes the smallest run head above `last`, found
/// without branches. More experts per GPU are sorted whole and walked.
#[derive(Debug, Default, Clone)]
struct VisitOrder {
    per: usize,
    /// Slots per GPU: 5 per run of 4, or `per` when sorted whole.
    width: usize,
    keys: Vec<u64>,
    built: Vec<bool>,
    /// Sorted whole: each GPU's position of its next unvisited key.
    next: Vec<u32>,
    /// Each GPU's last answer, still right while above the last visited key.
    cached: Vec<u64>,
}

impl VisitOrder {
    fn reset(&mut self, p: usize, per: usize) {
        self.per = per;
        self.width = if per <= 32 { per.div_ceil(4) * 5 } else { per };
        self.keys.resize(p * self.width, 0);
        self.built.clear();
        self.built.resize(p, false);
        self.next.clear();
        self.next.resize(p, 0);
        self.cached.clear();
        self.cached.resize(p, 0);
    }

    /// The smallest visit key of GPU `g`'s experts above `last` (at least
    /// `ZERO_KEYS` when none with copies is left).
    #[inline]
    fn next_after(&mut self, g: usize, last: u64, counts: &[u64]) -> u64 {
        if self.cached[g] > last {
            return self.cached[g];
        }
        let (per, w) = (self.per, self.width);
        let block = &counts[g * per..(g + 1) * per];
        let keys = &mut self.keys[g * w..(g + 1) * w];
        let runs = per <= 32;
        if !self.built[g] {
            self.built[g] = true;
            if runs {
                for (r, run) in keys.chunks_exact_mut(5).enumerate() {
                    let mut k = [u64::MAX; 4];
                    for (i, x) in k.iter_mut().enumerate() {
                        if let Some(&c) = block.get(r * 4 + i) {
                            *x = visit_key(c, g * per + r * 4 + i);
                        }
                    }
                    for (i, j) in [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2)] {
                        let (a, b) = (k[i], k[j]);
                        k[i] = a.min(b);
                        k[j] = a.max(b);
                    }
                    run[..4].copy_from_slice(&k);
                    run[4] = u64::MAX;
                }
            } else {
                for (i, (k, &c)) in keys.iter_mut().zip(block).enumerate() {
                    *k = visit_key(c, g * per + i);
                }
                keys.sort_unstable();
            }
        }
        let k = if runs {
            let mut best = u64::MAX;
            for run in keys.chunks_exact(5) {
                // the run is sorted: its keys up to `last` are a prefix
                let passed = run[..4]
                    .iter()
                    .map(|&x| usize::from(x <= last))
                    .sum::<usize>();
                best = best.min(run[passed]);
            }
            best
        } else {
            let mut j = self.next[g] as usize;
            while j < per && keys[j] <= last {
                j += 1;
            }
            self.next[g] = j as u32;
            keys.get(j).copied().unwrap_or(u64::MAX)
        };
        self.cached[g] = k;
        k
    }
}

/// Index of the smallest value, ties to the lower index.
///
/// Every spilled chunk asks for it, over all P GPUs. One running
/// (value, index) minimum is a chain of dependent compares; instead the
/// smallest value is found first, over `LANES` independent minima, and
/// then its first position.
#[inline]
fn argmin(v: &[i64]) -> usize {
    const LANES: usize = 8;
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder().iter().copied().min().unwrap_or(i64::MAX);
    let mut lanes = [i64::MAX; LANES];
    for ch in chunks {
        for (m, &x) in lanes.iter_mut().zip(ch) {
            *m = (*m).min(x);
        }
    }
    let min = lanes.iter().copied().fold(rest, i64::min);
    v.iter().position(|&x| x == min).unwrap_or(0)
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
/// listed for accounting but cost nothing. As in every [`Plan`], entries are
/// written only for the experts that are not whole on their native GPU.
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
        let first = out.spill_ranges.len();
        let mut off = 0;
        while off < c {
            while room == 0 && g + 1 < p {
                g += 1;
                room = share(g);
            }
            // shares sum to the total, so the last GPU always has room left
            let chunk = (c - off).min(room);
            out.spill_ranges.push(Range {
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
        let rs = &out.spill_ranges[first..];
        if rs.len() == 1 && rs[0].gpu as usize == e / per {
            out.spill_ranges.truncate(first); // whole on its native GPU
        } else {
            out.spills
                .push((e as u32, first as u32, out.spill_ranges.len() as u32));
        }
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
    fn visit_order_walks_each_gpu_in_key_order() {
        let mut rng = crate::trace::tokens::SplitMix64::new(5);
        for per in [1, 3, 4, 5, 16, 24, 32, 33, 64] {
            let p = 3;
            let counts: Vec<u64> = (0..p * per).map(|_| rng.below(6)).collect();
            let mut o = VisitOrder::default();
            o.reset(p, per);
            for g in 0..p {
                let mut want: Vec<u64> = (g * per..(g + 1) * per)
                    .map(|e| visit_key(counts[e], e))
                    .filter(|&k| k < ZERO_KEYS)
                    .collect();
                want.sort_unstable();
                // walk with jumps, as visits of other GPUs move `last` on
                let mut last = 0;
                let mut got = vec![];
                loop {
                    let k = o.next_after(g, last, &counts);
                    if k >= ZERO_KEYS {
                        break;
                    }
                    got.push(k);
                    last = k;
                }
                assert_eq!(got, want, "per {per}, gpu {g}");
                // a fresh order asked first from the middle
                let mid = want.get(want.len() / 2).copied().unwrap_or(0);
                o.reset(p, per);
                let got = o.next_after(g, mid, &counts);
                match want.iter().find(|&&k| k > mid) {
                    Some(&k) => assert_eq!(got, k, "per {per}, gpu {g}, from the middle"),
                    None => assert!(got >= ZERO_KEYS, "per {per}, gpu {g}, from the middle"),
                }
            }
        }
    }

    #[test]
    fn argmin_is_the_first_smallest() {
        let mut rng = crate::trace::tokens::SplitMix64::new(9);
        for len in 1..70 {
            for _ in 0..50 {
                // few distinct values: many ties; i64::MAX as planning sets it
                let v: Vec<i64> = (0..len)
                    .map(|_| match rng.below(6) {
                        0 => i64::MAX,
                        x => x as i64 - 3,
                    })
                    .collect();
                let min = *v.iter().min().unwrap();
                let first = v.iter().position(|&x| x == min).unwrap();
                assert_eq!(argmin(&v), first, "{v:?}");
            }
        }
        assert_eq!(argmin(&[i64::MAX; 40]), 0);
    }

    #[test]
    fn ratio_is_one_when_empty() {
        assert_eq!(imbalance_ratio_f32(&[0, 0]), 1.0);
        assert!((imbalance_ratio_f32(&[3, 1]) - 1.5).abs() < 1e-7);
    }
}
