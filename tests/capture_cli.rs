//! `llep-trace capture` through the real binary, on what a new user tripped
//! over: format names and detection, `--group-by` on per-token records,
//! options that contradict the data, output left behind by a failed write,
//! error and summary wording, and warm-up-like routing warnings.

use llep_trace::capture::Format;
use llep_trace::trace::parquet_io::read_tokens;
use llep_trace::trace::read_trace;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_llep-trace");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("binary runs")
}

/// Run, expect success, return stderr (status, warnings).
fn ok(args: &[&str]) -> String {
    let o = run(args);
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{args:?} failed: {err}");
    err
}

/// Run, expect failure with exactly one error line, return it.
fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {err}");
    errors[0].to_string()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-capcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic pseudo-random top-2 of 8 experts.
fn pick(t: u32, l: u32) -> [u32; 2] {
    let h = t
        .wrapping_mul(2_654_435_761)
        .wrapping_add(l.wrapping_mul(40_503))
        >> 7;
    let a = h % 8;
    [a, (a + 1 + (h / 8) % 7) % 8]
}

/// Per-token JSONL: 60 tokens x 4 layers, a `domain` field cycling web,
/// code, math in runs of 7 tokens, weights that are not uniform.
fn jsonl(d: &Path) -> PathBuf {
    let mut body = String::new();
    for t in 0..60u32 {
        let dom = ["web", "code", "math"][(t / 7 % 3) as usize];
        for l in 0..4u32 {
            let [a, b] = pick(t, l);
            let w = 0.55 + (t % 10) as f32 * 0.03;
            writeln!(
                body,
                r#"{{"domain": "{dom}", "layer": {l}, "expert": [{a}, {b}], "weight": [{w}, {}]}}"#,
                1.0 - w
            )
            .unwrap();
        }
    }
    let p = d.join("r.jsonl");
    std::fs::write(&p, body).unwrap();
    p
}

/// The same records as CSV.
fn csv(d: &Path) -> PathBuf {
    let mut body = String::from("domain,layer,expert,weight\n");
    for t in 0..60u32 {
        let dom = ["web", "code", "math"][(t / 7 % 3) as usize];
        for l in 0..4u32 {
            let [a, b] = pick(t, l);
            writeln!(body, "{dom},{l},{a} {b},0.6 0.4").unwrap();
        }
    }
    let p = d.join("r.csv");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn format_names_are_the_documented_ones_and_others_are_refused() {
    let help = String::from_utf8(run(&["capture", "--help"]).stdout).unwrap();
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    for f in Format::ALL {
        assert!(help.contains(f.name()), "--help lacks {f}: {help}");
        assert!(readme.contains(&format!("`{f}`")), "README lacks `{f}`");
    }
    let d = tmpdir("fmt");
    let e = fails(&[
        "capture",
        "x.csv",
        "--format",
        "parquet",
        "--out",
        s(&d.join("t.parquet")),
    ]);
    assert!(e.contains("'parquet'") && e.contains("--format"), "{e}");
    // `auto` still detects: a CSV without a count column is per-token
    let f = csv(&d);
    let err = ok(&[
        "capture",
        s(&f),
        "--format",
        "auto",
        "--out",
        s(&d.join("t.parquet")),
    ]);
    assert!(err.contains("(csv), top-2"), "{err}");
}

#[test]
fn group_by_makes_one_step_per_value_on_jsonl_and_csv() {
    let d = tmpdir("group");
    for (src, fmt) in [(jsonl(&d), "jsonl"), (csv(&d), "csv")] {
        let out = d.join(format!("{fmt}.parquet"));
        let err = ok(&["capture", s(&src), "--group-by", "domain", "--out", s(&out)]);
        assert!(
            err.contains(&format!(
                "3 steps x 4 layers x 1 rank x 8 experts ({fmt}), top-2, 60 tokens, 240 token-layer rows"
            )),
            "{err}"
        );
        assert!(
            err.contains("steps by domain: 0 = web, 1 = code, 2 = math"),
            "{err}"
        );
        let t = read_trace(&out, false).unwrap();
        assert_eq!(t.meta.step_labels, ["web", "code", "math"], "{fmt}");
        // the written metadata counts the layers recorded when not told
        assert_eq!(t.meta.model.num_layers, 4);
        assert_eq!(t.loads.step_ids, [0, 1, 2]);
        // independent count: tokens t with (t / 7) % 3 == domain index
        for (si, want_tokens) in [(0usize, 21u64), (1, 21), (2, 18)] {
            for l in 0..4u32 {
                let mut want = vec![0u64; 8];
                for t in (0..60u32).filter(|t| (t / 7 % 3) as usize == si) {
                    for e in pick(t, l) {
                        want[e as usize] += 1;
                    }
                }
                assert_eq!(
                    t.loads.global(si, l as usize),
                    want,
                    "{fmt} step {si} layer {l}"
                );
                assert_eq!(t.loads.total(si, l as usize), want_tokens * 2);
            }
        }
        let (meta, tokens) = read_tokens(&llep_trace::trace::tokens_path_for(&out)).unwrap();
        assert_eq!(meta.step_labels, ["web", "code", "math"]);
        assert_eq!(tokens.step[..8], [0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(tokens.step[7 * 4], 1, "token 7 is the first 'code' token");
    }
}

#[test]
fn group_by_an_unknown_column_names_it_and_the_file() {
    let d = tmpdir("group-bad");
    for src in [jsonl(&d), csv(&d)] {
        let out = d.join("t.parquet");
        let e = fails(&["capture", s(&src), "--group-by", "topic", "--out", s(&out)]);
        assert!(e.contains("'topic'") && e.contains(s(&src)), "{e}");
        assert!(!out.exists());
    }
    // a source with no named fields refuses the option instead of ignoring it
    let e = fails(&[
        "capture",
        "traces/source/flame-moe-290m",
        "--group-by",
        "domain",
        "--out",
        s(&d.join("f.parquet")),
    ]);
    assert!(
        e.contains("--group-by domain does not apply") && e.contains("pt-routing"),
        "{e}"
    );
    assert_eq!(names(&d), ["r.csv", "r.jsonl"]);
}

#[test]
fn options_that_contradict_the_data_are_errors_naming_both() {
    let d = tmpdir("contra");
    let src = jsonl(&d);
    let out = d.join("t.parquet");
    let e = fails(&["capture", s(&src), "--top-k", "3", "--out", s(&out)]);
    assert_eq!(
        e,
        format!(
            "error: --top-k 3 contradicts {}: its records have 2 experts per token",
            src.display()
        )
    );
    let e = fails(&["capture", s(&src), "--num-layers", "3", "--out", s(&out)]);
    assert!(
        e.contains("--num-layers 3 contradicts") && e.contains("4 layers"),
        "{e}"
    );
    let e = fails(&["capture", s(&src), "--dtype", "fp4", "--out", s(&out)]);
    assert!(
        e.contains("--dtype fp4") && e.contains("bf16") && e.contains("fp8"),
        "{e}"
    );
    let e = fails(&["capture", s(&src), "--json-key", "c", "--out", s(&out)]);
    assert!(e.contains("--json-key does not apply"), "{e}");
    let e = fails(&["capture", s(&src), "--n-group", "4", "--out", s(&out)]);
    assert!(
        e.contains("--n-group applies only with --routing sigmoid-group-topk"),
        "{e}"
    );
    assert_eq!(
        names(&d),
        ["r.jsonl"],
        "nothing written by a refused capture"
    );
    // options that agree are fine, and the dtype is stored by its canonical name
    ok(&[
        "capture",
        s(&src),
        "--top-k",
        "2",
        "--num-layers",
        "32",
        "--dtype",
        "FP32",
        "--out",
        s(&out),
    ]);
    let t = read_trace(&out, false).unwrap();
    assert_eq!(
        (t.meta.model.dtype.as_str(), t.meta.model.dtype_bytes()),
        ("f32", 4)
    );
    assert_eq!(t.meta.model.num_layers, 32);
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    let d = tmpdir("partial");
    let src = jsonl(&d);
    let o = d.join("out");
    std::fs::create_dir(&o).unwrap();
    // the tokens file's place is a directory
    std::fs::create_dir(o.join("p.tokens.parquet")).unwrap();
    let e = fails(&["capture", s(&src), "--out", s(&o.join("p.parquet"))]);
    assert!(
        e.contains("p.tokens.parquet") && e.contains("is a directory"),
        "{e}"
    );
    assert_eq!(names(&o), ["p.tokens.parquet"]);
    // the load file's place is a directory
    std::fs::create_dir(o.join("q.parquet")).unwrap();
    let e = fails(&["capture", s(&src), "--out", s(&o.join("q.parquet"))]);
    assert!(
        e.contains("q.parquet") && e.contains("is a directory"),
        "{e}"
    );
    assert_eq!(names(&o), ["p.tokens.parquet", "q.parquet"]);
    assert!(names(&o.join("q.parquet")).is_empty());
    // a check that fails after the data was read leaves nothing either
    fails(&[
        "capture",
        s(&src),
        "--top-k",
        "4",
        "--out",
        s(&o.join("r.parquet")),
    ]);
    assert_eq!(names(&o), ["p.tokens.parquet", "q.parquet"]);
}

#[test]
fn os_errors_are_said_once() {
    let d = tmpdir("oserr");
    let missing = d.join("missing");
    for f in Format::ALL {
        let input = missing.with_extension(match f {
            Format::Csv | Format::LoadCsv => "csv",
            Format::Jsonl | Format::MegatronJsonl => "jsonl",
            Format::LoadJson => "json",
            Format::PtRouting | Format::Sglang => "pt",
            _ => "npy",
        });
        let o = run(&[
            "capture",
            s(&input),
            "--format",
            f.name(),
            "--top-k",
            "2",
            "--out",
            s(&d.join("t.parquet")),
        ]);
        let err = String::from_utf8(o.stderr).unwrap();
        assert!(!o.status.success(), "{f}");
        assert!(err.matches("os error").count() <= 1, "{f}: {err}");
        assert!(
            err.contains(&format!("{}: no such file or directory", input.display())),
            "{f}: {err}"
        );
    }
    // the cause: an error type that showed its source and also chained it
    let e = read_trace(&d.join("nope.parquet"), false).unwrap_err();
    let chained = anyhow::Error::from(llep_trace::capture::CaptureError::from(e));
    let msg: Vec<String> = chained.chain().map(|c| c.to_string()).collect();
    assert_eq!(msg.join(": ").matches("os error").count(), 1, "{msg:?}");
    let e = fails(&["simulate", "--trace", s(&d.join("nope.parquet"))]);
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    assert_eq!(names(&d), Vec::<String>::new());
}

#[test]
fn messages_say_what_is_wrong_and_count_right() {
    let d = tmpdir("msgs");
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "x").unwrap();
    let e = fails(&["capture", s(&empty), "--out", s(&d.join("t.parquet"))]);
    assert!(
        e.contains("the directory has no files capture can read"),
        "{e}"
    );
    assert!(!e.contains("--format"), "{e}");
    let src = jsonl(&d);
    let e = fails(&[
        "capture",
        s(&src),
        "--filter",
        "nosuchcol=x",
        "--out",
        s(&d.join("t.parquet")),
    ]);
    assert!(e.contains("nosuchcol") && e.contains(s(&src)), "{e}");
    assert!(!e.contains("no token rows"), "{e}");
    // the README example: 2048 tokens over 8 layers are 16384 token-layer rows
    let err = ok(&[
        "capture",
        "traces/source/flame-moe-290m",
        "--out",
        s(&d.join("flame.parquet")),
        "--num-experts",
        "64",
        "--num-layers",
        "8",
    ]);
    assert!(
        err.contains("1 step x 8 layers x 1 rank x 64 experts (pt-routing), top-6, 2048 tokens, 16384 token-layer rows"),
        "{err}"
    );
    assert!(
        !err.contains("warning"),
        "real routing raises no warning: {err}"
    );
}

#[test]
fn warm_up_like_routing_is_warned_about() {
    let d = tmpdir("warm");
    // layer 0: every token to experts 2 and 6 with weights 0.5; layer 1: real
    let mut body = String::new();
    for t in 0..40u32 {
        writeln!(
            body,
            r#"{{"layer": 0, "expert": [2, 6], "weight": [0.5, 0.5]}}"#
        )
        .unwrap();
        let [a, b] = pick(t, 1);
        writeln!(
            body,
            r#"{{"layer": 1, "expert": [{a}, {b}], "weight": [0.7, 0.3]}}"#
        )
        .unwrap();
    }
    let src = d.join("w.jsonl");
    std::fs::write(&src, body).unwrap();
    let err = ok(&[
        "capture",
        s(&src),
        "--num-experts",
        "8",
        "--out",
        s(&d.join("w.parquet")),
    ]);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].contains("constant routing")
            && warnings[0].contains("(2, 6)")
            && warnings[0].contains("1 of 2 layer-steps (step 0 layer 0), 40 token rows"),
        "{err}"
    );
    assert!(
        warnings[1].contains("uniform weights")
            && warnings[1].contains("1 of 2 layer-steps (step 0 layer 0), 40 token rows"),
        "{err}"
    );
    // warnings still show with -q; the trace is written
    let o = run(&["capture", s(&src), "-q", "--out", s(&d.join("q.parquet"))]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8(o.stderr).unwrap().lines().count(), 2);
    assert!(d.join("q.parquet").exists());
}

/// Every `llep-trace capture` example of the README, run, prints what the
/// README shows (the output file goes to a temporary directory).
#[test]
fn readme_capture_examples_print_what_the_readme_shows() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let d = tmpdir("readme");
    let lines: Vec<&str> = readme.lines().collect();
    let mut ran = 0;
    let mut i = 0;
    while i < lines.len() {
        let Some(cmd) = lines[i].strip_prefix("$ llep-trace capture ") else {
            i += 1;
            continue;
        };
        let mut cmd = cmd.to_string();
        while cmd.ends_with('\\') {
            cmd.pop();
            i += 1;
            cmd.push(' ');
            cmd.push_str(lines[i].trim());
        }
        // the expected output: the lines up to the next command or fence
        let want: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| !l.starts_with('$') && !l.starts_with("```"))
            .copied()
            .collect();
        let mut args: Vec<String> = vec!["capture".into()];
        let mut words = cmd.split_whitespace();
        let mut out_name = String::new();
        while let Some(w) = words.next() {
            args.push(w.to_string());
            if w == "--out" {
                out_name = words.next().unwrap().to_string();
                args.push(s(&d.join(&out_name)).to_string());
            }
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = ok(&argv);
        let got = err.replace(s(&d.join(&out_name)), &out_name);
        assert_eq!(got.lines().collect::<Vec<_>>(), want, "{cmd}");
        ran += 1;
        i += 1;
    }
    assert!(ran >= 2, "README capture examples found: {ran}");
}
