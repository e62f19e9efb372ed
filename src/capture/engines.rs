//! Aggregate expert loads recorded by serving engines -> load-level trace.
//!
//! - `sglang`: SGLang's expert-distribution recorder dump (`.pt`, read with
//!   the restricted pickle reader). Stat mode: `logical_count`, integers
//!   `[passes, layers, experts]` (or `[layers, experts]`), one step per
//!   forward pass. Per-pass mode: `records`, a list with per pass
//!   `global_physical_count` `[layers, physical_experts]` and
//!   `last_physical_to_logical_map` `[layers, physical_experts]` (in the
//!   record or at the top level); physical counts are summed onto their
//!   logical expert.
//! - `trtllm`: TensorRT-LLM load statistics, a directory with
//!   `meta_info.json` and `rank{r}.safetensors` files whose tensors are named
//!   `{iter}_{layer}` and hold per-expert token counts of that rank.
//!
//! Neither says top-k: `--top-k` is required.

use super::pt::{read_pt, Value};
use super::sink::{capture_meta, model_meta, trace_meta};
use super::tensor::{read_safetensors, Tensor};
use super::{CaptureError, CaptureOptions};
use crate::trace::{Loads, RoutingFn, Trace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Counts = BTreeMap<(u32, u32, u32), Vec<u64>>;

fn add(counts: &mut Counts, key: (u32, u32, u32), e: usize, c: u64) {
    let row = counts.entry(key).or_default();
    if row.len() <= e {
        row.resize(e + 1, 0);
    }
    row[e] += c;
}

fn nonneg(v: i64, file: &Path, what: &str) -> Result<u64, CaptureError> {
    u64::try_from(v).map_err(|_| CaptureError::input(file, format!("{what}: negative count {v}")))
}

fn finish(
    counts: Counts,
    opts: &CaptureOptions,
    format: &str,
    files: &[PathBuf],
    rank_assignment: &str,
    what: &Path,
) -> Result<Trace, CaptureError> {
    if counts.is_empty() {
        return Err(CaptureError::input(what, "no counts found"));
    }
    let seen = counts.values().map(Vec::len).max().unwrap_or(0);
    let e_n = match opts.model.num_experts {
        Some(n) if (n as usize) < seen => {
            return Err(CaptureError::input(
                what,
                format!("expert id {} out of range for --num-experts {n}", seen - 1),
            ))
        }
        Some(n) => n as usize,
        None => seen,
    };
    let top_k = opts
        .model
        .top_k
        .ok_or_else(|| CaptureError::input(what, "the dump does not say top_k: pass --top-k"))?;
    if top_k == 0 || top_k as usize > e_n {
        return Err(CaptureError::input(
            what,
            format!("top-k {top_k} must be between 1 and the number of experts ({e_n})"),
        ));
    }
    let mut steps: Vec<u32> = counts.keys().map(|k| k.0).collect();
    steps.dedup();
    steps.sort_unstable();
    steps.dedup();
    let mut layers: Vec<u32> = counts.keys().map(|k| k.1).collect();
    layers.sort_unstable();
    layers.dedup();
    let ranks = counts.keys().map(|k| k.2).max().unwrap() as usize + 1;
    let mut loads = Loads::zeros(steps.clone(), layers.clone(), ranks, e_n);
    for ((s, l, r), row) in &counts {
        let si = steps.binary_search(s).unwrap();
        let li = layers.binary_search(l).unwrap();
        let base = *r as usize * e_n;
        loads.block_mut(si, li)[base..base + row.len()].copy_from_slice(row);
    }
    let model = model_meta(
        opts,
        None,
        e_n as u32,
        top_k,
        opts.model.routing.unwrap_or(RoutingFn::Recorded),
        layers.last().map_or(0, |&l| l + 1),
    );
    let mut cap = capture_meta(format, files, rank_assignment);
    cap.ranks = ranks as u32;
    cap.tokens_per_rank = Some(loads.total(0, 0) / (top_k as u64 * ranks as u64));
    Ok(Trace {
        meta: trace_meta(opts, model, cap),
        loads,
        tokens: None,
    })
}

fn tensor<'a>(v: &'a Value, key: &str, file: &Path) -> Result<&'a Tensor, CaptureError> {
    v.get(key)
        .and_then(Value::as_tensor)
        .ok_or_else(|| CaptureError::input(file, format!("'{key}' is missing or not a tensor")))
}

/// SGLang expert-distribution recorder dump.
pub fn capture_sglang(inputs: &[PathBuf], opts: &CaptureOptions) -> Result<Trace, CaptureError> {
    let files = super::routed::expand(inputs, &["pt"])?;
    let mut counts = Counts::new();
    let mut step_base = 0u32;
    for file in &files {
        let v = read_pt(file)?;
        if let Some(lc) = v.get("logical_count") {
            let t = lc
                .as_tensor()
                .ok_or_else(|| CaptureError::input(file, "'logical_count' is not a tensor"))?;
            let (p_n, l_n, e_n) = match t.shape.as_slice() {
                &[p, l, e] => (p, l, e),
                &[l, e] => (1, l, e),
                s => {
                    return Err(CaptureError::input(
                        file,
                        format!(
                            "'logical_count' has shape {s:?}, expected [passes, layers, experts]"
                        ),
                    ))
                }
            };
            let c = t.to_i64(file, "logical_count")?;
            for p in 0..p_n {
                for l in 0..l_n {
                    for e in 0..e_n {
                        let x = nonneg(c[(p * l_n + l) * e_n + e], file, "logical_count")?;
                        add(&mut counts, (step_base + p as u32, l as u32, 0), e, x);
                    }
                }
            }
            step_base += p_n as u32;
        } else if let Some(Value::List(records)) = v.get("records") {
            let top_map = v.get("last_physical_to_logical_map");
            for (p, rec) in records.iter().enumerate() {
                let gpc = tensor(rec, "global_physical_count", file)?;
                let map = match rec.get("last_physical_to_logical_map").or(top_map) {
                    Some(Value::Tensor(m)) => m,
                    _ => {
                        return Err(CaptureError::input(
                            file,
                            format!("record {p}: no 'last_physical_to_logical_map'"),
                        ))
                    }
                };
                let &[l_n, ph_n] = gpc.shape.as_slice() else {
                    return Err(CaptureError::input(
                        file,
                        format!("record {p}: 'global_physical_count' has shape {:?}, expected [layers, physical_experts]", gpc.shape),
                    ));
                };
                if map.shape != gpc.shape {
                    return Err(CaptureError::input(
                        file,
                        format!(
                            "record {p}: physical-to-logical map has shape {:?}, counts {:?}",
                            map.shape, gpc.shape
                        ),
                    ));
                }
                let c = gpc.to_i64(file, "global_physical_count")?;
                let m = map.to_i64(file, "last_physical_to_logical_map")?;
                for l in 0..l_n {
                    for ph in 0..ph_n {
                        let logical = m[l * ph_n + ph];
                        if !(0..=u16::MAX as i64).contains(&logical) {
                            return Err(CaptureError::input(
                                file,
                                format!("record {p}: logical expert id {logical} out of range"),
                            ));
                        }
                        let x = nonneg(c[l * ph_n + ph], file, "global_physical_count")?;
                        add(
                            &mut counts,
                            (step_base + p as u32, l as u32, 0),
                            logical as usize,
                            x,
                        );
                    }
                }
            }
            step_base += records.len() as u32;
        } else {
            return Err(CaptureError::input(
                file,
                format!(
                    "not an SGLang expert-distribution dump: no 'logical_count' or 'records' (keys: {})",
                    v.keys().join(", ")
                ),
            ));
        }
    }
    let what = files.first().cloned().unwrap_or_default();
    finish(
        counts,
        opts,
        "sglang-expert-distribution",
        &files,
        "global",
        &what,
    )
}

/// TensorRT-LLM load statistics directory.
pub fn capture_trtllm(inputs: &[PathBuf], opts: &CaptureOptions) -> Result<Trace, CaptureError> {
    let mut files = Vec::new();
    for dir in inputs {
        if !dir.is_dir() {
            return Err(CaptureError::input(
                dir,
                "TensorRT-LLM statistics are a directory (meta_info.json + rank{r}.safetensors)",
            ));
        }
        let meta = dir.join("meta_info.json");
        if !meta.exists() {
            return Err(CaptureError::input(dir, "no meta_info.json"));
        }
        let text = std::fs::read_to_string(&meta)
            .map_err(|e| CaptureError::input(&meta, format!("cannot read: {e}")))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| CaptureError::input(&meta, format!("not valid JSON: {e}")))?;
        files.push(meta);
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
        files.extend(ranks.into_iter().map(|(_, p)| p));
    }
    let mut counts = Counts::new();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
    {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let rank: u32 = name["rank".len()..name.len() - ".safetensors".len()]
            .parse()
            .unwrap();
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
            if t.shape.len() != 1 {
                return Err(CaptureError::input(
                    file,
                    format!("tensor '{key}' has shape {:?}, expected [experts]", t.shape),
                ));
            }
            let c: Vec<i64> = if t.dtype.is_float() {
                let f = t.to_f32();
                if f.iter().any(|x| x.fract() != 0.0 || !x.is_finite()) {
                    return Err(CaptureError::input(
                        file,
                        format!("tensor '{key}': counts are not whole numbers"),
                    ));
                }
                f.iter().map(|&x| x as i64).collect()
            } else {
                t.to_i64(file, &key)?
            };
            for (e, &x) in c.iter().enumerate() {
                let x = nonneg(x, file, &key)?;
                add(&mut counts, (iter, layer, rank), e, x);
            }
        }
    }
    let what = inputs.first().cloned().unwrap_or_default();
    finish(counts, opts, "trtllm-load-stats", &files, "recorded", &what)
}
