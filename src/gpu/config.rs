//! What a replay is asked to do: the expert layer's configuration and its
//! inputs (every rank's routing of one layer, keyed like a result row),
//! and the EPLB settings and placements the `eplb` policies replay.

use super::Gate;
use crate::plan::eplb::EplbPlacement;
use crate::plan::replica_split::ReplicaSplit;
use crate::plan::Policy;
use crate::results::ResultRow;

/// Activation of the experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// gpt-oss: clamped SwiGLU (alpha 1.702, limit 7, up + 1).
    GptOss,
    /// silu(gate) * up.
    SwiGlu,
}

/// One rank's routing for one layer: `ids[t * k + j]`, router weights alike.
pub use crate::workload::RankRouting;

/// One layer input to replay: result-row keys plus every rank's routing.
#[derive(Debug, Clone)]
pub struct Case {
    /// Row keys: trace, scenario, step, layer, tokens_per_rank, input_note,
    /// model dimensions.
    pub base: ResultRow,
    pub routing: Vec<RankRouting>,
    /// The EPLB placement of this layer-step for each of
    /// [`ReplayConfig::eplb`]'s settings (empty without EPLB).
    pub placements: Vec<EplbPlacement>,
}

/// One EPLB setting a replay measures `eplb` and `eplb+llep` under.
#[derive(Debug, Clone, PartialEq)]
pub struct EplbReplay {
    /// Redundant physical experts per layer.
    pub redundant: usize,
    /// How each copy picks its replica.
    pub split: ReplicaSplit,
    /// The setting in words, appended to the rows' `input_note` (as
    /// `simulate` does, so measured and simulated rows join).
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub gpus: usize,
    pub hidden: usize,
    pub inter: usize,
    pub experts: usize,
    pub top_k: usize,
    pub act: Act,
    pub alpha: f64,
    pub min_gemm: u64,
    /// (policy, gate) pairs; the gate matters for llep only.
    pub settings: Vec<(Policy, Gate)>,
    pub warmup: usize,
    pub runs: usize,
    pub seed: u64,
    /// Tokens per rank checked against the dense reference.
    pub samples: usize,
    /// The cost-aware gate's judge, for `llep-auto` settings.
    pub arbiter: Option<std::sync::Arc<dyn crate::plan::Arbiter>>,
    /// Training step: each run is the forward, then its backward.
    pub train: bool,
    /// Training step: gate_up output and activation recomputed in backward
    /// instead of kept from the forward.
    pub recompute: bool,
    /// EPLB settings the `eplb` and `eplb+llep` settings run under, each a
    /// row of its own.
    pub eplb: Vec<EplbReplay>,
    /// The library of the bf16 GEMMs (`--gemm`).
    pub gemm: super::gemm::GemmImpl,
    /// The layer's schedule: sequential, or pipelined in chunks (forward
    /// pass only; a training run keeps the sequential schedule).
    pub overlap: super::pipeline::Overlap,
    /// With overlap: the token exchange's stream at high priority (off by
    /// default: not faster where measured).
    pub net_priority: bool,
    /// Time a case's plain settings in turns, one run of each per round
    /// (see `Worker::measure_all`); off: each setting's runs back to back.
    pub interleave: bool,
    /// Each compute phase's expert units launched as one CUDA graph
    /// (`--cuda-graphs on`, forward pass only; see `graphs`).
    pub cuda_graphs: bool,
    /// How tokens and weights move between GPUs (`--exchange`).
    pub exchange: super::copy_engine::Exchange,
    /// Compute streams (`--compute-streams`): 2 alternates the large expert
    /// units between two streams (`units::TwoStreams`).
    pub compute_streams: usize,
    /// llep-auto decides on a helper thread kept warm (`--decision-thread
    /// on`, `decider`), or inline on the worker thread.
    pub decision_thread: bool,
}
