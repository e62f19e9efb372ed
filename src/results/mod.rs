//! The results schema, declared once, shared by simulated and measured rows
//! (`source` says which), so every comparison is a join.

use crate::io::AtomicFile;
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, ListArray, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Parquet key-value key holding the JSON [`ResultsMeta`].
pub const META_KEY: &str = "llep_trace.results";
pub const SCHEMA_VERSION: u32 = 1;

pub const SOURCE_SIMULATED: &str = "simulated";
pub const SOURCE_MEASURED: &str = "measured";

/// One row: one (step, layer) of one input under one setting, simulated or
/// measured. Times are milliseconds per layer; memory in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// Trace file name or synthetic scenario input ("synthetic").
    pub trace: String,
    /// Synthetic scenario ("balanced", "95:1", ...) or "" for traces.
    pub scenario: String,
    pub step: u32,
    pub layer: u32,
    pub policy: String,
    /// The lambda gate; `None` for ep/ideal rows and for "always".
    pub lambda: Option<f64>,
    pub alpha: f64,
    pub min_gemm: u64,
    pub gpus: u32,
    pub tokens_per_rank: u64,
    /// "simulated" or "measured".
    pub source: String,
    /// Card name for measured rows, the profile's card for simulated ones.
    pub device: String,
    /// Profile name the simulation used ("" for measured rows).
    pub profile: String,
    /// How per-rank loads were made (as-recorded, even-split, rechunked,
    /// synthetic) and any rescale/resample, for honesty in reports.
    pub input_note: String,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub experts: u32,
    pub top_k: u32,
    pub use_llep: bool,
    pub imbalance_ratio: f64,
    pub max_load_before: u64,
    pub mean_load: f64,
    pub max_load_after: u64,
    pub min_load_after: u64,
    pub t_overhead_ms: f64,
    pub t_dispatch_ms: f64,
    pub t_transfer_ms: f64,
    pub t_compute_ms: f64,
    pub t_combine_ms: f64,
    pub t_total_ms: f64,
    /// Spread of measured totals (p10 and p90 over the timed runs).
    pub t_total_p10_ms: Option<f64>,
    pub t_total_p90_ms: Option<f64>,
    pub runs: u32,
    pub transfers: u32,
    pub duplicate_transfers: u32,
    pub transfer_bytes: u64,
    pub dispatch_bytes_max: u64,
    pub peak_mem_max_bytes: u64,
    pub peak_mem_per_gpu: Vec<u64>,
    /// Driver's view of peak memory per GPU (measured rows only).
    pub driver_mem_per_gpu: Vec<u64>,
    pub loads_before: Vec<u64>,
    pub loads_after: Vec<u64>,
    pub oom: bool,
    /// Relative error of the replay's output against the dense reference.
    pub rel_error: Option<f64>,
    pub driver: String,
}

impl ResultRow {
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

fn list_u64() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::UInt64, true)))
}

/// The Arrow schema of a results file.
pub fn schema() -> SchemaRef {
    use DataType::*;
    let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
    Arc::new(Schema::new(vec![
        f("trace", Utf8, false),
        f("scenario", Utf8, false),
        f("step", UInt32, false),
        f("layer", UInt32, false),
        f("policy", Utf8, false),
        f("lambda", Float64, true),
        f("alpha", Float64, false),
        f("min_gemm", UInt64, false),
        f("gpus", UInt32, false),
        f("tokens_per_rank", UInt64, false),
        f("source", Utf8, false),
        f("device", Utf8, false),
        f("profile", Utf8, false),
        f("input_note", Utf8, false),
        f("hidden_size", UInt32, false),
        f("intermediate_size", UInt32, false),
        f("experts", UInt32, false),
        f("top_k", UInt32, false),
        f("use_llep", Boolean, false),
        f("imbalance_ratio", Float64, false),
        f("max_load_before", UInt64, false),
        f("mean_load", Float64, false),
        f("max_load_after", UInt64, false),
        f("min_load_after", UInt64, false),
        f("t_overhead_ms", Float64, false),
        f("t_dispatch_ms", Float64, false),
        f("t_transfer_ms", Float64, false),
        f("t_compute_ms", Float64, false),
        f("t_combine_ms", Float64, false),
        f("t_total_ms", Float64, false),
        f("t_total_p10_ms", Float64, true),
        f("t_total_p90_ms", Float64, true),
        f("runs", UInt32, false),
        f("transfers", UInt32, false),
        f("duplicate_transfers", UInt32, false),
        f("transfer_bytes", UInt64, false),
        f("dispatch_bytes_max", UInt64, false),
        f("peak_mem_max_bytes", UInt64, false),
        f("peak_mem_per_gpu", list_u64(), false),
        f("driver_mem_per_gpu", list_u64(), false),
        f("loads_before", list_u64(), false),
        f("loads_after", list_u64(), false),
        f("oom", Boolean, false),
        f("rel_error", Float64, true),
        f("driver", Utf8, false),
    ]))
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

fn list_col(rows: &[ResultRow], get: impl Fn(&ResultRow) -> &Vec<u64>) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(
        rows.iter()
            .map(|r| Some(get(r).iter().map(|&x| Some(x)).collect::<Vec<_>>())),
    ))
}

/// Rows as one record batch in [`schema`] order.
pub fn to_batch(rows: &[ResultRow]) -> RecordBatch {
    macro_rules! s {
        ($f:ident) => {
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.$f.as_str()),
            )) as ArrayRef
        };
    }
    macro_rules! u32c {
        ($f:ident) => {
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.$f))) as ArrayRef
        };
    }
    macro_rules! u64c {
        ($f:ident) => {
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.$f))) as ArrayRef
        };
    }
    macro_rules! f64c {
        ($f:ident) => {
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.$f))) as ArrayRef
        };
    }
    macro_rules! of64 {
        ($f:ident) => {
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.$f).collect::<Vec<_>>(),
            )) as ArrayRef
        };
    }
    macro_rules! b {
        ($f:ident) => {
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.$f).collect::<Vec<_>>(),
            )) as ArrayRef
        };
    }
    let cols: Vec<ArrayRef> = vec![
        s!(trace),
        s!(scenario),
        u32c!(step),
        u32c!(layer),
        s!(policy),
        of64!(lambda),
        f64c!(alpha),
        u64c!(min_gemm),
        u32c!(gpus),
        u64c!(tokens_per_rank),
        s!(source),
        s!(device),
        s!(profile),
        s!(input_note),
        u32c!(hidden_size),
        u32c!(intermediate_size),
        u32c!(experts),
        u32c!(top_k),
        b!(use_llep),
        f64c!(imbalance_ratio),
        u64c!(max_load_before),
        f64c!(mean_load),
        u64c!(max_load_after),
        u64c!(min_load_after),
        f64c!(t_overhead_ms),
        f64c!(t_dispatch_ms),
        f64c!(t_transfer_ms),
        f64c!(t_compute_ms),
        f64c!(t_combine_ms),
        f64c!(t_total_ms),
        of64!(t_total_p10_ms),
        of64!(t_total_p90_ms),
        u32c!(runs),
        u32c!(transfers),
        u32c!(duplicate_transfers),
        u64c!(transfer_bytes),
        u64c!(dispatch_bytes_max),
        u64c!(peak_mem_max_bytes),
        list_col(rows, |r| &r.peak_mem_per_gpu),
        list_col(rows, |r| &r.driver_mem_per_gpu),
        list_col(rows, |r| &r.loads_before),
        list_col(rows, |r| &r.loads_after),
        b!(oom),
        of64!(rel_error),
        s!(driver),
    ];
    RecordBatch::try_new(schema(), cols).expect("results columns match the schema")
}

/// Write rows atomically to a Parquet file.
pub fn write_results(
    path: &Path,
    rows: &[ResultRow],
    meta: &ResultsMeta,
) -> Result<(), ResultsError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            META_KEY.to_string(),
            serde_json::to_string(meta).expect("results metadata serialises"),
        )]))
        .build();
    let mut out = AtomicFile::create(path).map_err(|e| ResultsError::Io(path.into(), e))?;
    {
        let mut w = ArrowWriter::try_new(out.writer(), schema(), Some(props))
            .map_err(|e| ResultsError::Parquet(path.into(), e))?;
        for chunk in rows.chunks(65536) {
            w.write(&to_batch(chunk))
                .map_err(|e| ResultsError::Parquet(path.into(), e))?;
        }
        w.close()
            .map_err(|e| ResultsError::Parquet(path.into(), e))?;
    }
    out.commit().map_err(|e| ResultsError::Io(path.into(), e))
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a T, ResultsError> {
    b.column_by_name(name)
        .ok_or_else(|| ResultsError::Invalid(path.into(), format!("missing column '{name}' (is this a results file from `llep-trace simulate` or `replay`?)")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ResultsError::Invalid(path.into(), format!("column '{name}' has the wrong type")))
}

fn list_values(a: &ListArray, i: usize) -> Vec<u64> {
    let v = a.value(i);
    v.as_any()
        .downcast_ref::<UInt64Array>()
        .map(|x| x.values().to_vec())
        .unwrap_or_default()
}

/// Read a results file written by [`write_results`].
pub fn read_results(path: &Path) -> Result<(ResultsMeta, Vec<ResultRow>), ResultsError> {
    let f = std::fs::File::open(path).map_err(|e| ResultsError::Io(path.into(), e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f)
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
    let mut rows = Vec::new();
    for batch in reader {
        let b = batch.map_err(|e| ResultsError::Invalid(path.into(), e.to_string()))?;
        let s = |n| col::<StringArray>(&b, n, path);
        let u32c = |n| col::<UInt32Array>(&b, n, path);
        let u64c = |n| col::<UInt64Array>(&b, n, path);
        let f64c = |n| col::<Float64Array>(&b, n, path);
        let bc = |n| col::<BooleanArray>(&b, n, path);
        let lc = |n| col::<ListArray>(&b, n, path);
        let opt = |a: &Float64Array, i: usize| if a.is_null(i) { None } else { Some(a.value(i)) };
        let (trace, scenario, policy, source, device, profile, input_note, driver) = (
            s("trace")?,
            s("scenario")?,
            s("policy")?,
            s("source")?,
            s("device")?,
            s("profile")?,
            s("input_note")?,
            s("driver")?,
        );
        let (step, layer, gpus, hs, is, ex, tk, runs, tr, dup) = (
            u32c("step")?,
            u32c("layer")?,
            u32c("gpus")?,
            u32c("hidden_size")?,
            u32c("intermediate_size")?,
            u32c("experts")?,
            u32c("top_k")?,
            u32c("runs")?,
            u32c("transfers")?,
            u32c("duplicate_transfers")?,
        );
        let (mg, tpr, mlb, mla, mina, tb, dbm, pm) = (
            u64c("min_gemm")?,
            u64c("tokens_per_rank")?,
            u64c("max_load_before")?,
            u64c("max_load_after")?,
            u64c("min_load_after")?,
            u64c("transfer_bytes")?,
            u64c("dispatch_bytes_max")?,
            u64c("peak_mem_max_bytes")?,
        );
        let (lambda, alpha, ir, ml, to, td, tt, tc, tcb, ttot, p10, p90, re) = (
            f64c("lambda")?,
            f64c("alpha")?,
            f64c("imbalance_ratio")?,
            f64c("mean_load")?,
            f64c("t_overhead_ms")?,
            f64c("t_dispatch_ms")?,
            f64c("t_transfer_ms")?,
            f64c("t_compute_ms")?,
            f64c("t_combine_ms")?,
            f64c("t_total_ms")?,
            f64c("t_total_p10_ms")?,
            f64c("t_total_p90_ms")?,
            f64c("rel_error")?,
        );
        let (ul, oom) = (bc("use_llep")?, bc("oom")?);
        let (pmg, dmg, lb, la) = (
            lc("peak_mem_per_gpu")?,
            lc("driver_mem_per_gpu")?,
            lc("loads_before")?,
            lc("loads_after")?,
        );
        for i in 0..b.num_rows() {
            rows.push(ResultRow {
                trace: trace.value(i).into(),
                scenario: scenario.value(i).into(),
                step: step.value(i),
                layer: layer.value(i),
                policy: policy.value(i).into(),
                lambda: opt(lambda, i),
                alpha: alpha.value(i),
                min_gemm: mg.value(i),
                gpus: gpus.value(i),
                tokens_per_rank: tpr.value(i),
                source: source.value(i).into(),
                device: device.value(i).into(),
                profile: profile.value(i).into(),
                input_note: input_note.value(i).into(),
                hidden_size: hs.value(i),
                intermediate_size: is.value(i),
                experts: ex.value(i),
                top_k: tk.value(i),
                use_llep: ul.value(i),
                imbalance_ratio: ir.value(i),
                max_load_before: mlb.value(i),
                mean_load: ml.value(i),
                max_load_after: mla.value(i),
                min_load_after: mina.value(i),
                t_overhead_ms: to.value(i),
                t_dispatch_ms: td.value(i),
                t_transfer_ms: tt.value(i),
                t_compute_ms: tc.value(i),
                t_combine_ms: tcb.value(i),
                t_total_ms: ttot.value(i),
                t_total_p10_ms: opt(p10, i),
                t_total_p90_ms: opt(p90, i),
                runs: runs.value(i),
                transfers: tr.value(i),
                duplicate_transfers: dup.value(i),
                transfer_bytes: tb.value(i),
                dispatch_bytes_max: dbm.value(i),
                peak_mem_max_bytes: pm.value(i),
                peak_mem_per_gpu: list_values(pmg, i),
                driver_mem_per_gpu: list_values(dmg, i),
                loads_before: list_values(lb, i),
                loads_after: list_values(la, i),
                oom: oom.value(i),
                rel_error: opt(re, i),
                driver: driver.value(i).into(),
            });
        }
    }
    Ok((meta, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let row = ResultRow {
            trace: "t".into(),
            policy: "llep".into(),
            lambda: Some(1.3),
            source: SOURCE_SIMULATED.into(),
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
