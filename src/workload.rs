//! The workload: what a command runs on, resolved once.
//!
//! Every command that plans layers (simulate, tune, replay, compare,
//! calibrate) starts from an [`InputSpec`] (a trace or the reference's
//! synthetic scenarios, with the EP size, batch, seed, step/layer selection
//! and dimension overrides) and resolves it here into [`Workload`]s: per-rank
//! loads at the requested EP size, the per-token routing a replay needs, the
//! model shape, and a note saying how the loads were derived. There is one
//! synthetic builder, one resampling and one re-chunking, so a simulated
//! layer and a replayed layer are always the same input.

use crate::progress::{Progress, Silent};
use crate::results::ResultRow;
use crate::trace::synthetic::{scenario_trace, Scenario, SyntheticShape};
use crate::trace::{read_trace, EpSplit, Loads, ModelMeta, TokenTrace, Trace, TraceError};
use std::path::{Path, PathBuf};

mod stream;
pub use stream::{Chunk, Chunks, Streamed};

/// Tokens per GPU of a synthetic scenario when not given (the paper's
/// gpt-oss-120b layer benchmark).
pub const DEFAULT_SYNTHETIC_TOKENS: u64 = 32_768;

/// The batch simulated for counts that cover many forward passes when the
/// user gives no `--tokens-per-rank`: a realistic prefill chunk per GPU.
pub const DEFAULT_AGGREGATE_TOKENS: u64 = 16_384;

/// Above this many tokens per rank, one forward pass is implausible: the
/// counts were almost certainly summed over many passes.
pub const IMPLAUSIBLE_TOKENS_PER_RANK: u64 = 262_144;

/// Refuse to resample into more than this much memory (token rows of every
/// selected layer are materialised).
pub const RESAMPLE_LIMIT_BYTES: u64 = 8 << 30;

/// MoE layers of gpt-oss-120b, for the default synthetic shape's memory.
const GPT_OSS_120B_LAYERS: u32 = 36;

/// Where the routing comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    Trace(PathBuf),
    /// The reference test's scenarios, each its own workload.
    Synthetic(Vec<Scenario>),
}

/// Which steps of a trace to keep.
#[derive(Debug, Clone, PartialEq)]
pub enum StepPick {
    All,
    /// The first step only (replay's default: a trace's steps are usually
    /// alike, and each replayed layer costs GPU time).
    First,
    Ids(Vec<u32>),
}

/// Shape options: the synthetic shape, or overrides of a trace's dims.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DimOverrides {
    pub experts: Option<u32>,
    pub top_k: Option<u32>,
    pub hidden_size: Option<u32>,
    pub intermediate_size: Option<u32>,
    /// MoE layers of the whole model (for the all-layer memory figure).
    pub num_layers: Option<u32>,
}

/// What to run on, before anything is read.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub source: InputSource,
    pub dims: DimOverrides,
    /// EP ranks (GPUs).
    pub gpus: usize,
    /// Rescale (load level) or resample (token level) to this many tokens
    /// per rank per step; the batch size of synthetic scenarios.
    pub tokens_per_rank: Option<u64>,
    pub seed: u64,
    pub steps: StepPick,
    /// Layer ids to keep (empty: all).
    pub layers: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("--gpus must be at least 1")]
    NoGpus,
    #[error("--tokens-per-rank must be at least 1")]
    NoTokens,
    #[error("--synthetic: {0}")]
    Scenario(#[from] crate::trace::synthetic::ScenarioError),
    #[error("{path}: {option} applies to --synthetic inputs only; the trace records {what}")]
    NotApplicable {
        path: String,
        option: &'static str,
        what: String,
    },
    #[error("{path}: no such steps {steps:?} / layers {layers:?} (it has steps {has_steps:?}, layers {has_layers:?})")]
    Selection {
        path: String,
        steps: Vec<u32>,
        layers: Vec<u32>,
        has_steps: Vec<u32>,
        has_layers: Vec<u32>,
    },
    #[error("{path}: resampling to {tokens} tokens/rank on {gpus} GPUs would hold {rows} token rows ({gib:.1} GiB) in memory, above the {limit} GiB limit; ask for fewer tokens per rank, or fewer --steps/--layers")]
    TooLarge {
        path: String,
        tokens: u64,
        gpus: usize,
        rows: u64,
        gib: f64,
        limit: u64,
    },
}

/// Per-token routing of one rank for one layer: `top_k` expert ids and
/// router weights per token, token-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankRouting {
    pub ids: Vec<i32>,
    pub weights: Vec<f32>,
}

/// How the per-token routing of a layer is obtained.
#[derive(Debug, Clone)]
enum Routing {
    /// Recorded (or resampled) tokens, and for each selected (step, layer)
    /// its rows in (rank, token) order.
    Tokens {
        tokens: Box<TokenTrace>,
        rows: Vec<Vec<usize>>,
    },
    /// A synthetic scenario: the same tokens on every rank.
    Synthetic { scenario: Scenario, tokens: u64 },
    /// Load level only: tokens are synthesised from the counts.
    Counts,
}

/// One resolved input.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Trace file name, or "synthetic".
    pub name: String,
    /// The synthetic scenario, if this is one.
    pub scenario: Option<Scenario>,
    pub model: ModelMeta,
    pub gpus: usize,
    /// Per-rank loads at `gpus` ranks, selected steps and layers only.
    pub loads: Loads,
    /// How the per-rank loads were derived (for honest reports).
    pub note: String,
    /// Warnings a user should see (aggregated counts, thin resampling).
    pub warnings: Vec<String>,
    /// Position of `loads`' first step among the input's steps: 0, except
    /// for a chunk of a [`Streamed`] input (EPLB's rules count steps from
    /// the input's start).
    pub first_step: usize,
    routing: Routing,
}

impl InputSpec {
    /// A whole trace at `gpus` ranks, as recorded (no rescaling).
    pub fn trace(path: impl Into<PathBuf>, gpus: usize) -> InputSpec {
        InputSpec {
            source: InputSource::Trace(path.into()),
            dims: DimOverrides::default(),
            gpus,
            tokens_per_rank: None,
            seed: 0,
            steps: StepPick::All,
            layers: Vec::new(),
        }
    }

    /// Synthetic scenarios of the default (gpt-oss-120b) shape.
    pub fn synthetic(scenarios: Vec<Scenario>, gpus: usize) -> InputSpec {
        InputSpec {
            source: InputSource::Synthetic(scenarios),
            ..InputSpec::trace(PathBuf::new(), gpus)
        }
    }

    /// A workload of per-rank loads already in memory (generated, not
    /// read), at their own number of ranks, as recorded.
    pub fn from_loads(
        name: &str,
        model: ModelMeta,
        loads: Loads,
    ) -> Result<Workload, WorkloadError> {
        use crate::trace::{CaptureMeta, TraceMeta};
        let capture = CaptureMeta {
            ranks: loads.ranks as u32,
            rank_assignment: "recorded".into(),
            ..Default::default()
        };
        let gpus = loads.ranks;
        let trace = Trace {
            meta: TraceMeta::new(model, capture),
            loads,
            tokens: None,
        };
        InputSpec::trace(name, gpus).resolve_trace(Path::new(name), trace)
    }

    /// Read and derive every workload the spec names.
    pub fn resolve(&self) -> Result<Vec<Workload>, WorkloadError> {
        self.resolve_with(&Silent)
    }

    /// [`InputSpec::resolve`], reporting slow stages (reading, resampling).
    pub fn resolve_with(&self, progress: &dyn Progress) -> Result<Vec<Workload>, WorkloadError> {
        self.check()?;
        match &self.source {
            InputSource::Synthetic(scenarios) => scenarios
                .iter()
                .map(|&s| self.scenario_workload(s))
                .collect::<Result<_, _>>(),
            InputSource::Trace(path) => {
                let trace = read_trace(path, true)?;
                Ok(vec![self.trace_workload(path, trace, progress)?])
            }
        }
    }

    /// Resolve a trace already in memory (read once, used many times).
    pub fn resolve_trace(&self, path: &Path, trace: Trace) -> Result<Workload, WorkloadError> {
        self.check()?;
        self.trace_workload(path, trace, &Silent)
    }

    fn check(&self) -> Result<(), WorkloadError> {
        if self.gpus == 0 {
            return Err(WorkloadError::NoGpus);
        }
        if self.tokens_per_rank == Some(0) {
            return Err(WorkloadError::NoTokens);
        }
        Ok(())
    }

    /// The synthetic shape: overrides, else the gpt-oss-120b layer.
    pub fn synthetic_shape(&self) -> SyntheticShape {
        let d = SyntheticShape::GPT_OSS_120B;
        SyntheticShape {
            experts: self.dims.experts.unwrap_or(d.experts),
            top_k: self.dims.top_k.unwrap_or(d.top_k),
            hidden_size: self.dims.hidden_size.unwrap_or(d.hidden_size),
            intermediate_size: self.dims.intermediate_size.unwrap_or(d.intermediate_size),
        }
    }

    fn scenario_workload(&self, scenario: Scenario) -> Result<Workload, WorkloadError> {
        let shape = self.synthetic_shape();
        let tokens = self.tokens_per_rank.unwrap_or(DEFAULT_SYNTHETIC_TOKENS);
        let trace = scenario_trace(scenario, self.gpus as u32, tokens, shape)?;
        let mut model = trace.meta.model;
        model.num_layers = match self.dims.num_layers {
            Some(n) => n,
            None if shape == SyntheticShape::GPT_OSS_120B => GPT_OSS_120B_LAYERS,
            None => 0,
        };
        Ok(Workload {
            name: "synthetic".into(),
            scenario: Some(scenario),
            model,
            gpus: self.gpus,
            loads: trace.loads,
            note: EpSplit::AsRecorded.as_str().into(),
            warnings: Vec::new(),
            first_step: 0,
            routing: Routing::Synthetic { scenario, tokens },
        })
    }

    fn trace_workload(
        &self,
        path: &Path,
        mut trace: Trace,
        progress: &dyn Progress,
    ) -> Result<Workload, WorkloadError> {
        let shown = path.display().to_string();
        let m = &trace.meta.model;
        for (option, given, has) in [
            ("--experts", self.dims.experts, m.num_experts),
            ("--top-k", self.dims.top_k, m.top_k),
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
            trace.meta.model.hidden_size = d;
        }
        if let Some(i) = self.dims.intermediate_size {
            trace.meta.model.intermediate_size = i;
        }
        if let Some(n) = self.dims.num_layers {
            trace.meta.model.num_layers = n;
        }
        select(&mut trace, &self.steps, &self.layers, &shown)?;
        let name = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut warnings = Vec::new();
        let (loads, routing, note) = match trace.tokens.take() {
            Some(tok) => self.token_loads(&trace, tok, &shown, &mut warnings, progress)?,
            None => self.count_loads(&trace, &shown, &mut warnings),
        };
        Ok(Workload {
            name,
            scenario: None,
            model: trace.meta.model,
            gpus: self.gpus,
            loads,
            note,
            warnings,
            first_step: 0,
            routing,
        })
    }

    /// Token level: re-chunk (and resample, once) the recorded tokens.
    fn token_loads(
        &self,
        trace: &Trace,
        tok: TokenTrace,
        shown: &str,
        warnings: &mut Vec<String>,
        progress: &dyn Progress,
    ) -> Result<(Loads, Routing, String), WorkloadError> {
        let e_n = trace.meta.model.num_experts as usize;
        let gpus = self.gpus;
        let (tok, scaled) = match self.tokens_per_rank {
            Some(tpr) => {
                let layer_steps = trace.loads.layer_steps() as u64;
                let rows = tpr * gpus as u64 * layer_steps;
                // columns of a token row, plus the row index the re-chunking sorts
                let bytes = rows * (20 + 6 * tok.top_k as u64 + 16);
                if bytes > RESAMPLE_LIMIT_BYTES {
                    return Err(WorkloadError::TooLarge {
                        path: shown.into(),
                        tokens: tpr,
                        gpus,
                        rows,
                        gib: bytes as f64 / (1u64 << 30) as f64,
                        limit: RESAMPLE_LIMIT_BYTES >> 30,
                    });
                }
                if let Some(w) = thin_resampling(&tok, tpr * gpus as u64) {
                    warnings.push(format!("{shown}: {w}"));
                }
                progress.status(&format!(
                    "resampling {shown}: whole sequences to {tpr} tokens/rank x {gpus} GPUs over {layer_steps} layer-step{} ({rows} token rows, about {:.1} GiB)",
                    if layer_steps == 1 { "" } else { "s" },
                    bytes as f64 / (1u64 << 30) as f64
                ));
                (
                    tok.resampled(tpr as usize * gpus, self.seed),
                    format!(
                        "; resampled whole sequences to {tpr} tokens/rank (seed {})",
                        self.seed
                    ),
                )
            }
            None => (tok, String::new()),
        };
        let (loads, split) = tok.loads_at(e_n, gpus);
        let rows = rows_by_layer(&tok, &loads);
        let split = if scaled.is_empty() {
            split
        } else {
            EpSplit::Rechunked
        };
        Ok((
            loads,
            Routing::Tokens {
                tokens: Box::new(tok),
                rows,
            },
            format!("{}{scaled}", split.as_str()),
        ))
    }

    /// Load level: split per rank, rescale, and catch counts summed over
    /// many forward passes (priced as one giant batch they mislead).
    fn count_loads(
        &self,
        trace: &Trace,
        shown: &str,
        warnings: &mut Vec<String>,
    ) -> (Loads, Routing, String) {
        let k = trace.meta.model.top_k.max(1) as u64;
        let (loads, split) = trace.loads.at_ranks(self.gpus);
        let implied = implied_tokens_per_rank(&loads, k);
        let (tpr, note) = self.count_derivation(&trace.meta, implied, split, shown, warnings);
        match tpr {
            Some(t) => (loads.rescaled(t, k), Routing::Counts, note),
            None => (loads, Routing::Counts, note),
        }
    }

    /// How load-level counts become per-rank loads: the batch they are
    /// rescaled to (if any) and the note saying so. `implied`: the largest
    /// tokens per rank of any selected layer-step.
    fn count_derivation(
        &self,
        meta: &crate::trace::TraceMeta,
        implied: u64,
        split: EpSplit,
        shown: &str,
        warnings: &mut Vec<String>,
    ) -> (Option<u64>, String) {
        // Some(0): the source sums several passes without saying how many
        let passes = meta.capture.passes_aggregated.filter(|&p| p != 1);
        let mut tpr = self.tokens_per_rank;
        if tpr.is_none() && (passes.is_some() || implied > IMPLAUSIBLE_TOKENS_PER_RANK) {
            let why = match passes {
                Some(0) => "its counts are summed over several forward passes".to_string(),
                Some(p) => format!("its counts are summed over {p} forward passes"),
                None => format!(
                    "its counts imply {implied} tokens per GPU in one pass, more than one forward pass holds; they were probably summed over many passes"
                ),
            };
            warnings.push(format!(
                "{shown}: {why}. Simulating a batch of {DEFAULT_AGGREGATE_TOKENS} tokens/rank with the same load shape (set --tokens-per-rank to choose)"
            ));
            tpr = Some(DEFAULT_AGGREGATE_TOKENS);
        }
        let note = match tpr {
            Some(t) => format!("{}; counts rescaled to {t} tokens/rank", split.as_str()),
            None => split.as_str().to_string(),
        };
        (tpr, note)
    }
}

/// Largest tokens per rank of any layer-step (global copies / (ranks * k)).
fn implied_tokens_per_rank(loads: &Loads, k: u64) -> u64 {
    let mut most = 0;
    for s in 0..loads.steps() {
        for l in 0..loads.layers() {
            most = most.max(loads.total(s, l) / (loads.ranks as u64 * k));
        }
    }
    most
}

/// A warning when few distinct sequences back a much larger resampled batch.
fn thin_resampling(tok: &TokenTrace, want: u64) -> Option<String> {
    use std::collections::BTreeSet;
    let mut per_step: std::collections::BTreeMap<u32, (BTreeSet<u32>, u64)> = Default::default();
    let first_layer = tok.layer.iter().copied().min()?;
    for i in 0..tok.len() {
        if tok.layer[i] == first_layer {
            let e = per_step.entry(tok.step[i]).or_default();
            e.0.insert(tok.sequence[i]);
            e.1 += 1;
        }
    }
    let seqs = per_step.values().map(|(s, _)| s.len()).min()?;
    let have = per_step.values().map(|(_, n)| *n).min()?;
    (want >= 4 * have.max(1)).then(|| {
        format!(
            "resampling {have} recorded tokens into {want} per step: each step is backed by only {seqs} distinct sequence{} (each repeated about {:.0} times)",
            if seqs == 1 { "" } else { "s" },
            want as f64 / have.max(1) as f64
        )
    })
}

/// Keep the selected steps and layers of a trace (both levels).
fn select(
    trace: &mut Trace,
    steps: &StepPick,
    layers: &[u32],
    shown: &str,
) -> Result<(), WorkloadError> {
    let step_ids: Vec<u32> = match steps {
        StepPick::All => Vec::new(),
        StepPick::First => trace.loads.step_ids.first().copied().into_iter().collect(),
        StepPick::Ids(v) => v.clone(),
    };
    if step_ids.is_empty() && layers.is_empty() {
        return Ok(());
    }
    let missing = step_ids.iter().any(|s| !trace.loads.step_ids.contains(s))
        || layers.iter().any(|l| !trace.loads.layer_ids.contains(l));
    let picked = (!missing)
        .then(|| trace.loads.select(&step_ids, layers))
        .flatten();
    let Some(loads) = picked else {
        return Err(WorkloadError::Selection {
            path: shown.into(),
            steps: step_ids,
            layers: layers.to_vec(),
            has_steps: trace.loads.step_ids.clone(),
            has_layers: trace.loads.layer_ids.clone(),
        });
    };
    trace.loads = loads;
    if let Some(t) = trace.tokens.as_mut() {
        let keep = |i: usize| {
            (step_ids.is_empty() || step_ids.contains(&t.step[i]))
                && (layers.is_empty() || layers.contains(&t.layer[i]))
        };
        let mut sub = TokenTrace::new(t.top_k);
        let k = t.top_k;
        for i in (0..t.len()).filter(|&i| keep(i)) {
            sub.push(
                t.step[i],
                t.layer[i],
                t.rank[i],
                t.token[i],
                t.sequence[i],
                &t.experts[i * k..(i + 1) * k],
                &t.weights[i * k..(i + 1) * k],
            );
        }
        *t = sub;
    }
    Ok(())
}

/// Row indices of each (step, layer) of `loads`, in (rank, token) order:
/// the order [`TokenTrace::loads_at`] chunks tokens over ranks in.
fn rows_by_layer(tok: &TokenTrace, loads: &Loads) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); loads.layer_steps()];
    for i in 0..tok.len() {
        let s = loads.step_ids.binary_search(&tok.step[i]);
        let l = loads.layer_ids.binary_search(&tok.layer[i]);
        if let (Ok(s), Ok(l)) = (s, l) {
            out[s * loads.layers() + l].push(i);
        }
    }
    for rows in &mut out {
        rows.sort_by_key(|&i| (tok.rank[i], tok.token[i]));
    }
    out
}

impl Workload {
    /// "synthetic 95:1" or the trace's file name.
    pub fn label(&self) -> String {
        match self.scenario {
            Some(s) => format!("synthetic {s}"),
            None => self.name.clone(),
        }
    }

    /// The scenario column of result rows ("" for traces).
    pub fn scenario_label(&self) -> String {
        self.scenario.map(|s| s.to_string()).unwrap_or_default()
    }

    /// Tokens per rank of layer-step `(s, l)`, as every row reports it:
    /// global copies / (gpus * k).
    pub fn tokens_per_rank(&self, s: usize, l: usize) -> u64 {
        let k = self.model.top_k.max(1) as u64;
        self.loads.total(s, l) / (self.gpus as u64 * k)
    }

    /// Row keys shared by the simulated and measured rows of `(s, l)`.
    pub fn row_base(&self, s: usize, l: usize) -> ResultRow {
        ResultRow {
            trace: self.name.clone(),
            scenario: self.scenario_label(),
            step: self.loads.step_ids[s],
            layer: self.loads.layer_ids[l],
            gpus: self.gpus as u32,
            tokens_per_rank: self.tokens_per_rank(s, l),
            input_note: self.note.clone(),
            hidden_size: self.model.hidden_size,
            intermediate_size: self.model.intermediate_size,
            experts: self.model.num_experts,
            top_k: self.model.top_k,
            ..Default::default()
        }
    }

    /// Whether the routing replayed is the recorded (or generated) tokens,
    /// rather than tokens made up from counts.
    pub fn has_tokens(&self) -> bool {
        !matches!(self.routing, Routing::Counts)
    }

    /// Per-rank token routing of layer-step `(s, l)` for a replay.
    pub fn rank_routing(&self, s: usize, l: usize) -> Vec<RankRouting> {
        let k = self.model.top_k as usize;
        match &self.routing {
            Routing::Synthetic { scenario, tokens } => {
                let n = self.model.num_experts as u64;
                let mut ids = Vec::with_capacity(*tokens as usize * k);
                for t in 0..*tokens {
                    for j in 0..k as u64 {
                        ids.push(scenario.expert(t, j, *tokens, n) as i32);
                    }
                }
                let weights = vec![1.0 / k as f32; ids.len()];
                vec![RankRouting { ids, weights }; self.gpus]
            }
            Routing::Tokens { tokens, rows } => {
                chunk_ranks(tokens, &rows[s * self.loads.layers() + l], self.gpus)
            }
            Routing::Counts => {
                let n = self.loads.experts;
                let block = self.loads.block(s, l);
                (0..self.gpus)
                    .map(|r| expand_counts(&block[r * n..(r + 1) * n], k))
                    .collect()
            }
        }
    }
}

/// Rows of one layer-step onto ranks: as recorded when the trace has that
/// many ranks, else contiguous chunks in (rank, token) order, as
/// [`TokenTrace::loads_at`] counts them.
fn chunk_ranks(tok: &TokenTrace, rows: &[usize], gpus: usize) -> Vec<RankRouting> {
    let k = tok.top_k;
    let mut out = vec![RankRouting::default(); gpus];
    let push = |rr: &mut RankRouting, i: usize| {
        rr.ids
            .extend(tok.experts[i * k..(i + 1) * k].iter().map(|&e| e as i32));
        rr.weights
            .extend_from_slice(&tok.weights[i * k..(i + 1) * k]);
    };
    if tok.ranks() == gpus {
        for &i in rows {
            push(&mut out[tok.rank[i] as usize], i);
        }
        return out;
    }
    let t = rows.len();
    let (q, r) = (t / gpus, t % gpus);
    let mut pos = 0;
    for (g, rr) in out.iter_mut().enumerate() {
        let len = q + usize::from(g < r);
        for &i in &rows[pos..pos + len] {
            push(rr, i);
        }
        pos += len;
    }
    out
}

/// Tokens of one rank made from its per-expert counts: sorted copies dealt
/// round-robin over the rank's tokens, so a token never repeats an expert
/// unless an expert has more copies than the rank has tokens; weights 1/k.
pub fn expand_counts(counts: &[u64], top_k: usize) -> RankRouting {
    let copies: u64 = counts.iter().sum();
    let t = (copies as usize).div_ceil(top_k.max(1));
    let mut sorted = Vec::with_capacity(copies as usize);
    for (e, &c) in counts.iter().enumerate() {
        sorted.extend(std::iter::repeat_n(e as i32, c as usize));
    }
    // copy j goes to token j mod t, slot j div t
    let mut ids = vec![-1i32; t * top_k];
    for (j, &e) in sorted.iter().enumerate() {
        ids[(j % t) * top_k + j / t] = e;
    }
    // a ragged last slot (copies not a multiple of k) repeats the token's
    // first expert with weight 0, so counts stay exact
    let mut weights = vec![1.0 / top_k as f32; t * top_k];
    for tok in 0..t {
        for s in 0..top_k {
            if ids[tok * top_k + s] < 0 {
                ids[tok * top_k + s] = ids[tok * top_k];
                weights[tok * top_k + s] = 0.0;
            }
        }
    }
    RankRouting { ids, weights }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts_of(rr: &RankRouting, n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for (&e, &w) in rr.ids.iter().zip(&rr.weights) {
            if w > 0.0 {
                c[e as usize] += 1;
            }
        }
        c
    }

    fn olmoe() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/olmoe-1b-7b.parquet")
    }

    fn spec(source: InputSource, gpus: usize, tpr: Option<u64>) -> InputSpec {
        InputSpec {
            source,
            tokens_per_rank: tpr,
            ..InputSpec::trace(PathBuf::new(), gpus)
        }
    }

    #[test]
    fn expanded_counts_are_exact_and_tokens_distinct() {
        let counts = vec![5, 0, 3, 7, 1];
        let rr = expand_counts(&counts, 2);
        assert_eq!(counts_of(&rr, 5), counts);
        assert_eq!(rr.ids.len(), 16);
        for t in rr.ids.chunks(2) {
            assert_ne!(t[0], t[1]);
        }
        let rr = expand_counts(&[2, 2, 1], 2); // 5 copies: one ragged slot
        assert_eq!(counts_of(&rr, 3), vec![2, 2, 1]);
    }

    #[test]
    fn replayed_routing_has_exactly_the_simulated_loads() {
        for tpr in [None, Some(4096)] {
            let w = &spec(InputSource::Trace(olmoe()), 2, tpr).resolve().unwrap()[0];
            let n = w.model.num_experts as usize;
            for s in 0..w.loads.steps() {
                for l in 0..w.loads.layers() {
                    let rr = w.rank_routing(s, l);
                    let block = w.loads.block(s, l);
                    for (r, rank) in rr.iter().enumerate() {
                        assert_eq!(counts_of(rank, n), &block[r * n..(r + 1) * n]);
                    }
                }
            }
        }
    }

    #[test]
    fn synthetic_routing_matches_the_scenario_counts() {
        let sc: Scenario = "95:1".parse().unwrap();
        let mut sp = spec(InputSource::Synthetic(vec![sc]), 2, Some(1000));
        sp.dims.experts = Some(16);
        sp.dims.hidden_size = Some(64);
        sp.dims.intermediate_size = Some(64);
        let w = &sp.resolve().unwrap()[0];
        let want = sc.rank_counts(1000, 16, 4);
        assert_eq!(w.loads.block(0, 0)[..16], want[..]);
        for rr in w.rank_routing(0, 0) {
            assert_eq!(counts_of(&rr, 16), want);
        }
        assert_eq!(w.tokens_per_rank(0, 0), 1000);
        assert_eq!(
            w.model.num_layers, 0,
            "not the gpt-oss shape: layers unknown"
        );
    }

    #[test]
    fn options_that_do_not_apply_to_a_trace_are_refused() {
        let mut sp = spec(InputSource::Trace(olmoe()), 8, None);
        sp.dims.experts = Some(64);
        let e = sp.resolve().unwrap_err().to_string();
        assert!(
            e.contains("--experts applies to --synthetic inputs only"),
            "{e}"
        );
        assert!(e.contains("experts 64 (given 64)"), "{e}");
        let mut sp = spec(InputSource::Trace(olmoe()), 8, None);
        sp.steps = StepPick::Ids(vec![12345]);
        assert!(sp
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("no such steps"));
    }

    #[test]
    fn huge_resampling_is_refused_before_any_work() {
        let flame = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
        let tok_trace = std::fs::read_dir(&flame)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".tokens.parquet"))
            .map(|p| {
                let s = p.to_string_lossy().replace(".tokens.parquet", ".parquet");
                PathBuf::from(s)
            })
            .expect("a bundled token-level trace");
        let e = spec(InputSource::Trace(tok_trace), 8, Some(100_000_000))
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("above the 8 GiB limit"), "{e}");
    }

    #[test]
    fn summed_counts_are_simulated_at_a_stated_batch() {
        let tr = read_trace(&olmoe(), false).unwrap();
        let mut big = tr.clone();
        for c in &mut big.loads.counts {
            *c *= 1000;
        }
        let sp = spec(InputSource::Trace(olmoe()), 8, None);
        let w = sp.resolve_trace(&olmoe(), big).unwrap();
        assert!(
            w.warnings[0].contains("probably summed over many passes"),
            "{:?}",
            w.warnings
        );
        assert_eq!(w.tokens_per_rank(0, 0), DEFAULT_AGGREGATE_TOKENS);
        let w = sp.resolve_trace(&olmoe(), tr).unwrap();
        assert!(w.warnings.is_empty());
    }
}
