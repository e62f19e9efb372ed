//! The GPU's power cap in the layer time.
//!
//! A rested H200 runs large GEMMs at its boost clock for the first 20-150
//! ms of full load; then it meets its 700 W cap, lowers its clocks and the
//! same GEMMs take about 1.14-1.18x as long (session 12, calls 1-2). How
//! much of that a layer pays depends on how much of its time the GPU
//! spends in GEMMs: one busy 60% of the time ran at burst speed, one busy
//! 80% or more at the capped speed. So `calibrate` times the GEMM tables in
//! bursts (each sample after a rest) and measures the slowdown apart
//! ([`PowerRaw`]); a layer's GPU then pays it by its duty:
//!
//! - its work `W` is its expert rows' FLOPs at the burst speed of a large
//!   GEMM (the tensor cores' work draws the power; small, memory-bound
//!   GEMMs do little of it);
//! - its duty is `W` over the layer's time;
//! - its GEMMs take `1 + (R - 1) x ramp(duty)` times their burst time,
//!   with `R` the sustained over the burst time and the ramp rising from
//!   0 at `duty_onset` to 1 at `duty_full`, on `W`'s share of its compute.
//!
//! The replay runs a layer again and again, so its GPUs reach that steady
//! state; a model's other layers (attention) between MoE layers change the
//! duty a deployment sees, which this does not know.

use crate::gpu::calibrate::PowerRaw;

/// The power cap's slowdown of a large GEMM by duty, fitted to a
/// [`PowerRaw`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PowerFit {
    /// A large GEMM's speed in a burst, TFLOP/s.
    pub burst_tflops: f64,
    /// Its time under sustained load over its burst time.
    pub sustained_over_burst: f64,
    /// Duty (burst-speed GEMM time over wall time) below which GEMMs keep
    /// their burst speed.
    pub duty_onset: f64,
    /// Duty from which they run at the sustained speed.
    pub duty_full: f64,
    /// The power of the token exchange (NCCL's kernels, the links, the
    /// copies) as a fraction of a large GEMM's: each ms of exchange adds
    /// this many ms of GEMM work to the duty, whether it runs beside the
    /// GEMMs or between them.
    #[serde(default)]
    pub comm_weight: f64,
}

impl PowerFit {
    /// Fit to a measurement: `R` from the burst and sustained times, the
    /// ramp's two ends by least squares over the duty sweep (each point's
    /// duty read as burst time over its measured GEMM time plus interval,
    /// as a layer's is read over its priced time). None when the
    /// measurement is unusable.
    pub fn fit(raw: &PowerRaw) -> Option<PowerFit> {
        let (b, s) = (raw.burst_ms, raw.sustained_ms);
        if !(b > 0.0 && s.is_finite() && raw.m > 0) {
            return None;
        }
        let flops = 2.0 * (raw.m * raw.n * raw.k) as f64;
        let r = (s / b).max(1.0);
        let pts: Vec<(f64, f64)> = raw
            .duty
            .iter()
            .filter(|&&(_, gap, ms)| ms > 0.0 && gap >= 0.0)
            .map(|&(_, gap, ms)| (b / (ms + gap), ms / b))
            .chain(std::iter::once((b / s, r)))
            .collect();
        let mut best = (f64::INFINITY, 0.0, 1.0);
        for i in 0..=100 {
            for j in i + 1..=100 {
                let (lo, hi) = (i as f64 / 100.0, j as f64 / 100.0);
                let f = PowerFit {
                    burst_tflops: 0.0,
                    sustained_over_burst: r,
                    duty_onset: lo,
                    duty_full: hi,
                    comm_weight: 0.0,
                };
                let sse: f64 = pts.iter().map(|&(x, y)| (f.slowdown(x) - y).powi(2)).sum();
                if sse < best.0 {
                    best = (sse, lo, hi);
                }
            }
        }
        Some(PowerFit {
            burst_tflops: flops / b / 1e9,
            sustained_over_burst: r,
            duty_onset: best.1,
            duty_full: best.2,
            comm_weight: 0.0,
        })
    }

    pub fn check(&self) -> Result<(), String> {
        let ok = self.burst_tflops > 0.0
            && self.sustained_over_burst >= 1.0
            && self.sustained_over_burst.is_finite()
            && (0.0..self.duty_full).contains(&self.duty_onset)
            && self.duty_full <= 1.0;
        if ok {
            Ok(())
        } else {
            Err("power: burst_tflops > 0, sustained_over_burst >= 1, 0 <= duty_onset < duty_full <= 1".into())
        }
    }

    /// A large GEMM's time over its burst time at `duty`.
    pub fn slowdown(&self, duty: f64) -> f64 {
        let ramp = ((duty - self.duty_onset) / (self.duty_full - self.duty_onset)).clamp(0.0, 1.0);
        1.0 + (self.sustained_over_burst - 1.0) * ramp
    }

    /// Burst-speed ms of `rows` expert rows of a (hidden x intermediate)
    /// expert: gate_up (2I) and down (I), 6 D I FLOPs a row.
    pub fn work_ms(&self, rows: f64, hidden: u64, intermediate: u64) -> f64 {
        rows * 6.0 * (hidden * intermediate) as f64 / (self.burst_tflops * 1e9)
    }

    /// The ms a GPU with `work_ms` of burst-speed work and `comm_ms` of
    /// token exchange adds to its compute in a layer of `layer_ms`.
    pub fn extra_ms(&self, work_ms: f64, comm_ms: f64, layer_ms: f64) -> f64 {
        if work_ms <= 0.0 || layer_ms <= 0.0 {
            return 0.0;
        }
        let duty = (work_ms + self.comm_weight * comm_ms) / layer_ms;
        work_ms * (self.slowdown(duty) - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Session 12 call 3's measurement (gpt-oss gate_up, 8,192 rows, H200).
    fn raw() -> PowerRaw {
        PowerRaw {
            m: 8192,
            n: 5760,
            k: 2880,
            burst_ms: 0.3468,
            sustained_ms: 0.3939,
            duty: vec![
                (0.5, 0.3468, 0.3391),
                (0.6, 0.2312, 0.3401),
                (0.7, 0.1486, 0.3527),
                (0.8, 0.0867, 0.3722),
                (0.9, 0.0385, 0.3928),
            ],
        }
    }

    #[test]
    fn fit_reads_the_cap_and_a_ramp_between_the_measured_duties() {
        let f = PowerFit::fit(&raw()).unwrap();
        f.check().unwrap();
        assert!((f.sustained_over_burst - 0.3939 / 0.3468).abs() < 1e-9);
        assert!((f.burst_tflops - 2.0 * 8192.0 * 5760.0 * 2880.0 / 0.3468 / 1e9).abs() < 1e-6);
        // burst at half duty, capped when busy nearly all the time
        assert!(f.duty_onset >= 0.5 && f.duty_onset < 0.72, "{f:?}");
        assert!(f.duty_full > 0.72 && f.duty_full <= 0.9, "{f:?}");
        assert_eq!(f.slowdown(0.3), 1.0);
        assert!((f.slowdown(1.0) - f.sustained_over_burst).abs() < 1e-12);
        // monotone between
        let s: Vec<f64> = (0..=20).map(|i| f.slowdown(i as f64 / 20.0)).collect();
        assert!(s.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn a_gpu_that_rests_pays_nothing_and_a_busy_one_the_cap() {
        let f = PowerFit::fit(&raw()).unwrap();
        assert_eq!(f.extra_ms(1.0, 0.0, 4.0), 0.0);
        let busy = f.extra_ms(1.0, 0.0, 1.0);
        assert!((busy - (f.sustained_over_burst - 1.0)).abs() < 1e-12);
        assert_eq!(f.extra_ms(0.0, 1.0, 1.0), 0.0);
        // the work of 8,192 rows of gate_up and down is 1.5x gate_up's
        let w = f.work_ms(8192.0, 2880, 2880);
        assert!((w - 1.5 * 0.3468).abs() < 1e-9);
    }

    #[test]
    fn unusable_measurements_fit_nothing() {
        let mut r = raw();
        r.burst_ms = 0.0;
        assert!(PowerFit::fit(&r).is_none());
        let bad = PowerFit {
            burst_tflops: 800.0,
            sustained_over_burst: 1.1,
            duty_onset: 0.8,
            duty_full: 0.7,
            comm_weight: 0.0,
        };
        assert!(bad.check().is_err());
    }
}
