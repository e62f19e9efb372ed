//! The command line, end to end: real runs of the binary on the bundled
//! traces, environment defaults, and every bad input refused cleanly.

use llep_trace::plan::Policy;
use llep_trace::results::read_results;
use llep_trace::results::Source;
use llep_trace::trace::read_trace;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(ROOT);
    for v in [
        "MOE_ADAPTIVE_LPT_ROUTING_RATIO",
        "EP_MAX_TOKENS_FACTOR",
        "EP_MIN_TOKENS_PER_GEMM",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("binary runs")
}

fn ok(args: &[&str]) -> String {
    let o = run(args, &[]);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Run, expect failure, return stderr.
fn fails(args: &[&str]) -> String {
    let o = run(args, &[]);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {err}");
    errors[0].to_string()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dir_is_empty_but(d: &Path, keep: &[&str]) -> bool {
    std::fs::read_dir(d)
        .unwrap()
        .all(|e| keep.contains(&e.unwrap().file_name().to_str().unwrap()))
}

#[test]
fn simulate_on_the_bundled_trace_compares_ep_and_llep() {
    let out = ok(&["simulate", "--ratio", "1.3"]);
    assert!(
        out.contains("olmoe-1b-7b.parquet (OLMoE-1B-7B), 18 layer-steps on 8 GPUs"),
        "{out}"
    );
    for row in ["ep ", "llep λ=1.3", "ideal"] {
        assert!(
            out.lines().any(|l| l.starts_with(row)),
            "missing {row}: {out}"
        );
    }
    assert!(out.contains("profile: h200"), "{out}");
}

#[test]
fn simulate_writes_one_row_per_setting_and_json() {
    let d = tmpdir("sim");
    let out = d.join("r.parquet");
    ok(&[
        "simulate",
        "--ratio",
        "1.0:1.5:0.1",
        "--alpha",
        "1.0,1.2",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let (meta, rows) = read_results(&out).unwrap();
    // 18 layer-steps x 2 alphas x (ep + ideal + 6 ratios)
    assert_eq!(rows.len(), 18 * 2 * 8);
    assert!(meta.profile.is_some());
    assert!(rows
        .iter()
        .all(|r| r.source == Source::Simulated && r.gpus == 8 && r.profile == "h200"));
    // llep rows below their gate equal the ep row of the same layer-step
    let twin = rows
        .iter()
        .find(|r| r.policy == Policy::Llep && !r.use_llep)
        .expect("some llep row gated off");
    let ep = rows
        .iter()
        .find(|r| {
            r.policy == Policy::Ep
                && r.step == twin.step
                && r.layer == twin.layer
                && r.alpha == twin.alpha
        })
        .unwrap();
    assert_eq!(twin.t_total_ms, ep.t_total_ms);
    let json = ok(&["simulate", "--ratio", "1.3", "--json", "--quiet"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["summary"].as_array().unwrap().len(), 3);
    assert_eq!(v["profile"], "h200");
}

#[test]
fn plan_json_has_the_documented_keys() {
    let json = ok(&[
        "plan",
        "--counts",
        "5000,120,30,900,2000,10,10,4000",
        "--gpus",
        "4",
        "--min-gemm",
        "100",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["use_llep"], true);
    assert_eq!(v["capacity"], 3017);
    assert_eq!(
        v["plan"]["0"],
        serde_json::json!([[0, 0, 2897], [1, 2897, 4984], [2, 4984, 5000]])
    );
    assert_eq!(v["transfers"][0], serde_json::json!([0, 0, 1, 2897, 4984]));
    assert_eq!(v["gpu_loads"], serde_json::json!([3019, 3017, 3017, 3017]));
    assert!(v["imbalance_ratio"].as_f64().unwrap() > 1.69);
    let table = ok(&[
        "plan",
        "--counts",
        "5000,120,30,900,2000,10,10,4000",
        "--gpus",
        "4",
        "--min-gemm",
        "100",
    ]);
    assert!(
        table.contains("LLEP plans this layer") && table.contains("6 weight transfers"),
        "{table}"
    );
}

#[test]
fn environment_variables_are_the_defaults() {
    let counts = ["plan", "--counts", "5,3,2,2", "--gpus", "2", "--json"];
    let get = |env: &[(&str, &str)]| -> serde_json::Value {
        let o = run(&counts, env);
        assert!(o.status.success());
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // unset: always plan (the reference's behaviour)
    assert_eq!(get(&[])["use_llep"], true);
    assert_eq!(
        get(&[("MOE_ADAPTIVE_LPT_ROUTING_RATIO", "1.4")])["use_llep"],
        false
    );
    assert_eq!(
        get(&[("MOE_ADAPTIVE_LPT_ROUTING_RATIO", "1.3")])["use_llep"],
        true
    );
    assert_eq!(
        get(&[("MOE_ADAPTIVE_LPT_ROUTING_RATIO", "garbage")])["lambda"],
        serde_json::Value::Null
    );
    assert_eq!(
        get(&[("MOE_ADAPTIVE_LPT_ROUTING_RATIO", "-1")])["use_llep"],
        true
    );
    let v = get(&[
        ("EP_MAX_TOKENS_FACTOR", "1.5"),
        ("EP_MIN_TOKENS_PER_GEMM", "7"),
    ]);
    assert_eq!(
        (v["alpha"].as_f64(), v["min_gemm"].as_u64()),
        (Some(1.5), Some(7))
    );
    // the command line wins over the environment
    let o = run(
        &[
            "plan", "--counts", "5,3,2,2", "--gpus", "2", "--json", "--ratio", "1.3",
        ],
        &[("MOE_ADAPTIVE_LPT_ROUTING_RATIO", "9")],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["use_llep"], true);
    let help = ok(&["simulate", "--help"]);
    for var in [
        "MOE_ADAPTIVE_LPT_ROUTING_RATIO",
        "EP_MAX_TOKENS_FACTOR",
        "EP_MIN_TOKENS_PER_GEMM",
    ] {
        assert!(help.contains(var), "--help must name {var}");
    }
}

#[test]
fn bad_planner_input_is_refused() {
    assert!(fails(&["plan", "--counts", "1,2,3", "--gpus", "2"])
        .contains("multiple of the number of GPUs"));
    assert!(fails(&["simulate", "--gpus", "3"]).contains("multiple of the number of GPUs"));
    assert!(fails(&["plan", "--counts", "5,-1", "--gpus", "2"]).contains("negative"));
    assert!(
        fails(&["plan", "--counts", "5,1.5", "--gpus", "2"]).contains("not a non-negative integer")
    );
    assert!(fails(&["plan", "--counts", "", "--gpus", "2"]).contains("no counts"));
    assert!(fails(&["simulate", "--profile", "tpu9"]).contains("unknown profile 'tpu9'"));
    assert!(fails(&["simulate", "--ratio", "nan"]).contains("--ratio"));
    assert!(fails(&["simulate", "--ratio", "0:2:0.1"]).contains("0 < start"));
    assert!(fails(&["simulate", "--ratio", "1:2:0"]).contains("step must be > 0"));
    assert!(fails(&["simulate", "--ratio", "-1:2:0.5"]).contains("--ratio"));
    assert!(fails(&["simulate", "--alpha", "0"]).contains("--alpha"));
}

#[test]
fn unreadable_traces_are_named_and_leave_no_output() {
    let d = tmpdir("badtrace");
    let junk = d.join("junk.parquet");
    std::fs::write(&junk, b"this is not parquet").unwrap();
    let out = d.join("out.parquet");
    let err = fails(&[
        "simulate",
        "--trace",
        junk.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("junk.parquet"), "{err}");
    let missing = fails(&[
        "simulate",
        "--trace",
        d.join("nope.parquet").to_str().unwrap(),
    ]);
    assert!(missing.contains("nope.parquet"), "{missing}");
    // a real Parquet file that is not a trace
    let res = d.join("results.parquet");
    ok(&[
        "simulate",
        "--ratio",
        "1.3",
        "--out",
        res.to_str().unwrap(),
        "-q",
    ]);
    assert!(
        fails(&["simulate", "--trace", res.to_str().unwrap()]).contains("not an llep-trace trace")
    );
    assert!(dir_is_empty_but(&d, &["junk.parquet", "results.parquet"]));
}

#[test]
fn bad_load_files_are_refused_with_the_file_and_line() {
    let d = tmpdir("badcsv");
    let cases: &[(&str, &str, &str)] = &[
        (
            "missing.csv",
            "layer,expert\n0,1\n",
            "missing column 'count'",
        ),
        ("empty.csv", "layer,expert,count\n", "no rows"),
        (
            "negative.csv",
            "layer,expert,count\n0,0,5\n0,1,-3\n",
            "line 3: count '-3' is negative",
        ),
        (
            "fraction.csv",
            "layer,expert,count\n0,0,2.5\n",
            "line 2: count '2.5' is not an integer",
        ),
        (
            "dup.csv",
            "layer,expert,count\n0,0,2\n0,0,3\n",
            "duplicate row",
        ),
        (
            "bad.json",
            "{\"counts\": 5}",
            "expected a [layers][experts] matrix",
        ),
        ("notjson.json", "[[1, 2], [3", "not valid JSON"),
    ];
    for (name, body, want) in cases {
        let f = d.join(name);
        std::fs::write(&f, body).unwrap();
        let out = d.join("t.parquet");
        // name the load-level format: a CSV without `count` would otherwise
        // be read as per-token routing, one expert per row
        let format = if name.ends_with(".csv") {
            "load-csv"
        } else {
            "load-json"
        };
        let err = fails(&[
            "capture",
            f.to_str().unwrap(),
            "--format",
            format,
            "--top-k",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(err.contains(name) && err.contains(want), "{name}: {err}");
        assert!(!out.exists(), "{name}: output written despite the error");
    }
    let f = d.join("ok.csv");
    std::fs::write(&f, "layer,expert,count\n0,0,2\n0,1,3\n").unwrap();
    let err = fails(&[
        "capture",
        f.to_str().unwrap(),
        "--out",
        d.join("t.parquet").to_str().unwrap(),
    ]);
    assert!(err.contains("--top-k"), "{err}");
    let err = fails(&[
        "capture",
        f.to_str().unwrap(),
        "--top-k",
        "3",
        "--out",
        d.join("t.parquet").to_str().unwrap(),
    ]);
    assert!(err.contains("top_k 3"), "{err}");
    // no temporary files left anywhere in the directory
    assert!(std::fs::read_dir(&d).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
}

#[test]
fn capture_rebuilds_the_bundled_olmoe_trace_exactly() {
    let d = tmpdir("olmoe");
    let out = d.join("o.parquet");
    ok(&[
        "capture",
        "traces/source/olmoe/expert_counts.csv",
        "--filter",
        "model=OLMoE-1B-7B",
        "--group-by",
        "domain",
        "--model-name",
        "OLMoE-1B-7B",
        "--top-k",
        "8",
        "--hidden-size",
        "2048",
        "--intermediate-size",
        "1024",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    let mine = read_trace(&out, false).unwrap();
    let bundled = read_trace(
        Path::new(ROOT).join("traces/olmoe-1b-7b.parquet").as_path(),
        false,
    )
    .unwrap();
    assert_eq!(mine.loads, bundled.loads);
    assert_eq!(
        mine.meta.step_labels,
        vec!["arxiv", "book", "c4", "github", "tulu", "wikipedia"]
    );
    // independent count of the CSV: every (domain, layer) group sums to 208,896 x 8
    let csv =
        std::fs::read_to_string(Path::new(ROOT).join("traces/source/olmoe/expert_counts.csv"))
            .unwrap();
    let arxiv_l0: u64 = csv
        .lines()
        .filter(|l| l.starts_with("OLMoE-1B-7B,arxiv,0,"))
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(mine.loads.total(0, 0), arxiv_l0);
    assert_eq!(arxiv_l0, 208_896 * 8);
}

#[test]
fn traces_and_results_read_back_in_polars_pandas_and_duckdb() {
    let d = tmpdir("interop");
    let res = d.join("r.parquet");
    ok(&[
        "simulate",
        "--ratio",
        "1.3",
        "--out",
        res.to_str().unwrap(),
        "-q",
    ]);
    let script = Path::new(ROOT).join("tests/support/read_back.py");
    let trace = Path::new(ROOT).join("traces/olmoe-1b-7b.parquet");
    let o = Command::new("python3")
        .args([
            script.to_str().unwrap(),
            trace.to_str().unwrap(),
            res.to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs (CI installs polars, pyarrow, pandas, duckdb)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = read_trace(&trace, false).unwrap();
    assert_eq!(
        v["columns"],
        serde_json::json!(["step", "layer", "rank", "expert", "count"])
    );
    assert_eq!(v["rows"], 6 * 3 * 64);
    assert_eq!(v["model"], "OLMoE-1B-7B");
    assert_eq!(v["licence"], "Apache-2.0");
    assert_eq!(v["first_total"].as_u64().unwrap(), t.loads.total(0, 0));
    let all: u64 = t.loads.counts.iter().sum();
    assert_eq!(v["pandas_total"].as_u64().unwrap(), all);
    assert_eq!(v["duckdb_total"].as_u64().unwrap(), all);
    let (_, rows) = read_results(&res).unwrap();
    assert_eq!(v["result_rows"].as_u64().unwrap() as usize, rows.len());
    let ep_total: f64 = rows
        .iter()
        .filter(|r| r.policy == Policy::Ep)
        .map(|r| r.t_total_ms)
        .sum();
    assert!((v["policy_totals"]["ep"].as_f64().unwrap() - ep_total).abs() < 1e-9);
    let first_ep = rows.iter().find(|r| r.policy == Policy::Ep).unwrap();
    assert_eq!(
        v["first_ep_loads"],
        serde_json::json!(first_ep.loads_before)
    );
}

#[test]
fn an_unparsable_ratio_in_the_environment_is_read_as_the_reference_reads_it_with_a_warning() {
    let o = run(
        &["plan", "--counts", "5,3,2,2", "--gpus", "2"],
        &[("MOE_ADAPTIVE_LPT_ROUTING_RATIO", "1,3")],
    );
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("'1,3' is not a number"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("lambda always"));
}

#[test]
fn shape_flags_that_do_not_apply_to_a_trace_are_refused() {
    let e = fails(&["simulate", "--experts", "64", "--top-k", "8"]);
    assert!(
        e.contains("--experts applies to --synthetic inputs only"),
        "{e}"
    );
    let e = fails(&["simulate", "--synthetic", "95:1", "--steps", "1"]);
    assert!(
        e.contains("--steps and --layers select from a trace"),
        "{e}"
    );
    for cmd in ["simulate", "tune", "replay", "calibrate"] {
        let e = fails(&[cmd, "--gpus", "-1", "--out", "/nonexistent/x"]);
        assert!(e.contains("not a positive integer"), "{cmd}: {e}");
    }
}

#[test]
fn the_cost_aware_gate_and_the_training_pass() {
    let out = ok(&[
        "simulate",
        "--synthetic",
        "30:4",
        "--gpus",
        "4",
        "--tokens-per-rank",
        "512",
        "--ratio",
        "1.3,auto",
        "--policy",
        "ep,llep",
        "-q",
    ]);
    let row = |p: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(p))
            .unwrap_or_else(|| panic!("no {p} row: {out}"))
            .to_string()
    };
    // at a decode-sized batch LLEP at 1.3 loses to EP; the cost-aware gate keeps EP
    let speedup = |p: &str| -> f64 {
        let r = row(p);
        let x = r.split_whitespace().find(|w| w.ends_with('x')).unwrap();
        x.trim_end_matches('x').parse().unwrap()
    };
    assert!(speedup("llep") < 1.0, "{out}");
    assert_eq!(speedup("llep-auto"), 1.0, "{out}");
    let train = ok(&[
        "simulate",
        "--synthetic",
        "95:1",
        "--gpus",
        "4",
        "--pass",
        "train",
        "-q",
    ]);
    assert!(train.contains("pass: train (forward + backward"), "{train}");
    let e = fails(&["simulate", "--recompute"]);
    assert!(
        e.contains("--recompute applies to --pass train only"),
        "{e}"
    );
    // replay --pass train runs on GPUs (tests/gpu_replay.rs); its flag
    // checks come first
    let e = fails(&["replay", "--synthetic", "95:1", "--recompute"]);
    assert!(
        e.contains("--recompute applies to --pass train only"),
        "{e}"
    );
}

/// `--cuda-graphs on` prices a decode-sized layer without the host's time
/// per unit (graph tables, no floor) in `simulate`, says so in the rows,
/// and moves `plan`'s gate to the graph margins; a training step is
/// refused in one line.
/// `simulate --exchange copy-engine` prices the copy engines' exchange
/// (the rows and the header say so, and the layer is faster than NCCL's on
/// H200), and refuses what the copy engines cannot carry (across nodes)
/// or a profile cannot price, in one line.
#[test]
fn copy_engine_exchange_is_priced_and_refused_where_it_cannot_run() {
    let dir = tmpdir("copy-engine");
    let mut totals = Vec::new();
    for x in ["nccl", "copy-engine"] {
        let out = dir.join(format!("{x}.parquet"));
        let printed = ok(&[
            "simulate",
            "--synthetic",
            "30:4",
            "--gpus",
            "2",
            "--tokens-per-rank",
            "8192",
            "--policy",
            "ep",
            "--exchange",
            x,
            "-q",
            "--out",
            out.to_str().unwrap(),
        ]);
        let rows = llep_trace::results::read_results(&out).unwrap().1;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].exchange, x);
        assert_eq!(
            printed.contains("exchange: tokens pushed and weights pulled by the copy engines"),
            x == "copy-engine",
            "{printed}"
        );
        totals.push(rows[0].t_total_ms);
    }
    assert!(totals[1] < totals[0], "{totals:?}");
    let e = fails(&[
        "simulate",
        "--nodes",
        "2",
        "--gpus",
        "4",
        "--exchange",
        "copy-engine",
    ]);
    assert!(e.contains("one node"), "{e}");
    let e = fails(&["simulate", "--profile", "h100", "--exchange", "copy-engine"]);
    assert!(
        e.contains("h100") && e.contains("copy-engine measurements"),
        "{e}"
    );
}

#[test]
fn cuda_graphs_price_decode_layers_without_the_host_floor() {
    let dir = tmpdir("graphs");
    let mut totals = Vec::new();
    for g in ["off", "on"] {
        let out = dir.join(format!("{g}.parquet"));
        let printed = ok(&[
            "simulate",
            "--synthetic",
            "balanced",
            "--gpus",
            "2",
            "--experts",
            "128",
            "--top-k",
            "8",
            "--hidden-size",
            "2048",
            "--intermediate-size",
            "768",
            "--tokens-per-rank",
            "512",
            "--policy",
            "ep",
            "--cuda-graphs",
            g,
            "-q",
            "--out",
            out.to_str().unwrap(),
        ]);
        let rows = llep_trace::results::read_results(&out).unwrap().1;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cuda_graphs, g == "on");
        assert_eq!(
            printed.contains("expert units: launched as CUDA graphs"),
            g == "on",
            "{printed}"
        );
        totals.push(rows[0].t_total_ms);
    }
    // 64 units of 64 rows per GPU: issued one by one, the host's floor
    // (23 us a unit) sets the compute; as graphs, the GEMM tables do
    assert!(totals[1] < 0.9 * totals[0], "{totals:?}");
    let e = fails(&["simulate", "--pass", "train", "--cuda-graphs", "on"]);
    assert!(
        e.contains("--cuda-graphs on") && e.contains("forward"),
        "{e}"
    );
    let margin = |g: &str| -> f64 {
        let out = ok(&[
            "plan",
            "--counts",
            "900,20,20,20,20,20,20,20",
            "--gpus",
            "2",
            "--ratio",
            "auto",
            "--hidden-size",
            "2048",
            "--intermediate-size",
            "768",
            "--cuda-graphs",
            g,
        ]);
        let at = out.find("margin ").unwrap_or_else(|| panic!("{out}")) + 7;
        out[at..].split('%').next().unwrap().parse().unwrap()
    };
    let (off, on) = (margin("off"), margin("on"));
    assert!(off > 0.0 && on > 0.0 && off != on, "{off} {on}");
    // at a decode-sized batch, tune says how it priced the units
    for g in ["off", "on"] {
        let out = ok(&[
            "tune",
            "--synthetic",
            "95:1",
            "--gpus",
            "2",
            "--tokens-per-rank",
            "512",
            "--ratio",
            "1.0:2.0:0.5",
            "--cuda-graphs",
            g,
            "-q",
        ]);
        assert_eq!(out.contains("add --cuda-graphs on"), g == "off", "{out}");
    }
}
