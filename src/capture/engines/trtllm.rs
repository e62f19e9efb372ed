//! TensorRT-LLM expert statistics (`EXPERT_STATISTIC_PATH`) -> counts.
//!
//! Read against `tensorrt_llm/_torch/expert_statistic.py` at
//! NVIDIA/TensorRT-LLM commit 0fccc5b97dd7b23c438e740b3bf4dcde607266c4
//! (`ExpertStatistic._set_iter`, `_maybe_add_info`; callers in
//! `tensorrt_llm/_torch/modules/fused_moe/*.py` call `set_layer(layer_idx)`
//! then `maybe_add_info(num_slots, token_selected_slots)`). Recording runs
//! for iterations `start <= iter < stop` of `EXPERT_STATISTIC_ITER_RANGE`;
//! at `iter == stop` every rank writes:
//!
//! - `meta_info.json` (rank 0 only): `{"num_experts": num_slots,
//!   "num_experts_per_token": k}` (JSON `null` when rank 0 recorded nothing);
//! - `rank{r}.safetensors`: one int64 tensor `[num_slots]` per key
//!   `"{iter}_{layer}"`, the `torch.bincount` of the expert ids the rank's
//!   tokens chose in that iteration at that layer (summed when a layer runs
//!   more than once in an iteration).
//!
//! Each key is one iteration (one step here, not an aggregate). With the
//! load balancer on, the ids are physical slots, not logical experts, and
//! no slot map is saved: the trace then counts slots. Ranks are kept apart
//! (`rank_assignment` "recorded"); rank files with identical counts (tensor
//! parallelism without attention DP) are counted once.

use super::{add, finish, merge_ranks, nonneg, whole_counts, Counts, Finish};
use crate::capture::tensor::read_safetensors;
use crate::capture::{CaptureError, CaptureOptions};
use crate::trace::Trace;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `meta_info.json`: both fields are optional to read older or hand-made
/// directories; when present they must agree with the command line.
fn meta_info(path: &Path) -> Result<(Option<u32>, Option<u32>), CaptureError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CaptureError::input(path, format!("cannot read: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CaptureError::input(path, format!("not valid JSON: {e}")))?;
    if v.is_null() {
        return Err(CaptureError::input(
            path,
            "meta_info is null: rank 0 recorded nothing (is EXPERT_STATISTIC_ITER_RANGE inside the run?)",
        ));
    }
    let field = |name: &str| -> Result<Option<u32>, CaptureError> {
        match v.get(name) {
            None => Ok(None),
            Some(x) => x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    CaptureError::input(path, format!("'{name}' is not a non-negative integer"))
                }),
        }
    };
    Ok((field("num_experts")?, field("num_experts_per_token")?))
}

fn rank_files(dir: &Path) -> Result<Vec<(u32, PathBuf)>, CaptureError> {
    let mut ranks: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| CaptureError::input(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let r = name.strip_prefix("rank")?.strip_suffix(".safetensors")?;
            Some((r.parse().ok()?, p))
        })
        .collect();
    ranks.sort();
    if ranks.is_empty() {
        return Err(CaptureError::input(dir, "no rank{r}.safetensors files"));
    }
    Ok(ranks)
}

/// TensorRT-LLM statistics directories (one per node or run; their ranks
/// and iterations are merged). At least one must hold `meta_info.json`.
pub fn capture_trtllm(inputs: &[PathBuf], opts: &CaptureOptions) -> Result<Trace, CaptureError> {
    let mut files = Vec::new();
    let mut per_rank: BTreeMap<u32, Counts> = BTreeMap::new();
    let (mut experts, mut top_k) = (None, None);
    let mut metas = 0;
    for dir in inputs {
        if !dir.is_dir() {
            return Err(CaptureError::input(
                dir,
                "TensorRT-LLM statistics are a directory (meta_info.json + rank{r}.safetensors)",
            ));
        }
        // Only rank 0 writes meta_info.json: a node's directory without it
        // is read when another input directory has one.
        let meta = dir.join("meta_info.json");
        let (e, k) = if meta.exists() {
            metas += 1;
            meta_info(&meta)?
        } else {
            (None, None)
        };
        for (old, new, name) in [(&mut experts, e, "num_experts"), (&mut top_k, k, "top-k")] {
            match (*old, new) {
                (Some(a), Some(b)) if a != b => {
                    return Err(CaptureError::input(
                        &meta,
                        format!("{name} {b} where an earlier directory says {a}"),
                    ))
                }
                (None, b) => *old = b,
                _ => {}
            }
        }
        if meta.exists() {
            files.push(meta);
        }
        for (rank, file) in rank_files(dir)? {
            read_rank(&file, rank, per_rank.entry(rank).or_default())?;
            files.push(file);
        }
    }
    if metas == 0 {
        return Err(CaptureError::input(
            inputs.first().map_or(Path::new(""), |p| p.as_path()),
            "no meta_info.json (rank 0 writes it into its EXPERT_STATISTIC_PATH)",
        ));
    }
    let mut f = Finish::new("trtllm-load-stats", &files, "recorded");
    f.what = inputs.first().map_or(Path::new(""), |p| p.as_path());
    f.num_experts = experts;
    f.top_k = top_k;
    let counts = merge_ranks(per_rank, false, &mut f.notes);
    finish(counts, opts, f)
}

fn read_rank(file: &Path, rank: u32, counts: &mut Counts) -> Result<(), CaptureError> {
    for (key, t) in read_safetensors(file)? {
        let parsed = key
            .split_once('_')
            .and_then(|(i, l)| Some((i.parse::<u32>().ok()?, l.parse::<u32>().ok()?)));
        let Some((iter, layer)) = parsed else {
            return Err(CaptureError::input(
                file,
                format!("tensor '{key}' is not named {{iter}}_{{layer}}"),
            ));
        };
        if counts.contains_key(&(iter, layer, rank)) {
            return Err(CaptureError::input(
                file,
                format!("iteration {iter} layer {layer} of rank {rank} is also in another input directory"),
            ));
        }
        if t.shape.len() != 1 {
            return Err(CaptureError::input(
                file,
                format!("tensor '{key}' has shape {:?}, expected [experts]", t.shape),
            ));
        }
        for (e, &x) in whole_counts(&t, file, &key)?.iter().enumerate() {
            add(counts, (iter, layer, rank), e, nonneg(x, file, &key)?);
        }
    }
    Ok(())
}
