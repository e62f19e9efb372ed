//! Traces: what one recorded MoE run routed, as self-describing Parquet.
//!
//! A trace is one Parquet file of load-level rows (`step, layer, rank,
//! expert, count`), always present, plus, when the source had per-token
//! routing, a sibling `<stem>.tokens.parquet` with one row per token (its
//! top-k expert ids and router weights). Both files embed the same
//! [`TraceMeta`] as JSON under the Parquet key-value key
//! [`schema::META_KEY`], so either file describes itself, and both read in
//! polars, pandas, pyarrow or duckdb without this tool.

pub mod loads;
pub mod meta;
pub mod parquet_io;
pub mod schema;
pub mod synthetic;
pub mod tokens;

pub use loads::{EpSplit, Loads};
pub use meta::{CaptureMeta, ModelMeta, RoutingFn, TraceMeta};
pub use parquet_io::{read_trace, tokens_path_for, write_trace, TraceError};
pub use tokens::TokenTrace;

/// A trace in memory: metadata, load level, and token level when present.
#[derive(Debug, Clone)]
pub struct Trace {
    pub meta: TraceMeta,
    pub loads: Loads,
    pub tokens: Option<TokenTrace>,
}

impl Trace {
    /// Build the trace from token-level routing, deriving the load level.
    pub fn from_tokens(meta: TraceMeta, tokens: TokenTrace) -> Self {
        let loads = tokens.to_loads(meta.model.num_experts as usize);
        Self {
            meta,
            loads,
            tokens: Some(tokens),
        }
    }
}
