//! Expert units on one GPU's main stream. A unit is one expert's rows
//! through the gate_up GEMM, the activation and the down GEMM.
//!
//! Consecutive units are issued in batches: the batch's gate_up GEMMs back
//! to back, one activation launch over all their rows (each unit with its
//! own expert's bias), then their down GEMMs. A kernel between two GEMMs
//! costs more than its own run time (the next GEMM cannot start early), so
//! fewer activation launches save time where units are many and small. A
//! batch is bounded by the gate_up output it holds ([`Batching`]), because
//! an output that stays in L2 is read back by the activation at L2 speed.
//!
//! One issuing path for every caller: replay's compute phase
//! (`phases::compute`), calibrate's GEMM tables and `gemm-bench`, so the
//! tables the cost model prices units with are timed the way replay runs
//! them.

use std::ops::Range;

use super::fused::{self, DownUnit, Fused, FusedUnit, FUSED_UNITS};
use super::gemm::GemmImpl;
use super::runtime::{params, Dev, Event};
use super::GpuError;

/// Most units one activation launch serves (its parameter block holds one
/// row bound and bias per unit; `ACT_SEGS` in kernels/moe.cu).
pub const ACT_SEGS: usize = 16;

/// The units' row bounds and biases, passed by value to `act_rows`:
/// rows `[end[s-1], end[s])` of the launch belong to unit `s`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ActSegs {
    end: [i64; ACT_SEGS],
    bias: [u64; ACT_SEGS],
    n: i32,
}

/// One unit: `rows` rows at `x` (D values each) through the expert whose
/// gate_up weight, its bias and down weight are at `wgu`, `bgu`, `wd`,
/// written to `out`. `row` places it in [`Scratch::Saved`] buffers.
#[derive(Debug, Clone, Copy)]
pub(super) struct ExpertUnit {
    pub rows: usize,
    pub x: u64,
    pub wgu: u64,
    pub bgu: u64,
    pub wd: u64,
    pub out: u64,
    pub row: u64,
}

impl ExpertUnit {
    /// A unit whose expert is the weight blob at `w` laid out as `bl`.
    pub(super) fn of_blob(
        rows: usize,
        x: u64,
        w: u64,
        bl: &super::worker::BlobLayout,
        out: u64,
        row: u64,
    ) -> ExpertUnit {
        ExpertUnit {
            rows,
            x,
            wgu: w + 2 * bl.wgu as u64,
            bgu: w + 2 * bl.bgu as u64,
            wd: w + 2 * bl.wd as u64,
            out,
            row,
        }
    }
}

/// Where gate_up outputs (2I values a row) and activations (I) go.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scratch {
    /// One batch at a time, reused: room for `rows` rows.
    Reused { h: u64, act: u64, rows: usize },
    /// A place per computed row (a training step keeps them for its
    /// backward): unit rows `row..row + rows`.
    Saved { h: u64, act: u64 },
}

/// How many units one activation launch may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// One launch per unit.
    PerUnit,
    /// Consecutive units while their gate_up output fits in this many bytes
    /// (a unit larger than that goes alone), at most [`ACT_SEGS`] units.
    UpTo(usize),
}

/// The bound replay and calibrate use: half of an H100/H200's 50 MB L2,
/// so the activation reads a batch's gate_up output back from the cache.
pub const BATCH_BYTES: usize = 24 << 20;

impl Default for Batching {
    fn default() -> Self {
        Batching::UpTo(BATCH_BYTES)
    }
}

/// The bound of the reused scratch under `--gemm fused`. Its launches group
/// up to [`FUSED_UNITS`] units whose activations fill both buffers
/// ([`issue_fused`]), so a launch's tail of partly filled waves is shared
/// by more units: 96 MiB of gate_up buffer hold about 26,000 activation
/// rows of gpt-oss, twelve units of 2,048 rows (under [`BATCH_BYTES`] a
/// launch held three), a pipelined chunk of its balanced layer. Keeping
/// the activations in L2 matters less here: the down GEMM reading them is
/// compute-bound.
pub const FUSED_BATCH_BYTES: usize = 96 << 20;

/// The bound of the reused scratch (rows it holds: [`reused_rows`]) under
/// GEMM path `gemm`; replay, calibrate and the memory model size it alike.
pub fn scratch_batching(gemm: GemmImpl) -> Batching {
    match gemm {
        GemmImpl::Fused => Batching::UpTo(FUSED_BATCH_BYTES),
        _ => Batching::default(),
    }
}

/// A second compute stream for the large units (`replay --compute-streams
/// 2`): batches holding at least [`ALTERNATE_BYTES`] of gate_up output
/// alternate between the main stream and `stream`, which has its own
/// scratch, so one unit's activation and kernel boundaries overlap the
/// other's GEMMs. Small batches stay on the main stream (a second stream
/// slowed decode-sized units in `gemm-bench`). `fork` and `join` bracket
/// the second stream's work inside the main stream's order.
pub(super) struct TwoStreams<'a> {
    pub stream: cudarc::driver::sys::CUstream,
    pub scratch: Scratch,
    pub fork: &'a Event,
    pub join: &'a Event,
}

/// Batches this large or larger alternate between two compute streams.
pub const ALTERNATE_BYTES: usize = BATCH_BYTES / 2;

/// Rows a [`Scratch::Reused`] buffer needs for a GPU whose largest unit
/// has `largest` rows, `total` rows in all, intermediate size `inter`: one
/// batch's worth. The cost model's memory sizes it by the same rule.
pub fn reused_rows(largest: u64, total: u64, inter: u64, how: Batching) -> u64 {
    match how {
        Batching::PerUnit => largest,
        Batching::UpTo(bytes) => (bytes as u64 / (4 * inter).max(1))
            .max(largest)
            .min(total.max(largest)),
    }
}

/// The expert shape and activation the units share.
#[derive(Debug, Clone, Copy)]
pub(super) struct UnitShape {
    pub hidden: usize,
    pub inter: usize,
    /// 0: gpt-oss's clamped SwiGLU; 1: plain SwiGLU.
    pub kind: i32,
}

/// Consecutive runs of `units` that share one activation launch. Under
/// [`Scratch::Saved`] a run's rows must also be contiguous; under
/// [`Scratch::Reused`] it must fit the buffers.
pub(super) fn batches(
    units: &[ExpertUnit],
    s: &UnitShape,
    scratch: &Scratch,
    how: Batching,
) -> Vec<Range<usize>> {
    let h_row = 4 * s.inter;
    let cap_rows = match (how, scratch) {
        (Batching::PerUnit, _) => 0,
        (Batching::UpTo(bytes), Scratch::Reused { rows, .. }) => (bytes / h_row).min(*rows),
        (Batching::UpTo(bytes), Scratch::Saved { .. }) => bytes / h_row,
    };
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut rows = 0;
    for (k, u) in units.iter().enumerate() {
        let joins = match out.last() {
            Some(r) if r.end == k => {
                let prev = &units[k - 1];
                let contiguous = match scratch {
                    Scratch::Saved { .. } => prev.row + prev.rows as u64 == u.row,
                    Scratch::Reused { .. } => true,
                };
                contiguous && r.len() < ACT_SEGS && rows + u.rows <= cap_rows
            }
            _ => false,
        };
        if joins {
            out.last_mut().expect("joined a batch").end = k + 1;
            rows += u.rows;
        } else {
            out.push(k..k + 1);
            rows = u.rows;
        }
    }
    out
}

/// [`batches`], each with whether it runs on the second stream: with
/// `two`, the large batches (at least [`ALTERNATE_BYTES`] of gate_up
/// output) take turns, the first on the main stream; where fewer than two
/// are large, everything stays on the main stream.
pub(super) fn stream_turns(
    units: &[ExpertUnit],
    s: &UnitShape,
    scratch: &Scratch,
    how: Batching,
    two: bool,
) -> Vec<(Range<usize>, bool)> {
    let runs = batches(units, s, scratch, how);
    let large = |r: &Range<usize>| {
        units[r.clone()].iter().map(|u| u.rows).sum::<usize>() * 4 * s.inter >= ALTERNATE_BYTES
    };
    let two = two && runs.iter().filter(|r| large(r)).count() >= 2;
    let mut second = false;
    runs.into_iter()
        .map(|r| {
            let on_second = two && large(&r) && {
                second = !second;
                !second
            };
            (r, on_second)
        })
        .collect()
}

/// Issue `units` in [`batches`]: on the device's main stream, or with
/// `two`, the large batches taking turns with its stream (see
/// [`TwoStreams`]).
///
/// # Safety
/// Each unit's pointers must hold its rows and expert; `scratch` (and
/// `two`'s) must hold every batch (a [`Scratch::Reused`] buffer at least
/// the largest unit, as `batches` never splits one).
pub(super) unsafe fn issue(
    dev: &Dev,
    s: &UnitShape,
    units: &[ExpertUnit],
    scratch: &Scratch,
    how: Batching,
    two: Option<&TwoStreams>,
) -> Result<(), GpuError> {
    issue_parts(dev, s, units, scratch, how, true, two)
}

/// [`issue`] without the down GEMMs: calibrate times the down GEMM as the
/// difference between the two.
///
/// # Safety
/// As for [`issue`].
pub(super) unsafe fn issue_gate_up(
    dev: &Dev,
    s: &UnitShape,
    units: &[ExpertUnit],
    scratch: &Scratch,
    how: Batching,
) -> Result<(), GpuError> {
    issue_parts(dev, s, units, scratch, how, false, None)
}

#[allow(clippy::too_many_arguments)]
unsafe fn issue_parts(
    dev: &Dev,
    s: &UnitShape,
    units: &[ExpertUnit],
    scratch: &Scratch,
    how: Batching,
    down: bool,
    two: Option<&TwoStreams>,
) -> Result<(), GpuError> {
    if dev.gemm_impl == GemmImpl::Fused {
        if let (Some(f), Scratch::Reused { h, act, rows }) = (dev.fused.as_ref(), *scratch) {
            if two.is_some() {
                return Err(GpuError::Input(
                    "--gemm fused runs its units on one stream (no --compute-streams 2)".into(),
                ));
            }
            return issue_fused(dev, f, s, units, [(act, rows), (h, 2 * rows)], down);
        }
    }
    let (d, i) = (s.hidden, s.inter);
    let (h_row, a_row) = (4 * i as u64, 2 * i as u64);
    let runs = stream_turns(units, s, scratch, how, two.is_some());
    let two = two.filter(|_| runs.iter().any(|&(_, second)| second));
    if let Some(t) = two {
        t.fork.record(dev.main)?;
        dev.wait(t.stream, t.fork)?;
    }
    for (r, on_second) in runs {
        let batch = &units[r];
        let (stream, scratch) = match two {
            Some(t) if on_second => (t.stream, &t.scratch),
            _ => (dev.main, scratch),
        };
        // where unit k's gate_up output and activation go
        let (h0, a0, base) = match *scratch {
            Scratch::Reused { h, act, .. } => (h, act, None),
            Scratch::Saved { h, act } => (h, act, Some(batch[0].row)),
        };
        let mut at = base.unwrap_or(0);
        let mut places = Vec::with_capacity(batch.len());
        for u in batch {
            places.push((h0 + at * h_row, a0 + at * a_row));
            at += u.rows as u64;
        }
        let gemm = |m: usize, n: usize, k: usize, a: u64, b: u64, c: u64| {
            if stream == dev.main {
                dev.gemm_bf16(m, n, k, a, b, c)
            } else {
                dev.gemm_bf16_on(stream, m, n, k, a, b, c)
            }
        };
        for (u, &(h, _)) in batch.iter().zip(&places) {
            gemm(u.rows, 2 * i, d, u.x, u.wgu, h)?;
        }
        let mut segs = ActSegs {
            end: [0; ACT_SEGS],
            bias: [0; ACT_SEGS],
            n: batch.len() as i32,
        };
        let mut total = 0usize;
        for (k, u) in batch.iter().enumerate() {
            total += u.rows;
            segs.end[k] = total as i64;
            segs.bias[k] = u.bgu;
        }
        activation(dev, places[0].0, &segs, places[0].1, total, s, stream)?;
        if !down {
            continue;
        }
        for (u, &(_, a)) in batch.iter().zip(&places) {
            gemm(u.rows, d, i, a, u.wd, u.out)?;
        }
    }
    if let Some(t) = two {
        t.join.record(t.stream)?;
        dev.wait(dev.main, t.join)?;
    }
    Ok(())
}

/// [`issue_parts`] through the fused gate_up kernel (`--gemm fused`): one
/// launch per run of up to [`FUSED_UNITS`] consecutive units, then one
/// launch of their down GEMMs. The kernel writes no gate_up output, so a launch's
/// activation rows may fill both reused buffers: `regions` are (address,
/// activation rows it holds): the activation buffer, then the gate_up
/// buffer (4I bytes a row: two activation rows). Fewer launches than
/// units means fewer tails of partly filled waves.
///
/// # Safety
/// As for [`issue`]; each region must hold the rows stated.
unsafe fn issue_fused(
    dev: &Dev,
    f: &Fused,
    s: &UnitShape,
    units: &[ExpertUnit],
    regions: [(u64, usize); 2],
    down: bool,
) -> Result<(), GpuError> {
    let a_row = 2 * s.inter as u64;
    let mut used = [0usize; 2];
    let mut batch: Vec<(FusedUnit, &ExpertUnit)> = Vec::with_capacity(FUSED_UNITS);
    let flush = |batch: &mut Vec<(FusedUnit, &ExpertUnit)>| -> Result<(), GpuError> {
        let fu: Vec<FusedUnit> = batch.iter().map(|b| b.0).collect();
        fused::launch(dev, f, &fu, s.hidden, s.inter, s.kind, dev.main)?;
        if down {
            let du: Vec<DownUnit> = batch
                .iter()
                .map(|(fu, u)| DownUnit {
                    rows: u.rows,
                    act: fu.act,
                    wd: u.wd,
                    out: u.out,
                })
                .collect();
            fused::launch_down(dev, f, &du, s.hidden, s.inter, dev.main)?;
        }
        batch.clear();
        Ok(())
    };
    for u in units.iter().filter(|u| u.rows > 0) {
        let fits = |used: &[usize; 2]| (0..2).find(|&r| used[r] + u.rows <= regions[r].1);
        let mut slot = fits(&used).filter(|_| batch.len() < FUSED_UNITS);
        if slot.is_none() {
            flush(&mut batch)?;
            used = [0, 0];
            slot = fits(&used);
        }
        let Some(r) = slot else {
            return Err(GpuError::Input(format!(
                "a unit of {} rows is larger than the activation scratch",
                u.rows
            )));
        };
        let act = regions[r].0 + used[r] as u64 * a_row;
        used[r] += u.rows;
        batch.push((
            FusedUnit {
                rows: u.rows,
                x: u.x,
                wgu: u.wgu,
                bgu: u.bgu,
                act,
            },
            u,
        ));
    }
    if !batch.is_empty() {
        flush(&mut batch)?;
    }
    Ok(())
}

/// The activation of one unit alone: `rows` rows of gate_up output at `h`
/// with bias `bgu` into `act`, on the main stream.
///
/// # Safety
/// `h` must hold rows x 2I values, `act` rows x I, `bgu` 2I.
pub(super) unsafe fn activation_one(
    dev: &Dev,
    s: &UnitShape,
    h: u64,
    bgu: u64,
    act: u64,
    rows: usize,
) -> Result<(), GpuError> {
    activation_one_on(dev, s, h, bgu, act, rows, dev.main)
}

/// [`activation_one`] on `stream`.
///
/// # Safety
/// As for [`activation_one`]; `stream` must be one of `dev`'s.
pub(super) unsafe fn activation_one_on(
    dev: &Dev,
    s: &UnitShape,
    h: u64,
    bgu: u64,
    act: u64,
    rows: usize,
    stream: cudarc::driver::sys::CUstream,
) -> Result<(), GpuError> {
    let mut segs = ActSegs {
        end: [0; ACT_SEGS],
        bias: [0; ACT_SEGS],
        n: 1,
    };
    segs.end[0] = rows as i64;
    segs.bias[0] = bgu;
    activation(dev, h, &segs, act, rows, s, stream)
}

unsafe fn activation(
    dev: &Dev,
    h: u64,
    segs: &ActSegs,
    act: u64,
    rows: usize,
    s: &UnitShape,
    stream: cudarc::driver::sys::CUstream,
) -> Result<(), GpuError> {
    let pairs = rows * s.inter / 2;
    let aligned = i32::from(segs.bias[..segs.n as usize].iter().all(|b| b % 16 == 0));
    let (rows_i, inter_i, kind) = (rows as i64, s.inter as i32, s.kind);
    let segs = *segs;
    dev.launch(
        dev.k.act_rows,
        (pairs.div_ceil(256).min(1 << 20) as u32, 1, 1),
        256,
        0,
        stream,
        params!(h, segs, act, rows_i, inter_i, kind, aligned),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(rows: usize, row: u64) -> ExpertUnit {
        ExpertUnit {
            rows,
            x: 0,
            wgu: 0,
            bgu: 0,
            wd: 0,
            out: 0,
            row,
        }
    }

    fn shape(inter: usize) -> UnitShape {
        UnitShape {
            hidden: 64,
            inter,
            kind: 0,
        }
    }

    #[test]
    fn batches_fill_up_to_the_byte_bound_and_never_split_a_unit() {
        // I = 256: 1 KiB of gate_up output a row; a 4 KiB bound is 4 rows
        let s = shape(256);
        let us: Vec<_> = [2, 2, 1, 3, 9, 1].iter().map(|&r| unit(r, 0)).collect();
        let sc = Scratch::Reused {
            h: 0,
            act: 0,
            rows: 100,
        };
        assert_eq!(
            batches(&us, &s, &sc, Batching::UpTo(4096)),
            vec![0..2, 2..4, 4..5, 5..6]
        );
        assert_eq!(
            batches(&us, &s, &sc, Batching::PerUnit),
            (0..6).map(|k| k..k + 1).collect::<Vec<_>>()
        );
        // the reused buffer bounds it too
        let small = Scratch::Reused {
            h: 0,
            act: 0,
            rows: 3,
        };
        assert_eq!(
            batches(&us, &s, &small, Batching::UpTo(1 << 30)),
            vec![0..1, 1..3, 3..4, 4..5, 5..6]
        );
    }

    #[test]
    fn batches_hold_at_most_act_segs_units() {
        let s = shape(8);
        let us: Vec<_> = (0..40).map(|k| unit(1, k)).collect();
        let sc = Scratch::Saved { h: 0, act: 0 };
        let b = batches(&us, &s, &sc, Batching::UpTo(1 << 30));
        assert_eq!(b, vec![0..16, 16..32, 32..40]);
    }

    #[test]
    fn saved_rows_batch_only_where_contiguous() {
        let s = shape(8);
        let us = [unit(4, 0), unit(4, 4), unit(2, 10), unit(2, 12)];
        let sc = Scratch::Saved { h: 0, act: 0 };
        assert_eq!(
            batches(&us, &s, &sc, Batching::UpTo(1 << 30)),
            vec![0..2, 2..4]
        );
    }

    #[test]
    fn large_batches_take_turns_and_small_ones_stay_on_the_main_stream() {
        // I = 1024: 4 KiB of gate_up output a row, 12 MiB from 3,072 rows;
        let s = shape(1024);
        let sc = Scratch::Reused {
            h: 0,
            act: 0,
            rows: 1 << 20,
        };
        // (24 MiB batches: 6,144 rows) 5,000 rows alone; 2,000 (8 MiB) small
        let us: Vec<_> = [5000, 2000, 5000, 5000]
            .iter()
            .map(|&r| unit(r, 0))
            .collect();
        let turns = stream_turns(&us, &s, &sc, Batching::default(), true);
        let second: Vec<bool> = turns.iter().map(|t| t.1).collect();
        assert_eq!(turns.len(), 4);
        assert_eq!(second, [false, false, true, false]);
        // one stream asked: all on main; one large batch: nothing to pair
        assert!(stream_turns(&us, &s, &sc, Batching::default(), false)
            .iter()
            .all(|t| !t.1));
        let one = [unit(5000, 0), unit(2000, 0)];
        assert!(stream_turns(&one, &s, &sc, Batching::default(), true)
            .iter()
            .all(|t| !t.1));
    }

    #[test]
    fn act_segs_is_the_kernels_parameter_block() {
        // kernels/moe.cu: long long end[16]; u64 bias[16]; int n; (8-aligned)
        assert_eq!(std::mem::size_of::<ActSegs>(), 16 * 8 * 2 + 8);
        assert_eq!(std::mem::align_of::<ActSegs>(), 8);
    }
}
