//! The dense fp32 check: sampled tokens of each rank recomputed through
//! their top-k experts by plain reference kernels (weights regenerated from
//! their seeds) and compared with what the replayed layer wrote.

use super::config::{Act, Case};
use super::runtime::{params, BufKind};
use super::worker::Worker;
use super::GpuError;

impl Worker<'_> {
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
                let ns = js.len() as i32;
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
                    self.dev.launch(
                        self.dev.k.ref_gate_up,
                        ((2 * inter).div_ceil(256) as u32, ns as u32, 1),
                        256,
                        0,
                        self.dev.main,
                        params!(x, tokb, ns, wgu, bgu, di, ii, hbuf),
                    )?;
                    self.dev.launch(
                        self.dev.k.ref_act,
                        (inter.div_ceil(256) as u32, ns as u32, 1),
                        256,
                        0,
                        self.dev.main,
                        params!(hbuf, ns, ii, kind, abuf),
                    )?;
                    self.dev.launch(
                        self.dev.k.ref_down,
                        (d.div_ceil(256) as u32, ns as u32, 1),
                        256,
                        0,
                        self.dev.main,
                        params!(abuf, ns, wd, bd, di, ii, rowb, wb, refo),
                    )?;
                }
            }
        }
        let si = s as i32;
        let mut rv = vec![0f32; s * d];
        let mut gv = vec![0f32; s * d];
        // SAFETY: sizes as allocated above.
        unsafe {
            self.dev.upload(tokb, &toks)?;
            self.dev.launch(
                self.dev.k.gather_out,
                (d.div_ceil(256) as u32, si as u32, 1),
                256,
                0,
                self.dev.main,
                params!(out, tokb, si, di, got),
            )?;
            self.dev.download(&mut rv, refo)?;
            self.dev.download(&mut gv, got)?;
        }
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
