//! The dense fp32 check of the training step's backward, after the last
//! timed run: for the sampled tokens of each rank, their input gradients
//! (dX) and router-weight gradients; for a sample of experts that includes
//! spilled ones, their whole weight and bias gradients as the owner holds
//! them after the LLEP gradient return. The reference regenerates weights
//! from their seeds and runs the expert forward and backward in fp32
//! (cuBLAS fp32 GEMMs, plain kernels between); each rank contributes its
//! own tokens' part of a weight gradient and an all-reduce sums them.

use super::config::Case;
use super::dense::ref_blocks;
use super::runtime::{params, BufKind, Dt};
use super::worker::Worker;
use super::GpuError;

/// Rows of one reference GEMM batch.
const REF_CHUNK: usize = 8192;
/// Experts whose weight gradients are checked, at most.
const MAX_EXPERTS: usize = 8;

/// What the backward check found on one rank: sums of squared error and of
/// squared reference for dX and the router-weight gradients, and the
/// largest relative error of the weight-gradient parts this rank owns.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BwdCheck {
    pub(super) dx: (f64, f64),
    pub(super) dw: (f64, f64),
    pub(super) dweights: f64,
    /// Experts checked, and how many of them were spilled.
    pub(super) experts: usize,
    pub(super) spilled: usize,
}

/// fp32 copies of one expert's weights (pointers into `RefW32`).
#[derive(Clone, Copy)]
struct W32 {
    wgu: u64,
    bgu: u64,
    wd: u64,
    bd: u64,
}

impl Worker<'_> {
    /// The experts whose weight gradients are checked (the same on every
    /// rank): the first and last spilled ones, the most loaded one, and on
    /// every GPU the first native expert with tokens, so each owner's
    /// gradients (and each helper's returned part) are checked.
    fn checked_experts(&self, case: &Case) -> (Vec<usize>, usize) {
        let n = self.cfg.experts;
        let per = n / self.world;
        let mut count = vec![0u64; n];
        for rt in &case.routing {
            for &e in &rt.ids {
                count[e as usize] += 1;
            }
        }
        let spilled: Vec<usize> = self
            .plan
            .transfers
            .iter()
            .map(|t| t.expert as usize)
            .collect();
        let mut out: Vec<usize> = Vec::new();
        let mut push = |e: usize| {
            if !out.contains(&e) && out.len() < MAX_EXPERTS {
                out.push(e);
            }
        };
        if let (Some(&a), Some(&b)) = (spilled.first(), spilled.last()) {
            push(a);
            push(b);
        }
        if let Some(hot) = (0..n).max_by_key(|&e| (count[e], std::cmp::Reverse(e))) {
            push(hot);
        }
        for g in 0..self.world {
            if let Some(e) = (g * per..(g + 1) * per).find(|&e| count[e] > 0) {
                push(e);
            }
        }
        let sp = out.iter().filter(|e| spilled.contains(e)).count();
        (out, sp)
    }

    /// Expert `e`'s weights as fp32 in `RefW32`.
    fn load_expert32(&mut self, e: usize) -> Result<W32, GpuError> {
        let len = self.blob.len;
        let blob = self.dev.arena.get(BufKind::RefBlob, len * 2)?;
        let w32 = self.dev.arena.get(BufKind::RefW32, len * 4)?;
        self.gen_blob(blob, e)?;
        let n = len as i64;
        // SAFETY: blob holds len bf16, w32 len floats.
        unsafe {
            let grid = (ref_blocks(len).min(65_535), 1);
            self.dev
                .launch_ref(self.dev.k.to_f32, grid, params!(blob, n, w32))?;
        }
        let b = self.blob;
        Ok(W32 {
            wgu: w32 + 4 * b.wgu as u64,
            bgu: w32 + 4 * b.bgu as u64,
            wd: w32 + 4 * b.wd as u64,
            bd: w32 + 4 * b.bd as u64,
        })
    }

    /// fp32 forward and backward of one expert over rows `tok` (token
    /// indices of this rank) with router weights `w`: returns each row's
    /// router-weight gradient; accumulates the weight gradients into
    /// `RefGrad32` when `grad`, and each row's dX into row `dx_row[s]` of
    /// `RefDX32` when given.
    fn ref_rows(
        &mut self,
        w32: W32,
        tok: &[i32],
        w: &[f32],
        grad: bool,
        dx_row: Option<&[i32]>,
    ) -> Result<Vec<f32>, GpuError> {
        let (d, i) = (self.cfg.hidden, self.cfg.inter);
        let c = REF_CHUNK.min(tok.len().max(1));
        let b = self.blob;
        let ar = &mut self.dev.arena;
        let (x32, h32, a32, y32, g32, da32) = (
            ar.get(BufKind::RefX32, c * d * 4)?,
            ar.get(BufKind::RefH, c * 2 * i * 4)?,
            ar.get(BufKind::RefA, c * i * 4)?,
            ar.get(BufKind::RefY32, c * d * 4)?,
            ar.get(BufKind::RefG32, c * d * 4)?,
            ar.get(BufKind::RefDA32, c * i * 4)?,
        );
        let (tokb, rowb, wb, dwb) = (
            ar.get(BufKind::RefTok, c * 4)?,
            ar.get(BufKind::RefRow, c * 4)?,
            ar.get(BufKind::RefW, c * 4)?,
            ar.get(BufKind::RefDw, c * 4)?,
        );
        let gradp = ar.get(BufKind::RefGrad32, b.len * 4)?;
        let refdx = if dx_row.is_some() {
            ar.get(BufKind::RefDX32, 0)?
        } else {
            0
        };
        let (x, dy) = (self.ptr(BufKind::X)?, self.ptr(BufKind::DY)?);
        let kind: i32 = match self.cfg.act {
            super::Act::GptOss => 0,
            super::Act::SwiGlu => 1,
        };
        let (di, ii) = (d as i32, i as i32);
        let f = Dt::F32;
        let mut dws = Vec::with_capacity(tok.len());
        for at in (0..tok.len()).step_by(c) {
            let n = c.min(tok.len() - at);
            let ni = n as i32;
            let mut dwv = vec![0f32; n];
            let (gx, gi) = (ref_blocks(d), ref_blocks(i));
            // SAFETY: every scratch buffer holds REF_CHUNK >= n rows; the
            // tables n entries; weights are whole fp32 blobs.
            unsafe {
                let dev = &self.dev;
                dev.upload(tokb, &tok[at..at + n])?;
                dev.upload(wb, &w[at..at + n])?;
                let gather_x = params!(x, tokb, ni, di, x32);
                dev.launch_ref(dev.k.gather_rows_f32, (gx, n), gather_x)?;
                dev.gemm(
                    n,
                    2 * i,
                    d,
                    (x32, d, false),
                    (w32.wgu, 2 * i, false),
                    h32,
                    0.0,
                    f,
                )?;
                let bgu = w32.bgu;
                let bias_act = params!(h32, bgu, ni, ii, kind, a32);
                dev.launch_ref(dev.k.ref_bias_act, (gi, n), bias_act)?;
                dev.gemm(n, d, i, (a32, i, false), (w32.wd, d, false), y32, 0.0, f)?;
                let gather_dy = params!(dy, tokb, ni, di, g32);
                dev.launch_ref(dev.k.gather_rows_f32, (gx, n), gather_dy)?;
                let bd = w32.bd;
                let router = params!(g32, y32, bd, wb, di, dwb);
                dev.launch_ref(dev.k.ref_router, (n, 1), router)?;
                dev.gemm(n, i, d, (g32, d, false), (w32.wd, d, true), da32, 0.0, f)?;
                let act_bwd = params!(h32, da32, ni, ii, kind);
                dev.launch_ref(dev.k.ref_act_bwd, (gi, n), act_bwd)?;
                if grad {
                    let (gwd, gbd) = (gradp + 4 * b.wd as u64, gradp + 4 * b.bd as u64);
                    let (gwgu, gbgu) = (gradp + 4 * b.wgu as u64, gradp + 4 * b.bgu as u64);
                    let (ci, c2) = (d as i32, (2 * i) as i32);
                    let ry = ref_blocks(n);
                    dev.gemm(i, d, n, (a32, i, true), (g32, d, false), gwd, 1.0, f)?;
                    let colsum_g = params!(g32, ni, ci, gbd);
                    dev.launch_ref(dev.k.colsum_f32, (gx, ry), colsum_g)?;
                    dev.gemm(
                        d,
                        2 * i,
                        n,
                        (x32, d, true),
                        (h32, 2 * i, false),
                        gwgu,
                        1.0,
                        f,
                    )?;
                    let colsum_h = params!(h32, ni, c2, gbgu);
                    dev.launch_ref(dev.k.colsum_f32, (ref_blocks(2 * i), ry), colsum_h)?;
                }
                if let Some(rows) = dx_row {
                    dev.gemm(
                        n,
                        d,
                        2 * i,
                        (h32, 2 * i, false),
                        (w32.wgu, 2 * i, true),
                        y32,
                        0.0,
                        f,
                    )?;
                    dev.upload(rowb, &rows[at..at + n])?;
                    let scatter = params!(y32, rowb, ni, di, refdx);
                    dev.launch_ref(dev.k.scatter_add_f32, (gx, n), scatter)?;
                }
                dev.download(&mut dwv, dwb)?;
            }
            dws.extend(dwv);
        }
        Ok(dws)
    }

    /// Check the last run's gradients against the dense fp32 reference.
    pub(super) fn check_bwd(&mut self, case: &Case) -> Result<BwdCheck, GpuError> {
        let (d, k) = (self.cfg.hidden, self.cfg.top_k);
        let rt = case.routing[self.rank].clone();
        let t = rt.ids.len() / k;
        let s = self.cfg.samples.min(t);
        let mut out = BwdCheck::default();
        if self.cfg.samples == 0 {
            return Ok(out);
        }
        // sampled tokens: dX and router-weight gradients
        if s > 0 {
            let toks: Vec<i32> = (0..s).map(|j| (j * t / s) as i32).collect();
            let refdx = self.dev.arena.get(BufKind::RefDX32, s * d * 4)?;
            self.dev.memset0(refdx, s * d * 4)?;
            let mut by_e: std::collections::BTreeMap<i32, Vec<(usize, usize)>> = Default::default();
            for (j, &tk) in toks.iter().enumerate() {
                for slot in 0..k {
                    by_e.entry(rt.ids[tk as usize * k + slot])
                        .or_default()
                        .push((j, slot));
                }
            }
            let mut ref_dw = vec![0f32; s * k];
            for (e, js) in by_e {
                let w32 = self.load_expert32(e as usize)?;
                let tl: Vec<i32> = js.iter().map(|&(j, _)| toks[j]).collect();
                let wl: Vec<f32> = js
                    .iter()
                    .map(|&(j, sl)| rt.weights[toks[j] as usize * k + sl])
                    .collect();
                let rl: Vec<i32> = js.iter().map(|&(j, _)| j as i32).collect();
                let dws = self.ref_rows(w32, &tl, &wl, false, Some(&rl))?;
                for (&(j, sl), v) in js.iter().zip(dws) {
                    ref_dw[j * k + sl] = v;
                }
            }
            let got = self.dev.arena.get(BufKind::RefGot, s * d * 4)?;
            let tokb = self.dev.arena.get(BufKind::RefTok, s * 4)?;
            let dx = self.ptr(BufKind::DX)?;
            let dwp = self.ptr(BufKind::DW)?;
            let mut gdw = vec![0f32; rt.ids.len()];
            // SAFETY: sizes as allocated above.
            let (gv, rv) = unsafe {
                let rows = self.sampled_rows(dx, &toks, refdx, (tokb, got))?;
                self.dev.download(&mut gdw, dwp)?;
                rows
            };
            out.dx = err_sums(&gv, &rv);
            let got_dw: Vec<f32> = toks
                .iter()
                .flat_map(|&tk| (0..k).map(move |sl| tk as usize * k + sl))
                .map(|c| gdw[c])
                .collect();
            out.dw = err_sums(&got_dw, &ref_dw);
        }
        self.check_weight_grads(case, &rt, &mut out)?;
        Ok(out)
    }

    /// Whole weight gradients of the checked experts: every rank adds its
    /// tokens' part, an all-reduce sums them, the owner compares with the
    /// gradient it holds (its own part plus what helpers returned).
    fn check_weight_grads(
        &mut self,
        case: &Case,
        rt: &super::RankRouting,
        out: &mut BwdCheck,
    ) -> Result<(), GpuError> {
        let k = self.cfg.top_k;
        let (experts, spilled) = self.checked_experts(case);
        out.experts = experts.len();
        out.spilled = spilled;
        let per = self.cfg.experts / self.world;
        let len = self.blob.len;
        let b = self.blob;
        for e in experts {
            let grad = self.dev.arena.get(BufKind::RefGrad32, len * 4)?;
            self.dev.memset0(grad, len * 4)?;
            let w32 = self.load_expert32(e)?;
            let (mut tl, mut wl) = (Vec::new(), Vec::new());
            for (c, &id) in rt.ids.iter().enumerate() {
                if id as usize == e {
                    tl.push((c / k) as i32);
                    wl.push(rt.weights[c]);
                }
            }
            if !tl.is_empty() {
                self.ref_rows(w32, &tl, &wl, true, None)?;
            }
            // SAFETY: grad holds len floats on every rank.
            unsafe { self.comm.all_reduce_f32(grad, len, self.dev.main)? };
            if e / per != self.rank {
                continue;
            }
            let ngrad = self.ptr(BufKind::NGrad)? + ((e % per) * len * 2) as u64;
            let acc = self.dev.arena.get(BufKind::RefErr, 8 * 8)?;
            self.dev.memset0(acc, 8 * 8)?;
            let (d, i) = (self.cfg.hidden, self.cfg.inter);
            let parts = [(b.wgu, d * 2 * i), (b.bgu, 2 * i), (b.wd, i * d), (b.bd, d)];
            for (j, &(off, n)) in parts.iter().enumerate() {
                let (gp, rp, ap, nn) = (
                    ngrad + 2 * off as u64,
                    grad + 4 * off as u64,
                    acc + 16 * j as u64,
                    n as i64,
                );
                // SAFETY: parts lie inside the blobs; acc holds 8 doubles.
                unsafe {
                    let grid = (ref_blocks(n).min(4096), 1);
                    self.dev
                        .launch_ref(self.dev.k.err_sums, grid, params!(gp, rp, nn, ap))?;
                }
            }
            let mut v = [0f64; 8];
            // SAFETY: acc holds 8 doubles.
            unsafe { self.dev.download(&mut v, acc)? };
            for j in 0..4 {
                let rel = if v[2 * j + 1] > 0.0 {
                    (v[2 * j] / v[2 * j + 1]).sqrt()
                } else if v[2 * j] > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                };
                // NaN (a non-finite gradient) must not pass as a small error
                out.dweights = if rel.is_nan() {
                    f64::INFINITY
                } else {
                    out.dweights.max(rel)
                };
            }
        }
        Ok(())
    }
}

/// (sum of squared error, sum of squared reference); a non-finite value
/// makes the error infinite.
fn err_sums(got: &[f32], reference: &[f32]) -> (f64, f64) {
    let (mut num, mut den) = (0f64, 0f64);
    let mut bad = false;
    for (a, b) in got.iter().zip(reference) {
        bad |= !a.is_finite();
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (if bad { f64::INFINITY } else { num }, den)
}

#[cfg(test)]
mod tests {
    use super::err_sums;

    #[test]
    fn error_sums_flag_non_finite_values() {
        assert_eq!(err_sums(&[1.0, 2.0], &[1.0, 2.0]), (0.0, 5.0));
        assert!(err_sums(&[f32::NAN], &[1.0]).0.is_infinite());
    }
}
