//! The max/mean ratios of a setup's layer-steps in bounded memory, for the
//! imbalance CDF, its median and the summary's mean and LLEP on-share.
//! Every ratio is kept exactly up to [`EXACT_CAP`] layer-steps (so small
//! reports are what they always were); past that the ratios go to a
//! log-spaced histogram whose bins are [`BIN_REL`] (0.1%) wide relative to
//! their value, and only quantiles (the median, the CDF's steps) become
//! binned. The count, the sum (so the mean), the minimum, the maximum, and
//! the share at or above every gate the report can show ([`RatioDist::track`])
//! stay exact whatever the length.

use std::collections::BTreeMap;

/// Layer-steps of one setup kept exactly (8 bytes each, 512 KiB at the
/// cap); beyond, the histogram.
pub const EXACT_CAP: usize = 65_536;

/// Relative width of a histogram bin: bin `i` holds the ratios in
/// `[(1 + BIN_REL)^i, (1 + BIN_REL)^(i + 1))`, about 2,100 bins from 1 to
/// 8 (the most a ratio reaches on 8 GPUs) and 5,500 to 256.
pub const BIN_REL: f64 = 1e-3;

/// Bins for what has no logarithm (zero, negative, not a number, infinite).
const BIN_LOW: i32 = i32::MIN;
const BIN_HIGH: i32 = i32::MAX;

fn bin_of(r: f64) -> i32 {
    if r.is_nan() || r == f64::INFINITY {
        return BIN_HIGH;
    }
    if r <= 0.0 {
        return BIN_LOW;
    }
    let i = (r.ln() / BIN_REL.ln_1p()).floor();
    // Within (1 + BIN_REL)^(+-2e9), i.e. any finite positive f64.
    i.clamp(f64::from(i32::MIN + 1), f64::from(i32::MAX - 1)) as i32
}

/// The lower edge of bin `i`.
fn bin_low(i: i32) -> f64 {
    (f64::from(i) * BIN_REL.ln_1p()).exp()
}

/// Imbalance ratios of distinct layer-steps (the caller counts each once).
#[derive(Debug, Clone)]
pub struct RatioDist {
    n: usize,
    sum: f64,
    min: f64,
    max: f64,
    /// Every ratio, while there are at most [`EXACT_CAP`]; sorted by
    /// [`Self::finish`].
    exact: Option<Vec<f64>>,
    /// Count per bin once past the cap.
    bins: BTreeMap<i32, u64>,
    /// (gate, ratios at or above it), for the gates the report may show.
    at: Vec<(f64, usize)>,
    sorted: bool,
}

/// The same ratios, whatever order they came in: everything but the
/// running sum, whose last bits depend on the order.
impl PartialEq for RatioDist {
    fn eq(&self, o: &Self) -> bool {
        let mut at = self.at.clone();
        let mut oat = o.at.clone();
        at.sort_by(|a, b| a.0.total_cmp(&b.0));
        oat.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.n == o.n
            && self.min.to_bits() == o.min.to_bits()
            && self.max.to_bits() == o.max.to_bits()
            && self.exact == o.exact
            && self.bins == o.bins
            && at == oat
    }
}

impl Default for RatioDist {
    fn default() -> Self {
        Self {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            exact: Some(vec![]),
            bins: BTreeMap::new(),
            at: vec![],
            sorted: true,
        }
    }
}

impl RatioDist {
    /// Count the ratios at or above each of `gates` exactly from here on
    /// (call before the first [`Self::add`]).
    pub fn track(&mut self, gates: &[f64]) {
        for &g in gates {
            if !self.at.iter().any(|a| a.0.to_bits() == g.to_bits()) {
                self.at.push((g, 0));
            }
        }
    }

    pub fn add(&mut self, r: f64) {
        self.n += 1;
        self.sum += r;
        self.min = self.min.min(r);
        self.max = self.max.max(r);
        for a in &mut self.at {
            a.1 += (r >= a.0) as usize;
        }
        match &mut self.exact {
            Some(v) if v.len() < EXACT_CAP => {
                v.push(r);
                self.sorted = false;
            }
            Some(v) => {
                for x in std::mem::take(v) {
                    *self.bins.entry(bin_of(x)).or_default() += 1;
                }
                self.exact = None;
                *self.bins.entry(bin_of(r)).or_default() += 1;
            }
            None => *self.bins.entry(bin_of(r)).or_default() += 1,
        }
    }

    /// Sort the exact ratios (after the last [`Self::add`]).
    pub fn finish(&mut self) {
        if let Some(v) = &mut self.exact {
            if !self.sorted {
                v.sort_by(f64::total_cmp);
            }
        }
        self.sorted = true;
    }

    /// Layer-steps counted.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Every ratio, sorted, while at most [`EXACT_CAP`] were added; `None`
    /// once the histogram holds them.
    pub fn exact(&self) -> Option<&[f64]> {
        debug_assert!(self.sorted, "RatioDist::finish not called");
        self.exact.as_deref()
    }

    /// The least ratio (exact).
    pub fn min(&self) -> f64 {
        match self.exact() {
            Some(v) if !v.is_empty() => v[0],
            _ => self.min,
        }
    }

    /// The greatest ratio (exact).
    pub fn max(&self) -> f64 {
        match self.exact() {
            Some(v) if !v.is_empty() => v[v.len() - 1],
            _ => self.max,
        }
    }

    /// Mean ratio (exact: a running sum); NaN when empty.
    pub fn mean(&self) -> f64 {
        match self.exact() {
            // summed in sorted order, as the report always did
            Some(v) => v.iter().sum::<f64>() / v.len().max(1) as f64,
            None => self.sum / self.n as f64,
        }
    }

    /// The ratio of rank `k` (0-based, ascending): exact while every ratio
    /// is kept, else the middle of its bin clamped to [min, max] (within
    /// one bin, [`BIN_REL`] relative, of the exact value).
    pub fn rank(&self, k: usize) -> f64 {
        if let Some(v) = self.exact() {
            return v[k.min(v.len().saturating_sub(1))];
        }
        let mut below = 0u64;
        for (&i, &c) in &self.bins {
            below += c;
            if below > k as u64 {
                return self.mid(i);
            }
        }
        self.max
    }

    /// The median as the report prints it (rank n/2).
    pub fn median(&self) -> f64 {
        self.rank(self.n / 2)
    }

    /// The representative value of bin `i`: its geometric middle within
    /// the range seen.
    fn mid(&self, i: i32) -> f64 {
        let v = match i {
            BIN_LOW => self.min,
            BIN_HIGH => self.max,
            _ => (bin_low(i) * bin_low(i + 1)).sqrt(),
        };
        v.clamp(self.min, self.max)
    }

    /// Share of the layer-steps whose ratio is at least `gate` (LLEP
    /// switches on there): exact while every ratio is kept or for a
    /// tracked gate, else counted by whole bins from the gate's own.
    pub fn on_fraction(&self, gate: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let on = if let Some(v) = self.exact() {
            v.len() - v.partition_point(|&r| r < gate)
        } else if let Some(a) = self.at.iter().find(|a| a.0.to_bits() == gate.to_bits()) {
            a.1
        } else {
            self.bins
                .range(bin_of(gate)..)
                .map(|(_, &c)| c)
                .sum::<u64>() as usize
        };
        on as f64 / self.n as f64
    }

    /// The CDF as steps: (ratio, share of layer-steps at or below it) at
    /// every distinct ratio, or every non-empty bin's middle.
    pub fn steps(&self) -> Vec<(f64, f64)> {
        let n = self.n as f64;
        if let Some(v) = self.exact() {
            return v
                .iter()
                .enumerate()
                .map(|(j, &r)| (r, (j + 1) as f64 / n))
                .collect();
        }
        let mut below = 0u64;
        self.bins
            .iter()
            .map(|(&i, &c)| {
                below += c;
                (self.mid(i), below as f64 / n)
            })
            .collect()
    }

    /// Whether the quantiles are binned (more than [`EXACT_CAP`] ratios).
    pub fn binned(&self) -> bool {
        self.exact.is_none()
    }

    /// Bins in use (for tests and the page's note).
    pub fn bin_count(&self) -> usize {
        self.bins.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for the ratios.
    fn ratios(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                // mostly near 1, a long tail to about 8, some exact 1.0
                if u < 0.05 {
                    1.0
                } else {
                    1.0 + 7.0 * u.powi(3)
                }
            })
            .collect()
    }

    fn dist(v: &[f64], gates: &[f64]) -> RatioDist {
        let mut d = RatioDist::default();
        d.track(gates);
        v.iter().for_each(|&r| d.add(r));
        d.finish();
        d
    }

    #[test]
    fn exact_below_the_cap() {
        let v = ratios(1000, 7);
        let d = dist(&v, &[]);
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        assert_eq!(d.exact(), Some(&s[..]));
        assert!(!d.binned());
        assert_eq!(d.median(), s[500]);
        assert_eq!(d.mean(), s.iter().sum::<f64>() / 1000.0);
        let on = s.iter().filter(|&&r| r >= 1.3).count();
        assert_eq!(d.on_fraction(1.3), on as f64 / 1000.0);
    }

    #[test]
    fn histogram_cdf_is_within_one_bin_of_the_sorted_cdf() {
        let n = EXACT_CAP * 3 + 17;
        let v = ratios(n, 99);
        let gates = [1.0, 1.3, 2.25];
        let d = dist(&v, &gates);
        assert!(d.binned());
        assert_eq!(d.len(), n);
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        assert_eq!(d.min(), s[0]);
        assert_eq!(d.max(), s[n - 1]);
        // bins grow by 0.1%: ~1,950 from 1 to 7
        assert!(d.bin_count() < 2100, "{}", d.bin_count());
        let exact_sum: f64 = v.iter().sum();
        assert!((d.mean() - exact_sum / n as f64).abs() < 1e-12);
        // tracked gates exactly, others within the gate's bin
        for g in gates {
            let on = s.len() - s.partition_point(|&r| r < g);
            assert_eq!(d.on_fraction(g), on as f64 / n as f64, "gate {g}");
        }
        // one bin, and rounding in ln/exp at its edges
        let w = (1.0 + BIN_REL) * (1.0 + 1e-12);
        for g in [1.1, 1.7777, 4.0] {
            let hi = s.len() - s.partition_point(|&r| r < g / w);
            let lo = s.len() - s.partition_point(|&r| r < g * w);
            let f = d.on_fraction(g) * n as f64;
            assert!(f >= lo as f64 && f <= hi as f64, "gate {g}");
        }
        // every rank within one bin of the exact ratio of that rank
        for k in (0..n).step_by(997).chain([0, n / 2, n - 1]) {
            let (x, e) = (d.rank(k), s[k]);
            assert!(x / e <= w && e / x <= w, "rank {k}: {x} against {e}");
        }
        // the CDF's steps: at each step's ratio x the share below is that
        // of the sorted ratios somewhere within one bin of x
        let steps = d.steps();
        assert_eq!(steps.last().unwrap().1, 1.0);
        for &(x, f) in &steps {
            let k = (f * n as f64).round() as usize;
            let lo = s.partition_point(|&r| r < x / w);
            let hi = s.partition_point(|&r| r <= x * w);
            assert!(k >= lo && k <= hi, "at {x}: {k} not in {lo}..={hi}");
        }
    }

    #[test]
    fn odd_ratios_keep_their_order() {
        let mut d = RatioDist::default();
        for _ in 0..EXACT_CAP {
            d.add(1.5);
        }
        d.add(0.0);
        d.add(f64::INFINITY);
        d.finish();
        assert!(d.binned());
        assert_eq!(d.rank(0), 0.0);
        assert_eq!(d.rank(d.len() - 1), f64::INFINITY);
        assert!((d.median() / 1.5 - 1.0).abs() <= BIN_REL);
    }
}
