//! Where token-level sources write: the tokens file, streamed one chunk per
//! input file, and the load counts accumulated on the way. Nothing is
//! visible at the output path until [`TokenSink::finish`] has written both
//! files (each through a temporary file renamed at the end; if the load file
//! fails, the tokens file is removed again). The command line stages both in
//! a directory of their own ([`super::staging`]) and moves them together.

use super::{CaptureError, CaptureOptions};
use crate::trace::meta::{command_line, tool_version, CaptureMeta, ModelMeta, TraceMeta};
use crate::trace::parquet_io::{write_loads, TokenFileWriter};
use crate::trace::{tokens_path_for, Loads, RoutingFn, TokenTrace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct TokenSink {
    out: PathBuf,
    writer: Option<TokenFileWriter>,
    experts: usize,
    top_k: usize,
    keep_logits: bool,
    counts: BTreeMap<(u32, u32, u32), Vec<u64>>,
    /// Token rows written (one per token and layer).
    pub tokens: u64,
    step_labels: Vec<String>,
}

impl TokenSink {
    /// `meta` gives top_k and num_experts (and is the provisional metadata;
    /// [`TokenSink::finish`] replaces it). num_experts 0 means not known yet:
    /// ids are then only checked at [`TokenSink::finish`].
    pub fn create(out: &Path, meta: &TraceMeta, keep_logits: bool) -> Result<Self, CaptureError> {
        let e = meta.model.num_experts as usize;
        if keep_logits && e == 0 {
            return Err(CaptureError::Usage(
                "--keep-logits needs the number of experts up front".into(),
            ));
        }
        let mut m = meta.clone();
        m.capture.token_level = true;
        let writer = TokenFileWriter::create(&tokens_path_for(out), &m, keep_logits.then_some(e))?;
        Ok(Self {
            out: out.to_path_buf(),
            writer: Some(writer),
            experts: e,
            top_k: meta.model.top_k as usize,
            keep_logits,
            counts: BTreeMap::new(),
            tokens: 0,
            step_labels: Vec::new(),
        })
    }

    /// Check, count and write one chunk of token rows read from `file`.
    pub fn write(&mut self, chunk: &TokenTrace, file: &Path) -> Result<(), CaptureError> {
        if chunk.top_k != self.top_k {
            return Err(CaptureError::input(
                file,
                format!("top-k {} where the trace has {}", chunk.top_k, self.top_k),
            ));
        }
        let k = self.top_k;
        let e_n = self.experts;
        // rows come in runs of one (step, layer, rank): one map lookup a run
        let mut i = 0;
        while i < chunk.len() {
            let key = (chunk.step[i], chunk.layer[i], chunk.rank[i]);
            let mut j = i + 1;
            while j < chunk.len() && (chunk.step[j], chunk.layer[j], chunk.rank[j]) == key {
                j += 1;
            }
            let row = self.counts.entry(key).or_insert_with(|| vec![0; e_n]);
            for (slot, &e) in chunk.experts[i * k..j * k].iter().enumerate() {
                let e = e as usize;
                if e_n == 0 {
                    if e >= row.len() {
                        row.resize(e + 1, 0);
                    }
                } else if e >= e_n {
                    let t = i + slot / k;
                    return Err(CaptureError::input(
                        file,
                        format!(
                            "expert id {e} out of range (num_experts = {e_n}) at step {}, layer {}, token {}",
                            chunk.step[t], chunk.layer[t], chunk.token[t]
                        ),
                    ));
                }
                row[e] += 1;
            }
            i = j;
        }
        if self.keep_logits && chunk.logits.as_ref().map(Vec::len) != Some(chunk.len() * e_n) {
            return Err(CaptureError::input(
                file,
                "--keep-logits: this source has no logits",
            ));
        }
        self.tokens += chunk.len() as u64;
        self.writer.as_mut().expect("open").write(chunk)?;
        Ok(())
    }

    /// Labels of the step ids (`--group-by`), recorded at [`TokenSink::finish`].
    pub fn set_step_labels(&mut self, labels: Vec<String>) {
        self.step_labels = labels;
    }

    /// Largest expert id seen plus one (for sources that do not say).
    pub fn experts_seen(&self) -> usize {
        self.counts.values().map(Vec::len).max().unwrap_or(0)
    }

    /// Loads as counted so far (with `self.experts` experts).
    fn loads(&self) -> Loads {
        let mut steps: Vec<u32> = self.counts.keys().map(|k| k.0).collect();
        steps.sort_unstable();
        steps.dedup();
        let mut layers: Vec<u32> = self.counts.keys().map(|k| k.1).collect();
        layers.sort_unstable();
        layers.dedup();
        let ranks = self
            .counts
            .keys()
            .map(|k| k.2)
            .max()
            .map_or(1, |r| r as usize + 1);
        let mut loads = Loads::zeros(steps.clone(), layers.clone(), ranks, self.experts);
        for (&(s, l, r), row) in &self.counts {
            let si = steps.binary_search(&s).unwrap();
            let li = layers.binary_search(&l).unwrap();
            let e_n = self.experts;
            loads.block_mut(si, li)[r as usize * e_n..r as usize * e_n + row.len()]
                .copy_from_slice(row);
        }
        loads
    }

    /// Commit the tokens file with the final metadata, then the load file.
    pub fn finish(mut self, mut meta: TraceMeta, what: &Path) -> Result<Loads, CaptureError> {
        if self.tokens == 0 {
            return Err(CaptureError::input(what, "no tokens found in the input"));
        }
        let seen = self.experts_seen();
        let e_n = meta.model.num_experts as usize;
        if seen > e_n {
            return Err(CaptureError::input(
                what,
                format!("expert id {} out of range (num_experts = {e_n})", seen - 1),
            ));
        }
        self.experts = e_n;
        if meta.model.top_k > meta.model.num_experts {
            return Err(CaptureError::input(
                what,
                format!(
                    "top-k {} is larger than the number of experts ({e_n})",
                    meta.model.top_k
                ),
            ));
        }
        let loads = self.loads();
        meta.capture.token_level = true;
        meta.capture.logits_kept = self.keep_logits;
        if meta.model.num_layers == 0 {
            meta.model.num_layers = loads.layer_ids.last().map_or(0, |&l| l + 1);
        }
        if !self.step_labels.is_empty() {
            meta.step_labels = std::mem::take(&mut self.step_labels);
        }
        meta.capture.ranks = loads.ranks as u32;
        if loads.layer_steps() > 0 {
            let t0 = loads.total(0, 0) / (self.top_k as u64 * loads.ranks as u64).max(1);
            meta.capture.tokens_per_rank.get_or_insert(t0);
        }
        self.writer.take().expect("open").finish_with(Some(&meta))?;
        // a tokens file without its load file is half a trace
        if let Err(e) = write_loads(&self.out, &meta, &loads) {
            let _ = std::fs::remove_file(tokens_path_for(&self.out));
            return Err(e.into());
        }
        Ok(loads)
    }
}

/// Model metadata from the options, with what the source said as defaults.
pub fn model_meta(
    opts: &CaptureOptions,
    source: Option<&ModelMeta>,
    num_experts: u32,
    top_k: u32,
    routing: RoutingFn,
    layers_seen: u32,
) -> ModelMeta {
    let m = &opts.model;
    ModelMeta {
        name: m
            .name
            .clone()
            .or_else(|| source.map(|s| s.name.clone()))
            .unwrap_or_else(|| "unknown".into()),
        num_experts,
        top_k,
        hidden_size: m
            .hidden_size
            .or_else(|| source.map(|s| s.hidden_size))
            .unwrap_or(0),
        intermediate_size: m
            .intermediate_size
            .or_else(|| source.map(|s| s.intermediate_size))
            .unwrap_or(0),
        num_layers: m
            .num_layers
            .or_else(|| source.map(|s| s.num_layers).filter(|&n| n > 0))
            .unwrap_or(layers_seen),
        dtype: m
            .dtype
            .clone()
            .or_else(|| source.map(|s| s.dtype.clone()))
            .unwrap_or_else(|| "bf16".into()),
        routing,
    }
}

pub fn capture_meta(format: &str, files: &[PathBuf], rank_assignment: &str) -> CaptureMeta {
    CaptureMeta {
        source_format: format.into(),
        files: files.iter().map(|p| p.display().to_string()).collect(),
        ranks: 1,
        tokens_per_rank: None,
        rank_assignment: rank_assignment.into(),
        tool_version: tool_version(),
        command: command_line(),
        token_level: false,
        skipped_tokens: 0,
        logits_kept: false,
        passes_aggregated: None,
    }
}

/// The trace metadata with provenance and licence from the options.
pub fn trace_meta(opts: &CaptureOptions, model: ModelMeta, capture: CaptureMeta) -> TraceMeta {
    let mut meta = TraceMeta::new(model, capture);
    meta.provenance = opts.provenance.clone().unwrap_or_default();
    meta.licence = opts.licence.clone().unwrap_or_default();
    meta
}

/// Last run of ASCII digits in a file stem (`step_000123` -> 123).
pub fn trailing_number(path: &Path) -> Option<u32> {
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    let end = stem.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = stem[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    stem[start..end].parse().ok()
}
