//! Router-logits dumps -> token-level trace.
//!
//! Layout (what the `llep_capture` hook writes, and what other dumps must
//! look like, tensor names adjustable with `--tensor-pattern`):
//! - one file per step (`.safetensors`, `.npz`), files taken in name order;
//!   the step id is the last number in the file name when every file has a
//!   distinct one, else the file's position;
//! - per MoE layer `L`, a tensor named `layer.{L}.logits` of shape
//!   `[tokens, experts]` (or `[steps, tokens, experts]`: a step axis, steps
//!   numbered on from the file's), dtype f32, f16 or bf16;
//! - optional `layer.{L}.ids` `[tokens, top_k]` (integers): the ids the model
//!   chose. Capture recomputes ids from the logits and counts the tokens whose
//!   chosen set differs (a check of the routing function); with
//!   `--routing recorded` the recorded ids are used instead;
//! - optional `layer.{L}.bias` `[experts]`: DeepSeek-V3's
//!   `e_score_correction_bias` for the sigmoid routing function;
//! - `.npy`: one array per file, `[layers, tokens, experts]` (layer ids
//!   0..L) or `[steps, layers, tokens, experts]`;
//! - a directory may hold `capture.json` (written by the hook) giving the
//!   model (experts, top_k, dims, routing function), the patterns and the
//!   sequence length; command-line options override it.
//!
//! Diagnostics (not settings): `LLEP_CAPTURE_THREADS=N` sets the number of
//! routing threads (default: the available cores, at most 8) and
//! `LLEP_CAPTURE_TIMING=1` prints the time spent waiting for reads and
//! routing, for benchmarking.

use super::routing::Router;
use super::sink::{capture_meta, model_meta, trace_meta, trailing_number, TokenSink};
use super::tensor::{read_npy, read_npz, read_safetensors, Tensor};
use super::{CaptureError, CaptureOptions};
use crate::trace::{Loads, ModelMeta, RoutingFn, TokenTrace, TraceMeta};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATTERN: &str = "layer.{layer}.logits";
pub const DEFAULT_IDS_PATTERN: &str = "layer.{layer}.ids";
pub const DEFAULT_BIAS_PATTERN: &str = "layer.{layer}.bias";
pub const CAPTURE_JSON: &str = "capture.json";

/// `capture.json`, as the hook writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct CaptureJson {
    pub model: ModelMeta,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub tensor_pattern: Option<String>,
    #[serde(default)]
    pub ids_pattern: Option<String>,
    #[serde(default)]
    pub bias_pattern: Option<String>,
    #[serde(default)]
    pub sequence_length: Option<u32>,
    #[serde(default)]
    pub source: Option<String>,
}

/// Summary of a logits capture, for the status line and tests.
#[derive(Debug, Clone)]
pub struct LogitsReport {
    pub loads: Loads,
    pub meta: TraceMeta,
    pub tokens: u64,
    pub skipped: u64,
    /// Tokens whose recomputed top-k set differs from recorded ids.
    pub ids_checked: u64,
    pub ids_mismatched: u64,
    pub logit_bytes: u64,
}

/// A pattern with one `{layer}` placeholder.
#[derive(Debug, Clone)]
pub struct Pattern {
    prefix: String,
    suffix: String,
}

impl Pattern {
    pub fn parse(p: &str) -> Result<Self, CaptureError> {
        let (a, b) = p.split_once("{layer}").ok_or_else(|| {
            CaptureError::Usage(format!("tensor pattern '{p}' has no {{layer}} placeholder"))
        })?;
        Ok(Self {
            prefix: a.into(),
            suffix: b.into(),
        })
    }
    pub fn layer_of(&self, name: &str) -> Option<u32> {
        let mid = name
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        if mid.is_empty() || !mid.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        mid.parse().ok()
    }
    pub fn name(&self, layer: u32) -> String {
        format!("{}{layer}{}", self.prefix, self.suffix)
    }
}

/// Expand directories into their dump files (name order); read
/// `capture.json` from the first directory that has one.
pub fn collect_inputs(
    inputs: &[PathBuf],
) -> Result<(Vec<PathBuf>, Option<CaptureJson>), CaptureError> {
    let mut files = Vec::new();
    let mut cj = None;
    for p in inputs {
        if p.is_dir() {
            let j = p.join(CAPTURE_JSON);
            if j.exists() && cj.is_none() {
                let text = std::fs::read_to_string(&j)
                    .map_err(|e| CaptureError::input(&j, format!("cannot read: {e}")))?;
                cj = Some(
                    serde_json::from_str::<CaptureJson>(&text)
                        .map_err(|e| CaptureError::input(&j, format!("bad capture.json: {e}")))?,
                );
            }
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| CaptureError::input(p, format!("cannot list: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    matches!(
                        f.extension().and_then(|e| e.to_str()),
                        Some("npy" | "npz" | "safetensors")
                    )
                })
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(CaptureError::input(
                    p,
                    "directory holds no .npy, .npz or .safetensors files",
                ));
            }
            files.extend(v);
        } else {
            files.push(p.clone());
        }
    }
    Ok((files, cj))
}

/// One layer's logits in a file: row `t` of step `s` starts at flat index
/// `base + s * step_stride + t * experts`.
struct Block {
    layer: u32,
    steps: usize,
    tokens: usize,
    experts: usize,
    base: usize,
    step_stride: usize,
    logits: Tensor,
    ids: Option<(Tensor, usize)>,
    bias: Option<Vec<f32>>,
}

fn load_blocks(
    path: &Path,
    pat: &Pattern,
    ids_pat: &Pattern,
    bias_pat: &Pattern,
) -> Result<Vec<Block>, CaptureError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "npy" {
        let t = read_npy(path)?;
        if !t.dtype.is_float() {
            return Err(CaptureError::input(
                path,
                format!("logits must be floating point, found {}", t.dtype.name()),
            ));
        }
        let (steps, layers, tokens, e) = match t.shape.as_slice() {
            &[l, tk, e] => (1, l, tk, e),
            &[s, l, tk, e] => (s, l, tk, e),
            s => {
                return Err(CaptureError::input(
                    path,
                    format!(
                        "a .npy of logits must be [layers, tokens, experts] or [steps, layers, tokens, experts], found shape {s:?}"
                    ),
                ))
            }
        };
        return Ok((0..layers)
            .map(|l| Block {
                layer: l as u32,
                steps,
                tokens,
                experts: e,
                base: l * tokens * e,
                step_stride: layers * tokens * e,
                logits: t.clone(),
                ids: None,
                bias: None,
            })
            .collect());
    }
    let named = match ext.as_str() {
        "npz" => read_npz(path)?,
        "safetensors" => read_safetensors(path)?,
        _ => {
            return Err(CaptureError::input(
                path,
                "not a logits dump (.npy, .npz or .safetensors)",
            ))
        }
    };
    let by_name: BTreeMap<&str, &Tensor> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut blocks = Vec::new();
    for (name, t) in &named {
        let Some(layer) = pat.layer_of(name) else {
            continue;
        };
        if !t.dtype.is_float() {
            return Err(CaptureError::input(
                path,
                format!(
                    "tensor '{name}': logits must be floating point, found {}",
                    t.dtype.name()
                ),
            ));
        }
        let (steps, tokens, e) = match t.shape.as_slice() {
            &[tk, e] => (1, tk, e),
            &[s, tk, e] => (s, tk, e),
            s => {
                return Err(CaptureError::input(
                    path,
                    format!("tensor '{name}': expected [tokens, experts] or [steps, tokens, experts], found {s:?}"),
                ))
            }
        };
        let ids = match by_name.get(ids_pat.name(layer).as_str()) {
            Some(it) => {
                let k = *it.shape.last().unwrap_or(&0);
                let want: Vec<usize> = if steps == 1 && it.shape.len() == 2 {
                    vec![tokens, k]
                } else {
                    vec![steps, tokens, k]
                };
                if it.shape != want || it.dtype.is_float() {
                    return Err(CaptureError::input(
                        path,
                        format!(
                            "tensor '{}': expected integer ids of shape {want:?}, found {} {:?}",
                            ids_pat.name(layer),
                            it.dtype.name(),
                            it.shape
                        ),
                    ));
                }
                Some(((*it).clone(), k))
            }
            None => None,
        };
        let bias = match by_name.get(bias_pat.name(layer).as_str()) {
            Some(b) => {
                if b.shape != [e] {
                    return Err(CaptureError::input(
                        path,
                        format!(
                            "tensor '{}': expected shape [{e}], found {:?}",
                            bias_pat.name(layer),
                            b.shape
                        ),
                    ));
                }
                Some(b.to_f32())
            }
            None => None,
        };
        blocks.push(Block {
            layer,
            steps,
            tokens,
            experts: e,
            base: 0,
            step_stride: tokens * e,
            logits: t.clone(),
            ids,
            bias,
        });
    }
    if blocks.is_empty() {
        let names: Vec<&str> = named.iter().take(8).map(|(n, _)| n.as_str()).collect();
        return Err(CaptureError::input(
            path,
            format!(
                "no tensor matches the pattern '{}{{layer}}{}' (names here: {}); pass --tensor-pattern",
                pat.prefix,
                pat.suffix,
                names.join(", ")
            ),
        ));
    }
    blocks.sort_by_key(|b| b.layer);
    Ok(blocks)
}

/// Output of routing one slice of rows.
struct Part {
    tokens: TokenTrace,
    skipped: u64,
    checked: u64,
    mismatched: u64,
    bad: Option<String>,
}

struct Job<'a> {
    block: &'a Block,
    step: usize,
    step_id: u32,
    t0: usize,
    t1: usize,
}

#[allow(clippy::too_many_arguments)]
fn route_jobs(
    jobs: &[Job],
    routing: RoutingFn,
    top_k: usize,
    seq_len: Option<u32>,
    keep_logits: bool,
    nan_skip: bool,
    use_recorded: bool,
    rank: u32,
) -> Part {
    let mut out = TokenTrace::new(top_k);
    if keep_logits {
        out.logits = Some(Vec::new());
    }
    let mut part = Part {
        tokens: TokenTrace::new(top_k),
        skipped: 0,
        checked: 0,
        mismatched: 0,
        bad: None,
    };
    let rows: usize = jobs.iter().map(|j| j.t1 - j.t0).sum();
    out.step.reserve(rows);
    out.layer.reserve(rows);
    out.rank.reserve(rows);
    out.token.reserve(rows);
    out.sequence.reserve(rows);
    out.experts.reserve(rows * top_k);
    out.weights.reserve(rows * top_k);
    let mut router = if use_recorded {
        Router::default()
    } else {
        Router::new(routing, top_k)
    };
    let mut buf = Vec::new();
    let mut ids = vec![0u16; top_k];
    let mut w = vec![0f32; top_k];
    let mut rec = vec![0i64; top_k];
    for job in jobs {
        let b = job.block;
        let e = b.experts;
        buf.resize(e, 0.0);
        router.bias = b.bias.clone().unwrap_or_default();
        // f32 dumps are routed in place; other dtypes through a row buffer
        let view = b.logits.as_f32();
        for t in job.t0..job.t1 {
            let start = b.base + job.step * b.step_stride + t * e;
            let row: &[f32] = match view {
                Some(v) => &v[start..start + e],
                None => {
                    b.logits.f32_range_into(start, &mut buf);
                    &buf
                }
            };
            if !super::routing::all_finite(row) {
                let bad = row.iter().position(|x| !x.is_finite()).unwrap();
                if nan_skip {
                    part.skipped += 1;
                    continue;
                }
                part.bad = Some(format!(
                    "layer {} step {} token {t}: logit {} of expert {bad} (pass --nan skip to drop such tokens)",
                    b.layer, job.step_id, row[bad]
                ));
                return part;
            }
            let recorded = b.ids.as_ref().map(|(it, k)| {
                let base = (job.step * b.tokens + t) * k;
                let mut v = vec![0f32; *k];
                it.f32_range_into(base, &mut v);
                for (r, x) in rec.iter_mut().zip(&v) {
                    *r = *x as i64;
                }
                v.len()
            });
            if use_recorded {
                if recorded.is_none() {
                    part.bad = Some(format!(
                        "layer {}: --routing recorded needs the '.ids' tensor, which this file lacks",
                        b.layer
                    ));
                    return part;
                }
                for (i, &r) in ids.iter_mut().zip(&rec) {
                    if r < 0 || r as usize >= e {
                        part.bad = Some(format!(
                            "layer {} step {} token {t}: recorded expert id {r} out of range (experts = {e})",
                            b.layer, job.step_id
                        ));
                        return part;
                    }
                    *i = r as u16;
                }
                // weights: the softmax probabilities of the recorded ids
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = row.iter().map(|x| (x - max).exp()).sum();
                for (wv, &i) in w.iter_mut().zip(&ids) {
                    *wv = (row[i as usize] - max).exp() / s;
                }
            } else {
                router.route(row, &mut ids, &mut w);
                if recorded.is_some() {
                    part.checked += 1;
                    let mut a: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
                    let mut r = rec.clone();
                    a.sort_unstable();
                    r.sort_unstable();
                    if a != r {
                        part.mismatched += 1;
                    }
                }
            }
            let seq = seq_len.map_or(0, |n| (t / n.max(1) as usize) as u32);
            out.push(job.step_id, b.layer, rank, t as u32, seq, &ids, &w);
            if let Some(l) = out.logits.as_mut() {
                l.extend_from_slice(row);
            }
        }
    }
    part.tokens = out;
    part
}

/// Capture router logits into a trace at `out`.
/// What a logits capture was asked to do, resolved from the options and
/// the hook's `capture.json`.
struct Setup {
    files: Vec<PathBuf>,
    cj: Option<CaptureJson>,
    what: PathBuf,
    routing: RoutingFn,
    top_k: usize,
    pat: Pattern,
    ids_pat: Pattern,
    bias_pat: Pattern,
    seq_len: Option<u32>,
    rank: u32,
    /// Step ids from the files' trailing numbers, when every file has a
    /// distinct one.
    numbers: Option<Vec<u32>>,
    threads: usize,
}

fn setup(inputs: &[PathBuf], opts: &CaptureOptions) -> Result<Setup, CaptureError> {
    let (files, cj) = collect_inputs(inputs)?;
    let what = inputs.first().cloned().unwrap_or_default();
    let source_model = cj.as_ref().map(|c| &c.model);
    let routing = opts
        .model
        .routing
        .or(source_model.map(|m| m.routing))
        .ok_or_else(|| {
            CaptureError::input(
                &what,
                "the input does not name its routing function (no capture.json): pass --routing",
            )
        })?;
    let top_k = opts
        .model
        .top_k
        .or(source_model.map(|m| m.top_k))
        .ok_or_else(|| {
            CaptureError::input(&what, "top_k unknown (no capture.json): pass --top-k")
        })? as usize;
    if top_k == 0 {
        return Err(CaptureError::Usage("--top-k must be at least 1".into()));
    }
    let pattern = |o: &Option<String>, c: Option<&Option<String>>, d: &str| {
        Pattern::parse(
            &o.clone()
                .or_else(|| c.and_then(|x| x.clone()))
                .unwrap_or_else(|| d.to_string()),
        )
    };
    let pat = pattern(
        &opts.tensor_pattern,
        cj.as_ref().map(|c| &c.tensor_pattern),
        DEFAULT_PATTERN,
    )?;
    let ids_pat = pattern(
        &opts.ids_pattern,
        cj.as_ref().map(|c| &c.ids_pattern),
        DEFAULT_IDS_PATTERN,
    )?;
    let bias_pat = pattern(
        &opts.bias_pattern,
        cj.as_ref().map(|c| &c.bias_pattern),
        DEFAULT_BIAS_PATTERN,
    )?;
    let seq_len = opts
        .sequence_length
        .or(cj.as_ref().and_then(|c| c.sequence_length));
    let numbers: Option<Vec<u32>> = files.iter().map(|f| trailing_number(f)).collect();
    let numbers = numbers.filter(|v| {
        let mut s = v.clone();
        s.sort_unstable();
        s.windows(2).all(|w| w[0] != w[1])
    });
    let threads = crate::env::capture_threads().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    });
    Ok(Setup {
        files,
        cj,
        what,
        routing,
        top_k,
        pat,
        ids_pat,
        bias_pat,
        seq_len,
        rank: opts.rank.unwrap_or(0),
        numbers,
        threads,
    })
}

/// Check one file's layers against each other, the run so far and the
/// options; returns its expert count and adds its logit bytes.
fn check_blocks(
    blocks: &[Block],
    file: &Path,
    su: &Setup,
    opts: &CaptureOptions,
    experts: Option<usize>,
    layers_seen: &mut std::collections::BTreeSet<u32>,
    logit_bytes: &mut u64,
) -> Result<usize, CaptureError> {
    let (top_k, routing) = (su.top_k, su.routing);
    let e = blocks[0].experts;
    for b in blocks {
        if b.experts != e || experts.is_some_and(|x| x != b.experts) {
            return Err(CaptureError::input(
                file,
                format!(
                    "layer {} has {} experts, expected {}",
                    b.layer,
                    b.experts,
                    experts.unwrap_or(e)
                ),
            ));
        }
        if let Some((_, k)) = &b.ids {
            if *k != top_k {
                return Err(CaptureError::input(
                    file,
                    format!(
                        "layer {}: recorded ids have top-k {k}, expected {top_k}",
                        b.layer
                    ),
                ));
            }
        }
        if matches!(routing, RoutingFn::SigmoidGroupTopk { .. }) && b.bias.is_none() {
            return Err(CaptureError::input(
                file,
                format!(
                    "layer {}: the sigmoid routing function needs the correction bias '{}'",
                    b.layer,
                    su.bias_pat.name(b.layer)
                ),
            ));
        }
        layers_seen.insert(b.layer);
        *logit_bytes += (b.steps * b.tokens * e * b.logits.dtype.size()) as u64;
    }
    if top_k > e {
        return Err(CaptureError::input(
            file,
            format!("top-k {top_k} is larger than the number of experts ({e})"),
        ));
    }
    if let RoutingFn::SigmoidGroupTopk {
        n_group,
        topk_group,
        ..
    } = routing
    {
        if n_group == 0 || e % n_group as usize != 0 || topk_group == 0 || topk_group > n_group {
            return Err(CaptureError::input(
                file,
                format!("{e} experts cannot form {n_group} groups with {topk_group} kept"),
            ));
        }
    }
    if let Some(m) = opts.model.num_experts {
        if m as usize != e {
            return Err(CaptureError::input(
                file,
                format!("logits have {e} experts, --num-experts says {m}"),
            ));
        }
    }
    Ok(e)
}

/// One file's routing work, in output order (step, then layer), cut into
/// about equal token counts for `threads` routing threads.
fn slice_jobs<'a>(blocks: &'a [Block], step_base: u32, threads: usize) -> Vec<Vec<Job<'a>>> {
    let steps = blocks.iter().map(|b| b.steps).max().unwrap_or(1);
    let mut jobs = Vec::new();
    for s in 0..steps {
        for b in blocks {
            if s < b.steps {
                jobs.push((b, s));
            }
        }
    }
    let total: usize = jobs.iter().map(|(b, _)| b.tokens).sum();
    let per = total.div_ceil(threads).max(1);
    let mut slices: Vec<Vec<Job>> = vec![Vec::new()];
    let mut filled = 0usize;
    for (b, s) in jobs {
        let mut t = 0;
        while t < b.tokens {
            let room = per - filled;
            let t1 = (t + room).min(b.tokens);
            slices.last_mut().unwrap().push(Job {
                block: b,
                step: s,
                step_id: step_base + s as u32,
                t0: t,
                t1,
            });
            filled += t1 - t;
            t = t1;
            if filled == per {
                slices.push(Vec::new());
                filled = 0;
            }
        }
    }
    slices
}

/// Route the slices on their own threads.
fn route_parallel(slices: &[Vec<Job>], su: &Setup, opts: &CaptureOptions) -> Vec<Part> {
    let use_recorded = su.routing == RoutingFn::Recorded;
    std::thread::scope(|sc| {
        let handles: Vec<_> = slices
            .iter()
            .map(|js| {
                sc.spawn(|| {
                    route_jobs(
                        js,
                        su.routing,
                        su.top_k,
                        su.seq_len,
                        opts.keep_logits,
                        opts.nan_skip,
                        use_recorded,
                        su.rank,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("routing thread panicked"))
            .collect()
    })
}

pub fn capture(
    inputs: &[PathBuf],
    out: &Path,
    opts: &CaptureOptions,
) -> Result<LogitsReport, CaptureError> {
    let su = setup(inputs, opts)?;
    let source_model = su.cj.as_ref().map(|c| &c.model);
    let pb = opts.progress.get();
    pb.start("capture", su.files.len() as u64);
    let mut meta: Option<TraceMeta> = None;
    let mut experts: Option<usize> = None;
    let mut layers_seen = std::collections::BTreeSet::new();
    let (mut skipped, mut checked, mut mismatched, mut logit_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut next_step: u32 = 0;
    let mut timing = [0f64; 2];
    let files_ref = &su.files;
    let (pat_r, ids_r, bias_r) = (&su.pat, &su.ids_pat, &su.bias_pat);
    type Writer<'s> = (
        std::sync::mpsc::SyncSender<(TokenTrace, usize)>,
        std::thread::ScopedJoinHandle<'s, Result<TokenSink, CaptureError>>,
    );
    // Three stages overlap: the next file is read while this one is routed,
    // and routed chunks are encoded to Parquet by a writer thread. The
    // reader hands files over through a rendezvous channel, so at most one
    // file waits beside the one being routed: memory stays about two input
    // files plus one Parquet row group, whatever the number of files.
    let result: Result<Option<TokenSink>, CaptureError> = std::thread::scope(|sc| {
        let (ftx, frx) = std::sync::mpsc::sync_channel::<Result<Vec<Block>, CaptureError>>(0);
        sc.spawn(move || {
            for file in files_ref {
                if ftx.send(load_blocks(file, pat_r, ids_r, bias_r)).is_err() {
                    break;
                }
            }
        });
        let mut writer: Option<Writer> = None;
        for (fi, file) in su.files.iter().enumerate() {
            let t_read = std::time::Instant::now();
            let blocks = frx.recv().expect("reader thread ended early")?;
            timing[0] += t_read.elapsed().as_secs_f64();
            let e = check_blocks(
                &blocks,
                file,
                &su,
                opts,
                experts,
                &mut layers_seen,
                &mut logit_bytes,
            )?;
            experts = Some(e);
            if writer.is_none() {
                let (top_k, routing) = (su.top_k as u32, su.routing);
                let model = model_meta(opts, source_model, e as u32, top_k, routing, 0);
                let format = format!(
                    "logits-{}",
                    file.extension().and_then(|x| x.to_str()).unwrap_or("")
                );
                let m = trace_meta(opts, model, capture_meta(&format, files_ref, "contiguous"));
                let mut sink = TokenSink::create(out, &m, opts.keep_logits)?;
                meta = Some(m);
                let (wtx, wrx) = std::sync::mpsc::sync_channel::<(TokenTrace, usize)>(2);
                let h = sc.spawn(move || {
                    for (t, fi) in wrx {
                        sink.write(&t, &files_ref[fi])?;
                    }
                    Ok(sink)
                });
                writer = Some((wtx, h));
            }
            let steps = blocks.iter().map(|b| b.steps).max().unwrap_or(1);
            let step_base = match &su.numbers {
                Some(n) if steps == 1 => n[fi],
                _ => next_step,
            };
            next_step = step_base + steps as u32;
            let slices = slice_jobs(&blocks, step_base, su.threads);
            let t_route = std::time::Instant::now();
            let parts = route_parallel(&slices, &su, opts);
            timing[1] += t_route.elapsed().as_secs_f64();
            for p in parts {
                if let Some(msg) = p.bad {
                    return Err(CaptureError::input(file, msg));
                }
                skipped += p.skipped;
                checked += p.checked;
                mismatched += p.mismatched;
                let (tx, _) = writer.as_ref().unwrap();
                if tx.send((p.tokens, fi)).is_err() {
                    // the writer stopped on an error: report it
                    let (tx, h) = writer.take().unwrap();
                    drop(tx);
                    return Err(h.join().expect("writer thread panicked").err().unwrap());
                }
            }
            pb.inc(1);
        }
        match writer {
            Some((tx, h)) => {
                drop(tx);
                h.join().expect("writer thread panicked").map(Some)
            }
            None => Ok(None),
        }
    });
    pb.finish();
    if crate::env::capture_timing() {
        eprintln!(
            "timing: waiting for reads {:.3} s, routing {:.3} s",
            timing[0], timing[1]
        );
    }
    let sink = result?.ok_or_else(|| CaptureError::input(&su.what, "no input files"))?;
    let tokens = sink.tokens;
    let mut meta = meta.unwrap();
    meta.capture.skipped_tokens = skipped;
    if meta.model.num_layers == 0 {
        meta.model.num_layers = layers_seen.iter().max().map_or(0, |&l| l + 1);
    }
    if let Some(cj) = &su.cj {
        if meta.provenance.is_empty() {
            meta.provenance = cj.source.clone().unwrap_or_default();
        }
    }
    let loads = sink.finish(meta.clone(), &su.what)?;
    Ok(LogitsReport {
        loads,
        meta,
        tokens,
        skipped,
        ids_checked: checked,
        ids_mismatched: mismatched,
        logit_bytes,
    })
}
