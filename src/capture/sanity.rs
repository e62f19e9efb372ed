//! Routing that does not look like a model at work. Logs recorded during a
//! warm-up, a profiling pass or a CUDA-graph capture often route every token
//! to the same experts, or carry uniform weights (1/k each); a trace made of
//! them would plan and simulate nonsense. `capture` warns about both.
//!
//! Constant routing is read off the load counts (any format): a layer-step
//! in which every token chose the same set of k experts has exactly k
//! experts with a count, each equal to the number of tokens. Uniform weights
//! need the token rows and are read back from the tokens file (step, layer
//! and weights columns only).

use crate::trace::{schema, Loads, TraceError};
use arrow::array::{Array, FixedSizeListArray, Float32Array, UInt32Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Layer-steps with fewer tokens than this are not judged: two tokens
/// choosing the same experts say nothing.
pub const MIN_TOKENS: u64 = 16;

/// Weights within this relative distance of 1/k count as uniform (bf16
/// rounds 1/3 by 0.2%).
const UNIFORM_TOL: f32 = 5e-3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Every token of a layer-step went to the same experts.
    ConstantRouting,
    /// Every token of a layer-step has weights 1/k.
    UniformWeights,
}

/// Layer-steps that show one pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub pattern: Pattern,
    /// (step id, layer id) of each affected layer-step, in trace order.
    pub blocks: Vec<(u32, u32)>,
    /// Layer-steps judged (those with at least [`MIN_TOKENS`] tokens).
    pub judged: usize,
    /// Token rows in the affected layer-steps.
    pub tokens: u64,
    /// The expert set of the first affected layer-step (constant routing).
    pub experts: Vec<u32>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.pattern {
            Pattern::ConstantRouting => format!(
                "constant routing: every token went to the same experts ({})",
                self.experts
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Pattern::UniformWeights => "uniform weights: every token has weights 1/k".to_string(),
        };
        let shown: Vec<String> = self
            .blocks
            .iter()
            .take(4)
            .map(|(s, l)| format!("step {s} layer {l}"))
            .collect();
        let more = if self.blocks.len() > shown.len() {
            ", ..."
        } else {
            ""
        };
        write!(
            f,
            "{what} in {} of {} layer-steps ({}{more}), {} token rows; recorded during warm-up, profiling or CUDA-graph capture?",
            self.blocks.len(),
            self.judged,
            shown.join(", "),
            self.tokens
        )
    }
}

/// Layer-steps where every token chose the same `top_k` experts.
pub fn constant_routing(loads: &Loads, top_k: u32) -> Option<Finding> {
    let mut acc = ConstantRouting::new(top_k);
    acc.add(loads);
    acc.finish()
}

/// [`constant_routing`] over a trace that comes in parts (steps in order):
/// the same finding as on the whole.
#[derive(Debug)]
pub struct ConstantRouting {
    top_k: u32,
    found: Finding,
    g: Vec<u64>,
}

impl ConstantRouting {
    pub fn new(top_k: u32) -> Self {
        Self {
            top_k,
            found: Finding {
                pattern: Pattern::ConstantRouting,
                blocks: Vec::new(),
                judged: 0,
                tokens: 0,
                experts: Vec::new(),
            },
            g: Vec::new(),
        }
    }

    /// Every layer-step of `loads`, in order.
    pub fn add(&mut self, loads: &Loads) {
        let (k, top_k) = (self.top_k as usize, self.top_k);
        let (found, g) = (&mut self.found, &mut self.g);
        for (si, &s) in loads.step_ids.iter().enumerate() {
            for (li, &l) in loads.layer_ids.iter().enumerate() {
                loads.global_into(si, li, g);
                let total: u64 = g.iter().sum();
                let tokens = total / top_k.max(1) as u64;
                if k == 0 || tokens < MIN_TOKENS {
                    continue;
                }
                found.judged += 1;
                let used: Vec<u32> = (0..g.len() as u32).filter(|&e| g[e as usize] > 0).collect();
                // k distinct experts each chosen by every token: no token can
                // have picked anything else
                if used.len() == k && used.iter().all(|&e| g[e as usize] == tokens) {
                    if found.blocks.is_empty() {
                        found.experts = used;
                    }
                    found.blocks.push((s, l));
                    found.tokens += tokens;
                }
            }
        }
    }

    pub fn finish(self) -> Option<Finding> {
        (!self.found.blocks.is_empty()).then_some(self.found)
    }
}

/// Layer-steps of a tokens file where every token's weights are 1/k. For
/// top-1 routing the weight is 1 by construction: nothing to judge.
pub fn uniform_weights(tokens_file: &Path) -> Result<Option<Finding>, TraceError> {
    let io = |e: std::io::Error| TraceError::invalid(tokens_file, e.to_string());
    let pq = |e: parquet::errors::ParquetError| TraceError::invalid(tokens_file, e.to_string());
    let f = std::fs::File::open(tokens_file).map_err(io)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(pq)?;
    let arrow_schema = builder.schema().clone();
    let idx = |name: &str| {
        arrow_schema
            .index_of(name)
            .map_err(|_| TraceError::invalid(tokens_file, format!("missing column '{name}'")))
    };
    let roots = [
        idx(schema::STEP)?,
        idx(schema::LAYER)?,
        idx(schema::WEIGHTS)?,
    ];
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).build().map_err(pq)?;
    // (step, layer) -> (rows, rows with uniform weights)
    let mut tally: BTreeMap<(u32, u32), (u64, u64)> = BTreeMap::new();
    let mut k = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| TraceError::invalid(tokens_file, e.to_string()))?;
        let col = |name: &str| batch.column_by_name(name);
        let bad = || {
            TraceError::invalid(
                tokens_file,
                "step, layer or weights column has the wrong type",
            )
        };
        let step = col(schema::STEP)
            .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
            .ok_or_else(bad)?;
        let layer = col(schema::LAYER)
            .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
            .ok_or_else(bad)?;
        let wl = col(schema::WEIGHTS)
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or_else(bad)?;
        k = wl.value_length() as usize;
        let w = wl
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(bad)?
            .values();
        if k < 2 {
            return Ok(None);
        }
        let (step, layer) = (step.values(), layer.values());
        let base = wl.offset() * k;
        // rows come in runs of one (step, layer): one map entry per run
        let mut i = 0;
        while i < step.len() {
            let key = (step[i], layer[i]);
            let mut j = i;
            let mut uniform = 0u64;
            while j < step.len() && (step[j], layer[j]) == key {
                let row = &w[base + j * k..base + (j + 1) * k];
                if row
                    .iter()
                    .all(|&x| (x * k as f32 - 1.0).abs() <= UNIFORM_TOL)
                {
                    uniform += 1;
                }
                j += 1;
            }
            let e = tally.entry(key).or_default();
            e.0 += (j - i) as u64;
            e.1 += uniform;
            i = j;
        }
    }
    let mut found = Finding {
        pattern: Pattern::UniformWeights,
        blocks: Vec::new(),
        judged: 0,
        tokens: 0,
        experts: Vec::new(),
    };
    for (&(s, l), &(rows, uniform)) in &tally {
        if rows < MIN_TOKENS {
            continue;
        }
        found.judged += 1;
        if uniform == rows {
            found.blocks.push((s, l));
            found.tokens += rows;
        }
    }
    Ok((k >= 2 && !found.blocks.is_empty()).then_some(found))
}

/// Tokens and token-layer rows of a token-level trace: the rows are every
/// layer's tokens counted apart; a token is counted once per step, as the
/// most tokens any one layer of that step saw (layers see the same tokens
/// unless some were skipped).
pub fn token_counts(loads: &Loads, top_k: u32) -> (u64, u64) {
    let k = top_k.max(1) as u64;
    let (mut tokens, mut rows) = (0u64, 0u64);
    for si in 0..loads.steps() {
        let mut most = 0u64;
        for li in 0..loads.layers() {
            let r = loads.total(si, li) / k;
            rows += r;
            most = most.max(r);
        }
        tokens += most;
    }
    (tokens, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::meta::{CaptureMeta, ModelMeta, RoutingFn, TraceMeta};
    use crate::trace::parquet_io::TokenFileWriter;
    use crate::trace::TokenTrace;

    /// 2 steps x 2 layers x 1 rank x 8 experts, 20 tokens, top-2; step 1
    /// layer 0 sends every token to experts 3 and 5.
    fn loads() -> Loads {
        let mut l = Loads::zeros(vec![0, 1], vec![0, 1], 1, 8);
        for (s, li) in [(0, 0), (0, 1), (1, 1)] {
            let b = l.block_mut(s, li);
            b.copy_from_slice(&[5, 5, 5, 5, 5, 5, 5, 5]);
        }
        l.block_mut(1, 0)
            .copy_from_slice(&[0, 0, 0, 20, 0, 20, 0, 0]);
        l
    }

    #[test]
    fn constant_routing_is_found_from_the_counts() {
        let f = constant_routing(&loads(), 2).expect("found");
        assert_eq!(f.blocks, vec![(1, 0)]);
        assert_eq!((f.judged, f.tokens), (4, 20));
        assert_eq!(f.experts, vec![3, 5]);
        let text = f.to_string();
        assert!(
            text.contains("(3, 5) in 1 of 4 layer-steps (step 1 layer 0), 20 token rows"),
            "{text}"
        );
        // 20 tokens over two experts with unequal counts is not constant
        let mut l = loads();
        l.block_mut(1, 0)
            .copy_from_slice(&[0, 0, 0, 21, 0, 19, 0, 0]);
        assert!(constant_routing(&l, 2).is_none());
        // too few tokens to judge
        let mut l = Loads::zeros(vec![0], vec![0], 1, 4);
        l.block_mut(0, 0).copy_from_slice(&[3, 3, 0, 0]);
        assert!(constant_routing(&l, 2).is_none());
    }

    #[test]
    fn tokens_and_rows_are_told_apart() {
        // 20 tokens in each of 2 layers, 2 steps: 40 tokens, 80 rows
        assert_eq!(token_counts(&loads(), 2), (40, 80));
    }

    fn tokens_file(name: &str, weights: impl Fn(u32, u32) -> [f32; 2]) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("llep-sanity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("t.tokens.parquet");
        let model = ModelMeta {
            name: "m".into(),
            num_experts: 8,
            top_k: 2,
            hidden_size: 0,
            intermediate_size: 0,
            num_layers: 2,
            dtype: "bf16".into(),
            routing: RoutingFn::Recorded,
        };
        let meta = TraceMeta::new(model, CaptureMeta::default());
        let mut w = TokenFileWriter::create(&p, &meta, None).unwrap();
        let mut t = TokenTrace::new(2);
        for layer in 0..2 {
            for tok in 0..30 {
                let e = (tok % 4) as u16;
                t.push(0, layer, 0, tok, 0, &[e, e + 4], &weights(layer, tok));
            }
        }
        w.write(&t).unwrap();
        w.finish().unwrap();
        p
    }

    #[test]
    fn uniform_weights_are_found_in_the_tokens_file() {
        // layer 1 all 0.5/0.5 (bf16-rounded is still within tolerance)
        let p = tokens_file("uniform", |l, t| {
            if l == 1 {
                [0.5, 0.5]
            } else {
                [0.6 + t as f32 * 1e-3, 0.4]
            }
        });
        let f = uniform_weights(&p).unwrap().expect("found");
        assert_eq!(f.blocks, vec![(0, 1)]);
        assert_eq!((f.judged, f.tokens), (2, 30));
        assert!(f.to_string().starts_with("uniform weights"), "{f}");
        // one token with real weights clears the layer
        let p = tokens_file("mixed", |_, t| if t == 7 { [0.7, 0.3] } else { [0.5, 0.5] });
        assert!(uniform_weights(&p).unwrap().is_none());
    }
}
