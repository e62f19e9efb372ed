//! `simulate` and `tune` with the EPLB policies (`sim::eplb`), end to end
//! on the bundled traces, and every bad EPLB setting refused in one line.

use llep_trace::plan::Policy;
use llep_trace::results::read_results;
use serde_json::Value;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(ROOT);
    for v in [
        "MOE_ADAPTIVE_LPT_ROUTING_RATIO",
        "EP_MAX_TOKENS_FACTOR",
        "EP_MIN_TOKENS_PER_GEMM",
    ] {
        c.env_remove(v);
    }
    c.output().expect("binary runs")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Run, expect failure, return the one error line.
fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {err}");
    errors[0].to_string()
}

fn summary(json: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(json).unwrap();
    v["summary"].as_array().unwrap().clone()
}

fn find<'a>(s: &'a [Value], policy: &str) -> &'a Value {
    s.iter()
        .find(|x| x["policy"] == policy)
        .unwrap_or_else(|| panic!("no {policy} row in {s:?}"))
}

#[test]
fn simulate_runs_eplb_on_both_bundled_traces() {
    for (trace, r) in [
        ("traces/mixtral-8x7b.parquet", "8"),
        ("traces/olmoe-1b-7b.parquet", "16"),
    ] {
        let base = [
            "simulate",
            "--trace",
            trace,
            "--policy",
            "ep,llep,eplb,eplb+llep",
            "--redundant",
            r,
            "--ratio",
            "1.3",
            "--json",
            "-q",
        ];
        let oracle = summary(&ok(&[&base[..], &["--eplb-oracle"]].concat()));
        let (ep, eplb) = (find(&oracle, "ep"), find(&oracle, "eplb"));
        let both = find(&oracle, "eplb+llep");
        assert_eq!(ep["layer_steps"], eplb["layer_steps"]);
        // the same step's placement balances the physical experts better
        // than the native placement; LLEP on top never plans a worse max
        let after = |x: &Value| x["mean_ratio_after"].as_f64().unwrap();
        assert!(after(eplb) < after(ep), "{trace}: {eplb} vs {ep}");
        assert!(after(both) <= after(eplb) + 1e-9, "{trace}");
        // the oracle moves no weights
        assert_eq!(eplb["transfers"], 0, "{trace}");
        // windowed: placement from the previous step, moves charged
        let online = summary(&ok(&[
            &base[..],
            &[
                "--eplb-window",
                "1",
                "--eplb-period",
                "1",
                "--replica-split",
                "vllm",
            ],
        ]
        .concat()));
        assert!(find(&online, "eplb")["total_ms"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn eplb_rows_say_their_setting_and_count_moves() {
    let dir = std::env::temp_dir().join(format!("llep-eplb-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("rows.parquet");
    ok(&[
        "simulate",
        "--trace",
        "traces/olmoe-1b-7b.parquet",
        "--policy",
        "ep,eplb",
        "--redundant",
        "8",
        "--eplb-window",
        "2",
        "--eplb-period",
        "2",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    let (_, rows) = read_results(&out).unwrap();
    let eplb: Vec<_> = rows.iter().filter(|r| r.policy == Policy::Eplb).collect();
    assert_eq!(eplb.len(), 18);
    assert!(eplb
        .iter()
        .all(|r| r.input_note.contains("eplb R=8") && r.input_note.contains("previous 2 steps")));
    // rebalances at steps 2 and 4 only (6 steps): moves nowhere else
    let steps: Vec<u32> = {
        let mut s: Vec<u32> = eplb.iter().map(|r| r.step).collect();
        s.sort();
        s.dedup();
        s
    };
    for r in &eplb {
        let k = steps.iter().position(|&s| s == r.step).unwrap();
        if k == 0 || k % 2 == 1 {
            assert_eq!(r.transfers, 0, "step index {k} moved weights");
        }
    }
    assert!(
        eplb.iter().any(|r| r.transfers > 0),
        "no rebalance moved anything"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_eplb_settings_fail_with_one_clear_line() {
    let sim = |extra: &[&str]| {
        let mut a = vec![
            "simulate",
            "--trace",
            "traces/olmoe-1b-7b.parquet",
            "--policy",
            "ep,eplb",
        ];
        a.extend_from_slice(extra);
        fails(&a)
    };
    let e = sim(&["--redundant", "5"]);
    assert!(
        e.contains("--redundant 5") && e.contains("multiple of the GPUs"),
        "{e}"
    );
    let e = sim(&["--redundant", "8", "--eplb-groups", "3"]);
    assert!(
        e.contains("--eplb-groups 3: ") && e.contains("groups must divide the number of experts"),
        "{e}"
    );
    assert_eq!(e.matches("cannot be split").count(), 1, "said twice: {e}");
    let e = sim(&["--redundant", "8", "--eplb-nodes", "3"]);
    assert!(
        e.contains("--eplb-nodes 3: ") && e.contains("nodes must divide the number of GPUs"),
        "{e}"
    );
    let e = sim(&["--redundant", "8", "--eplb-window", "0"]);
    assert!(e.contains("--eplb-window"), "{e}");
    let e = sim(&[]);
    assert!(e.contains("needs --redundant"), "{e}");
    let e = fails(&[
        "simulate",
        "--trace",
        "traces/olmoe-1b-7b.parquet",
        "--redundant",
        "8",
    ]);
    assert!(e.contains("apply to --policy eplb"), "{e}");
    let e = sim(&["--redundant", "8", "--pass", "train"]);
    assert!(
        e.contains("--pass train") && e.contains("forward only"),
        "{e}"
    );
    let e = sim(&["--redundant", "8", "--replica-split", "random"]);
    assert!(e.contains("replica"), "{e}");
}

#[test]
fn eplb_policies_are_refused_where_they_are_not_simulated() {
    // replay measures them (tests/gpu_replay.rs), given their replicas
    let e = fails(&["replay", "--synthetic", "95:1", "--policy", "ep,eplb"]);
    assert!(e.contains("needs --redundant"), "{e}");
    let o = run(&[
        "plan",
        "--policy",
        "eplb+llep",
        "--counts",
        "1,2,3,4",
        "--gpus",
        "2",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("eplb+llep is simulated only"), "{err}");
}

#[test]
fn tune_compares_eplb_and_recommends() {
    let out = ok(&[
        "tune",
        "--trace",
        "traces/olmoe-1b-7b.parquet",
        "--ratio",
        "1.1,1.3,1.5",
        "--eplb-oracle",
        "-q",
    ]);
    // the existing recommendation stays
    assert!(
        out.contains("export MOE_ADAPTIVE_LPT_ROUTING_RATIO="),
        "{out}"
    );
    let sec = &out[out
        .find("EP, LLEP and EPLB compared")
        .expect("eplb section")..];
    for label in [
        "ep",
        "llep λ=",
        "llep-auto",
        "eplb R=8",
        "eplb R=16",
        "eplb+llep R=8",
    ] {
        assert!(sec.contains(label), "{label} missing:\n{sec}");
    }
    assert_eq!(sec.matches("<- run this").count(), 1, "{sec}");
    assert!(sec.contains("Recommendation: run"), "{sec}");
    assert!(sec.contains("Why: "), "{sec}");
    assert!(sec.contains("Caution: with --eplb-oracle"), "{sec}");
    let json: Value = serde_json::from_str(&ok(&[
        "tune",
        "--trace",
        "traces/mixtral-8x7b.parquet",
        "--ratio",
        "1.3",
        "--json",
        "-q",
    ]))
    .unwrap();
    let entries = json["eplb"]["entries"].as_array().unwrap();
    // 8 experts on 8 GPUs: E/8 and E/4 both round up to R = 8
    assert!(entries.iter().any(|e| e["label"] == "eplb R=8"));
    assert!(!entries.iter().any(|e| e["label"] == "eplb R=2"));
    let total = |label: &str| {
        entries.iter().find(|e| e["label"] == label).unwrap()["total_ms"]
            .as_f64()
            .unwrap()
    };
    let fastest = entries
        .iter()
        .min_by(|a, b| {
            a["total_ms"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["total_ms"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(fastest["label"], json["eplb"]["fastest"]);
    // the recommendation is within the model's error of the fastest
    let best = json["eplb"]["recommended"].as_str().unwrap();
    let margin = json["eplb"]["margin"].as_f64().unwrap();
    assert!(margin > 0.0 && margin < 0.5);
    assert!(total(best) <= fastest["total_ms"].as_f64().unwrap() * (1.0 + margin) + 1e-9);
}
