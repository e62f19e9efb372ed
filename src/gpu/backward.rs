//! The training step's backward half (`replay --pass train`), queued right
//! after the forward of the same run and mirroring it phase by phase:
//!
//! - combine backward: the router-weight gradient <dY, y + b> of every copy
//!   on its source rank, and w * dY written where the copy's result came home,
//!   then sent the dispatch's way to where the copy was computed;
//! - expert backward per GEMM unit: dA = dY Wd^T, the activation's backward
//!   (dH over the saved gate_up output), weight and bias gradients
//!   (dWd = A^T dY, dWgu = X^T dH, bias sums as ones-row GEMMs), and
//!   dX = dH Wgu^T; `--recompute` reruns gate_up and the activation first;
//! - dispatch backward: dX rows sent the combine's way home and the k copies
//!   of each token summed;
//! - under LLEP, the gradient of every foreign expert returned to its owner
//!   on the weight stream and communicator and added into its gradient,
//!   overlapping the dispatch backward.
//!
//! In a training run the forward writes each unit's down output to `Yout`
//! (not over its input rows) and, unless recomputing, keeps gate_up outputs
//! and activations of every computed row: those, and the input rows left in
//! the compute buffer, are the saved activations.

use super::layout::{self, Layout, WeightSrc};
use super::runtime::{params, BufKind, Comm, Dt, Event};
use super::timing::{quantile, EXTRA};
use super::units;
use super::worker::{Worker, CHUNK, E_END, E_START, NT};
use super::GpuError;
use crate::results::{Pass, ResultRow};

/// Backward events of one run (main stream unless noted).
const B_SCAT: usize = 0;
/// On the net stream: every copy's dY in `Yout` where it is computed.
const B_COMBINED: usize = 1;
pub(super) const B_WG: usize = 2;
const B_BBE: usize = 3;
const B_RET: usize = 4;
/// On the net stream: every dX row home.
const B_RETURNED: usize = 5;
const B_DISP: usize = 6;
const B_END: usize = 7;
/// Copy-engine exchange (`--exchange copy-engine`), on the net stream: this
/// rank's pushes of the combine's backward, and of the dispatch's.
pub(super) const B_PUSHED: usize = 8;
pub(super) const B_PUSHED_BACK: usize = 9;
const N_BEV: usize = 10;

/// Backward phase times of one run, ms: combine-bwd, dgrad (recompute
/// included), wgrad, dispatch-bwd, weight-gradient return, forward +
/// backward total, and start to the end of the expert backward.
pub(super) type BwdTimes = [f64; 7];

/// Events of the backward: fixed ones, and marks between expert-backward
/// segments (each mark says whether the segment it closes was wgrad).
#[derive(Default)]
pub(super) struct BwdEvents {
    ev: Vec<Event>,
    marks: Vec<Event>,
    wgrad: Vec<bool>,
    n: usize,
    /// Saved activation bytes of this rank's last run.
    pub(super) saved: u64,
    /// The last row's check, by kind, for the status line.
    pub(super) note: String,
}

/// A GEMM unit's rows and buffers in the backward.
struct UnitPtrs {
    rows: usize,
    /// Saved input rows (compute buffer).
    x: u64,
    /// dY in, then dX out (`Yout` rows).
    y: u64,
    /// gate_up output (then dH) and activation.
    h: u64,
    a: u64,
    /// Weights and their gradient blob.
    w: u64,
    g: u64,
    slot: (bool, u32),
}

impl Worker<'_> {
    /// Whether the forward keeps gate_up outputs and activations per row.
    pub(super) fn saves_act(&self) -> bool {
        self.cfg.train && !self.cfg.recompute
    }

    /// Extra buffers a training run needs on rank `q` for `lay` (fixed order).
    pub(super) fn bwd_needs(&self, lay: &Layout, q: usize) -> Vec<(BufKind, usize)> {
        if !self.cfg.train {
            return Vec::new();
        }
        let rl = &lay.ranks[q];
        let rb = self.rb() as usize;
        let bb = self.blob.len * 2;
        let nin = lay.remote_in(q).count();
        vec![
            (BufKind::Yout, rl.compute_rows as usize * rb),
            (
                BufKind::SegsYIn,
                nin * std::mem::size_of::<super::worker::CopySeg>(),
            ),
            (
                BufKind::DA,
                rl.max_group_rows.min(CHUNK) as usize * self.cfg.inter * 2,
            ),
            (BufKind::FGrad, rl.recv_transfers.len() * bb),
            (BufKind::GRecv, rl.send_transfers.len() * bb),
        ]
    }

    /// Rows the H and Act buffers hold on rank `q`: every computed row when
    /// the forward saves them, else one batch of GEMM units.
    pub(super) fn act_rows_held(&self, rl: &layout::RankLayout) -> usize {
        if self.saves_act() {
            rl.compute_rows as usize
        } else {
            units::reused_rows(
                rl.max_group_rows.min(CHUNK),
                rl.compute_rows,
                self.cfg.inter as u64,
                units::scratch_batching(self.cfg.gemm),
            ) as usize
        }
    }

    /// Gate_up and activation scratch sets the forward keeps: two with a
    /// second compute stream, unless every row has its own place anyway.
    pub(super) fn scratch_sets(&self) -> usize {
        if self.cfg.compute_streams == 2 && !self.saves_act() {
            2
        } else {
            1
        }
    }

    /// Saved activation bytes of rank `q`: input rows, plus gate_up output
    /// and activation unless recomputed (as `sim::train` counts them).
    pub(super) fn saved_bytes(&self, rl: &layout::RankLayout) -> u64 {
        let (d, i) = (self.cfg.hidden as u64, self.cfg.inter as u64);
        let per_row = if self.cfg.recompute { d } else { d + 3 * i };
        rl.compute_rows * per_row * 2
    }

    /// Per-case buffers of a training run: dY (seeded), dX, router-weight
    /// gradients, native weight gradients and the ones row.
    pub(super) fn bwd_case_setup(&mut self, copies: usize, t: usize) -> Result<(), GpuError> {
        let d = self.cfg.hidden;
        let per = self.cfg.experts / self.world;
        let dy = self.dev.arena.get(BufKind::DY, t.max(1) * d * 2)?;
        self.dev.arena.get(BufKind::DX, t.max(1) * d * 2)?;
        self.dev.arena.get(BufKind::DW, copies.max(1) * 4)?;
        self.dev
            .arena
            .get(BufKind::NGrad, per * self.blob.len * 2)?;
        let ones = self.dev.arena.get(BufKind::Ones, CHUNK as usize * 2)?;
        let seed = super::worker::part_seed(self.cfg.seed, 2_000_000 + self.rank, 9);
        self.gen(dy, t * d, seed, 1.0)?;
        let (n, v) = (CHUNK as i64, 1.0f32);
        // SAFETY: ones holds CHUNK bf16 values.
        unsafe {
            self.dev.launch(
                self.dev.k.fill_bf16,
                (64, 1, 1),
                256,
                0,
                self.dev.main,
                params!(ones, n, v),
            )?;
        }
        if self.bwd.ev.is_empty() {
            self.bwd.ev = (0..N_BEV).map(|_| Event::new()).collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// Record a mark closing an expert-backward segment on the main stream.
    fn mark(&mut self, wgrad: bool) -> Result<(), GpuError> {
        let b = &mut self.bwd;
        if b.n == b.marks.len() {
            b.marks.push(Event::new()?);
            b.wgrad.push(false);
        }
        b.marks[b.n].record(self.dev.main)?;
        b.wgrad[b.n] = wgrad;
        b.n += 1;
        Ok(())
    }

    /// The backward of the run whose forward was just queued. Returns
    /// whether weight gradients go back to their owners.
    pub(super) fn backward(
        &mut self,
        lay: &Layout,
        copies: usize,
        t: usize,
        nseg: i32,
        remote_rows: i64,
    ) -> Result<bool, GpuError> {
        let (d, k) = (self.cfg.hidden, self.cfg.top_k);
        let rb = self.rb();
        let (main, net) = (self.dev.main, self.dev.net);
        let rl = lay.ranks[self.rank].clone();
        self.bwd.saved = self.saved_bytes(&rl);
        let (dy, wts, ret_ptr, bias_ptr, dw) = (
            self.ptr(BufKind::DY)?,
            self.ptr(BufKind::W)?,
            self.ptr(BufKind::RetPtr)?,
            self.ptr(BufKind::BiasPtr)?,
            self.ptr(BufKind::DW)?,
        );
        let (send, recv, segs_yin, segs_out) = (
            self.ptr(BufKind::Send)?,
            self.ptr(BufKind::Recv)?,
            self.ptr(BufKind::SegsYIn)?,
            self.ptr(BufKind::SegsOut)?,
        );
        let (nc, topk, di) = (copies as i32, k as i32, d as i32);
        // combine backward
        // SAFETY: ret_ptr/bias_ptr were filled by this run's pack for every
        // copy; dy holds t x D, dw `copies` floats.
        unsafe {
            self.dev.launch(
                self.dev.k.bwd_scatter,
                ((copies * 32).div_ceil(256) as u32, 1, 1),
                256,
                0,
                main,
                params!(dy, wts, ret_ptr, bias_ptr, nc, topk, di, dw),
            )?;
        }
        self.bwd.ev[B_SCAT].record(main)?;
        self.dev.wait(net, &self.bwd.ev[B_SCAT])?;
        let ce = self.ce();
        if ce {
            // pushed as the forward's dispatch, placed once the peers' are in
            self.ce_push(lay, send, recv, None, true, net)?;
            self.bwd.ev[B_PUSHED].record(net)?;
            self.ce_publish_bwd()?;
            // the peers that send this rank rows, as in the dispatch
            self.ce_wait(main, &rl.recv_rows, |sl| sl.bwd[0])?;
            // SAFETY: the table lists rows inside recv and Yout.
            unsafe { self.copy_rows(segs_yin, nseg, remote_rows, main)? };
            self.bwd.ev[B_COMBINED].record(main)?;
        } else {
            self.exchange(&rl, send, recv, rb, net, true)?;
            // SAFETY: the table lists rows inside recv and Yout.
            unsafe { self.copy_rows(segs_yin, nseg, remote_rows, net)? };
            self.bwd.ev[B_COMBINED].record(net)?;
        }
        self.dev.wait(main, &self.bwd.ev[B_COMBINED])?;

        self.expert_backward(lay)?;
        let has_g = if ce {
            !rl.send_transfers.is_empty() || !rl.recv_transfers.is_empty()
        } else {
            self.return_grads(&rl)?
        };

        // dispatch backward: dX rows home, the k copies of each token summed
        let dx = self.ptr(BufKind::DX)?;
        // SAFETY: as for the forward's combine (Yout rows to recv).
        unsafe { self.copy_rows(segs_out, nseg, remote_rows, main)? };
        self.bwd.ev[B_RET].record(main)?;
        self.dev.wait(net, &self.bwd.ev[B_RET])?;
        if ce {
            self.ce_push(lay, send, recv, None, false, net)?;
            self.bwd.ev[B_PUSHED_BACK].record(net)?;
            self.bwd.ev[B_RETURNED].record(net)?;
            // one meeting for the dX rows and the weight gradients
            self.linked().meet()?;
            if has_g {
                self.ce_pull_grads(lay)?;
            }
            // the peers that return this rank rows, as in the combine
            self.ce_wait(main, &rl.send_rows, |sl| sl.bwd[1])?;
        } else {
            self.exchange(&rl, send, recv, rb, net, false)?;
            self.bwd.ev[B_RETURNED].record(net)?;
        }
        self.dev.wait(main, &self.bwd.ev[B_RETURNED])?;
        // SAFETY: ret_ptr points at every copy's dX row; dx holds t x D.
        unsafe {
            self.dev.launch(
                self.dev.k.sum_copies,
                (t as u32, 1, 1),
                (d / 2).min(256) as u32,
                0,
                main,
                params!(ret_ptr, topk, di, dx),
            )?;
        }
        self.bwd.ev[B_DISP].record(main)?;
        if has_g {
            self.dev.wait(main, &self.xev[3])?;
        }
        self.bwd.ev[B_END].record(main)?;
        Ok(has_g)
    }

    /// Pointers of every GEMM unit of this rank in the backward.
    fn unit_ptrs(&mut self, lay: &Layout) -> Result<Vec<UnitPtrs>, GpuError> {
        let r = self.rank;
        let rl = &lay.ranks[r];
        let (rb, i) = (self.rb(), self.cfg.inter as u64);
        let bb = (self.blob.len * 2) as u64;
        let (comp, yout, h, a) = (
            self.ptr(BufKind::Comp)?,
            self.ptr(BufKind::Yout)?,
            self.ptr(BufKind::H)?,
            self.ptr(BufKind::Act)?,
        );
        let (native, foreign, ngrad, fgrad) = (
            self.ptr(BufKind::Native)?,
            self.ptr(BufKind::Foreign)?,
            self.ptr(BufKind::NGrad)?,
            self.ptr(BufKind::FGrad)?,
        );
        let saves = self.saves_act();
        Ok(self
            .units(lay, r)
            .iter()
            .map(|u| {
                let (w, g, slot) = match rl.groups[u.group as usize].weights {
                    WeightSrc::Native(j) => {
                        (native + j as u64 * bb, ngrad + j as u64 * bb, (false, j))
                    }
                    WeightSrc::Foreign(j) => {
                        (foreign + j as u64 * bb, fgrad + j as u64 * bb, (true, j))
                    }
                };
                let at = if saves { u.row } else { 0 };
                UnitPtrs {
                    rows: u.rows as usize,
                    x: comp + u.row * rb,
                    y: yout + u.row * rb,
                    h: h + at * 4 * i,
                    a: a + at * 2 * i,
                    w,
                    g,
                    slot,
                }
            })
            .collect())
    }

    /// Expert backward over the GEMM units: with saved activations in three
    /// passes (dgrad to dH, wgrad, dgrad to dX), so each kind is timed by two
    /// marks; with `--recompute`, unit by unit (gate_up rerun first).
    fn expert_backward(&mut self, lay: &Layout) -> Result<(), GpuError> {
        let units = self.unit_ptrs(lay)?;
        self.bwd.n = 0;
        self.mark(false)?;
        let mut first = std::collections::HashSet::new();
        if self.cfg.recompute {
            for u in &units {
                self.recompute(u)?;
                self.dgrad_dh(u)?;
                self.mark(false)?;
                self.wgrad(u, first.insert(u.slot))?;
                self.mark(true)?;
                self.dgrad_dx(u)?;
                self.mark(false)?;
            }
            self.zero_unwritten(lay, &first)?;
            self.bwd.ev[B_WG].record(self.dev.main)?;
        } else {
            for u in &units {
                self.dgrad_dh(u)?;
            }
            self.mark(false)?;
            for u in &units {
                self.wgrad(u, first.insert(u.slot))?;
            }
            self.zero_unwritten(lay, &first)?;
            self.mark(true)?;
            self.bwd.ev[B_WG].record(self.dev.main)?;
            for u in &units {
                self.dgrad_dx(u)?;
            }
            self.mark(false)?;
        }
        self.bwd.ev[B_BBE].record(self.dev.main)?;
        Ok(())
    }

    /// Gradient blobs no unit wrote this run are zero (an expert with no
    /// rows here): zeroed so the owner's sum and the check read zeros.
    fn zero_unwritten(
        &mut self,
        lay: &Layout,
        written: &std::collections::HashSet<(bool, u32)>,
    ) -> Result<(), GpuError> {
        let rl = &lay.ranks[self.rank];
        let per = self.cfg.experts / self.world;
        let bb = self.blob.len * 2;
        let (ngrad, fgrad) = (self.ptr(BufKind::NGrad)?, self.ptr(BufKind::FGrad)?);
        for j in 0..per {
            if !written.contains(&(false, j as u32)) {
                self.dev.memset0(ngrad + (j * bb) as u64, bb)?;
            }
        }
        for j in 0..rl.recv_transfers.len() {
            if !written.contains(&(true, j as u32)) {
                self.dev.memset0(fgrad + (j * bb) as u64, bb)?;
            }
        }
        Ok(())
    }

    /// `--recompute`: gate_up output and activation of the unit again.
    fn recompute(&self, u: &UnitPtrs) -> Result<(), GpuError> {
        let (d, i) = (self.cfg.hidden, self.cfg.inter);
        let b = self.blob;
        let (h, a, bgu) = (u.h, u.a, u.w + 2 * b.bgu as u64);
        // SAFETY: as in the forward's compute: h and a hold one unit.
        unsafe {
            self.dev
                .gemm_bf16(u.rows, 2 * i, d, u.x, u.w + 2 * b.wgu as u64, h)?;
            units::activation_one(&self.dev, &self.unit_shape(), h, bgu, a, u.rows)
        }
    }

    /// dA = dY Wd^T, then dH (over the gate_up output) by the activation's
    /// backward.
    fn dgrad_dh(&mut self, u: &UnitPtrs) -> Result<(), GpuError> {
        let (d, i) = (self.cfg.hidden, self.cfg.inter);
        let b = self.blob;
        let da = self.ptr(BufKind::DA)?;
        let (h, bgu) = (u.h, u.w + 2 * b.bgu as u64);
        let (rows_i, ii, kind) = (u.rows as i64, i as i32, self.unit_shape().kind);
        let n = u.rows * i / 2;
        // SAFETY: y holds rows x D, da rows x I (rows <= CHUNK), h rows x 2I.
        unsafe {
            self.dev.gemm(
                u.rows,
                i,
                d,
                (u.y, d, false),
                (u.w + 2 * b.wd as u64, d, true),
                da,
                0.0,
                Dt::Bf16,
            )?;
            self.dev.launch(
                self.dev.k.act_bwd_rows,
                (n.div_ceil(256).min(1 << 20) as u32, 1, 1),
                256,
                0,
                self.dev.main,
                params!(h, bgu, da, rows_i, ii, kind),
            )
        }
    }

    /// Weight and bias gradients of the unit, into its expert's gradient
    /// blob (overwritten by the expert's first unit, accumulated after).
    fn wgrad(&mut self, u: &UnitPtrs, first: bool) -> Result<(), GpuError> {
        let (d, i) = (self.cfg.hidden, self.cfg.inter);
        let b = self.blob;
        let ones = self.ptr(BufKind::Ones)?;
        let beta = if first { 0.0 } else { 1.0 };
        let (r, g) = (u.rows, u.g);
        let bf = Dt::Bf16;
        // SAFETY: unit rows as above; g is a whole gradient blob; ones holds
        // CHUNK >= rows values.
        unsafe {
            let dev = &self.dev;
            dev.gemm(
                i,
                d,
                r,
                (u.a, i, true),
                (u.y, d, false),
                g + 2 * b.wd as u64,
                beta,
                bf,
            )?;
            dev.gemm(
                1,
                d,
                r,
                (ones, r, false),
                (u.y, d, false),
                g + 2 * b.bd as u64,
                beta,
                bf,
            )?;
            dev.gemm(
                d,
                2 * i,
                r,
                (u.x, d, true),
                (u.h, 2 * i, false),
                g + 2 * b.wgu as u64,
                beta,
                bf,
            )?;
            dev.gemm(
                1,
                2 * i,
                r,
                (ones, r, false),
                (u.h, 2 * i, false),
                g + 2 * b.bgu as u64,
                beta,
                bf,
            )
        }
    }

    /// dX = dH Wgu^T, over the unit's dY rows (no longer needed).
    fn dgrad_dx(&self, u: &UnitPtrs) -> Result<(), GpuError> {
        let (d, i) = (self.cfg.hidden, self.cfg.inter);
        let b = self.blob;
        // SAFETY: h holds rows x 2I (dH), y rows x D.
        unsafe {
            self.dev.gemm(
                u.rows,
                d,
                2 * i,
                (u.h, 2 * i, false),
                (u.w + 2 * b.wgu as u64, 2 * i, true),
                u.y,
                0.0,
                Dt::Bf16,
            )
        }
    }

    /// LLEP: every foreign expert's gradient back to its owner on the
    /// weight stream and communicator, added into the owner's gradient once
    /// both are complete. Returns whether this rank moves any.
    fn return_grads(&mut self, rl: &layout::RankLayout) -> Result<bool, GpuError> {
        if rl.send_transfers.is_empty() && rl.recv_transfers.is_empty() {
            return Ok(false);
        }
        self.note_weight_peers(rl, true);
        let per = self.cfg.experts / self.world;
        let bb = self.blob.len * 2;
        let xfer = self.dev.xfer;
        let (ngrad, fgrad, grecv) = (
            self.ptr(BufKind::NGrad)?,
            self.ptr(BufKind::FGrad)?,
            self.ptr(BufKind::GRecv)?,
        );
        self.dev.wait(xfer, &self.bwd.ev[B_WG])?;
        self.xev[2].record(xfer)?;
        Comm::group_start()?;
        // SAFETY: gradient blobs allocated for these transfers; the peers
        // issue the matching calls in plan order (the forward's, reversed).
        let res = (|| unsafe {
            for (i, m) in rl.recv_transfers.iter().enumerate() {
                self.xcomm
                    .send(fgrad + (i * bb) as u64, bb, m.peer as usize, xfer)?;
            }
            for (j, m) in rl.send_transfers.iter().enumerate() {
                self.xcomm
                    .recv(grecv + (j * bb) as u64, bb, m.peer as usize, xfer)?;
            }
            Ok(())
        })();
        Comm::group_end()?;
        res?;
        let n = self.blob.len as i64;
        for (j, m) in rl.send_transfers.iter().enumerate() {
            let dst = ngrad + ((m.expert as usize % per) * bb) as u64;
            let src = grecv + (j * bb) as u64;
            // SAFETY: both are whole gradient blobs.
            unsafe {
                self.dev.launch(
                    self.dev.k.add_bf16,
                    ((self.blob.len.div_ceil(256)).min(8192) as u32, 1, 1),
                    256,
                    0,
                    xfer,
                    params!(dst, src, n),
                )?;
            }
        }
        self.xev[3].record(xfer)?;
        Ok(true)
    }

    /// `return_grads` through the copy engines: each lender pulls the
    /// gradient blobs of its experts from the borrowers' foreign-gradient
    /// buffers once their weight gradients are done, then adds them to its
    /// own, on the transfer stream (between `xev[2]` and `xev[3]`).
    fn ce_pull_grads(&mut self, lay: &Layout) -> Result<(), GpuError> {
        let rl = &lay.ranks[self.rank];
        let per = self.cfg.experts / self.world;
        let bb = self.blob.len * 2;
        let xfer = self.dev.xfer;
        let (ngrad, grecv) = (self.ptr(BufKind::NGrad)?, self.ptr(BufKind::GRecv)?);
        let peers = self.peers.borrow().clone();
        let mut borrowers: Vec<usize> = rl.send_transfers.iter().map(|m| m.peer as usize).collect();
        borrowers.sort_unstable();
        borrowers.dedup();
        // this rank's own weight gradients first: its first unit of an
        // expert writes the blob the pulled gradients are added to
        self.dev.wait(xfer, &self.bwd.ev[B_WG])?;
        for &q in &borrowers {
            super::copy_engine::wait_on(xfer, peers[q].bwd[2])?;
        }
        self.xev[2].record(xfer)?;
        let n = self.blob.len as i64;
        for (j, m) in rl.send_transfers.iter().enumerate() {
            let q = m.peer as usize;
            // the blob's place in the borrower's list of received weights
            let i = lay.ranks[q]
                .recv_transfers
                .iter()
                .position(|x| x.peer as usize == self.rank && x.expert == m.expert)
                .ok_or_else(|| {
                    GpuError::Cuda(
                        "copy-engine gradient return: a lent expert no peer received".into(),
                    )
                })?;
            let (src, tmp) = (peers[q].fgrad + (i * bb) as u64, grecv + (j * bb) as u64);
            let dst = ngrad + ((m.expert as usize % per) * bb) as u64;
            // SAFETY: whole gradient blobs: the borrower's i-th foreign one
            // (published this run) and this rank's j-th receive slot.
            unsafe {
                super::copy_engine::copy(tmp, src, bb as u64, xfer)?;
                self.dev.launch(
                    self.dev.k.add_bf16,
                    ((self.blob.len.div_ceil(256)).min(8192) as u32, 1, 1),
                    256,
                    0,
                    xfer,
                    params!(dst, tmp, n),
                )?;
            }
        }
        self.xev[3].record(xfer)
    }

    /// Copy-engine backward: show the others this run's foreign-gradient
    /// buffer and the backward's events, once this rank's first pushes
    /// are issued, and read theirs.
    fn ce_publish_bwd(&mut self) -> Result<(), GpuError> {
        let fgrad = self.ptr(BufKind::FGrad)?;
        let evs = [B_PUSHED, B_PUSHED_BACK, B_WG].map(|k| self.bwd.ev[k].0 as usize);
        self.ce_share(|sl| {
            sl.fgrad = fgrad;
            sl.bwd = evs.to_vec();
        })
    }

    /// Backward phase times of the run just finished (after `run_times`
    /// waited for the forward's end).
    pub(super) fn bwd_times(&mut self, has_g: bool) -> Result<BwdTimes, GpuError> {
        let b = &self.bwd;
        b.ev[B_END].sync()?;
        let mut gret = 0.0;
        if has_g {
            self.xev[3].sync()?;
            gret = self.xev[3].ms_since(&self.xev[2])?;
        }
        let (mut dgrad, mut wgrad) = (0.0, 0.0);
        for j in 1..b.n {
            let ms = b.marks[j].ms_since(&b.marks[j - 1])?;
            if b.wgrad[j] {
                wgrad += ms;
            } else {
                dgrad += ms;
            }
        }
        let e = &self.ev;
        Ok([
            b.ev[B_COMBINED].ms_since(&e[E_END])?,
            dgrad,
            wgrad,
            b.ev[B_DISP].ms_since(&b.ev[B_BBE])?,
            gret,
            b.ev[B_END].ms_since(&e[E_START])?,
            b.ev[B_BBE].ms_since(&e[E_START])?,
        ])
    }
}

impl Worker<'_> {
    /// The training step's columns of rank 0's row from every rank's
    /// numbers: per run, the backward phases of the GPU whose expert
    /// backward ends last, the step's end on the last GPU, the gradient
    /// return's max over GPUs; medians over runs. `rel_error` becomes the
    /// largest of the forward's and the backward's checks.
    pub(super) fn train_row(&mut self, r: &mut ResultRow, all: &[f64], runs: usize) {
        let p = self.world;
        let stride = runs * NT + EXTRA;
        let per = |q: usize| &all[q * stride..(q + 1) * stride];
        let max_q = |j: usize| (0..p).map(|q| per(q)[j]).fold(0.0, f64::max);
        r.pass = Pass::Train;
        r.recompute = self.cfg.recompute;
        let x = runs * NT;
        r.saved_act_bytes = max_q(x + 10) as u64;
        let mut ph = vec![Vec::new(); 6];
        for i in 0..runs {
            let o = i * NT;
            let crit = (0..p)
                .max_by(|&a, &b| per(a)[o + 12].total_cmp(&per(b)[o + 12]))
                .unwrap_or(0);
            let end = max_q(o + 11);
            ph[0].push(per(crit)[o + 6]);
            ph[1].push(per(crit)[o + 7]);
            ph[2].push(per(crit)[o + 8]);
            ph[3].push(end - per(crit)[o + 12]);
            ph[4].push(max_q(o + 10));
            ph[5].push(end);
        }
        if r.oom {
            let nan = f64::NAN;
            (r.t_bwd_combine_ms, r.t_bwd_dgrad_ms, r.t_bwd_wgrad_ms) = (nan, nan, nan);
            (r.t_bwd_dispatch_ms, r.t_grad_return_ms) = (nan, nan);
            return;
        }
        let med: Vec<f64> = ph.iter().map(|v| quantile(v, 0.5)).collect();
        r.t_bwd_combine_ms = med[0];
        r.t_bwd_dgrad_ms = med[1];
        r.t_bwd_wgrad_ms = med[2];
        r.t_bwd_dispatch_ms = med[3];
        r.t_grad_return_ms = med[4];
        r.t_total_ms = med[5];
        r.t_total_p10_ms = Some(quantile(&ph[5], 0.1));
        r.t_total_p90_ms = Some(quantile(&ph[5], 0.9));
        let sums = |j: usize| {
            (0..p)
                .map(|q| (per(q)[x + j], per(q)[x + j + 1]))
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        let rel = |(n, d): (f64, f64)| if d > 0.0 { (n / d).sqrt() } else { 0.0 };
        let (dx, dw, dweights) = (rel(sums(5)), rel(sums(7)), max_q(x + 9));
        let experts = per(0)[x + 11] as usize;
        let spilled = per(0)[x + 12] as usize;
        self.bwd.note = format!(
            "{} {}: rel err forward {:.1e}, dX {dx:.1e}, router-weight grads {dw:.1e}, weight grads {dweights:.1e} ({experts} experts, {spilled} spilled)",
            r.scenario,
            r.setting_label(),
            r.rel_error.unwrap_or(f64::NAN),
        );
        if let Some(f) = r.rel_error {
            // NaN (a non-finite gradient) stays NaN
            r.rel_error = Some([f, dx, dw, dweights].into_iter().fold(0.0, |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.max(b)
                }
            }));
        }
    }
}
