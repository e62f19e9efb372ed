//! Load-level CSV capture in bounded memory: a first pass over the file
//! finds its steps, layers, experts and ranks (and checks it as
//! [`super::loads::ingest`] does); when every step's rows come together, in
//! ascending step order, a second pass writes the trace a step at a time
//! and judges it as it goes, so memory holds one step, not the trace.
//! Other files (steps interleaved or out of order, JSON) are read whole, as
//! before.

use super::loads::{self, Layout, Seen};
use super::sanity::{self, ConstantRouting, Finding};
use super::{CaptureError, CaptureOptions};
use crate::trace::parquet_io::{write_trace, LoadsWriter};
use crate::trace::{Loads, TraceMeta};
use std::collections::HashMap;
use std::path::Path;

/// A load-level capture written to its output: its metadata, the ids and
/// sizes of the trace, and the constant-routing check of every layer-step.
#[derive(Debug, Clone)]
pub struct Written {
    pub meta: TraceMeta,
    pub step_ids: Vec<u32>,
    pub layer_ids: Vec<u32>,
    pub ranks: usize,
    pub experts: usize,
    pub constant_routing: Option<Finding>,
    /// Written a step at a time (not held whole).
    pub streamed: bool,
}

/// Capture a load-level file (`format`: `load-csv` or `load-json`) into
/// the trace file `out`: streamed where the file allows it (see the module
/// doc), else read whole; the file written is the same either way.
pub fn capture_to(
    path: &Path,
    opts: &CaptureOptions,
    format: &str,
    out: &Path,
) -> Result<Written, CaptureError> {
    if format == "load-csv" {
        if let Some(w) = stream_csv(path, opts, out)? {
            return Ok(w);
        }
    }
    let trace = loads::ingest(path, opts, format)?;
    write_trace(out, &trace).map_err(CaptureError::from)?;
    let l = &trace.loads;
    Ok(Written {
        constant_routing: sanity::constant_routing(l, trace.meta.model.top_k),
        step_ids: l.step_ids.clone(),
        layer_ids: l.layer_ids.clone(),
        ranks: l.ranks,
        experts: l.experts,
        meta: trace.meta,
        streamed: false,
    })
}

/// The first pass: what [`Seen`] records, whether the steps come grouped
/// and ascending, and the first step's token-copies per layer.
#[derive(Default)]
struct Index {
    rows: usize,
    step_keys: Vec<String>,
    step_of: HashMap<String, usize>,
    layers: Vec<u32>,
    max_expert: u32,
    max_rank: u32,
    duplicate: Option<(String, u32, u32, u32)>,
    /// Every step's rows in one run, the runs in ascending step order.
    grouped: bool,
    /// The step whose run is being read, and its rows seen per (layer,
    /// rank): one bit per expert (a duplicate falls within one run).
    current: Option<usize>,
    seen: HashMap<(u32, u32), usize>,
    bits: Vec<Vec<u64>>,
    first_totals: HashMap<u32, u64>,
    /// The last row's step key, (layer, rank) and their positions: rows
    /// come in runs, so most rows skip the lookups.
    last_key: String,
    last_pair: Option<((u32, u32), usize)>,
}

impl Index {
    fn add(&mut self, key: &str, numeric: bool, layer: u32, rank: u32, expert: u32, count: u64) {
        let s = match self.current {
            Some(s) if self.last_key == key => s,
            _ => self.step(key, numeric),
        };
        self.rows += 1;
        self.max_expert = self.max_expert.max(expert);
        self.max_rank = self.max_rank.max(rank);
        if let Err(at) = self.layers.binary_search(&layer) {
            self.layers.insert(at, layer);
        }
        if s == 0 {
            *self.first_totals.entry(layer).or_default() += count;
        }
        let b = match self.last_pair {
            Some((p, b)) if p == (layer, rank) => b,
            _ => {
                let next = self.bits.len();
                let b = *self.seen.entry((layer, rank)).or_insert(next);
                if b == next {
                    self.bits.push(Vec::new());
                }
                self.last_pair = Some(((layer, rank), b));
                b
            }
        };
        let bits = &mut self.bits[b];
        let e = expert as usize;
        if bits.len() <= e / 64 {
            bits.resize(e / 64 + 1, 0);
        }
        let bit = 1u64 << (e % 64);
        if bits[e / 64] & bit != 0 {
            if self.duplicate.is_none() {
                self.duplicate = Some((key.to_string(), layer, rank, expert));
            }
        } else {
            bits[e / 64] |= bit;
        }
    }

    /// The step of a row whose key differs from the last row's.
    fn step(&mut self, key: &str, numeric: bool) -> usize {
        self.last_key.clear();
        self.last_key.push_str(key);
        let s = match self.step_of.get(key) {
            Some(&s) => s,
            None => {
                if numeric {
                    // ascending: a new step id above every one before it
                    if let (Some(last), Ok(id)) = (self.step_keys.last(), key.parse::<u32>()) {
                        if last.parse::<u32>().map_or(true, |l| l >= id) {
                            self.grouped = false;
                        }
                    }
                }
                self.step_keys.push(key.to_string());
                self.step_of
                    .insert(key.to_string(), self.step_keys.len() - 1);
                self.step_keys.len() - 1
            }
        };
        if self.current != Some(s) {
            if self.current.is_some() && s + 1 != self.step_keys.len() {
                // an earlier step's rows again: not one run per step
                self.grouped = false;
            }
            self.current = Some(s);
            // a new run: its rows seen start empty (the buffers are kept)
            for b in &mut self.bits {
                b.fill(0);
            }
        }
        s
    }
}

/// Stream a long-form CSV whose steps come grouped and ascending; `None`
/// (nothing written) for any other order.
fn stream_csv(
    path: &Path,
    opts: &CaptureOptions,
    out: &Path,
) -> Result<Option<Written>, CaptureError> {
    let numeric = opts.group_by.is_none();
    let mut ix = Index {
        grouped: true,
        ..Default::default()
    };
    let has_rank_col = loads::read_csv(path, opts, &mut |k, l, r, e, c| {
        ix.add(k, numeric && !k.is_empty(), l, r, e, c);
        Ok(())
    })?;
    if !ix.grouped {
        return Ok(None);
    }
    let seen = Seen {
        rows: ix.rows,
        step_keys: std::mem::take(&mut ix.step_keys),
        layer_ids: std::mem::take(&mut ix.layers),
        max_expert: ix.max_expert,
        max_rank: ix.max_rank,
        has_rank_col,
        duplicate: ix.duplicate.take(),
    };
    let lay = loads::layout(path, opts, &seen)?;
    // grouped and ascending: the first step read is the trace's first
    let total0 = seen
        .layer_ids
        .first()
        .and_then(|l| ix.first_totals.get(l))
        .copied()
        .unwrap_or(0);
    let meta = loads::meta(path, opts, "load-csv", &seen, &lay, total0);
    let constant_routing = write_steps(path, opts, out, &meta, &seen, &lay)?;
    Ok(Some(Written {
        meta,
        step_ids: lay.step_ids,
        layer_ids: seen.layer_ids,
        ranks: lay.ranks,
        experts: lay.num_experts as usize,
        constant_routing,
        streamed: true,
    }))
}

/// The second pass: each step's rows placed in a one-step trace, written
/// and judged when the next step's rows begin.
fn write_steps(
    path: &Path,
    opts: &CaptureOptions,
    out: &Path,
    meta: &TraceMeta,
    seen: &Seen,
    lay: &Layout,
) -> Result<Option<Finding>, CaptureError> {
    let n = lay.num_experts as usize;
    let mut w = LoadsWriter::create(out, meta)?;
    let mut step = Loads::zeros(vec![0], seen.layer_ids.clone(), lay.ranks, n);
    let mut judge = ConstantRouting::new(lay.top_k);
    // keys come in step order: the i-th key read is step_ids[i]
    let mut cur: Option<String> = None;
    let mut index = 0usize;
    let mut flush = |step: &mut Loads, w: &mut LoadsWriter| -> Result<(), CaptureError> {
        w.write_step(step, 0)?;
        judge.add(step);
        step.counts.fill(0);
        Ok(())
    };
    loads::read_csv(path, opts, &mut |k, layer, rank, expert, count| {
        if cur.as_deref() != Some(k) {
            if cur.is_some() {
                flush(&mut step, &mut w)?;
                index += 1;
            }
            cur = Some(k.to_string());
            step.step_ids[0] = lay.step_ids[index];
        }
        let l = seen
            .layer_ids
            .binary_search(&layer)
            .expect("layer seen by the first pass");
        step.block_mut(0, l)[rank as usize * n + expert as usize] = count;
        Ok(())
    })?;
    flush(&mut step, &mut w)?;
    w.finish()?;
    Ok(judge.finish())
}
