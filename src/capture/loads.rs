//! Load-level ingest: per-expert counts from CSV or JSON.
//!
//! Long form: columns `layer, expert, count` (required) and `step`, `rank`
//! (optional), in CSV or a JSON array of objects. Matrix form: a JSON
//! `[layers][experts]` array of counts (the DeepSeek-EPLB weight layout),
//! bare or under a key (`counts` by default).

use super::records::{json_scalar, JsonFilter};
use super::{CaptureError, CaptureOptions};
use crate::trace::meta::{
    command_line, tool_version, CaptureMeta, ModelMeta, RoutingFn, TraceMeta,
};
use crate::trace::{Loads, Trace};
use std::collections::HashMap;
use std::path::Path;

/// One parsed long-form row before it is placed.
struct Row {
    step_key: String,
    layer: u32,
    rank: u32,
    expert: u32,
    count: u64,
}

fn parse_count(raw: &str, path: &Path, line: usize) -> Result<u64, CaptureError> {
    let t = raw.trim();
    if let Ok(v) = t.parse::<u64>() {
        return Ok(v);
    }
    let msg = match t.parse::<f64>() {
        Ok(v) if v < 0.0 => format!("line {line}: count '{t}' is negative"),
        Ok(v) if v.fract() == 0.0 && v.is_finite() => return Ok(v as u64),
        Ok(_) => format!("line {line}: count '{t}' is not an integer"),
        Err(_) if t.starts_with('-') => format!("line {line}: count '{t}' is negative"),
        Err(_) => format!("line {line}: count '{t}' is not a number"),
    };
    Err(CaptureError::input(path, msg))
}

fn parse_id(raw: &str, col: &str, path: &Path, line: usize) -> Result<u32, CaptureError> {
    raw.trim().parse::<u32>().map_err(|_| {
        CaptureError::input(
            path,
            format!(
                "line {line}: {col} '{}' is not a non-negative integer",
                raw.trim()
            ),
        )
    })
}

/// Read a long-form CSV into `acc`, a record at a time (rows are not
/// kept: 10 million of them took a gigabyte). Whether the file names ranks.
/// Where [`read_csv`] hands each row: step key, layer, rank, expert, count.
pub(super) type AddRow<'a> = dyn FnMut(&str, u32, u32, u32, u64) -> Result<(), CaptureError> + 'a;

/// Read a long-form CSV, handing each row to `add` in file order; returns
/// whether it has a rank column.
pub(super) fn read_csv(
    path: &Path,
    opts: &CaptureOptions,
    add: &mut AddRow,
) -> Result<bool, CaptureError> {
    let (mut rdr, headers) = super::open_csv_untrimmed(path)?;
    let col = |name: &str| headers.iter().position(|h| h == name);
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            CaptureError::input(
                path,
                format!("missing column '{name}' (have: {})", headers.join(", ")),
            )
        })
    };
    let (li, ei, ci) = (need("layer")?, need("expert")?, need("count")?);
    let (si, ri) = (col("step"), col("rank"));
    let gi = match &opts.group_by {
        Some(g) => Some(
            col(&g.to_ascii_lowercase())
                .ok_or_else(|| CaptureError::input(path, format!("--group-by: no column '{g}'")))?,
        ),
        None => None,
    };
    if si.is_some() && gi.is_some() {
        return Err(CaptureError::input(
            path,
            "the file has a 'step' column; --group-by would replace it: use one or the other",
        ));
    }
    let filters: Vec<(usize, String)> = opts
        .filters
        .iter()
        .map(|(c, v)| {
            col(&c.to_ascii_lowercase())
                .map(|i| (i, v.clone()))
                .ok_or_else(|| CaptureError::input(path, format!("--filter: no column '{c}'")))
        })
        .collect::<Result<_, _>>()?;
    let mut rec = csv::StringRecord::new();
    let mut line = 1;
    let mut id = String::new();
    loop {
        line += 1;
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(CaptureError::input(path, format!("line {line}: {e}"))),
        }
        // fields trimmed here, as `open_csv`'s reader trims them
        if filters
            .iter()
            .any(|(c, v)| rec.get(*c).map(str::trim) != Some(v.as_str()))
        {
            continue;
        }
        let get = |c: usize| rec.get(c).unwrap_or("").trim();
        let step_key = match (si, gi) {
            (Some(s), _) => {
                use std::fmt::Write;
                id.clear();
                write!(id, "{}", parse_id(get(s), "step", path, line)?).expect("a string");
                id.as_str()
            }
            (_, Some(g)) => get(g),
            _ => "",
        };
        let layer = parse_id(get(li), "layer", path, line)?;
        let rank = match ri {
            Some(r) => parse_id(get(r), "rank", path, line)?,
            None => 0,
        };
        let expert = parse_id(get(ei), "expert", path, line)?;
        let count = parse_count(get(ci), path, line)?;
        add(step_key, layer, rank, expert, count)?;
    }
    Ok(ri.is_some())
}

/// Long-form rows placed as they are read: per (step, layer, rank) its
/// counts per expert, and which were given (a duplicate is an error).
#[derive(Default)]
struct Acc {
    /// Step keys in first-seen order, and their positions.
    step_keys: Vec<String>,
    step_of: HashMap<String, usize>,
    blocks: HashMap<(usize, u32, u32), Block>,
    rows: usize,
    max_expert: u32,
    max_rank: u32,
    /// The first duplicate row, in row order: (step key, layer, rank, expert).
    duplicate: Option<(String, u32, u32, u32)>,
}

#[derive(Default)]
struct Block {
    counts: Vec<u64>,
    /// One bit per expert: its row was seen.
    seen: Vec<u64>,
}

impl Acc {
    fn add(&mut self, step_key: &str, layer: u32, rank: u32, expert: u32, count: u64) {
        let s = match self.step_of.get(step_key) {
            Some(&s) => s,
            None => {
                self.step_keys.push(step_key.to_string());
                self.step_of
                    .insert(step_key.to_string(), self.step_keys.len() - 1);
                self.step_keys.len() - 1
            }
        };
        self.rows += 1;
        self.max_expert = self.max_expert.max(expert);
        self.max_rank = self.max_rank.max(rank);
        let b = self.blocks.entry((s, layer, rank)).or_default();
        let e = expert as usize;
        if b.counts.len() <= e {
            b.counts.resize(e + 1, 0);
            b.seen.resize(e / 64 + 1, 0);
        }
        let bit = 1u64 << (e % 64);
        if b.seen[e / 64] & bit != 0 {
            if self.duplicate.is_none() {
                self.duplicate = Some((step_key.to_string(), layer, rank, expert));
            }
            return;
        }
        b.seen[e / 64] |= bit;
        b.counts[e] = count;
    }
}

/// Read a JSON file: a matrix (bare or under `json_key`/"counts") or an
/// array of row objects.
fn read_json(path: &Path, opts: &CaptureOptions) -> Result<Vec<Row>, CaptureError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CaptureError::input(path, e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CaptureError::input(path, format!("not valid JSON: {e}")))?;
    let key = opts.json_key.as_deref().unwrap_or("counts");
    let body = match &v {
        serde_json::Value::Object(m) => m.get(key).ok_or_else(|| {
            CaptureError::input(
                path,
                format!("JSON object has no '{key}' key (use --json-key)"),
            )
        })?,
        other => other,
    };
    let arr = body.as_array().ok_or_else(|| {
        CaptureError::input(
            path,
            "expected a [layers][experts] matrix or an array of {layer, expert, count} objects",
        )
    })?;
    let mut rows = Vec::new();
    if arr.first().is_some_and(|x| x.is_array()) {
        if opts.group_by.is_some() {
            return Err(CaptureError::input(
                path,
                "--group-by needs long-form rows; this is a matrix",
            ));
        }
        for (layer, row) in arr.iter().enumerate() {
            let row = row.as_array().ok_or_else(|| {
                CaptureError::input(path, format!("matrix row {layer} is not an array"))
            })?;
            for (expert, c) in row.iter().enumerate() {
                let count = parse_count(&json_scalar(c), path, layer + 1)?;
                rows.push(Row {
                    step_key: String::new(),
                    layer: layer as u32,
                    rank: 0,
                    expert: expert as u32,
                    count,
                });
            }
        }
        return Ok(rows);
    }
    let mut filter = JsonFilter::new(opts);
    for (i, obj) in arr.iter().enumerate() {
        let line = i + 1;
        let o = obj
            .as_object()
            .ok_or_else(|| CaptureError::input(path, format!("entry {line} is not an object")))?;
        if !filter.keep(obj) {
            continue;
        }
        let field = |n: &str| o.get(n).map(json_scalar);
        let need = |n: &str| {
            field(n).ok_or_else(|| {
                CaptureError::input(path, format!("entry {line}: missing field '{n}'"))
            })
        };
        rows.push(Row {
            step_key: match (field("step"), &opts.group_by) {
                (Some(s), None) => parse_id(&s, "step", path, line)?.to_string(),
                (Some(_), Some(g)) => {
                    return Err(CaptureError::input(
                        path,
                        format!("entry {line} has a 'step' field; --group-by {g} would replace it: use one or the other"),
                    ))
                }
                (None, Some(g)) => need(g)?,
                (None, None) => String::new(),
            },
            layer: parse_id(&need("layer")?, "layer", path, line)?,
            rank: field("rank")
                .map(|r| parse_id(&r, "rank", path, line))
                .transpose()?
                .unwrap_or(0),
            expert: parse_id(&need("expert")?, "expert", path, line)?,
            count: parse_count(&need("count")?, path, line)?,
        });
    }
    filter.check(path)?;
    Ok(rows)
}

/// What a load-level file's rows say before any count is placed: the ids
/// and sizes of its trace, and the first duplicate row.
pub(super) struct Seen {
    pub rows: usize,
    /// Step keys in first-seen order.
    pub step_keys: Vec<String>,
    /// Layer ids, ascending.
    pub layer_ids: Vec<u32>,
    pub max_expert: u32,
    pub max_rank: u32,
    pub has_rank_col: bool,
    pub duplicate: Option<(String, u32, u32, u32)>,
}

/// Where a checked file's rows go: step ids, each first-seen step key's
/// position among them, experts, ranks, top-k.
pub(super) struct Layout {
    pub step_ids: Vec<u32>,
    pub step_pos: Vec<usize>,
    pub num_experts: u32,
    pub ranks: usize,
    pub top_k: u32,
}

/// The checks of a load-level file, in the order their errors are
/// reported, and its layout.
pub(super) fn layout(
    path: &Path,
    opts: &CaptureOptions,
    seen: &Seen,
) -> Result<Layout, CaptureError> {
    if seen.rows == 0 {
        return Err(CaptureError::input(
            path,
            "no rows (empty input, or --filter matched nothing)",
        ));
    }
    // steps: numeric ids as given, else group values in first-seen order
    let keys = &seen.step_keys;
    let numeric = opts.group_by.is_none() && keys.iter().all(|k| !k.is_empty());
    let step_ids: Vec<u32> = if numeric {
        let mut v: Vec<u32> = keys.iter().map(|k| k.parse().unwrap()).collect();
        v.sort_unstable();
        v
    } else {
        (0..keys.len() as u32).collect()
    };
    // position of each first-seen step key in `step_ids`
    let step_pos: Vec<usize> = if numeric {
        keys.iter()
            .map(|k| step_ids.binary_search(&k.parse().unwrap()).unwrap())
            .collect()
    } else {
        (0..keys.len()).collect()
    };
    let max_expert = seen.max_expert;
    let num_experts = match opts.model.num_experts {
        Some(n) if n <= max_expert => {
            return Err(CaptureError::input(
                path,
                format!("expert id {max_expert} out of range for --num-experts {n}"),
            ));
        }
        Some(n) => n,
        None => max_expert + 1,
    };
    if let Some((step, layer, rank, expert)) = &seen.duplicate {
        return Err(CaptureError::input(
            path,
            format!("duplicate row for step '{step}', layer {layer}, rank {rank}, expert {expert}"),
        ));
    }
    let top_k = opts
        .model
        .top_k
        .ok_or_else(|| CaptureError::input(path, "the file does not say top_k: pass --top-k"))?;
    if top_k == 0 || top_k > num_experts {
        return Err(CaptureError::input(
            path,
            format!("top_k {top_k} must be between 1 and the number of experts ({num_experts})"),
        ));
    }
    Ok(Layout {
        step_ids,
        step_pos,
        num_experts,
        ranks: seen.max_rank as usize + 1,
        top_k,
    })
}

/// The trace metadata of a checked load-level file; `total0` is the
/// token-copies of its first step and layer.
pub(super) fn meta(
    path: &Path,
    opts: &CaptureOptions,
    format: &str,
    seen: &Seen,
    lay: &Layout,
    total0: u64,
) -> TraceMeta {
    let model = ModelMeta {
        name: opts.model.name.clone().unwrap_or_else(|| "unknown".into()),
        num_experts: lay.num_experts,
        top_k: lay.top_k,
        hidden_size: opts.model.hidden_size.unwrap_or(0),
        intermediate_size: opts.model.intermediate_size.unwrap_or(0),
        num_layers: opts
            .model
            .num_layers
            .unwrap_or(*seen.layer_ids.last().unwrap() + 1),
        dtype: opts.model.dtype.clone().unwrap_or_else(|| "bf16".into()),
        routing: opts.model.routing.unwrap_or(RoutingFn::Recorded),
    };
    let capture = CaptureMeta {
        source_format: format.into(),
        files: vec![path.display().to_string()],
        ranks: lay.ranks as u32,
        tokens_per_rank: Some(total0 / (lay.top_k as u64 * lay.ranks as u64)),
        rank_assignment: if seen.has_rank_col {
            "recorded".into()
        } else {
            "global".into()
        },
        tool_version: tool_version(),
        command: command_line(),
        token_level: false,
        skipped_tokens: 0,
        logits_kept: false,
        passes_aggregated: None,
    };
    let mut meta = TraceMeta::new(model, capture);
    meta.provenance = opts.provenance.clone().unwrap_or_default();
    meta.licence = opts.licence.clone().unwrap_or_default();
    let keys = &seen.step_keys;
    if opts.group_by.is_some() || keys.iter().any(|k| k.is_empty()) {
        meta.step_labels = keys.iter().filter(|k| !k.is_empty()).cloned().collect();
    }
    meta
}

/// Ingest one load-level file into a trace (held whole in memory; see
/// [`super::loads_stream`] for the streamed CSV path).
pub fn ingest(path: &Path, opts: &CaptureOptions, format: &str) -> Result<Trace, CaptureError> {
    let mut acc = Acc::default();
    let has_rank_col = match format {
        "load-csv" => read_csv(path, opts, &mut |k, l, r, e, c| {
            acc.add(k, l, r, e, c);
            Ok(())
        })?,
        "load-json" => {
            let rows = read_json(path, opts)?;
            for r in &rows {
                acc.add(&r.step_key, r.layer, r.rank, r.expert, r.count);
            }
            rows.iter().any(|x| x.rank > 0)
        }
        other => {
            return Err(CaptureError::Usage(format!(
                "not a load-level format: {other}"
            )))
        }
    };
    let mut layer_ids: Vec<u32> = acc.blocks.keys().map(|k| k.1).collect();
    layer_ids.sort_unstable();
    layer_ids.dedup();
    let seen = Seen {
        rows: acc.rows,
        step_keys: std::mem::take(&mut acc.step_keys),
        layer_ids,
        max_expert: acc.max_expert,
        max_rank: acc.max_rank,
        has_rank_col,
        duplicate: acc.duplicate.take(),
    };
    let lay = layout(path, opts, &seen)?;
    let n = lay.num_experts as usize;
    let layer_ids = &seen.layer_ids;
    let mut loads = Loads::zeros(lay.step_ids.clone(), layer_ids.clone(), lay.ranks, n);
    for ((s, layer, rank), b) in acc.blocks.drain() {
        let l = layer_ids.binary_search(&layer).unwrap();
        let block = loads.block_mut(lay.step_pos[s], l);
        let at = rank as usize * n;
        block[at..at + b.counts.len()].copy_from_slice(&b.counts);
    }
    let meta = meta(path, opts, format, &seen, &lay, loads.total(0, 0));
    Ok(Trace {
        meta,
        loads,
        tokens: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(body: &str) -> Result<Trace, CaptureError> {
        let d = std::env::temp_dir().join(format!("llep-loads-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join(format!("c{}.csv", body.len()));
        std::fs::write(&f, body).unwrap();
        let mut opts = CaptureOptions::default();
        opts.model.top_k = Some(1);
        let t = ingest(&f, &opts, "load-csv");
        std::fs::remove_file(&f).unwrap();
        t
    }

    #[test]
    fn rows_in_any_order_land_where_their_ids_say() {
        // steps out of order, zero-padded ids, ranks, a missing row (zero)
        let t = csv("step,layer,rank,expert,count\n9,3,1,2,5\n007,0,0,0,1\n7,3,0,1,2\n9,0,1,0,4\n")
            .unwrap();
        let l = &t.loads;
        assert_eq!(
            (l.step_ids.clone(), l.layer_ids.clone()),
            (vec![7, 9], vec![0, 3])
        );
        assert_eq!((l.ranks, l.experts), (2, 3));
        assert_eq!(l.block(0, 0), &[1, 0, 0, 0, 0, 0]);
        assert_eq!(l.block(0, 1), &[0, 2, 0, 0, 0, 0]);
        assert_eq!(l.block(1, 0), &[0, 0, 0, 4, 0, 0]);
        assert_eq!(l.block(1, 1), &[0, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn the_first_duplicate_is_named_after_range_errors() {
        let e = csv("step,layer,expert,count\n1,0,0,1\n2,0,1,1\n1,0,0,2\n2,0,1,3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("duplicate row for step '1', layer 0, rank 0, expert 0"),
            "{e}"
        );
    }
}
