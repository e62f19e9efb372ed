//! The dense fp32 check: sampled tokens of each rank recomputed through
//! their top-k experts by plain reference kernels (weights regenerated from
//! their seeds) and compared with what the replayed layer wrote; and what
//! it shares with the backward's check (`dense_bwd`): how a reference
//! kernel is launched, and the gather of the sampled rows.

use super::config::{Act, Case};
use super::runtime::{params, BufKind, Dev};
use super::worker::Worker;
use super::GpuError;
use cudarc::driver::sys::CUfunction;
use std::ffi::c_void;

/// Threads a block of every reference kernel (this check's and the
/// backward's in `dense_bwd`).
const REF_BLOCK: usize = 256;

/// Blocks of [`REF_BLOCK`] threads covering `n` elements.
pub(super) fn ref_blocks(n: usize) -> usize {
    n.div_ceil(REF_BLOCK)
}

impl Dev {
    /// Launch a reference kernel the way both dense checks launch them:
    /// an (x, y, 1) grid of [`REF_BLOCK`]-thread blocks, no shared memory,
    /// on the main stream (the one the checks' uploads and downloads use).
    ///
    /// # Safety
    /// As [`Dev::launch`]: `params` match `f`'s signature and point at
    /// buffers that hold what the grid touches.
    pub(super) unsafe fn launch_ref(
        &self,
        f: CUfunction,
        grid: (usize, usize),
        params: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        let grid = (grid.0 as u32, grid.1 as u32, 1);
        self.launch(f, grid, REF_BLOCK as u32, 0, self.main, params)
    }
}

impl Worker<'_> {
    /// Rows `toks` of the layer's fp32 [tokens, hidden] buffer `src`,
    /// gathered through the scratch pair (token table `tokb`, rows `got`)
    /// and downloaded with as many reference rows from `reference`:
    /// (got, reference).
    ///
    /// # Safety
    /// `src` holds every row `toks` names; `reference` and `got` hold
    /// `toks.len()` rows, `tokb` `toks.len()` indices.
    pub(super) unsafe fn sampled_rows(
        &self,
        src: u64,
        toks: &[i32],
        reference: u64,
        (tokb, got): (u64, u64),
    ) -> Result<(Vec<f32>, Vec<f32>), GpuError> {
        let (s, d) = (toks.len(), self.cfg.hidden);
        let (si, di) = (s as i32, d as i32);
        let (mut gv, mut rv) = (vec![0f32; s * d], vec![0f32; s * d]);
        self.dev.upload(tokb, toks)?;
        let gather = params!(src, tokb, si, di, got);
        self.dev
            .launch_ref(self.dev.k.gather_out, (ref_blocks(d), s), gather)?;
        self.dev.download(&mut rv, reference)?;
        self.dev.download(&mut gv, got)?;
        Ok((gv, rv))
    }

    /// Dense fp32 reference of sampled tokens of this rank against the last
    /// run's output: (sum of squared errors, sum of squared reference).
    pub(super) fn check(&mut self, case: &Case) -> Result<(f64, f64), GpuError> {
        let (d, inter, k) = (self.cfg.hidden, self.cfg.inter, self.cfg.top_k);
        let rt = &case.routing[self.rank];
        let t = rt.ids.len() / k;
        let s = self.cfg.samples.min(t);
        if s == 0 {
            return Ok((0.0, 0.0));
        }
        let toks: Vec<i32> = (0..s).map(|j| (j * t / s) as i32).collect();
        let blob = self.dev.arena.get(BufKind::RefBlob, self.blob.len * 2)?;
        let hbuf = self.dev.arena.get(BufKind::RefH, s * 2 * inter * 4)?;
        let abuf = self.dev.arena.get(BufKind::RefA, s * inter * 4)?;
        let refo = self.dev.arena.get(BufKind::RefOut, s * d * 4)?;
        let got = self.dev.arena.get(BufKind::RefGot, s * d * 4)?;
        let tokb = self.dev.arena.get(BufKind::RefTok, s * 4)?;
        let rowb = self.dev.arena.get(BufKind::RefRow, s * 4)?;
        let wb = self.dev.arena.get(BufKind::RefW, s * 4)?;
        let x = self.ptr(BufKind::X)?;
        let out = self.ptr(BufKind::Out)?;
        self.dev.memset0(refo, s * d * 4)?;
        let kind: i32 = match self.cfg.act {
            Act::GptOss => 0,
            Act::SwiGlu => 1,
        };
        let b = self.blob;
        let (di, ii) = (d as i32, inter as i32);
        for slot in 0..k {
            let mut by_e: std::collections::BTreeMap<i32, Vec<usize>> = Default::default();
            for (j, &tk) in toks.iter().enumerate() {
                by_e.entry(rt.ids[tk as usize * k + slot])
                    .or_default()
                    .push(j);
            }
            for (e, js) in by_e {
                self.gen_blob(blob, self.slots[e as usize])?;
                let tl: Vec<i32> = js.iter().map(|&j| toks[j]).collect();
                let rl: Vec<i32> = js.iter().map(|&j| j as i32).collect();
                let wl: Vec<f32> = js
                    .iter()
                    .map(|&j| rt.weights[toks[j] as usize * k + slot])
                    .collect();
                let n = js.len();
                let ns = n as i32;
                let (wgu, bgu, wd, bd) = (
                    blob + 2 * b.wgu as u64,
                    blob + 2 * b.bgu as u64,
                    blob + 2 * b.wd as u64,
                    blob + 2 * b.bd as u64,
                );
                // SAFETY: sample tables hold ns entries; buffers sized for s
                // samples; the blob is complete.
                unsafe {
                    self.dev.upload(tokb, &tl)?;
                    self.dev.upload(rowb, &rl)?;
                    self.dev.upload(wb, &wl)?;
                    let dev = &self.dev;
                    let gate_up = params!(x, tokb, ns, wgu, bgu, di, ii, hbuf);
                    dev.launch_ref(dev.k.ref_gate_up, (ref_blocks(2 * inter), n), gate_up)?;
                    let act = params!(hbuf, ns, ii, kind, abuf);
                    dev.launch_ref(dev.k.ref_act, (ref_blocks(inter), n), act)?;
                    let down = params!(abuf, ns, wd, bd, di, ii, rowb, wb, refo);
                    dev.launch_ref(dev.k.ref_down, (ref_blocks(d), n), down)?;
                }
            }
        }
        // SAFETY: sizes as allocated above.
        let (gv, rv) = unsafe { self.sampled_rows(out, &toks, refo, (tokb, got))? };
        let mut num = 0f64;
        let mut den = 0f64;
        for (a, b) in gv.iter().zip(&rv) {
            if !a.is_finite() {
                num = f64::INFINITY;
            }
            num += (*a as f64 - *b as f64).powi(2);
            den += (*b as f64).powi(2);
        }
        Ok((num, den))
    }
}
