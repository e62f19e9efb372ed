//! Every capture source against an independent count of the same input,
//! plus the refusals: hostile pickles, truncated and mismatched files,
//! NaN logits, top-k larger than the experts. Fixtures are generated here or
//! are the tiny files of tests/data (made by tests/data/make_fixtures.py).

use llep_trace::capture::tensor::read_npy;
use llep_trace::capture::{engines, logits, routed, CaptureOptions};
use llep_trace::trace::tokens::SplitMix64;
use llep_trace::trace::{read_trace, RoutingFn};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-cap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llep-trace"))
}

fn quiet() -> CaptureOptions {
    CaptureOptions {
        ..Default::default()
    }
}

/// Names in a directory, to check that nothing was left behind.
fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- FLAME .pt

#[test]
fn flame_pt_loads_match_a_count_of_the_raw_storages() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/source/flame-moe-290m");
    let d = tmp("flame");
    let out = d.join("flame.parquet");
    let mut opts = quiet();
    opts.model.num_experts = Some(64);
    let r = routed::capture_pt(std::slice::from_ref(&src), &out, &opts).unwrap();
    assert_eq!(r.tokens, 8 * 2048);
    // independent count: the ids storage is archive entry data/2 (int64,
    // 2048 x 6), read with the zip crate alone, no pickle involved
    let mut want: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for f in std::fs::read_dir(&src).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let layer: u32 = name
            .split("_layer")
            .nth(1)
            .unwrap()
            .split('_')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut z = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
        let entry = format!("{}/data/2", name.trim_end_matches(".pt"));
        let mut b = Vec::new();
        z.by_name(&entry).unwrap().read_to_end(&mut b).unwrap();
        assert_eq!(b.len(), 2048 * 6 * 8);
        let row = want.entry(layer).or_insert_with(|| vec![0; 64]);
        for c in b.chunks_exact(8) {
            row[i64::from_le_bytes(c.try_into().unwrap()) as usize] += 1;
        }
    }
    let back = read_trace(&out, true).unwrap();
    assert_eq!(back.loads.layer_ids, (2..=9).collect::<Vec<_>>());
    assert_eq!(back.loads.step_ids, vec![5473], "step = the 'epoch' scalar");
    for (li, (&layer, row)) in want.iter().enumerate() {
        assert_eq!(back.loads.layer_ids[li], layer);
        assert_eq!(&back.loads.global(0, li), row, "layer {layer}");
    }
    let t = back.tokens.unwrap();
    assert_eq!(t.top_k, 6);
    // 32 sequences of 64 tokens, sequence-major
    assert_eq!(t.sequence[63], 0);
    assert_eq!(t.sequence[64], 1);
    assert_eq!(*t.sequence.iter().max().unwrap(), 31);
    assert!(t.weights.iter().all(|w| w.is_finite() && *w > 0.0));
    assert_eq!(back.meta.capture.files.len(), 8);
    assert_eq!(back.meta.capture.source_format, "pt-routing");
}

#[test]
fn small_pt_with_int32_ids_and_f16_scores() {
    let d = tmp("ptsmall");
    let out = d.join("t.parquet");
    let mut opts = quiet();
    opts.model.num_experts = Some(16);
    routed::capture_pt(&[data("routing_small.pt")], &out, &opts).unwrap();
    let ids = read_npy(&data("routing_small.ids.npy"))
        .unwrap()
        .to_i64(Path::new("x"), "ids")
        .unwrap();
    let mut want = vec![0u64; 16];
    for &i in &ids {
        want[i as usize] += 1;
    }
    let back = read_trace(&out, true).unwrap();
    assert_eq!(back.loads.layer_ids, vec![3]);
    assert_eq!(back.loads.step_ids, vec![11]);
    assert_eq!(back.loads.global(0, 0), want);
    let t = back.tokens.unwrap();
    let got: Vec<i64> = t.experts.iter().map(|&e| e as i64).collect();
    assert_eq!(got, ids, "slot order kept");
    assert_eq!(t.sequence[9], 0);
    assert_eq!(t.sequence[10], 1);
}

#[test]
fn hostile_pickle_is_refused_by_name_and_leaves_nothing() {
    let d = tmp("hostile");
    let out = d.join("t.parquet");
    let o = bin()
        .args([
            "capture",
            data("hostile.pt").to_str().unwrap(),
            "--format",
            "pt-routing",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("hostile.pt") && err.contains("system"),
        "{err}"
    );
    assert!(err.contains("refusing global"), "{err}");
    assert!(names(&d).is_empty(), "{:?}", names(&d));
}

// ---------------------------------------------------------------- engines

#[test]
fn sglang_stat_and_per_pass_match_numpy_counts() {
    for (file, want) in [
        ("sglang_stat.pt", "sglang_stat.expected.npy"),
        ("sglang_perpass.pt", "sglang_perpass.expected.npy"),
    ] {
        let mut opts = quiet();
        opts.model.top_k = Some(2);
        let t = engines::capture_sglang(&[data(file)], &opts).unwrap();
        let w = read_npy(&data(want)).unwrap();
        let wv = w.to_i64(Path::new(want), "x").unwrap();
        let (p_n, l_n, e_n) = (w.shape[0], w.shape[1], w.shape[2]);
        assert_eq!(t.loads.steps(), p_n);
        assert_eq!(t.loads.layers(), l_n);
        assert_eq!(t.loads.experts, e_n);
        for p in 0..p_n {
            for l in 0..l_n {
                let row: Vec<u64> = wv[(p * l_n + l) * e_n..(p * l_n + l + 1) * e_n]
                    .iter()
                    .map(|&x| x as u64)
                    .collect();
                assert_eq!(t.loads.global(p, l), row, "{file} pass {p} layer {l}");
            }
        }
        assert_eq!(t.meta.capture.rank_assignment, "global");
    }
}

fn safetensors_bytes(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut off = 0;
    for (i, (name, dt, shape, bytes)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dt}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
            shape.join(","),
            off + bytes.len()
        ));
        off += bytes.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    for t in tensors {
        v.extend_from_slice(&t.3);
    }
    v
}

#[test]
fn trtllm_statistics_per_rank() {
    let d = tmp("trt");
    let stats = d.join("stats");
    std::fs::create_dir_all(&stats).unwrap();
    std::fs::write(stats.join("meta_info.json"), r#"{"num_experts": 4}"#).unwrap();
    let mut want = BTreeMap::new();
    for r in 0..2u32 {
        let mut ts = Vec::new();
        let mut owned = Vec::new();
        for it in [10u32, 11] {
            for layer in [0u32, 5] {
                let c: Vec<i32> = (0..4)
                    .map(|e| (r * 100 + it * 10 + layer + e) as i32)
                    .collect();
                want.insert(
                    (it, layer, r),
                    c.iter().map(|&x| x as u64).collect::<Vec<_>>(),
                );
                owned.push((
                    format!("{it}_{layer}"),
                    c.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                ));
            }
        }
        for (n, b) in &owned {
            ts.push((n.as_str(), "I32", vec![4], b.clone()));
        }
        std::fs::write(
            stats.join(format!("rank{r}.safetensors")),
            safetensors_bytes(&ts),
        )
        .unwrap();
    }
    let mut opts = quiet();
    opts.model.top_k = Some(1);
    let t = engines::capture_trtllm(&[stats], &opts).unwrap();
    assert_eq!(t.loads.step_ids, vec![10, 11]);
    assert_eq!(t.loads.layer_ids, vec![0, 5]);
    assert_eq!(t.loads.ranks, 2);
    for ((it, layer, r), row) in want {
        let s = t.loads.step_ids.iter().position(|&x| x == it).unwrap();
        let l = t.loads.layer_ids.iter().position(|&x| x == layer).unwrap();
        assert_eq!(
            &t.loads.block(s, l)[r as usize * 4..(r as usize + 1) * 4],
            &row[..]
        );
    }
    assert_eq!(t.meta.capture.rank_assignment, "recorded");
}

// ---------------------------------------------------------------- records

#[test]
fn jsonl_megatron_and_csv_records() {
    let d = tmp("records");
    // generic JSONL with a field mapping
    let j = d.join("r.jsonl");
    std::fs::write(
        &j,
        "{\"layer\": 1, \"token_idx\": 0, \"experts\": [0, 3], \"gating_probs\": [0.7, 0.3]}\n\
         {\"layer\": 1, \"token_idx\": 1, \"experts\": [3, 2], \"gating_probs\": [0.6, 0.4]}\n\
         {\"layer\": 2, \"token_idx\": 0, \"experts\": [1, 0], \"gating_probs\": [0.5, 0.5]}\n",
    )
    .unwrap();
    let mut opts = quiet();
    opts.fields = vec![
        ("expert".into(), "experts".into()),
        ("weight".into(), "gating_probs".into()),
        ("token".into(), "token_idx".into()),
    ];
    opts.model.num_experts = Some(4);
    let r = routed::capture_jsonl(&[j], &d.join("j.parquet"), &opts, false).unwrap();
    assert_eq!(r.loads.global(0, 0), vec![1, 0, 1, 2]);
    assert_eq!(r.loads.global(0, 1), vec![1, 1, 0, 0]);
    assert!(r.had_weights);
    let t = read_trace(&d.join("j.parquet"), true)
        .unwrap()
        .tokens
        .unwrap();
    assert_eq!(t.weights[..2], [0.7, 0.3]);

    // Megatron-LM router trace preset: nested and flat top_indices
    let m = d.join("m.jsonl");
    std::fs::write(
        &m,
        "{\"step\": 4, \"layer\": 0, \"rank\": 0, \"num_tokens\": 3, \"topk\": 2, \"top_indices\": [[0, 1], [1, 2], [2, 3]]}\n\
         {\"step\": 4, \"layer\": 0, \"rank\": 1, \"num_tokens\": 2, \"topk\": 2, \"top_indices\": [3, 0, 3, 1]}\n",
    )
    .unwrap();
    let r = routed::capture_jsonl(&[m], &d.join("m.parquet"), &quiet(), true).unwrap();
    assert_eq!(r.loads.ranks, 2);
    assert_eq!(r.loads.block(0, 0), &[1, 2, 2, 1, 1, 1, 0, 2]);
    assert_eq!(r.meta.capture.rank_assignment, "recorded");
    assert!(!r.had_weights);

    // token CSV with ids in one column
    let c = d.join("t.csv");
    std::fs::write(&c, "layer,expert_ids\n0,1 2\n0,\"[2, 3]\"\n1,0;3\n").unwrap();
    let mut opts = quiet();
    opts.fields = vec![("expert".into(), "expert_ids".into())];
    let r = routed::capture_csv(&[c], &d.join("c.parquet"), &opts).unwrap();
    assert_eq!(r.loads.global(0, 0), vec![0, 1, 2, 1]);
    assert_eq!(r.loads.global(0, 1), vec![1, 0, 0, 1]);
}

fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 {
        format!("({},)", shape[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn vllm_routed_experts_arrays() {
    let d = tmp("vllm");
    let (t_n, l_n, k) = (5, 3, 2);
    let mut rng = SplitMix64::new(3);
    let mut want = vec![vec![0u64; 8]; l_n];
    let mut bytes = Vec::new();
    for _ in 0..t_n {
        for row in want.iter_mut() {
            for _ in 0..k {
                let e = rng.below(8) as i16;
                row[e as usize] += 1;
                bytes.extend_from_slice(&e.to_le_bytes());
            }
        }
    }
    std::fs::write(d.join("routed_7.npy"), npy("<i2", &[t_n, l_n, k], &bytes)).unwrap();
    let mut opts = quiet();
    opts.model.num_experts = Some(8);
    let r = routed::capture_vllm(&[d.join("routed_7.npy")], &d.join("v.parquet"), &opts).unwrap();
    assert_eq!(r.loads.step_ids, vec![7]);
    for (l, row) in want.iter().enumerate() {
        assert_eq!(&r.loads.global(0, l), row);
    }
}

// ---------------------------------------------------------------- logits

/// Independent reference: sort by (value desc, id asc).
fn naive_topk(row: &[f32], k: usize) -> Vec<u16> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
    idx[..k].iter().map(|&i| i as u16).collect()
}

fn random_logits(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.unit_f64() as f32) * 6.0 - 3.0)
        .collect()
}

#[test]
fn logits_in_every_container_and_dtype_match_a_naive_topk() {
    let (tokens, e, k, layers, steps) = (37, 16, 3, 2, 3);
    for (container, dtype) in [
        ("safetensors", "F32"),
        ("safetensors", "F16"),
        ("safetensors", "BF16"),
        ("npz", "<f4"),
        ("npz", "|V2"),
        ("npy", "<f2"),
    ] {
        let d = tmp(&format!(
            "logits-{container}-{}",
            dtype.replace(['<', '|'], "")
        ));
        let src = d.join("dump");
        std::fs::create_dir_all(&src).unwrap();
        let mut rng = SplitMix64::new(11);
        let mut want: BTreeMap<(u32, u32), Vec<u64>> = BTreeMap::new();
        let mut want_rows: Vec<Vec<u16>> = Vec::new();
        for s in 0..steps {
            let mut per_layer = Vec::new();
            for l in 0..layers {
                let vals = random_logits(&mut rng, tokens * e);
                // round through the dtype, then count with the naive top-k
                let (bytes, rounded): (Vec<u8>, Vec<f32>) = match dtype {
                    "F32" | "<f4" => (
                        vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                        vals.clone(),
                    ),
                    "F16" | "<f2" => (
                        vals.iter()
                            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                            .collect(),
                        vals.iter()
                            .map(|v| half::f16::from_f32(*v).to_f32())
                            .collect(),
                    ),
                    _ => (
                        vals.iter()
                            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                            .collect(),
                        vals.iter()
                            .map(|v| half::bf16::from_f32(*v).to_f32())
                            .collect(),
                    ),
                };
                let row = want
                    .entry((s as u32, l as u32))
                    .or_insert_with(|| vec![0; e]);
                for t in 0..tokens {
                    let ids = naive_topk(&rounded[t * e..(t + 1) * e], k);
                    for &i in &ids {
                        row[i as usize] += 1;
                    }
                    want_rows.push(ids);
                }
                per_layer.push(bytes);
            }
            let stem = src.join(format!("step_{:03}", s * 10));
            match container {
                "safetensors" => {
                    let names: Vec<String> =
                        (0..layers).map(|l| format!("layer.{l}.logits")).collect();
                    let ts: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = per_layer
                        .iter()
                        .enumerate()
                        .map(|(l, b)| (names[l].as_str(), dtype, vec![tokens, e], b.clone()))
                        .collect();
                    std::fs::write(stem.with_extension("safetensors"), safetensors_bytes(&ts))
                        .unwrap();
                }
                "npz" => {
                    let f = std::fs::File::create(stem.with_extension("npz")).unwrap();
                    let mut z = zip::ZipWriter::new(f);
                    for (l, b) in per_layer.iter().enumerate() {
                        z.start_file(
                            format!("layer.{l}.logits.npy"),
                            zip::write::SimpleFileOptions::default(),
                        )
                        .unwrap();
                        z.write_all(&npy(dtype, &[tokens, e], b)).unwrap();
                    }
                    z.finish().unwrap();
                }
                _ => {
                    let all: Vec<u8> = per_layer.concat();
                    std::fs::write(
                        stem.with_extension("npy"),
                        npy(dtype, &[layers, tokens, e], &all),
                    )
                    .unwrap();
                }
            }
        }
        let out = d.join("t.parquet");
        let mut opts = quiet();
        opts.model.top_k = Some(k as u32);
        opts.model.routing = Some(RoutingFn::SoftmaxTopk { renormalize: true });
        opts.keep_logits = true;
        opts.sequence_length = Some(10);
        let r = logits::capture(std::slice::from_ref(&src), &out, &opts).unwrap();
        assert_eq!(r.tokens as usize, steps * layers * tokens);
        let back = read_trace(&out, true).unwrap();
        assert_eq!(back.loads.step_ids, vec![0, 10, 20], "{container} {dtype}");
        for ((s, l), row) in &want {
            let si = back
                .loads
                .step_ids
                .iter()
                .position(|&x| x == s * 10)
                .unwrap();
            assert_eq!(
                &back.loads.global(si, *l as usize),
                row,
                "{container} {dtype} step {s} layer {l}"
            );
        }
        let t = back.tokens.unwrap();
        let got: Vec<Vec<u16>> = t.experts.chunks(k).map(|c| c.to_vec()).collect();
        assert_eq!(got, want_rows, "{container} {dtype}: slot order");
        // weights: renormalised softmax over the chosen
        for w in t.weights.chunks(k) {
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        assert_eq!(t.logits.as_ref().unwrap().len(), t.len() * e);
        assert!(back.meta.capture.logits_kept);
        assert_eq!(t.sequence[10], 1);
        assert_eq!(names(&d), vec!["dump", "t.parquet", "t.tokens.parquet"]);
    }
}

#[test]
fn recorded_ids_are_checked_and_sigmoid_needs_its_bias() {
    let d = tmp("ids");
    let src = d.join("dump");
    std::fs::create_dir_all(&src).unwrap();
    let (tokens, e, k) = (20, 8, 2);
    let mut rng = SplitMix64::new(5);
    let vals = random_logits(&mut rng, tokens * e);
    let mut ids: Vec<i64> = Vec::new();
    for t in 0..tokens {
        ids.extend(
            naive_topk(&vals[t * e..(t + 1) * e], k)
                .iter()
                .map(|&x| x as i64),
        );
    }
    ids[0] = (ids[0] + 1) % 8; // the model "chose" differently on token 0
    if ids[0] == ids[1] {
        ids[0] = (ids[0] + 1) % 8;
    }
    let ts = vec![
        (
            "layer.0.logits",
            "F32",
            vec![tokens, e],
            vals.iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            "layer.0.ids",
            "I64",
            vec![tokens, k],
            ids.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    std::fs::write(src.join("step_0.safetensors"), safetensors_bytes(&ts)).unwrap();
    let mut opts = quiet();
    opts.model.top_k = Some(k as u32);
    opts.model.routing = Some(RoutingFn::TopkSoftmax);
    let r = logits::capture(std::slice::from_ref(&src), &d.join("a.parquet"), &opts).unwrap();
    assert_eq!((r.ids_checked, r.ids_mismatched), (20, 1));
    // recorded: the ids as given
    opts.model.routing = Some(RoutingFn::Recorded);
    let r = logits::capture(std::slice::from_ref(&src), &d.join("b.parquet"), &opts).unwrap();
    let mut want = vec![0u64; e];
    for &i in &ids {
        want[i as usize] += 1;
    }
    assert_eq!(r.loads.global(0, 0), want);
    // sigmoid routing without the bias tensor is refused
    opts.model.routing = Some(RoutingFn::SigmoidGroupTopk {
        n_group: 2,
        topk_group: 1,
        routed_scaling_factor: 1.0,
        renormalize: true,
    });
    let err = logits::capture(std::slice::from_ref(&src), &d.join("c.parquet"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step_0.safetensors") && err.contains("bias"),
        "{err}"
    );
}

#[test]
fn deepseek_bias_from_the_dump_drives_selection() {
    let d = tmp("dsv3");
    let src = d.join("dump");
    std::fs::create_dir_all(&src).unwrap();
    let (tokens, e) = (30, 8);
    let mut rng = SplitMix64::new(9);
    let vals = random_logits(&mut rng, tokens * e);
    let bias: Vec<f32> = (0..e).map(|i| if i == 7 { 5.0 } else { 0.0 }).collect();
    let ts = vec![
        (
            "layer.3.logits",
            "F32",
            vec![tokens, e],
            vals.iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (
            "layer.3.bias",
            "F32",
            vec![e],
            bias.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    std::fs::write(src.join("s.safetensors"), safetensors_bytes(&ts)).unwrap();
    let mut opts = quiet();
    opts.model.top_k = Some(2);
    opts.model.routing = Some(RoutingFn::SigmoidGroupTopk {
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 1.0,
        renormalize: true,
    });
    let r = logits::capture(&[src.join("s.safetensors")], &d.join("t.parquet"), &opts).unwrap();
    // the +5 bias puts expert 7 into every token's top-2
    assert_eq!(r.loads.global(0, 0)[7], tokens as u64);
    assert_eq!(r.loads.layer_ids, vec![3]);
}

// ---------------------------------------------------------------- refusals

fn one_logits_file(d: &Path, vals: &[f32], tokens: usize, e: usize) -> PathBuf {
    let p = d.join("step_1.safetensors");
    let ts = vec![(
        "layer.0.logits",
        "F32",
        vec![tokens, e],
        vals.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )];
    std::fs::write(&p, safetensors_bytes(&ts)).unwrap();
    p
}

#[test]
fn nan_logits_fail_by_name_or_are_skipped_and_counted() {
    let d = tmp("nan");
    let src = d.join("in");
    std::fs::create_dir_all(&src).unwrap();
    let mut vals = vec![0.5f32; 6 * 4];
    vals[2 * 4 + 1] = f32::NAN;
    vals[4 * 4] = f32::INFINITY;
    let f = one_logits_file(&src, &vals, 6, 4);
    let outd = d.join("out");
    let o = bin()
        .args([
            "capture",
            f.to_str().unwrap(),
            "--top-k",
            "2",
            "--routing",
            "softmax-topk",
            "--out",
        ])
        .arg(outd.join("t.parquet"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("step_1.safetensors") && err.contains("token 2") && err.contains("NaN"),
        "{err}"
    );
    assert!(
        !outd.exists() || names(&outd).is_empty(),
        "{:?}",
        names(&outd)
    );
    let o = bin()
        .args([
            "capture",
            f.to_str().unwrap(),
            "--top-k",
            "2",
            "--routing",
            "softmax-topk",
            "--nan",
            "skip",
            "--out",
        ])
        .arg(outd.join("t.parquet"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = read_trace(&outd.join("t.parquet"), true).unwrap();
    assert_eq!(back.meta.capture.skipped_tokens, 2);
    assert_eq!(back.tokens.unwrap().len(), 4);
    assert_eq!(back.loads.total(0, 0), 8);
}

#[test]
fn broken_inputs_fail_with_the_file_name_and_leave_no_output() {
    let d = tmp("broken");
    let src = d.join("in");
    std::fs::create_dir_all(&src).unwrap();
    let vals = vec![0.25f32; 8 * 4];
    let good = one_logits_file(&src, &vals, 8, 4);
    let bytes = std::fs::read(&good).unwrap();
    let trunc = src.join("trunc.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() - 7]).unwrap();
    let out = d.join("out");
    let run = |args: &[&str]| {
        let o = bin()
            .args(args)
            .arg("--out")
            .arg(out.join("t.parquet"))
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let small = data("routing_small.pt");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "capture",
                trunc.to_str().unwrap(),
                "--top-k",
                "2",
                "--routing",
                "topk-softmax",
            ],
            "trunc.safetensors",
        ),
        (
            vec![
                "capture",
                good.to_str().unwrap(),
                "--top-k",
                "5",
                "--routing",
                "topk-softmax",
            ],
            "larger than the number of experts",
        ),
        (
            vec![
                "capture",
                good.to_str().unwrap(),
                "--top-k",
                "2",
                "--routing",
                "topk-softmax",
                "--num-experts",
                "8",
            ],
            "--num-experts says 8",
        ),
        (
            vec![
                "capture",
                good.to_str().unwrap(),
                "--top-k",
                "2",
                "--routing",
                "topk-softmax",
                "--tensor-pattern",
                "gate.{layer}",
            ],
            "no tensor matches",
        ),
        (
            vec!["capture", good.to_str().unwrap(), "--top-k", "2"],
            "--routing",
        ),
        (
            vec!["capture", small.to_str().unwrap(), "--num-experts", "8"],
            "out of range",
        ),
    ];
    for (args, want) in cases {
        let (ok, err) = run(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
        assert!(
            !out.exists() || names(&out).is_empty(),
            "{args:?} left {:?}",
            names(&out)
        );
    }
    // a shape mismatch between files
    let other = src.join("step_2.safetensors");
    let ts = vec![("layer.0.logits", "F32", vec![2, 6], vec![0u8; 48])];
    std::fs::write(&other, safetensors_bytes(&ts)).unwrap();
    std::fs::remove_file(&trunc).unwrap();
    let (ok, err) = run(&[
        "capture",
        src.to_str().unwrap(),
        "--top-k",
        "2",
        "--routing",
        "topk-softmax",
    ]);
    assert!(
        !ok && err.contains("step_2.safetensors") && err.contains("6 experts"),
        "{err}"
    );
    assert!(!out.exists() || names(&out).is_empty(), "{:?}", names(&out));
}

// ---------------------------------------------------------------- detection

#[test]
fn auto_format_detection_by_extension_and_content() {
    let d = tmp("detect");
    // .pt: routing dict vs SGLang dump
    let run = |input: &Path, extra: &[&str], out: &str| {
        let o = bin()
            .arg("capture")
            .arg(input)
            .args(extra)
            .arg("--out")
            .arg(d.join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_trace(&d.join(out), false)
            .unwrap()
            .meta
            .capture
            .source_format
    };
    assert_eq!(
        run(&data("routing_small.pt"), &[], "a.parquet"),
        "pt-routing"
    );
    assert_eq!(
        run(&data("sglang_stat.pt"), &["--top-k", "2"], "b.parquet"),
        "sglang-expert-distribution"
    );
    // .npy: integer ids -> vLLM routed experts; floats -> logits
    let ids: Vec<u8> = [1i16, 2, 0, 3]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(d.join("r.npy"), npy("<i2", &[2, 1, 2], &ids)).unwrap();
    assert_eq!(run(&d.join("r.npy"), &[], "c.parquet"), "vllm-routed");
    let lg: Vec<u8> = (0..2 * 3 * 4)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    std::fs::write(d.join("l.npy"), npy("<f4", &[2, 3, 4], &lg)).unwrap();
    assert_eq!(
        run(
            &d.join("l.npy"),
            &["--top-k", "2", "--routing", "topk-softmax"],
            "e.parquet"
        ),
        "logits-npy"
    );
    // token CSV (no count column) vs load CSV
    std::fs::write(d.join("t.csv"), "layer,expert\n0,1 2\n").unwrap();
    assert_eq!(run(&d.join("t.csv"), &[], "f.parquet"), "csv");
    // Megatron JSONL by its field names
    std::fs::write(
        d.join("m.jsonl"),
        "{\"step\": 0, \"layer\": 0, \"rank\": 0, \"num_tokens\": 1, \"topk\": 1, \"top_indices\": [[2]]}\n",
    )
    .unwrap();
    assert_eq!(run(&d.join("m.jsonl"), &[], "g.parquet"), "megatron-jsonl");
    // a missing input says so
    let o = bin()
        .args(["capture", "/nonexistent/x.pt", "--out"])
        .arg(d.join("h.parquet"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such file"));
}
