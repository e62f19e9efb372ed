//! Per-token routing (chosen expert ids, maybe weights) -> token-level trace.
//!
//! Formats:
//! - `pt-routing`: `torch.save` dicts, one file per (step, layer), with an
//!   ids tensor `[tokens, k]` and optionally a weights tensor and scalars for
//!   layer, step and sequence length. Default keys are FLAME-MoE's
//!   (`indices`, `scores`, `layer`, `epoch` as the step, `sequence_length`);
//!   `--field expert=KEY --field weight=KEY --field layer=KEY --field
//!   step=KEY --field sequence_length=KEY` rename them.
//! - `jsonl`/`csv`: one record per token, fields mapped with `--field`
//!   (`expert` required: a list, or in CSV ids separated by spaces, `;` or
//!   `|`; `weight`, `layer`, `step`, `rank`, `token`, `sequence` optional;
//!   defaults are the same names).
//! - `megatron-jsonl`: Megatron-LM `--moe-routing-trace-path` files
//!   `router_trace_rank{r}.jsonl`, one line per (step, block, layer): `{step,
//!   stage, block, layer, rank, num_tokens, topk, top_indices}` (+ `mtp_idx`
//!   on MTP heads, which are left out: see [`megatron_decoder`]);
//!   `top_indices` nested `[tokens][k]` (flat accepted). `layer` is the index
//!   in the model chunk's `decoder.layers` (0-based, local to a pipeline
//!   stage); dense layers have no router and no record. A training step
//!   holds every micro-batch of the iteration, and a router recomputed for
//!   activation checkpointing records its tokens twice.
//! - `vllm-routed`: vLLM routed-experts arrays (`--enable-return-routed-experts`),
//!   `.npy` integer `[tokens, num_hidden_layers, k]`, one file per request:
//!   [`vllm`].
//! - `sglang-per-token`: SGLang expert-distribution `per_token` dumps, the
//!   per-token physical ids mapped to logical experts: [`sglang_tokens`].
//!
//! Weights are the source's when it has them; otherwise every slot gets
//! 1/k (stated in the trace provenance), since a trace row always has k
//! weights. Expert ids are checked against `--num-experts` when given, else
//! the number of experts is the largest id + 1.

pub mod sglang_tokens;
pub mod vllm;
pub use sglang_tokens::capture_sglang_tokens;
pub use vllm::{capture_vllm, capture_vllm_with, VllmOptions};

use super::pt::{read_pt, Value};
use super::records::{JsonFilter, StepGroups};
use super::sink::{capture_meta, model_meta, trace_meta, TokenSink};
use super::{CaptureError, CaptureOptions};
use crate::trace::{Loads, RoutingFn, TokenTrace, TraceMeta};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Result of a routed capture.
#[derive(Debug, Clone)]
pub struct RoutedReport {
    pub loads: Loads,
    pub meta: TraceMeta,
    pub tokens: u64,
    pub had_weights: bool,
}

fn field<'a>(opts: &'a CaptureOptions, name: &str) -> Option<&'a str> {
    opts.fields
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Expand directories into files with one of `exts`, in name order.
pub fn expand(inputs: &[PathBuf], exts: &[&str]) -> Result<Vec<PathBuf>, CaptureError> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CaptureError::input(p, format!("cannot list: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(CaptureError::input(
                    p,
                    format!("directory holds no .{} files", exts.join(" or .")),
                ));
            }
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Shared driver: stream chunks from `files` through a sink.
struct Driver<'a> {
    opts: &'a CaptureOptions,
    out: &'a Path,
    format: &'a str,
    files: Vec<PathBuf>,
    sink: Option<TokenSink>,
    top_k: Option<usize>,
    had_weights: bool,
    missing_weights: bool,
    /// Facts about the reading, appended to the provenance.
    notes: Vec<String>,
}

impl<'a> Driver<'a> {
    fn new(opts: &'a CaptureOptions, out: &'a Path, format: &'a str, files: Vec<PathBuf>) -> Self {
        Self {
            opts,
            out,
            format,
            files,
            sink: None,
            top_k: None,
            had_weights: false,
            missing_weights: false,
            notes: Vec::new(),
        }
    }

    fn note(&mut self, n: String) {
        self.notes.push(n);
    }

    fn provisional(&self, k: usize) -> TraceMeta {
        let model = model_meta(
            self.opts,
            None,
            self.opts.model.num_experts.unwrap_or(0),
            k as u32,
            RoutingFn::Recorded,
            0,
        );
        trace_meta(
            self.opts,
            model,
            capture_meta(self.format, &self.files, "contiguous"),
        )
    }

    fn push(&mut self, chunk: &TokenTrace, file: &Path, weights: bool) -> Result<(), CaptureError> {
        if chunk.is_empty() {
            return Ok(());
        }
        match self.top_k {
            None => self.top_k = Some(chunk.top_k),
            Some(k) if k != chunk.top_k => {
                return Err(CaptureError::input(
                    file,
                    format!("top-k {} where earlier files have {k}", chunk.top_k),
                ))
            }
            _ => {}
        }
        if weights {
            self.had_weights = true;
        } else {
            self.missing_weights = true;
        }
        if self.sink.is_none() {
            if self.opts.keep_logits {
                return Err(CaptureError::Usage(format!(
                    "--keep-logits: the {} format has no logits",
                    self.format
                )));
            }
            let m = self.provisional(chunk.top_k);
            self.sink = Some(TokenSink::create(self.out, &m, false)?);
        }
        self.sink.as_mut().unwrap().write(chunk, file)
    }

    fn finish(self, rank_assignment: &str) -> Result<RoutedReport, CaptureError> {
        let what = self.files.first().cloned().unwrap_or_default();
        let sink = self
            .sink
            .ok_or_else(|| CaptureError::input(&what, "no token rows found in the input"))?;
        let k = self.top_k.unwrap();
        let seen = sink.experts_seen() as u32;
        let e_n = self.opts.model.num_experts.unwrap_or(seen);
        let layers = 0;
        let model = model_meta(
            self.opts,
            None,
            e_n,
            k as u32,
            self.opts.model.routing.unwrap_or(RoutingFn::Recorded),
            layers,
        );
        let mut meta = trace_meta(
            self.opts,
            model,
            capture_meta(self.format, &self.files, rank_assignment),
        );
        let mut notes = self.notes;
        if self.missing_weights {
            notes.push(
                "weights: the source has none for some or all tokens; those rows carry 1/k".into(),
            );
        }
        if !notes.is_empty() {
            let note = notes.join("; ");
            meta.provenance = if meta.provenance.is_empty() {
                note
            } else {
                format!("{}; {note}", meta.provenance)
            };
        }
        let tokens = sink.tokens;
        let loads = sink.finish(meta.clone(), &what)?;
        if meta.model.num_layers == 0 {
            meta.model.num_layers = loads.layer_ids.last().map_or(0, |&l| l + 1);
        }
        Ok(RoutedReport {
            loads,
            meta,
            tokens,
            had_weights: self.had_weights,
        })
    }
}

fn check_id(v: i64, file: &Path, what: &str) -> Result<u16, CaptureError> {
    if v < 0 || v > u16::MAX as i64 {
        return Err(CaptureError::input(
            file,
            format!("{what}: expert id {v} out of range"),
        ));
    }
    Ok(v as u16)
}

fn scalar(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_int)
}

/// `torch.save` dicts of per-token ids (FLAME-MoE layout by default).
pub fn capture_pt(
    inputs: &[PathBuf],
    out: &Path,
    opts: &CaptureOptions,
) -> Result<RoutedReport, CaptureError> {
    let files = expand(inputs, &["pt"])?;
    let mut d = Driver::new(opts, out, "pt-routing", files.clone());
    let pb = opts.progress.get();
    pb.start("capture", files.len() as u64);
    for file in &files {
        let v = read_pt(file)?;
        if !matches!(v, Value::Dict(_)) {
            return Err(CaptureError::input(
                file,
                format!("expected a dict of tensors, found a {}", v.kind()),
            ));
        }
        let pick = |name: &str, defaults: &[&'static str]| -> Option<String> {
            match field(opts, name) {
                Some(k) => Some(k.to_string()),
                None => defaults
                    .iter()
                    .find(|k| v.get(k).is_some())
                    .map(|k| k.to_string()),
            }
        };
        let ekey =
            pick("expert", &["indices", "topk_ids", "expert_ids", "experts"]).ok_or_else(|| {
                CaptureError::input(
                    file,
                    format!(
                        "no expert-id tensor (keys: {}); pass --field expert=KEY",
                        v.keys().join(", ")
                    ),
                )
            })?;
        let ids = v.get(&ekey).and_then(Value::as_tensor).ok_or_else(|| {
            CaptureError::input(file, format!("'{ekey}' is missing or not a tensor"))
        })?;
        let &[t_n, k] = ids.shape.as_slice() else {
            return Err(CaptureError::input(
                file,
                format!("'{ekey}' has shape {:?}, expected [tokens, k]", ids.shape),
            ));
        };
        if k == 0 {
            return Err(CaptureError::input(file, format!("'{ekey}' has k = 0")));
        }
        let ids = ids.to_i64(file, &ekey)?;
        let wkey = pick("weight", &["scores", "topk_weights", "weights", "probs"]);
        let weights = match &wkey {
            Some(w) => {
                let t = v.get(w).and_then(Value::as_tensor).ok_or_else(|| {
                    CaptureError::input(file, format!("'{w}' is missing or not a tensor"))
                })?;
                if t.shape != [t_n, k] || !t.dtype.is_float() {
                    return Err(CaptureError::input(
                        file,
                        format!(
                            "'{w}' is {} {:?}, expected floats of shape [{t_n}, {k}]",
                            t.dtype.name(),
                            t.shape
                        ),
                    ));
                }
                Some(t.to_f32())
            }
            None => None,
        };
        let layer = match pick("layer", &["layer", "layer_id", "layer_idx"]) {
            Some(key) => scalar(&v, &key).ok_or_else(|| {
                CaptureError::input(file, format!("layer key '{key}' is not an integer"))
            })?,
            None => {
                return Err(CaptureError::input(
                    file,
                    "no layer scalar in the file: pass --field layer=KEY",
                ))
            }
        };
        let step = match pick("step", &["step", "iteration", "epoch"]) {
            Some(key) => scalar(&v, &key).ok_or_else(|| {
                CaptureError::input(file, format!("step key '{key}' is not an integer"))
            })?,
            None => 0,
        };
        let seq_len = opts.sequence_length.map(i64::from).or_else(|| {
            pick("sequence_length", &["sequence_length", "seq_len"])
                .and_then(|key| scalar(&v, &key))
        });
        if let Some(n) = v.get("num_tokens").and_then(Value::as_int) {
            if n as usize != t_n {
                return Err(CaptureError::input(
                    file,
                    format!("num_tokens says {n}, the ids tensor has {t_n} rows"),
                ));
            }
        }
        if layer < 0 || step < 0 || seq_len.is_some_and(|s| s <= 0) {
            return Err(CaptureError::input(
                file,
                "layer, step and sequence length must be positive",
            ));
        }
        let mut chunk = TokenTrace::new(k);
        let uniform = vec![1.0 / k as f32; k];
        let mut row = vec![0u16; k];
        for t in 0..t_n {
            for j in 0..k {
                row[j] = check_id(ids[t * k + j], file, &format!("token {t}"))?;
            }
            let w = weights
                .as_ref()
                .map_or(&uniform[..], |w| &w[t * k..(t + 1) * k]);
            let seq = seq_len.map_or(0, |s| (t as i64 / s) as u32);
            chunk.push(
                step as u32,
                layer as u32,
                opts.rank.unwrap_or(0),
                t as u32,
                seq,
                &row,
                w,
            );
        }
        d.push(&chunk, file, weights.is_some())?;
        pb.inc(1);
    }
    pb.finish();
    d.finish("contiguous")
}

/// Ids from a JSON value: a list of ints (or nested lists, flattened).
fn json_ids(v: &serde_json::Value, out: &mut Vec<i64>) -> bool {
    match v {
        serde_json::Value::Array(a) => a.iter().all(|x| json_ids(x, out)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => {
                out.push(i);
                true
            }
            None => false,
        },
        _ => false,
    }
}

fn json_floats(v: &serde_json::Value, out: &mut Vec<f32>) -> bool {
    match v {
        serde_json::Value::Array(a) => a.iter().all(|x| json_floats(x, out)),
        serde_json::Value::Number(n) => n.as_f64().map(|f| out.push(f as f32)).is_some(),
        _ => false,
    }
}

/// Token counter per (step, layer, rank) for sources without token ids.
#[derive(Default)]
struct Counter(BTreeMap<(u32, u32, u32), u32>);
impl Counter {
    fn next(&mut self, key: (u32, u32, u32)) -> u32 {
        let c = self.0.entry(key).or_insert(0);
        *c += 1;
        *c - 1
    }
}

/// JSONL records, generic (field mapping) or Megatron-LM router traces.
pub fn capture_jsonl(
    inputs: &[PathBuf],
    out: &Path,
    opts: &CaptureOptions,
    megatron: bool,
) -> Result<RoutedReport, CaptureError> {
    let files = expand(inputs, &["jsonl", "json"])?;
    let format = if megatron { "megatron-jsonl" } else { "jsonl" };
    let mut d = Driver::new(opts, out, format, files.clone());
    let mut rd = JsonRecords::new(opts, megatron);
    let mut jf = JsonFilter::new(opts);
    let pb = opts.progress.get();
    pb.start("capture", files.len() as u64);
    let mut skipped = BTreeMap::new();
    for file in &files {
        let f = std::fs::File::open(file)
            .map_err(|e| CaptureError::input(file, format!("cannot read: {e}")))?;
        rd.start_file();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let ln = i + 1;
            let line = line.map_err(|e| CaptureError::input(file, format!("line {ln}: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let rec: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| CaptureError::input(file, format!("line {ln}: not JSON: {e}")))?;
            if !jf.keep(&rec) {
                continue;
            }
            if megatron && !megatron_decoder(&rec, &mut skipped) {
                continue;
            }
            rd.push(&rec, file, ln)?;
        }
        jf.check(file)?;
        if let Some(c) = rd.chunk.take() {
            d.push(&c, file, rd.has_w)?;
        }
        pb.inc(1);
    }
    pb.finish();
    for (what, n) in skipped {
        d.note(format!("{n} Megatron records of {what} left out"));
    }
    if let (Some(g), Some(sink)) = (rd.groups, d.sink.as_mut()) {
        sink.set_step_labels(g.into_labels());
    }
    d.finish(if megatron { "recorded" } else { "contiguous" })
}

/// Field names of a JSONL token record (after `--field` mapping) and the
/// state of the file being read: one record may hold one token (plain
/// JSONL) or a layer's tokens (Megatron).
struct JsonRecords<'a> {
    opts: &'a CaptureOptions,
    megatron: bool,
    /// expert, weight, layer, step, rank, token, sequence
    names: [String; 7],
    groups: Option<StepGroups>,
    chunk: Option<TokenTrace>,
    counter: Counter,
    has_w: bool,
    ids: Vec<i64>,
    ws: Vec<f32>,
}

impl<'a> JsonRecords<'a> {
    fn new(opts: &'a CaptureOptions, megatron: bool) -> Self {
        let f = |name: &'static str| field(opts, name).unwrap_or(name).to_string();
        let expert = if megatron {
            field(opts, "expert").unwrap_or("top_indices").to_string()
        } else {
            f("expert")
        };
        Self {
            opts,
            megatron,
            names: [
                expert,
                f("weight"),
                f("layer"),
                f("step"),
                f("rank"),
                f("token"),
                f("sequence"),
            ],
            groups: StepGroups::new(opts),
            chunk: None,
            counter: Counter::default(),
            has_w: true,
            ids: Vec::new(),
            ws: Vec::new(),
        }
    }

    fn start_file(&mut self) {
        self.chunk = None;
        self.counter = Counter::default();
        self.has_w = true;
    }

    /// One record's tokens into the file's chunk.
    fn push(
        &mut self,
        rec: &serde_json::Value,
        file: &Path,
        ln: usize,
    ) -> Result<(), CaptureError> {
        let [fe, fw, fl, fs, fr, ft, fq] = &self.names;
        let int = |name: &str, default: Option<u32>| -> Result<u32, CaptureError> {
            match rec.get(name) {
                Some(v) => v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| {
                        CaptureError::input(
                            file,
                            format!("line {ln}: '{name}' is not a non-negative integer"),
                        )
                    }),
                None => default.ok_or_else(|| {
                    CaptureError::input(
                        file,
                        format!("line {ln}: missing field '{name}' (map it with --field)"),
                    )
                }),
            }
        };
        let step = match self.groups.as_mut() {
            Some(g) => g.json_step(rec, fs, file, ln)?,
            None => int(fs, Some(0))?,
        };
        let layer = int(fl, if self.megatron { None } else { Some(0) })?;
        let rank = int(fr, Some(self.opts.rank.unwrap_or(0)))?;
        let (ids, ws) = (&mut self.ids, &mut self.ws);
        ids.clear();
        let ev = rec.get(fe).ok_or_else(|| {
            CaptureError::input(
                file,
                format!("line {ln}: missing field '{fe}' (map it with --field expert=NAME)"),
            )
        })?;
        if !json_ids(ev, ids) {
            return Err(CaptureError::input(
                file,
                format!("line {ln}: '{fe}' is not a list of integer ids"),
            ));
        }
        ws.clear();
        let got_w = match rec.get(fw) {
            Some(v) if !json_floats(v, ws) => {
                return Err(CaptureError::input(
                    file,
                    format!("line {ln}: '{fw}' is not a list of numbers"),
                ))
            }
            Some(_) => true,
            None => false,
        };
        self.has_w &= got_w;
        let (n_tok, k) = if self.megatron {
            (
                int("num_tokens", None)? as usize,
                int("topk", None)? as usize,
            )
        } else {
            (1, ids.len())
        };
        if k == 0 || ids.len() != n_tok * k {
            return Err(CaptureError::input(
                file,
                format!(
                    "line {ln}: {} ids where {n_tok} tokens x top-k {k} were expected",
                    ids.len()
                ),
            ));
        }
        if got_w && ws.len() != ids.len() {
            return Err(CaptureError::input(
                file,
                format!("line {ln}: {} weights for {} ids", ws.len(), ids.len()),
            ));
        }
        let c = self.chunk.get_or_insert_with(|| TokenTrace::new(k));
        if c.top_k != k {
            return Err(CaptureError::input(
                file,
                format!("line {ln}: top-k {k} where earlier lines have {}", c.top_k),
            ));
        }
        let uniform = vec![1.0 / k as f32; k];
        let mut row = vec![0u16; k];
        for t in 0..n_tok {
            for j in 0..k {
                row[j] = check_id(ids[t * k + j], file, &format!("line {ln}"))?;
            }
            let token = match rec.get(ft.as_str()).filter(|_| !self.megatron) {
                Some(_) => int(ft, None)?,
                None => self.counter.next((step, layer, rank)),
            };
            let seq = match rec.get(fq.as_str()) {
                Some(_) => int(fq, None)?,
                None => self.opts.sequence_length.map_or(0, |s| token / s.max(1)),
            };
            let w = if got_w {
                &ws[t * k..(t + 1) * k]
            } else {
                &uniform[..]
            };
            c.push(step, layer, rank, token, seq, &row, w);
        }
        Ok(())
    }
}

/// Megatron-LM router traces (`megatron/core/transformer/moe/router_trace.py`,
/// NVIDIA/Megatron-LM commit d98e8a64ddf34856e74b24714e3bedb2f5a39553) also
/// hold MTP heads (`block` "mtp", `layer` the index inside the head, plus
/// `mtp_idx`): their layer ids collide with decoder layers, so only decoder
/// records at the one stage written, "pre_dispatch", are read. Records
/// without `block`/`stage` (older traces) are decoder records.
fn megatron_decoder(rec: &serde_json::Value, skipped: &mut BTreeMap<String, u64>) -> bool {
    let block = rec
        .get("block")
        .and_then(|b| b.as_str())
        .unwrap_or("decoder");
    let stage = rec
        .get("stage")
        .and_then(|b| b.as_str())
        .unwrap_or("pre_dispatch");
    let what = if block != "decoder" {
        format!("block '{block}'")
    } else if stage != "pre_dispatch" {
        format!("stage '{stage}'")
    } else {
        return true;
    };
    *skipped.entry(what).or_insert(0) += 1;
    false
}

/// CSV records: one token per row, ids in one column separated by spaces,
/// `;`, `|` or brackets/commas inside quotes.
pub fn capture_csv(
    inputs: &[PathBuf],
    out: &Path,
    opts: &CaptureOptions,
) -> Result<RoutedReport, CaptureError> {
    let files = expand(inputs, &["csv"])?;
    let mut d = Driver::new(opts, out, "csv", files.clone());
    let f = |name: &'static str| field(opts, name).unwrap_or(name).to_ascii_lowercase();
    let (fe, fw, fl, fs, fr, ft, fq) = (
        f("expert"),
        f("weight"),
        f("layer"),
        f("step"),
        f("rank"),
        f("token"),
        f("sequence"),
    );
    let mut groups = StepGroups::new(opts);
    for file in &files {
        let (mut rdr, headers) = super::open_csv(file)?;
        let gi = groups.as_ref().map(|g| g.csv_column(&headers, &fs, file));
        let gi = gi.transpose()?;
        let col = |n: &str| headers.iter().position(|h| h == n);
        let ei = col(&fe).ok_or_else(|| {
            CaptureError::input(
                file,
                format!(
                    "no column '{fe}' (have: {}); map it with --field expert=COLUMN",
                    headers.join(", ")
                ),
            )
        })?;
        let (wi, li, si, ri, ti, qi) = (col(&fw), col(&fl), col(&fs), col(&fr), col(&ft), col(&fq));
        let filters: Vec<(usize, String)> = opts
            .filters
            .iter()
            .map(|(c, v)| {
                col(&c.to_ascii_lowercase())
                    .map(|i| (i, v.clone()))
                    .ok_or_else(|| CaptureError::input(file, format!("--filter: no column '{c}'")))
            })
            .collect::<Result<_, _>>()?;
        let mut chunk: Option<TokenTrace> = None;
        let mut counter = Counter::default();
        let mut has_w = wi.is_some();
        for (i, rec) in rdr.records().enumerate() {
            let ln = i + 2;
            let rec = rec.map_err(|e| CaptureError::input(file, format!("line {ln}: {e}")))?;
            if filters.iter().any(|(c, v)| rec.get(*c) != Some(v.as_str())) {
                continue;
            }
            let int = |c: Option<usize>, name: &str, default: u32| -> Result<u32, CaptureError> {
                match c {
                    Some(c) => rec.get(c).unwrap_or("").parse::<u32>().map_err(|_| {
                        CaptureError::input(
                            file,
                            format!(
                                "line {ln}: {name} '{}' is not a non-negative integer",
                                rec.get(c).unwrap_or("")
                            ),
                        )
                    }),
                    None => Ok(default),
                }
            };
            let (step, layer, rank) = (
                match (gi, groups.as_mut()) {
                    (Some(c), Some(g)) => g.step(rec.get(c).unwrap_or("")),
                    _ => int(si, "step", 0)?,
                },
                int(li, "layer", 0)?,
                int(ri, "rank", opts.rank.unwrap_or(0))?,
            );
            let ids: Vec<i64> = split_list(rec.get(ei).unwrap_or(""))
                .map(|x| {
                    x.parse::<i64>().map_err(|_| {
                        CaptureError::input(
                            file,
                            format!("line {ln}: expert id '{x}' is not an integer"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            let k = ids.len();
            if k == 0 {
                return Err(CaptureError::input(
                    file,
                    format!("line {ln}: no expert ids"),
                ));
            }
            let ws: Option<Vec<f32>> = match wi {
                Some(w) => Some(
                    split_list(rec.get(w).unwrap_or(""))
                        .map(|x| {
                            x.parse::<f32>().map_err(|_| {
                                CaptureError::input(
                                    file,
                                    format!("line {ln}: weight '{x}' is not a number"),
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                None => None,
            };
            if ws.as_ref().is_some_and(|w| w.len() != k) {
                return Err(CaptureError::input(
                    file,
                    format!("line {ln}: {} weights for {k} ids", ws.unwrap().len()),
                ));
            }
            has_w &= ws.is_some();
            let c = chunk.get_or_insert_with(|| TokenTrace::new(k));
            if c.top_k != k {
                return Err(CaptureError::input(
                    file,
                    format!("line {ln}: top-k {k} where earlier rows have {}", c.top_k),
                ));
            }
            let row: Vec<u16> = ids
                .iter()
                .map(|&x| check_id(x, file, &format!("line {ln}")))
                .collect::<Result<_, _>>()?;
            let token = match ti {
                Some(_) => int(ti, "token", 0)?,
                None => counter.next((step, layer, rank)),
            };
            let seq = match qi {
                Some(_) => int(qi, "sequence", 0)?,
                None => opts.sequence_length.map_or(0, |s| token / s.max(1)),
            };
            let uniform = vec![1.0 / k as f32; k];
            c.push(
                step,
                layer,
                rank,
                token,
                seq,
                &row,
                ws.as_deref().unwrap_or(&uniform),
            );
        }
        if let Some(c) = chunk {
            d.push(&c, file, has_w)?;
        }
    }
    if let (Some(g), Some(sink)) = (groups, d.sink.as_mut()) {
        sink.set_step_labels(g.into_labels());
    }
    d.finish("contiguous")
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', ';', '|', ',', '[', ']'])
        .filter(|x| !x.is_empty())
}
