//! The pipelined schedule of a replayed layer (`--overlap on`): the
//! layer's compute rows cut into chunks (`layout::Layout::chunk`), chunk
//! `c + 1` dispatched while chunk `c` computes and chunk `c`'s results sent
//! home while chunk `c + 1` computes. Every token exchange is issued on the
//! one `net` stream and token communicator in a fixed order (all dispatch
//! rounds d0, d1, ..., then the combines c0, c1, ..., each once its chunk
//! is computed; the same on every rank, as NCCL needs), joined to the main
//! stream by events, and each remote piece moves straight between the send
//! buffer and its compute rows (no copy kernel beside the GEMMs); weight
//! transfers keep their own stream and communicator. Also the rule choosing the chunk count, shared with the
//! cost model so that `simulate` prices the schedule the replay runs.

use super::layout::Layout;
use super::phases::{CaseBufs, LayoutBufs};
use super::runtime::Comm;
use super::worker::{Worker, E_PACKED, E_RETURNED};
use super::GpuError;

/// Most chunks a layer is cut into (events are made for this many).
pub const MAX_CHUNKS: usize = 8;

/// Chunk cuts inside a group fall on multiples of this many rows (GEMM
/// tiles).
pub const ALIGN: u64 = 128;

/// Below this many compute rows on the busiest GPU the layer is not
/// pipelined: the exchanges are short and splitting the GEMMs costs more
/// than it hides.
pub const MIN_ROWS: u64 = 16_384;

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
/// rows: 1 (no pipeline) below [`MIN_ROWS`], then 2, and 6 from 4x that
/// (on 4 x H200 at 131,072 rows, 6 chunks beat 4 and 2: the first
/// dispatch and the last combine, left exposed, shrink with the chunks).
pub fn auto_chunks(rows: u64) -> usize {
    if rows < MIN_ROWS {
        1
    } else if rows < 4 * MIN_ROWS {
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

/// Where `rows` compute rows whose groups start at `starts` are cut into
/// `chunks` near-equal chunks (`chunks + 1` bounds, 0 first, `rows` last):
/// at a group start when one lies within a quarter chunk of the even cut
/// (a whole group stays one GEMM), else at the even cut rounded down to
/// `align` rows. The cost model cuts its groups the same way.
pub fn cuts(starts: &[u64], rows: u64, chunks: usize, align: u64) -> Vec<u64> {
    let step = rows as f64 / chunks as f64;
    let align = align.max(1);
    let mut b = vec![0u64];
    for c in 1..chunks {
        let even = (step * c as f64) as u64;
        let near = starts
            .iter()
            .copied()
            .filter(|&r| r > 0)
            .min_by_key(|&r| r.abs_diff(even));
        let cut = match near {
            Some(r) if (r.abs_diff(even) as f64) <= step / 4.0 => r,
            _ => even / align * align,
        };
        let prev = *b.last().unwrap_or(&0);
        b.push(cut.clamp(prev, rows));
    }
    b.push(rows);
    b
}

/// [`chunks`] for a built layout.
pub(super) fn chunks_for(lay: &Layout, overlap: Overlap) -> usize {
    let rows = lay.ranks.iter().map(|r| r.compute_rows).max().unwrap_or(0);
    chunks(overlap, rows, lay.gpus)
}

/// Pipeline events per chunk (index `c * PE + k`): dispatch round start and
/// end (net), compute start and end, results copied out (main), combine
/// round start and end (net).
pub(super) const PE: usize = 7;
pub(super) const DS: usize = 0;
pub(super) const DE: usize = 1;
pub(super) const CS: usize = 2;
pub(super) const CC: usize = 3;
pub(super) const CE: usize = 4;
pub(super) const CQ: usize = 5;
pub(super) const CR: usize = 6;

/// One point-to-point operation of an exchange round.
#[derive(Debug, Clone, Copy)]
struct Op {
    send: bool,
    peer: usize,
    ptr: u64,
    bytes: usize,
}

/// Every round's operations on this rank, dispatch and combine, per chunk.
/// Each remote piece moves on its own: sent from the send buffer straight
/// into its compute rows, its results sent from the compute rows straight
/// back to the send buffer, so no copy kernel runs beside the GEMMs. Both
/// sides list a pair's pieces in the layout's order, as NCCL pairs them.
struct Rounds {
    dispatch: Vec<Vec<Op>>,
    combine: Vec<Vec<Op>>,
}

fn rounds(lay: &Layout, r: usize, send: u64, comp: u64, rb: u64) -> Rounds {
    let n = lay.chunks.first().map_or(1, |c| c.bounds.len() - 1);
    let mut out = Rounds {
        dispatch: vec![Vec::new(); n],
        combine: vec![Vec::new(); n],
    };
    for pc in lay.pieces.iter().filter(|pc| pc.src != pc.dst) {
        let (s, d) = (pc.src as usize, pc.dst as usize);
        if s != r && d != r {
            continue;
        }
        let c = lay.chunks[d].of(pc.comp_row);
        let bytes = (pc.rows() * rb) as usize;
        let at_send = send + pc.send_row * rb;
        let at_comp = comp + pc.comp_row * rb;
        if s == r {
            out.dispatch[c].push(Op {
                send: true,
                peer: d,
                ptr: at_send,
                bytes,
            });
            out.combine[c].push(Op {
                send: false,
                peer: d,
                ptr: at_send,
                bytes,
            });
        } else {
            out.dispatch[c].push(Op {
                send: false,
                peer: s,
                ptr: at_comp,
                bytes,
            });
            out.combine[c].push(Op {
                send: true,
                peer: s,
                ptr: at_comp,
                bytes,
            });
        }
    }
    out
}

impl Worker<'_> {
    /// The pipelined layer after planning: pack everything once, then the
    /// rounds; ends as the sequential schedule does (`combine_rows`).
    pub(super) fn pipelined(
        &self,
        lay: &Layout,
        cb: &CaseBufs,
        lb: &LayoutBufs,
        copies: usize,
        t: usize,
    ) -> Result<(), GpuError> {
        let r = self.rank;
        let (main, net) = (self.dev.main, self.dev.net);
        let cr = &lay.chunks[r];
        let rl = &lay.ranks[r];
        let n = cr.bounds.len() - 1;
        let ops = rounds(lay, r, lb.send, lb.comp, self.rb());
        self.pack(cb, lb, copies)?;
        self.dev.wait(net, &self.ev[E_PACKED])?;
        // every dispatch round first: rows arrive as early as the link
        // allows, and a chunk that waits (on its weights, on a slow peer)
        // never holds back the next chunk's rows behind its combine
        for c in 0..n {
            self.round(&ops.dispatch[c], c, true)?;
        }
        let mut waited = false;
        for c in 0..n {
            self.dev.wait(main, &self.pev[c * PE + DE])?;
            self.pev[c * PE + CS].record(main)?;
            let units = self.units_in(lay, r, cr.bounds[c], cr.bounds[c + 1]);
            self.compute(
                &units,
                rl,
                lb.comp,
                lb.h,
                lb.act,
                lb.yout,
                cb.native,
                lb.foreign,
                &mut waited,
            )?;
            self.pev[c * PE + CC].record(main)?;
            self.pev[c * PE + CE].record(main)?;
            self.round(&ops.combine[c], c, false)?;
        }
        self.ev[E_RETURNED].record(net)?;
        self.dev.wait(main, &self.ev[E_RETURNED])?;
        self.combine_rows(cb, t)
    }

    /// Exchange round `c` on the net stream: a dispatch, or a combine once
    /// chunk `c`'s results are in its compute rows.
    fn round(&self, ops: &[Op], c: usize, dispatch: bool) -> Result<(), GpuError> {
        let net = self.dev.net;
        if dispatch {
            self.pev[c * PE + DS].record(net)?;
        } else {
            self.dev.wait(net, &self.pev[c * PE + CE])?;
            self.pev[c * PE + CQ].record(net)?;
        }
        Comm::group_start()?;
        // SAFETY: every pointer is a piece's rows inside send or comp
        // (sized by the layout); the peer posts the matching operation
        // for the same piece, in the same order.
        let res = (|| unsafe {
            for o in ops {
                if o.send {
                    self.comm.send(o.ptr, o.bytes, o.peer, net)?;
                } else {
                    self.comm.recv(o.ptr, o.bytes, o.peer, net)?;
                }
            }
            Ok(())
        })();
        Comm::group_end()?;
        res?;
        self.pev[c * PE + if dispatch { DE } else { CR }].record(net)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rank's rounds pair up with its peers' (same sizes in the same
    /// order per pair, as NCCL matches them), and a GPU's dispatch receives
    /// tile its remote compute rows exactly once.
    #[test]
    fn rounds_pair_up_and_cover_the_remote_rows() {
        use crate::plan::{Gate, PlanParams, Planner, Policy};
        use crate::trace::tokens::SplitMix64;
        let mut rng = SplitMix64::new(5);
        for case in 0..60 {
            let p = [2usize, 4, 8][case % 3];
            let n = p * 4;
            let mut per_rank = vec![0u64; p * n];
            let hot = rng.below(n as u64) as usize;
            for (i, v) in per_rank.iter_mut().enumerate() {
                let b = rng.below(80);
                *v = if i % n == hot { b * 25 } else { b };
            }
            let global: Vec<u64> = (0..n)
                .map(|e| (0..p).map(|r| per_rank[r * n + e]).sum())
                .collect();
            let params = PlanParams {
                gpus: p,
                alpha: 1.0,
                min_gemm: 16,
                gate: Gate::Always,
            };
            let policy = if case % 2 == 0 {
                Policy::Ep
            } else {
                Policy::Llep
            };
            let plan = Planner::new().plan(&global, &params, policy).unwrap();
            let mut lay = crate::gpu::layout::build(&plan, &per_rank).unwrap();
            let chunks = 2 + case % 5;
            lay.chunk(chunks, 8);
            let (send, comp, rb) = (1u64 << 40, 1u64 << 50, 16u64);
            let all: Vec<Rounds> = (0..p).map(|r| rounds(&lay, r, send, comp, rb)).collect();
            for c in 0..chunks {
                for r in 0..p {
                    for q in (0..p).filter(|&q| q != r) {
                        let sizes = |ops: &[Op], send: bool, peer: usize| -> Vec<usize> {
                            ops.iter()
                                .filter(|o| o.send == send && o.peer == peer)
                                .map(|o| o.bytes)
                                .collect()
                        };
                        assert_eq!(
                            sizes(&all[r].dispatch[c], true, q),
                            sizes(&all[q].dispatch[c], false, r)
                        );
                        assert_eq!(
                            sizes(&all[r].combine[c], true, q),
                            sizes(&all[q].combine[c], false, r)
                        );
                    }
                }
            }
            for (r, rl) in lay.ranks.iter().enumerate() {
                let mut got: Vec<(u64, u64)> = all[r]
                    .dispatch
                    .iter()
                    .flatten()
                    .filter(|o| !o.send)
                    .map(|o| ((o.ptr - comp) / rb, o.bytes as u64 / rb))
                    .collect();
                got.sort();
                let mut want: Vec<(u64, u64)> = lay
                    .remote_in(r)
                    .map(|pc| (pc.comp_row, pc.rows()))
                    .collect();
                want.sort();
                assert_eq!(got, want);
                let recv: u64 = got.iter().map(|g| g.1).sum();
                assert_eq!(recv, rl.recv_total);
            }
        }
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
