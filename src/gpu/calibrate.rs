//! `calibrate`'s measurements: expert-group GEMM curves, per-projection
//! GEMM grids over (M, N, K), token-exchange and weight-transfer prices per
//! message and per byte, kernel launches and host syncs, planning overhead
//! and the memory baseline by component, timed with the replay's own
//! kernels, GEMM path (`gemm`) and communicators. Fitting a profile to them is
//! the cost model's business (`sim::profile`).

use super::config::{Act, ReplayConfig};
use super::gemm::GemmImpl;
use super::runtime::{self, BufKind, Comm, Dev, Dt, NcclId};
use super::timing::{driver_version, quantile};
use super::units::{self, ExpertUnit, Scratch, UnitShape};
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
    /// (hidden, intermediate) shapes of the per-projection GEMM grid.
    pub grid_shapes: Vec<(usize, usize)>,
    /// Rows M of the grid (each at most [`CHUNK`], the largest unit replay
    /// runs).
    pub grid_rows: Vec<u64>,
    /// Only the single-GPU measurements: GEMM grid, launches, memory
    /// context, cuBLAS workspace and allocation grain. No layer run, no
    /// whole-group curves, no communication.
    pub gemm_only: bool,
    /// Also time the backward GEMMs (dgrad, wgrad) on the grid's shapes
    /// and rows.
    pub bwd: bool,
    /// Only the backward GEMMs, on one GPU: nothing else is measured.
    pub bwd_only: bool,
    /// The library of the bf16 GEMMs, as replay's `--gemm`.
    pub gemm: GemmImpl,
    /// Time the GEMM grid's samples launched as one CUDA graph each, as
    /// `replay --cuda-graphs on` launches a compute phase (its tables then
    /// price that mode: the profile's `graph_gemm_tables`).
    pub cuda_graphs: bool,
}

/// Decode-to-prefill rows of one expert GEMM: every power of two and the
/// midpoints between them (tile-wave steps sit between powers of two).
pub const GRID_ROWS: [u64; 27] = [
    1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
    4096, 6144, 8192, 10240, 12288, 16384,
];

/// (hidden, intermediate) of the common expert shapes: gpt-oss-120b,
/// Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3, OLMoE.
pub const GRID_SHAPES: [(usize, usize); 5] = [
    (2880, 2880),
    (4096, 14336),
    (2048, 768),
    (7168, 2048),
    (2048, 1024),
];

/// One shape's grid: (hidden, intermediate, gate_up [(M, ms)], down [(M, ms)]),
/// ms per GEMM with different experts' GEMMs back to back. gate_up includes
/// the activation kernel that follows it in replay.
pub type GridShape = (usize, usize, Vec<(f64, f64)>, Vec<(f64, f64)>);

/// Grouped send/recv measurements of one communicator.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MsgRaw {
    /// Sends plus receives per GPU in the byte sweep.
    pub msgs_base: u64,
    /// (bytes per message, ms), `msgs_base` messages per GPU.
    pub bytes: Vec<(f64, f64)>,
    /// Fixed bytes cut into more messages: (messages per GPU, ms).
    pub split: Vec<(f64, f64)>,
}

/// Memory of a GPU by what allocates it, bytes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MemRaw {
    /// In use once the context, kernels, cuBLAS handle and the (not yet
    /// connected) communicators exist, before any buffer.
    pub context: u64,
    /// Growth at the first GEMM (cuBLAS workspace).
    pub cublas_workspace: u64,
    /// The arena's allocation grain (a 1-byte buffer's size).
    pub grain: u64,
    /// Token communicator per peer, after a layer connected every peer
    /// (2+ GPUs only).
    pub per_peer: Option<u64>,
    /// Weight communicator, one peer connected one way (2+ GPUs only): the
    /// larger side (older calibrations), then the receiver's and the
    /// sender's growth.
    pub xfer_per_peer: Option<u64>,
    pub xfer_recv_per_peer: Option<u64>,
    pub xfer_send_per_peer: Option<u64>,
    /// Ranks of the communicators when `context` was read.
    pub ranks: usize,
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
    /// Count exchange + planning per layer, ms: the median of the overhead
    /// phase run alone, back to back (`overhead`), on balanced routing of
    /// the first shape with 128 experts, top-4, 32768 tokens per GPU.
    pub overhead_ms: f64,
    /// How `overhead_ms` was measured, and the same phase inside whole
    /// layer runs, per rank (2+ GPUs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead: Option<super::overhead::OverheadRaw>,
    /// Memory in use on a GPU beyond this tool's buffers (context, NCCL,
    /// cuBLAS), bytes.
    pub mem_baseline: u64,
    /// Per-projection GEMM grid per shape.
    pub grid: Vec<GridShape>,
    /// The grid's samples were launched as CUDA graphs (`--cuda-graphs on`).
    pub grid_graphs: bool,
    /// The grid's gate_up ran through the fused kernel (`--gemm fused`):
    /// its tables price `--gemm fused` (the profile's `fused_gemm_tables`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grid_fused: bool,
    pub msg_tokens: Option<MsgRaw>,
    pub msg_weights: Option<MsgRaw>,
    /// The same sweeps through the copy engines (2+ GPUs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ce_tokens: Option<MsgRaw>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ce_weights: Option<MsgRaw>,
    /// Back-to-back small kernel, host-waited download, small upload, us.
    pub launch_us: f64,
    pub host_sync_us: f64,
    pub upload_us: f64,
    pub mem: MemRaw,
    /// How the GPU's power cap slows a large GEMM under sustained load
    /// (rank 0, with the grid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerRaw>,
    /// Backward GEMMs per grid shape (`--bwd`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bwd_grid: Vec<BwdGridShape>,
    /// What was not measured and why (e.g. communication on one GPU).
    pub skipped: Vec<String>,
}

/// One large GEMM (gate_up of the first grid shape, [`POWER_ROWS`] rows,
/// the experts' weights in turn) timed in three power states: in a burst on
/// a rested GPU; after [`POWER_LOAD_MS`] back to back, when the GPU has met
/// its power cap and lowered its clocks; and, for each duty, steadily
/// alternating with an idle interval (a one-thread spin) that makes the
/// GEMMs that fraction of the time at burst speed.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PowerRaw {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// One GEMM in a burst, ms.
    pub burst_ms: f64,
    /// One GEMM under sustained load, ms.
    pub sustained_ms: f64,
    /// (duty, idle interval ms, one GEMM ms) in the steady state.
    pub duty: Vec<(f64, f64, f64)>,
}

/// Rows of the power measurement's GEMM: large enough to be bound by
/// the tensor cores (and so by the clocks) on every common expert shape.
const POWER_ROWS: usize = 8192;

/// Back-to-back load before the sustained timing, ms: H200s met their cap
/// after 20-150 ms (session 12, call 1).
const POWER_LOAD_MS: f64 = 600.0;

/// The backward GEMMs of one expert shape, (M, ms) per GEMM of M rows, bf16
/// in and out with fp32 accumulation, different experts' GEMMs back to
/// back. Row-major, with X the expert's input rows (M x D), H the gate_up
/// output (M x 2I), A the activation (M x I), Y the down output (M x D).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BwdGridShape {
    pub hidden: usize,
    pub inter: usize,
    /// dX = dH . Wgu^T (M x D, a reduction over 2I).
    pub gate_up_dgrad: Vec<(f64, f64)>,
    /// dWgu = X^T . dH (D x 2I, a reduction over the M rows).
    pub gate_up_wgrad: Vec<(f64, f64)>,
    /// dA = dY . Wd^T (M x I, a reduction over D).
    pub down_dgrad: Vec<(f64, f64)>,
    /// dWd = A^T . dY (I x D, a reduction over the M rows).
    pub down_wgrad: Vec<(f64, f64)>,
}

/// One of the four backward GEMMs of expert `e` with `m` rows, on the
/// buffers of [`Worker::time_bwd_grid`]: `w` the weight blobs, `dw` the
/// gradient blobs, `x` the token rows (X, and dY for down), `dh` the
/// gate_up gradients (and, its first M x I, the activation A), `out` dX/dA.
#[derive(Clone, Copy)]
struct BwdBufs {
    bl: BlobLayout,
    d: usize,
    i: usize,
    mmax: usize,
    w: u64,
    dw: u64,
    x: u64,
    dh: u64,
    out: u64,
}

impl BwdBufs {
    /// # Safety
    /// `m <= mmax`, `e` below the experts the buffers were sized for.
    unsafe fn issue(&self, dev: &Dev, which: usize, e: usize, m: usize) -> Result<(), GpuError> {
        let (d, i, out, bl) = (self.d, self.i, self.out, self.bl);
        let at = |base: u64, off: usize| base + ((e * bl.len + off) * 2) as u64;
        let (wgu, wd, dwgu, dwd) = (
            at(self.w, bl.wgu),
            at(self.w, bl.wd),
            at(self.dw, bl.wgu),
            at(self.dw, bl.wd),
        );
        let x = self.x + (e * self.mmax * d * 2) as u64;
        let dh = self.dh + (e * self.mmax * 2 * i * 2) as u64;
        // row-major, as `backward` issues them: (M, N, K), A and B as
        // (pointer, stored columns, transposed), C; one GEMM a line
        #[rustfmt::skip]
        let (mnk, a, b, c) = match which {
            0 => ((m, d, 2 * i), (dh, 2 * i, false), (wgu, 2 * i, true), out),
            1 => ((d, 2 * i, m), (x, d, true), (dh, 2 * i, false), dwgu),
            2 => ((m, i, d), (x, d, false), (wd, d, true), out),
            _ => ((i, d, m), (dh, i, true), (x, d, false), dwd),
        };
        dev.gemm(mnk.0, mnk.1, mnk.2, a, b, c, 0.0, Dt::Bf16)
    }
}

/// The shortest light load before a timed GEMM sample, ms: long enough
/// for a GPU to leave its power cap (session 12, call 2: GEMMs busy 60% of
/// the time, a spin between them, ran at their burst speed).
const BURST_REST_MS: f64 = 20.0;

/// The longest timed GEMM sample, ms: well inside the 20 ms or more of
/// full load a rested H200 runs before its clocks drop.
const BURST_MAX_MS: f64 = 8.0;

/// Experts whose weights a grid cycles through: enough distinct blobs to
/// exceed the L2 cache several times (a layer reads each expert's weights
/// once, cold), at least 8, at most 64.
fn grid_experts(blob_bytes: usize) -> usize {
    (256usize << 20).div_ceil(blob_bytes.max(1)).clamp(8, 64)
}

/// Device buffers of a GEMM-timing run: `experts` weight blobs and input
/// row blocks of `rows` rows each, gate_up and activation scratch.
struct GemmBufs {
    bl: BlobLayout,
    d: usize,
    i: usize,
    experts: usize,
    rows: usize,
    /// Rows the gate_up and activation scratch hold (a batch of units).
    held: usize,
    x: u64,
    w: u64,
    h: u64,
    a: u64,
}

impl Worker<'_> {
    fn gemm_bufs(
        &mut self,
        d: usize,
        i: usize,
        rows: usize,
        experts: usize,
    ) -> Result<GemmBufs, GpuError> {
        let bl = BlobLayout::new(d, i);
        let unit = rows.min(CHUNK as usize).max(1) as u64;
        let held = units::reused_rows(
            unit,
            (experts * rows) as u64,
            i as u64,
            units::scratch_batching(self.dev.gemm_impl),
        ) as usize;
        let x = self.dev.arena.get(BufKind::CalX, experts * rows * d * 2)?;
        let w = self.dev.arena.get(BufKind::CalW, experts * bl.len * 2)?;
        let h = self.dev.arena.get(BufKind::CalH, held * 2 * i * 2)?;
        let a = self.dev.arena.get(BufKind::CalA, held * i * 2)?;
        self.gen(x, experts * rows * d, 77, 1.0)?;
        self.gen(w, experts * bl.len, 78, 1.0 / (d as f32).sqrt())?;
        Ok(GemmBufs {
            bl,
            d,
            i,
            experts,
            rows,
            held,
            x,
            w,
            h,
            a,
        })
    }

    /// GEMM units of `n <= CHUNK` rows each, (rows, input rows, expert
    /// blob), exactly as `phases::compute` issues them (`units`): gate_up
    /// GEMMs, activation, and (with `down`) the down GEMMs written over the
    /// units' input rows.
    fn gemm_units(
        &self,
        b: &GemmBufs,
        part: &[(usize, u64, u64)],
        down: bool,
    ) -> Result<(), GpuError> {
        let us: Vec<ExpertUnit> = part
            .iter()
            .map(|&(n, xg, w)| ExpertUnit::of_blob(n, xg, w, &b.bl, xg, 0))
            .collect();
        let shape = UnitShape {
            hidden: b.d,
            inter: b.i,
            kind: 0,
        };
        let scratch = Scratch::Reused {
            h: b.h,
            act: b.a,
            rows: b.held,
        };
        // SAFETY: the buffers of `gemm_bufs` hold a batch of units of this
        // shape; each unit's rows lie inside x and its w is a full blob.
        unsafe {
            if down {
                units::issue(
                    &self.dev,
                    &shape,
                    &us,
                    &scratch,
                    units::Batching::default(),
                    None,
                )
            } else {
                units::issue_gate_up(&self.dev, &shape, &us, &scratch, units::Batching::default())
            }
        }
    }

    /// Median ms of one sample: `rounds` passes over the experts, each
    /// expert's `t` rows cut into units as replay cuts them. Timed samples
    /// follow an eager probe (which tunes the lt path's buckets and sizes
    /// the sample) and two untimed ones.
    ///
    /// Every sample is timed in a burst, on a GPU that rested: a GPU kept
    /// busy with large GEMMs for more than about 20-150 ms meets its power
    /// cap and lowers its clocks, and its GEMMs take about 1.17x as long
    /// (session 12's calls 1-2). So each sample follows at least
    /// [`BURST_REST_MS`] of light load (and twice the sample before it,
    /// `light_load`), and a pass over
    /// the experts longer than [`BURST_MAX_MS`] is cut to fewer experts and
    /// scaled back. The cost model adds the cap's slowdown per layer from
    /// the measured [`PowerRaw`], by how much of the layer a GPU computes.
    fn time_units(
        &mut self,
        b: &GemmBufs,
        t: usize,
        rounds: usize,
        down: bool,
        reps: usize,
    ) -> Result<f64, GpuError> {
        let main = self.dev.main;
        let mut v = Vec::with_capacity(reps);
        let mut pass = Vec::new();
        for e in 0..b.experts {
            let x0 = b.x + (e * b.rows * b.d * 2) as u64;
            let w = b.w + (e * b.bl.len * 2) as u64;
            let mut at = 0;
            while at < t {
                let n = (t - at).min(CHUNK as usize);
                pass.push((n, x0 + (at * b.d * 2) as u64, w));
                at += n;
            }
        }
        // a probe, eager (it tunes the lt path's buckets): how long a whole
        // pass takes, so that a long one is cut to a burst
        self.dev.sync()?;
        self.ev[E_START].record(main)?;
        for _ in 0..rounds {
            self.gemm_units(b, &pass, down)?;
        }
        self.ev[E_END].record(main)?;
        self.ev[E_END].sync()?;
        let whole_ms = self.ev[E_END].ms_since(&self.ev[E_START])?;
        let mut scale = 1.0;
        if rounds == 1 && whole_ms > BURST_MAX_MS && b.experts > 1 {
            let keep = ((b.experts as f64 * BURST_MAX_MS / whole_ms) as usize).clamp(1, b.experts);
            let per = pass.len() / b.experts;
            pass.truncate(keep * per);
            scale = b.experts as f64 / keep as f64;
        }
        let mut rest_ms = BURST_REST_MS.max(2.0 * whole_ms / scale);
        let pass = pass;
        let issue = || -> Result<(), GpuError> {
            for _ in 0..rounds {
                self.gemm_units(b, &pass, down)?;
            }
            Ok(())
        };
        // with graphs, the sample is one graph: captured in the untimed
        // samples (the first may tune instead), launched in the timed ones
        let key = vec![
            b.x,
            b.w,
            b.d as u64,
            b.bl.len as u64,
            t as u64,
            rounds as u64,
            u64::from(down),
            pass.len() as u64,
        ];
        for rep in 0..reps + 2 {
            self.light_load(rest_ms)?;
            let missed = self.graphs.borrow().misses;
            self.ev[E_START].record(main)?;
            if self.cfg.cuda_graphs {
                self.graphs
                    .borrow_mut()
                    .run(&self.dev, key.clone(), issue)?;
            } else {
                issue()?;
            }
            if self.cfg.cuda_graphs && rep >= 2 && self.graphs.borrow().misses != missed {
                return Err(GpuError::Cuda(format!(
                    "a timed sample of {t} rows (D={}) could not be launched as a CUDA graph",
                    b.d
                )));
            }
            self.ev[E_END].record(main)?;
            self.ev[E_END].sync()?;
            let ms = self.ev[E_END].ms_since(&self.ev[E_START])?;
            rest_ms = BURST_REST_MS.max(2.0 * ms);
            if rep >= 2 {
                v.push(ms * scale);
            }
        }
        Ok(quantile(&v, 0.5))
    }

    /// Keep the GPU lightly loaded for `ms` on the main stream: one thread
    /// spinning. Its power stays far below the cap, so the GEMMs after it
    /// start at burst speed; and the GPU is not idle (an idle H200 reads
    /// 345 MHz): with a host sleep instead, the launch-bound samples of a
    /// few rows came out up to 35% slower (session 12, call 3).
    fn light_load(&self, ms: f64) -> Result<(), GpuError> {
        use super::runtime::params;
        let ns = (ms * 1e6) as u64;
        // SAFETY: the kernel takes one u64 and touches no memory.
        unsafe {
            self.dev.launch(
                self.dev.k.spin_ns,
                (1, 1, 1),
                32,
                0,
                self.dev.main,
                params!(ns),
            )
        }
    }

    /// [`PowerRaw`] of shape (d, i).
    fn time_power(&mut self, d: usize, i: usize) -> Result<PowerRaw, GpuError> {
        use super::runtime::Event;
        const EXPERTS: usize = 8;
        const TAIL: usize = 16;
        const REST_MS: f64 = 300.0;
        let b = self.gemm_bufs(d, i, POWER_ROWS, EXPERTS)?;
        let (m, n, k) = (POWER_ROWS, 2 * i, d);
        let main = self.dev.main;
        let dev = &self.dev;
        let gemm = |e: usize| -> Result<(), GpuError> {
            let e = e % EXPERTS;
            let x = b.x + (e * b.rows * b.d * 2) as u64;
            let w = b.w + ((e * b.bl.len + b.bl.wgu) * 2) as u64;
            // SAFETY: x holds POWER_ROWS rows of D for each expert, w the
            // expert's D x 2I gate_up weights, h at least POWER_ROWS rows of 2I.
            unsafe { dev.gemm_bf16(m, n, k, x, w, b.h) }
        };
        let (e0, e1) = (Event::new()?, Event::new()?);
        // GEMMs `from..count` of a run of `count`, each after `gap_ms` of
        // light load, timed as one block: ms per GEMM (gaps included)
        let block = |count: usize, from: usize, gap_ms: f64| -> Result<f64, GpuError> {
            for j in 0..count {
                if j == from {
                    e0.record(main)?;
                }
                if gap_ms > 0.0 {
                    self.light_load(gap_ms)?;
                }
                gemm(j)?;
            }
            e1.record(main)?;
            e1.sync()?;
            Ok(e1.ms_since(&e0)? / (count - from) as f64)
        };
        // tunes the bucket, then an estimate
        block(4, 0, 0.0)?;
        let est = block(4, 0, 0.0)?;
        let mut bursts = Vec::new();
        for _ in 0..3 {
            self.light_load(REST_MS)?;
            bursts.push(block((6.0 / est).ceil().max(2.0) as usize, 0, 0.0)?);
        }
        let burst_ms = quantile(&bursts, 0.5);
        self.light_load(REST_MS)?;
        let count = (POWER_LOAD_MS / burst_ms).ceil() as usize + TAIL;
        let sustained_ms = block(count, count - TAIL, 0.0)?;
        let mut duty = Vec::new();
        for dt in [0.5, 0.6, 0.7, 0.8, 0.9] {
            let gap_ms = burst_ms * (1.0 - dt) / dt;
            let count = (POWER_LOAD_MS * dt / burst_ms).ceil() as usize + TAIL;
            self.light_load(REST_MS)?;
            // the block's time per GEMM holds one interval: the GEMM alone is
            // the rest (a spin lasts its interval, give or take a launch)
            let per = block(count, count - TAIL, gap_ms)?;
            duty.push((dt, gap_ms, (per - gap_ms).max(0.0)));
        }
        Ok(PowerRaw {
            m,
            n,
            k,
            burst_ms,
            sustained_ms,
            duty,
        })
    }

    /// Time one expert group (gate_up, activation, down) of `tokens` rows
    /// of shape (d, i), as the replay computes it: 8 groups back to back
    /// (a layer runs its groups with launches queued ahead of the GPU).
    fn time_group(
        &mut self,
        d: usize,
        i: usize,
        tokens: u64,
        reps: usize,
    ) -> Result<f64, GpuError> {
        const BACK_TO_BACK: usize = 8;
        let b = self.gemm_bufs(d, i, tokens as usize, 1)?;
        Ok(self.time_units(&b, tokens as usize, BACK_TO_BACK, true, reps)? / BACK_TO_BACK as f64)
    }

    /// The per-projection grid of shape (d, i): for each M in `rows`, the
    /// experts' units back to back with different weights each, once with
    /// gate_up (and activation) only and once whole; down is the
    /// difference, so gate_up + down is exactly the measured unit.
    fn time_grid(
        &mut self,
        d: usize,
        i: usize,
        rows: &[u64],
        reps: usize,
    ) -> Result<GridShape, GpuError> {
        let experts = grid_experts(BlobLayout::new(d, i).len * 2);
        let mmax = rows.iter().copied().max().unwrap_or(1).min(CHUNK) as usize;
        // graphs of the last shape point into buffers about to be reused
        self.dev.sync()?;
        self.graphs.borrow_mut().clear();
        let b = self.gemm_bufs(d, i, mmax, experts)?;
        let (mut gu, mut dn) = (Vec::new(), Vec::new());
        for &m in rows {
            let m = m.min(CHUNK) as usize;
            // small units: at least 64 per sample, so the first launch's
            // idle gap is a small part of it; large ones: one pass
            let rounds = if m <= 1024 {
                64usize.div_ceil(experts).max(1)
            } else {
                1
            };
            let units = (rounds * experts) as f64;
            let half = self.time_units(&b, m, rounds, false, reps)? / units;
            let whole = self.time_units(&b, m, rounds, true, reps)? / units;
            gu.push((m as f64, half));
            dn.push((m as f64, (whole - half).max(0.0)));
        }
        Ok((d, i, gu, dn))
    }

    /// The backward grid of shape (d, i): each of the four backward GEMMs
    /// alone, for each M in `rows`, over the experts back to back (each
    /// with its own weights, gradient blob and rows, so a GEMM reads cold
    /// memory as a layer's backward does).
    fn time_bwd_grid(
        &mut self,
        d: usize,
        i: usize,
        rows: &[u64],
        reps: usize,
    ) -> Result<BwdGridShape, GpuError> {
        let bl = BlobLayout::new(d, i);
        let experts = grid_experts(bl.len * 2);
        let mmax = rows.iter().copied().max().unwrap_or(1).min(CHUNK) as usize;
        let arena = &mut self.dev.arena;
        let b = BwdBufs {
            bl,
            d,
            i,
            mmax,
            w: arena.get(BufKind::CalW, experts * bl.len * 2)?,
            dw: arena.get(BufKind::CalSend, experts * bl.len * 2)?,
            x: arena.get(BufKind::CalX, experts * mmax * d * 2)?,
            dh: arena.get(BufKind::CalH, experts * mmax * 2 * i * 2)?,
            out: arena.get(BufKind::CalRecv, mmax * d.max(i) * 2)?,
        };
        self.gen(b.w, experts * bl.len, 78, 1.0 / (d as f32).sqrt())?;
        self.gen(b.x, experts * mmax * d, 77, 1.0)?;
        self.gen(b.dh, experts * mmax * 2 * i, 79, 1.0)?;
        let mut out = BwdGridShape {
            hidden: d,
            inter: i,
            ..Default::default()
        };
        let main = self.dev.main;
        for &m in rows {
            let m = m.min(CHUNK) as usize;
            let rounds = if m <= 1024 {
                64usize.div_ceil(experts).max(1)
            } else {
                1
            };
            for which in 0..4 {
                let mut v = Vec::with_capacity(reps);
                for rep in 0..reps + 2 {
                    self.ev[E_START].record(main)?;
                    for _ in 0..rounds {
                        for e in 0..experts {
                            // SAFETY: m <= mmax and e < experts, as sized above.
                            unsafe { b.issue(&self.dev, which, e, m)? };
                        }
                    }
                    self.ev[E_END].record(main)?;
                    self.ev[E_END].sync()?;
                    if rep >= 2 {
                        v.push(self.ev[E_END].ms_since(&self.ev[E_START])?);
                    }
                }
                let ms = quantile(&v, 0.5) / (rounds * experts) as f64;
                let table = match which {
                    0 => &mut out.gate_up_dgrad,
                    1 => &mut out.gate_up_wgrad,
                    2 => &mut out.down_dgrad,
                    _ => &mut out.down_wgrad,
                };
                table.push((m as f64, ms));
            }
        }
        Ok(out)
    }

    /// Launch gap of a small kernel queued behind others, host-waited
    /// download and small upload, microseconds.
    fn time_launches(&mut self) -> Result<(f64, f64, f64), GpuError> {
        const N: usize = 2000;
        let buf = self.dev.arena.get(BufKind::CalSend, 1 << 16)?;
        let main = self.dev.main;
        let mut launch = Vec::new();
        for rep in 0..7 {
            self.ev[E_START].record(main)?;
            for _ in 0..N {
                self.gen(buf, 256, 5, 1.0)?;
            }
            self.ev[E_END].record(main)?;
            self.ev[E_END].sync()?;
            if rep >= 2 {
                launch.push(self.ev[E_END].ms_since(&self.ev[E_START])? * 1e3 / N as f64);
            }
        }
        let host = |f: &mut dyn FnMut() -> Result<(), GpuError>| -> Result<f64, GpuError> {
            let mut v = Vec::new();
            for rep in 0..7 {
                let t0 = std::time::Instant::now();
                for _ in 0..200 {
                    f()?;
                }
                if rep >= 2 {
                    v.push(t0.elapsed().as_secs_f64() * 1e6 / 200.0);
                }
            }
            Ok(quantile(&v, 0.5))
        };
        let dev = &self.dev;
        let mut small = [0i32; 64];
        // SAFETY: buf holds 64 KiB.
        let sync = host(&mut || unsafe { dev.download(&mut small, buf) })?;
        let table = [0i64; 128];
        // SAFETY: buf holds 64 KiB; the stream is synchronised after.
        let upload = host(&mut || unsafe { dev.upload(buf, &table) })?;
        self.dev.sync()?;
        Ok((quantile(&launch, 0.5), sync, upload))
    }

    /// Memory right after start-up, the arena's grain and the cuBLAS
    /// workspace (growth at the first GEMM), bytes.
    fn mem_components(&mut self) -> Result<MemRaw, GpuError> {
        self.dev.sync()?;
        let context = self.dev.driver_used().saturating_sub(self.dev.arena.held) as u64;
        let held = self.dev.arena.held;
        self.dev.arena.get(BufKind::CalRecv, 1)?;
        let grain = (self.dev.arena.held - held) as u64;
        let b = self.gemm_bufs(64, 64, 8, 1)?;
        self.dev.sync()?;
        let before = self.dev.driver_used().saturating_sub(self.dev.arena.held);
        self.gemm_units(&b, &[(8, b.x, b.w)], true)?;
        self.dev.sync()?;
        let after = self.dev.driver_used().saturating_sub(self.dev.arena.held);
        self.dev.arena.release_except(&PERSISTENT)?;
        Ok(MemRaw {
            context,
            cublas_workspace: after.saturating_sub(before) as u64,
            grain,
            per_peer: None,
            xfer_per_peer: None,
            xfer_recv_per_peer: None,
            xfer_send_per_peer: None,
            ranks: self.world,
        })
    }

    /// Every rank sends `bytes` to every peer and receives as much (the
    /// token exchange), or, with `one_way`, rank 0 sends to rank 1 on the
    /// weight communicator; each peer's bytes cut into `split` messages.
    /// Median ms over `reps`, max over ranks.
    fn time_exchange(
        &mut self,
        bytes: usize,
        one_way: bool,
        split: usize,
        reps: usize,
    ) -> Result<f64, GpuError> {
        let p = self.world;
        let sb = self.dev.arena.get(BufKind::CalSend, bytes * p.max(1))?;
        let rbuf = self.dev.arena.get(BufKind::CalRecv, bytes * p.max(1))?;
        let s = if one_way { self.dev.xfer } else { self.dev.net };
        let pieces = pieces(bytes, split);
        self.time_reps(s, reps, |w| {
            Comm::group_start()?;
            // SAFETY: both buffers hold bytes * p; every piece lies in its
            // peer's `bytes`.
            let res = (|| unsafe {
                if one_way {
                    if w.rank == 0 && p > 1 {
                        for &(off, n) in &pieces {
                            w.xcomm.send(sb + off, n as usize, 1, s)?;
                        }
                    } else if w.rank == 1 {
                        for &(off, n) in &pieces {
                            w.xcomm.recv(rbuf + off, n as usize, 0, s)?;
                        }
                    }
                } else {
                    for q in (0..p).filter(|&q| q != w.rank) {
                        let at = (q * bytes) as u64;
                        for &(off, n) in &pieces {
                            w.comm.send(sb + at + off, n as usize, q, s)?;
                        }
                        for &(off, n) in &pieces {
                            w.comm.recv(rbuf + at + off, n as usize, q, s)?;
                        }
                    }
                }
                Ok(())
            })();
            Comm::group_end()?;
            res
        })
    }

    /// `reps` timed runs (after 2 untimed) of what `issue` queues on stream
    /// `s`, the ranks lined up before each: the median ms, max over ranks.
    fn time_reps(
        &mut self,
        s: cudarc::driver::sys::CUstream,
        reps: usize,
        issue: impl Fn(&Self) -> Result<(), GpuError>,
    ) -> Result<f64, GpuError> {
        let mut v = Vec::new();
        for rep in 0..reps + 2 {
            self.dev.sync()?;
            let _ = self.gather_f64(&[0.0])?; // line the ranks up
            self.ev[E_START].record(s)?;
            issue(self)?;
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

    /// Memory this rank holds beyond the arena, bytes.
    fn used_beyond_arena(&mut self) -> Result<u64, GpuError> {
        self.dev.sync()?;
        Ok(self.dev.driver_used().saturating_sub(self.dev.arena.held) as u64)
    }

    /// Communication on 2+ GPUs: the older link and p2p lines, the message
    /// models of both communicators, and the weight communicator's memory
    /// for one connected peer (measured around its first use).
    fn measure_comm(&mut self, out: &mut Calibration, reps: usize) -> Result<(), GpuError> {
        const MIB: usize = 1 << 20;
        for mb in [1usize, 4, 16, 64, 256] {
            let b = mb * MIB;
            out.link
                .push((b as f64, self.time_exchange(b, false, 1, reps)?));
        }
        out.msg_tokens = Some(self.msg_sweep(false, false, reps)?);
        let before = self.used_beyond_arena()?;
        let bb = self.blob.len * 2;
        for nb in [1usize, 2, 4, 8] {
            out.p2p.push((
                (nb * bb) as f64,
                self.time_exchange(nb * bb, true, 1, reps)?,
            ));
        }
        let grown = self.used_beyond_arena()?.saturating_sub(before);
        // rank 0 sent, rank 1 received (`time_exchange`'s one-way case)
        let all = self.gather_f64(&[grown as f64])?;
        out.mem.xfer_per_peer = Some(all.iter().copied().fold(0.0, f64::max) as u64);
        out.mem.xfer_send_per_peer = Some(all[0] as u64);
        out.mem.xfer_recv_per_peer = Some(all[1] as u64);
        out.msg_weights = Some(self.msg_sweep(true, false, reps)?);
        if self.link.is_some() {
            // the same sweeps through the copy engines (`--exchange
            // copy-engine`): tokens pushed, weights pulled
            out.ce_tokens = Some(self.msg_sweep(false, true, reps)?);
            out.ce_weights = Some(self.msg_sweep(true, true, reps)?);
        }
        self.dev.arena.release_except(&PERSISTENT)?;
        Ok(())
    }

    /// One message model's measurements: the token exchange (every rank
    /// to every peer, 4 KiB to 64 MiB per peer; 1 MiB cut into up to 16
    /// messages) or a weight transfer (one way, 1 to 256 MiB; 64 MiB cut
    /// alike), through NCCL or the copy engines (`ce`).
    fn msg_sweep(&mut self, one_way: bool, ce: bool, reps: usize) -> Result<MsgRaw, GpuError> {
        const MIB: usize = 1 << 20;
        let (sizes, cut, base) = if one_way {
            (
                vec![MIB, 4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB],
                64 * MIB,
                1,
            )
        } else {
            let base = 2 * (self.world as u64 - 1);
            (vec![4096, 65536, MIB, 16 * MIB, 64 * MIB], MIB, base)
        };
        let mut raw = MsgRaw {
            msgs_base: base,
            ..Default::default()
        };
        let time = if ce {
            Self::time_copies
        } else {
            Self::time_exchange
        };
        for b in sizes {
            raw.bytes.push((b as f64, time(self, b, one_way, 1, reps)?));
        }
        for split in [1usize, 2, 4, 8, 16] {
            let ms = time(self, cut, one_way, split, reps)?;
            raw.split.push(((base * split as u64) as f64, ms));
        }
        Ok(raw)
    }

    /// [`Self::time_exchange`]'s two cases moved by the copy engines of
    /// linked ranks: every rank pushing `bytes` into each peer's receive
    /// buffer, or rank 1 pulling `bytes` from rank 0 (as a weight transfer
    /// is pulled), each cut into `split` copies. The slowest rank's median,
    /// ms.
    fn time_copies(
        &mut self,
        bytes: usize,
        one_way: bool,
        split: usize,
        reps: usize,
    ) -> Result<f64, GpuError> {
        use super::copy_engine::copy;
        let p = self.world;
        let sb = self.dev.arena.get(BufKind::CalSend, bytes * p.max(1))?;
        let rbuf = self.dev.arena.get(BufKind::CalRecv, bytes * p.max(1))?;
        self.ce_share(|sl| {
            sl.send = sb;
            sl.recv = rbuf;
        })?;
        let peers = self.peers.borrow().clone();
        let s = if one_way { self.dev.xfer } else { self.dev.net };
        let pieces = pieces(bytes, split);
        let ms = self.time_reps(s, reps, |w| {
            // SAFETY: both buffers hold bytes * p on every rank (shared
            // above); each piece lies in its `bytes`.
            unsafe {
                if one_way {
                    if w.rank == 1 {
                        for &(off, n) in &pieces {
                            copy(rbuf + off, peers[0].send + off, n, s)?;
                        }
                    }
                } else {
                    let mine = (w.rank * bytes) as u64;
                    for q in (0..p).filter(|&q| q != w.rank) {
                        let (to, from) = (peers[q].recv + mine, sb + (q * bytes) as u64);
                        for &(off, n) in &pieces {
                            copy(to + off, from + off, n, s)?;
                        }
                    }
                }
            }
            Ok(())
        })?;
        // no rank regrows its buffers while a peer may still copy into them
        self.linked().meet()?;
        Ok(ms)
    }
}

/// `bytes` cut into `split` near-equal pieces: (offset, length).
fn pieces(bytes: usize, split: usize) -> Vec<(u64, u64)> {
    let split = split.max(1);
    (0..split)
        .map(|j| {
            let (lo, hi) = (bytes * j / split, bytes * (j + 1) / split);
            (lo as u64, (hi - lo) as u64)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn calib_main(
    rank: usize,
    world: usize,
    ordinal: usize,
    ids: &[NcclId],
    ptx: &cudarc::nvrtc::Ptx,
    cc: &CalibConfig,
    progress: &dyn Progress,
    link: Option<std::sync::Arc<super::PeerLink>>,
) -> Result<Calibration, GpuError> {
    let (d0, i0) = cc
        .shapes
        .first()
        .copied()
        .unwrap_or_else(|| cc.grid_shapes[0]);
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
        train: false,
        recompute: false,
        eplb: Vec::new(),
        gemm: cc.gemm,
        overlap: super::pipeline::Overlap::Off,
        net_priority: false,
        interleave: false,
        cuda_graphs: cc.cuda_graphs,
        exchange: super::Exchange::Nccl,
        compute_streams: 1,
        decision_thread: false,
    };
    let mut w = Worker::new(rank, world, ordinal, ids, ptx, &cfg, link)?;
    let mut out = Calibration {
        card: w.dev.name.clone(),
        driver: driver_version(),
        gpus: world,
        total_mem: w.dev.total_mem as u64,
        grid_graphs: cc.cuda_graphs,
        grid_fused: cc.gemm == GemmImpl::Fused,
        ..Default::default()
    };
    if cc.bwd_only {
        if rank == 0 {
            bwd_grids(&mut w, &mut out, cc, progress)?;
        }
        out.skipped
            .push("everything but the backward GEMM grid (--bwd-only)".into());
        let _ = w.gather_f64(&[0.0])?;
        w.dev.sync()?;
        return Ok(out);
    }
    // first, before any buffer or GEMM exists
    out.mem = w.mem_components()?;
    if cc.gemm_only {
        out.skipped
            .push("layer overhead, memory baseline and whole-group curves (--gemm-only)".into());
    } else {
        layer_and_comm(&mut w, &mut out, cc, (d0, i0, n, k, t), progress)?;
    }
    if rank == 0 {
        progress.status("kernel launches and host syncs");
        (out.launch_us, out.host_sync_us, out.upload_us) = w.time_launches()?;
        w.dev.arena.release_except(&PERSISTENT)?;
        if !cc.gemm_only {
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
        for &(d, i) in &cc.grid_shapes {
            progress.status(&format!("GEMM grid gate_up and down, D={d} I={i}"));
            out.grid.push(w.time_grid(d, i, &cc.grid_rows, cc.reps)?);
            w.dev.arena.release_except(&PERSISTENT)?;
        }
        if let Some(&(d, i)) = cc.grid_shapes.first() {
            progress.status(&format!(
                "GEMM speed under the power cap (D={d} I={i}, {POWER_ROWS} rows; about 7 s)"
            ));
            out.power = Some(w.time_power(d, i)?);
            w.dev.arena.release_except(&PERSISTENT)?;
        }
        if cc.bwd {
            bwd_grids(&mut w, &mut out, cc, progress)?;
        }
    }
    let _ = w.gather_f64(&[0.0])?; // keep the other ranks until rank 0 is done
    w.dev.sync()?;
    Ok(out)
}

/// The backward GEMM grid of every grid shape (rank 0).
fn bwd_grids(
    w: &mut Worker<'_>,
    out: &mut Calibration,
    cc: &CalibConfig,
    progress: &dyn Progress,
) -> Result<(), GpuError> {
    for &(d, i) in &cc.grid_shapes {
        progress.status(&format!(
            "backward GEMMs (dgrad, wgrad of gate_up and down), D={d} I={i}"
        ));
        out.bwd_grid
            .push(w.time_bwd_grid(d, i, &cc.grid_rows, cc.reps)?);
        w.dev.arena.release_except(&PERSISTENT)?;
    }
    Ok(())
}

/// The layer run (planning overhead, memory baseline) and, on 2+ GPUs, the
/// communication measurements. `layer` is (D, I, experts, top-k, tokens).
fn layer_and_comm(
    w: &mut Worker<'_>,
    out: &mut Calibration,
    cc: &CalibConfig,
    layer: (usize, usize, usize, usize, u64),
    progress: &dyn Progress,
) -> Result<(), GpuError> {
    let (d0, i0, n, k, t) = layer;
    let (rank, world) = (w.rank, w.world);
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
    w.setup(t as usize)?;
    if rank == 0 {
        progress.status("planning overhead (balanced layer of the first shape)");
    }
    let row = w.measure(&case, Policy::Ep, Gate::Always)?;
    // the layer run's overhead phase also holds one rank's wait in the
    // all-gather for a peer that ended the previous run later: over a slow
    // link that wait is milliseconds (see `overhead`), so it is kept only
    // as a record and the phase is timed alone below
    let in_layer = row.as_ref().map_or(0.0, |r| r.t_overhead_ms);
    // after a full layer ran: NCCL's buffers and cuBLAS's workspace exist
    out.mem_baseline = w.used_beyond_arena()?;
    if world > 1 {
        let fixed = out.mem.context + out.mem.cublas_workspace;
        out.mem.per_peer = Some(out.mem_baseline.saturating_sub(fixed) / (world as u64 - 1));
        if rank == 0 {
            progress.status("token exchange and weight transfers (per byte and per message)");
        }
        w.measure_comm(out, cc.reps)?;
    } else {
        out.skipped.push(
            "token exchange, weight transfers and communicator memory per peer (one GPU)".into(),
        );
    }
    let (ms, raw) = super::overhead::measure(w, cc.reps, &case, layer, in_layer, progress)?;
    (out.overhead_ms, out.overhead) = (ms, Some(raw));
    Ok(())
}

/// Measure the hardware for the cost model on `cc.gpus` local GPUs (a
/// thread each). Returns rank 0's calibration.
pub fn calibrate(cc: &CalibConfig, progress: &dyn Progress) -> Result<Calibration, GpuError> {
    let curves_ok = cc.gemm_only || cc.bwd_only || (!cc.shapes.is_empty() && !cc.tokens.is_empty());
    let grid_ok = cc.grid_shapes.is_empty() == cc.grid_rows.is_empty();
    if !curves_ok
        || !grid_ok
        || ((cc.gemm_only || cc.bwd || cc.bwd_only) && cc.grid_shapes.is_empty())
        || cc.grid_rows.iter().any(|&m| m == 0 || m > CHUNK)
        || cc.reps == 0
        || cc.gpus == 0
    {
        return Err(GpuError::Input(format!(
            "calibrate needs shapes and token counts (unless GEMM-only), grid shapes with grid rows in 1..={CHUNK}, reps and GPUs"
        )));
    }
    runtime::check_libraries()?;
    let count = runtime::device_count()?;
    if count < cc.gpus {
        return Err(GpuError::Input(format!(
            "{} GPUs requested but {count} visible (check CUDA_VISIBLE_DEVICES)",
            cc.gpus
        )));
    }
    let ptx = runtime::compile_kernels_for_device0()?;
    let ids = vec![runtime::nccl_new_id()?, runtime::nccl_new_id()?];
    // linked for the copy-engine sweeps only; the layer runs use NCCL
    let link = (cc.gpus > 1).then(|| std::sync::Arc::new(super::PeerLink::new(cc.gpus)));
    let results: Vec<Result<Calibration, GpuError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cc.gpus)
            .map(|rank| {
                let (ids, ptx, link) = (&ids, &ptx, link.clone());
                s.spawn(move || {
                    let r = calib_main(rank, cc.gpus, rank, ids, ptx, cc, progress, link.clone());
                    if let (Err(_), Some(l)) = (&r, &link) {
                        l.abort();
                    }
                    r
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_decode_to_the_largest_unit_and_the_common_shapes() {
        assert!(GRID_ROWS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((GRID_ROWS[0], *GRID_ROWS.last().unwrap()), (1, CHUNK));
        for (d, i) in GRID_SHAPES {
            // replay's kernels need D a multiple of 8 and I even
            assert!(d % 8 == 0 && i % 2 == 0);
        }
        assert!(GRID_SHAPES.contains(&(7168, 2048)));
    }

    #[test]
    fn grid_cycles_enough_experts_to_leave_the_l2_cache() {
        // a small expert: 256 MiB of distinct weights
        let small = BlobLayout::new(2048, 768).len * 2;
        let n = grid_experts(small);
        assert!(n * small >= 256 << 20 && n <= 64, "{n}");
        // a large one: still several experts back to back
        assert_eq!(grid_experts(BlobLayout::new(4096, 14336).len * 2), 8);
    }
}
