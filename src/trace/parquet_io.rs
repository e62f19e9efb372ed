//! Reading and writing trace files (Parquet, arrow-rs).

use super::meta::{TraceMeta, SCHEMA_VERSION};
use super::schema::{self, META_KEY};
use super::{Loads, TokenTrace, Trace};
use crate::io::AtomicFile;
use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt16Array, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The cause of `Io` and `Parquet` is shown in the message and is not also
/// a `source()`: the CLI prints the whole error chain, which would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a readable Parquet trace: {err}")]
    Parquet {
        path: PathBuf,
        err: parquet::errors::ParquetError,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

impl TraceError {
    pub fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        TraceError::Invalid {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    fn io(path: &Path, err: std::io::Error) -> Self {
        TraceError::Io {
            path: path.to_path_buf(),
            err,
        }
    }
    fn pq(path: &Path, err: parquet::errors::ParquetError) -> Self {
        TraceError::Parquet {
            path: path.to_path_buf(),
            err,
        }
    }
}

impl From<(PathBuf, arrow::error::ArrowError)> for TraceError {
    fn from((path, e): (PathBuf, arrow::error::ArrowError)) -> Self {
        TraceError::Invalid {
            path,
            msg: e.to_string(),
        }
    }
}

/// `traces/x.parquet` -> `traces/x.tokens.parquet`.
pub fn tokens_path_for(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.tokens.parquet"))
}

fn props(meta: Option<&TraceMeta>) -> WriterProperties {
    let b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20));
    match meta {
        Some(meta) => b.set_key_value_metadata(Some(vec![KeyValue::new(
            META_KEY.to_string(),
            serde_json::to_string(meta).expect("metadata serialises"),
        )])),
        None => b,
    }
    .build()
}

/// Write a trace: the load file at `path`, and the tokens file beside it
/// when the trace has token-level rows. Both appear only when complete.
pub fn write_trace(path: &Path, trace: &Trace) -> Result<(), TraceError> {
    let mut meta = trace.meta.clone();
    meta.capture.token_level = trace.tokens.is_some();
    if let Some(tokens) = &trace.tokens {
        let tpath = tokens_path_for(path);
        let mut w = TokenFileWriter::create(
            &tpath,
            &meta,
            tokens
                .logits
                .as_ref()
                .map(|_| meta.model.num_experts as usize),
        )?;
        w.write(tokens)?;
        w.finish()?;
    }
    write_loads(path, &meta, &trace.loads)
}

/// Write the load-level file alone.
pub fn write_loads(path: &Path, meta: &TraceMeta, loads: &Loads) -> Result<(), TraceError> {
    let mut w = LoadsWriter::create(path, meta)?;
    for s in 0..loads.steps() {
        w.write_step(loads, s)?;
    }
    w.finish()
}

/// Streaming writer of a load-level file, a step at a time (one record
/// batch per step, row groups closed by the writer's row limit), so a
/// writer holds about one step, not the trace. The file appears only at
/// [`LoadsWriter::finish`].
pub struct LoadsWriter {
    path: PathBuf,
    schema: SchemaRef,
    writer: ArrowWriter<AtomicFile>,
}

impl LoadsWriter {
    pub fn create(path: &Path, meta: &TraceMeta) -> Result<Self, TraceError> {
        let schema = schema::loads_schema();
        let out = AtomicFile::create(path).map_err(|e| TraceError::io(path, e))?;
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(props(Some(meta))))
            .map_err(|e| TraceError::pq(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            schema,
            writer,
        })
    }

    /// Step `s` of `loads`: every layer, rank and expert, in that order.
    pub fn write_step(&mut self, loads: &Loads, s: usize) -> Result<(), TraceError> {
        let (r_n, e_n) = (loads.ranks, loads.experts);
        let rows = loads.layers() * r_n * e_n;
        let mut step = Vec::with_capacity(rows);
        let mut layer = Vec::with_capacity(rows);
        let mut rank = Vec::with_capacity(rows);
        let mut expert = Vec::with_capacity(rows);
        let mut count = Vec::with_capacity(rows);
        for l in 0..loads.layers() {
            for (i, &c) in loads.block(s, l).iter().enumerate() {
                step.push(loads.step_ids[s]);
                layer.push(loads.layer_ids[l]);
                rank.push((i / e_n) as u32);
                expert.push((i % e_n) as u32);
                count.push(c);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(step)),
            Arc::new(UInt32Array::from(layer)),
            Arc::new(UInt32Array::from(rank)),
            Arc::new(UInt32Array::from(expert)),
            Arc::new(UInt64Array::from(count)),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|e| TraceError::from((self.path.clone(), e)))?;
        self.writer
            .write(&batch)
            .map_err(|e| TraceError::pq(&self.path, e))
    }

    pub fn finish(self) -> Result<(), TraceError> {
        let out = self
            .writer
            .into_inner()
            .map_err(|e| TraceError::pq(&self.path, e))?;
        out.commit().map_err(|e| TraceError::io(&self.path, e))
    }
}

/// Streaming writer of a tokens file: chunks are written as they come, so
/// capture memory stays bounded by one input file.
pub struct TokenFileWriter {
    path: PathBuf,
    schema: SchemaRef,
    top_k: usize,
    logits_width: Option<usize>,
    writer: Option<ArrowWriter<AtomicFile>>,
    /// Embedded once, at finish: a key written up front and replaced later
    /// would leave two values, and readers other than ours take the first.
    meta: TraceMeta,
}

impl TokenFileWriter {
    pub fn create(
        path: &Path,
        meta: &TraceMeta,
        logits_width: Option<usize>,
    ) -> Result<Self, TraceError> {
        let top_k = meta.model.top_k as usize;
        let schema = schema::tokens_schema(top_k, logits_width);
        let out = AtomicFile::create(path).map_err(|e| TraceError::io(path, e))?;
        // Dictionary encoding costs a hash per value and buys little on token
        // rows (weights are near-unique, ids small): plain + snappy instead.
        let tprops = props(None)
            .into_builder()
            .set_dictionary_enabled(false)
            .build();
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(tprops))
            .map_err(|e| TraceError::pq(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            schema,
            top_k,
            logits_width,
            writer: Some(writer),
            meta: meta.clone(),
        })
    }

    pub fn write(&mut self, t: &TokenTrace) -> Result<(), TraceError> {
        if t.is_empty() {
            return Ok(());
        }
        let k = self.top_k as i32;
        let list = |item: DataType, len: i32, values: ArrayRef| -> Result<ArrayRef, TraceError> {
            let f = Arc::new(Field::new("item", item, false));
            FixedSizeListArray::try_new(f, len, values, None)
                .map(|a| Arc::new(a) as ArrayRef)
                .map_err(|e| TraceError::from((self.path.clone(), e)))
        };
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(t.step.clone())),
            Arc::new(UInt32Array::from(t.layer.clone())),
            Arc::new(UInt32Array::from(t.rank.clone())),
            Arc::new(UInt32Array::from(t.token.clone())),
            Arc::new(UInt32Array::from(t.sequence.clone())),
            list(
                DataType::UInt16,
                k,
                Arc::new(UInt16Array::from(t.experts.clone())),
            )?,
            list(
                DataType::Float32,
                k,
                Arc::new(Float32Array::from(t.weights.clone())),
            )?,
        ];
        if let Some(n) = self.logits_width {
            let logits = t.logits.as_ref().ok_or_else(|| {
                TraceError::invalid(&self.path, "logits requested but chunk has none")
            })?;
            cols.push(list(
                DataType::Float32,
                n as i32,
                Arc::new(Float32Array::from(logits.clone())),
            )?);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|e| TraceError::from((self.path.clone(), e)))?;
        let w = self.writer.as_mut().expect("writer open");
        w.write(&batch).map_err(|e| TraceError::pq(&self.path, e))?;
        // Close row groups at ~256k rows so a long capture buffers about
        // one input file's rows, not a million.
        if w.in_progress_rows() >= 1 << 18 {
            w.flush().map_err(|e| TraceError::pq(&self.path, e))?;
        }
        Ok(())
    }

    /// Replace the embedded metadata (e.g. with final counts) and commit.
    pub fn finish_with(mut self, meta: Option<&TraceMeta>) -> Result<(), TraceError> {
        let mut w = self.writer.take().expect("writer open");
        let m = meta.unwrap_or(&self.meta);
        w.append_key_value_metadata(KeyValue::new(
            META_KEY.to_string(),
            serde_json::to_string(m).expect("metadata serialises"),
        ));
        let out = w.into_inner().map_err(|e| TraceError::pq(&self.path, e))?;
        out.commit().map_err(|e| TraceError::io(&self.path, e))
    }

    pub fn finish(self) -> Result<(), TraceError> {
        self.finish_with(None)
    }
}

fn open_reader(
    path: &Path,
) -> Result<(ParquetRecordBatchReaderBuilder<File>, TraceMeta), TraceError> {
    let f = File::open(path).map_err(|e| TraceError::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| TraceError::pq(path, e))?;
    // The last value of the key wins (finish_with may append a newer one).
    let raw = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().rev().find(|k| k.key == META_KEY).and_then(|k| k.value.clone()))
        .ok_or_else(|| TraceError::invalid(path, format!("no '{META_KEY}' metadata: not an llep-trace trace (make one with `llep-trace capture`)")))?;
    let meta: TraceMeta = serde_json::from_str(&raw)
        .map_err(|e| TraceError::invalid(path, format!("bad trace metadata: {e}")))?;
    if meta.schema_version > SCHEMA_VERSION {
        return Err(TraceError::invalid(
            path,
            format!(
                "trace schema version {} is newer than this tool's {}",
                meta.schema_version, SCHEMA_VERSION
            ),
        ));
    }
    Ok((builder, meta))
}

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a T, TraceError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| TraceError::invalid(path, format!("missing column '{name}'")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| TraceError::invalid(path, format!("column '{name}' has the wrong type")))
}

/// Read a trace's load file (and its tokens file when `with_tokens` and it
/// exists). Load rows may be sparse; missing rows count zero.
pub fn read_trace(path: &Path, with_tokens: bool) -> Result<Trace, TraceError> {
    let (builder, meta) = open_reader(path)?;
    let reader = builder.build().map_err(|e| TraceError::pq(path, e))?;
    let e_n = meta.model.num_experts as usize;
    if e_n == 0 {
        return Err(TraceError::invalid(path, "metadata says num_experts = 0"));
    }
    let mut rows: Vec<(u32, u32, u32, u32, u64)> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| TraceError::from((path.to_path_buf(), e)))?;
        let s = column::<UInt32Array>(&batch, schema::STEP, path)?;
        let l = column::<UInt32Array>(&batch, schema::LAYER, path)?;
        let r = column::<UInt32Array>(&batch, schema::RANK, path)?;
        let e = column::<UInt32Array>(&batch, schema::EXPERT, path)?;
        let c = column::<UInt64Array>(&batch, schema::COUNT, path)?;
        for i in 0..batch.num_rows() {
            rows.push((s.value(i), l.value(i), r.value(i), e.value(i), c.value(i)));
        }
    }
    if rows.is_empty() {
        return Err(TraceError::invalid(path, "trace has no load rows"));
    }
    let steps: Vec<u32> = rows
        .iter()
        .map(|r| r.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let layers: Vec<u32> = rows
        .iter()
        .map(|r| r.1)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ranks = rows.iter().map(|r| r.2).max().unwrap() as usize + 1;
    let mut loads = Loads::zeros(steps.clone(), layers.clone(), ranks, e_n);
    let s_ix: BTreeMap<u32, usize> = steps.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let l_ix: BTreeMap<u32, usize> = layers.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    for (s, l, r, e, c) in rows {
        if e as usize >= e_n {
            return Err(TraceError::invalid(
                path,
                format!("expert id {e} out of range (num_experts = {e_n})"),
            ));
        }
        loads.block_mut(s_ix[&s], l_ix[&l])[r as usize * e_n + e as usize] += c;
    }
    let tpath = tokens_path_for(path);
    let tokens = if with_tokens && meta.capture.token_level && tpath.exists() {
        Some(read_tokens(&tpath)?.1)
    } else {
        None
    };
    Ok(Trace {
        meta,
        loads,
        tokens,
    })
}

/// What one pass over a load file learns before it is streamed: the step
/// and layer ids, the ranks, the largest layer-step total, and whether its
/// rows come grouped by step in ascending order (what [`write_loads`] and
/// every capture write), which streaming needs.
#[derive(Debug, Clone)]
pub struct LoadsIndex {
    pub meta: TraceMeta,
    pub step_ids: Vec<u32>,
    pub layer_ids: Vec<u32>,
    pub ranks: usize,
    pub experts: usize,
    /// Largest total token-copies of any (step, layer).
    pub max_total: u64,
    /// Rows grouped by step, steps ascending.
    pub sorted: bool,
}

/// The columns of one load batch, checked.
struct LoadCols<'a> {
    s: &'a UInt32Array,
    l: &'a UInt32Array,
    r: &'a UInt32Array,
    e: &'a UInt32Array,
    c: &'a UInt64Array,
}

impl<'a> LoadCols<'a> {
    fn of(batch: &'a RecordBatch, path: &Path) -> Result<Self, TraceError> {
        Ok(Self {
            s: column::<UInt32Array>(batch, schema::STEP, path)?,
            l: column::<UInt32Array>(batch, schema::LAYER, path)?,
            r: column::<UInt32Array>(batch, schema::RANK, path)?,
            e: column::<UInt32Array>(batch, schema::EXPERT, path)?,
            c: column::<UInt64Array>(batch, schema::COUNT, path)?,
        })
    }
}

fn expert_range(path: &Path, e: u32, e_n: usize) -> TraceError {
    TraceError::invalid(
        path,
        format!("expert id {e} out of range (num_experts = {e_n})"),
    )
}

/// One pass over a load file, in bounded memory (a batch at a time; the
/// step ids are kept, 4 bytes a step).
pub fn index_loads(path: &Path) -> Result<LoadsIndex, TraceError> {
    let (builder, meta) = open_reader(path)?;
    let reader = builder.build().map_err(|e| TraceError::pq(path, e))?;
    let e_n = meta.model.num_experts as usize;
    if e_n == 0 {
        return Err(TraceError::invalid(path, "metadata says num_experts = 0"));
    }
    let mut steps: Vec<u32> = Vec::new();
    let mut layers: BTreeSet<u32> = BTreeSet::new();
    let mut sorted = true;
    let mut ranks = 0u32;
    // running total of the current (step, layer) while rows stay in one;
    // totals of layers interleaved within a step are summed per layer
    let mut step_totals: BTreeMap<u32, u64> = BTreeMap::new();
    let mut max_total = 0u64;
    let mut rows = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| TraceError::from((path.to_path_buf(), e)))?;
        let c = LoadCols::of(&batch, path)?;
        for i in 0..batch.num_rows() {
            let (s, l, r, e, n) = (
                c.s.value(i),
                c.l.value(i),
                c.r.value(i),
                c.e.value(i),
                c.c.value(i),
            );
            if e as usize >= e_n {
                return Err(expert_range(path, e, e_n));
            }
            ranks = ranks.max(r + 1);
            match steps.last() {
                Some(&last) if last == s => {}
                Some(&last) => {
                    if s < last {
                        sorted = false;
                    }
                    for t in step_totals.values() {
                        max_total = max_total.max(*t);
                    }
                    step_totals.clear();
                    steps.push(s);
                }
                None => steps.push(s),
            }
            layers.insert(l);
            *step_totals.entry(l).or_insert(0) += n;
            rows += 1;
        }
    }
    if rows == 0 {
        return Err(TraceError::invalid(path, "trace has no load rows"));
    }
    for t in step_totals.values() {
        max_total = max_total.max(*t);
    }
    let mut step_ids = steps.clone();
    step_ids.sort_unstable();
    step_ids.dedup();
    if step_ids.len() != steps.len() {
        // a step's rows come back after another step's: not grouped
        sorted = false;
    }
    Ok(LoadsIndex {
        meta,
        step_ids,
        layer_ids: layers.into_iter().collect(),
        ranks: ranks as usize,
        experts: e_n,
        max_total,
        sorted,
    })
}

/// A load file read a few steps at a time, at its recorded ranks, for a
/// file whose [`LoadsIndex::sorted`] is true.
pub struct LoadsChunks {
    path: PathBuf,
    index: std::sync::Arc<LoadsIndex>,
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    row: usize,
    /// Position in `index.step_ids` of the next step to read.
    next: usize,
    steps_per_chunk: usize,
}

impl LoadsChunks {
    /// Open `path` (indexed as `index`) to read `steps_per_chunk` steps at a
    /// time.
    pub fn open(
        path: &Path,
        index: std::sync::Arc<LoadsIndex>,
        steps_per_chunk: usize,
    ) -> Result<Self, TraceError> {
        if !index.sorted {
            return Err(TraceError::invalid(
                path,
                "load rows are not grouped by step in ascending order; it cannot be streamed",
            ));
        }
        let (builder, _) = open_reader(path)?;
        let reader = builder.build().map_err(|e| TraceError::pq(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            index,
            reader,
            batch: None,
            row: 0,
            next: 0,
            steps_per_chunk: steps_per_chunk.max(1),
        })
    }

    /// The next steps as dense loads (positions into the index's step ids
    /// returned with them), or `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<(usize, Loads)>, TraceError> {
        let ix = &self.index;
        if self.next >= ix.step_ids.len() {
            return Ok(None);
        }
        let first = self.next;
        let end = (first + self.steps_per_chunk).min(ix.step_ids.len());
        let mut loads = Loads::zeros(
            ix.step_ids[first..end].to_vec(),
            ix.layer_ids.clone(),
            ix.ranks,
            ix.experts,
        );
        let last_id = ix.step_ids[end - 1];
        let (e_n, r_n, l_n) = (ix.experts, ix.ranks, ix.layer_ids.len());
        loop {
            if self.batch.as_ref().is_none_or(|b| self.row >= b.num_rows()) {
                match self.reader.next() {
                    Some(b) => {
                        self.batch = Some(b.map_err(|e| TraceError::from((self.path.clone(), e)))?);
                        self.row = 0;
                        continue;
                    }
                    None => break,
                }
            }
            let batch = self.batch.as_ref().expect("a batch");
            let c = LoadCols::of(batch, &self.path)?;
            let n = batch.num_rows();
            while self.row < n {
                let i = self.row;
                let s = c.s.value(i);
                if s > last_id {
                    self.next = end;
                    return Ok(Some((first, loads)));
                }
                let si = loads.step_ids.binary_search(&s).map_err(|_| {
                    TraceError::invalid(&self.path, "the file changed while it was read")
                })?;
                let li = ix.layer_ids.binary_search(&c.l.value(i)).map_err(|_| {
                    TraceError::invalid(&self.path, "the file changed while it was read")
                })?;
                let (r, e) = (c.r.value(i) as usize, c.e.value(i) as usize);
                if e >= e_n || r >= r_n {
                    return Err(expert_range(&self.path, e as u32, e_n));
                }
                loads.counts[((si * l_n + li) * r_n + r) * e_n + e] += c.c.value(i);
                self.row += 1;
            }
        }
        self.next = end;
        Ok(Some((first, loads)))
    }
}

fn flat_values<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    width: usize,
    path: &Path,
) -> Result<&'a T, TraceError> {
    let list = column::<FixedSizeListArray>(batch, name, path)?;
    if list.value_length() as usize != width {
        return Err(TraceError::invalid(
            path,
            format!(
                "column '{name}' has width {} (expected {width})",
                list.value_length()
            ),
        ));
    }
    list.values().as_any().downcast_ref::<T>().ok_or_else(|| {
        TraceError::invalid(path, format!("column '{name}' has the wrong item type"))
    })
}

/// Read a tokens file.
pub fn read_tokens(path: &Path) -> Result<(TraceMeta, TokenTrace), TraceError> {
    let (builder, meta) = open_reader(path)?;
    let k = meta.model.top_k as usize;
    let e_n = meta.model.num_experts as usize;
    let has_logits = builder.schema().field_with_name(schema::LOGITS).is_ok();
    let reader = builder.build().map_err(|e| TraceError::pq(path, e))?;
    let mut t = TokenTrace::new(k);
    if has_logits {
        t.logits = Some(Vec::new());
    }
    for batch in reader {
        let batch = batch.map_err(|e| TraceError::from((path.to_path_buf(), e)))?;
        t.step.extend(
            column::<UInt32Array>(&batch, schema::STEP, path)?
                .values()
                .iter(),
        );
        t.layer.extend(
            column::<UInt32Array>(&batch, schema::LAYER, path)?
                .values()
                .iter(),
        );
        t.rank.extend(
            column::<UInt32Array>(&batch, schema::RANK, path)?
                .values()
                .iter(),
        );
        t.token.extend(
            column::<UInt32Array>(&batch, schema::TOKEN, path)?
                .values()
                .iter(),
        );
        t.sequence.extend(
            column::<UInt32Array>(&batch, schema::SEQUENCE, path)?
                .values()
                .iter(),
        );
        let ex = flat_values::<UInt16Array>(&batch, schema::EXPERTS, k, path)?;
        if let Some(&bad) = ex.values().iter().find(|&&e| e as usize >= e_n) {
            return Err(TraceError::invalid(
                path,
                format!("expert id {bad} out of range (num_experts = {e_n})"),
            ));
        }
        t.experts.extend(ex.values().iter());
        t.weights.extend(
            flat_values::<Float32Array>(&batch, schema::WEIGHTS, k, path)?
                .values()
                .iter(),
        );
        if let Some(lg) = t.logits.as_mut() {
            lg.extend(
                flat_values::<Float32Array>(&batch, schema::LOGITS, e_n, path)?
                    .values()
                    .iter(),
            );
        }
    }
    Ok((meta, t))
}

/// Read only the metadata of a trace file.
pub fn read_meta(path: &Path) -> Result<TraceMeta, TraceError> {
    open_reader(path).map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::meta::{CaptureMeta, ModelMeta, RoutingFn};

    pub(crate) fn meta(e: u32, k: u32) -> TraceMeta {
        TraceMeta::new(
            ModelMeta {
                name: "tiny".into(),
                num_experts: e,
                top_k: k,
                hidden_size: 8,
                intermediate_size: 4,
                num_layers: 2,
                dtype: "bf16".into(),
                routing: RoutingFn::SoftmaxTopk { renormalize: true },
            },
            CaptureMeta {
                source_format: "test".into(),
                ranks: 1,
                ..Default::default()
            },
        )
    }

    #[test]
    fn round_trip_loads_and_tokens() {
        let dir = std::env::temp_dir().join(format!("llep-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.parquet");
        let mut tokens = TokenTrace::new(2);
        tokens.push(3, 1, 0, 0, 0, &[0, 3], &[0.6, 0.4]);
        tokens.push(3, 1, 0, 1, 0, &[2, 3], &[0.7, 0.3]);
        tokens.push(3, 4, 0, 0, 0, &[1, 0], &[0.9, 0.1]);
        let trace = Trace::from_tokens(meta(4, 2), tokens.clone());
        write_trace(&path, &trace).unwrap();
        let back = read_trace(&path, true).unwrap();
        assert_eq!(back.loads, trace.loads);
        assert_eq!(back.tokens.unwrap(), tokens);
        assert!(back.meta.capture.token_level);
        assert_eq!(back.loads.layer_ids, vec![1, 4]);
        assert_eq!(back.loads.global(0, 0), vec![1, 0, 1, 2]);
        // no temporary files left behind
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_non_trace_parquet_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("llep-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("junk.parquet");
        std::fs::write(&path, b"PAR1 not really").unwrap();
        let err = read_trace(&path, false).unwrap_err().to_string();
        assert!(err.contains("junk.parquet"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
