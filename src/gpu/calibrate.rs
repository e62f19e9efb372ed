//! `calibrate`'s measurements: expert-group GEMM curves, token-exchange
//! and weight-transfer bandwidth, planning overhead and the memory baseline,
//! timed with the replay's own kernels and communicators. Fitting a
//! profile to them is the cost model's business (`sim::profile`).

use super::config::{Act, ReplayConfig};
use super::runtime::{self, params, BufKind, Comm, NcclId};
use super::timing::{driver_version, quantile};
use super::worker::{BlobLayout, Worker, CHUNK, E_END, E_START, PERSISTENT};
use super::{Gate, GpuError};
use crate::plan::Policy;
use crate::progress::Progress;

/// What `calibrate` measures.
#[derive(Debug, Clone)]
pub struct CalibConfig {
    pub gpus: usize,
    /// (hidden, intermediate) shapes for the GEMM curves; the first also
    /// sizes the planning-overhead and weight-transfer measurements.
    pub shapes: Vec<(usize, usize)>,
    pub tokens: Vec<u64>,
    pub reps: usize,
    pub seed: u64,
}

/// (hidden, intermediate, [(tokens, ms)]) of one expert shape.
pub type ShapeCurve = (usize, usize, Vec<(f64, f64)>);

/// Raw calibration measurements (rank 0's view; link figures are the max
/// over GPUs of each exchange).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Calibration {
    pub card: String,
    pub driver: String,
    pub gpus: usize,
    pub total_mem: u64,
    /// Per shape: (hidden, intermediate, [(tokens, ms)]).
    pub gemm: Vec<ShapeCurve>,
    /// Token exchange: (bytes each GPU sends to each peer, ms).
    pub link: Vec<(f64, f64)>,
    /// Weight transfer, one direction: (bytes, ms).
    pub p2p: Vec<(f64, f64)>,
    /// Count exchange + planning per layer, ms (median), on balanced
    /// routing of the first shape with 128 experts, top-4, 32768 tokens.
    pub overhead_ms: f64,
    /// Memory in use on a GPU beyond this tool's buffers (context, NCCL,
    /// cuBLAS), bytes.
    pub mem_baseline: u64,
}

impl Worker<'_> {
    /// Time one expert group (gate_up, activation, down) of `tokens` rows
    /// of shape (d, i), as the replay computes it.
    fn time_group(
        &mut self,
        d: usize,
        i: usize,
        tokens: u64,
        reps: usize,
    ) -> Result<f64, GpuError> {
        let bl = BlobLayout::new(d, i);
        let t = tokens as usize;
        let x = self.dev.arena.get(BufKind::CalX, t * d * 2)?;
        let w = self.dev.arena.get(BufKind::CalW, bl.len * 2)?;
        let rows = (t as u64).min(CHUNK) as usize;
        let h = self.dev.arena.get(BufKind::CalH, rows * 2 * i * 2)?;
        let a = self.dev.arena.get(BufKind::CalA, rows * i * 2)?;
        self.gen(x, t * d, 77, 1.0)?;
        self.gen(w, bl.len, 78, 1.0 / (d as f32).sqrt())?;
        let main = self.dev.main;
        let mut v = Vec::new();
        // A layer runs its groups back to back, launches queued ahead of the
        // GPU; timing one group alone would add the idle gaps of its
        // launches. So each timed sample is BACK_TO_BACK groups in a row.
        const BACK_TO_BACK: usize = 8;
        for rep in 0..reps + 2 {
            self.ev[E_START].record(main)?;
            for _ in 0..BACK_TO_BACK {
                let mut at = 0;
                while at < t {
                    let n = (t - at).min(CHUNK as usize);
                    let xg = x + (at * d * 2) as u64;
                    let (rows_i, inter_i, kind) = (n as i64, i as i32, 0i32);
                    let bgu = w + 2 * bl.bgu as u64;
                    // SAFETY: buffers sized above for n <= CHUNK rows.
                    unsafe {
                        self.dev.gemm_bf16(n, 2 * i, d, xg, w, h)?;
                        self.dev.launch(
                            self.dev.k.act_rows,
                            ((n * i / 2).div_ceil(256).min(1 << 20) as u32, 1, 1),
                            256,
                            0,
                            main,
                            params!(h, bgu, a, rows_i, inter_i, kind),
                        )?;
                        self.dev.gemm_bf16(n, d, i, a, w + 2 * bl.wd as u64, xg)?;
                    }
                    at += n;
                }
            }
            self.ev[E_END].record(main)?;
            self.ev[E_END].sync()?;
            if rep >= 2 {
                v.push(self.ev[E_END].ms_since(&self.ev[E_START])? / BACK_TO_BACK as f64);
            }
        }
        Ok(quantile(&v, 0.5))
    }

    /// Every rank sends `bytes` to every peer and receives as much (the
    /// token exchange), or, with `one_way`, rank 0 sends to rank 1 on the
    /// weight communicator. Median ms over `reps`, max over ranks.
    fn time_exchange(&mut self, bytes: usize, one_way: bool, reps: usize) -> Result<f64, GpuError> {
        let p = self.world;
        let sb = self.dev.arena.get(BufKind::CalSend, bytes * p.max(1))?;
        let rbuf = self.dev.arena.get(BufKind::CalRecv, bytes * p.max(1))?;
        let s = if one_way { self.dev.xfer } else { self.dev.net };
        let mut v = Vec::new();
        for rep in 0..reps + 2 {
            self.dev.sync()?;
            let _ = self.gather_f64(&[0.0])?; // line the ranks up
            self.ev[E_START].record(s)?;
            Comm::group_start()?;
            // SAFETY: both buffers hold bytes * p.
            let res = (|| unsafe {
                if one_way {
                    if self.rank == 0 && p > 1 {
                        self.xcomm.send(sb, bytes, 1, s)?;
                    } else if self.rank == 1 {
                        self.xcomm.recv(rbuf, bytes, 0, s)?;
                    }
                } else {
                    for q in 0..p {
                        if q != self.rank {
                            self.comm.send(sb + (q * bytes) as u64, bytes, q, s)?;
                            self.comm.recv(rbuf + (q * bytes) as u64, bytes, q, s)?;
                        }
                    }
                }
                Ok(())
            })();
            Comm::group_end()?;
            res?;
            self.ev[E_END].record(s)?;
            self.ev[E_END].sync()?;
            if rep >= 2 {
                v.push(self.ev[E_END].ms_since(&self.ev[E_START])?);
            }
        }
        let mine = quantile(&v, 0.5);
        let all = self.gather_f64(&[mine])?;
        Ok(all.into_iter().fold(0.0, f64::max))
    }
}

fn calib_main(
    rank: usize,
    world: usize,
    ordinal: usize,
    ids: &[NcclId],
    ptx: &cudarc::nvrtc::Ptx,
    cc: &CalibConfig,
    progress: &dyn Progress,
) -> Result<Calibration, GpuError> {
    let (d0, i0) = cc.shapes[0];
    let (n, k, t) = (128usize, 4usize, 32_768u64);
    let n = n.max(world).div_ceil(world) * world;
    let cfg = ReplayConfig {
        gpus: world,
        hidden: d0,
        inter: i0,
        experts: n,
        top_k: k,
        act: Act::GptOss,
        alpha: 1.0,
        min_gemm: 1024,
        settings: vec![(Policy::Ep, Gate::Always)],
        warmup: 3,
        runs: cc.reps,
        seed: cc.seed,
        samples: 0,
        arbiter: None,
    };
    let case = super::inputs::synthetic_case(
        crate::trace::synthetic::Scenario::Balanced,
        world,
        t,
        n as u32,
        k as u32,
        d0 as u32,
        i0 as u32,
    )
    .map_err(|e| GpuError::Input(e.to_string()))?;
    let mut w = Worker::new(rank, world, ordinal, ids, ptx, &cfg)?;
    w.setup(t as usize)?;
    let mut out = Calibration {
        card: w.dev.name.clone(),
        driver: driver_version(),
        gpus: world,
        total_mem: w.dev.total_mem as u64,
        ..Default::default()
    };
    if rank == 0 {
        progress.status("planning overhead (balanced gpt-oss layer)");
    }
    let row = w.measure(&case, Policy::Ep, Gate::Always)?;
    out.overhead_ms = row.as_ref().map_or(0.0, |r| r.t_overhead_ms);
    // after a full layer ran: NCCL's buffers and cuBLAS's workspace exist
    w.dev.sync()?;
    out.mem_baseline = w.dev.driver_used().saturating_sub(w.dev.arena.held) as u64;
    if world > 1 {
        if rank == 0 {
            progress.status("token exchange and weight transfer bandwidth");
        }
        for mb in [1usize, 4, 16, 64, 256] {
            let b = mb << 20;
            out.link
                .push((b as f64, w.time_exchange(b, false, cc.reps)?));
        }
        let bb = w.blob.len * 2;
        for nb in [1usize, 2, 4, 8] {
            out.p2p
                .push(((nb * bb) as f64, w.time_exchange(nb * bb, true, cc.reps)?));
        }
    }
    if rank == 0 {
        for &(d, i) in &cc.shapes {
            progress.status(&format!("expert GEMM curve D={d} I={i}"));
            let mut pts = Vec::new();
            for &tk in &cc.tokens {
                pts.push((tk as f64, w.time_group(d, i, tk, cc.reps)?));
            }
            out.gemm.push((d, i, pts));
            w.dev.arena.release_except(&PERSISTENT)?;
        }
    }
    let _ = w.gather_f64(&[0.0])?; // keep the other ranks until rank 0 is done
    w.dev.sync()?;
    Ok(out)
}

/// Measure the hardware for the cost model on `cc.gpus` local GPUs (a
/// thread each). Returns rank 0's calibration.
pub fn calibrate(cc: &CalibConfig, progress: &dyn Progress) -> Result<Calibration, GpuError> {
    if cc.shapes.is_empty() || cc.tokens.is_empty() || cc.reps == 0 || cc.gpus == 0 {
        return Err(GpuError::Input(
            "calibrate needs shapes, token counts, reps and GPUs".into(),
        ));
    }
    runtime::check_libraries()?;
    let count = runtime::device_count()?;
    if count < cc.gpus {
        return Err(GpuError::Input(format!(
            "{} GPUs requested but {count} visible (check CUDA_VISIBLE_DEVICES)",
            cc.gpus
        )));
    }
    let ccap = {
        let ctx =
            cudarc::driver::CudaContext::new(0).map_err(|e| GpuError::Cuda(format!("{e:?}")))?;
        ctx.compute_capability()
            .map_err(|e| GpuError::Cuda(format!("{e:?}")))?
    };
    let ptx = runtime::compile_kernels(ccap)?;
    let ids = vec![runtime::nccl_new_id()?, runtime::nccl_new_id()?];
    let results: Vec<Result<Calibration, GpuError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cc.gpus)
            .map(|rank| {
                let (ids, ptx) = (&ids, &ptx);
                s.spawn(move || calib_main(rank, cc.gpus, rank, ids, ptx, cc, progress))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(GpuError::Cuda("worker thread panicked".into())))
            })
            .collect()
    });
    let mut first = None;
    for (i, r) in results.into_iter().enumerate() {
        let c = r?;
        if i == 0 {
            first = Some(c);
        }
    }
    Ok(first.expect("at least one GPU"))
}
