//! Capture: turn what users recorded into one trace format.
//!
//! Sources so far: load-level counts (CSV/JSON `layer, expert, count` with
//! optional `step`/`rank`, or a `[layers][experts]` JSON matrix).

pub mod loads;

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
    pub quiet: bool,
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

impl CaptureError {
    pub fn input(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        CaptureError::Input {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
