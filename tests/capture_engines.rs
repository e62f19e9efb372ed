//! Engine dump readers against fixtures laid out as the engines write them
//! (`tests/data/engines/make_engine_fixtures.py`): every trace's counts must
//! equal the counts the fixture script computed from the raw ids, stored in
//! `<name>.expected` (JSON).

use llep_trace::capture::engines::{self, EplbOptions};
use llep_trace::capture::routed::{self, VllmOptions};
use llep_trace::capture::{CaptureError, CaptureOptions};
use llep_trace::trace::{Loads, TraceMeta};
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/engines")
        .join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-eng-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn quiet() -> CaptureOptions {
    CaptureOptions {
        ..Default::default()
    }
}

fn with_top_k(k: u32) -> CaptureOptions {
    let mut o = quiet();
    o.model.top_k = Some(k);
    o
}

/// Compare a trace with the fixture script's independent counts.
fn check(loads: &Loads, meta: &TraceMeta, expected: &str) {
    let text = std::fs::read_to_string(data(expected)).unwrap();
    let want: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ints = |k: &str| -> Vec<u64> {
        want[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let steps: Vec<u32> = ints("step_ids").iter().map(|&x| x as u32).collect();
    let layers: Vec<u32> = ints("layer_ids").iter().map(|&x| x as u32).collect();
    assert_eq!(loads.step_ids, steps, "{expected}: steps");
    assert_eq!(loads.layer_ids, layers, "{expected}: layers");
    assert_eq!(
        loads.ranks as u64,
        want["ranks"].as_u64().unwrap(),
        "{expected}: ranks"
    );
    assert_eq!(
        loads.experts as u64,
        want["experts"].as_u64().unwrap(),
        "{expected}: experts"
    );
    if let Some(k) = want["top_k"].as_u64() {
        assert_eq!(meta.model.top_k as u64, k, "{expected}: top_k");
    }
    assert_eq!(
        meta.capture.passes_aggregated,
        want["passes_aggregated"].as_u64(),
        "{expected}: passes_aggregated"
    );
    let counts = want["counts"].as_array().unwrap();
    for (s, by_layer) in counts.iter().enumerate() {
        for (l, row) in by_layer.as_array().unwrap().iter().enumerate() {
            let row: Vec<u64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(
                loads.block(s, l),
                &row[..],
                "{expected}: step {} layer {}",
                steps[s],
                layers[l]
            );
        }
    }
}

fn err_text(e: CaptureError) -> String {
    e.to_string()
}

// ------------------------------------------------------------------ SGLang

#[test]
fn sglang_stat_drops_unused_slots_and_dense_layers() {
    let dir = data("sglang_stat");
    let t = engines::capture_sglang(std::slice::from_ref(&dir), &with_top_k(2)).unwrap();
    check(
        &t.loads,
        &t.meta,
        "sglang_stat/expert_distribution_recorder_1732000000.123456.pt.expected",
    );
    assert_eq!(t.meta.capture.rank_assignment, "global");
    assert!(
        t.meta.provenance.contains("2 all-zero pass slots"),
        "{}",
        t.meta.provenance
    );
    assert!(
        t.meta.provenance.contains("layers [0]"),
        "{}",
        t.meta.provenance
    );
    // Stat mode does not say top-k.
    let e = engines::capture_sglang(&[dir], &quiet()).unwrap_err();
    assert!(err_text(e).contains("--top-k"));
}

#[test]
fn sglang_per_pass_maps_physical_slots_and_sums_ranks_by_pass_id() {
    let t = engines::capture_sglang(&[data("sglang_per_pass")], &with_top_k(2)).unwrap();
    check(&t.loads, &t.meta, "sglang_per_pass/all.expected");
    assert_eq!(t.meta.capture.passes_aggregated, None);
}

#[test]
fn sglang_per_token_counts_ids_and_infers_top_k() {
    for dir in ["sglang_per_token", "sglang_per_token_old"] {
        let t = engines::capture_sglang(&[data(dir)], &quiet()).unwrap();
        check(&t.loads, &t.meta, &format!("{dir}/all.expected"));
        assert_eq!(t.meta.model.top_k, 4, "{dir}");
    }
    // A top-k on the command line that contradicts the ids is refused.
    let e = engines::capture_sglang(&[data("sglang_per_token")], &with_top_k(2)).unwrap_err();
    assert!(err_text(e).contains("top_k"));
}

#[test]
fn sglang_per_token_as_token_rows() {
    let d = tmp("sgl-tok");
    for dir in ["sglang_per_token", "sglang_per_token_old"] {
        let out = d.join(format!("{dir}.parquet"));
        let r = routed::capture_sglang_tokens(&[data(dir)], &out, &quiet()).unwrap();
        // The fixture's expected counts are summed over the two ranks; the
        // token rows keep each token's rank.
        assert_eq!(r.loads.ranks, 2);
        assert_eq!(r.meta.model.top_k, 4);
        let sums = engines::capture_sglang(&[data(dir)], &quiet()).unwrap();
        assert_eq!(r.loads.step_ids, sums.loads.step_ids);
        assert_eq!(r.loads.layer_ids, sums.loads.layer_ids);
        for s in 0..r.loads.steps() {
            for l in 0..r.loads.layers() {
                assert_eq!(r.loads.global(s, l), sums.loads.global(s, l), "{dir}");
            }
        }
        check_global(&r.loads, &format!("{dir}/all.expected"));
        assert!(
            r.meta.provenance.contains("layers [0]"),
            "{}",
            r.meta.provenance
        );
    }
}

#[test]
fn sglang_per_token_tensor_parallel_copies_count_once() {
    let dir = "sglang_per_token_tp";
    let t = engines::capture_sglang(&[data(dir)], &quiet()).unwrap();
    check(&t.loads, &t.meta, &format!("{dir}/all.expected"));
    let out = tmp("sgl-tp").join("t.parquet");
    let r = routed::capture_sglang_tokens(&[data(dir)], &out, &quiet()).unwrap();
    assert_eq!(r.loads.ranks, 1);
    check_global(&r.loads, &format!("{dir}/all.expected"));
    assert!(
        r.meta.provenance.contains("identical"),
        "{}",
        r.meta.provenance
    );
}

/// Rank-summed counts against a single-rank expected table.
fn check_global(loads: &Loads, expected: &str) {
    let text = std::fs::read_to_string(data(expected)).unwrap();
    let want: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (s, by_layer) in want["counts"].as_array().unwrap().iter().enumerate() {
        for (l, row) in by_layer.as_array().unwrap().iter().enumerate() {
            let row: Vec<u64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(loads.global(s, l), row, "{expected}: step {s} layer {l}");
        }
    }
}

#[test]
fn sglang_csv_window_and_tensor_parallel_duplicates() {
    let t = engines::capture_sglang(&[data("sglang_csv")], &with_top_k(2)).unwrap();
    check(&t.loads, &t.meta, "sglang_csv/all.expected");
    let t = engines::capture_sglang(&[data("sglang_csv_tp")], &with_top_k(2)).unwrap();
    check(&t.loads, &t.meta, "sglang_csv_tp/all.expected");
    assert!(
        t.meta.provenance.contains("identical"),
        "{}",
        t.meta.provenance
    );
}

#[test]
fn sglang_refuses_mixed_modes() {
    let e = engines::capture_sglang(
        &[data("sglang_stat"), data("sglang_per_pass")],
        &with_top_k(2),
    )
    .unwrap_err();
    assert!(err_text(e).contains("one recorder mode"));
}

// ------------------------------------------------------------ TensorRT-LLM

#[test]
fn trtllm_reads_top_k_and_experts_from_meta_info() {
    let t = engines::capture_trtllm(&[data("trtllm")], &quiet()).unwrap();
    check(&t.loads, &t.meta, "trtllm/all.expected");
    assert_eq!(t.meta.capture.rank_assignment, "recorded");
    let e = engines::capture_trtllm(&[data("trtllm")], &with_top_k(3)).unwrap_err();
    assert!(err_text(e).contains("top_k 2"));
}

#[test]
fn trtllm_null_meta_info_is_a_clear_error() {
    let d = tmp("trt-null");
    std::fs::write(d.join("meta_info.json"), "null").unwrap();
    std::fs::copy(
        data("trtllm/rank0.safetensors"),
        d.join("rank0.safetensors"),
    )
    .unwrap();
    let e = engines::capture_trtllm(&[d], &with_top_k(2)).unwrap_err();
    assert!(err_text(e).contains("recorded nothing"));
}

// -------------------------------------------------------------------- vLLM

#[test]
fn vllm_skips_dense_layers_without_shifting_tokens() {
    let d = tmp("vllm");
    let r = routed::capture_vllm(&[data("vllm")], &d.join("v.parquet"), &quiet()).unwrap();
    check(&r.loads, &r.meta, "vllm/all.expected");
    // 8 + 13 rows (num_tokens - 1 per request) at 2 MoE layers.
    assert_eq!(r.tokens, 2 * (8 + 13));
    assert!(
        r.meta.provenance.contains("layers [0, 2]"),
        "{}",
        r.meta.provenance
    );
    // Naming the MoE layers gives the same trace.
    let vo = VllmOptions {
        moe_layers: Some(vec![1, 3]),
        ..Default::default()
    };
    let r2 =
        routed::capture_vllm_with(&[data("vllm")], &d.join("w.parquet"), &quiet(), &vo).unwrap();
    assert_eq!(r2.loads, r.loads);
    // Only layer 3: the first three are declared dense.
    let vo = VllmOptions {
        first_dense: Some(3),
        ..Default::default()
    };
    let r3 =
        routed::capture_vllm_with(&[data("vllm")], &d.join("x.parquet"), &quiet(), &vo).unwrap();
    assert_eq!(r3.loads.layer_ids, vec![3]);
    assert_eq!(r3.loads.global(0, 0), r.loads.global(0, 1));
}

// ------------------------------------------------------------- Megatron-LM

#[test]
fn megatron_reads_decoder_records_and_leaves_mtp_out() {
    let d = tmp("meg");
    let files = vec![
        data("megatron/router_trace_rank0.jsonl"),
        data("megatron/router_trace_rank1.jsonl"),
    ];
    let r = routed::capture_jsonl(&files, &d.join("m.parquet"), &quiet(), true).unwrap();
    check(&r.loads, &r.meta, "megatron/all.expected");
    assert!(
        r.meta
            .provenance
            .contains("4 Megatron records of block 'mtp'"),
        "{}",
        r.meta.provenance
    );
}

// -------------------------------------------------------------------- EPLB

#[test]
fn eplb_matrices_in_every_container() {
    let t = engines::capture_eplb_matrix(
        &[data("eplb/weight.npy")],
        &with_top_k(2),
        &EplbOptions::default(),
    )
    .unwrap();
    check(&t.loads, &t.meta, "eplb/weight.npy.expected");
    for f in ["init_expert_location.json", "init_expert_location.pt"] {
        let t = engines::capture_eplb_matrix(
            &[data(&format!("eplb/{f}"))],
            &with_top_k(2),
            &EplbOptions::default(),
        )
        .unwrap();
        check(&t.loads, &t.meta, "eplb/init_expert_location.expected");
    }
    // SGLang's own reader takes the same dict (a stat dump is also a valid
    // --init-expert-location input, and the other way round).
    let t =
        engines::capture_sglang(&[data("eplb/init_expert_location.pt")], &with_top_k(2)).unwrap();
    check(&t.loads, &t.meta, "eplb/init_expert_location.expected");
    // A known window is recorded.
    let t = engines::capture_eplb_matrix(
        &[data("eplb/weight.npy")],
        &with_top_k(2),
        &EplbOptions { passes: Some(512) },
    )
    .unwrap();
    assert_eq!(t.meta.capture.passes_aggregated, Some(512));
}

#[test]
fn eplb_rejects_fractional_loads() {
    let d = tmp("eplb-frac");
    let f = d.join("w.json");
    std::fs::write(&f, "[[1.5, 2], [3, 4]]").unwrap();
    let e =
        engines::capture_eplb_matrix(&[f], &with_top_k(1), &EplbOptions::default()).unwrap_err();
    assert!(err_text(e).contains("not a whole count"));
}

#[test]
fn trtllm_node_directories_merge_and_overlaps_are_refused() {
    let d = tmp("trt-nodes");
    let (a, b) = (d.join("node0"), d.join("node1"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for f in ["meta_info.json", "rank0.safetensors"] {
        std::fs::copy(data(&format!("trtllm/{f}")), a.join(f)).unwrap();
    }
    std::fs::copy(
        data("trtllm/rank1.safetensors"),
        b.join("rank1.safetensors"),
    )
    .unwrap();
    let t = engines::capture_trtllm(&[a.clone(), b.clone()], &quiet()).unwrap();
    check(&t.loads, &t.meta, "trtllm/all.expected");
    // Without rank 0's directory nothing says top-k or the expert count.
    let e = engines::capture_trtllm(std::slice::from_ref(&b), &quiet()).unwrap_err();
    assert!(err_text(e).contains("meta_info.json"));
    std::fs::copy(
        data("trtllm/rank1.safetensors"),
        a.join("rank1.safetensors"),
    )
    .unwrap();
    let e = engines::capture_trtllm(&[a, b], &quiet()).unwrap_err();
    assert!(err_text(e).contains("another input directory"));
}

/// The engine formats through the command line: their format names, their
/// options, and the aggregated-counts warning `simulate` gives downstream.
mod cli {
    use super::{data, tmp};
    use std::process::Command;

    fn run(args: &[&str]) -> (bool, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_llep-trace"))
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }

    #[test]
    fn eplb_matrix_window_reaches_simulate_as_a_warning() {
        let out = tmp("cli-eplb").join("e.parquet");
        let (out_s, m) = (out.to_str().unwrap(), data("eplb/weight.npy"));
        let (ok, text) = run(&[
            "capture",
            m.to_str().unwrap(),
            "--format",
            "eplb-matrix",
            "--eplb-passes",
            "100",
            "--top-k",
            "8",
            "--out",
            out_s,
        ]);
        assert!(ok, "{text}");
        assert!(text.contains("(eplb-matrix)"), "{text}");
        let (ok, text) = run(&[
            "simulate",
            "--trace",
            out_s,
            "--hidden-size",
            "7168",
            "--intermediate-size",
            "2048",
        ]);
        assert!(ok, "{text}");
        assert!(text.contains("summed over 100 forward passes"), "{text}");
        assert!(
            text.contains("counts rescaled to 16384 tokens/rank"),
            "{text}"
        );
    }

    #[test]
    fn old_sglang_csvs_are_detected_and_vllm_takes_dense_layers() {
        let dir = tmp("cli-engines");
        let s = dir.join("s.parquet");
        let (ok, text) = run(&[
            "capture",
            data("sglang_csv").to_str().unwrap(),
            "--top-k",
            "2",
            "--out",
            s.to_str().unwrap(),
        ]);
        assert!(ok, "{text}");
        assert!(text.contains("(sglang-expert-distribution)"), "{text}");
        let v = dir.join("v.parquet");
        let (ok, text) = run(&[
            "capture",
            data("vllm").to_str().unwrap(),
            "--first-dense-layers",
            "1",
            "--out",
            v.to_str().unwrap(),
        ]);
        assert!(ok, "{text}");
        let (ok, text) = run(&[
            "capture",
            data("vllm").to_str().unwrap(),
            "--eplb-passes",
            "3",
            "--out",
            dir.join("x.parquet").to_str().unwrap(),
        ]);
        assert!(!ok);
        assert!(text.contains("--eplb-passes does not apply"), "{text}");
    }
}
