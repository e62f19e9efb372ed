//! SGLang expert-distribution recorder dumps -> per-expert counts.
//!
//! Read against `python/sglang/srt/eplb/expert_distribution.py` at
//! sgl-project/sglang commit 02295fe5ac5ccff3e8829800d50450351c56fb53
//! (`_StatAccumulator.dump`, `_DetailAccumulator.dump`,
//! `_DetailSinglePassGatherer.collect`, `_CircularBuffer`), the earlier
//! `python/sglang/srt/managers/expert_distribution.py` at
//! 70e157a01070422cfd30c02058014c0a5f9a92a6, and for the CSVs the
//! `dump_record` of SGLang <= v0.4.5 (same file, quoted in sgl-project/sglang
//! issue #5275). What the files hold:
//!
//! - `stat` / `stat_approx`: one file from rank 0,
//!   `expert_distribution_recorder_{time}.pt`, a dict `{rank, logical_count,
//!   average_utilization_rate_over_window}` (the last key absent in older
//!   versions). `logical_count` is int32 `[buffer_slots, num_layers,
//!   num_logical_experts]`, already summed over ranks (all-reduce). Each slot
//!   is one forward pass; slots never written are zeros (left out here); the
//!   layer axis counts every hidden layer, dense ones stay zero (left out).
//!   When the circular buffer wrapped, slot order is rotated: the recorder
//!   does not save where it stopped.
//! - `per_pass` / `per_token`: one file per rank,
//!   `expert_distribution_recorder_{time}_{rank}.pt`, a dict `{records,
//!   last_physical_to_logical_map}`; each record is a dict with
//!   `forward_pass_id`, `rank`, `gatherer_key`, `global_physical_count`
//!   (int `[num_layers, num_physical_experts]`); `per_token` records add
//!   `topk_ids_of_layer` (int32 `[num_layers, tokens, 8]`, physical ids,
//!   unused slots -1) with `input_ids`, `positions`, `extend_seq_lens`,
//!   `forward_mode`, `misc_objects` (older versions have no
//!   `global_physical_count` there: it is counted from the ids). Physical
//!   ids are mapped to logical ones with the map; records of all ranks are
//!   keyed by `forward_pass_id` and summed over ranks.
//! - older CSVs, one per rank, `expert_distribution_rank{r}_timestamp{t}.csv`:
//!   `layer_id,expert_id,count` over the whole recording window (one step;
//!   the number of passes is not recorded).
//!
//! In every mode a rank counts the tokens it routed: with tensor parallelism
//! and no DP attention every rank routes the same tokens. The stat dump has
//! then already multiplied the counts by the TP size (nothing here can tell);
//! per-rank files with identical counts are counted once.

use super::{add, finish, merge_ranks, nonneg, whole_counts, Counts, Finish};
use crate::capture::pt::{read_pt, Value};
use crate::capture::tensor::Tensor;
use crate::capture::{CaptureError, CaptureOptions};
use crate::trace::Trace;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "sglang-expert-distribution";

/// SGLang expert-distribution recorder dumps: `.pt` files of one mode, or
/// the older per-rank CSVs (directories are expanded). Counts are summed over
/// ranks (`rank_assignment` "global").
pub fn capture_sglang(inputs: &[PathBuf], opts: &CaptureOptions) -> Result<Trace, CaptureError> {
    let files = crate::capture::routed::expand(inputs, &["pt", "csv"])?;
    let csv = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")))
        .count();
    if csv > 0 && csv < files.len() {
        return Err(CaptureError::input(
            &files[0],
            "mix of .pt dumps and .csv files: give one kind of SGLang dump",
        ));
    }
    let mut f = Finish::new(FORMAT, &files, "global");
    let counts = if csv > 0 {
        f.passes_aggregated = Some(0);
        f.notes
            .push("SGLang CSV: counts sum the whole recording window".into());
        legacy_csv(&files, &mut f.notes)?
    } else {
        read_dumps(&files, &mut f)?
    };
    f.drop_empty_layers = true;
    f.drop_empty_steps = true;
    finish(counts, opts, f)
}

fn read_dumps(files: &[PathBuf], f: &mut Finish) -> Result<Counts, CaptureError> {
    let mut stat = Counts::new();
    let mut per_rank: BTreeMap<u32, Counts> = BTreeMap::new();
    let mut step_base = 0u32;
    let mut top_k: Option<Option<u32>> = None;
    for file in files {
        let v = read_pt(file)?;
        if let Some(lc) = v.get("logical_count") {
            let t = lc
                .as_tensor()
                .ok_or_else(|| CaptureError::input(file, "'logical_count' is not a tensor"))?;
            let passes = logical_count(t, file, step_base, &mut stat)?;
            if t.shape.len() == 2 {
                f.passes_aggregated = Some(0);
            }
            step_base += passes;
        } else if let Some(Value::List(records)) = v.get("records") {
            let map = v.get("last_physical_to_logical_map");
            for (i, rec) in records.iter().enumerate() {
                if let Some(k) = record(rec, i, map, file, &mut per_rank)? {
                    top_k = Some(match top_k {
                        None => Some(k),
                        Some(prev) => prev.filter(|&p| p == k),
                    });
                }
            }
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
    if !stat.is_empty() && !per_rank.is_empty() {
        return Err(CaptureError::input(
            &files[0],
            "mix of stat-mode and per-pass dumps: give the dumps of one recorder mode",
        ));
    }
    f.top_k = top_k.flatten();
    if stat.is_empty() {
        Ok(merge_ranks(per_rank, true, &mut f.notes))
    } else {
        Ok(stat)
    }
}

/// Stat mode: `[slots, layers, experts]` (or `[layers, experts]`, one step).
fn logical_count(
    t: &Tensor,
    file: &Path,
    step_base: u32,
    counts: &mut Counts,
) -> Result<u32, CaptureError> {
    let (p_n, l_n, e_n) = match *t.shape.as_slice() {
        [p, l, e] => (p, l, e),
        [l, e] => (1, l, e),
        ref s => {
            return Err(CaptureError::input(
                file,
                format!("'logical_count' has shape {s:?}, expected [passes, layers, experts]"),
            ))
        }
    };
    let c = whole_counts(t, file, "logical_count")?;
    for p in 0..p_n {
        for l in 0..l_n {
            for e in 0..e_n {
                let x = nonneg(c[(p * l_n + l) * e_n + e], file, "logical_count")?;
                add(counts, (step_base + p as u32, l as u32, 0), e, x);
            }
        }
    }
    Ok(p_n as u32)
}

fn int_field(rec: &Value, key: &str, i: usize, file: &Path) -> Result<Option<u32>, CaptureError> {
    match rec.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_int()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| {
                CaptureError::input(
                    file,
                    format!("record {i}: '{key}' is not a non-negative integer"),
                )
            }),
    }
}

/// One per-pass record, physical counts mapped onto logical experts into
/// the counts of its rank. Returns, for per-token records, the number of ids
/// per token (top-k) when every routed token has the same.
fn record(
    rec: &Value,
    i: usize,
    top_map: Option<&Value>,
    file: &Path,
    per_rank: &mut BTreeMap<u32, Counts>,
) -> Result<Option<u32>, CaptureError> {
    let err = |m: String| CaptureError::input(file, format!("record {i}: {m}"));
    let pass = int_field(rec, "forward_pass_id", i, file)?.unwrap_or(i as u32);
    let rank = int_field(rec, "rank", i, file)?.unwrap_or(0);
    // The map sits at the top level; records carrying their own are accepted.
    let map = match rec.get("last_physical_to_logical_map").or(top_map) {
        Some(Value::Tensor(m)) => m,
        _ => return Err(err("no 'last_physical_to_logical_map' tensor".into())),
    };
    let &[l_n, ph_n] = map.shape.as_slice() else {
        return Err(err(format!(
            "physical-to-logical map has shape {:?}, expected [layers, physical_experts]",
            map.shape
        )));
    };
    let m = map.to_i64(file, "last_physical_to_logical_map")?;
    let ids = match rec.get("topk_ids_of_layer") {
        Some(Value::Tensor(t)) => Some(topk_counts(t, l_n, ph_n, file, i)?),
        Some(_) => return Err(err("'topk_ids_of_layer' is not a tensor".into())),
        None => None,
    };
    let physical: Vec<i64> = match rec.get("global_physical_count") {
        Some(Value::Tensor(g)) => {
            if g.shape != [l_n, ph_n] {
                return Err(err(format!(
                    "'global_physical_count' has shape {:?}, the map {:?}",
                    g.shape, map.shape
                )));
            }
            let c = whole_counts(g, file, "global_physical_count")?;
            if let Some((from_ids, _)) = &ids {
                if from_ids != &c {
                    return Err(err(
                        "'global_physical_count' disagrees with the counts of 'topk_ids_of_layer'"
                            .into(),
                    ));
                }
            }
            c
        }
        Some(_) => return Err(err("'global_physical_count' is not a tensor".into())),
        None => match &ids {
            Some((c, _)) => c.clone(),
            None => {
                return Err(err(
                    "neither 'global_physical_count' nor 'topk_ids_of_layer'".into(),
                ))
            }
        },
    };
    let counts = per_rank.entry(rank).or_default();
    for l in 0..l_n {
        for ph in 0..ph_n {
            let logical = m[l * ph_n + ph];
            if !(0..=u16::MAX as i64).contains(&logical) {
                return Err(err(format!("logical expert id {logical} out of range")));
            }
            let x = nonneg(physical[l * ph_n + ph], file, "global_physical_count")?;
            add(counts, (pass, l as u32, rank), logical as usize, x);
        }
    }
    Ok(ids.and_then(|(_, k)| k))
}

/// Physical counts `[layers, physical]` from per-token ids `[layers, tokens,
/// slots]` (-1 = empty slot), and the ids per routed token when constant.
fn topk_counts(
    t: &Tensor,
    l_n: usize,
    ph_n: usize,
    file: &Path,
    i: usize,
) -> Result<(Vec<i64>, Option<u32>), CaptureError> {
    let &[tl, t_n, s_n] = t.shape.as_slice() else {
        return Err(CaptureError::input(
            file,
            format!(
                "record {i}: 'topk_ids_of_layer' has shape {:?}, expected [layers, tokens, k]",
                t.shape
            ),
        ));
    };
    if tl != l_n {
        return Err(CaptureError::input(
            file,
            format!("record {i}: 'topk_ids_of_layer' has {tl} layers, the map {l_n}"),
        ));
    }
    let ids = t.to_i64(file, "topk_ids_of_layer")?;
    let mut out = vec![0i64; l_n * ph_n];
    let mut k: Option<Option<u32>> = None;
    for l in 0..l_n {
        for tok in 0..t_n {
            let row = &ids[(l * t_n + tok) * s_n..(l * t_n + tok + 1) * s_n];
            let mut n = 0u32;
            for &id in row {
                if id == -1 {
                    continue;
                }
                if !(0..ph_n as i64).contains(&id) {
                    return Err(CaptureError::input(
                        file,
                        format!("record {i}: physical expert id {id} out of range (layer {l}, token {tok})"),
                    ));
                }
                out[l * ph_n + id as usize] += 1;
                n += 1;
            }
            if n > 0 {
                k = Some(match k {
                    None => Some(n),
                    Some(prev) => prev.filter(|&p| p == n),
                });
            }
        }
    }
    Ok((out, k.flatten()))
}

/// Rank from `expert_distribution_rank{r}_timestamp{t}.csv`.
fn csv_rank(file: &Path) -> Option<u32> {
    let name = file.file_name()?.to_str()?;
    let rest = &name[name.find("rank")? + 4..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn legacy_csv(files: &[PathBuf], notes: &mut Vec<String>) -> Result<Counts, CaptureError> {
    let mut per_rank: BTreeMap<u32, Counts> = BTreeMap::new();
    for (fi, file) in files.iter().enumerate() {
        let rank = csv_rank(file).unwrap_or(fi as u32);
        let (mut rdr, headers) = crate::capture::open_csv(file)?;
        if headers != ["layer_id", "expert_id", "count"] {
            return Err(CaptureError::input(
                file,
                format!(
                    "header is '{}', an SGLang CSV has 'layer_id,expert_id,count'",
                    headers.join(",")
                ),
            ));
        }
        let counts = per_rank.entry(rank).or_default();
        for (i, rec) in rdr.records().enumerate() {
            let ln = i + 2;
            let rec = rec.map_err(|e| CaptureError::input(file, format!("line {ln}: {e}")))?;
            let num = |c: usize| -> Result<u64, CaptureError> {
                rec.get(c).unwrap_or("").parse::<u64>().map_err(|_| {
                    CaptureError::input(
                        file,
                        format!(
                            "line {ln}: '{}' is not a non-negative integer",
                            rec.get(c).unwrap_or("")
                        ),
                    )
                })
            };
            let (l, e, c) = (num(0)?, num(1)?, num(2)?);
            if l > u32::MAX as u64 || e > u16::MAX as u64 {
                return Err(CaptureError::input(
                    file,
                    format!("line {ln}: layer {l} or expert {e} out of range"),
                ));
            }
            add(counts, (0, l as u32, rank), e as usize, c);
        }
    }
    Ok(merge_ranks(per_rank, true, notes))
}
