//! The trace schema, declared once: column names and Arrow schemas for the
//! load-level and token-level files. Readers and writers use only these.

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use std::sync::Arc;

/// Parquet key-value key holding the JSON [`super::TraceMeta`].
pub const META_KEY: &str = "llep_trace.meta";

pub const STEP: &str = "step";
pub const LAYER: &str = "layer";
pub const RANK: &str = "rank";
pub const EXPERT: &str = "expert";
pub const COUNT: &str = "count";
pub const TOKEN: &str = "token";
pub const SEQUENCE: &str = "sequence";
pub const EXPERTS: &str = "experts";
pub const WEIGHTS: &str = "weights";
pub const LOGITS: &str = "logits";

/// Load level: one row per (step, layer, rank, expert), dense, sorted.
pub fn loads_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(STEP, DataType::UInt32, false),
        Field::new(LAYER, DataType::UInt32, false),
        Field::new(RANK, DataType::UInt32, false),
        Field::new(EXPERT, DataType::UInt32, false),
        Field::new(COUNT, DataType::UInt64, false),
    ]))
}

fn fixed_list(item: DataType, len: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), len as i32)
}

/// Token level: one row per token; `experts` and `weights` hold the top-k
/// in router slot order; `logits` (optional) the raw router logits.
pub fn tokens_schema(top_k: usize, logits_width: Option<usize>) -> SchemaRef {
    let mut fields = vec![
        Field::new(STEP, DataType::UInt32, false),
        Field::new(LAYER, DataType::UInt32, false),
        Field::new(RANK, DataType::UInt32, false),
        Field::new(TOKEN, DataType::UInt32, false),
        Field::new(SEQUENCE, DataType::UInt32, false),
        Field::new(EXPERTS, fixed_list(DataType::UInt16, top_k), false),
        Field::new(WEIGHTS, fixed_list(DataType::Float32, top_k), false),
    ];
    if let Some(n) = logits_width {
        fields.push(Field::new(LOGITS, fixed_list(DataType::Float32, n), false));
    }
    Arc::new(Schema::new(fields))
}
