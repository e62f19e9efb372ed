//! Routing functions: router logits of one token -> top-k expert ids and
//! weights, for every logits source.
//!
//! Conventions, shared by all functions here:
//! - the k chosen experts come in slot order of decreasing selection score
//!   (as `torch.topk(sorted=True)` returns them);
//! - ties are broken by the lower expert id (it wins the earlier slot and,
//!   at the k-th place, the place itself). PyTorch does not promise an order
//!   for ties; this rule makes captures reproducible;
//! - selection for softmax-then-top-k is done on the logits: softmax is
//!   strictly increasing, so the chosen set is the same (up to exp rounding
//!   that makes two distinct logits give equal f32 probabilities, which the
//!   model's own top-k would then break arbitrarily);
//! - arithmetic is f32, as the reference models do it
//!   (`softmax(..., dtype=torch.float)`).

use crate::trace::RoutingFn;

/// Reusable per-row state so the hot loop allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct Router {
    pub routing: Option<RoutingFn>,
    pub top_k: usize,
    /// Per-expert correction bias (DeepSeek-V3 `e_score_correction_bias`).
    pub bias: Vec<f32>,
    scratch: Vec<f32>,
    group_scores: Vec<(f32, usize)>,
    cand_v: Vec<f32>,
    cand_i: Vec<u16>,
}

impl Router {
    pub fn new(routing: RoutingFn, top_k: usize) -> Self {
        Self {
            routing: Some(routing),
            top_k,
            ..Default::default()
        }
    }

    /// Route one token. `ids` and `weights` hold `top_k` slots. The caller
    /// has checked that every logit is finite and `top_k <= logits.len()`.
    pub fn route(&mut self, logits: &[f32], ids: &mut [u16], weights: &mut [f32]) {
        let k = self.top_k;
        match self.routing.expect("router has a routing function") {
            RoutingFn::SoftmaxTopk { renormalize } => {
                top_k_with(logits, k, ids, weights, &mut self.cand_v, &mut self.cand_i);
                let max = weights[0];
                if renormalize {
                    // exp(l - max) over the chosen only: the full denominator
                    // cancels.
                    let mut s = 0.0f32;
                    for w in weights.iter_mut() {
                        *w = fast_exp(*w - max);
                        s += *w;
                    }
                    for w in weights.iter_mut() {
                        *w /= s;
                    }
                } else {
                    let s = sum_exp(logits, max);
                    for w in weights.iter_mut() {
                        *w = fast_exp(*w - max) / s;
                    }
                }
            }
            RoutingFn::TopkSoftmax => {
                top_k_with(logits, k, ids, weights, &mut self.cand_v, &mut self.cand_i);
                let max = weights[0];
                let mut s = 0.0f32;
                for w in weights.iter_mut() {
                    *w = fast_exp(*w - max);
                    s += *w;
                }
                for w in weights.iter_mut() {
                    *w /= s;
                }
            }
            RoutingFn::SigmoidGroupTopk {
                n_group,
                topk_group,
                routed_scaling_factor,
                renormalize,
            } => self.sigmoid_group(
                logits,
                n_group as usize,
                topk_group as usize,
                routed_scaling_factor,
                renormalize,
                ids,
                weights,
            ),
            RoutingFn::Recorded => {
                panic!("Router::route called with the 'recorded' routing function")
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn sigmoid_group(
        &mut self,
        logits: &[f32],
        n_group: usize,
        topk_group: usize,
        scale: f32,
        renormalize: bool,
        ids: &mut [u16],
        weights: &mut [f32],
    ) {
        let n = logits.len();
        let k = self.top_k;
        // scratch = sigmoid(logits) + bias: the selection score.
        self.scratch.clear();
        self.scratch
            .extend(logits.iter().enumerate().map(|(i, &x)| {
                let b = self.bias.get(i).copied().unwrap_or(0.0);
                sigmoid(x) + b
            }));
        let per = n / n_group;
        if n_group > 1 && topk_group < n_group {
            // group score: sum of its two best selection scores (DeepSeek-V3).
            self.group_scores.clear();
            for g in 0..n_group {
                let s = &self.scratch[g * per..(g + 1) * per];
                let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                for &v in s {
                    if v > a {
                        b = a;
                        a = v;
                    } else if v > b {
                        b = v;
                    }
                }
                let top2 = if per >= 2 { a + b } else { a };
                self.group_scores.push((top2, g));
            }
            // best groups first, lower group id on ties
            self.group_scores
                .sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            let mut keep = vec![false; n_group];
            for &(_, g) in &self.group_scores[..topk_group] {
                keep[g] = true;
            }
            for (g, kept) in keep.iter().enumerate() {
                if !kept {
                    for v in &mut self.scratch[g * per..(g + 1) * per] {
                        // as the model does: masked_fill(~mask, 0.0)
                        *v = 0.0;
                    }
                }
            }
        }
        let mut sel = vec![0f32; k];
        top_k_into(&self.scratch, k, ids, &mut sel);
        let mut s = 0.0f32;
        for (w, &id) in weights.iter_mut().zip(ids.iter()) {
            *w = sigmoid(logits[id as usize]);
            s += *w;
        }
        let denom = if renormalize { s + 1e-20 } else { 1.0 };
        for w in weights.iter_mut() {
            *w = *w / denom * scale;
        }
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Sum of `exp(x - max)` over the row.
#[inline]
fn sum_exp(row: &[f32], max: f32) -> f32 {
    // 8 independent accumulators let the compiler vectorise the loop.
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            acc[j] += fast_exp(c[j] - max);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &x in rest {
        s += fast_exp(x - max);
    }
    s
}

/// exp(x) for x <= 0 with relative error below 2e-7 (Cody-Waite range
/// reduction and a degree-6 polynomial), branch-free so loops vectorise.
/// Inputs below -87 give 0 (as f32 exp underflows there too).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.max(-87.0);
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // round to nearest by the 1.5 * 2^23 trick: `f32::round` is a libm
    // call on baseline x86-64 and would stop the loop from vectorising.
    const SHIFT: f32 = 12_582_912.0;
    let n = (x * LOG2E + SHIFT) - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| <= ln2/2
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.666_666_6e-1 + r * (4.166_662e-2 + r * (8.333_45e-3 + r * 1.393_e-3)))));
    let bits = ((n as i32 + 127) << 23) as u32;
    p * f32::from_bits(bits)
}

/// The k largest values of `row` with their indices, in decreasing order,
/// ties to the lower index. `ids`/`vals` have length k.
///
/// Wide rows (the usual 64..512 experts) take a filter first: the k-th
/// largest of the 16-wide chunk maxima is a lower bound of the k-th largest
/// value (the k best chunk maxima are k distinct elements), so only values
/// at or above it, collected branch-free in index order, can be chosen.
/// Selection over those few candidates follows the same rule as the plain
/// path, so both give identical results (tested against a sort).
#[inline]
pub fn top_k_into(row: &[f32], k: usize, ids: &mut [u16], vals: &mut [f32]) {
    top_k_with(row, k, ids, vals, &mut Vec::new(), &mut Vec::new());
}

/// [`top_k_into`] with caller-owned candidate buffers (no per-row
/// allocation or clearing).
#[inline]
pub fn top_k_with(
    row: &[f32],
    k: usize,
    ids: &mut [u16],
    vals: &mut [f32],
    cv: &mut Vec<f32>,
    ci: &mut Vec<u16>,
) {
    const MAXN: usize = 512;
    let n = row.len();
    if (64..=MAXN).contains(&n) && n / 16 >= k {
        let chunks = n.div_ceil(16);
        let mut maxima = [f32::NEG_INFINITY; MAXN / 16];
        for (c, m) in maxima.iter_mut().enumerate().take(chunks) {
            *m = chunk_max(&row[c * 16..(c * 16 + 16).min(n)]);
        }
        // k-th largest of the chunk maxima (partial selection sort; k small)
        let ms = &mut maxima[..chunks];
        for i in 0..k {
            let mut b = i;
            for j in i + 1..ms.len() {
                if ms[j] > ms[b] {
                    b = j;
                }
            }
            ms.swap(i, b);
        }
        let floor0 = ms[k - 1];
        if cv.len() < n + 1 {
            cv.resize(n + 1, 0.0);
            ci.resize(n + 1, 0);
        }
        let mut m = 0usize;
        for (i, &v) in row.iter().enumerate() {
            cv[m] = v;
            ci[m] = i as u16;
            m += usize::from(v >= floor0);
        }
        if m >= k {
            select(&cv[..m], &ci[..m], k, ids, vals);
            return;
        }
    }
    select_plain(row, k, ids, vals);
}

/// Top-k of candidates given with their ids, in id order.
#[inline]
fn select(cv: &[f32], ci: &[u16], k: usize, ids: &mut [u16], vals: &mut [f32]) {
    for (len, (&v, &id)) in cv.iter().zip(ci).take(k).enumerate() {
        let mut j = len;
        while j > 0 && vals[j - 1] < v {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
            j -= 1;
        }
        vals[j] = v;
        ids[j] = id;
    }
    let mut floor = vals[k - 1];
    for (&v, &id) in cv.iter().zip(ci).skip(k) {
        if v > floor {
            let mut j = k - 1;
            while j > 0 && vals[j - 1] < v {
                vals[j] = vals[j - 1];
                ids[j] = ids[j - 1];
                j -= 1;
            }
            vals[j] = v;
            ids[j] = id;
            floor = vals[k - 1];
        }
    }
}

#[inline]
fn select_plain(row: &[f32], k: usize, ids: &mut [u16], vals: &mut [f32]) {
    debug_assert!(k >= 1 && k <= row.len());
    // seed with the first k, insertion-sorted (stable: equal keeps order)
    for (len, (i, &v)) in row.iter().enumerate().take(k).enumerate() {
        let mut j = len;
        while j > 0 && vals[j - 1] < v {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
            j -= 1;
        }
        vals[j] = v;
        ids[j] = i as u16;
    }
    let mut floor = vals[k - 1];
    // Most values lose to the floor: test 16 at a time with a vectorisable
    // max and look inside a chunk only when one of them can get in.
    let mut i = k;
    while i < row.len() {
        let end = (i + 16).min(row.len());
        let chunk = &row[i..end];
        if chunk_max(chunk) > floor {
            for (off, &v) in chunk.iter().enumerate() {
                // strict: an equal later (higher) id never displaces an earlier one
                if v > floor {
                    let mut j = k - 1;
                    while j > 0 && vals[j - 1] < v {
                        vals[j] = vals[j - 1];
                        ids[j] = ids[j - 1];
                        j -= 1;
                    }
                    vals[j] = v;
                    ids[j] = (i + off) as u16;
                    floor = vals[k - 1];
                }
            }
        }
        i = end;
    }
}

/// Largest value of a chunk of up to 16. Lane-wise maxima vectorise; a
/// plain fold over floats would not (the compiler keeps its order).
#[inline(always)]
fn chunk_max(chunk: &[f32]) -> f32 {
    if chunk.len() == 16 {
        let mut m = [f32::NEG_INFINITY; 8];
        for j in 0..8 {
            let (a, b) = (chunk[j], chunk[j + 8]);
            m[j] = if a > b { a } else { b };
        }
        let mut best = m[0];
        for &x in &m[1..] {
            best = if x > best { x } else { best };
        }
        best
    } else {
        chunk
            .iter()
            .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
    }
}

/// True when every value is finite (no NaN, no +-Inf); branch-free so it
/// vectorises.
#[inline]
pub fn all_finite(row: &[f32]) -> bool {
    let mut bad = 0u32;
    for &x in row {
        bad |= u32::from((x.to_bits() & 0x7f80_0000) == 0x7f80_0000);
    }
    bad == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(r: RoutingFn, k: usize, logits: &[f32]) -> (Vec<u16>, Vec<f32>) {
        let mut router = Router::new(r, k);
        let mut ids = vec![0u16; k];
        let mut w = vec![0f32; k];
        router.route(logits, &mut ids, &mut w);
        (ids, w)
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (a, b) = (fast_exp(x), x.exp());
            assert!(((a - b) / b).abs() < 3e-7, "x={x}: {a} vs {b}");
            x += 0.013;
        }
        assert_eq!(fast_exp(-1000.0), fast_exp(-87.0));
    }

    #[test]
    fn softmax_topk_by_hand() {
        // logits [0, ln2, ln4, 0]: probs 1/8, 2/8, 4/8, 1/8
        let l = [0.0, 2f32.ln(), 4f32.ln(), 0.0];
        let (ids, w) = route(RoutingFn::SoftmaxTopk { renormalize: false }, 2, &l);
        assert_eq!(ids, vec![2, 1]);
        close(&w, &[0.5, 0.25]);
        let (ids, w) = route(RoutingFn::SoftmaxTopk { renormalize: true }, 2, &l);
        assert_eq!(ids, vec![2, 1]);
        close(&w, &[2.0 / 3.0, 1.0 / 3.0]);
    }

    #[test]
    fn ties_go_to_the_lower_id() {
        let l = [1.0, 3.0, 1.0, 3.0, 1.0];
        let (ids, _) = route(RoutingFn::SoftmaxTopk { renormalize: true }, 3, &l);
        assert_eq!(ids, vec![1, 3, 0]);
        let (ids, w) = route(RoutingFn::TopkSoftmax, 2, &[5.0; 6]);
        assert_eq!(ids, vec![0, 1]);
        close(&w, &[0.5, 0.5]);
        // a tie at the k-th place, first seen after the seed window
        let (ids, _) = route(RoutingFn::TopkSoftmax, 2, &[0.0, 2.0, 1.0, 1.0]);
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn topk_softmax_is_over_the_k_only() {
        // gpt-oss: top-2 of [1, 3, 2] -> softmax([3, 2])
        let (ids, w) = route(RoutingFn::TopkSoftmax, 2, &[1.0, 3.0, 2.0]);
        assert_eq!(ids, vec![1, 2]);
        let e = (-1f32).exp();
        close(&w, &[1.0 / (1.0 + e), e / (1.0 + e)]);
    }

    #[test]
    fn deepseek_group_limited_by_hand() {
        // 8 experts, 4 groups of 2, keep 2 groups, top-2, scale 2.5.
        // logits 0 -> sigmoid 0.5 everywhere; the bias decides selection.
        let mut r = Router::new(
            RoutingFn::SigmoidGroupTopk {
                n_group: 4,
                topk_group: 2,
                routed_scaling_factor: 2.5,
                renormalize: true,
            },
            2,
        );
        // group sums of top-2 (0.5+b): g0 1.0+0.0, g1 1.0+0.3, g2 1.0+0.25, g3 1.0+0.1
        // but expert 6 alone has the largest biased score: its group g3 is
        // not kept, so it must not be chosen.
        r.bias = vec![0.0, 0.0, 0.15, 0.15, 0.0, 0.25, 0.4, -0.3];
        let logits = [0.0f32; 8];
        let mut ids = [0u16; 2];
        let mut w = [0f32; 2];
        r.route(&logits, &mut ids, &mut w);
        // kept groups: g1 (0.3) and g2 (0.25); best biased: e5 (0.75), then
        // e2/e3 tie at 0.65 -> e2.
        assert_eq!(ids, [5, 2]);
        // weights from unbiased sigmoid (0.5 each), renormalised, scaled
        close(&w, &[1.25, 1.25]);
        // without group limit expert 6 wins
        r.routing = Some(RoutingFn::SigmoidGroupTopk {
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 1.0,
            renormalize: false,
        });
        r.route(&logits, &mut ids, &mut w);
        assert_eq!(ids, [6, 5]);
        close(&w, &[0.5, 0.5]);
    }

    #[test]
    fn deepseek_weights_use_unbiased_scores() {
        let mut r = Router::new(
            RoutingFn::SigmoidGroupTopk {
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 1.0,
                renormalize: true,
            },
            2,
        );
        r.bias = vec![10.0, 0.0, 0.0];
        let logits = [-2.0f32, 1.0, 0.0];
        let mut ids = [0u16; 2];
        let mut w = [0f32; 2];
        r.route(&logits, &mut ids, &mut w);
        assert_eq!(ids, [0, 1]);
        let (a, b) = (sigmoid(-2.0), sigmoid(1.0));
        close(&w, &[a / (a + b), b / (a + b)]);
    }

    #[test]
    fn topk_matches_a_sort_on_random_rows() {
        let mut rng = crate::trace::tokens::SplitMix64::new(7);
        for _ in 0..3000 {
            let n = 1 + rng.below(600) as usize;
            let k = 1 + rng.below(n.min(40) as u64) as usize;
            // coarse values so ties happen
            let coarse = rng.below(2) == 0;
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    if coarse {
                        rng.below(7) as f32
                    } else {
                        rng.unit_f64() as f32
                    }
                })
                .collect();
            let mut ids = vec![0u16; k];
            let mut vals = vec![0f32; k];
            top_k_into(&row, k, &mut ids, &mut vals);
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let want: Vec<u16> = idx[..k].iter().map(|&i| i as u16).collect();
            assert_eq!(ids, want, "{row:?} k={k}");
        }
    }
}
