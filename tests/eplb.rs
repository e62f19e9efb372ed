//! EPLB placement (`plan::eplb`): EPLB's own README example, the libstdc++
//! sort replay against the real `std::sort`, an independent numpy
//! transcription on thousands of random cases, the PyTorch fixture made by
//! `scripts/eplb_fixture.py` with the real `eplb.py`, bad input, and the
//! `plan --policy eplb` command.

use llep_trace::plan::eplb::{
    gpu_loads, rebalance, std_sort_desc, torch_sum, CpuCapability, EplbError, EplbParams,
    EplbPlacement, EplbPolicy, SortTies,
};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn params(gpus: usize, redundant: usize, nodes: usize, groups: usize) -> EplbParams {
    EplbParams {
        nodes,
        groups,
        ..EplbParams::new(gpus, redundant)
    }
}

fn usizes(v: &Value) -> Vec<usize> {
    serde_json::from_value(v.clone()).unwrap()
}

fn rows(v: &Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Each expert's physical slots as a set (replica ranks ignored).
fn slot_sets(log2phy: &[Vec<i64>]) -> Vec<Vec<i64>> {
    log2phy
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.sort();
            r
        })
        .collect()
}

#[test]
fn eplb_readme_example() {
    // The example in EPLB's README: 2 layers, 12 experts, 16 replicas,
    // 4 groups, 2 nodes, 8 GPUs, and the phy2log it prints.
    let layers: [([f64; 12], [usize; 16]); 2] = [
        (
            [
                90., 132., 40., 61., 104., 165., 39., 4., 73., 56., 183., 86.,
            ],
            [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
        ),
        (
            [
                20., 107., 104., 64., 19., 197., 187., 157., 172., 86., 16., 27.,
            ],
            [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
        ),
    ];
    for (w, want) in layers {
        let p = rebalance(&w, &params(8, 4, 2, 4)).unwrap();
        assert_eq!(p.policy, EplbPolicy::Hierarchical);
        assert_eq!(p.phy2log, want);
        check_consistent(&w, &p, 8);
    }
}

/// phy2log, log2phy and logcnt describe one placement; loads add up.
fn check_consistent(w: &[f64], p: &EplbPlacement, gpus: usize) {
    let mut cnt = vec![0; w.len()];
    for &e in &p.phy2log {
        cnt[e] += 1;
    }
    assert_eq!(cnt, p.logcnt);
    for (e, slots) in p.log2phy.iter().enumerate() {
        for (r, &s) in slots.iter().enumerate() {
            if r < p.logcnt[e] {
                assert_eq!(p.phy2log[s as usize], e);
            } else {
                assert_eq!(s, -1);
            }
        }
    }
    assert_eq!(p.gpu_loads.len(), gpus);
    let total: f64 = w.iter().sum();
    let placed: f64 = p.gpu_loads.iter().map(|&x| x as f64).sum();
    assert!(
        (placed - total).abs() <= 1e-4 * total.max(1.0),
        "{placed} vs {total}"
    );
}

#[test]
fn global_policy_when_groups_do_not_split_over_nodes() {
    let w: Vec<f64> = (0..12).map(|i| (i * 7 % 5 + 1) as f64 * 10.5).collect();
    let p = rebalance(&w, &params(4, 4, 2, 3)).unwrap();
    assert_eq!(p.policy, EplbPolicy::Global);
    // The same as one group on one node.
    assert_eq!(p, rebalance(&w, &params(4, 4, 1, 1)).unwrap());
    check_consistent(&w, &p, 4);
}

#[test]
fn the_heaviest_expert_gets_the_replicas() {
    let w = [1000.0, 1.0, 2.0, 3.0];
    let p = rebalance(&w, &params(4, 4, 1, 1)).unwrap();
    assert_eq!(p.logcnt, vec![5, 1, 1, 1]);
    // 4 GPUs x 2 slots: five replicas of 200 go round the GPUs, the fifth
    // to GPU 0 (the first of the equally loaded), which is then full; the
    // small experts fill the others.
    assert_eq!(p.phy2log, vec![0, 0, 0, 3, 0, 2, 0, 1]);
    assert_eq!(p.gpu_loads, vec![400.0, 203.0, 202.0, 201.0]);
    check_consistent(&w, &p, 4);
}

#[test]
fn bad_shapes_are_refused() {
    let w = [1.0; 12];
    assert_eq!(
        rebalance(&w, &params(4, 3, 1, 1)),
        Err(EplbError::ReplicasNotMultipleOfGpus {
            experts: 12,
            redundant: 3,
            physical: 15,
            gpus: 4,
            suggest: 4
        })
    );
    assert!(matches!(
        rebalance(&w, &params(4, 0, 1, 5)),
        Err(EplbError::GroupsNotDividingExperts { .. })
    ));
    // Refused even where EPLB's global fallback would not look at it.
    assert!(matches!(
        rebalance(&w, &params(4, 0, 3, 1)),
        Err(EplbError::NodesNotDividingGpus { .. })
    ));
    assert_eq!(
        rebalance(&[], &params(1, 0, 1, 1)),
        Err(EplbError::NoExperts)
    );
    assert!(matches!(
        rebalance(&[1.0, f64::NAN], &params(2, 0, 1, 1)),
        Err(EplbError::BadLoad { expert: 1, .. })
    ));
    assert!(matches!(
        rebalance(&[1.0, -1.0], &params(2, 0, 1, 1)),
        Err(EplbError::BadLoad { expert: 1, .. })
    ));
    assert_eq!(rebalance(&w, &params(0, 0, 1, 1)), Err(EplbError::NoGpus));
    assert_eq!(
        rebalance(&w, &params(4, 1 << 20, 1, 1)),
        Err(EplbError::TooManyRedundant(1 << 20))
    );
}

#[test]
fn sort_replays_libstdcxx_std_sort() {
    // tests/data/std_sort_cases.json: orders the real std::sort produced
    // (tests/support/std_sort_cases.cpp), ties included.
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("tests/data/std_sort_cases.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut with_ties_beyond_16 = 0;
    for (i, c) in cases.iter().enumerate() {
        let values: Vec<f32> = serde_json::from_value(c["values"].clone()).unwrap();
        let want = usizes(&c["order"]);
        assert_eq!(std_sort_desc(&values), want, "case {i}");
        let mut stable: Vec<usize> = (0..values.len()).collect();
        stable.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        with_ties_beyond_16 += (stable != want) as usize;
    }
    assert!(cases.len() >= 500);
    // The cases do exercise ties that a stable sort would order otherwise.
    assert!(with_ties_beyond_16 > 100, "{with_ties_beyond_16}");
}

/// Compare one placement with an expected one; returns whether it matched
/// element for element. What must match depends on the ties the sorts met.
fn compare(
    ctx: &str,
    got: &EplbPlacement,
    want: &Value,
    w: &[f32],
    (gpus, nodes): (usize, usize),
) -> bool {
    let want_p2l = usizes(&want["phy2log"]);
    // The fixture writes rows without eplb.py's -1 padding.
    let mut want_l2p = rows(&want["log2phy"]);
    let width = want_l2p.iter().map(Vec::len).max().unwrap_or(0);
    for r in &mut want_l2p {
        r.resize(width, -1);
    }
    let want_cnt = usizes(&want["logcnt"]);
    let exact = got.phy2log == want_p2l && got.log2phy == want_l2p && got.logcnt == want_cnt;
    let theirs = gpu_loads(w, &want_p2l, &want_cnt, gpus);
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
    match got.sort_ties {
        SortTies::None => assert!(exact, "{ctx}"),
        SortTies::Replicas | SortTies::Loads => {
            // Equal loads only among replicas (Loads: of different experts):
            // any order of them keeps the counts and every GPU's load, and,
            // for one expert's replicas, which expert sits in which slot.
            assert_eq!(got.logcnt, want_cnt, "{ctx}");
            assert!(
                got.gpu_loads
                    .iter()
                    .zip(&theirs)
                    .all(|(&a, &b)| close(a, b)),
                "{ctx}: GPU loads {:?} vs {theirs:?}",
                got.gpu_loads
            );
            if got.sort_ties == SortTies::Replicas {
                assert_eq!(got.phy2log, want_p2l, "{ctx}");
                assert_eq!(slot_sets(&got.log2phy), slot_sets(&want_l2p), "{ctx}");
            }
        }
        SortTies::Groups => {
            // Groups of equal load may swap nodes: only each node's total
            // is fixed whatever the sort does with them.
            let per_node = gpus / nodes;
            let node_sums = |v: &[f32]| -> Vec<f64> {
                v.chunks(per_node)
                    .map(|c| c.iter().map(|&x| x as f64).sum())
                    .collect()
            };
            for (a, b) in node_sums(&got.gpu_loads).iter().zip(node_sums(&theirs)) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.max(b).max(1.0),
                    "{ctx}: node load {a} vs {b}"
                );
            }
        }
    }
    exact
}

fn case_params(v: &Value, cpu: CpuCapability) -> EplbParams {
    let n = |k: &str| v[k].as_u64().unwrap() as usize;
    EplbParams {
        cpu,
        ..params(n("gpus"), n("redundant"), n("nodes"), n("groups"))
    }
}

#[test]
fn agrees_with_an_independent_numpy_transcription() {
    let script = Path::new(ROOT).join("tests/support/eplb_numpy.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["20260129", "3000"])
        .output()
        .expect("python3 with numpy is needed for the EPLB cross-check (CI installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by_class = [0usize; 4];
    for (i, line) in String::from_utf8(out.stdout).unwrap().lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        let w: Vec<f64> = serde_json::from_value(v["weights"].clone()).unwrap();
        let prm = case_params(&v, CpuCapability::Avx2);
        let p = rebalance(&w, &prm).unwrap();
        check_consistent(&w, &p, prm.gpus);
        by_class[p.sort_ties as usize] += 1;
        // numpy's sort is stable, PyTorch's is not: on ties, `compare`
        // checks only what any order of the equal loads keeps.
        let w32: Vec<f32> = w.iter().map(|&x| x as f32).collect();
        compare(
            &format!("case {i}: {line}"),
            &p,
            &v,
            &w32,
            (prm.gpus, prm.nodes),
        );
    }
    let n: usize = by_class.iter().sum();
    assert!(n == 3000, "{n} cases");
    // Every kind of tie is exercised.
    assert!(by_class.iter().all(|&n| n > 100), "{by_class:?}");
}

#[test]
fn agrees_with_pytorch_eplb_fixture() {
    let path = Path::new(ROOT).join("tests/data/eplb_fixture.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        // Made on a machine with PyTorch: scripts/eplb_fixture.py.
        eprintln!(
            "NOT CHECKED: {} does not exist yet; make it with \
             `python3 scripts/eplb_fixture.py --eplb PATH/TO/eplb.py --out {}`",
            path.display(),
            path.display()
        );
        return;
    };
    let fx: Value = serde_json::from_str(&text).unwrap();
    let cap = fx["cpu_capability"].as_str().unwrap_or("missing");
    let cpu = CpuCapability::from_torch(cap).unwrap_or_else(|| {
        panic!("fixture cpu_capability {cap:?}: only DEFAULT, AVX2 and AVX512 are known")
    });
    // PyTorch's own float32 sums: the group loads' order of additions.
    // Rows shorter than one register take the scalar path, longer ones the
    // vectorized one; from 16 steps of 4 registers (512 values) the
    // cascade flushes its levels.
    let sums = fx["sums"].as_array().unwrap();
    let (mut scalar, mut cascade) = (0, 0);
    for (i, r) in sums.iter().enumerate() {
        let values: Vec<f32> = serde_json::from_value(r["values"].clone()).unwrap();
        let want = r["sum"].as_f64().unwrap() as f32;
        assert_eq!(
            torch_sum(&values, cpu.sum_lanes()),
            want,
            "sum row {i} ({} values)",
            values.len()
        );
        scalar += (values.len() < cpu.sum_lanes()) as usize;
        cascade += (values.len() >= 4 * 16 * cpu.sum_lanes()) as usize;
    }
    assert!(sums.len() >= 50 && scalar > 0 && cascade > 0);
    eprintln!(
        "PyTorch {} ({cap}): {} sums equal bit for bit ({scalar} scalar, \
         {cascade} through the cascade), {} lanes",
        fx["torch_version"],
        sums.len(),
        cpu.sum_lanes()
    );
    // The rows tell the kernels apart: 16 lanes (the AVX512 register width,
    // which ATen's sum kernel does not use) sums some of them otherwise.
    let wide = sums
        .iter()
        .filter(|r| {
            let values: Vec<f32> = serde_json::from_value(r["values"].clone()).unwrap();
            torch_sum(&values, 16) != r["sum"].as_f64().unwrap() as f32
        })
        .count();
    assert!(wide > 0, "no row tells 8 lanes from 16");
    // How this PyTorch orders equal values. Every order must be a
    // descending sort; where all of them are libstdc++'s std::sort, which
    // the port replays, every case must match element for element, ties
    // included; otherwise (a build sorting with another algorithm) tie cases
    // are checked for what any order of the equal loads keeps.
    let sorts = fx["sorts"].as_array().unwrap();
    let (mut tie_rows, mut replayed) = (0, 0);
    for (i, r) in sorts.iter().enumerate() {
        let values: Vec<f32> = serde_json::from_value(r["values"].clone()).unwrap();
        let order = usizes(&r["order"]);
        let mut seen = order.clone();
        seen.sort();
        assert_eq!(
            seen,
            (0..values.len()).collect::<Vec<_>>(),
            "sort row {i}: not a permutation"
        );
        assert!(
            order.windows(2).all(|p| values[p[0]] >= values[p[1]]),
            "sort row {i}: not descending"
        );
        let ours = std_sort_desc(&values);
        let mut distinct = values.clone();
        distinct.sort_by(f32::total_cmp);
        distinct.dedup();
        if distinct.len() < values.len() {
            tie_rows += 1;
            replayed += (ours == order) as usize;
        } else {
            assert_eq!(ours, order, "sort row {i}: no ties, yet another order");
        }
    }
    assert!(
        sorts.len() >= 100 && tie_rows >= 50,
        "{tie_rows} rows with ties"
    );
    let sort_replayed = replayed == tie_rows;
    eprintln!(
        "PyTorch {} sort: {} of {tie_rows} rows with ties ordered as libstdc++'s std::sort: {}",
        fx["torch_version"],
        replayed,
        if sort_replayed {
            "tie order REPLAYED, every case must match element for element"
        } else {
            "tie order NOT replayed (another sort, e.g. x86-simd-sort), tie cases are checked \
             only for what the order of equal loads cannot change; tie-free cases element for element"
        }
    );
    let cases = fx["cases"].as_array().unwrap();
    let mut total = [0usize; 4];
    let mut exact = [0usize; 4];
    for (i, v) in cases.iter().enumerate() {
        let w: Vec<f64> = serde_json::from_value(v["weights"].clone()).unwrap();
        let prm = case_params(v, cpu);
        let p = rebalance(&w, &prm).unwrap();
        let w32: Vec<f32> = w.iter().map(|&x| x as f32).collect();
        let k = p.sort_ties as usize;
        total[k] += 1;
        let ctx = format!("fixture case {i}: {v}");
        let same = compare(&ctx, &p, v, &w32, (prm.gpus, prm.nodes));
        assert!(
            same || !sort_replayed,
            "{ctx}: differs though the sort is replayed"
        );
        exact[k] += same as usize;
    }
    eprintln!(
        "PyTorch fixture: {} cases; element for element: no ties {}/{}, \
         replica ties {}/{}, replica load ties {}/{}, group load ties {}/{}",
        cases.len(),
        exact[0],
        total[0],
        exact[1],
        total[1],
        exact[2],
        total[2],
        exact[3],
        total[3]
    );
    assert!(cases.len() >= 1000, "only {} cases", cases.len());
    assert!(total[0] > 100, "too few tie-free cases: {total:?}");
}

// ---- the command -------------------------------------------------------

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .env_remove("MOE_ADAPTIVE_LPT_ROUTING_RATIO")
        .env_remove("EP_MAX_TOKENS_FACTOR")
        .env_remove("EP_MIN_TOKENS_PER_GEMM")
        .output()
        .expect("binary runs")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(o.stdout.is_empty(), "{args:?} wrote to stdout");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn plan_eplb_json_has_eplbs_outputs() {
    let out = ok(&[
        "plan",
        "--policy",
        "eplb",
        "--counts",
        "90,132,40,61,104,165,39,4,73,56,183,86",
        "--gpus",
        "8",
        "--redundant",
        "4",
        "--nodes",
        "2",
        "--groups",
        "4",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        usizes(&v["phy2log"]),
        vec![5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1]
    );
    assert_eq!(
        usizes(&v["logcnt"]),
        vec![1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1]
    );
    assert_eq!(rows(&v["log2phy"])[1], vec![15, 13]);
    assert_eq!(v["gpu_loads"].as_array().unwrap().len(), 8);
    assert_eq!(v["mode"], "hierarchical");
    // Fractional loads are accepted (EPLB is fed window averages).
    let t = ok(&[
        "plan",
        "--policy",
        "eplb",
        "--counts",
        "1.5,0.25,3,2",
        "--gpus",
        "2",
        "--redundant",
        "2",
    ]);
    assert!(
        t.contains("policy eplb (global)") && t.contains("replicated experts: 2 x2, 3 x2"),
        "{t}"
    );
}

#[test]
fn plan_bad_eplb_flags_fail_with_one_line() {
    let c = [
        "plan",
        "--policy",
        "eplb",
        "--counts",
        "1,2,3,4,5,6,7,8,9,10,11,12",
        "--gpus",
        "4",
    ];
    let with = |extra: &[&str]| {
        let mut v = c.to_vec();
        v.extend_from_slice(extra);
        fails(&v)
    };
    let e = with(&["--redundant", "3"]);
    assert!(
        e.contains("multiple of the GPUs") && e.lines().count() == 1,
        "{e}"
    );
    let e = with(&["--groups", "5"]);
    assert!(
        e.contains("number of groups must divide the number of experts") && e.lines().count() == 1,
        "{e}"
    );
    let e = with(&["--nodes", "3"]);
    assert!(
        e.contains("number of nodes must divide the number of GPUs") && e.lines().count() == 1,
        "{e}"
    );
    assert!(with(&["--redundant", "-2"]).contains("must be a non-negative integer"));
    assert!(with(&["--nodes", "0"]).contains("must be a positive integer"));
    assert!(with(&["--ratio", "1.2"]).contains("do not apply to --policy eplb"));
    assert!(
        fails(&["plan", "--counts", "1,2", "--gpus", "2", "--redundant", "2"])
            .contains("--policy eplb only")
    );
    assert!(
        fails(&["plan", "--policy", "eplb", "--counts", "1,-2", "--gpus", "2"])
            .contains("negative")
    );
    assert!(
        fails(&["plan", "--policy", "eplb", "--counts", "1,x", "--gpus", "2"])
            .contains("not a finite number")
    );
}

#[test]
fn plan_gpus_must_be_positive() {
    for g in ["-1", "0", "x"] {
        let e = fails(&["plan", "--counts", "1,2", "--gpus", g]);
        assert!(
            e.contains("--gpus") && e.contains("must be a positive integer"),
            "{e}"
        );
    }
}

#[test]
fn plan_empty_layer_says_so() {
    let out = ok(&["plan", "--counts", "0,0,0,0", "--gpus", "2"]);
    assert!(out.contains("no token-copies: nothing to plan"), "{out}");
    assert!(!out.contains("capacity"), "{out}");
}

#[test]
fn plan_takes_a_list_or_range_of_ratios() {
    let base = [
        "plan",
        "--counts",
        "5,3,2,2",
        "--gpus",
        "2",
        "--min-gemm",
        "1",
    ];
    let with = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        ok(&v)
    };
    let t = with(&["--ratio", "1.1,1.5"]);
    assert_eq!(t.matches("policy llep").count(), 2, "{t}");
    assert!(
        t.contains("LLEP plans this layer") && t.contains("plain EP (below the gate)"),
        "{t}"
    );
    let j: Value = serde_json::from_str(&with(&["--ratio", "1.1:1.5:0.2", "--json"])).unwrap();
    let lams: Vec<f64> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["lambda"].as_f64().unwrap())
        .collect();
    assert_eq!(lams.len(), 3);
    assert!((lams[2] - 1.5).abs() < 1e-9, "{lams:?}");
    // One ratio keeps the single-object output.
    let one: Value = serde_json::from_str(&with(&["--ratio", "1.1", "--json"])).unwrap();
    assert!(one.is_object());
}
