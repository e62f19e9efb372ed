//! Streaming (issue 16, part 4): a load-level trace simulated chunk by
//! chunk from disk gives exactly the rows, in the same order, that the
//! in-memory simulation of the whole trace gives, whatever the chunk size,
//! with EPLB's look-back across chunk boundaries, a step/layer selection
//! and rescaled counts; the streamed results file, the running summaries
//! and tune's running totals match the reference computed from all rows.

use llep_trace::plan::{Gate, Policy};
use llep_trace::progress::Silent;
use llep_trace::results::{read_results, Pass, ResultRow, ResultsMeta, ResultsWriter};
use llep_trace::sim::{
    self, simulate_chunked, simulate_with, EplbSim, Profile, ReplicaSplit, SimConfig, Summarizer,
};
use llep_trace::trace::meta::{CaptureMeta, ModelMeta, RoutingFn, TraceMeta};
use llep_trace::trace::tokens::SplitMix64;
use llep_trace::trace::{write_trace, Loads, Trace};
use llep_trace::tune::{tune, Objective, TuneAcc};
use llep_trace::workload::{InputSpec, StepPick, Streamed};
use std::path::{Path, PathBuf};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-stream-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A skewed load-level trace: `steps` x `layers`, one rank, 16 experts.
fn write(path: &Path, steps: u32, layers: u32, scale: u64) {
    let experts = 16usize;
    let mut loads = Loads::zeros(
        (0..steps).map(|s| s * 3 + 1).collect(),
        (0..layers).collect(),
        1,
        experts,
    );
    let mut rng = SplitMix64::new(5);
    for s in 0..steps as usize {
        for l in 0..layers as usize {
            let hot = rng.below(experts as u64) as usize;
            for (e, c) in loads.block_mut(s, l).iter_mut().enumerate() {
                *c = (rng.below(300) + if e == hot { 2000 } else { 0 }) * scale;
            }
        }
    }
    let model = ModelMeta {
        name: "tiny".into(),
        num_experts: experts as u32,
        top_k: 2,
        hidden_size: 512,
        intermediate_size: 256,
        num_layers: layers,
        dtype: "bf16".into(),
        routing: RoutingFn::Recorded,
    };
    let capture = CaptureMeta {
        source_format: "test".into(),
        ranks: 1,
        ..Default::default()
    };
    let trace = Trace {
        meta: TraceMeta::new(model, capture),
        loads,
        tokens: None,
    };
    write_trace(path, &trace).unwrap();
}

fn cfg(policies: Vec<Policy>) -> SimConfig {
    SimConfig {
        policies,
        gates: vec![Gate::Always, Gate::Ratio(1.2), Gate::Ratio(1.6)],
        alphas: vec![1.0, 1.5],
        min_gemms: vec![64],
        profile: Profile::load("h200").unwrap(),
        threads: 2,
        pass: Pass::Forward,
        recompute: false,
    }
}

fn streamed(spec: &InputSpec, chunk: usize, c: &SimConfig, e: Option<&EplbSim>) -> Vec<ResultRow> {
    let mut s = spec.resolve_stream(&Silent).unwrap();
    assert_eq!(s.len(), 1);
    let s: Streamed = s.remove(0);
    assert!(s.from_disk(), "a sorted load-level file streams from disk");
    let mut rows = Vec::new();
    simulate_chunked(&s, chunk, c, e, &Silent, &mut |r| {
        rows.extend(r);
        Ok(())
    })
    .unwrap();
    rows
}

fn reference(spec: &InputSpec, c: &SimConfig, e: Option<&EplbSim>) -> Vec<ResultRow> {
    let w = spec.resolve().unwrap().remove(0);
    simulate_with(&w, c, e, &Silent).unwrap()
}

#[test]
fn streamed_rows_equal_the_whole_trace_rows_at_any_chunk_size() {
    let d = dir("rows");
    let path = d.join("t.parquet");
    write(&path, 23, 3, 1);
    let spec = InputSpec::trace(&path, 4);
    let c = cfg(vec![
        Policy::Ep,
        Policy::Llep,
        Policy::Ideal,
        Policy::LlepAuto,
    ]);
    let want = reference(&spec, &c, None);
    assert_eq!(want.len(), 23 * 3 * 2 * 6);
    // one step a chunk, a few steps, an odd size, all at once
    for chunk in [1, 3, 7, 20, 10_000] {
        assert_eq!(streamed(&spec, chunk, &c, None), want, "chunk {chunk}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn eplb_looks_back_across_chunk_boundaries() {
    let d = dir("eplb");
    let path = d.join("t.parquet");
    write(&path, 19, 2, 1);
    let spec = InputSpec::trace(&path, 4);
    let c = cfg(vec![Policy::Ep, Policy::Eplb, Policy::EplbLlep]);
    for (window, period, oracle) in [(3, 2, false), (4, 5, false), (1, 1, false), (2, 3, true)] {
        let e = EplbSim {
            redundant: 4,
            window,
            period,
            oracle,
            split: ReplicaSplit::Sglang,
            nodes: 1,
            groups: 1,
        };
        let want = reference(&spec, &c, Some(&e));
        assert!(
            want.iter()
                .any(|r| r.policy == Policy::Eplb && r.transfers > 0)
                || oracle
        );
        for chunk in [2, 6, 9, 1000] {
            assert_eq!(
                streamed(&spec, chunk, &c, Some(&e)),
                want,
                "window {window} period {period} oracle {oracle} chunk {chunk}"
            );
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn selections_and_rescaled_counts_stream_as_they_resolve() {
    let d = dir("sel");
    let path = d.join("t.parquet");
    // counts far above one forward pass: rescaled, with the warning
    write(&path, 12, 4, 1000);
    let c = cfg(vec![Policy::Ep, Policy::Llep]);
    let mut spec = InputSpec::trace(&path, 8);
    let whole = spec.resolve().unwrap().remove(0);
    let s = spec.resolve_stream(&Silent).unwrap().remove(0);
    assert_eq!(
        (s.note.as_str(), &s.warnings),
        (whole.note.as_str(), &whole.warnings)
    );
    assert!(!s.warnings.is_empty(), "summed counts are caught");
    assert_eq!(streamed(&spec, 5, &c, None), reference(&spec, &c, None));
    spec.tokens_per_rank = Some(300);
    spec.layers = vec![1, 3];
    spec.steps = StepPick::Ids(vec![4, 10, 31]);
    let s = spec.resolve_stream(&Silent).unwrap().remove(0);
    assert_eq!((s.steps(), s.layers()), (3, 2));
    assert_eq!(streamed(&spec, 2, &c, None), reference(&spec, &c, None));
    spec.steps = StepPick::First;
    assert_eq!(streamed(&spec, 1, &c, None), reference(&spec, &c, None));
    spec.steps = StepPick::Ids(vec![2]);
    let e = spec.resolve_stream(&Silent).unwrap_err().to_string();
    assert!(e.contains("no such steps [2]"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn written_file_summaries_and_tune_totals_match_the_reference() {
    let d = dir("out");
    let path = d.join("t.parquet");
    write(&path, 17, 3, 1);
    let spec = InputSpec::trace(&path, 4);
    let c = cfg(vec![Policy::Ep, Policy::Llep, Policy::Ideal]);
    let want = reference(&spec, &c, None);
    let s = spec.resolve_stream(&Silent).unwrap().remove(0);
    let out = d.join("r.parquet");
    let mut w = ResultsWriter::create(&out, &ResultsMeta::default()).unwrap();
    let (mut summ, mut acc) = (Summarizer::default(), TuneAcc::default());
    simulate_chunked(&s, 4, &c, None, &Silent, &mut |rows| {
        for r in &rows {
            summ.add(r);
            acc.add(r);
        }
        w.write(&rows)?;
        Ok(())
    })
    .unwrap();
    assert!(!out.exists(), "the file appears only when finished");
    assert_eq!(w.finish().unwrap(), want.len());
    assert_eq!(read_results(&out).unwrap().1, want);
    assert_eq!(summ.finish(), sim::summarize(&want));
    for cap in [None, Some(u64::MAX)] {
        assert_eq!(
            acc.finish(Objective::Time, cap),
            tune(&want, Objective::Time, cap)
        );
    }
    let t = acc.finish(Objective::Memory, None).unwrap();
    assert_eq!(Ok(t), tune(&want, Objective::Memory, None));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A load file whose rows are not grouped by step (another tool wrote it)
/// cannot be streamed: it is read whole, as before, with the same rows.
#[test]
fn an_unsorted_load_file_is_read_whole_with_the_same_rows() {
    use arrow::array::{ArrayRef, RecordBatch, UInt32Array, UInt64Array};
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;
    use std::sync::Arc;
    let d = dir("unsorted");
    let sorted = d.join("sorted.parquet");
    write(&sorted, 6, 2, 1);
    let (meta, rows) = {
        let t = llep_trace::trace::read_trace(&sorted, false).unwrap();
        let mut rows = Vec::new();
        for s in (0..t.loads.steps()).rev() {
            for l in 0..t.loads.layers() {
                for (e, &c) in t.loads.block(s, l).iter().enumerate() {
                    rows.push((t.loads.step_ids[s], t.loads.layer_ids[l], e as u32, c));
                }
            }
        }
        (t.meta, rows)
    };
    let unsorted = d.join("unsorted.parquet");
    let schema = llep_trace::trace::schema::loads_schema();
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(
            llep_trace::trace::schema::META_KEY.to_string(),
            serde_json::to_string(&meta).unwrap(),
        )]))
        .build();
    let f = std::fs::File::create(&unsorted).unwrap();
    let mut w = ArrowWriter::try_new(f, schema.clone(), Some(props)).unwrap();
    let col = |f: fn(&(u32, u32, u32, u64)) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let batch = RecordBatch::try_new(
        schema,
        vec![
            col(|r| r.0),
            col(|r| r.1),
            col(|_| 0),
            col(|r| r.2),
            Arc::new(UInt64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let idx = llep_trace::trace::parquet_io::index_loads(&unsorted).unwrap();
    assert!(!idx.sorted);
    let c = cfg(vec![Policy::Ep, Policy::Llep]);
    let spec = InputSpec::trace(&unsorted, 4);
    let s = spec.resolve_stream(&Silent).unwrap().remove(0);
    assert!(!s.from_disk(), "an unsorted file is read whole");
    let mut got = Vec::new();
    simulate_chunked(&s, 3, &c, None, &Silent, &mut |r| {
        got.extend(r);
        Ok(())
    })
    .unwrap();
    let mut want = reference(&InputSpec::trace(&sorted, 4), &c, None);
    for r in &mut want {
        r.trace = "unsorted.parquet".into();
    }
    assert_eq!(got, want);
    std::fs::remove_dir_all(&d).unwrap();
}
