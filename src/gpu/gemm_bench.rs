//! `gemm-bench`: the expert GEMMs alone on one GPU, through each GEMM path
//! (`gemm`), so the paths can be compared without a layer around them:
//! per M, gate_up (N = 2I, K = D) and down (N = D, K = I) GEMMs with a
//! different expert's weights each (cold, as in a layer); and a layer's
//! worth of expert units back to back (gate_up, activation, down per
//! expert, as `phases::compute` issues them), with and without the
//! activation kernel, one activation launch per unit or batched as replay
//! batches them (`units`), and a check that batching changes no output bit.

use super::fused::{self, DownUnit};
use super::gemm::GemmImpl;
use super::runtime::{self, params, BufKind, Dev, Event};
use super::timing::quantile;
use super::units::{self, Batching, ExpertUnit, Scratch, UnitShape, ACT_SEGS};
use super::GpuError;
use crate::progress::Progress;

/// What `gemm-bench` measures.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Expert hidden size D and intermediate size I.
    pub hidden: usize,
    pub inter: usize,
    /// Rows M of the single-GEMM sweep.
    pub rows: Vec<usize>,
    /// Experts and rows per expert of the layer run.
    pub layer_experts: usize,
    pub layer_rows: usize,
    /// Timed samples per point (medians), after two untimed ones.
    pub reps: usize,
    pub paths: Vec<GemmImpl>,
}

/// One measured point.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub path: GemmImpl,
    /// "gate_up", "down", "layer" (GEMMs only), "layer+act", or
    /// "layer+act/P" (each expert's rows in units of P rows).
    pub what: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// GEMMs (expert pairs for the layer) per sample.
    pub count: usize,
    /// Median ms per GEMM (per layer for the layer rows).
    pub ms: f64,
    /// GEMM FLOPs over time (the activation's time counts, its FLOPs not).
    pub tflops: f64,
}

/// The card, the buckets each path tuned, the points, and each GEMM form
/// of the replay through `lt` against `cublas`: (form, relative error,
/// ||lt - cublas|| / ||cublas||).
#[derive(Debug, Clone)]
pub struct Bench {
    pub card: String,
    pub tuned: Vec<(GemmImpl, usize)>,
    pub rows: Vec<BenchRow>,
    pub agree: Vec<(&'static str, f64)>,
    /// Units batched as replay batches them against one activation launch
    /// per unit, on the same inputs: (units, rows each, output values that
    /// differ). The activation is elementwise, so none may.
    pub batched: (usize, usize, usize),
    /// The `lt` path's tunings.
    pub tunings: Vec<super::gemm::TuneLog>,
    /// With `fused` among the paths: units of uneven rows through the
    /// fused kernel against `lt` on the same inputs: per unit (rows,
    /// ||fused - lt|| / ||lt|| of its down output).
    pub fused_agree: Vec<(usize, f64)>,
    /// The fused kernel's variant, if `fused` ran.
    pub fused_variant: Option<String>,
}

/// Device buffers: `experts` weight sets [Wgu (D x 2I) | bgu (2I) | Wd
/// (I x D)], input rows, gate_up output, activation, down output.
struct Bufs {
    d: usize,
    i: usize,
    blob: usize,
    wgu: usize,
    bgu: usize,
    wd: usize,
    w: u64,
    x: u64,
    /// Values x and y each hold.
    xy: usize,
    h: u64,
    a: u64,
    /// Rows h and a hold: the largest single GEMM, or a batch of units.
    held: usize,
    y: u64,
}

impl Bufs {
    /// Expert `e`'s unit of `rows` rows at byte offset `off` of x (in) and
    /// y (out).
    fn unit(&self, e: usize, rows: usize, off: u64) -> ExpertUnit {
        let (wgu, bgu, wd) = self.weights(e);
        ExpertUnit {
            rows,
            x: self.x + off,
            wgu,
            bgu,
            wd,
            out: self.y + off,
            row: 0,
        }
    }

    fn scratch(&self) -> Scratch {
        Scratch::Reused {
            h: self.h,
            act: self.a,
            rows: self.held,
        }
    }

    fn shape(&self) -> UnitShape {
        UnitShape {
            hidden: self.d,
            inter: self.i,
            kind: 0,
        }
    }

    fn weights(&self, e: usize) -> (u64, u64, u64) {
        let base = self.w + (e * self.blob * 2) as u64;
        (
            base + (self.wgu * 2) as u64,
            base + (self.bgu * 2) as u64,
            base + (self.wd * 2) as u64,
        )
    }
}

/// The largest batch bound the layer run tries: [`ACT_SEGS`] units of the
/// gpt-oss expert's 4,096 rows.
const BENCH_BATCH_MAX: usize = ACT_SEGS * 4096 * 4 * 2880;

/// Round up to 128 elements (256 bytes), so each part starts aligned.
fn pad(n: usize) -> usize {
    n.div_ceil(128) * 128
}

fn gen(dev: &Dev, ptr: u64, n: usize, seed: u64, scale: f32) -> Result<(), GpuError> {
    let n64 = n as u64;
    let blocks = n.div_ceil(256).min(65_535) as u32;
    // SAFETY: ptr holds n bf16 values.
    unsafe {
        dev.launch(
            dev.k.gen_bf16,
            (blocks, 1, 1),
            256,
            0,
            dev.main,
            params!(ptr, n64, seed, scale),
        )
    }
}

fn alloc(dev: &mut Dev, cfg: &BenchConfig) -> Result<Bufs, GpuError> {
    let (d, i) = (cfg.hidden, cfg.inter);
    let (wgu, bgu) = (0, pad(d * 2 * i));
    let wd = bgu + pad(2 * i);
    let blob = wd + pad(i * d);
    let mmax = cfg
        .rows
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(cfg.layer_rows);
    // (and the batched check's units, `batched_matches`)
    let xrows = mmax
        .max(cfg.layer_experts * cfg.layer_rows)
        .max((2 * ACT_SEGS + 3) * 64);
    let experts = cfg.layer_experts.max(8);
    // x and y also stand in for one unit's gate_up output (the activation
    // alone) and hold the D x 2I weight gradient (the agreement check),
    // which few rows of D do not
    let xy = (xrows * d).max(cfg.layer_rows * 2 * i).max(d * 2 * i);
    let w = dev.arena.get(BufKind::CalW, experts * blob * 2)?;
    let x = dev.arena.get(BufKind::CalX, xy * 2)?;
    let batch = units::reused_rows(
        cfg.layer_rows as u64,
        (cfg.layer_experts * cfg.layer_rows) as u64,
        i as u64,
        Batching::UpTo(BENCH_BATCH_MAX),
    ) as usize;
    let held = mmax.max(batch);
    let h = dev.arena.get(BufKind::CalH, held * 2 * i * 2)?;
    let a = dev.arena.get(BufKind::CalA, held * i * 2)?;
    let y = dev.arena.get(BufKind::CalSend, xy * 2)?;
    gen(dev, w, experts * blob, 78, 1.0 / (d as f32).sqrt())?;
    gen(dev, x, xy, 77, 1.0)?;
    dev.sync()?;
    Ok(Bufs {
        d,
        i,
        blob,
        wgu,
        bgu,
        wd,
        w,
        x,
        xy,
        h,
        a,
        held,
        y,
    })
}

/// Median ms of `f` over `reps` samples after two untimed ones (the
/// first of which tunes the `lt` path's buckets).
fn time(
    dev: &Dev,
    reps: usize,
    f: &mut dyn FnMut() -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    let mut runs: Vec<Box<dyn FnMut() -> Result<(), GpuError> + '_>> = vec![Box::new(f)];
    Ok(time_rounds(dev, reps, &mut runs)?[0])
}

/// The activation kernel over `rows` rows of gate_up output `h` into `a`,
/// launched as `units` launches it for one unit.
fn act(dev: &Dev, h: u64, bias: u64, a: u64, rows: usize, i: usize) -> Result<(), GpuError> {
    let shape = UnitShape {
        hidden: 0,
        inter: i,
        kind: 0,
    };
    // SAFETY: h holds rows x 2I values, a rows x I, bias 2I.
    unsafe { units::activation_one(dev, &shape, h, bias, a, rows) }
}

/// One expert unit of `m` rows at input `x`, output `y`: gate_up GEMM,
/// the activation kernel over `act_rows` of them (0: none), down GEMM.
fn unit(
    dev: &Dev,
    b: &Bufs,
    e: usize,
    m: usize,
    x: u64,
    y: u64,
    act_rows: usize,
) -> Result<(), GpuError> {
    let (wgu, bgu, wd) = b.weights(e);
    let (d, i) = (b.d, b.i);
    // SAFETY: the buffers of `alloc` hold m rows of this shape.
    unsafe {
        dev.gemm_bf16(m, 2 * i, d, x, wgu, b.h)?;
        act(dev, b.h, bgu, b.a, act_rows.min(m), i)?;
        dev.gemm_bf16(m, d, i, b.a, wd, y)
    }
}

fn sweep(
    dev: &mut Dev,
    b: &Bufs,
    cfg: &BenchConfig,
    path: GemmImpl,
) -> Result<Vec<BenchRow>, GpuError> {
    let (d, i) = (b.d, b.i);
    let experts = cfg.layer_experts.max(8);
    let mut out = Vec::new();
    for &m in &cfg.rows {
        for (what, n, k) in [("gate_up", 2 * i, d), ("down", d, i)] {
            let ms = time(dev, cfg.reps, &mut || {
                for e in 0..experts {
                    let (wgu, _, wd) = b.weights(e);
                    // SAFETY: x holds m rows of D, h m rows of 2I, a m rows
                    // of I, y m rows of D.
                    unsafe {
                        if what == "gate_up" && path == GemmImpl::Fused {
                            // the fused kernel: gate_up and its activation
                            let u = [b.unit(e, m, 0)];
                            units::issue_gate_up(
                                dev,
                                &b.shape(),
                                &u,
                                &b.scratch(),
                                Batching::PerUnit,
                            )?;
                        } else if what == "gate_up" {
                            dev.gemm_bf16(m, n, k, b.x, wgu, b.h)?;
                        } else if let Some(f) =
                            dev.fused.as_ref().filter(|_| path == GemmImpl::Fused)
                        {
                            // the fused path's down GEMM, one unit a launch
                            // (the grouped kernel below DOWN_GROUPED_ROWS)
                            let u = [DownUnit {
                                rows: m,
                                act: b.a,
                                wd,
                                out: b.y,
                            }];
                            fused::launch_down(dev, f, &u, d, i, dev.main)?;
                        } else {
                            dev.gemm_bf16(m, n, k, b.a, wd, b.y)?;
                        }
                    }
                }
                Ok(())
            })? / experts as f64;
            out.push(BenchRow {
                path,
                what,
                m,
                n,
                k,
                count: experts,
                ms,
                tflops: 2.0 * (m * n * k) as f64 / ms / 1e9,
            });
        }
    }
    let (ne, m) = (cfg.layer_experts, cfg.layer_rows);
    // (name, activation rows per unit, rows per unit, programmatic
    // dependent launch of the activation, batching): the layer without and
    // with the activation, with an activation of one row (its launch and
    // the kernel boundaries alone), without PDL, each expert's rows in
    // pieces whose gate_up output stays in the L2 cache, and units batched
    // under one activation launch (replay's bound and larger ones)
    let pdl = dev.pdl.get();
    let per = Batching::PerUnit;
    // under `fused` the GEMMs without activation (lt's), and the layer
    // through the fused kernel (units::issue)
    let fused_variants = [
        ("layer", 0, m, pdl, per),
        ("layer+act fused", usize::MAX, m, pdl, Batching::default()),
    ];
    let variants = [
        ("layer", 0, m, pdl, per),
        ("layer+act", usize::MAX, m, pdl, per),
        ("layer+act1row", 1, m, pdl, per),
        ("layer+act noPDL", usize::MAX, m, false, per),
        ("layer+act/2048", usize::MAX, 2048, pdl, per),
        ("layer+act batched", usize::MAX, m, pdl, Batching::default()),
        (
            "layer+act batch 64MiB",
            usize::MAX,
            m,
            pdl,
            Batching::UpTo(64 << 20),
        ),
        (
            "layer+act batch 16x",
            usize::MAX,
            m,
            pdl,
            Batching::UpTo(BENCH_BATCH_MAX),
        ),
    ];
    let variants: &[_] = if path == GemmImpl::Fused {
        &fused_variants
    } else {
        &variants
    };
    let dv: &Dev = dev;
    let mut names = Vec::new();
    let mut runs: Vec<Box<dyn FnMut() -> Result<(), GpuError> + '_>> = Vec::new();
    for &(what, act_rows, piece, with_pdl, how) in variants {
        if piece > m || (piece == m && what.contains('/')) || (what.contains("PDL") && !pdl) {
            continue;
        }
        let mut pieces = Vec::new();
        for e in 0..ne {
            let mut at = 0;
            while at < m {
                let rows = piece.min(m - at);
                pieces.push((e, rows, ((e * m + at) * d * 2) as u64));
                at += rows;
            }
        }
        let us: Vec<ExpertUnit> = pieces
            .iter()
            .map(|&(e, rows, off)| b.unit(e, rows, off))
            .collect();
        names.push(what);
        runs.push(Box::new(move || {
            dv.pdl.set(with_pdl);
            let r = if how == per {
                pieces.iter().try_for_each(|&(e, rows, off)| {
                    unit(dv, b, e, rows, b.x + off, b.y + off, act_rows)
                })
            } else {
                // SAFETY: h and a hold `held` rows, at least a batch (`alloc`).
                unsafe { units::issue(dv, &b.shape(), &us, &b.scratch(), how, None) }
            };
            dv.pdl.set(pdl);
            r
        }));
    }
    if path == GemmImpl::Lt && 2 * m <= b.held {
        names.push("layer+act 2 streams");
        runs.push(two_streams(dv, b, cfg)?);
    }
    // in rounds, every variant once a round, so that the card's drift over
    // the run (clocks under the power cap) falls on all of them alike
    let ms = time_rounds(dv, cfg.reps, &mut runs)?;
    drop(runs);
    for (what, ms) in names.into_iter().zip(ms) {
        out.push(BenchRow {
            path,
            what,
            m,
            n: 3 * i,
            k: d,
            count: ne,
            ms,
            tflops: 6.0 * (ne * m * d * i) as f64 / ms / 1e9,
        });
    }
    if path == GemmImpl::Fused {
        return Ok(out);
    }
    out.push(act_alone(dev, b, cfg, path, "act alone")?);
    // the grid its callers size (one item per thread), for comparison
    let wave = std::mem::replace(&mut dev.act_wave, 0);
    let caller = act_alone(dev, b, cfg, path, "act callergrid");
    dev.act_wave = wave;
    out.push(caller?);
    Ok(out)
}

/// The layer's units alternating between the main and the side stream
/// (each stream its own gate_up and activation buffers, `lt` only), so that
/// one unit's activation and kernel boundaries overlap the other's GEMMs.
#[allow(clippy::type_complexity)]
fn two_streams<'a>(
    dev: &'a Dev,
    b: &'a Bufs,
    cfg: &BenchConfig,
) -> Result<Box<dyn FnMut() -> Result<(), GpuError> + 'a>, GpuError> {
    let (ne, m, d, i) = (cfg.layer_experts, cfg.layer_rows, b.d, b.i);
    let (fork, join) = (Event::new()?, Event::new()?);
    let streams = [dev.main, dev.side];
    let scratch = [
        (b.h, b.a),
        (b.h + (m * 2 * i * 2) as u64, b.a + (m * i * 2) as u64),
    ];
    Ok(Box::new(move || {
        fork.record(dev.main)?;
        dev.wait(dev.side, &fork)?;
        for e in 0..ne {
            let (s, (h, a)) = (streams[e % 2], scratch[e % 2]);
            let (wgu, bgu, wd) = b.weights(e);
            let off = ((e * m) * d * 2) as u64;
            // SAFETY: h and a hold two units of m rows (checked by the
            // caller: 2m <= held); x and y hold the layer's rows.
            unsafe {
                dev.gemm_bf16_on(s, m, 2 * i, d, b.x + off, wgu, h)?;
                units::activation_one_on(dev, &b.shape(), h, bgu, a, m, s)?;
                dev.gemm_bf16_on(s, m, d, i, a, wd, b.y + off)?;
            }
        }
        join.record(dev.side)?;
        dev.wait(dev.main, &join)
    }))
}

/// Median ms of each of `runs` over `reps` rounds after two untimed ones
/// (the first tunes the `lt` path's buckets), every run once a round.
fn time_rounds(
    dev: &Dev,
    reps: usize,
    runs: &mut [Box<dyn FnMut() -> Result<(), GpuError> + '_>],
) -> Result<Vec<f64>, GpuError> {
    let (e0, e1) = (Event::new()?, Event::new()?);
    let mut v = vec![Vec::with_capacity(reps); runs.len()];
    for rep in 0..reps + 2 {
        for (f, samples) in runs.iter_mut().zip(&mut v) {
            dev.sync()?;
            e0.record(dev.main)?;
            f()?;
            e1.record(dev.main)?;
            e1.sync()?;
            if rep >= 2 {
                samples.push(e1.ms_since(&e0)?);
            }
        }
    }
    Ok(v.iter().map(|s| quantile(s, 0.5)).collect())
}

/// The activation alone over units of the layer's rows, reading cold
/// gate_up output (the input rows' buffer stands in for it): ms per unit;
/// `tflops` holds its memory throughput in TB/s instead.
fn act_alone(
    dev: &Dev,
    b: &Bufs,
    cfg: &BenchConfig,
    path: GemmImpl,
    what: &'static str,
) -> Result<BenchRow, GpuError> {
    let (m, i) = (cfg.layer_rows, b.i);
    let units = (b.xy / (m * 2 * i)).clamp(1, cfg.layer_experts);
    let (_, bgu, _) = b.weights(0);
    let ms = time(dev, cfg.reps, &mut || {
        for u in 0..units {
            let h = b.x + (u * m * 2 * i * 2) as u64;
            let a = b.y + (u * m * i * 2) as u64;
            act(dev, h, bgu, a, m, i)?;
        }
        Ok(())
    })? / units as f64;
    Ok(BenchRow {
        path,
        what,
        m,
        n: i,
        k: 0,
        count: units,
        ms,
        tflops: (m * 3 * i * 2) as f64 / ms / 1e9,
    })
}

/// Run the benchmark on GPU 0.
pub fn bench(cfg: &BenchConfig, progress: &dyn Progress) -> Result<Bench, GpuError> {
    if cfg.hidden % 8 != 0
        || cfg.inter % 2 != 0
        || cfg.hidden == 0
        || cfg.inter == 0
        || cfg.rows.contains(&0)
        || cfg.layer_experts == 0
        || cfg.layer_rows == 0
        || cfg.reps == 0
        || cfg.paths.is_empty()
    {
        return Err(GpuError::Input(
            "gemm-bench needs D a positive multiple of 8, I positive and even, positive rows, experts and reps, and a GEMM path".into(),
        ));
    }
    runtime::check_libraries()?;
    if runtime::device_count()? == 0 {
        return Err(GpuError::NoDevice);
    }
    let ptx = runtime::compile_kernels_for_device0()?;
    let mut dev = Dev::new(0, &ptx)?;
    let b = alloc(&mut dev, cfg)?;
    let mut res = Bench {
        card: dev.name.clone(),
        tuned: Vec::new(),
        rows: Vec::new(),
        agree: Vec::new(),
        batched: (0, 0, 0),
        tunings: Vec::new(),
        fused_agree: Vec::new(),
        fused_variant: None,
    };
    for &path in &cfg.paths {
        progress.status(&format!("GEMMs through {}", path.as_str()));
        dev.set_gemm(path)?;
        res.rows.extend(sweep(&mut dev, &b, cfg, path)?);
        if path == GemmImpl::Fused {
            res.fused_variant = dev.fused.as_ref().map(|f| f.to_string());
        }
        res.tuned.push((path, dev.gemm_tuned()));
    }
    if cfg.paths.contains(&GemmImpl::Lt) && cfg.paths.contains(&GemmImpl::Cublas) {
        progress.status("lt against cublas on every GEMM form");
        res.agree = agreement(&mut dev, &b, cfg.layer_rows)?;
    }
    progress.status("units batched against one activation each");
    dev.set_gemm(GemmImpl::Lt)?;
    res.batched = batched_matches(&dev, &b, cfg)?;
    if cfg.paths.contains(&GemmImpl::Fused) {
        progress.status("the fused kernel against lt, units of uneven rows");
        res.fused_agree = fused_agrees(&mut dev, &b, cfg)?;
    }
    res.tunings = dev.gemm_tune_log();
    dev.sync()?;
    Ok(res)
}

/// The layer's experts in units small enough to batch (at most 64 rows
/// each, rows of every expert in turn), issued per unit and then batched
/// as replay batches them: the down outputs, compared value by value.
fn batched_matches(
    dev: &Dev,
    b: &Bufs,
    cfg: &BenchConfig,
) -> Result<(usize, usize, usize), GpuError> {
    let d = b.d;
    let rows = cfg.layer_rows.min(64);
    let n = (2 * ACT_SEGS + 3)
        .min(b.xy / (rows * d))
        .min(b.held * ACT_SEGS / rows.max(1));
    let us: Vec<ExpertUnit> = (0..n)
        .map(|k| {
            b.unit(
                k % cfg.layer_experts.max(8),
                rows,
                (k * rows * d * 2) as u64,
            )
        })
        .collect();
    let mut got: Vec<Vec<u16>> = Vec::new();
    for how in [Batching::PerUnit, Batching::default()] {
        let mut host = vec![0u16; n * rows * d];
        // SAFETY: n units of `rows` rows lie inside x and y (n is bounded by
        // xy); h and a hold `held` rows, at least one batch.
        unsafe {
            units::issue(dev, &b.shape(), &us, &b.scratch(), how, None)?;
            dev.download(&mut host, b.y)?;
        }
        got.push(host);
    }
    let differ = got[0].iter().zip(&got[1]).filter(|(a, b)| a != b).count();
    Ok((n, rows, differ))
}

/// The forms of GEMM the replay issues (forward; backward dgrad, wgrad,
/// wgrad accumulated), each through `cublas` and `lt` on the same inputs;
/// the relative error of `lt`'s output against `cublas`'s.
fn agreement(dev: &mut Dev, b: &Bufs, m: usize) -> Result<Vec<(&'static str, f64)>, GpuError> {
    let (d, i) = (b.d, b.i);
    let (wgu, _, _) = b.weights(0);
    // the gate_up output serves as dH below: fill it once, through cublas
    dev.set_gemm(GemmImpl::Cublas)?;
    // SAFETY: x holds m rows of D, h m rows of 2I.
    unsafe { dev.gemm_bf16(m, 2 * i, d, b.x, wgu, b.h)? };
    type Form = (
        &'static str,
        usize,
        usize,
        usize,
        (u64, usize, bool),
        (u64, usize, bool),
        usize,
    );
    #[rustfmt::skip]
    let forms: [Form; 4] = [
        ("forward gate_up", m, 2 * i, d, (b.x, d, false), (wgu, 2 * i, false), 1),
        ("dgrad dX = dH.Wgu^T", m, d, 2 * i, (b.h, 2 * i, false), (wgu, 2 * i, true), 1),
        ("wgrad dWgu = X^T.dH", d, 2 * i, m, (b.x, d, true), (b.h, 2 * i, false), 1),
        ("wgrad, accumulated", d, 2 * i, m, (b.x, d, true), (b.h, 2 * i, false), 2),
    ];
    let mut out = Vec::new();
    for (name, mm, n, k, x, w, times) in forms {
        let mut got: Vec<Vec<u16>> = Vec::new();
        for path in [GemmImpl::Cublas, GemmImpl::Lt] {
            dev.set_gemm(path)?;
            let mut host = vec![0u16; mm * n];
            // SAFETY: y holds at least mm x n values (m x D or D x 2I, as
            // `alloc` sized it); the operands are sized as above.
            unsafe {
                for t in 0..times {
                    let beta = if t == 0 { 0.0 } else { 1.0 };
                    dev.gemm(mm, n, k, x, w, b.y, beta, super::runtime::Dt::Bf16)?;
                }
                dev.download(&mut host, b.y)?;
            }
            got.push(host);
        }
        let f = |u: u16| f64::from(f32::from_bits(u32::from(u) << 16));
        let (mut num, mut den) = (0.0, 0.0);
        for (r, l) in got[0].iter().zip(&got[1]) {
            num += (f(*l) - f(*r)).powi(2);
            den += f(*r).powi(2);
        }
        out.push((name, (num / den.max(f64::MIN_POSITIVE)).sqrt()));
    }
    Ok(out)
}

/// Units of uneven rows (the layer's, one row, rows that end mid-tile, and
/// more units than one fused launch serves) through `lt` and through
/// `fused` on the same inputs: per unit, its rows and the relative error of
/// its down output against `lt`'s. Both round the gate_up sums to bf16
/// before the activation, so most units agree bit for bit; where cuBLASLt
/// picks another kernel (a unit of one or two rows) the sums' order
/// differs, and so do the last bits.
fn fused_agrees(dev: &mut Dev, b: &Bufs, cfg: &BenchConfig) -> Result<Vec<(usize, f64)>, GpuError> {
    let d = b.d;
    let mut rows = vec![
        cfg.layer_rows.min(b.held),
        1,
        77,
        129,
        300,
        64,
        255,
        513,
        2,
        1000,
        // more units than FUSED_UNITS, so that a second launch runs
        3,
        17,
        31,
        65,
        96,
        128,
        200,
        250,
    ];
    // every unit's rows inside x and y, each unit within the scratch
    let cap = b.xy / d;
    let mut at = 0;
    rows.retain(|&r| {
        let fits = at + r <= cap && r <= b.held;
        if fits {
            at += r;
        }
        fits
    });
    let mut us = Vec::new();
    let mut off = 0u64;
    for (k, &r) in rows.iter().enumerate() {
        us.push(b.unit(k % cfg.layer_experts.max(8), r, off));
        off += (r * d * 2) as u64;
    }
    let mut got: Vec<Vec<u16>> = Vec::new();
    for path in [GemmImpl::Lt, GemmImpl::Fused] {
        dev.set_gemm(path)?;
        let mut host = vec![0u16; at * d];
        // SAFETY: the units' rows lie inside x and y (at <= cap); each unit
        // fits the scratch (r <= held).
        unsafe {
            dev.memset0(b.y, at * d * 2)?;
            units::issue(
                dev,
                &b.shape(),
                &us,
                &b.scratch(),
                Batching::default(),
                None,
            )?;
            dev.download(&mut host, b.y)?;
        }
        got.push(host);
    }
    let f = |u: u16| f64::from(f32::from_bits(u32::from(u) << 16));
    let mut out = Vec::new();
    let mut start = 0;
    for &r in &rows {
        let (mut num, mut den) = (0.0, 0.0);
        for (l, x) in got[0][start * d..(start + r) * d]
            .iter()
            .zip(&got[1][start * d..(start + r) * d])
        {
            num += (f(*x) - f(*l)).powi(2);
            den += f(*l).powi(2);
        }
        out.push((r, (num / den.max(f64::MIN_POSITIVE)).sqrt()));
        start += r;
    }
    Ok(out)
}
