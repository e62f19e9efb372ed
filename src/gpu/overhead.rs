//! `calibrate`'s overhead measurement. The figure a profile keeps is the
//! replayed layer's overhead phase (count all-gather, the host sync on it,
//! planning, laying out and uploading the tables) run alone, back to back,
//! with the replay's own code: the phase in steady state. Beside it, for the
//! record, the same phase as whole layer runs see it, per rank, with each
//! rank's host start and end: in a layer run the phase also holds the time
//! a rank waits in the all-gather for a peer that finished the previous
//! layer later, and over a slow link that wait grows with the layer's bytes
//! (see `reports/multinode/`).

use super::config::Case;
use super::runtime::BufKind;
use super::timing::quantile;
use super::worker::{RunOut, Worker, E_PLANNED, E_START, PERSISTENT};
use super::{Gate, GpuError};
use crate::plan::Policy;
use crate::progress::Progress;
use std::sync::OnceLock;
use std::time::Instant;

/// The overhead measurements (every rank's numbers, gathered to rank 0).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OverheadRaw {
    /// Tokens per GPU of the balanced routing the phase was timed on.
    pub tokens: u64,
    /// The phase alone, back to back: per iteration, the slowest rank's ms
    /// (the median is the profile's `overhead_us`).
    pub alone_ms: Vec<f64>,
    /// The phase inside whole layer runs (EP, balanced), per token count.
    pub layer: Vec<LayerOverhead>,
}

/// The overhead phase of whole layer runs at one token count.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LayerOverhead {
    pub tokens: u64,
    /// Per run, per rank: the overhead phase, ms.
    pub overhead_ms: Vec<Vec<f64>>,
    /// Per run, per rank: the host starting the run, ms after the first
    /// rank to start it.
    pub start_lag_ms: Vec<Vec<f64>>,
    /// Per run, per rank: the host seeing the run end, ms after the first
    /// rank to see it end.
    pub end_lag_ms: Vec<Vec<f64>>,
}

impl LayerOverhead {
    /// From the gathered `[start, end, overhead]` triples, rank-major.
    pub fn from_gathered(tokens: u64, all: &[f64], world: usize, runs: usize) -> Self {
        let at = |q: usize, i: usize, j: usize| all[q * 3 * runs + 3 * i + j];
        let lag = |i: usize, j: usize| {
            let first = (0..world)
                .map(|q| at(q, i, j))
                .fold(f64::INFINITY, f64::min);
            (0..world).map(|q| at(q, i, j) - first).collect::<Vec<_>>()
        };
        LayerOverhead {
            tokens,
            overhead_ms: (0..runs)
                .map(|i| (0..world).map(|q| at(q, i, 2)).collect())
                .collect(),
            start_lag_ms: (0..runs).map(|i| lag(i, 0)).collect(),
            end_lag_ms: (0..runs).map(|i| lag(i, 1)).collect(),
        }
    }

    /// One line: per rank the median overhead phase, and the median over
    /// runs of the latest rank's start lag.
    pub fn summary(&self) -> String {
        let world = self.overhead_ms.first().map_or(0, Vec::len);
        let per_rank: Vec<String> = (0..world)
            .map(|q| {
                let v: Vec<f64> = self.overhead_ms.iter().map(|r| r[q]).collect();
                format!("{:.3}", quantile(&v, 0.5))
            })
            .collect();
        let lag = |v: &[Vec<f64>]| {
            let m: Vec<f64> = v
                .iter()
                .map(|r| r.iter().cloned().fold(0.0, f64::max))
                .collect();
            quantile(&m, 0.5)
        };
        format!(
            "layer runs at {} tokens/GPU: overhead phase per rank {} ms (medians); \
             latest rank starts {:.3} ms after the first, ends {:.3} ms after the first (medians)",
            self.tokens,
            per_rank.join(" / "),
            lag(&self.start_lag_ms),
            lag(&self.end_lag_ms)
        )
    }
}

/// Per iteration the slowest rank (the all-gather holds every rank to the
/// last arrival, as the critical GPU of a replayed run is), from gathered
/// per-rank samples (rank-major); then the samples.
pub fn slowest_per_iteration(all: &[f64], world: usize, iters: usize) -> Vec<f64> {
    (0..iters)
        .map(|i| (0..world).map(|q| all[q * iters + i]).fold(0.0, f64::max))
        .collect()
}

/// Host clock shared by the ranks (calibrate's ranks are threads of one
/// process), ms.
fn host_ms() -> f64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
}

impl Worker<'_> {
    /// The case's routing in the buffers every run reads, as `measure`
    /// loads it.
    fn load_case(&mut self, case: &Case) -> Result<(), GpuError> {
        let rt = &case.routing[self.rank];
        let copies = rt.ids.len();
        let t = copies / self.cfg.top_k;
        let n = self.experts();
        self.seen.clear();
        for (kind, bytes) in [
            (BufKind::Ids, copies * 4),
            (BufKind::W, copies * 4),
            (BufKind::Slot, copies * 4),
            (BufKind::Counts, n * 4),
            (BufKind::CountsAll, n * 4 * self.world),
            (
                BufKind::BlockCounts,
                copies.div_ceil(super::phases::ROUTE_BLOCK).max(1) * n * 4,
            ),
            (BufKind::RetPtr, copies * 8),
            (BufKind::BiasPtr, copies * 8),
            (BufKind::Out, t * self.cfg.hidden * 2),
        ] {
            self.dev.arena.get(kind, bytes)?;
        }
        let (ids, w) = (self.ptr(BufKind::Ids)?, self.ptr(BufKind::W)?);
        // SAFETY: sized above.
        unsafe {
            self.dev.upload(ids, &rt.ids)?;
            self.dev.upload(w, &rt.weights)?;
        }
        self.dev.sync()
    }

    /// The overhead phase alone (EP), `warmup` + `iters` times back to
    /// back, each waited for; every rank's ms per timed iteration,
    /// rank-major.
    pub(super) fn time_overhead(
        &mut self,
        case: &Case,
        warmup: usize,
        iters: usize,
    ) -> Result<Vec<f64>, GpuError> {
        self.load_case(case)?;
        let mut mine = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            // every rank agrees on running out of memory (`ensure`)
            if !self.overhead_once(case, Policy::Ep, Gate::Always)? {
                return Err(GpuError::Oom("the overhead measurement's tables".into()));
            }
            self.ev[E_PLANNED].sync()?;
            if i >= warmup {
                mine.push(self.ev[E_PLANNED].ms_since(&self.ev[E_START])?);
            }
        }
        self.dev.sync()?;
        let all = self.gather_f64(&mine)?;
        self.dev.arena.release_except(&PERSISTENT)?;
        Ok(all)
    }

    /// Whole layer runs (EP), `warmup` + `runs`: per timed run this rank's
    /// host start and end (ms on the shared clock) and overhead phase,
    /// gathered rank-major.
    pub(super) fn layer_overheads(
        &mut self,
        case: &Case,
        warmup: usize,
        runs: usize,
    ) -> Result<Vec<f64>, GpuError> {
        self.load_case(case)?;
        let mut mine = Vec::with_capacity(3 * runs);
        for i in 0..warmup + runs {
            let s = host_ms();
            let RunOut::Done(tm) = self.run_once(case, Policy::Ep, Gate::Always)? else {
                return Err(GpuError::Oom(
                    "the layer runs of the overhead record".into(),
                ));
            };
            let e = host_ms();
            if i >= warmup {
                mine.extend([s, e, tm[0]]);
            }
        }
        self.dev.sync()?;
        let all = self.gather_f64(&mine)?;
        self.dev.arena.release_except(&PERSISTENT)?;
        Ok(all)
    }
}

/// `calibrate`'s overhead figure, ms, and its record: the phase alone in
/// steady state (the figure; `in_layer` is what the layer run before it
/// saw) and, on 2+ GPUs, the phase inside whole layer runs at a small and
/// at the calibrated token count, per rank.
pub(super) fn measure(
    w: &mut Worker<'_>,
    reps: usize,
    case: &Case,
    layer: (usize, usize, usize, usize, u64),
    in_layer: f64,
    progress: &dyn Progress,
) -> Result<(f64, OverheadRaw), GpuError> {
    let (d0, i0, n, k, t) = layer;
    let (rank, world) = (w.rank, w.world);
    if rank == 0 {
        progress.status("count exchange + planning alone, back to back");
    }
    let iters = (10 * reps).max(40);
    let all = w.time_overhead(case, 5, iters)?;
    let alone_ms = slowest_per_iteration(&all, world, iters);
    let ms = quantile(&alone_ms, 0.5);
    let mut raw = OverheadRaw {
        tokens: t,
        alone_ms,
        layer: Vec::new(),
    };
    if rank == 0 {
        progress.status(&format!(
            "count exchange + planning: {:.3} ms alone (median of {iters}, slowest rank); \
             {in_layer:.3} ms inside the layer runs above (their critical GPU)",
            ms
        ));
    }
    if world > 1 {
        let runs = reps.max(8);
        for tokens in [4096u64.min(t), t] {
            let c = super::inputs::synthetic_case(
                crate::trace::synthetic::Scenario::Balanced,
                world,
                tokens,
                n as u32,
                k as u32,
                d0 as u32,
                i0 as u32,
            )
            .map_err(|e| GpuError::Input(e.to_string()))?;
            let all = w.layer_overheads(&c, 2, runs)?;
            let l = LayerOverhead::from_gathered(tokens, &all, world, runs);
            if rank == 0 {
                progress.status(&l.summary());
            }
            raw.layer.push(l);
        }
    }
    Ok((ms, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_rank_per_iteration_is_kept() {
        // rank 0: 1, 5, 2; rank 1: 3, 4, 9
        let all = [1.0, 5.0, 2.0, 3.0, 4.0, 9.0];
        assert_eq!(slowest_per_iteration(&all, 2, 3), vec![3.0, 5.0, 9.0]);
    }

    #[test]
    fn layer_runs_are_split_per_run_and_rank_with_lags_from_the_first_rank() {
        // 2 ranks x 2 runs of [start, end, overhead]
        let all = [
            10.0, 20.0, 2.5, 21.0, 31.0, 2.4, // rank 0
            12.0, 22.5, 0.2, 23.0, 30.0, 0.3, // rank 1
        ];
        let l = LayerOverhead::from_gathered(32768, &all, 2, 2);
        assert_eq!(l.overhead_ms, vec![vec![2.5, 0.2], vec![2.4, 0.3]]);
        assert_eq!(l.start_lag_ms, vec![vec![0.0, 2.0], vec![0.0, 2.0]]);
        assert_eq!(l.end_lag_ms, vec![vec![0.0, 2.5], vec![1.0, 0.0]]);
        let s = l.summary();
        assert!(s.contains("2.450 / 0.250"), "{s}");
        assert!(s.contains("starts 2.000 ms"), "{s}");
        assert!(s.contains("ends 1.750 ms"), "{s}");
    }
}
