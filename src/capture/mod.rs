//! Capture: turn what users recorded into one trace format.
//!
//! Sources:
//! - router logits (`.npy`, `.npz`, `.safetensors`, and capture directories
//!   written by the `llep_capture` Python hook): [`logits`], with the
//!   routing functions of [`routing`];
//! - per-token routing: `.pt` dicts of ids and scores (FLAME-MoE), JSONL/CSV
//!   with a field mapping (Megatron-LM preset), vLLM routed-experts arrays:
//!   [`routed`];
//! - aggregate loads: CSV/JSON counts ([`loads`]), SGLang expert-distribution
//!   dumps and TensorRT-LLM load statistics ([`engines`]).
//!
//! Binary inputs go through the readers of [`tensor`] (npy/npz/safetensors)
//! and [`pt`] (restricted pickle: nothing in a file is ever executed).
//!
//! Around the readers: [`format`] names the sources and detects them,
//! [`records`] groups and filters record sources, [`checks`] holds options
//! against the data, [`sanity`] spots warm-up-like routing, and [`staging`]
//! commits the two output files together.

pub mod checks;
pub mod engines;
pub mod format;
pub mod loads;
pub mod loads_stream;
pub mod logits;
pub mod pt;
pub mod records;
pub mod routed;
pub mod routing;
pub mod sanity;
pub mod sink;
pub mod staging;
pub mod tensor;

pub use format::{DetectError, Format};

use crate::trace::{RoutingFn, TraceError};
use std::path::PathBuf;

/// What the input files lack, given on the command line.
#[derive(Debug, Clone, Default)]
pub struct ModelOverrides {
    pub name: Option<String>,
    pub num_experts: Option<u32>,
    pub top_k: Option<u32>,
    pub hidden_size: Option<u32>,
    pub intermediate_size: Option<u32>,
    pub num_layers: Option<u32>,
    pub dtype: Option<String>,
    pub routing: Option<RoutingFn>,
}

/// Options common to every source.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    pub model: ModelOverrides,
    /// Map the distinct values of this extra column to steps (e.g. domain).
    pub group_by: Option<String>,
    /// Keep only rows whose column equals the value (`--filter model=X`).
    pub filters: Vec<(String, String)>,
    pub provenance: Option<String>,
    pub licence: Option<String>,
    /// JSON key holding the matrix when the file is an object.
    pub json_key: Option<String>,
    /// Where progress goes (nowhere by default).
    pub progress: crate::progress::Reporter,
    /// Keep the raw router logits in the tokens file.
    pub keep_logits: bool,
    /// Drop tokens with NaN/Inf logits (counted) instead of failing.
    pub nan_skip: bool,
    /// Tensor-name pattern of the per-layer logits, `{layer}` standing for
    /// the layer id (default `layer.{layer}.logits`).
    pub tensor_pattern: Option<String>,
    /// Pattern of the per-layer chosen ids (default `layer.{layer}.ids`).
    pub ids_pattern: Option<String>,
    /// Pattern of the per-layer correction bias (default `layer.{layer}.bias`).
    pub bias_pattern: Option<String>,
    /// Tokens per sequence, for the `sequence` column.
    pub sequence_length: Option<u32>,
    /// Field mapping for record sources: trace field -> source field.
    pub fields: Vec<(String, String)>,
    /// Rank of every token when the source does not say (e.g. one file per rank).
    pub rank: Option<u32>,
    /// Forward passes an EPLB load matrix sums (its window), when known.
    pub eplb_passes: Option<u64>,
    /// vLLM: the hidden layers that are MoE layers (others are dense).
    pub moe_layers: Vec<u32>,
    /// vLLM: layers `0..n` are dense (DeepSeek's `first_k_dense_replace`).
    pub first_dense_layers: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("{0}")]
    Usage(String),
}

/// Open a CSV file (fields trimmed) and read its header, lower-cased, so
/// every CSV source names columns case-insensitively and fails the same way.
pub(crate) fn open_csv(
    path: &std::path::Path,
) -> Result<(csv::Reader<std::fs::File>, Vec<String>), CaptureError> {
    open_csv_with(path, csv::Trim::All)
}

/// [`open_csv`] with the header trimmed but the fields left as they are
/// (the reader's trim builds a new record per row): the caller trims the
/// fields it reads, with `str::trim` as the reader would.
pub(crate) fn open_csv_untrimmed(
    path: &std::path::Path,
) -> Result<(csv::Reader<std::fs::File>, Vec<String>), CaptureError> {
    open_csv_with(path, csv::Trim::Headers)
}

fn open_csv_with(
    path: &std::path::Path,
    trim: csv::Trim,
) -> Result<(csv::Reader<std::fs::File>, Vec<String>), CaptureError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(trim)
        .from_path(path)
        .map_err(|e| CaptureError::input(path, e.to_string()))?;
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| CaptureError::input(path, e.to_string()))?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    Ok((rdr, headers))
}

impl CaptureError {
    pub fn input(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        CaptureError::Input {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
