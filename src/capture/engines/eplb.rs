//! Expert load matrices as EPLB consumes them -> counts.
//!
//! DeepSeek EPLB's `rebalance_experts(weight, ...)` (`eplb.py`,
//! deepseek-ai/EPLB commit d52c72d, copy in `shared/peers/EPLB`) takes
//! `weight: [layers, num_logical_experts]`, the load of every logical expert
//! summed over a window of forward passes. SGLang's `--init-expert-location`
//! (`compute_initial_expert_location_metadata` in
//! `python/sglang/srt/eplb/expert_location.py`, sgl-project/sglang commit
//! 01fec5c2e61f9568c41a6e1d4fd5ac46c88504f1) reads the same matrix from a
//! `.pt` (`torch.load(weights_only=True)`) or `.json` dict under the key
//! `logical_count`, `[layers, experts]` or `[passes, layers, experts]`.
//!
//! Accepted here: `.npy` (the bare matrix), `.json` (a bare nested list, or
//! an object with `logical_count` or the `--json-key` key), `.pt` (a bare
//! tensor or a dict with `logical_count`). A 2-D matrix is one step whose
//! counts sum several passes (`passes_aggregated`: the window length when
//! given, else "unknown"); a 3-D one is one step per pass. Counts must be
//! whole numbers (EPLB also accepts averaged loads: scale them to token
//! counts first). Layers whose row is zero (dense layers in SGLang's
//! all-hidden-layers axis) are left out.

use super::{add, finish, nonneg, whole_counts, Counts, Finish};
use crate::capture::pt::{read_pt, Value};
use crate::capture::tensor::{read_npy, Tensor};
use crate::capture::{CaptureError, CaptureOptions};
use crate::trace::Trace;
use std::path::{Path, PathBuf};

/// Options of the EPLB-matrix reader.
#[derive(Debug, Clone, Default)]
pub struct EplbOptions {
    /// Forward passes the matrix sums (the EPLB window), when known.
    pub passes: Option<u64>,
}

/// A matrix as (shape, values).
type Matrix = (Vec<usize>, Vec<i64>);

fn from_tensor(t: &Tensor, file: &Path) -> Result<Matrix, CaptureError> {
    Ok((t.shape.clone(), whole_counts(t, file, "load matrix")?))
}

fn from_json(v: &serde_json::Value, file: &Path) -> Result<Matrix, CaptureError> {
    fn walk(
        v: &serde_json::Value,
        depth: usize,
        shape: &mut Vec<usize>,
        out: &mut Vec<i64>,
    ) -> Result<(), String> {
        match v {
            serde_json::Value::Array(a) => {
                if shape.len() == depth {
                    shape.push(a.len());
                } else if shape.get(depth) != Some(&a.len()) {
                    return Err("rows of different lengths".into());
                }
                a.iter().try_for_each(|x| walk(x, depth + 1, shape, out))
            }
            serde_json::Value::Number(n) if depth == shape.len() && depth > 0 => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match n.as_i64() {
                    Some(i) => out.push(i),
                    None if f.fract() == 0.0 && f.is_finite() => out.push(f as i64),
                    None => return Err(format!("{n} is not a whole count")),
                }
                Ok(())
            }
            _ => Err("expected a nested list of counts".into()),
        }
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut out).map_err(|m| CaptureError::input(file, m))?;
    Ok((shape, out))
}

fn read_matrix(file: &Path, opts: &CaptureOptions) -> Result<Matrix, CaptureError> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let key = opts.json_key.as_deref().unwrap_or("logical_count");
    match ext.as_str() {
        "npy" => from_tensor(&read_npy(file)?, file),
        "json" => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CaptureError::input(file, format!("cannot read: {e}")))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CaptureError::input(file, format!("not valid JSON: {e}")))?;
            match &v {
                serde_json::Value::Object(o) => match o.get(key) {
                    Some(m) => from_json(m, file),
                    None => Err(CaptureError::input(
                        file,
                        format!("no '{key}' key (pass --json-key)"),
                    )),
                },
                _ => from_json(&v, file),
            }
        }
        "pt" => match read_pt(file)? {
            Value::Tensor(t) => from_tensor(&t, file),
            v @ Value::Dict(_) => match v.get(key) {
                Some(Value::Tensor(t)) => from_tensor(t, file),
                _ => Err(CaptureError::input(
                    file,
                    format!(
                        "no '{key}' tensor (keys: {}); a physical_to_logical_map file holds a placement, not loads",
                        v.keys().join(", ")
                    ),
                )),
            },
            other => Err(CaptureError::input(
                file,
                format!("expected a tensor or a dict, found a {}", other.kind()),
            )),
        },
        _ => Err(CaptureError::input(
            file,
            "an EPLB load matrix is a .npy, .json or .pt file",
        )),
    }
}

/// EPLB load matrices, one or more files (each adds its steps after the
/// previous file's).
pub fn capture_eplb_matrix(
    inputs: &[PathBuf],
    opts: &CaptureOptions,
    eplb: &EplbOptions,
) -> Result<Trace, CaptureError> {
    let files = crate::capture::routed::expand(inputs, &["npy", "json", "pt"])?;
    let mut counts = Counts::new();
    let mut step = 0u32;
    let mut aggregated = false;
    for file in &files {
        let (shape, v) = read_matrix(file, opts)?;
        let (p_n, l_n, e_n) = match *shape.as_slice() {
            [l, e] => {
                aggregated = true;
                (1, l, e)
            }
            [p, l, e] => (p, l, e),
            ref s => {
                return Err(CaptureError::input(
                    file,
                    format!("load matrix has shape {s:?}, expected [layers, experts]"),
                ))
            }
        };
        for p in 0..p_n {
            for l in 0..l_n {
                for e in 0..e_n {
                    let x = nonneg(v[(p * l_n + l) * e_n + e], file, "load matrix")?;
                    add(&mut counts, (step + p as u32, l as u32, 0), e, x);
                }
            }
        }
        step += p_n as u32;
    }
    let mut f = Finish::new("eplb-matrix", &files, "global");
    if aggregated {
        f.passes_aggregated = Some(eplb.passes.unwrap_or(0));
    }
    f.drop_empty_layers = true;
    finish(counts, opts, f)
}
