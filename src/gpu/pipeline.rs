//! The pipelined schedule of a replayed layer (`--overlap on`): the
//! layer's compute rows cut into chunks (`layout::Layout::chunk`), chunk
//! `c + 1` dispatched while chunk `c` computes and chunk `c`'s results sent
//! home while chunk `c + 1` computes. Every token exchange is issued on the
//! one `net` stream and token communicator in a fixed order (all dispatch
//! rounds d0, d1, ..., then the combines c0, c1, ..., each once its chunk
//! is computed; the same on every rank, as NCCL needs), joined to the main
//! stream by events. Through NCCL a round moves one contiguous range per
//! peer (the chunk tables of `layout`), then a copy kernel places the
//! received rows (one send/recv per piece straight into compute rows was
//! measured slower: NCCL's cost per operation). The copy engines push each
//! piece of the chunk straight into the peer's compute rows, and results
//! straight home (`copy_engine`). Weight transfers keep their own stream and
//! communicator. Also the rule choosing the chunk count, shared with the
//! cost model so that `simulate` prices the schedule the replay runs.

use super::layout::Layout;
use super::phases::{CaseBufs, LayoutBufs, Ranges, Remote};
use super::worker::{CopySeg, Worker, E_PACKED, E_RETURNED};
use super::GpuError;

/// Most chunks a layer is cut into (events are made for this many).
pub const MAX_CHUNKS: usize = 8;

/// Chunk cuts inside a group fall on multiples of this many rows (GEMM
/// tiles).
pub const ALIGN: u64 = 128;

/// Below this many compute rows on the busiest GPU the layer is not
/// pipelined (the smallest size measured: 8,192 rows, 2,048 tokens per GPU,
/// where 2 chunks were 4-5% faster on 2 x H200 and 1-2% on 4 x H200).
pub const MIN_ROWS: u64 = 8_192;

/// From this many rows, 6 chunks instead of 2.
pub const MANY_ROWS: u64 = 65_536;

/// The layer's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Dispatch, compute and combine one after the other.
    #[default]
    Off,
    /// Pipelined in this many chunks; 0 chooses by size ([`auto_chunks`]).
    On(usize),
}

/// Chunks chosen by size for a layer whose busiest GPU computes `rows`
/// rows: 1 (no pipeline) below [`MIN_ROWS`], 2 below [`MANY_ROWS`], then 6
/// (at 131,072 rows, 6 chunks beat 4 and 2 on 4 x H200: the first dispatch
/// and the last combine, left exposed, shrink with the chunks; 8 was no
/// better on 2 x H200).
pub fn auto_chunks(rows: u64) -> usize {
    if rows < MIN_ROWS {
        1
    } else if rows < MANY_ROWS {
        2
    } else {
        6
    }
}

/// Chunks of a layer under `overlap` for the busiest GPU's `rows` on
/// `gpus` GPUs (1: the sequential schedule; one GPU has nothing to hide).
pub fn chunks(overlap: Overlap, rows: u64, gpus: usize) -> usize {
    match overlap {
        _ if gpus < 2 => 1,
        Overlap::Off => 1,
        Overlap::On(0) => auto_chunks(rows),
        Overlap::On(n) => n.min(MAX_CHUNKS),
    }
}

/// Size of the first and of the last chunk against each middle one's
/// (1: equal chunks). What no compute hides is the first dispatch round
/// and the last combine round: smaller end chunks shorten both.
/// `LLEP_TRACE_CHUNK_ENDS` overrides it (a developer's knob: the cost
/// model follows, as both cut through [`cuts_into`]).
pub const END_WEIGHT: f64 = 1.0;

/// The end chunks' weight in force ([`END_WEIGHT`] unless overridden).
pub fn end_weight() -> f64 {
    static W: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *W.get_or_init(|| crate::env::chunk_ends().unwrap_or(END_WEIGHT))
}

/// Chunk `c`'s weight among `chunks`.
fn weight(c: usize, chunks: usize, ends: f64) -> f64 {
    if chunks > 2 && (c == 0 || c + 1 == chunks) {
        ends
    } else {
        1.0
    }
}

/// The layer's rows over chunk `c`'s nominal rows (the cuts before
/// snapping): `chunks` for equal chunks.
pub fn parts(c: usize, chunks: usize) -> f64 {
    let ends = end_weight();
    let total: f64 = (0..chunks).map(|j| weight(j, chunks, ends)).sum();
    total / weight(c, chunks, ends)
}

/// Where `rows` compute rows whose groups start at `starts` are cut into
/// `chunks` chunks (`chunks + 1` bounds, 0 first, `rows` last), each near
/// its nominal share ([`parts`]: equal, or smaller at the ends): at a group
/// start when one lies within a quarter chunk of the nominal cut (a whole
/// group stays one GEMM), else at the nominal cut rounded down to `align`
/// rows. The cost model cuts its groups the same way.
pub fn cuts(starts: &[u64], rows: u64, chunks: usize, align: u64) -> Vec<u64> {
    let mut b = Vec::with_capacity(chunks + 1);
    cuts_into(starts, rows, chunks, align, &mut b);
    b
}

/// [`cuts`] into `b` (cleared first): the cost model cuts every plan's
/// groups on `llep-auto`'s decision, on the replayed layer's critical path.
pub fn cuts_into(starts: &[u64], rows: u64, chunks: usize, align: u64, b: &mut Vec<u64>) {
    cuts_weighted(starts, rows, chunks, align, end_weight(), b)
}

fn cuts_weighted(
    starts: &[u64],
    rows: u64,
    chunks: usize,
    align: u64,
    ends: f64,
    b: &mut Vec<u64>,
) {
    let total: f64 = (0..chunks).map(|j| weight(j, chunks, ends)).sum();
    let unit = rows as f64 / total;
    let align = align.max(1);
    // group starts come in increasing order from both callers: then the
    // nearest one is beside the even cut (a binary search, not a scan)
    let sorted = starts.windows(2).all(|w| w[0] < w[1]);
    b.clear();
    b.push(0);
    let mut at = 0.0;
    for c in 1..chunks {
        at += weight(c - 1, chunks, ends);
        let even = (unit * at) as u64;
        // a quarter of the smaller chunk beside the cut
        let tol = unit * weight(c - 1, chunks, ends).min(weight(c, chunks, ends)) / 4.0;
        let near = if sorted {
            nearest_sorted(starts, even)
        } else {
            nearest_by_scan(starts, even)
        };
        let cut = match near {
            Some(r) if (r.abs_diff(even) as f64) <= tol => r,
            _ => even / align * align,
        };
        let prev = *b.last().unwrap_or(&0);
        b.push(cut.clamp(prev, rows));
    }
    b.push(rows);
}

/// The first positive start nearest `even`, in any order of `starts`.
fn nearest_by_scan(starts: &[u64], even: u64) -> Option<u64> {
    starts
        .iter()
        .copied()
        .filter(|&r| r > 0)
        .min_by_key(|&r| r.abs_diff(even))
}

/// The positive start nearest `even` in strictly increasing `starts`, the
/// lower on a tie: what [`nearest_by_scan`] finds there.
fn nearest_sorted(starts: &[u64], even: u64) -> Option<u64> {
    let i = starts.partition_point(|&r| r <= even);
    let below = i.checked_sub(1).map(|j| starts[j]).filter(|&r| r > 0);
    let above = starts.get(i).copied();
    match (below, above) {
        (Some(a), Some(b)) if b.abs_diff(even) < a.abs_diff(even) => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// [`chunks`] for a built layout.
pub(super) fn chunks_for(lay: &Layout, overlap: Overlap) -> usize {
    let rows = lay.ranks.iter().map(|r| r.compute_rows).max().unwrap_or(0);
    chunks(overlap, rows, lay.gpus)
}

/// Pipeline events per chunk (index `c * PE + k`): dispatch round start and
/// end (net), compute start and end, results copied out (main), combine
/// round start and end (net); with copy-engine exchange, also the placing
/// of the chunk's received rows (main), start and end.
pub(super) const PE: usize = 9;
pub(super) const DS: usize = 0;
pub(super) const DE: usize = 1;
pub(super) const CS: usize = 2;
pub(super) const CC: usize = 3;
pub(super) const CE: usize = 4;
pub(super) const CQ: usize = 5;
pub(super) const CR: usize = 6;
pub(super) const PS: usize = 7;
pub(super) const PL: usize = 8;

impl Worker<'_> {
    /// The pipelined layer after planning: pack everything once, then the
    /// rounds; ends as the sequential schedule does (`combine_rows`).
    pub(super) fn pipelined(
        &self,
        lay: &Layout,
        cb: &CaseBufs,
        lb: &LayoutBufs,
        remote: &Remote,
        copies: usize,
        t: usize,
    ) -> Result<(), GpuError> {
        let r = self.rank;
        let (main, net) = (self.dev.main, self.dev.net);
        let cr = &lay.chunks[r];
        let rl = &lay.ranks[r];
        let n = cr.bounds.len() - 1;
        self.pack(cb, lb, copies)?;
        self.dev.wait(net, &self.ev[E_PACKED])?;
        // every dispatch round first: rows arrive as early as the link
        // allows, and a chunk that waits (on its weights, on a slow peer)
        // never holds back the next chunk's rows behind its combine
        for c in 0..n {
            self.round(lay, lb, remote, c, true)?;
        }
        let ce = self.ce();
        let direct = self.ce_direct();
        if ce {
            // every rank's pushes are issued before any rank waits on them
            self.linked().meet()?;
            self.ce_pull_weights(lay, lb.foreign)?;
        }
        if ce && !direct {
            // staged: each chunk's rows are placed on the side stream as
            // soon as its peers' pushes land, beside the previous chunk's
            // GEMMs
            let side = self.dev.side;
            for c in 0..n {
                self.ce_wait_pushed(lay, Some(c), side)?;
                self.pev[c * PE + PS].record(side)?;
                self.place(remote, lb, c, side)?;
                self.pev[c * PE + PL].record(side)?;
            }
        }
        let mut waited = false;
        for c in 0..n {
            if direct {
                // the peers pushed chunk c's rows into place themselves
                self.ce_wait_pushed(lay, Some(c), main)?;
            } else {
                let arrived = if ce { PL } else { DE };
                self.dev.wait(main, &self.pev[c * PE + arrived])?;
            }
            self.pev[c * PE + CS].record(main)?;
            let units = self.units_in(lay, r, cr.bounds[c], cr.bounds[c + 1]);
            self.compute(&units, rl, lb.units(cb.native), &mut waited)?;
            self.pev[c * PE + CC].record(main)?;
            let part = remote.parts[c];
            if part.rows > 0 && !direct {
                // SAFETY: the chunk's entries of the table, rows in comp
                // and recv.
                unsafe {
                    self.copy_rows(seg_at(lb.segs_out, part.first), part.nseg, part.rows, main)?
                };
            }
            self.pev[c * PE + CE].record(main)?;
            self.round(lay, lb, remote, c, false)?;
        }
        self.ev[E_RETURNED].record(net)?;
        if ce {
            self.linked().meet()?;
            self.ce_wait_returned(lay, main)?;
        }
        self.dev.wait(main, &self.ev[E_RETURNED])?;
        self.combine_rows(cb, t)
    }

    /// Place chunk `c`'s received rows into the compute buffer on stream
    /// `s`.
    fn place(
        &self,
        remote: &Remote,
        lb: &LayoutBufs,
        c: usize,
        s: cudarc::driver::sys::CUstream,
    ) -> Result<(), GpuError> {
        let part = remote.parts[c];
        if part.rows > 0 {
            // SAFETY: the chunk's entries of the table, rows in recv and
            // comp.
            unsafe { self.copy_rows(seg_at(lb.segs_in, part.first), part.nseg, part.rows, s)? };
        }
        Ok(())
    }

    /// Exchange round `c` on the net stream: a dispatch (then its received
    /// rows placed into the compute buffer), or a combine once chunk `c`'s
    /// results are copied out.
    fn round(
        &self,
        lay: &Layout,
        lb: &LayoutBufs,
        remote: &Remote,
        c: usize,
        dispatch: bool,
    ) -> Result<(), GpuError> {
        let net = self.dev.net;
        let x = Ranges::of_chunk(&lay.chunks[self.rank], c);
        let rb = self.rb();
        let ce = self.ce();
        if dispatch {
            self.pev[c * PE + DS].record(net)?;
            if ce {
                // direct: into the peers' compute rows; staged: placed on
                // the side stream once the peers' pushes are in
                self.ce_push_rows(lay, lb, Some(c), true, net)?;
            } else {
                self.exchange_ranges(&x, lb.send, lb.recv, rb, net, true)?;
                self.place(remote, lb, c, net)?;
            }
            self.pev[c * PE + DE].record(net)?;
        } else {
            self.dev.wait(net, &self.pev[c * PE + CE])?;
            self.pev[c * PE + CQ].record(net)?;
            if ce {
                self.ce_push_rows(lay, lb, Some(c), false, net)?;
            } else {
                self.exchange_ranges(&x, lb.send, lb.recv, rb, net, false)?;
            }
            self.pev[c * PE + CR].record(net)?;
        }
        Ok(())
    }

    /// Busy times (ms) of a pipelined run just finished: dispatch (pack and
    /// its rounds), expert compute, combine (copies out, its rounds, the
    /// weighted sum), each summed over chunks.
    pub(super) fn pipeline_busy(&self, chunks: usize) -> Result<[f64; 3], GpuError> {
        use super::worker::{E_END, E_PLANNED};
        let e = &self.ev;
        let p = &self.pev;
        let mut b = [
            e[E_PACKED].ms_since(&e[E_PLANNED])?,
            0.0,
            e[E_END].ms_since(&e[E_RETURNED])?,
        ];
        for c in 0..chunks {
            let at = |k: usize| &p[c * PE + k];
            b[0] += at(DE).ms_since(at(DS))?;
            if self.ce() && !self.ce_direct() {
                b[0] += at(PL).ms_since(at(PS))?;
            }
            b[1] += at(CC).ms_since(at(CS))?;
            b[2] += at(CE).ms_since(at(CC))? + at(CR).ms_since(at(CQ))?;
        }
        Ok(b)
    }
}

/// Give the token exchange a high-priority stream (the pipelined schedule
/// only): its kernels then take SMs as the running GEMM's blocks retire
/// instead of queueing behind all of them, so a round is not stretched to
/// the end of the GEMM it overlaps.
pub(super) fn prioritise_net(dev: &mut super::runtime::Dev) -> Result<(), GpuError> {
    use cudarc::driver::sys as ds;
    let (mut least, mut greatest) = (0i32, 0i32);
    let mut s: ds::CUstream = std::ptr::null_mut();
    // SAFETY: the device's context is current on this thread; the old net
    // stream is idle (nothing queued yet) and replaced before any use.
    unsafe {
        let r = ds::cuCtxGetStreamPriorityRange(&mut least, &mut greatest);
        if r != ds::cudaError_enum::CUDA_SUCCESS {
            return Err(GpuError::Cuda(format!(
                "cuCtxGetStreamPriorityRange: {r:?}"
            )));
        }
        let flags = ds::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
        let r = ds::cuStreamCreateWithPriority(&mut s, flags, greatest);
        if r != ds::cudaError_enum::CUDA_SUCCESS {
            return Err(GpuError::Cuda(format!("cuStreamCreateWithPriority: {r:?}")));
        }
        let _ = ds::cuStreamDestroy_v2(dev.net);
    }
    dev.net = s;
    Ok(())
}

/// Address of entry `i` of a segment table at `segs`.
fn seg_at(segs: u64, i: i32) -> u64 {
    segs + i as u64 * std::mem::size_of::<CopySeg>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_finds_the_start_the_scan_finds() {
        // an even cut at 400 with starts 50 below and above it: the lower
        assert_eq!(cuts(&[0, 350, 450], 800, 2, 1), [0, 350, 800]);
        let mut rng = crate::trace::tokens::SplitMix64::new(11);
        for _ in 0..3000 {
            let n = rng.below(40) as usize;
            // group sizes, some of one row and some equal, so that ties
            // between the starts below and above an even cut occur
            let mut starts = Vec::with_capacity(n);
            let mut at = 0u64;
            for _ in 0..n {
                starts.push(at);
                at += [1, 64, 128, 1 + rng.below(3000)][rng.below(4) as usize];
            }
            for even in (0..at + 3).step_by(1 + (at / 200) as usize) {
                assert_eq!(
                    nearest_sorted(&starts, even),
                    nearest_by_scan(&starts, even),
                    "{starts:?} {even}"
                );
            }
        }
    }

    #[test]
    fn smaller_end_chunks_shrink_the_first_and_last_cut() {
        let mut b = Vec::new();
        // 6 groups of 100 rows, 4 chunks at end weight 0.5: shares 1:2:2:1
        let starts: Vec<u64> = (0..8).map(|i| i * 100).collect();
        cuts_weighted(&starts[..6], 600, 4, 64, 0.5, &mut b);
        assert_eq!(b, [0, 100, 300, 500, 600]);
        // weight 1 is the even cut
        cuts_weighted(&starts, 800, 4, 64, 1.0, &mut b);
        assert_eq!(b, [0, 200, 400, 600, 800]);
        // two chunks stay halves whatever the weight
        cuts_weighted(&[0], 1000, 2, 1, 0.25, &mut b);
        assert_eq!(b, [0, 500, 1000]);
        // one group: cuts at the weighted rows, aligned down
        cuts_weighted(&[0], 6000, 6, 128, 0.5, &mut b);
        assert_eq!(b, [0, 512, 1792, 2944, 4096, 5376, 6000]);
    }

    #[test]
    fn chunk_counts_follow_size_and_setting() {
        assert_eq!(chunks(Overlap::Off, 1 << 20, 4), 1);
        assert_eq!(chunks(Overlap::On(0), MIN_ROWS - 1, 4), 1);
        assert_eq!(chunks(Overlap::On(0), MIN_ROWS, 4), 2);
        assert_eq!(chunks(Overlap::On(0), 131_072, 4), 6);
        assert_eq!(chunks(Overlap::On(3), 10, 4), 3);
        assert_eq!(chunks(Overlap::On(99), 10, 4), MAX_CHUNKS);
        assert_eq!(chunks(Overlap::On(4), 1 << 20, 1), 1);
    }
}
