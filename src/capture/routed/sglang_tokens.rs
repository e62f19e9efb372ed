//! SGLang `per_token` expert-distribution dumps -> token-level trace.
//!
//! The layout (see [`crate::capture::engines::sglang`], read against
//! sgl-project/sglang 02295fe5ac5ccff3e8829800d50450351c56fb53,
//! `_DetailSinglePassGatherer.collect` and `_DetailAccumulator.dump`): one
//! `.pt` per rank, `{records, last_physical_to_logical_map}`; each record
//! has `forward_pass_id`, `rank`, `topk_ids_of_layer` int32 `[num_layers,
//! tokens, 8]` (physical expert ids, unused slots -1) and `extend_seq_lens`
//! (tokens per request in a prefill pass, `None` in decode, where every
//! token is its own request).
//!
//! Rows: step = `forward_pass_id`, layer = the layer index (layers whose ids
//! are all -1, the dense ones, are left out), rank = the record's rank (the
//! rank that routed the token), token = position in the pass, sequence = the
//! request within the pass. Ids are mapped to logical experts. Every routed
//! token must have the same number of ids (the top-k). SGLang records no
//! weights: each slot gets 1/k. When every rank's ids are identical for
//! every pass (tensor parallelism: each rank routes the same tokens), rank 0
//! alone is kept.

use super::{check_id, expand, Driver, RoutedReport};
use crate::capture::pt::{read_pt, Value};
use crate::capture::{CaptureError, CaptureOptions};
use crate::trace::TokenTrace;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One record's ids, already mapped to logical experts.
struct Pass {
    file: PathBuf,
    layers: usize,
    tokens: usize,
    slots: usize,
    ids: Vec<i64>,
    seq_lens: Option<Vec<u32>>,
}

fn int_of(rec: &Value, key: &str, i: usize, file: &Path) -> Result<u32, CaptureError> {
    rec.get(key)
        .and_then(Value::as_int)
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| {
            CaptureError::input(
                file,
                format!("record {i}: '{key}' is missing or not a non-negative integer"),
            )
        })
}

fn read_file(file: &Path, out: &mut BTreeMap<(u32, u32), Pass>) -> Result<(), CaptureError> {
    let v = read_pt(file)?;
    let Some(Value::List(records)) = v.get("records") else {
        return Err(CaptureError::input(
            file,
            "not an SGLang per_token dump: no 'records' list",
        ));
    };
    let map = match v.get("last_physical_to_logical_map") {
        Some(Value::Tensor(m)) if m.shape.len() == 2 => m,
        _ => {
            return Err(CaptureError::input(
                file,
                "no 'last_physical_to_logical_map' [layers, physical_experts] tensor",
            ))
        }
    };
    let (l_n, ph_n) = (map.shape[0], map.shape[1]);
    let m = map.to_i64(file, "last_physical_to_logical_map")?;
    for (i, rec) in records.iter().enumerate() {
        let err = |s: String| CaptureError::input(file, format!("record {i}: {s}"));
        let Some(Value::Tensor(t)) = rec.get("topk_ids_of_layer") else {
            return Err(err(
                "no 'topk_ids_of_layer': a per_pass dump has counts only (capture it with the sglang format)".into(),
            ));
        };
        let &[tl, t_n, s_n] = t.shape.as_slice() else {
            return Err(err(format!(
                "'topk_ids_of_layer' has shape {:?}, expected [layers, tokens, k]",
                t.shape
            )));
        };
        if tl != l_n {
            return Err(err(format!(
                "'topk_ids_of_layer' has {tl} layers, the map {l_n}"
            )));
        }
        let mut ids = t.to_i64(file, "topk_ids_of_layer")?;
        for (j, id) in ids.iter_mut().enumerate() {
            if *id == -1 {
                continue;
            }
            if !(0..ph_n as i64).contains(id) {
                return Err(err(format!("physical expert id {id} out of range")));
            }
            let l = j / (t_n * s_n);
            *id = m[l * ph_n + *id as usize];
        }
        let seq_lens = match rec.get("extend_seq_lens") {
            Some(Value::List(v)) => Some(
                v.iter()
                    .map(|x| x.as_int().and_then(|n| u32::try_from(n).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| err("'extend_seq_lens' holds a non-integer".into()))?,
            ),
            _ => None,
        };
        if seq_lens
            .as_ref()
            .is_some_and(|s| s.iter().map(|&x| x as usize).sum::<usize>() != t_n)
        {
            return Err(err(format!(
                "'extend_seq_lens' does not add up to the {t_n} tokens"
            )));
        }
        let key = (
            int_of(rec, "forward_pass_id", i, file)?,
            int_of(rec, "rank", i, file)?,
        );
        let pass = Pass {
            file: file.to_path_buf(),
            layers: l_n,
            tokens: t_n,
            slots: s_n,
            ids,
            seq_lens,
        };
        if out.insert(key, pass).is_some() {
            return Err(err(format!(
                "forward pass {} of rank {} appears twice",
                key.0, key.1
            )));
        }
    }
    Ok(())
}

/// Ranks whose ids equal rank 0's at every pass are copies (TP).
fn tp_copies(passes: &BTreeMap<(u32, u32), Pass>) -> bool {
    let ranks: std::collections::BTreeSet<u32> = passes.keys().map(|k| k.1).collect();
    ranks.len() > 1
        && passes.iter().all(|(&(p, _), x)| {
            passes
                .get(&(p, 0))
                .is_some_and(|a| a.ids == x.ids && a.tokens == x.tokens)
        })
}

/// SGLang `per_token` dumps as a token-level trace written to `out`.
pub fn capture_sglang_tokens(
    inputs: &[PathBuf],
    out: &Path,
    opts: &CaptureOptions,
) -> Result<RoutedReport, CaptureError> {
    let files = expand(inputs, &["pt"])?;
    let mut passes = BTreeMap::new();
    for f in &files {
        read_file(f, &mut passes)?;
    }
    let copies = tp_copies(&passes);
    if copies {
        passes.retain(|k, _| k.1 == 0);
    }
    // Dense layers: no id at any token of any pass.
    let l_n = passes.values().map(|p| p.layers).max().unwrap_or(0);
    let routed: Vec<bool> = (0..l_n)
        .map(|l| {
            passes.values().any(|p| {
                let n = p.tokens * p.slots;
                p.ids[l * n..(l + 1) * n].iter().any(|&x| x != -1)
            })
        })
        .collect();
    let mut d = Driver::new(opts, out, "sglang-per-token", files.clone());
    for (&(step, rank), p) in &passes {
        let mut chunk: Option<TokenTrace> = None;
        let mut row = Vec::with_capacity(p.slots);
        for l in (0..p.layers).filter(|&l| routed[l]) {
            let mut seq_of = seq_iter(p);
            for tok in 0..p.tokens {
                let at = (l * p.tokens + tok) * p.slots;
                row.clear();
                for &id in p.ids[at..at + p.slots].iter().filter(|&&x| x != -1) {
                    row.push(check_id(id, &p.file, &format!("pass {step} layer {l}"))?);
                }
                let c = chunk.get_or_insert_with(|| TokenTrace::new(row.len().max(1)));
                if row.len() != c.top_k || row.is_empty() {
                    return Err(CaptureError::input(
                        &p.file,
                        format!(
                            "pass {step} rank {rank} layer {l} token {tok}: {} expert ids where other tokens have {} (not a constant top-k)",
                            row.len(),
                            c.top_k
                        ),
                    ));
                }
                let w = vec![1.0 / row.len() as f32; row.len()];
                c.push(step, l as u32, rank, tok as u32, seq_of(), &row, &w);
            }
        }
        if let Some(c) = chunk {
            d.push(&c, &p.file, false)?;
        }
    }
    if copies {
        d.note("rank files hold identical ids (tensor parallelism); rank 0 kept".into());
    }
    let dense: Vec<usize> = (0..l_n).filter(|&l| !routed[l]).collect();
    if !dense.is_empty() {
        d.note(format!(
            "layers {dense:?} route no token (dense) and were left out"
        ));
    }
    d.finish("recorded")
}

/// Request index of each successive token of a pass.
fn seq_iter(p: &Pass) -> impl FnMut() -> u32 + '_ {
    let (mut req, mut left, mut tok) = (0u32, 0u32, 0u32);
    move || match &p.seq_lens {
        None => {
            tok += 1;
            tok - 1
        }
        Some(lens) => {
            while left == 0 && (req as usize) < lens.len() {
                left = lens[req as usize];
                req += 1;
            }
            left = left.saturating_sub(1);
            req.saturating_sub(1)
        }
    }
}
