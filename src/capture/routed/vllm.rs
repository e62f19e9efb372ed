//! vLLM routed experts (`--enable-return-routed-experts`) -> token trace.
//!
//! Read against vllm-project/vllm commit
//! 00bd1493b3e82d6c13c68ee8a0e1c5a96707e190:
//! `vllm/model_executor/layers/fused_moe/routed_experts_capturer.py`
//! (`RoutedExpertsCapturer.init_buffer`, `capture`, `clear_buffer`) and
//! `Scheduler._get_routed_experts` in `vllm/v1/core/sched/scheduler.py`.
//! A finished request's `routed_experts` is an int32 array
//! `[num_tokens - 1, num_hidden_layers, num_experts_per_tok]`: row `i` is
//! token `i` of prompt + output (read back through the request's KV slots);
//! the last sampled token never ran through the model and has no row, so
//! nothing is shifted. The layer axis is sized by `num_hidden_layers`: MoE
//! layers write their ids at their own layer index, dense layers are never
//! written and stay 0 (the buffers are zero-filled; some forks use -1).
//!
//! Dense layers are found as layers whose every row is "empty" (all k ids
//! equal to 0, or -1) in every file, or named with [`VllmOptions`]. A row of
//! k equal ids cannot be a real top-k choice when k > 1; with k = 1 a layer
//! that always picks expert 0 looks dense, so name the MoE layers then.
//! Layer ids stay the model's layer indices. Each `.npy` file is one
//! request: one step (the number in the file name when every file has a
//! distinct one, else its position), token = row.

use super::{check_id, expand, Driver, RoutedReport};
use crate::capture::sink::trailing_number;
use crate::capture::tensor::read_npy;
use crate::capture::{CaptureError, CaptureOptions};
use crate::trace::TokenTrace;
use std::path::{Path, PathBuf};

/// Which layers of the hidden-layer axis are MoE layers.
#[derive(Debug, Clone, Default)]
pub struct VllmOptions {
    /// MoE layer indices (`--moe-layers`); other layers are skipped.
    pub moe_layers: Option<Vec<u32>>,
    /// Layers `0..n` are dense (DeepSeek's `first_k_dense_replace`).
    pub first_dense: Option<u32>,
}

/// vLLM routed-experts arrays, dense layers detected from the data.
pub fn capture_vllm(
    inputs: &[PathBuf],
    out: &Path,
    opts: &CaptureOptions,
) -> Result<RoutedReport, CaptureError> {
    capture_vllm_with(inputs, out, opts, &VllmOptions::default())
}

struct Request {
    t_n: usize,
    l_n: usize,
    k: usize,
    ids: Vec<i64>,
}

fn load(file: &Path) -> Result<Request, CaptureError> {
    let t = read_npy(file)?;
    let &[t_n, l_n, k] = t.shape.as_slice() else {
        return Err(CaptureError::input(
            file,
            format!(
                "routed experts must be [tokens, num_hidden_layers, k], found {:?}",
                t.shape
            ),
        ));
    };
    if k == 0 {
        return Err(CaptureError::input(file, "k = 0"));
    }
    if t.dtype.is_float() {
        return Err(CaptureError::input(
            file,
            format!("routed experts are integer ids, found {}", t.dtype.name()),
        ));
    }
    let ids = t.to_i64(file, "routed experts")?;
    Ok(Request { t_n, l_n, k, ids })
}

impl Request {
    fn row(&self, tok: usize, l: usize) -> &[i64] {
        let at = (tok * self.l_n + l) * self.k;
        &self.ids[at..at + self.k]
    }
    /// Never written by a router: all slots 0 (vLLM's zero fill) or -1.
    fn empty(&self, tok: usize, l: usize) -> bool {
        let r = self.row(tok, l);
        (r[0] == 0 || r[0] == -1) && r.iter().all(|&x| x == r[0])
    }
}

/// Layers of the axis that hold routing, from the options or the data.
fn moe_layers(
    files: &[PathBuf],
    reqs: &[Request],
    vo: &VllmOptions,
) -> Result<(Vec<bool>, String), CaptureError> {
    let l_n = reqs[0].l_n;
    if let Some((f, r)) = files.iter().zip(reqs).find(|(_, r)| r.l_n != l_n) {
        return Err(CaptureError::input(
            f,
            format!("{} layers where earlier files have {l_n}", r.l_n),
        ));
    }
    let given = match (&vo.moe_layers, vo.first_dense) {
        (Some(_), Some(_)) => {
            return Err(CaptureError::Usage(
                "give either --moe-layers or --first-dense-layers, not both".into(),
            ))
        }
        (Some(list), None) => Some(list.clone()),
        (None, Some(n)) => Some((n..l_n as u32).collect()),
        (None, None) => None,
    };
    if let Some(list) = given {
        let mut moe = vec![false; l_n];
        for &l in &list {
            *moe.get_mut(l as usize).ok_or_else(|| {
                CaptureError::Usage(format!(
                    "MoE layer {l} is outside the {l_n} layers of the arrays"
                ))
            })? = true;
        }
        return Ok((moe, "MoE layers as given".into()));
    }
    let moe: Vec<bool> = (0..l_n)
        .map(|l| reqs.iter().any(|r| (0..r.t_n).any(|t| !r.empty(t, l))))
        .collect();
    let dense: Vec<usize> = (0..l_n).filter(|&l| !moe[l]).collect();
    let note = if dense.is_empty() {
        "every layer holds routing".to_string()
    } else {
        format!("layers {dense:?} hold no routing (dense layers) and were left out")
    };
    Ok((moe, note))
}

/// vLLM routed-experts arrays with the MoE layers named or detected.
pub fn capture_vllm_with(
    inputs: &[PathBuf],
    out: &Path,
    opts: &CaptureOptions,
    vo: &VllmOptions,
) -> Result<RoutedReport, CaptureError> {
    let files = expand(inputs, &["npy"])?;
    // Requests are small ([tokens, layers, k] int32): read them all once so
    // dense layers are judged over every file before anything is written.
    let reqs: Vec<Request> = files.iter().map(|f| load(f)).collect::<Result<_, _>>()?;
    let (moe, note) = moe_layers(&files, &reqs, vo)?;
    if !moe.iter().any(|&m| m) {
        return Err(CaptureError::input(
            &files[0],
            "no layer holds routing (every row is empty)",
        ));
    }
    let numbers: Vec<Option<u32>> = files.iter().map(|f| trailing_number(f)).collect();
    let numbered = numbers.iter().all(Option::is_some) && {
        let mut v: Vec<u32> = numbers.iter().map(|x| x.unwrap()).collect();
        v.sort_unstable();
        v.windows(2).all(|w| w[0] != w[1])
    };
    let mut d = Driver::new(opts, out, "vllm-routed", files.clone());
    let pb = opts.progress.get();
    pb.start("capture", files.len() as u64);
    for (fi, (file, r)) in files.iter().zip(&reqs).enumerate() {
        let step = if numbered {
            numbers[fi].unwrap()
        } else {
            fi as u32
        };
        let mut chunk = TokenTrace::new(r.k);
        let uniform = vec![1.0 / r.k as f32; r.k];
        let mut row = vec![0u16; r.k];
        for l in (0..r.l_n).filter(|&l| moe[l]) {
            for tok in 0..r.t_n {
                for (j, &id) in r.row(tok, l).iter().enumerate() {
                    row[j] = check_id(id, file, &format!("token {tok} layer {l}"))?;
                }
                let seq = opts.sequence_length.map_or(0, |s| tok as u32 / s.max(1));
                chunk.push(
                    step,
                    l as u32,
                    opts.rank.unwrap_or(0),
                    tok as u32,
                    seq,
                    &row,
                    &uniform,
                );
            }
        }
        d.push(&chunk, file, false)?;
        pb.inc(1);
    }
    pb.finish();
    d.note(format!(
        "vLLM routed experts: one request per file, the last sampled token has no row; {note}"
    ));
    d.finish("contiguous")
}
