//! Trace metadata: model dimensions, routing function, how it was captured,
//! where it came from and under which licence.

use serde::{Deserialize, Serialize};

/// Version of the trace schema written by this build.
pub const SCHEMA_VERSION: u32 = 1;

/// How router logits become top-k expert ids and weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoutingFn {
    /// softmax over all experts, then top-k; weights renormalised to sum 1
    /// when `renormalize` (Mixtral, Qwen2/3-MoE with norm_topk_prob, OLMoE
    /// without it).
    SoftmaxTopk { renormalize: bool },
    /// top-k on the raw logits, then softmax over the k chosen (gpt-oss).
    TopkSoftmax,
    /// sigmoid scores plus a per-expert correction bias for selection,
    /// group-limited top-k, weights from the unbiased scores renormalised
    /// and scaled (DeepSeek-V3).
    SigmoidGroupTopk {
        n_group: u32,
        topk_group: u32,
        routed_scaling_factor: f32,
        renormalize: bool,
    },
    /// The source carried chosen ids (or only counts): no function applied.
    #[default]
    Recorded,
}

/// The model whose routing was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub name: String,
    pub num_experts: u32,
    pub top_k: u32,
    /// Hidden size D; 0 when unknown (commands that need it say so).
    pub hidden_size: u32,
    /// Expert intermediate size I; 0 when unknown.
    pub intermediate_size: u32,
    /// Number of MoE layers in the model (not necessarily all recorded).
    pub num_layers: u32,
    /// Dtype of weights and activations, e.g. "bf16".
    pub dtype: String,
    pub routing: RoutingFn,
}

impl ModelMeta {
    pub fn dtype_bytes(&self) -> u64 {
        match self.dtype.as_str() {
            "f32" | "fp32" | "float32" => 4,
            "fp8" | "f8" | "e4m3" => 1,
            _ => 2,
        }
    }

    /// Bytes of one expert's weights: gate_up D x 2I + bias 2I, down I x D +
    /// bias D (`planner.md`, "Costs that follow from a plan").
    pub fn expert_bytes(&self) -> u64 {
        expert_bytes(
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.dtype_bytes(),
        )
    }

    pub fn has_dims(&self) -> bool {
        self.hidden_size > 0 && self.intermediate_size > 0
    }
}

/// How the trace was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CaptureMeta {
    /// Source format, e.g. "load-csv", "pt-routing", "logits-safetensors".
    pub source_format: String,
    /// Input files, as given.
    pub files: Vec<String>,
    /// Number of EP ranks whose routing the trace holds (1 for global counts).
    pub ranks: u32,
    /// Tokens per rank per step, when known.
    pub tokens_per_rank: Option<u64>,
    /// "recorded" (the source named ranks), "contiguous" (one process's
    /// tokens split into contiguous chunks) or "global" (counts summed over
    /// ranks; no rank information).
    pub rank_assignment: String,
    pub tool_version: String,
    pub command: String,
    /// Token-level rows exist in the sibling tokens file.
    pub token_level: bool,
    /// Tokens dropped by `--nan skip`.
    #[serde(default)]
    pub skipped_tokens: u64,
    /// Raw router logits kept in the tokens file (`--keep-logits`).
    #[serde(default)]
    pub logits_kept: bool,
    /// Forward passes summed into each step's counts, for sources that
    /// aggregate (engine statistics windows, EPLB load matrices): `Some(n)`
    /// with n passes per step, `Some(0)` when the source sums several passes
    /// without saying how many. `None`: each step is one forward pass (or
    /// one recorded batch) as the source defines it.
    #[serde(default)]
    pub passes_aggregated: Option<u64>,
}

/// Metadata embedded in every trace file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceMeta {
    pub schema_version: u32,
    pub model: ModelMeta,
    pub capture: CaptureMeta,
    /// Where the routing came from (who recorded it, which commit or URL).
    pub provenance: String,
    pub licence: String,
    /// Optional human label per step id (e.g. the domain of a dataset), in
    /// step order; empty when steps are plain indices.
    #[serde(default)]
    pub step_labels: Vec<String>,
}

impl TraceMeta {
    pub fn new(model: ModelMeta, capture: CaptureMeta) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            model,
            capture,
            provenance: String::new(),
            licence: String::new(),
            step_labels: Vec::new(),
        }
    }
}

/// Bytes of one expert: gate_up `D x 2I` + bias `2I`, down `I x D` + bias `D`.
pub fn expert_bytes(hidden: u64, intermediate: u64, dtype_bytes: u64) -> u64 {
    let (d, i) = (hidden, intermediate);
    (d * 2 * i + 2 * i + i * d + d) * dtype_bytes
}

/// The command line that produced an output, for provenance.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

pub fn tool_version() -> String {
    format!("llep-trace {}", env!("CARGO_PKG_VERSION"))
}
