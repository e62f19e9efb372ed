//! Inputs read chunk by chunk: a load-level trace of any length is
//! simulated in memory bounded by the chunk, not by the trace.
//!
//! A [`Streamed`] input knows everything about a workload but its loads
//! (name, model, EP size, the note saying how loads were derived, the step
//! and layer ids); [`Streamed::chunks`] then yields the loads a few steps at
//! a time as ordinary [`Workload`]s, each derived exactly as
//! [`InputSpec::resolve`] derives the whole (split over the ranks, then
//! rescaled), with [`Workload::first_step`] saying where it starts.
//!
//! Load-level trace files whose rows come grouped by step in ascending
//! order (every file this tool writes) are streamed from disk: one pass
//! learns the ids and the largest layer-step (whether the counts are summed
//! over many passes), the next passes read a chunk of steps at a time.
//! Token-level traces, unsorted files and synthetic scenarios are resolved
//! in memory as before (a token-level trace's resampling is bounded by
//! [`super::RESAMPLE_LIMIT_BYTES`]) and then cut into chunks, so that result
//! rows are still produced a chunk at a time.

use super::{InputSource, InputSpec, Routing, StepPick, Workload, WorkloadError};
use crate::progress::Progress;
use crate::trace::parquet_io::{index_loads, read_meta, LoadsChunks, LoadsIndex};
use crate::trace::synthetic::Scenario;
use crate::trace::{tokens_path_for, EpSplit, Loads, ModelMeta};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An input resolved for streaming: what it is, and where its loads come
/// from, chunk by chunk.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Trace file name, or "synthetic".
    pub name: String,
    pub scenario: Option<Scenario>,
    pub model: ModelMeta,
    pub gpus: usize,
    /// How the per-rank loads are derived.
    pub note: String,
    pub warnings: Vec<String>,
    /// Ids of the steps and layers, selected ones only.
    pub step_ids: Vec<u32>,
    pub layer_ids: Vec<u32>,
    src: Src,
}

#[derive(Debug, Clone)]
enum Src {
    /// Resolved whole (synthetic, token level, unsorted files).
    Memory(Arc<Workload>),
    /// A load-level file, read a chunk of steps at a time.
    File(FileSrc),
}

#[derive(Debug, Clone)]
struct FileSrc {
    path: PathBuf,
    index: Arc<LoadsIndex>,
    /// Selected step and layer ids (empty: all).
    steps: Vec<u32>,
    layers: Vec<u32>,
    /// Rescale every layer-step to this many tokens per rank.
    tokens: Option<u64>,
}

impl InputSpec {
    /// Resolve the inputs for streaming (see the module doc); what
    /// [`InputSpec::resolve_with`] gives, without holding a long trace.
    pub fn resolve_stream(&self, progress: &dyn Progress) -> Result<Vec<Streamed>, WorkloadError> {
        self.check()?;
        if let InputSource::Trace(path) = &self.source {
            let meta = read_meta(path)?;
            let token_level = meta.capture.token_level && tokens_path_for(path).exists();
            if !token_level {
                let index = index_loads(path)?;
                if index.sorted {
                    return Ok(vec![self.file_stream(path, index)?]);
                }
            }
        }
        Ok(self
            .resolve_with(progress)?
            .into_iter()
            .map(Streamed::memory)
            .collect())
    }

    /// A sorted load-level file: what [`InputSpec::resolve`] would say about
    /// it, from its index (and, with a selection, one more pass for the
    /// largest selected layer-step).
    fn file_stream(&self, path: &Path, index: LoadsIndex) -> Result<Streamed, WorkloadError> {
        let shown = path.display().to_string();
        let mut model = index.meta.model.clone();
        for (option, given, has) in [
            ("--experts", self.dims.experts, model.num_experts),
            ("--top-k", self.dims.top_k, model.top_k),
        ] {
            if let Some(v) = given {
                return Err(WorkloadError::NotApplicable {
                    path: shown,
                    option,
                    what: format!("{} {has} (given {v})", &option[2..]),
                });
            }
        }
        if let Some(d) = self.dims.hidden_size {
            model.hidden_size = d;
        }
        if let Some(i) = self.dims.intermediate_size {
            model.intermediate_size = i;
        }
        if let Some(n) = self.dims.num_layers {
            model.num_layers = n;
        }
        let steps: Vec<u32> = match &self.steps {
            StepPick::All => Vec::new(),
            StepPick::First => index.step_ids.first().copied().into_iter().collect(),
            StepPick::Ids(v) => v.clone(),
        };
        let missing = steps
            .iter()
            .any(|s| index.step_ids.binary_search(s).is_err())
            || self
                .layers
                .iter()
                .any(|l| index.layer_ids.binary_search(l).is_err());
        if missing {
            return Err(WorkloadError::Selection {
                path: shown,
                steps,
                layers: self.layers.clone(),
                has_steps: index.step_ids.clone(),
                has_layers: index.layer_ids.clone(),
            });
        }
        let pick = |all: &[u32], keep: &[u32]| -> Vec<u32> {
            all.iter()
                .copied()
                .filter(|x| keep.is_empty() || keep.contains(x))
                .collect()
        };
        let (step_ids, layer_ids) = (
            pick(&index.step_ids, &steps),
            pick(&index.layer_ids, &self.layers),
        );
        let k = model.top_k.max(1) as u64;
        let split = if self.gpus == index.ranks {
            EpSplit::AsRecorded
        } else {
            EpSplit::EvenSplit
        };
        let meta = index.meta.clone();
        let index = Arc::new(index);
        let mut src = FileSrc {
            path: path.to_path_buf(),
            index,
            steps,
            layers: self.layers.clone(),
            tokens: None,
        };
        let max_total = if src.steps.is_empty() && src.layers.is_empty() {
            src.index.max_total
        } else {
            selected_max_total(&src)?
        };
        let implied = max_total / (self.gpus as u64 * k);
        let mut warnings = Vec::new();
        let (tokens, note) = self.count_derivation(&meta, implied, split, &shown, &mut warnings);
        src.tokens = tokens;
        Ok(Streamed {
            name: path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            scenario: None,
            model,
            gpus: self.gpus,
            note,
            warnings,
            step_ids,
            layer_ids,
            src: Src::File(src),
        })
    }
}

/// The largest total of a selected layer-step, read through the chunks.
fn selected_max_total(src: &FileSrc) -> Result<u64, WorkloadError> {
    let mut most = 0;
    let mut rd = LoadsChunks::open(&src.path, src.index.clone(), 64)?;
    while let Some((_, raw)) = rd.next_chunk()? {
        if let Some(sel) = raw.select(&src.steps, &src.layers) {
            for s in 0..sel.steps() {
                for l in 0..sel.layers() {
                    most = most.max(sel.total(s, l));
                }
            }
        }
    }
    Ok(most)
}

impl Streamed {
    /// An input already in memory, cut into chunks when simulated.
    pub fn memory(w: Workload) -> Streamed {
        Streamed {
            name: w.name.clone(),
            scenario: w.scenario,
            model: w.model.clone(),
            gpus: w.gpus,
            note: w.note.clone(),
            warnings: w.warnings.clone(),
            step_ids: w.loads.step_ids.clone(),
            layer_ids: w.loads.layer_ids.clone(),
            src: Src::Memory(Arc::new(w)),
        }
    }

    /// "synthetic 95:1" or the trace's file name.
    pub fn label(&self) -> String {
        match self.scenario {
            Some(s) => format!("synthetic {s}"),
            None => self.name.clone(),
        }
    }

    pub fn steps(&self) -> usize {
        self.step_ids.len()
    }

    pub fn layers(&self) -> usize {
        self.layer_ids.len()
    }

    pub fn layer_steps(&self) -> usize {
        self.steps() * self.layers()
    }

    /// Whether the loads are read from disk chunk by chunk.
    pub fn from_disk(&self) -> bool {
        matches!(self.src, Src::File(_))
    }

    /// The loads, at most `max_layer_steps` layer-steps a chunk (but at
    /// least one step), in step order.
    pub fn chunks(&self, max_layer_steps: usize) -> Chunks<'_> {
        let steps = (max_layer_steps / self.layers().max(1)).max(1);
        Chunks {
            s: self,
            steps,
            reader: None,
            next: 0,
            done: false,
        }
    }

    fn chunk_of(&self, loads: Loads, first_step: usize) -> Workload {
        Workload {
            name: self.name.clone(),
            scenario: self.scenario,
            model: self.model.clone(),
            gpus: self.gpus,
            loads,
            note: self.note.clone(),
            warnings: Vec::new(),
            first_step,
            routing: Routing::Counts,
        }
    }
}

/// A chunk: the whole workload when it is in memory and fits, else a copy
/// of some of its steps.
pub enum Chunk<'a> {
    Whole(&'a Workload),
    Part(Box<Workload>),
}

impl std::ops::Deref for Chunk<'_> {
    type Target = Workload;
    fn deref(&self) -> &Workload {
        match self {
            Chunk::Whole(w) => w,
            Chunk::Part(w) => w,
        }
    }
}

/// The chunks of a [`Streamed`] input (see [`Streamed::chunks`]). A chunk
/// of an in-memory input carries only loads: it is for simulation, not
/// for a replay's per-token routing.
pub struct Chunks<'a> {
    s: &'a Streamed,
    steps: usize,
    reader: Option<LoadsChunks>,
    /// Next step position (among the selected steps).
    next: usize,
    done: bool,
}

impl<'a> Chunks<'a> {
    fn file_next(&mut self, f: &FileSrc) -> Result<Option<Chunk<'a>>, WorkloadError> {
        if self.reader.is_none() {
            self.reader = Some(LoadsChunks::open(&f.path, f.index.clone(), self.steps)?);
        }
        let rd = self.reader.as_mut().expect("opened above");
        loop {
            let Some((_, raw)) = rd.next_chunk()? else {
                return Ok(None);
            };
            let raw = if f.steps.is_empty() && f.layers.is_empty() {
                raw
            } else {
                match raw.select(&f.steps, &f.layers) {
                    Some(l) => l,
                    None => continue,
                }
            };
            let (mut loads, _) = if raw.ranks == self.s.gpus {
                (raw, EpSplit::AsRecorded)
            } else {
                raw.at_ranks(self.s.gpus)
            };
            if let Some(t) = f.tokens {
                loads = loads.rescaled(t, self.s.model.top_k.max(1) as u64);
            }
            let first = self.next;
            self.next += loads.steps();
            return Ok(Some(Chunk::Part(Box::new(self.s.chunk_of(loads, first)))));
        }
    }

    fn memory_next(&mut self, w: &'a Workload) -> Option<Chunk<'a>> {
        let n = w.loads.steps();
        if self.next >= n {
            return None;
        }
        if self.next == 0 && self.steps >= n {
            self.next = n;
            return Some(Chunk::Whole(w));
        }
        let (a, b) = (self.next, (self.next + self.steps).min(n));
        self.next = b;
        let per = w.loads.layers() * w.loads.ranks * w.loads.experts;
        let loads = Loads {
            step_ids: w.loads.step_ids[a..b].to_vec(),
            layer_ids: w.loads.layer_ids.clone(),
            ranks: w.loads.ranks,
            experts: w.loads.experts,
            counts: w.loads.counts[a * per..b * per].to_vec(),
        };
        Some(Chunk::Part(Box::new(self.s.chunk_of(loads, a))))
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Result<Chunk<'a>, WorkloadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let s: &'a Streamed = self.s;
        let got = match &s.src {
            Src::Memory(w) => Ok(self.memory_next(w)),
            Src::File(f) => self.file_next(f),
        };
        match got {
            Ok(Some(c)) => Some(Ok(c)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
