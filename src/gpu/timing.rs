//! Measuring the layer: per case and setting, warm-ups then timed runs and
//! the dense check; each run's phase times read from its events; rank 0
//! gathers every rank's numbers and builds the result row (per run, the
//! phases of the GPU on the critical path; medians over runs).

use super::config::Case;
use super::runtime::BufKind;
use super::worker::{
    RunOut, Times, Worker, E_BE, E_BS, E_DISPATCHED, E_END, E_PLANNED, E_START, NT, PERSISTENT,
};
use super::{Gate, GpuError};
use crate::plan::{Plan, Policy};
use crate::results::{ResultRow, Source};

impl Worker<'_> {
    /// Phase times of the run just queued, once it finished.
    pub(super) fn run_times(&mut self, has_x: bool, has_g: bool) -> Result<Times, GpuError> {
        self.ev[E_END].sync()?;
        let mut xfer_ms = 0.0;
        if has_x {
            self.xev[1].sync()?;
            xfer_ms = self.xev[1].ms_since(&self.xev[0])?;
        }
        self.driver_peak = self.driver_peak.max(self.dev.driver_used());
        let e = &self.ev;
        let mut out = [0.0; NT];
        if self.pipe_chunks > 1 {
            // busy times, overlapping each other: phase sums exceed the total
            let [disp, compute, comb] = self.pipeline_busy(self.pipe_chunks)?;
            out[..6].copy_from_slice(&[
                e[E_PLANNED].ms_since(&e[E_START])?,
                disp,
                xfer_ms,
                compute,
                comb,
                e[E_END].ms_since(&e[E_START])?,
            ]);
            out[NT - 1] = comb;
        } else {
            let compute = e[E_BE].ms_since(&e[E_BS])?;
            out[..6].copy_from_slice(&[
                e[E_PLANNED].ms_since(&e[E_START])?,
                e[E_DISPATCHED].ms_since(&e[E_PLANNED])?,
                xfer_ms,
                compute,
                e[E_END].ms_since(&e[E_BE])?,
                e[E_END].ms_since(&e[E_START])?,
            ]);
            out[NT - 1] = f64::NAN;
        }
        if self.cfg.train {
            out[6..NT - 1].copy_from_slice(&self.bwd_times(has_g)?);
            self.driver_peak = self.driver_peak.max(self.dev.driver_used());
        }
        Ok(out)
    }

    /// Run one case under one setting; rank 0 gets the row.
    pub(super) fn measure(
        &mut self,
        case: &Case,
        policy: Policy,
        gate: Gate,
    ) -> Result<Option<ResultRow>, GpuError> {
        Ok(self.measure_all(case, &[(policy, gate)])?.pop().flatten())
    }

    /// Rank 0's host checkpoints of the overhead phase, median per
    /// setting over this case's runs (warm-ups included), then cleared.
    fn print_host_marks(&mut self, case: &Case, settings: &[(Policy, Gate)]) {
        let marks = std::mem::take(&mut self.host_marks);
        // the CPUs this worker thread may run on (NCCL pins the threads it
        // starts; a worker sharing a core with them waits its turn)
        let cpus = std::fs::read_to_string("/proc/thread-self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Cpus_allowed_list"))
                    .map(|l| l.to_string())
            })
            .unwrap_or_default();
        eprintln!("host: rank 0 worker thread {cpus}");
        for &(policy, _) in settings {
            let mine: Vec<_> = marks
                .iter()
                .filter(|m| m.0 == policy)
                .map(|m| m.1)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let med = |i: usize| quantile(&mine.iter().map(|m| m[i]).collect::<Vec<_>>(), 0.5);
            eprintln!(
                "host us {} {} {}: counts {:.1} planned {:.1} decided {:.1} laid out {:.1} tables {:.1} ({} runs)",
                case.base.scenario,
                case.base.tokens_per_rank,
                policy,
                med(0),
                med(1),
                med(2),
                med(3),
                med(4),
                mine.len()
            );
        }
    }

    /// Run one case under several settings; rank 0 gets a row per setting.
    ///
    /// Each setting first runs its warm-ups alone, from released buffers,
    /// which gives its memory peaks, its dense check and its weight peers.
    /// With more than one setting (and `interleave`), the timed runs then
    /// take turns after one untimed round that grows the buffers they
    /// share, one run of each setting per round in an order shuffled each
    /// round ([`TurnOrder`]), so that drift of the
    /// clocks or the links over the seconds a case takes falls on every
    /// setting alike and their ratios compare like with like. A setting
    /// that runs out of memory only beside the others' buffers sends all of
    /// them back to being timed one after the other.
    pub(super) fn measure_all(
        &mut self,
        case: &Case,
        settings: &[(Policy, Gate)],
    ) -> Result<Vec<Option<ResultRow>>, GpuError> {
        let runs = self.cfg.runs;
        let turns = self.cfg.interleave && settings.len() > 1 && !self.cfg.train;
        let mut times: Vec<Vec<Times>> = vec![Vec::new(); settings.len()];
        // timed runs' compute phases that launched no kept graph
        let mut misses = vec![0usize; settings.len()];
        let mut extras = Vec::with_capacity(settings.len());
        let mut plans = Vec::with_capacity(settings.len());
        for (si, &(policy, gate)) in settings.iter().enumerate() {
            self.begin_case(case)?;
            let timed = if turns { 0 } else { runs };
            let (tm, oom) =
                self.runs_of(case, policy, gate, self.cfg.warmup, timed, &mut misses[si])?;
            times[si] = tm;
            extras.push(self.after_runs(case, oom)?);
            // the plan the warm-ups ran (the same counts plan the same)
            plans.push(self.plan.clone());
            self.dev.arena.release_except(&PERSISTENT)?;
        }
        if turns && !self.take_turns(case, settings, &extras, &mut times, &mut misses)? {
            for (si, &(policy, gate)) in settings.iter().enumerate() {
                self.begin_case(case)?;
                misses[si] = 0;
                // with graphs, one untimed run captures them for these buffers
                let warm = usize::from(self.cfg.cuda_graphs);
                times[si] = self
                    .runs_of(case, policy, gate, warm, runs, &mut misses[si])?
                    .0;
                self.dev.arena.release_except(&PERSISTENT)?;
            }
        }
        if self.host_timing && self.rank == 0 {
            self.print_host_marks(case, settings);
        }
        let mut rows = Vec::with_capacity(settings.len());
        for (si, &(policy, gate)) in settings.iter().enumerate() {
            let mut mine: Vec<f64> = Vec::with_capacity(runs * NT + EXTRA);
            for i in 0..runs {
                mine.extend_from_slice(times[si].get(i).unwrap_or(&[f64::NAN; NT]));
            }
            mine.extend_from_slice(&extras[si]);
            let all = self.gather_f64(&mine)?;
            let missed: f64 = self.gather_f64(&[misses[si] as f64])?.iter().sum();
            rows.push((self.rank == 0).then(|| {
                let mut r = self.row(case, policy, gate, &plans[si], &all, runs);
                r.cuda_graphs = self.cfg.cuda_graphs && missed == 0.0;
                if self.cfg.cuda_graphs && missed > 0.0 {
                    eprintln!(
                        "warning: {} {} {}: {missed} compute phases of timed runs were not launched as graphs; the row says cuda_graphs = false",
                        case.base.scenario, policy, case.base.tokens_per_rank
                    );
                }
                if self.cfg.train {
                    self.train_row(&mut r, &all, runs);
                }
                r
            }));
        }
        Ok(rows)
    }

    /// The timed runs in turns (see [`Worker::measure_all`]); false, with
    /// nothing kept, when a rank ran out of memory beside the other
    /// settings' buffers.
    fn take_turns(
        &mut self,
        case: &Case,
        settings: &[(Policy, Gate)],
        extras: &[[f64; EXTRA]],
        times: &mut [Vec<Times>],
        misses: &mut [usize],
    ) -> Result<bool, GpuError> {
        self.begin_case(case)?;
        let mut ok = true;
        // round 0 is untimed: it grows the buffers every setting needs, so
        // no timed run allocates; with graphs, so is round 1, which
        // captures them over those buffers (round 0's growth for a later
        // setting moves an earlier one's)
        let untimed = 1 + usize::from(self.cfg.cuda_graphs);
        let mut order = TurnOrder::new(settings.len());
        'rounds: for round in 0..self.cfg.runs + untimed {
            for &si in order.next_round() {
                let (policy, gate) = settings[si];
                if extras[si][X_OOM] != 0.0 {
                    continue; // out of memory alone: no timed runs
                }
                match self.run_counting_misses(case, policy, gate)? {
                    (RunOut::Oom, _) => {
                        ok = false;
                        break 'rounds;
                    }
                    (RunOut::Done(tm), missed) if round >= untimed => {
                        times[si].push(tm);
                        misses[si] += missed;
                    }
                    (RunOut::Done(_), _) => {}
                }
            }
        }
        self.dev.sync()?;
        self.dev.arena.release_except(&PERSISTENT)?;
        if !ok {
            times.iter_mut().for_each(Vec::clear);
            misses.iter_mut().for_each(|m| *m = 0);
        }
        Ok(ok)
    }

    /// Allocate and fill a case's routing buffers, from a fresh memory peak.
    fn begin_case(&mut self, case: &Case) -> Result<(), GpuError> {
        let k = self.cfg.top_k;
        let rt = &case.routing[self.rank];
        let copies = rt.ids.len();
        let t = copies / k;
        // the last case's graphs point into buffers about to be reused
        self.dev.sync()?;
        self.graphs.borrow_mut().clear();
        self.dev.arena.reset_peak();
        self.driver_peak = self.dev.driver_used();
        self.seen.clear();
        let n = self.experts();
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
        if self.cfg.train {
            self.bwd_case_setup(copies, t)?;
        }
        let (ids, w) = (self.ptr(BufKind::Ids)?, self.ptr(BufKind::W)?);
        // SAFETY: sized above.
        unsafe {
            self.dev.upload(ids, &rt.ids)?;
            self.dev.upload(w, &rt.weights)?;
        }
        self.dev.sync()
    }

    /// `warmup` untimed then `timed` timed runs of one setting; the times,
    /// and whether a rank ran out of memory (then the runs stop).
    fn runs_of(
        &mut self,
        case: &Case,
        policy: Policy,
        gate: Gate,
        warmup: usize,
        timed: usize,
        misses: &mut usize,
    ) -> Result<(Vec<Times>, bool), GpuError> {
        let mut times = Vec::with_capacity(timed);
        for i in 0..warmup + timed {
            match self.run_counting_misses(case, policy, gate)? {
                (RunOut::Oom, _) => return Ok((times, true)),
                (RunOut::Done(tm), missed) if i >= warmup => {
                    times.push(tm);
                    *misses += missed;
                }
                (RunOut::Done(_), _) => {}
            }
        }
        Ok((times, false))
    }

    /// One run, and how many of its compute phases launched no kept graph
    /// (`--cuda-graphs on`; 0 otherwise).
    fn run_counting_misses(
        &mut self,
        case: &Case,
        policy: Policy,
        gate: Gate,
    ) -> Result<(RunOut, usize), GpuError> {
        let before = self.graphs.borrow().misses;
        let out = self.run_once(case, policy, gate)?;
        Ok((out, self.graphs.borrow().misses - before))
    }

    /// After a setting's runs: its memory peaks, dense checks, OOM flag and
    /// weight peers (this rank's [`EXTRA`] numbers).
    fn after_runs(&mut self, case: &Case, oom: bool) -> Result<[f64; EXTRA], GpuError> {
        // the training step's peak is the run's, not the check's scratch
        let peak = self.dev.arena.peak;
        let (num, den) = if oom { (0.0, 0.0) } else { self.check(case)? };
        let bc = if oom || !self.cfg.train {
            Default::default()
        } else {
            self.check_bwd(case)?
        };
        self.dev.sync()?;
        let arena_peak = if self.cfg.train {
            peak
        } else {
            self.dev.arena.peak
        };
        Ok([
            arena_peak as f64,
            self.driver_peak as f64,
            num,
            den,
            if oom { 1.0 } else { 0.0 },
            bc.dx.0,
            bc.dx.1,
            bc.dw.0,
            bc.dw.1,
            bc.dweights,
            self.bwd.saved as f64,
            bc.experts as f64,
            bc.spilled as f64,
            self.wpeers_in.iter().filter(|&&c| c).count() as f64,
            self.wpeers_out.iter().filter(|&&c| c).count() as f64,
        ])
    }

    fn row(
        &self,
        case: &Case,
        policy: Policy,
        gate: Gate,
        plan: &Plan,
        all: &[f64],
        runs: usize,
    ) -> ResultRow {
        let p = self.world;
        let stride = runs * NT + EXTRA;
        let per = |q: usize| &all[q * stride..(q + 1) * stride];
        let oom = (0..p).any(|q| per(q)[runs * NT + X_OOM] != 0.0);
        // per run, the phases of the GPU that finished last (they lie on
        // the layer's critical path; the weight transfer, overlapped, is the
        // max over GPUs); then the median over runs
        let piped = self.pipe_chunks > 1;
        let mut phase = vec![Vec::new(); 7];
        for i in 0..runs {
            // the GPU whose compute ends last (all GPUs end the layer
            // together, waiting on each other in the combine); pipelined,
            // the one with the most compute (its dispatch overlaps)
            let busy = |q: usize| {
                per(q)[i * NT] + per(q)[i * NT + 3] + if piped { 0.0 } else { per(q)[i * NT + 1] }
            };
            let crit = (0..p)
                .max_by(|&a, &b| busy(a).total_cmp(&busy(b)))
                .unwrap_or(0);
            for (j, ph) in phase.iter_mut().enumerate() {
                ph.push(match j {
                    2 => (0..p).map(|q| per(q)[i * NT + 2]).fold(0.0, f64::max),
                    // the layer ends when the last GPU ends
                    5 => (0..p).map(|q| per(q)[i * NT + 5]).fold(0.0, f64::max),
                    // pipelined: the combine's busy time
                    4 if piped => per(crit)[i * NT + NT - 1],
                    // what remains after its compute, waiting included
                    4 => (0..p).map(|q| per(q)[i * NT + 5]).fold(0.0, f64::max) - busy(crit),
                    // exposed communication: the layer less the critical
                    // GPU's planning and compute (for the sequential
                    // schedule, dispatch + combine)
                    6 => {
                        let end = (0..p).map(|q| per(q)[i * NT + 5]).fold(0.0, f64::max);
                        end - per(crit)[i * NT] - per(crit)[i * NT + 3]
                    }
                    _ => per(crit)[i * NT + j],
                });
            }
        }
        let med: Vec<f64> = phase.iter().map(|v| quantile(v, 0.5)).collect();
        let (num, den): (f64, f64) = (0..p)
            .map(|q| (per(q)[runs * NT + 2], per(q)[runs * NT + 3]))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let mut r = case.base.clone();
        r.policy = policy;
        r.gate = match policy {
            Policy::Llep => gate,
            Policy::LlepAuto => Gate::Auto,
            _ => Gate::Never,
        };
        r.alpha = self.cfg.alpha;
        r.min_gemm = self.cfg.min_gemm;
        r.gpus = p as u32;
        r.source = Source::Measured;
        r.device = self.dev.name.clone();
        r.profile = String::new();
        r.driver = driver_version();
        r.fill_plan_stats(plan);
        r.exchange = self.cfg.exchange.as_str().into();
        r.gemm = self.cfg.gemm.as_str().into();
        r.compute_streams = self.cfg.compute_streams as u64;
        r.overlap = piped;
        r.overlap_chunks = if piped { self.pipe_chunks as u32 } else { 0 };
        let (d, i) = (self.cfg.hidden as u64, self.cfg.inter as u64);
        // bf16 weights
        r.transfer_bytes = plan.transfers.len() as u64 * crate::trace::meta::expert_bytes(d, i, 2);
        r.runs = runs as u32;
        r.oom = oom;
        r.peak_mem_per_gpu = (0..p).map(|q| per(q)[runs * NT] as u64).collect();
        r.driver_mem_per_gpu = (0..p).map(|q| per(q)[runs * NT + 1] as u64).collect();
        r.peak_mem_max_bytes = r.peak_mem_per_gpu.iter().copied().max().unwrap_or(0);
        r.weight_peers_in_per_gpu = (0..p)
            .map(|q| per(q)[runs * NT + X_WPEERS] as u64)
            .collect();
        r.weight_peers_out_per_gpu = (0..p)
            .map(|q| per(q)[runs * NT + X_WPEERS + 1] as u64)
            .collect();
        if oom {
            let nan = f64::NAN;
            (r.t_overhead_ms, r.t_dispatch_ms, r.t_transfer_ms) = (nan, nan, nan);
            (r.t_compute_ms, r.t_combine_ms, r.t_total_ms) = (nan, nan, nan);
            r.rel_error = None;
        } else {
            r.t_overhead_ms = med[0];
            r.t_dispatch_ms = med[1];
            r.t_transfer_ms = med[2];
            r.t_compute_ms = med[3];
            r.t_combine_ms = med[4];
            r.t_total_ms = med[5];
            r.t_exposed_comm_ms = Some(med[6]);
            r.t_total_p10_ms = Some(quantile(&phase[5], 0.1));
            r.t_total_p90_ms = Some(quantile(&phase[5], 0.9));
            r.rel_error = (den > 0.0).then(|| (num / den).sqrt());
        }
        r
    }
}

/// Numbers per rank after the runs' times: arena peak, driver peak, the
/// forward check's sums, OOM, then the training step's: dX and router-grad
/// check sums, weight-grad max error, saved bytes, experts checked, spilled.
/// Last, the weight communicator's peers connected in and out so far.
pub(super) const EXTRA: usize = 15;
/// Where the OOM flag and the weight peers stand among the [`EXTRA`].
const X_OOM: usize = 4;
const X_WPEERS: usize = 13;

/// Linear-interpolated quantile (NaN-free input expected).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// NVIDIA driver version (from /proc/driver/nvidia/version, when readable)
/// and the CUDA version the driver supports, e.g. "580.159.04 (CUDA 13.0)".
pub fn driver_version() -> String {
    let mut v = 0i32;
    // SAFETY: writes one int.
    let ok = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    let cuda = if ok == cudarc::driver::sys::cudaError_enum::CUDA_SUCCESS {
        format!("CUDA {}.{}", v / 1000, (v % 1000) / 10)
    } else {
        String::new()
    };
    let kmod = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|t| kernel_module_version(&t));
    match kmod {
        Some(k) if !cuda.is_empty() => format!("{k} ({cuda})"),
        Some(k) => k,
        None => cuda,
    }
}

/// The version in "NVRM version: NVIDIA UNIX ... Kernel Module  580.159.04  ...".
fn kernel_module_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains("Kernel Module"))?;
    let rest = line.split("Kernel Module").nth(1)?;
    rest.split_whitespace()
        .find(|w| w.contains('.') && w.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
}

/// The order settings take their turns in, round after round: shuffled
/// anew each round, from a fixed seed (every rank runs the same order, as
/// their collectives must match). In a fixed order each setting always
/// follows the same other one and inherits whatever that run leaves
/// behind (a llep-auto run always came right after an LLEP run that may
/// have moved weights); shuffled, every setting follows every other alike.
pub(super) struct TurnOrder {
    order: Vec<usize>,
    rng: crate::trace::tokens::SplitMix64,
}

impl TurnOrder {
    pub(super) fn new(settings: usize) -> TurnOrder {
        TurnOrder {
            order: (0..settings).collect(),
            rng: crate::trace::tokens::SplitMix64::new(0x007e_450f_5e77_1265),
        }
    }

    /// The next round's order (a permutation of the settings).
    pub(super) fn next_round(&mut self) -> &[usize] {
        for i in (1..self.order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            self.order.swap(i, j);
        }
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_permutations_the_same_on_every_rank_and_vary_who_goes_before_whom() {
        let (n, rounds) = (3, 12);
        let mut a = TurnOrder::new(n);
        let mut b = TurnOrder::new(n);
        let mut seq = Vec::new();
        for _ in 0..rounds {
            let ra = a.next_round().to_vec();
            assert_eq!(ra, b.next_round(), "every rank must run the same order");
            let mut sorted = ra.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            seq.extend(ra);
        }
        // each setting follows each other one at least twice: none is
        // always timed right after the same other setting
        let mut after = vec![vec![0; n]; n];
        for w in seq.windows(2) {
            after[w[1]][w[0]] += 1;
        }
        for (s, row) in after.iter().enumerate() {
            for (prev, &c) in row.iter().enumerate() {
                if prev != s {
                    assert!(c >= 2, "setting {s} follows {prev} {c} times: {after:?}");
                }
            }
        }
    }

    #[test]
    fn driver_version_is_read_from_the_kernel_module_line() {
        let t = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22)\nGCC version:  gcc 12\n";
        assert_eq!(kernel_module_version(t).as_deref(), Some("580.159.04"));
        let t = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Sun Jan  1\n";
        assert_eq!(kernel_module_version(t).as_deref(), Some("580.159.04"));
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [3.0, 1.0, 2.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
    }
}
