//! Host-side layout of one replayed layer: from a plan and the per-rank
//! counts, where every token-copy goes (send buffers, compute buffers), which
//! GEMM groups each GPU runs with which weights, and which weight transfers
//! it sends and receives. Pure arithmetic, identical on every rank, and
//! tested without a GPU.
//!
//! Conventions (shared with `kernels/moe.cu`):
//! - a *group* is one plan range (or, for plain EP, one native expert with
//!   copies): one gate_up GEMM, one activation, one down GEMM;
//! - a GPU's compute buffer holds its groups one after another, each group's
//!   rows in global token order (rank 0's copies first);
//! - a *piece* is the overlap of one group with one source rank's copies;
//!   rank r's send buffer holds, per destination g != r, the pieces for g in
//!   g's group order; g receives them in that order, so its receive buffer
//!   from r has the same layout;
//! - pieces whose source is the computing GPU skip the network: they are
//!   packed straight into the compute buffer.

use crate::plan::{DispatchMatrix, Plan};

/// Where a group's weights live on its GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSrc {
    /// Native expert, local index `e % experts_per_gpu`.
    Native(u32),
    /// Received in foreign slot `i` (index into [`Layout::recv_transfers`]).
    Foreign(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub expert: u32,
    pub weights: WeightSrc,
    /// First row in the GPU's compute buffer.
    pub row: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub src: u32,
    pub dst: u32,
    /// Index of the group on `dst`.
    pub group: u32,
    pub expert: u32,
    /// Local in-expert indices on `src`: copies `[lo, hi)` of this expert.
    pub lo: u64,
    pub hi: u64,
    /// Row in `src`'s send buffer (meaningless when src == dst).
    pub send_row: u64,
    /// Row in `dst`'s receive buffer (meaningless when src == dst).
    pub recv_row: u64,
    /// Row in `dst`'s compute buffer.
    pub comp_row: u64,
}

impl Piece {
    pub fn rows(&self) -> u64 {
        self.hi - self.lo
    }
}

/// One copy-engine push of [`Layout::pushes`]: `rows` rows from row `from`
/// of the pushing rank's buffer to row `to` of peer `peer`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    pub peer: u32,
    pub from: u64,
    pub to: u64,
    pub rows: u64,
}

/// One weight transfer as a GPU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightMove {
    pub expert: u32,
    pub peer: u32,
}

/// Everything one GPU needs for one layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankLayout {
    pub groups: Vec<Group>,
    /// Rows this GPU computes (sum of its group rows).
    pub compute_rows: u64,
    pub max_group_rows: u64,
    /// Per peer: rows sent / received, and their first row in the send /
    /// receive buffer (0 for self).
    pub send_rows: Vec<u64>,
    pub send_off: Vec<u64>,
    pub recv_rows: Vec<u64>,
    pub recv_off: Vec<u64>,
    pub send_total: u64,
    pub recv_total: u64,
    /// Weight transfers this GPU sends / receives, in plan order (NCCL pairs
    /// them in issue order, so both sides list them the same way).
    pub send_transfers: Vec<WeightMove>,
    pub recv_transfers: Vec<WeightMove>,
}

/// The layout of all GPUs for one layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    pub gpus: usize,
    pub experts: usize,
    pub ranks: Vec<RankLayout>,
    /// All pieces, ordered by (dst, group, src).
    pub pieces: Vec<Piece>,
    /// Per GPU, its pipeline chunks once [`Layout::chunk`] cut them (empty:
    /// one exchange each way, the sequential schedule).
    pub chunks: Vec<ChunkRanges>,
}

/// One GPU's pipeline chunks: chunk `c` is its compute rows
/// `[bounds[c], bounds[c + 1])`; in exchange round `c` every rank sends
/// each peer the rows of the peer's chunk `c` and receives those of its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkRanges {
    /// Compute-buffer row bounds (chunks + 1 entries, 0 first, rows last).
    pub bounds: Vec<u64>,
    /// `[chunk][peer]`: rows sent / received in that round, and their first
    /// row in the send / receive buffer (0 when none).
    pub send_rows: Vec<Vec<u64>>,
    pub send_off: Vec<Vec<u64>>,
    pub recv_rows: Vec<Vec<u64>>,
    pub recv_off: Vec<Vec<u64>>,
}

impl ChunkRanges {
    /// The chunk holding compute row `row`.
    pub fn of(&self, row: u64) -> usize {
        chunk_of(&self.bounds, row)
    }
}

fn chunk_of(bounds: &[u64], row: u64) -> usize {
    // the last chunk whose start is <= row, skipping empty chunks
    bounds[1..bounds.len() - 1].partition_point(|&b| b <= row)
}

/// Where GPU `rl`'s compute rows are cut into `chunks` chunks
/// ([`crate::gpu::pipeline::cuts`] over its groups).
fn cut_points(rl: &RankLayout, chunks: usize, align: u64) -> Vec<u64> {
    let starts: Vec<u64> = rl.groups.iter().map(|g| g.row).collect();
    super::pipeline::cuts(&starts, rl.compute_rows, chunks, align)
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LayoutError {
    #[error("plan range of expert {expert} on GPU {gpu} [{start}, {end}) has no matching weight transfer")]
    NoTransfer {
        expert: u32,
        gpu: u32,
        start: u64,
        end: u64,
    },
    #[error("the plan does not cover all {count} copies of expert {expert}")]
    Uncovered { expert: u32, count: u64 },
    #[error("the ideal policy has free weight transfers and cannot be replayed")]
    Ideal,
}

/// Build the layout of `plan` for per-rank counts `per_rank` (`[P][N]`).
pub fn build(plan: &Plan, per_rank: &[u64]) -> Result<Layout, LayoutError> {
    if plan.free_transfers {
        return Err(LayoutError::Ideal);
    }
    let p = plan.gpus;
    let n = plan.experts;
    let mut ranks: Vec<RankLayout> = (0..p).map(|_| RankLayout::default()).collect();
    let gl = group_spans(plan, per_rank, &mut ranks)?;
    let mut pieces = place_groups(&gl, per_rank, n, &mut ranks);
    place_exchange(&mut ranks, &mut pieces);
    Ok(Layout {
        gpus: p,
        experts: n,
        ranks,
        pieces,
        chunks: Vec::new(),
    })
}

/// One group of a GPU: (expert, start, end, weights), `[start, end)` in
/// the expert's global copy order.
type Span = (u32, u64, u64, WeightSrc);

/// Every GPU's groups, native weights first; fills each rank's weight
/// transfers (in plan order) on the way.
fn group_spans(
    plan: &Plan,
    per_rank: &[u64],
    ranks: &mut [RankLayout],
) -> Result<Vec<Vec<Span>>, LayoutError> {
    let p = plan.gpus;
    let n = plan.experts;
    let per = n / p;
    let global: Vec<u64> = (0..n)
        .map(|e| (0..p).map(|r| per_rank[r * n + e]).sum())
        .collect();

    // groups per GPU, as (expert, start, end, weights)
    let mut gl: Vec<Vec<Span>> = vec![Vec::new(); p];
    if plan.spills.is_empty() {
        for (e, &c) in global.iter().enumerate() {
            if c > 0 {
                gl[e / per].push((e as u32, 0, c, WeightSrc::Native((e % per) as u32)));
            }
        }
    } else {
        // match helper ranges to their transfers, in plan order
        let mut used = vec![false; plan.transfers.len()];
        for t in &plan.transfers {
            ranks[t.src as usize].send_transfers.push(WeightMove {
                expert: t.expert,
                peer: t.dst,
            });
            ranks[t.dst as usize].recv_transfers.push(WeightMove {
                expert: t.expert,
                peer: t.src,
            });
        }
        // slot index of transfer i on its destination
        let mut slot_of = vec![0u32; plan.transfers.len()];
        let mut next = vec![0u32; p];
        for (i, t) in plan.transfers.iter().enumerate() {
            slot_of[i] = next[t.dst as usize];
            next[t.dst as usize] += 1;
        }
        let mut covered = vec![0u64; n];
        for (e, rs) in plan.iter() {
            let native = e as usize / per;
            for r in rs {
                covered[e as usize] += r.end - r.start;
                let w = if r.gpu as usize == native {
                    WeightSrc::Native((e as usize % per) as u32)
                } else {
                    let i = plan
                        .transfers
                        .iter()
                        .enumerate()
                        .position(|(i, t)| {
                            !used[i]
                                && t.expert == e
                                && t.dst == r.gpu
                                && t.start == r.start
                                && t.end == r.end
                        })
                        .ok_or(LayoutError::NoTransfer {
                            expert: e,
                            gpu: r.gpu,
                            start: r.start,
                            end: r.end,
                        })?;
                    used[i] = true;
                    WeightSrc::Foreign(slot_of[i])
                };
                if r.end > r.start {
                    gl[r.gpu as usize].push((e, r.start, r.end, w));
                }
            }
        }
        for (e, &c) in global.iter().enumerate() {
            if covered[e] != c {
                return Err(LayoutError::Uncovered {
                    expert: e as u32,
                    count: c,
                });
            }
        }
    }
    // Native groups first, foreign ones last, so compute can start before
    // the weight transfers finish.
    for g in gl.iter_mut() {
        g.sort_by_key(|&(e, s, _, w)| (matches!(w, WeightSrc::Foreign(_)), e, s));
    }
    Ok(gl)
}

/// Each GPU's groups in its compute buffer, and the pieces (group x source
/// rank) that fill them, in (dst, group, src) order.
fn place_groups(
    gl: &[Vec<Span>],
    per_rank: &[u64],
    n: usize,
    ranks: &mut [RankLayout],
) -> Vec<Piece> {
    let p = ranks.len();
    // cumulative per-rank offsets of each expert's global order
    let mut pieces = Vec::new();
    for (g, groups) in gl.iter().enumerate() {
        let rl = &mut ranks[g];
        let mut row = 0u64;
        for (gi, &(e, start, end, w)) in groups.iter().enumerate() {
            rl.groups.push(Group {
                expert: e,
                weights: w,
                row,
                rows: end - start,
            });
            let mut cum = 0u64;
            for r in 0..p {
                let cnt = per_rank[r * n + e as usize];
                let (a, b) = (cum.max(start), (cum + cnt).min(end));
                if b > a {
                    pieces.push(Piece {
                        src: r as u32,
                        dst: g as u32,
                        group: gi as u32,
                        expert: e,
                        lo: a - cum,
                        hi: b - cum,
                        send_row: 0,
                        recv_row: 0,
                        comp_row: row + (a - start),
                    });
                }
                cum += cnt;
            }
            row += end - start;
            rl.max_group_rows = rl.max_group_rows.max(end - start);
        }
        rl.compute_rows = row;
    }
    pieces
}

/// Per-peer send / receive sizes and offsets, and each remote piece's rows
/// in its source's send buffer and its destination's receive buffer.
fn place_exchange(ranks: &mut [RankLayout], pieces: &mut [Piece]) {
    let p = ranks.len();
    // send/recv sizes and offsets; pieces are in (dst, group, src) order
    for rl in ranks.iter_mut() {
        rl.send_rows = vec![0; p];
        rl.recv_rows = vec![0; p];
        rl.send_off = vec![0; p];
        rl.recv_off = vec![0; p];
    }
    for pc in pieces.iter() {
        if pc.src != pc.dst {
            ranks[pc.src as usize].send_rows[pc.dst as usize] += pc.rows();
            ranks[pc.dst as usize].recv_rows[pc.src as usize] += pc.rows();
        }
    }
    for rl in ranks.iter_mut() {
        let mut o = 0;
        for (q, &c) in rl.send_rows.iter().enumerate() {
            rl.send_off[q] = o;
            o += c;
        }
        rl.send_total = o;
        let mut o = 0;
        for (q, &c) in rl.recv_rows.iter().enumerate() {
            rl.recv_off[q] = o;
            o += c;
        }
        rl.recv_total = o;
    }
    let mut s_fill: Vec<Vec<u64>> = ranks.iter().map(|r| r.send_off.clone()).collect();
    let mut r_fill: Vec<Vec<u64>> = ranks.iter().map(|r| r.recv_off.clone()).collect();
    for pc in pieces.iter_mut() {
        if pc.src != pc.dst {
            let (s, d) = (pc.src as usize, pc.dst as usize);
            pc.send_row = s_fill[s][d];
            s_fill[s][d] += pc.rows();
            pc.recv_row = r_fill[d][s];
            r_fill[d][s] += pc.rows();
        }
    }
}

impl Layout {
    /// Cut every GPU's compute rows into `chunks` pipeline chunks (see
    /// [`ChunkRanges`]), splitting the pieces that straddle a cut. Each
    /// chunk's rows from (to) one peer are then one contiguous range of the
    /// receive (send) buffer: pieces are in (dst, group, src) order, which
    /// is compute-row order on `dst`, and a source's send buffer lists a
    /// destination's pieces in that order. Nothing moves; only the tables
    /// change, so the sequential schedule stays byte for byte what it was.
    pub fn chunk(&mut self, chunks: usize, align: u64) {
        let p = self.gpus;
        let chunks = chunks.max(1);
        let mut cr: Vec<ChunkRanges> = self
            .ranks
            .iter()
            .map(|rl| ChunkRanges {
                bounds: cut_points(rl, chunks, align),
                send_rows: vec![vec![0; p]; chunks],
                send_off: vec![vec![u64::MAX; p]; chunks],
                recv_rows: vec![vec![0; p]; chunks],
                recv_off: vec![vec![u64::MAX; p]; chunks],
            })
            .collect();
        let mut out = Vec::with_capacity(self.pieces.len() + p * chunks);
        for &pc in &self.pieces {
            let b = &cr[pc.dst as usize];
            let mut pc = pc;
            loop {
                let end = b.bounds[b.of(pc.comp_row) + 1];
                if pc.comp_row + pc.rows() <= end {
                    out.push(pc);
                    break;
                }
                let n = end - pc.comp_row;
                out.push(Piece {
                    hi: pc.lo + n,
                    ..pc
                });
                pc.lo += n;
                pc.comp_row += n;
                pc.send_row += n;
                pc.recv_row += n;
            }
        }
        self.pieces = out;
        for pc in self.pieces.iter().filter(|pc| pc.src != pc.dst) {
            let (s, d) = (pc.src as usize, pc.dst as usize);
            let c = cr[d].of(pc.comp_row);
            let n = pc.rows();
            let sr = &mut cr[s];
            sr.send_rows[c][d] += n;
            sr.send_off[c][d] = sr.send_off[c][d].min(pc.send_row);
            let dr = &mut cr[d];
            dr.recv_rows[c][s] += n;
            dr.recv_off[c][s] = dr.recv_off[c][s].min(pc.recv_row);
        }
        for r in cr.iter_mut() {
            for o in r.send_off.iter_mut().chain(r.recv_off.iter_mut()) {
                for v in o.iter_mut().filter(|v| **v == u64::MAX) {
                    *v = 0;
                }
            }
        }
        self.chunks = cr;
    }

    /// Copies each rank sends to each GPU, as a dispatch matrix (for
    /// checking against [`crate::plan::dispatch_matrix`]).
    pub fn dispatch(&self) -> DispatchMatrix {
        let p = self.gpus;
        let mut send = vec![0u64; p * p];
        for pc in &self.pieces {
            send[pc.src as usize * p + pc.dst as usize] += pc.rows();
        }
        DispatchMatrix { gpus: p, send }
    }

    /// Pieces rank `r` packs, ordered by (expert, lo): the pack kernel's
    /// per-expert segment lists.
    pub fn pack_pieces(&self, r: usize) -> Vec<Piece> {
        let mut v: Vec<Piece> = self
            .pieces
            .iter()
            .filter(|pc| pc.src as usize == r)
            .copied()
            .collect();
        v.sort_by_key(|pc| (pc.expert, pc.lo));
        v
    }

    /// Rank `r`'s copy-engine pushes that put rows straight where they are
    /// used (no receive buffer, no placing kernel): for the dispatch, its
    /// send rows into each peer's compute rows; for the combine, its result
    /// rows (numbered as its compute rows) into each owner's send rows. Of
    /// the whole layer (`chunk` None) or of the pieces in pipeline chunk `c`
    /// of the computing GPU. Pieces adjacent on both sides are merged into
    /// one push (each copy costs the copy engine a few microseconds).
    pub fn pushes(&self, r: usize, chunk: Option<usize>, dispatch: bool) -> Vec<Push> {
        let mut v: Vec<Push> = self
            .pieces
            .iter()
            .filter(|pc| pc.src != pc.dst && pc.rows() > 0)
            .filter(|pc| (if dispatch { pc.src } else { pc.dst }) as usize == r)
            .filter(|pc| match (chunk, self.chunks.get(pc.dst as usize)) {
                (None, _) => true,
                (Some(c), Some(cr)) => cr.of(pc.comp_row) == c,
                (Some(c), None) => c == 0,
            })
            .map(|pc| {
                if dispatch {
                    Push {
                        peer: pc.dst,
                        from: pc.send_row,
                        to: pc.comp_row,
                        rows: pc.rows(),
                    }
                } else {
                    Push {
                        peer: pc.src,
                        from: pc.comp_row,
                        to: pc.send_row,
                        rows: pc.rows(),
                    }
                }
            })
            .collect();
        v.sort_unstable_by_key(|p| (p.peer, p.from));
        let mut out: Vec<Push> = Vec::with_capacity(v.len());
        for p in v {
            match out.last_mut() {
                Some(q)
                    if q.peer == p.peer && q.from + q.rows == p.from && q.to + q.rows == p.to =>
                {
                    q.rows += p.rows
                }
                _ => out.push(p),
            }
        }
        out
    }

    /// Pieces GPU `g` receives from other ranks.
    pub fn remote_in(&self, g: usize) -> impl Iterator<Item = &Piece> + '_ {
        self.pieces
            .iter()
            .filter(move |pc| pc.dst as usize == g && pc.src as usize != g)
    }

    /// Pieces rank `r` sends to other GPUs.
    pub fn remote_out(&self, r: usize) -> impl Iterator<Item = &Piece> + '_ {
        self.pieces
            .iter()
            .filter(move |pc| pc.src as usize == r && pc.dst as usize != r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{dispatch_matrix, PlanParams, Planner, Policy};
    use crate::trace::tokens::SplitMix64;

    /// The ungated plan of per-rank counts (`p` ranks x `n` experts).
    fn plan_of(per_rank: &[u64], p: usize, n: usize, policy: Policy) -> Plan {
        let global: Vec<u64> = (0..n)
            .map(|e| (0..p).map(|r| per_rank[r * n + e]).sum())
            .collect();
        let params = PlanParams {
            gpus: p,
            alpha: 1.0,
            min_gemm: 16,
            gate: crate::plan::Gate::Always,
        };
        Planner::new().plan(&global, &params, policy).unwrap()
    }

    fn check(per_rank: &[u64], p: usize, n: usize, policy: Policy) {
        let plan = plan_of(per_rank, p, n, policy);
        let lay = build(&plan, per_rank).unwrap();
        // same amounts as the planner's dispatch matrix
        let mut dm = DispatchMatrix::default();
        dispatch_matrix(&plan, per_rank, &mut dm);
        assert_eq!(lay.dispatch(), dm);
        // every local copy of every expert on every rank is packed once
        for r in 0..p {
            let mut seen = vec![0u64; n];
            let mut last_hi = vec![0u64; n];
            for pc in lay.pack_pieces(r) {
                assert_eq!(pc.lo, last_hi[pc.expert as usize], "pieces tile [0, cnt)");
                last_hi[pc.expert as usize] = pc.hi;
                seen[pc.expert as usize] += pc.rows();
            }
            assert_eq!(&seen[..], &per_rank[r * n..(r + 1) * n]);
        }
        for (g, rl) in lay.ranks.iter().enumerate() {
            assert_eq!(rl.compute_rows, plan.gpu_loads[g]);
            // compute rows are tiled exactly once by the pieces
            let mut rows: Vec<(u64, u64)> = lay
                .pieces
                .iter()
                .filter(|pc| pc.dst as usize == g)
                .map(|pc| (pc.comp_row, pc.rows()))
                .collect();
            rows.sort();
            let mut at = 0;
            for (s, l) in rows {
                assert_eq!(s, at);
                at += l;
            }
            assert_eq!(at, rl.compute_rows);
            // receive buffer rows are tiled exactly once, and each piece's
            // send and receive rows agree in size and order
            let mut rr: Vec<(u64, u64)> = lay
                .remote_in(g)
                .map(|pc| (pc.recv_row, pc.rows()))
                .collect();
            rr.sort();
            let mut at = 0;
            for (s, l) in rr {
                assert_eq!(s, at);
                at += l;
            }
            assert_eq!(at, rl.recv_total);
            for pc in lay.remote_in(g) {
                let src = &lay.ranks[pc.src as usize];
                let off_s = pc.send_row - src.send_off[g];
                let off_r = pc.recv_row - rl.recv_off[pc.src as usize];
                assert_eq!(off_s, off_r, "send and receive orders agree");
            }
            // foreign groups name valid slots with the right expert
            for grp in &rl.groups {
                if let WeightSrc::Foreign(i) = grp.weights {
                    assert_eq!(rl.recv_transfers[i as usize].expert, grp.expert);
                }
            }
        }
        let sent: usize = lay.ranks.iter().map(|r| r.send_transfers.len()).sum();
        assert_eq!(sent, plan.transfers.len());
    }

    /// Per-rank counts (`p` ranks x `n` experts) below `below`, one
    /// random expert's `hot` times as large.
    fn skewed_loads(rng: &mut SplitMix64, p: usize, n: usize, below: u64, hot: u64) -> Vec<u64> {
        let h = rng.below(n as u64) as usize;
        let mut per_rank = vec![0u64; p * n];
        for r in 0..p {
            for e in 0..n {
                let base = rng.below(below);
                per_rank[r * n + e] = if e == h { base * hot } else { base };
            }
        }
        per_rank
    }

    #[test]
    fn layout_agrees_with_dispatch_matrix_on_random_skewed_loads() {
        let mut rng = SplitMix64::new(7);
        for case in 0..200 {
            let p = [1usize, 2, 4, 8][case % 4];
            let n = p * (1 + (case % 5)) * 2;
            let per_rank = skewed_loads(&mut rng, p, n, 50, 20);
            check(&per_rank, p, n, Policy::Ep);
            check(&per_rank, p, n, Policy::Llep);
        }
    }

    #[test]
    fn native_groups_come_before_foreign_ones() {
        let (p, n) = (2usize, 4usize);
        let per_rank = vec![900, 10, 10, 10, 900, 10, 10, 10];
        let global: Vec<u64> = (0..n).map(|e| per_rank[e] + per_rank[n + e]).collect();
        let params = PlanParams {
            gpus: p,
            alpha: 1.0,
            min_gemm: 1,
            gate: crate::plan::Gate::Always,
        };
        let plan = Planner::new().plan(&global, &params, Policy::Llep).unwrap();
        let lay = build(&plan, &per_rank).unwrap();
        let g1 = &lay.ranks[1].groups;
        assert!(g1
            .iter()
            .any(|g| matches!(g.weights, WeightSrc::Foreign(_))));
        let first_foreign = g1
            .iter()
            .position(|g| matches!(g.weights, WeightSrc::Foreign(_)))
            .unwrap();
        assert!(g1[first_foreign..]
            .iter()
            .all(|g| matches!(g.weights, WeightSrc::Foreign(_))));
    }

    /// Chunk tables tile the exchange: per round and peer one contiguous
    /// range, the rounds in buffer order, sender and receiver agreeing.
    fn check_chunks(per_rank: &[u64], p: usize, n: usize, policy: Policy, chunks: usize) {
        let plan = plan_of(per_rank, p, n, policy);
        let whole = build(&plan, per_rank).unwrap();
        let mut lay = whole.clone();
        lay.chunk(chunks, 8);
        assert_eq!(lay.dispatch(), whole.dispatch());
        for (g, cr) in lay.chunks.iter().enumerate() {
            let rl = &lay.ranks[g];
            assert_eq!(cr.bounds.len(), chunks + 1);
            assert_eq!(*cr.bounds.last().unwrap(), rl.compute_rows);
            assert!(cr.bounds.windows(2).all(|w| w[0] <= w[1]));
            for q in 0..p {
                // rounds follow each other in the buffers and add up
                let (mut s_at, mut r_at) = (rl.send_off[q], rl.recv_off[q]);
                for c in 0..chunks {
                    if cr.send_rows[c][q] > 0 {
                        assert_eq!(cr.send_off[c][q], s_at);
                    }
                    if cr.recv_rows[c][q] > 0 {
                        assert_eq!(cr.recv_off[c][q], r_at);
                    }
                    s_at += cr.send_rows[c][q];
                    r_at += cr.recv_rows[c][q];
                    // the peer sees the same round from the other side
                    assert_eq!(cr.recv_rows[c][q], lay.chunks[q].send_rows[c][g]);
                }
                assert_eq!(s_at, rl.send_off[q] + rl.send_rows[q]);
                assert_eq!(r_at, rl.recv_off[q] + rl.recv_rows[q]);
            }
        }
        for pc in &lay.pieces {
            // no piece straddles a cut, and a remote piece lies in its round
            let cr = &lay.chunks[pc.dst as usize];
            let c = cr.of(pc.comp_row);
            assert!(pc.comp_row + pc.rows() <= cr.bounds[c + 1]);
            assert!(pc.comp_row >= cr.bounds[c]);
            if pc.src != pc.dst {
                let (s, d) = (pc.src as usize, pc.dst as usize);
                let lo = cr.recv_off[c][s];
                assert!(pc.recv_row >= lo && pc.recv_row + pc.rows() <= lo + cr.recv_rows[c][s]);
                let sc = &lay.chunks[s];
                let lo = sc.send_off[c][d];
                assert!(pc.send_row >= lo && pc.send_row + pc.rows() <= lo + sc.send_rows[c][d]);
            }
        }
        // pieces still tile each rank's copies and are in compute-row order
        for r in 0..p {
            let mut last_hi = vec![0u64; n];
            for pc in lay.pack_pieces(r) {
                assert_eq!(pc.lo, last_hi[pc.expert as usize]);
                last_hi[pc.expert as usize] = pc.hi;
            }
            assert_eq!(&last_hi[..], &per_rank[r * n..(r + 1) * n]);
            let rows: Vec<u64> = lay.remote_in(r).map(|pc| pc.comp_row).collect();
            assert!(rows.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn chunked_layouts_give_every_round_one_range_per_peer() {
        let mut rng = SplitMix64::new(11);
        for case in 0..120 {
            let p = [2usize, 4, 8][case % 3];
            let n = p * (1 + (case % 4)) * 2;
            let per_rank = skewed_loads(&mut rng, p, n, 60, 30);
            for chunks in [1, 2, 3, 4] {
                check_chunks(&per_rank, p, n, Policy::Ep, chunks);
                check_chunks(&per_rank, p, n, Policy::Llep, chunks);
            }
        }
    }

    /// Replays `pushes` on row labels: every remote copy lands once, where
    /// its piece says (dispatch: the source's send row into the
    /// destination's compute row; combine: back again), each push of chunk
    /// `c` inside chunk `c`'s compute rows, and nothing else is written.
    fn check_pushes(lay: &Layout, p: usize) {
        let chunks = lay.chunks.first().map_or(1, |c| c.bounds.len() - 1);
        let rounds: Vec<Option<usize>> = if lay.chunks.is_empty() {
            vec![None]
        } else {
            (0..chunks).map(Some).collect()
        };
        for dispatch in [true, false] {
            // (rank, row) -> (rank, row) it was written from
            let mut got = std::collections::HashMap::new();
            let mut pushes = 0;
            for r in 0..p {
                for &c in &rounds {
                    for ps in lay.pushes(r, c, dispatch) {
                        pushes += 1;
                        assert_ne!(ps.peer as usize, r);
                        assert!(ps.rows > 0);
                        // a chunk's pushes stay inside its compute rows
                        if let (Some(c), Some(cr)) = (c, lay.chunks.first()) {
                            let (g, row) = if dispatch {
                                (ps.peer as usize, ps.to)
                            } else {
                                (r, ps.from)
                            };
                            let b = &lay.chunks[g].bounds;
                            assert!(row >= b[c] && row + ps.rows <= b[c + 1], "{cr:?}");
                        }
                        for i in 0..ps.rows {
                            let old = got.insert((ps.peer, ps.to + i), (r as u32, ps.from + i));
                            assert!(old.is_none(), "a row written twice");
                        }
                    }
                }
            }
            let mut want = std::collections::HashMap::new();
            let mut pieces = 0;
            for pc in lay
                .pieces
                .iter()
                .filter(|pc| pc.src != pc.dst && pc.rows() > 0)
            {
                pieces += 1;
                for i in 0..pc.rows() {
                    let (d, s) = if dispatch {
                        ((pc.dst, pc.comp_row + i), (pc.src, pc.send_row + i))
                    } else {
                        ((pc.src, pc.send_row + i), (pc.dst, pc.comp_row + i))
                    };
                    want.insert(d, s);
                }
            }
            assert_eq!(got, want);
            assert!(pushes <= pieces, "merging never adds pushes");
        }
    }

    #[test]
    fn pushes_put_every_remote_row_where_its_piece_says_once() {
        let mut rng = SplitMix64::new(23);
        for case in 0..80 {
            let p = [2usize, 4, 8][case % 3];
            let n = p * (1 + (case % 4)) * 2;
            let per_rank = skewed_loads(&mut rng, p, n, 40, 25);
            for policy in [Policy::Ep, Policy::Llep] {
                let plan = plan_of(&per_rank, p, n, policy);
                let mut lay = build(&plan, &per_rank).unwrap();
                check_pushes(&lay, p);
                lay.chunk(1 + case % 5, 8);
                check_pushes(&lay, p);
            }
        }
    }

    #[test]
    fn pushes_merge_pieces_adjacent_on_both_sides() {
        // one expert per GPU, one sender: each round is one push per peer
        let (p, n) = (2usize, 2usize);
        let per_rank = vec![5, 7, 11, 13];
        let plan = plan_of(&per_rank, p, n, Policy::Ep);
        let lay = build(&plan, &per_rank).unwrap();
        let d0 = lay.pushes(0, None, true);
        assert_eq!(d0.len(), 1);
        assert_eq!((d0[0].peer, d0[0].rows), (1, 7));
        let c1 = lay.pushes(1, None, false);
        assert_eq!(c1.len(), 1);
        assert_eq!((c1[0].peer, c1[0].rows), (0, 7));
    }

    #[test]
    fn cuts_snap_to_group_boundaries_nearby() {
        let rl = RankLayout {
            groups: (0..8)
                .map(|i| Group {
                    expert: i,
                    weights: WeightSrc::Native(i),
                    row: i as u64 * 100,
                    rows: 100,
                })
                .collect(),
            compute_rows: 800,
            ..Default::default()
        };
        assert_eq!(cut_points(&rl, 4, 64), vec![0, 200, 400, 600, 800]);
        assert_eq!(cut_points(&rl, 3, 64), vec![0, 300, 500, 800]);
        // one giant group: cut inside it, aligned
        let big = RankLayout {
            groups: vec![Group {
                expert: 0,
                weights: WeightSrc::Native(0),
                row: 0,
                rows: 1000,
            }],
            compute_rows: 1000,
            ..Default::default()
        };
        assert_eq!(cut_points(&big, 2, 64), vec![0, 448, 1000]);
    }

    #[test]
    fn ideal_is_refused() {
        let params = PlanParams {
            gpus: 2,
            alpha: 1.0,
            min_gemm: 1,
            gate: crate::plan::Gate::Always,
        };
        let plan = Planner::new()
            .plan(&[10, 0, 0, 0], &params, Policy::Ideal)
            .unwrap();
        assert_eq!(
            build(&plan, &[5, 0, 0, 0, 5, 0, 0, 0]),
            Err(LayoutError::Ideal)
        );
    }
}
