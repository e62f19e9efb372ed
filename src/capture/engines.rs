//! Aggregate expert loads recorded by serving engines -> load-level trace.
//!
//! One reader per engine dump, each checked against the engine's own source
//! (file and commit cited in the reader's doc comment and in
//! `traces/README.md`, "Engine dump formats"):
//! - [`capture_sglang`]: SGLang's expert-distribution recorder (`stat`,
//!   `per_pass`, `per_token` `.pt` dumps and the older per-rank CSVs), in
//!   [`sglang`];
//! - [`capture_trtllm`]: TensorRT-LLM's `EXPERT_STATISTIC_PATH` directory, in
//!   [`trtllm`];
//! - [`capture_eplb_matrix`]: a DeepSeek-EPLB / SGLang
//!   `--init-expert-location` load matrix `[layers, logical_experts]`, in
//!   [`eplb`].
//!
//! This file holds what they share: the count table keyed by (step, layer,
//! rank) and [`finish`], which turns it into a [`Trace`] and records in the
//! metadata how many forward passes a step's counts sum
//! (`CaptureMeta::passes_aggregated`).

pub mod eplb;
pub mod sglang;
pub mod trtllm;

pub use eplb::{capture_eplb_matrix, EplbOptions};
pub use sglang::capture_sglang;
pub use trtllm::capture_trtllm;

use super::sink::{capture_meta, model_meta, trace_meta};
use super::{CaptureError, CaptureOptions};
use crate::trace::{Loads, RoutingFn, Trace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Per-expert counts keyed by (step, layer, rank).
pub(crate) type Counts = BTreeMap<(u32, u32, u32), Vec<u64>>;

pub(crate) fn add(counts: &mut Counts, key: (u32, u32, u32), e: usize, c: u64) {
    let row = counts.entry(key).or_default();
    if row.len() <= e {
        row.resize(e + 1, 0);
    }
    row[e] += c;
}

pub(crate) fn nonneg(v: i64, file: &Path, what: &str) -> Result<u64, CaptureError> {
    u64::try_from(v).map_err(|_| CaptureError::input(file, format!("{what}: negative count {v}")))
}

/// Integer counts from a tensor; float tensors must hold whole numbers.
pub(crate) fn whole_counts(
    t: &super::tensor::Tensor,
    file: &Path,
    what: &str,
) -> Result<Vec<i64>, CaptureError> {
    if !t.dtype.is_float() {
        return t.to_i64(file, what);
    }
    let f = t.to_f32();
    if f.iter().any(|x| !x.is_finite() || x.fract() != 0.0) {
        return Err(CaptureError::input(
            file,
            format!("'{what}': counts are not whole numbers"),
        ));
    }
    Ok(f.iter().map(|&x| x as i64).collect())
}

/// What a reader knows besides the counts.
pub(crate) struct Finish<'a> {
    pub format: &'a str,
    pub files: &'a [PathBuf],
    pub rank_assignment: &'a str,
    /// File named in errors about the whole input.
    pub what: &'a Path,
    /// Top-k / expert count the source states (checked against the options).
    pub top_k: Option<u32>,
    pub num_experts: Option<u32>,
    pub passes_aggregated: Option<u64>,
    /// Drop layers whose counts are zero at every step and rank: engines
    /// that size the layer axis by all hidden layers leave dense layers at 0.
    pub drop_empty_layers: bool,
    /// Drop steps whose counts are all zero (unused buffer slots).
    pub drop_empty_steps: bool,
    /// Facts about the reading, appended to the provenance.
    pub notes: Vec<String>,
}

impl<'a> Finish<'a> {
    pub fn new(format: &'a str, files: &'a [PathBuf], rank_assignment: &'a str) -> Self {
        Finish {
            format,
            files,
            rank_assignment,
            what: files.first().map_or(Path::new(""), |p| p.as_path()),
            top_k: None,
            num_experts: None,
            passes_aggregated: None,
            drop_empty_layers: false,
            drop_empty_steps: false,
            notes: Vec::new(),
        }
    }
}

/// A value the source states and the user may also give: they must agree.
fn agree(
    given: Option<u32>,
    stated: Option<u32>,
    what: &Path,
    name: &str,
) -> Result<Option<u32>, CaptureError> {
    match (given, stated) {
        (Some(g), Some(s)) if g != s => Err(CaptureError::input(
            what,
            format!("the dump says {name} {s}, the command line {g}"),
        )),
        (g, s) => Ok(g.or(s)),
    }
}

fn drop_empty(counts: &mut Counts, f: &mut Finish) {
    let zero = |v: &Vec<u64>| v.iter().all(|&x| x == 0);
    let mut by_layer: BTreeMap<u32, bool> = BTreeMap::new();
    let mut by_step: BTreeMap<u32, bool> = BTreeMap::new();
    for ((s, l, _), row) in counts.iter() {
        *by_layer.entry(*l).or_insert(true) &= zero(row);
        *by_step.entry(*s).or_insert(true) &= zero(row);
    }
    if f.drop_empty_layers {
        let empty: Vec<u32> = by_layer.iter().filter(|e| *e.1).map(|e| *e.0).collect();
        if !empty.is_empty() && empty.len() < by_layer.len() {
            counts.retain(|k, _| !empty.contains(&k.1));
            f.notes.push(format!(
                "layers {empty:?} route no token in the whole dump (dense layers) and were left out"
            ));
        }
    }
    if f.drop_empty_steps {
        let empty = by_step.values().filter(|&&z| z).count();
        if empty > 0 && empty < by_step.len() {
            counts.retain(|k, _| !by_step[&k.0]);
            f.notes.push(format!(
                "{empty} all-zero pass slots (unused recorder buffer, or passes that routed nothing) were left out"
            ));
        }
    }
}

/// Turn the count table into a load-level trace.
pub(crate) fn finish(
    mut counts: Counts,
    opts: &CaptureOptions,
    mut f: Finish,
) -> Result<Trace, CaptureError> {
    if counts.is_empty() {
        return Err(CaptureError::input(f.what, "no counts found"));
    }
    drop_empty(&mut counts, &mut f);
    let what = f.what;
    let seen = counts.values().map(Vec::len).max().unwrap_or(0);
    let e_n = match agree(opts.model.num_experts, f.num_experts, what, "num_experts")? {
        Some(n) if (n as usize) < seen => {
            return Err(CaptureError::input(
                what,
                format!("expert id {} out of range for {n} experts", seen - 1),
            ))
        }
        Some(n) => n as usize,
        None => seen,
    };
    let top_k = agree(opts.model.top_k, f.top_k, what, "top_k")?
        .ok_or_else(|| CaptureError::input(what, "the dump does not say top_k: pass --top-k"))?;
    if top_k == 0 || top_k as usize > e_n {
        return Err(CaptureError::input(
            what,
            format!("top-k {top_k} must be between 1 and the number of experts ({e_n})"),
        ));
    }
    let mut steps: Vec<u32> = counts.keys().map(|k| k.0).collect();
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
    let mut cap = capture_meta(f.format, f.files, f.rank_assignment);
    cap.ranks = ranks as u32;
    cap.tokens_per_rank = Some(loads.total(0, 0) / (top_k as u64 * ranks as u64));
    cap.passes_aggregated = f.passes_aggregated;
    let mut meta = trace_meta(opts, model, cap);
    if !f.notes.is_empty() {
        let notes = f.notes.join("; ");
        meta.provenance = if meta.provenance.is_empty() {
            notes
        } else {
            format!("{}; {notes}", meta.provenance)
        };
    }
    Ok(Trace {
        meta,
        loads,
        tokens: None,
    })
}

/// When every rank's counts are identical (tensor parallelism without DP
/// attention: each rank routes the same tokens), keep one copy on rank 0
/// instead of counting each token once per rank. Otherwise sum the ranks
/// (`sum_ranks`) or keep them apart.
pub(crate) fn merge_ranks(
    per_rank: BTreeMap<u32, Counts>,
    sum_ranks: bool,
    notes: &mut Vec<String>,
) -> Counts {
    let ranks: Vec<u32> = per_rank.keys().copied().collect();
    let strip = |c: &Counts| -> BTreeMap<(u32, u32), Vec<u64>> {
        let mut m: BTreeMap<(u32, u32), Vec<u64>> = BTreeMap::new();
        for ((s, l, _), row) in c {
            let e = m.entry((*s, *l)).or_default();
            if e.len() < row.len() {
                e.resize(row.len(), 0);
            }
            for (a, b) in e.iter_mut().zip(row) {
                *a += b;
            }
        }
        m
    };
    if ranks.len() > 1 {
        let first = strip(&per_rank[&ranks[0]]);
        if per_rank.values().skip(1).all(|c| strip(c) == first) {
            notes.push(format!(
                "the {} rank files hold identical counts (tensor parallelism: every rank routes the same tokens); counted once",
                ranks.len()
            ));
            return first
                .into_iter()
                .map(|((s, l), row)| ((s, l, 0), row))
                .collect();
        }
    }
    let mut out = Counts::new();
    for (r, c) in per_rank {
        for ((s, l, _), row) in c {
            let key = (s, l, if sum_ranks { 0 } else { r });
            for (e, x) in row.into_iter().enumerate() {
                add(&mut out, key, e, x);
            }
        }
    }
    out
}
