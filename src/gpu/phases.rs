//! The replayed layer, one run: count exchange + planning -> dispatch
//! (+ weight transfers on their own stream and communicator) -> expert
//! GEMMs -> combine, each phase a method of the [`Worker`] bracketed by the
//! events `timing` reads. `run_once` only strings the phases together.

use super::config::{Act, Case};
use super::layout::{self, Layout, WeightSrc};
use super::runtime::{params, BufKind, Comm};
use super::units::{self, ExpertUnit, Scratch, TwoStreams, UnitShape};
use super::worker::{
    CopySeg, PackSeg, RunOut, Worker, CHUNK, E_BE, E_BS, E_DISPATCHED, E_END, E_PACKED, E_PLANNED,
    E_RET, E_RETURNED, E_START,
};
use super::{Gate, GpuError};
use crate::plan::{Plan, PlanParams, Policy};
use cudarc::nccl::sys::ncclDataType_t;

/// Per-peer exchange ranges (rows, first row) of the send and receive
/// buffers.
pub(super) struct Ranges<'a> {
    pub(super) send_rows: &'a [u64],
    pub(super) send_off: &'a [u64],
    pub(super) recv_rows: &'a [u64],
    pub(super) recv_off: &'a [u64],
}

impl<'a> Ranges<'a> {
    /// A rank's whole layer.
    pub(super) fn of_rank(rl: &'a layout::RankLayout) -> Self {
        Ranges {
            send_rows: &rl.send_rows,
            send_off: &rl.send_off,
            recv_rows: &rl.recv_rows,
            recv_off: &rl.recv_off,
        }
    }

    /// Pipeline chunk `c` of a rank's layer.
    pub(super) fn of_chunk(cr: &'a layout::ChunkRanges, c: usize) -> Self {
        Ranges {
            send_rows: &cr.send_rows[c],
            send_off: &cr.send_off[c],
            recv_rows: &cr.recv_rows[c],
            recv_off: &cr.recv_off[c],
        }
    }
}

/// A run of rows of one group computed by one GEMM pair.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unit {
    pub(super) group: u32,
    pub(super) row: u64,
    pub(super) rows: u64,
    foreign: bool,
}

/// Buffers every run of a case uses (sized by `setup` and `measure`).
pub(super) struct CaseBufs {
    pub(super) ids: u64,
    pub(super) wts: u64,
    pub(super) slot: u64,
    pub(super) counts: u64,
    pub(super) counts_all: u64,
    pub(super) ret_ptr: u64,
    pub(super) bias_ptr: u64,
    pub(super) out: u64,
    pub(super) x: u64,
    pub(super) native: u64,
    pub(super) bias_table: u64,
}

/// Buffers sized for this run's layout (by `ensure`).
pub(super) struct LayoutBufs {
    pub(super) send: u64,
    pub(super) recv: u64,
    pub(super) comp: u64,
    pub(super) h: u64,
    pub(super) act: u64,
    pub(super) foreign: u64,
    pub(super) packsegs: u64,
    pub(super) segs_in: u64,
    pub(super) segs_out: u64,
    pub(super) seg_start: u64,
    /// Training runs: down outputs land here, not over their inputs (0
    /// otherwise), and received rows of the backward are placed by segs_yin.
    pub(super) yout: u64,
    pub(super) segs_yin: u64,
}

impl LayoutBufs {
    /// Where this layout's expert units read and write, with the GPU's
    /// native weights at `native`.
    pub(super) fn units(&self, native: u64) -> UnitBufs {
        UnitBufs {
            comp: self.comp,
            h: self.h,
            act: self.act,
            yout: self.yout,
            native,
            foreign: self.foreign,
        }
    }
}

/// Where a GPU's expert units read and write: its compute rows, the
/// gate_up and activation scratch, a training run's outputs (0 otherwise),
/// and its native and received weight blobs.
#[derive(Debug, Clone, Copy)]
pub(super) struct UnitBufs {
    pub(super) comp: u64,
    pub(super) h: u64,
    pub(super) act: u64,
    pub(super) yout: u64,
    pub(super) native: u64,
    pub(super) foreign: u64,
}

/// The remote copies the segment tables move: table entries and rows.
pub(super) struct Remote {
    pub(super) nseg: i32,
    pub(super) rows: i64,
    /// Per pipeline chunk (one without overlap): its entries of the tables
    /// (first, count) and its rows, numbered from 0 within the chunk.
    pub(super) parts: Vec<SegPart>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SegPart {
    pub(super) first: i32,
    pub(super) nseg: i32,
    pub(super) rows: i64,
}

/// Copies per block of the slot-numbering kernels (`route_count`,
/// `route_slots`); the block counts buffer holds one row of counts per
/// block.
pub(super) const ROUTE_BLOCK: usize = 256;
/// Host checkpoints of the overhead phase (`LLEP_TRACE_HOST_TIMING`),
/// microseconds from the count all-gather's launch: counts downloaded,
/// planned, decided (`llep-auto`), laid out, tables queued.
pub(super) const HOST_MARKS: usize = 5;
/// Threads per block of `combine_rows` (each takes 8 columns of a row).
const COMBINE_THREADS: usize = 128;

impl Worker<'_> {
    /// One run of the layer on this rank, phase after phase, each queued on
    /// its stream between the events `run_times` reads; the host waits only
    /// for the counts and, at the end, for the run to finish.
    pub(super) fn run_once(
        &mut self,
        case: &Case,
        policy: Policy,
        gate: Gate,
    ) -> Result<RunOut, GpuError> {
        let copies = case.routing[self.rank].ids.len();
        let t = copies / self.cfg.top_k;
        let cb = self.case_bufs()?;
        if self.world > 1 {
            // every rank starts the run together: a rank still finishing
            // the host side of the previous run (another setting's, when
            // settings take turns) would otherwise be timed as the others'
            // wait in the count exchange
            self.gather_f64(&[0.0])?;
        }
        let Some(lay) = self.count_exchange(&cb, copies, policy, gate)? else {
            return Ok(RunOut::Oom);
        };
        let lb = self.layout_bufs()?;
        let remote = self.upload_tables(&lay, &cb, &lb)?;
        if self.ce() {
            self.ce_publish(&cb, &lb)?;
        }
        let has_x = self.transfer_weights(&lay, cb.native, lb.foreign)?;
        if !self.ce() {
            // copy-engine pulls connect no NCCL pair
            self.note_weight_peers(&lay.ranks[self.rank], false);
        }
        self.pipe_chunks = lay.chunks.first().map_or(1, |c| c.bounds.len() - 1);
        if lay.chunks.is_empty() && self.ce() {
            self.ce_dispatch(&lay, &cb, &lb, &remote, copies)?;
            self.expert_compute(&lay, &lb, cb.native)?;
            self.ce_combine(&lay, &cb, &lb, &remote, t)?;
        } else if lay.chunks.is_empty() {
            self.dispatch(&lay, &cb, &lb, &remote, copies)?;
            self.expert_compute(&lay, &lb, cb.native)?;
            self.combine(&lay, &cb, &lb, &remote, t)?;
        } else {
            self.pipelined(&lay, &cb, &lb, &remote, copies, t)?;
        }
        let has_g = if self.cfg.train {
            self.backward(&lay, copies, t, remote.nseg, remote.rows)?
        } else {
            false
        };
        Ok(RunOut::Done(self.run_times(has_x, has_g)?))
    }

    /// The overhead phase alone, as `run_once` opens a run (count
    /// exchange, planning, tables; ends at `E_PLANNED`): `calibrate` times
    /// it back to back. `false` when a rank ran out of memory.
    pub(super) fn overhead_once(
        &mut self,
        case: &Case,
        policy: Policy,
        gate: Gate,
    ) -> Result<bool, GpuError> {
        let copies = case.routing[self.rank].ids.len();
        let cb = self.case_bufs()?;
        let Some(lay) = self.count_exchange(&cb, copies, policy, gate)? else {
            return Ok(false);
        };
        let lb = self.layout_bufs()?;
        self.upload_tables(&lay, &cb, &lb)?;
        Ok(true)
    }

    pub(super) fn case_bufs(&mut self) -> Result<CaseBufs, GpuError> {
        Ok(CaseBufs {
            ids: self.ptr(BufKind::Ids)?,
            wts: self.ptr(BufKind::W)?,
            slot: self.ptr(BufKind::Slot)?,
            counts: self.ptr(BufKind::Counts)?,
            counts_all: self.ptr(BufKind::CountsAll)?,
            ret_ptr: self.ptr(BufKind::RetPtr)?,
            bias_ptr: self.ptr(BufKind::BiasPtr)?,
            out: self.ptr(BufKind::Out)?,
            x: self.ptr(BufKind::X)?,
            native: self.ptr(BufKind::Native)?,
            bias_table: self.ptr(BufKind::BiasTable)?,
        })
    }

    pub(super) fn layout_bufs(&mut self) -> Result<LayoutBufs, GpuError> {
        Ok(LayoutBufs {
            send: self.ptr(BufKind::Send)?,
            recv: self.ptr(BufKind::Recv)?,
            comp: self.ptr(BufKind::Comp)?,
            h: self.ptr(BufKind::H)?,
            act: self.ptr(BufKind::Act)?,
            foreign: self.ptr(BufKind::Foreign)?,
            packsegs: self.ptr(BufKind::PackSegs)?,
            segs_in: self.ptr(BufKind::SegsIn)?,
            segs_out: self.ptr(BufKind::SegsOut)?,
            seg_start: self.ptr(BufKind::SegStart)?,
            yout: if self.cfg.train {
                self.ptr(BufKind::Yout)?
            } else {
                0
            },
            segs_yin: if self.cfg.train {
                self.ptr(BufKind::SegsYIn)?
            } else {
                0
            },
        })
    }

    /// Count exchange and planning: route this rank's copies to experts,
    /// all-gather the counts (the one host sync), plan, lay the plan out and
    /// grow the buffers for it. `None` when a rank ran out of memory.
    fn count_exchange(
        &mut self,
        cb: &CaseBufs,
        copies: usize,
        policy: Policy,
        gate: Gate,
    ) -> Result<Option<Layout>, GpuError> {
        let (p, n) = (self.world, self.experts());
        let main = self.dev.main;
        let (ids, slot, counts, counts_all) = (cb.ids, cb.slot, cb.counts, cb.counts_all);
        let blocks_of = self.ptr(BufKind::BlockCounts)?;

        self.ev[E_START].record(main)?;
        self.dev.memset0(counts, n * 4)?;
        let (nc, ni) = (copies as i32, n as i32);
        let nb = copies.div_ceil(ROUTE_BLOCK);
        let nbi = nb as i32;
        // SAFETY: ids/slot hold `copies` ints, counts n ints, block counts
        // nb * n ints; shared memory as each kernel expects (n ints, a
        // tile, a row of n per warp).
        unsafe {
            if nb > 0 {
                let b = ROUTE_BLOCK as u32;
                let k = &self.dev.k;
                self.dev.launch(
                    k.route_count,
                    (nb as u32, 1, 1),
                    b,
                    (n * 4) as u32,
                    main,
                    params!(ids, nc, ni, counts, blocks_of),
                )?;
                self.dev.launch(
                    k.route_scan,
                    (n as u32, 1, 1),
                    b,
                    b * 4,
                    main,
                    params!(nbi, ni, blocks_of),
                )?;
                self.dev.launch(
                    k.route_slots,
                    (nb as u32, 1, 1),
                    b,
                    (b / 32) * (n * 4) as u32,
                    main,
                    params!(ids, nc, ni, blocks_of, slot),
                )?;
            }
            self.comm
                .all_gather(counts, counts_all, n, ncclDataType_t::ncclInt32, main)?;
        }
        let params = PlanParams {
            gpus: p,
            alpha: self.cfg.alpha,
            min_gemm: self.cfg.min_gemm,
            gate,
        };
        let clock = self.host_timing.then(std::time::Instant::now);
        let mark = |m: &mut [f64; HOST_MARKS], i: usize| {
            if let Some(c) = clock {
                m[i] = c.elapsed().as_secs_f64() * 1e6;
            }
        };
        let mut marks = [0f64; HOST_MARKS];
        let mut host_counts = vec![0i32; p * n];
        // SAFETY: counts_all holds p*n ints; this is the one host sync.
        unsafe { self.dev.download(&mut host_counts, counts_all)? };
        mark(&mut marks, 0);
        let per_rank: Vec<u64> = host_counts.iter().map(|&c| c as u64).collect();
        let global: Vec<u64> = (0..n)
            .map(|e| (0..p).map(|q| per_rank[q * n + e]).sum())
            .collect();
        // llep-auto: the warm helper decides while this thread plans
        let decider = self.decider.as_ref().filter(|_| policy == Policy::LlepAuto);
        if let Some(d) = decider {
            d.post(&per_rank, &global, params);
        }
        let mut plan = std::mem::take(&mut self.plan);
        self.planner
            .plan_into(&global, &params, policy, &mut plan)
            .map_err(|e| GpuError::Input(e.to_string()))?;
        let answer = decider.map(|d| {
            mark(&mut marks, 1);
            d.answer()
        });
        match answer {
            // the helper's answer is the arbiter's on these counts; its
            // LLEP plan is this one (one planner, the same counts)
            Some(Some(llep)) => {
                if plan.use_llep && !llep {
                    self.planner
                        .plan_into(&global, &params, Policy::Ep, &mut plan)
                        .map_err(|e| GpuError::Input(e.to_string()))?;
                }
            }
            _ if policy == Policy::LlepAuto && plan.use_llep => {
                // the same decision `simulate` makes: price both plans
                let arbiter = self.cfg.arbiter.clone().ok_or_else(|| {
                    GpuError::Input("llep-auto needs a cost model (a profile)".into())
                })?;
                mark(&mut marks, 1);
                let layer = super::decider::Layer {
                    per_rank: &per_rank,
                    global: &global,
                    params,
                };
                let mut ep = Plan::default();
                match super::decider::judge(&*arbiter, &mut self.planner, &layer, &plan, &mut ep) {
                    Some(true) => {}
                    Some(false) => plan = ep,
                    None => return Err(GpuError::Input("llep-auto: planning EP failed".into())),
                }
            }
            _ => mark(&mut marks, 1),
        }
        mark(&mut marks, 2);
        let mut lay =
            layout::build(&plan, &per_rank).map_err(|e| GpuError::Input(e.to_string()))?;
        // a training run's backward needs the sequential tables
        let chunks = super::pipeline::chunks_for(&lay, self.cfg.overlap);
        if chunks > 1 && !self.cfg.train {
            lay.chunk(chunks, super::pipeline::ALIGN);
        }
        self.plan = plan;
        let fits = self.ensure(&lay)?;
        mark(&mut marks, 3);
        if clock.is_some() {
            self.host_clock = clock;
            self.host_marks.push((policy, marks));
        }
        if !fits {
            return Ok(None);
        }
        Ok(Some(lay))
    }

    /// The rest of planning: the pack table (where each of this rank's
    /// copies goes, local ones straight into the compute buffer) and the
    /// tables placing remote copies, uploaded; ends the overhead phase.
    fn upload_tables(
        &mut self,
        lay: &Layout,
        cb: &CaseBufs,
        lb: &LayoutBufs,
    ) -> Result<Remote, GpuError> {
        let (n, r) = (self.experts(), self.rank);
        let rb = self.rb();
        let main = self.dev.main;
        let bias_table = cb.bias_table;
        let (send, recv, comp) = (lb.send, lb.recv, lb.comp);
        let (packsegs, segs_in, segs_out, seg_start) =
            (lb.packsegs, lb.segs_in, lb.segs_out, lb.seg_start);

        // a training run keeps the input rows: results go to Yout
        let ybase = self.results(lb);
        let pieces = lay.pack_pieces(r);
        let mut starts = vec![0i32; n + 1];
        let mut segs = Vec::with_capacity(pieces.len());
        for pc in &pieces {
            starts[pc.expert as usize + 1] += 1;
            let at = if pc.dst as usize == r {
                comp + pc.comp_row * rb
            } else {
                send + pc.send_row * rb
            };
            let ret = if pc.dst as usize == r {
                ybase + pc.comp_row * rb
            } else {
                at
            };
            segs.push(PackSeg {
                lo: pc.lo as i64,
                hi: pc.hi as i64,
                dst: at,
                ret,
                bias: bias_table + (pc.expert as u64) * rb,
            });
        }
        for e in 0..n {
            starts[e + 1] += starts[e];
        }
        let mut sin = Vec::new();
        let mut sout = Vec::new();
        let mut syin = Vec::new();
        // without chunks one part numbers all rows, as the copy kernels
        // always did; with them each chunk's rows start at 0
        let nparts = lay.chunks.first().map_or(1, |c| c.bounds.len() - 1);
        let mut parts = vec![SegPart::default(); nparts];
        for (i, pc) in lay.remote_in(r).enumerate() {
            let part = &mut parts[lay.chunks.get(r).map_or(0, |c| c.of(pc.comp_row))];
            if part.nseg == 0 {
                part.first = i as i32;
            }
            part.nseg += 1;
            let v = part.rows;
            part.rows += pc.rows() as i64;
            let (a, b) = (recv + pc.recv_row * rb, comp + pc.comp_row * rb);
            let len = pc.rows() as i64;
            sin.push(CopySeg {
                vstart: v,
                len,
                src: a,
                dst: b,
            });
            let y = ybase + pc.comp_row * rb;
            sout.push(CopySeg {
                vstart: v,
                len,
                src: y,
                dst: a,
            });
            syin.push(CopySeg {
                vstart: v,
                len,
                src: a,
                dst: y,
            });
        }
        let remote_rows: i64 = parts.iter().map(|p| p.rows).sum();
        // SAFETY: table buffers sized by `ensure` for these lengths.
        unsafe {
            self.dev.upload(packsegs, &segs)?;
            self.dev.upload(seg_start, &starts)?;
            self.dev.upload(segs_in, &sin)?;
            self.dev.upload(segs_out, &sout)?;
            if self.cfg.train {
                self.dev.upload(lb.segs_yin, &syin)?;
            }
        }
        self.ev[E_PLANNED].record(main)?;
        if let (Some(c), Some((_, m))) = (self.host_clock, self.host_marks.last_mut()) {
            m[4] = c.elapsed().as_secs_f64() * 1e6;
        }
        Ok(Remote {
            nseg: sin.len() as i32,
            rows: remote_rows,
            parts,
        })
    }

    /// Weight transfers on their own stream and communicator, started once
    /// planning is done. Returns whether this rank moves any weights.
    pub(super) fn transfer_weights(
        &self,
        lay: &Layout,
        native: u64,
        foreign: u64,
    ) -> Result<bool, GpuError> {
        let (p, n) = (self.world, self.experts());
        let rl = &lay.ranks[self.rank];
        let bb = self.blob.len * 2;
        let per = n / p;
        let has_x = !rl.send_transfers.is_empty() || !rl.recv_transfers.is_empty();
        if has_x && self.ce() {
            // pulled once the lenders' first token pushes are issued
            // (`copy_engine::Worker::ce_pull_weights`)
        } else if has_x {
            self.dev.wait(self.dev.xfer, &self.ev[E_PLANNED])?;
            self.xev[0].record(self.dev.xfer)?;
            Comm::group_start()?;
            // SAFETY: native blobs and foreign slots are allocated; peers
            // issue the matching calls in the same (plan) order.
            unsafe {
                for m in &rl.send_transfers {
                    let src = native + ((m.expert as usize % per) * bb) as u64;
                    self.xcomm.send(src, bb, m.peer as usize, self.dev.xfer)?;
                }
                for (i, m) in rl.recv_transfers.iter().enumerate() {
                    self.xcomm.recv(
                        foreign + (i * bb) as u64,
                        bb,
                        m.peer as usize,
                        self.dev.xfer,
                    )?;
                }
            }
            Comm::group_end()?;
            self.xev[1].record(self.dev.xfer)?;
        }
        Ok(has_x)
    }

    /// Mark the weight communicator's peers this rank's transfers use: in
    /// the forward it receives from `recv_transfers`' peers and sends to
    /// `send_transfers`'; the backward's gradient return goes the other way.
    pub(super) fn note_weight_peers(&mut self, rl: &super::layout::RankLayout, backward: bool) {
        let (from, to) = if backward {
            (&rl.send_transfers, &rl.recv_transfers)
        } else {
            (&rl.recv_transfers, &rl.send_transfers)
        };
        for m in from {
            self.wpeers_in[m.peer as usize] = true;
        }
        for m in to {
            self.wpeers_out[m.peer as usize] = true;
        }
    }

    /// Dispatch: pack (local copies straight into the compute buffer), then
    /// the token exchange on its own stream and the placing of the received
    /// rows into the compute buffer.
    fn dispatch(
        &self,
        lay: &Layout,
        cb: &CaseBufs,
        lb: &LayoutBufs,
        remote: &Remote,
        copies: usize,
    ) -> Result<(), GpuError> {
        let rb = self.rb();
        let rl = &lay.ranks[self.rank];
        let (nseg, remote_rows) = (remote.nseg, remote.rows);
        let net = self.dev.net;
        self.pack(cb, lb, copies)?;
        self.dev.wait(net, &self.ev[E_PACKED])?;
        self.exchange(rl, lb.send, lb.recv, rb, net, true)?;
        // SAFETY: segment tables list rows inside recv and comp.
        unsafe { self.copy_rows(lb.segs_in, nseg, remote_rows, net)? };
        self.ev[E_DISPATCHED].record(net)?;
        Ok(())
    }

    /// Pack every copy of this rank (local ones straight into the compute
    /// buffer, remote ones into the send buffer) on the main stream; ends
    /// at `E_PACKED`.
    pub(super) fn pack(
        &self,
        cb: &CaseBufs,
        lb: &LayoutBufs,
        copies: usize,
    ) -> Result<(), GpuError> {
        let (topk, rbi) = (self.cfg.top_k as i32, self.rb() as i32);
        let (x, ids, slot, ret_ptr, bias_ptr) = (cb.x, cb.ids, cb.slot, cb.ret_ptr, cb.bias_ptr);
        let (seg_start, packsegs) = (lb.seg_start, lb.packsegs);
        let nc = copies as i32;
        // SAFETY: tables uploaded by `upload_tables`; every row pointer they
        // hold lies in send or comp, sized by the layout.
        unsafe {
            self.dev.launch(
                self.dev.k.pack_rows,
                ((copies * 32).div_ceil(256) as u32, 1, 1),
                256,
                0,
                self.dev.main,
                params!(x, ids, slot, nc, topk, seg_start, packsegs, rbi, ret_ptr, bias_ptr),
            )?;
        }
        self.ev[E_PACKED].record(self.dev.main)
    }

    /// Expert compute, in GEMM units, once the remote copies are in place
    /// (overlapping the exchange with local compute was measured slower on
    /// 2 x H200: NCCL's kernels and the split GEMMs cost more than the
    /// overlap saved).
    pub(super) fn expert_compute(
        &self,
        lay: &Layout,
        lb: &LayoutBufs,
        native: u64,
    ) -> Result<(), GpuError> {
        let r = self.rank;
        let main = self.dev.main;
        let rl = &lay.ranks[r];
        let units = self.units(lay, r);
        let mut waited = false;
        self.dev.wait(main, &self.ev[E_DISPATCHED])?;
        self.ev[E_BS].record(main)?;
        self.compute(&units, rl, lb.units(native), &mut waited)?;
        self.ev[E_BE].record(main)?;
        Ok(())
    }

    /// Combine: remote results back to their ranks, then the weighted sum
    /// of each token's copies (and its experts' down biases) into `out`.
    fn combine(
        &self,
        lay: &Layout,
        cb: &CaseBufs,
        lb: &LayoutBufs,
        remote: &Remote,
        t: usize,
    ) -> Result<(), GpuError> {
        let rb = self.rb();
        let main = self.dev.main;
        let net = self.dev.net;
        let rl = &lay.ranks[self.rank];
        let segs_out = lb.segs_out;
        let (nseg, remote_rows) = (remote.nseg, remote.rows);

        // SAFETY: as for dispatch, with source and destination swapped.
        unsafe { self.copy_rows(segs_out, nseg, remote_rows, main)? };
        self.ev[E_RET].record(main)?;
        self.dev.wait(net, &self.ev[E_RET])?;
        self.exchange(rl, lb.send, lb.recv, rb, net, false)?;
        self.ev[E_RETURNED].record(net)?;
        self.dev.wait(main, &self.ev[E_RETURNED])?;
        self.combine_rows(cb, t)
    }

    /// The weighted sum of each token's copies (and its experts' down
    /// biases) into `out`, on the main stream; ends the run at `E_END`.
    pub(super) fn combine_rows(&self, cb: &CaseBufs, t: usize) -> Result<(), GpuError> {
        let (d, k) = (self.cfg.hidden, self.cfg.top_k);
        let (ret_ptr, bias_ptr, wts, out) = (cb.ret_ptr, cb.bias_ptr, cb.wts, cb.out);
        let (topk, di) = (k as i32, d as i32);
        // a thread per 8 columns (2 when D is not a multiple of 8), a block
        // per 128 threads of a row: the grid is tokens x slices of a row
        let width = if d % 8 == 0 { 8 } else { 2 };
        let slices = d.div_ceil(width * COMBINE_THREADS) as u32;
        // SAFETY: ret_ptr/bias_ptr were filled by pack_rows for every copy
        // and point at result rows written above; out holds t x D.
        unsafe {
            self.dev.launch(
                self.dev.k.combine_rows,
                (t as u32, slices, 1),
                COMBINE_THREADS as u32,
                0,
                self.dev.main,
                params!(ret_ptr, bias_ptr, wts, topk, di, out),
            )?;
        }
        self.ev[E_END].record(self.dev.main)?;
        Ok(())
    }

    /// Copy `rows` rows between the exchange buffer and the compute (or
    /// result) rows along the segment table at `segs` (`nseg` entries), on
    /// stream `s`: the step every exchange ends (dispatch) or starts
    /// (combine) with, forward and backward.
    ///
    /// # Safety
    /// The table's segments must lie inside the buffers they name.
    pub(super) unsafe fn copy_rows(
        &self,
        segs: u64,
        nseg: i32,
        rows: i64,
        s: cudarc::driver::sys::CUstream,
    ) -> Result<(), GpuError> {
        let rbi = self.rb() as i32;
        self.dev.launch(
            self.dev.k.copy_rows,
            (((rows as usize) * 32).div_ceil(256) as u32, 1, 1),
            256,
            0,
            s,
            params!(segs, nseg, rows, rbi),
        )
    }

    /// Token exchange of one layer on stream `s`: dispatch (send buffer out,
    /// receive buffer in) or its mirror for the combine.
    pub(super) fn exchange(
        &self,
        rl: &layout::RankLayout,
        send: u64,
        recv: u64,
        rb: u64,
        s: cudarc::driver::sys::CUstream,
        dispatch: bool,
    ) -> Result<(), GpuError> {
        self.exchange_ranges(&Ranges::of_rank(rl), send, recv, rb, s, dispatch)
    }

    /// The token exchange of [`Self::exchange`] over the given per-peer
    /// ranges (the whole layer's, or one pipeline chunk's).
    pub(super) fn exchange_ranges(
        &self,
        x: &Ranges<'_>,
        send: u64,
        recv: u64,
        rb: u64,
        s: cudarc::driver::sys::CUstream,
        dispatch: bool,
    ) -> Result<(), GpuError> {
        let (out_buf, in_buf, out_rows, out_off, in_rows, in_off) = if dispatch {
            (send, recv, x.send_rows, x.send_off, x.recv_rows, x.recv_off)
        } else {
            (recv, send, x.recv_rows, x.recv_off, x.send_rows, x.send_off)
        };
        Comm::group_start()?;
        // SAFETY: offsets and sizes from the layout, mirrored on the peers;
        // both buffers hold them.
        let res = (|| unsafe {
            for q in 0..self.world {
                if q == self.rank {
                    continue;
                }
                if out_rows[q] > 0 {
                    self.comm
                        .send(out_buf + out_off[q] * rb, (out_rows[q] * rb) as usize, q, s)?;
                }
                if in_rows[q] > 0 {
                    self.comm
                        .recv(in_buf + in_off[q] * rb, (in_rows[q] * rb) as usize, q, s)?;
                }
            }
            Ok(())
        })();
        Comm::group_end()?;
        res
    }

    /// GEMM units of GPU `r`: each group's rows cut to at most `CHUNK` rows
    /// (bounding the activation buffers whatever the skew); native weights
    /// before foreign ones, so compute starts before the transfers finish.
    pub(super) fn units(&self, lay: &Layout, r: usize) -> Vec<Unit> {
        self.units_in(lay, r, 0, u64::MAX)
    }

    /// The GEMM units of GPU `r`'s compute rows `[lo, hi)` (one pipeline
    /// chunk; the cuts fall between pieces, so no unit crosses them).
    pub(super) fn units_in(&self, lay: &Layout, r: usize, lo: u64, hi: u64) -> Vec<Unit> {
        let rl = &lay.ranks[r];
        let mut ps: Vec<&layout::Piece> = lay
            .pieces
            .iter()
            .filter(|pc| pc.dst as usize == r && pc.comp_row >= lo && pc.comp_row < hi)
            .collect();
        ps.sort_by_key(|pc| pc.comp_row);
        let mut runs: Vec<Unit> = Vec::new();
        for pc in ps {
            let g = &rl.groups[pc.group as usize];
            let foreign = matches!(g.weights, WeightSrc::Foreign(_));
            match runs.last_mut() {
                Some(u) if u.group == pc.group && u.row + u.rows == pc.comp_row => {
                    u.rows += pc.rows();
                }
                _ => runs.push(Unit {
                    group: pc.group,
                    row: pc.comp_row,
                    rows: pc.rows(),
                    foreign,
                }),
            }
        }
        let mut out = Vec::new();
        for u in runs {
            let mut at = 0;
            while at < u.rows {
                let n = (u.rows - at).min(CHUNK);
                out.push(Unit {
                    row: u.row + at,
                    rows: n,
                    ..u
                });
                at += n;
            }
        }
        out.sort_by_key(|u| u.foreign);
        out
    }

    /// Run GEMM units on the main stream: gate_up GEMM, activation, down
    /// GEMM (written in place over the unit's input rows; in a training run
    /// to `yout`, with gate_up outputs and activations kept per row unless
    /// recomputed). With `--cuda-graphs on`, the native units and the
    /// foreign ones are each launched as one graph (`graphs`).
    pub(super) fn compute(
        &self,
        units: &[Unit],
        rl: &layout::RankLayout,
        b: UnitBufs,
        waited: &mut bool,
    ) -> Result<(), GpuError> {
        if !self.cfg.cuda_graphs {
            return self.issue_units(units, rl, b, waited);
        }
        // units come native first: each side one graph, the foreign one
        // queued after the wait for its weights (outside the graph)
        let split = units.iter().position(|u| u.foreign).unwrap_or(units.len());
        for part in [&units[..split], &units[split..]] {
            if part.is_empty() {
                continue;
            }
            if part[0].foreign && !*waited {
                self.dev.wait(self.dev.main, &self.xev[1])?;
                *waited = true;
            }
            let mut key = vec![b.comp, b.h, b.act, b.yout];
            for u in part {
                let g = &rl.groups[u.group as usize];
                key.extend([self.weights_of(g.weights, b), u.row, u.rows]);
            }
            self.graphs.borrow_mut().run(&self.dev, key, || {
                let mut w = true;
                self.issue_units(part, rl, b, &mut w)
            })?;
        }
        Ok(())
    }

    /// A group's weight blob: a native slot or a received one.
    fn weights_of(&self, src: WeightSrc, b: UnitBufs) -> u64 {
        let bb = self.blob.len * 2;
        match src {
            WeightSrc::Native(j) => b.native + (j as usize * bb) as u64,
            WeightSrc::Foreign(i) => b.foreign + (i as usize * bb) as u64,
        }
    }

    /// [`Worker::compute`]'s units, in `units`' batches: native and
    /// foreign units apart, the foreign ones after the wait for their
    /// weights, so that the native ones never wait for a transfer.
    fn issue_units(
        &self,
        units: &[Unit],
        rl: &layout::RankLayout,
        bufs: UnitBufs,
        waited: &mut bool,
    ) -> Result<(), GpuError> {
        let rb = self.rb();
        let b = self.blob;
        let held = self.act_rows_held(rl);
        let scratch = if self.cfg.train && self.saves_act() {
            Scratch::Saved {
                h: bufs.h,
                act: bufs.act,
            }
        } else {
            Scratch::Reused {
                h: bufs.h,
                act: bufs.act,
                rows: held,
            }
        };
        // the second stream's scratch follows the first (`needs`)
        let second = match scratch {
            Scratch::Saved { .. } => scratch,
            Scratch::Reused { h, act, rows } => Scratch::Reused {
                h: h + (rows * 4 * self.cfg.inter) as u64,
                act: act + (rows * 2 * self.cfg.inter) as u64,
                rows,
            },
        };
        let two = (self.cfg.compute_streams == 2).then(|| TwoStreams {
            stream: self.dev.comp2,
            scratch: second,
            fork: &self.cev[0],
            join: &self.cev[1],
        });
        let mut at = 0;
        while at < units.len() {
            let foreign = units[at].foreign;
            let run = units[at..]
                .iter()
                .position(|u| u.foreign != foreign)
                .unwrap_or(units.len() - at);
            if foreign && !*waited {
                self.dev.wait(self.dev.main, &self.xev[1])?;
                *waited = true;
            }
            let part: Vec<ExpertUnit> = units[at..at + run]
                .iter()
                .map(|u| {
                    let w = self.weights_of(rl.groups[u.group as usize].weights, bufs);
                    let x = bufs.comp + u.row * rb;
                    // a training step keeps its inputs for the backward
                    let out = if self.cfg.train {
                        bufs.yout + u.row * rb
                    } else {
                        x
                    };
                    ExpertUnit::of_blob(u.rows as usize, x, w, &b, out, u.row)
                })
                .collect();
            // SAFETY: each unit's rows lie inside comp (and yout), its blob
            // is a full one; the scratch holds a batch (act_rows_held).
            unsafe {
                units::issue(
                    &self.dev,
                    &self.unit_shape(),
                    &part,
                    &scratch,
                    units::Batching::default(),
                    two.as_ref(),
                )?
            };
            at += run;
        }
        Ok(())
    }

    /// The expert shape and activation of this layer's units.
    pub(super) fn unit_shape(&self) -> UnitShape {
        UnitShape {
            hidden: self.cfg.hidden,
            inter: self.cfg.inter,
            kind: match self.cfg.act {
                Act::GptOss => 0,
                Act::SwiGlu => 1,
            },
        }
    }
}
