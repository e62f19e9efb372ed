//! The results schema, declared once, shared by simulated and measured rows
//! (`source` says which), so every comparison is a join.
//!
//! [`ResultRow`]'s fields are listed once below, each with its column name;
//! the struct, the Arrow schema, the writer and the reader are all generated
//! from that list (the per-type column mapping is in [`column`]). A snapshot
//! test pins the column names and types.

mod column;

use crate::io::AtomicFile;
use crate::plan::{Gate, Policy};
use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use column::Column;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Parquet key-value key holding the JSON [`ResultsMeta`].
pub const META_KEY: &str = "llep_trace.results";
pub const SCHEMA_VERSION: u32 = 1;

/// A closed set stored as its names (`Source`, `Pass`): the names, `Display`
/// and `FromStr`, declared once.
macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident, $err:ident, $what:literal { $( $(#[$vdoc:meta])* $v:ident = $s:literal ),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub enum $name {
            #[default]
            $( $(#[$vdoc])* $v, )+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$v => $s, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[doc = concat!("A ", $what, " name this build does not know.")]
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error("unknown {} '{}' (expected {})", $what, .0, [$($s),+].join(" or "))]
        pub struct $err(pub String);

        impl FromStr for $name {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                match s {
                    $( $s => Ok($name::$v), )+
                    other => Err($err(other.into())),
                }
            }
        }
    };
}

named_enum! {
    /// Whether a row was priced by the cost model or measured on GPUs.
    Source, UnknownSource, "source" { Simulated = "simulated", Measured = "measured" }
}

named_enum! {
    /// What a row's time covers: the layer's forward, or a training step
    /// (forward then backward).
    Pass, UnknownPass, "pass" { Forward = "forward", Train = "train" }
}

macro_rules! results_columns {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $col:literal ),* $(,)?) => {
        /// One row: one (step, layer) of one input under one setting,
        /// simulated or measured. Times are milliseconds per layer; memory in
        /// bytes.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct ResultRow {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        /// Column names, in file order.
        pub const COLUMNS: &[&str] = &[$($col),*];

        /// The Arrow schema of a results file.
        pub fn schema() -> SchemaRef {
            Arc::new(Schema::new(vec![
                $( Field::new($col, <$ty as Column>::data_type(), <$ty as Column>::NULLABLE), )*
            ]))
        }

        /// Rows as one record batch in [`schema`] order.
        pub fn to_batch(rows: &[ResultRow]) -> RecordBatch {
            let cols: Vec<ArrayRef> = vec![
                $( <$ty as Column>::to_array(rows.iter().map(|r| &r.$field)), )*
            ];
            RecordBatch::try_new(schema(), cols).expect("results columns match the schema")
        }

        fn from_batch(b: &RecordBatch, path: &Path) -> Result<Vec<ResultRow>, ResultsError> {
            $(
                let $field = column_of::<$ty>(b, $col, path)?;
            )*
            // a column added after a file was written reads as its default
            fn get_or_default<T: Column + Default>(a: Option<&dyn Array>, i: usize) -> Result<T, String> {
                a.map_or(Ok(T::default()), |a| T::get(a, i))
            }
            (0..b.num_rows())
                .map(|i| {
                    let mut r = ResultRow {
                        $( $field: get_or_default::<$ty>($field, i).map_err(|e| {
                            ResultsError::Invalid(path.into(), format!("column '{}', row {i}: {e}", $col))
                        })?, )*
                    };
                    r.settle_gate();
                    Ok(r)
                })
                .collect()
        }
    };
}

results_columns! {
    /// Trace file name or synthetic scenario input ("synthetic").
    trace: String = "trace",
    /// Synthetic scenario ("balanced", "95:1", ...) or "" for traces.
    scenario: String = "scenario",
    step: u32 = "step",
    layer: u32 = "layer",
    policy: Policy = "policy",
    /// When LLEP switches on (column `lambda`: the threshold, null for
    /// "always" and for ep/ideal rows).
    gate: Gate = "lambda",
    alpha: f64 = "alpha",
    min_gemm: u64 = "min_gemm",
    gpus: u32 = "gpus",
    tokens_per_rank: u64 = "tokens_per_rank",
    /// Simulated or measured.
    source: Source = "source",
    /// Card name for measured rows, the profile's card for simulated ones.
    device: String = "device",
    /// Profile name the simulation used ("" for measured rows).
    profile: String = "profile",
    /// How per-rank loads were made (as-recorded, even-split, rechunked,
    /// synthetic) and any rescale/resample, for honesty in reports.
    input_note: String = "input_note",
    hidden_size: u32 = "hidden_size",
    intermediate_size: u32 = "intermediate_size",
    experts: u32 = "experts",
    top_k: u32 = "top_k",
    use_llep: bool = "use_llep",
    imbalance_ratio: f64 = "imbalance_ratio",
    max_load_before: u64 = "max_load_before",
    mean_load: f64 = "mean_load",
    max_load_after: u64 = "max_load_after",
    min_load_after: u64 = "min_load_after",
    t_overhead_ms: f64 = "t_overhead_ms",
    t_dispatch_ms: f64 = "t_dispatch_ms",
    t_transfer_ms: f64 = "t_transfer_ms",
    t_compute_ms: f64 = "t_compute_ms",
    t_combine_ms: f64 = "t_combine_ms",
    t_total_ms: f64 = "t_total_ms",
    /// Spread of measured totals (p10 and p90 over the timed runs).
    t_total_p10_ms: Option<f64> = "t_total_p10_ms",
    t_total_p90_ms: Option<f64> = "t_total_p90_ms",
    runs: u32 = "runs",
    transfers: u32 = "transfers",
    duplicate_transfers: u32 = "duplicate_transfers",
    transfer_bytes: u64 = "transfer_bytes",
    /// Bytes crossing nodes (tokens both ways, weights), 0 on one node;
    /// read as 0 from files written before the column existed.
    inter_node_bytes: u64 = "inter_node_bytes",
    dispatch_bytes_max: u64 = "dispatch_bytes_max",
    peak_mem_max_bytes: u64 = "peak_mem_max_bytes",
    peak_mem_per_gpu: Vec<u64> = "peak_mem_per_gpu",
    /// Driver's view of peak memory per GPU (measured rows only).
    driver_mem_per_gpu: Vec<u64> = "driver_mem_per_gpu",
    loads_before: Vec<u64> = "loads_before",
    loads_after: Vec<u64> = "loads_after",
    oom: bool = "oom",
    /// Relative error of the replay's output against the dense reference.
    rel_error: Option<f64> = "rel_error",
    driver: String = "driver",
    /// Forward only, or a training step (then `t_total_ms` is forward plus
    /// backward and the backward phases below are filled in).
    pass: Pass = "pass",
    t_bwd_combine_ms: f64 = "t_bwd_combine_ms",
    /// Input-gradient GEMMs (and the gate_up rerun under recompute).
    t_bwd_dgrad_ms: f64 = "t_bwd_dgrad_ms",
    t_bwd_wgrad_ms: f64 = "t_bwd_wgrad_ms",
    t_bwd_dispatch_ms: f64 = "t_bwd_dispatch_ms",
    /// Foreign experts' weight gradients back to their owners (LLEP).
    t_grad_return_ms: f64 = "t_grad_return_ms",
    /// Activations saved for backward, max over GPUs (train rows).
    saved_act_bytes: u64 = "saved_act_bytes",
    /// Train rows: gate_up output and activation recomputed in backward
    /// instead of saved (`--recompute`).
    recompute: bool = "recompute",
    /// Dispatch, compute and combine pipelined in chunks (`--overlap on`);
    /// then the phase times are busy times, overlapping each other.
    overlap: bool = "overlap",
    /// Chunks of the pipelined schedule (0 when sequential).
    overlap_chunks: u32 = "overlap_chunks",
    /// The part of the layer not covered by planning or expert compute on
    /// the critical GPU: communication (and its copies) left exposed. For
    /// the sequential schedule, dispatch + combine. Null in older files.
    t_exposed_comm_ms: Option<f64> = "t_exposed_comm_ms",
    /// Measured rows, per GPU: the peers its weight communicator had
    /// received weights (or sent gradients) from and sent to, counted over
    /// the replay process up to the end of this row. NCCL keeps a
    /// point-to-point connection's buffers once made, so these set the
    /// row's memory; empty for simulated rows and in older files.
    weight_peers_in_per_gpu: Vec<u64> = "weight_peers_in_per_gpu",
    weight_peers_out_per_gpu: Vec<u64> = "weight_peers_out_per_gpu",
    /// Each compute phase's expert units launched as one CUDA graph
    /// (`--cuda-graphs on`): measured rows whose every timed run did so;
    /// simulated rows priced that way (no host floor per unit). False in
    /// older files, whose replays issued every GEMM from the host.
    cuda_graphs: bool = "cuda_graphs",
    /// How tokens and weights moved between GPUs: "nccl" (send/recv
    /// kernels on the SMs) or "copy-engine" (peer copies, `--exchange
    /// copy-engine`); for simulated rows, the exchange priced. Empty in
    /// older files, whose replays all used NCCL.
    exchange: String = "exchange",
    /// Measured rows: compute streams the expert units ran on (1, or 2
    /// with `--compute-streams 2`). 0 for simulated rows, which price one,
    /// and in older files, whose replays all used one.
    compute_streams: u64 = "compute_streams",
    /// The expert GEMMs' path: measured rows, replay's `--gemm` ("lt",
    /// "fused" or "cublas"); simulated rows, the tables priced ("fused":
    /// the profile's tables timed through the fused kernel; "lt" its
    /// cuBLASLt tables). Empty in older files.
    gemm: String = "gemm",
}

/// Columns added after schema version 1's first files: files written before
/// them still read, with the columns' defaults (forward pass, no backward).
const ADDED_LATER: &[&str] = &[
    "pass",
    "t_bwd_combine_ms",
    "t_bwd_dgrad_ms",
    "t_bwd_wgrad_ms",
    "t_bwd_dispatch_ms",
    "t_grad_return_ms",
    "saved_act_bytes",
    "inter_node_bytes",
    "recompute",
    "overlap",
    "overlap_chunks",
    "t_exposed_comm_ms",
    "weight_peers_in_per_gpu",
    "weight_peers_out_per_gpu",
    "cuda_graphs",
    "exchange",
    "compute_streams",
    "gemm",
];

fn column_of<'a, T: Column>(
    b: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<Option<&'a dyn Array>, ResultsError> {
    let Some(a) = b.column_by_name(name) else {
        if ADDED_LATER.contains(&name) {
            return Ok(None);
        }
        return Err(ResultsError::Invalid(
            path.into(),
            format!("missing column '{name}' (is this a results file from `llep-trace simulate` or `replay`?)"),
        ));
    };
    if !T::accepts(a.as_ref()) {
        return Err(ResultsError::Invalid(
            path.into(),
            format!("column '{name}' has the wrong type"),
        ));
    }
    Ok(Some(a.as_ref()))
}

impl ResultRow {
    /// The numeric lambda, when the row has one.
    pub fn lambda(&self) -> Option<f64> {
        self.gate.lambda()
    }

    /// Only `llep` rows have a gate; the file stores null for the others,
    /// which reads back as "always".
    fn settle_gate(&mut self) {
        match self.policy {
            Policy::Llep | Policy::EplbLlep | Policy::LlepTopo => {}
            Policy::LlepAuto => self.gate = Gate::Auto,
            _ => self.gate = Gate::Never,
        }
    }

    /// "llep λ=1.3", "ep": the row's setting as every table labels it.
    pub fn setting_label(&self) -> String {
        setting_label(self.policy, self.gate)
    }

    /// The columns a plan decides, whoever prices it (the cost model or a
    /// replay): gate, loads before and after, transfers.
    pub fn fill_plan_stats(&mut self, plan: &crate::plan::Plan) {
        self.use_llep = plan.use_llep;
        self.imbalance_ratio = plan.imbalance_ratio;
        self.max_load_before = plan.native_max_load();
        self.mean_load = plan.native_loads.iter().sum::<u64>() as f64 / plan.gpus as f64;
        self.max_load_after = plan.max_load();
        self.min_load_after = plan.gpu_loads.iter().copied().min().unwrap_or(0);
        self.loads_before = plan.native_loads.clone();
        self.loads_after = plan.gpu_loads.clone();
        self.transfers = if plan.free_transfers {
            0
        } else {
            plan.transfers.len() as u32
        };
        self.duplicate_transfers = plan.duplicate_transfers;
    }
}

/// "llep λ=1.3" for LLEP, the policy's name otherwise.
pub fn setting_label(policy: Policy, gate: Gate) -> String {
    match policy {
        Policy::Llep => format!("llep λ={gate}"),
        Policy::EplbLlep => format!("eplb+llep λ={gate}"),
        Policy::LlepTopo => format!("llep-topo λ={gate}"),
        other => other.to_string(),
    }
}

/// File-level metadata of a results file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultsMeta {
    pub schema_version: u32,
    pub command: String,
    pub tool_version: String,
    /// Profile used, with its estimate/measured status and measured error.
    pub profile: Option<serde_json::Value>,
    pub created: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not a readable results file: {1}")]
    Parquet(PathBuf, parquet::errors::ParquetError),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

/// Rows a results file's row group holds at most: a writer buffers one
/// row group, so this bounds its memory.
pub const ROW_GROUP_ROWS: usize = 1 << 16;

/// A results file written batch by batch (rows in the order given); it
/// appears at its path only when [`ResultsWriter::finish`] succeeds.
pub struct ResultsWriter {
    path: PathBuf,
    writer: ArrowWriter<AtomicFile>,
    rows: usize,
}

impl ResultsWriter {
    pub fn create(path: &Path, meta: &ResultsMeta) -> Result<Self, ResultsError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                META_KEY.to_string(),
                serde_json::to_string(meta).expect("results metadata serialises"),
            )]))
            .build();
        let out = AtomicFile::create(path).map_err(|e| ResultsError::Io(path.into(), e))?;
        let writer = ArrowWriter::try_new(out, schema(), Some(props))
            .map_err(|e| ResultsError::Parquet(path.into(), e))?;
        Ok(Self {
            path: path.into(),
            writer,
            rows: 0,
        })
    }

    pub fn write(&mut self, rows: &[ResultRow]) -> Result<(), ResultsError> {
        for chunk in rows.chunks(ROW_GROUP_ROWS) {
            self.writer
                .write(&to_batch(chunk))
                .map_err(|e| ResultsError::Parquet(self.path.clone(), e))?;
        }
        self.rows += rows.len();
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Close the file and move it into place.
    pub fn finish(self) -> Result<usize, ResultsError> {
        let out = self
            .writer
            .into_inner()
            .map_err(|e| ResultsError::Parquet(self.path.clone(), e))?;
        out.commit()
            .map_err(|e| ResultsError::Io(self.path.clone(), e))?;
        Ok(self.rows)
    }
}

/// Write rows atomically to a Parquet file.
pub fn write_results(
    path: &Path,
    rows: &[ResultRow],
    meta: &ResultsMeta,
) -> Result<(), ResultsError> {
    let mut w = ResultsWriter::create(path, meta)?;
    w.write(rows)?;
    w.finish().map(|_| ())
}

/// Read a results file written by [`write_results`].
pub fn read_results(path: &Path) -> Result<(ResultsMeta, Vec<ResultRow>), ResultsError> {
    let mut rows = Vec::new();
    let meta = for_each_results_batch(path, &mut |b| {
        rows.extend_from_slice(b);
        Ok(())
    })?;
    Ok((meta, rows))
}

/// Read a results file a record batch at a time (at most the reader's
/// batch size, 1,024 rows), handing each batch's rows to `f` in file
/// order, so that a caller keeping running totals holds one batch only.
pub fn for_each_results_batch(
    path: &Path,
    f: &mut dyn FnMut(&[ResultRow]) -> Result<(), ResultsError>,
) -> Result<ResultsMeta, ResultsError> {
    let file = std::fs::File::open(path).map_err(|e| ResultsError::Io(path.into(), e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| ResultsError::Parquet(path.into(), e))?;
    let meta = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| {
            kv.iter()
                .find(|k| k.key == META_KEY)
                .and_then(|k| k.value.clone())
        })
        .and_then(|s| serde_json::from_str::<ResultsMeta>(&s).ok())
        // Files rewritten by other tools (polars, duckdb) lose the key-value
        // metadata; the columns still say whether this is a results file.
        .unwrap_or_default();
    let reader = builder
        .build()
        .map_err(|e| ResultsError::Parquet(path.into(), e))?;
    for batch in reader {
        let b = batch.map_err(|e| ResultsError::Invalid(path.into(), e.to_string()))?;
        f(&from_batch(&b, path)?)?;
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let row = ResultRow {
            trace: "t".into(),
            policy: Policy::Llep,
            gate: Gate::Ratio(1.3),
            source: Source::Measured,
            peak_mem_per_gpu: vec![1, 2],
            loads_before: vec![5, 6],
            t_total_p10_ms: None,
            rel_error: Some(1e-3),
            ..Default::default()
        };
        let dir = std::env::temp_dir().join(format!("llep-res-{}", std::process::id()));
        let path = dir.join("r.parquet");
        write_results(
            &path,
            &[row.clone(), ResultRow::default()],
            &ResultsMeta::default(),
        )
        .unwrap();
        let (_, back) = read_results(&path).unwrap();
        assert_eq!(back[0], row);
        assert_eq!(back[1], ResultRow::default());
        let always = ResultRow {
            policy: Policy::Llep,
            gate: Gate::Always,
            ..Default::default()
        };
        write_results(
            &path,
            std::slice::from_ref(&always),
            &ResultsMeta::default(),
        )
        .unwrap();
        assert_eq!(read_results(&path).unwrap().1[0], always);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_written_before_the_training_columns_still_read() {
        let old =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("reports/replay/measured-accuracy.parquet");
        let (_, rows) = read_results(&old).unwrap();
        assert!(!rows.is_empty());
        assert!(rows
            .iter()
            .all(|r| r.pass == Pass::Forward && r.saved_act_bytes == 0));
        assert!(rows.iter().any(|r| r.source == Source::Measured));
    }

    /// The file format is public (polars, pandas, duckdb read it): a change
    /// of a column's name, order or type must be deliberate. Update the
    /// snapshot and SCHEMA_VERSION together.
    #[test]
    fn schema_matches_the_committed_snapshot() {
        let got: String = schema()
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "{} {} {}\n",
                    f.name(),
                    f.data_type(),
                    if f.is_nullable() { "null" } else { "not null" }
                )
            })
            .collect();
        let want = include_str!("schema.snapshot");
        assert_eq!(got, want, "results schema changed; new schema:\n{got}");
        assert_eq!(COLUMNS.len(), schema().fields().len());
    }
}
