//! Report: the numbers behind each plot, the files written, the page, and
//! the `llep-trace report` command's handling of bad input.
//!
//! Measured rows here are a TEST FIXTURE: simulated rows relabelled
//! "measured" with their times scaled by a known factor, so the expected
//! error and speedups are known exactly. They are never written outside a
//! temporary folder.

use llep_trace::plan::Gate;
use llep_trace::plan::{capacity, Policy};
use llep_trace::progress::Silent;
use llep_trace::report::{data, plot_speedup_vs_lambda, plot_tune, read_input, write_report};
use llep_trace::report::{Input, ReportOptions};
use llep_trace::results::{write_results, ResultRow, ResultsMeta, Source};
use llep_trace::sim::{simulate, Profile, SimConfig};
use llep_trace::workload::InputSpec;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llep-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn olmoe_rows(gates: Vec<Gate>) -> Vec<ResultRow> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let w = InputSpec::trace(root.join("traces/olmoe-1b-7b.parquet"), 8)
        .resolve()
        .unwrap()
        .remove(0);
    let cfg = SimConfig {
        policies: vec![Policy::Ep, Policy::Llep, Policy::Ideal],
        gates,
        alphas: vec![1.0],
        min_gemms: vec![1024],
        profile: Profile::load("h100").unwrap(),
        threads: 1,
        pass: llep_trace::results::Pass::Forward,
        recompute: false,
    };
    simulate(&w, &cfg, &Silent).unwrap()
}

/// TEST FIXTURE: pretend-measured twins of simulated rows, times x `scale`.
fn fixture_measured(sim: &[ResultRow], scale: f64) -> Vec<ResultRow> {
    sim.iter()
        .filter(|r| r.policy != Policy::Ideal)
        .map(|r| {
            let mut m = r.clone();
            m.source = Source::Measured;
            m.device = "NVIDIA H100 80GB HBM3".into();
            m.profile = String::new();
            m.input_note = "TEST FIXTURE, not a measurement".into();
            m.t_total_ms *= scale;
            m.t_total_p10_ms = Some(m.t_total_ms * 0.95);
            m.t_total_p90_ms = Some(m.t_total_ms * 1.05);
            m.runs = 5;
            m
        })
        .collect()
}

fn gates() -> Vec<Gate> {
    vec![
        Gate::Always,
        Gate::Ratio(1.2),
        Gate::Ratio(1.5),
        Gate::Ratio(3.0),
    ]
}

#[test]
fn speedup_matches_sums_of_the_rows() {
    let rows = olmoe_rows(gates());
    let curves = data::speedup_curves(&rows);
    assert_eq!(curves.len(), 1);
    let c = &curves[0];
    let sum = |pol: &str, l: Option<f64>| -> f64 {
        rows.iter()
            .filter(|r| r.policy.as_str() == pol && r.lambda() == l)
            .map(|r| r.t_total_ms)
            .sum()
    };
    let ep = sum("ep", None);
    assert_eq!(c.points.len(), 3);
    for &(l, s) in &c.points {
        assert!((s - ep / sum("llep", Some(l))).abs() < 1e-12, "lambda {l}");
    }
    assert!((c.always.unwrap() - ep / sum("llep", None)).abs() < 1e-12);
    assert!((c.ideal.unwrap() - ep / sum("ideal", None)).abs() < 1e-12);
    // lambda 3.0 is above every OLMoE ratio (max 2.14): LLEP never plans.
    assert_eq!(c.points[2], (3.0, 1.0));
    // The recommendation (tune's rule) has the least total of every setting.
    let rec = c.recommended.clone().unwrap();
    assert!(!rec.never);
    let rec_total = sum("llep", rec.lambda);
    for &(l, _) in &c.points {
        assert!(rec_total <= sum("llep", Some(l)) * (1.0 + 1e-9));
    }
    assert!(rec_total <= ep);
    assert_eq!(c.shown, Some(rec.lambda));
}

#[test]
fn imbalance_cdf_counts_each_layer_step_once() {
    let rows = olmoe_rows(gates());
    let cdfs = data::imbalance_cdfs(&rows);
    assert_eq!(cdfs.len(), 1);
    let c = &cdfs[0];
    assert_eq!(c.ratios.len(), 18); // 6 steps x 3 layers
    let on = rows
        .iter()
        .filter(|r| r.policy == Policy::Llep && r.lambda() == Some(1.5))
        .filter(|r| r.use_llep)
        .count();
    assert!((c.on_fraction(1.5) - on as f64 / 18.0).abs() < 1e-12);
    assert_eq!(c.on_fraction(1.0), 1.0);
    assert_eq!(c.on_fraction(3.0), 0.0);
}

#[test]
fn heatmap_is_load_over_capacity() {
    let rows = olmoe_rows(gates());
    let series = data::by_series(&rows);
    let (key, rs) = &series[0];
    let h = data::heatmap(rs, key, Some(1.5)).unwrap();
    assert_eq!(h.lambda, Some(1.5));
    assert_eq!(h.columns.len(), 18);
    let ep0 = rows
        .iter()
        .find(|r| r.policy == Policy::Ep && (r.step, r.layer) == h.columns[0])
        .unwrap();
    let cap = capacity(ep0.loads_before.iter().sum(), 8, 1.0);
    assert_eq!(h.capacity[0], cap);
    for g in 0..8 {
        assert!((h.ep[0][g] - ep0.loads_before[g] as f64 / cap as f64).abs() < 1e-12);
    }
    // OLMoE's worst layer-step is 2.14x the mean: EP is well over capacity.
    assert!(h.ep.iter().flatten().any(|&v| v > 1.5));
    // A lambda that was not simulated falls back to the nearest one.
    assert_eq!(
        data::heatmap(rs, key, Some(1.45)).unwrap().lambda,
        Some(1.5)
    );
}

#[test]
fn phases_and_memory_are_means_and_maxima() {
    let rows = olmoe_rows(gates());
    let bars = data::phase_bars(&rows, &|_| Some(1.2));
    assert_eq!(bars.len(), 3);
    let ll = bars.iter().find(|b| b.policy == "llep").unwrap();
    assert_eq!(ll.lambda, Some(1.2));
    let sel: Vec<&ResultRow> = rows
        .iter()
        .filter(|r| r.policy == Policy::Llep && r.lambda() == Some(1.2))
        .collect();
    let mean = sel.iter().map(|r| r.t_compute_ms).sum::<f64>() / sel.len() as f64;
    assert!((ll.phases_ms[3] - mean).abs() < 1e-12);
    let panels = data::memory_panels(&rows, &|_| Some(1.2));
    assert_eq!(panels.len(), 1);
    let max_g3 = sel.iter().map(|r| r.peak_mem_per_gpu[3]).max().unwrap();
    assert_eq!(panels[0].llep[3], max_g3);
}

#[test]
fn measured_fixture_joins_its_simulated_twin() {
    let sim = olmoe_rows(gates());
    let meas = fixture_measured(&sim, 1.1);
    let all: Vec<ResultRow> = sim.iter().chain(&meas).cloned().collect();
    let pairs = data::sim_measured_pairs(&all);
    assert_eq!(pairs.len(), meas.len());
    let (med, worst) = data::error_stats(&pairs).unwrap();
    // simulated = measured / 1.1 -> error = 1/1.1 - 1 = -9.09%
    assert!((med - 100.0 / 11.0).abs() < 1e-9, "{med}");
    assert!((worst - 100.0 / 11.0).abs() < 1e-9);
    // Measured speedups equal simulated ones: every time scaled alike.
    let curves = data::speedup_curves(&all);
    assert_eq!(curves.len(), 2);
    let (s, m) = (&curves[0], &curves[1]);
    assert!(m.key.measured() && !s.key.measured());
    for (a, b) in s.points.iter().zip(&m.points) {
        assert!((a.1 - b.1).abs() < 1e-9);
    }
    assert!(m.spread.iter().all(|x| x.is_some()));
}

fn png_has_dark_text(path: &Path) -> bool {
    // Decoding is not a dependency; check the PNG signature and that the
    // file is big enough to hold drawn text (a blank 1280x600 PNG is tiny).
    let b = std::fs::read(path).unwrap();
    b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 20_000
}

#[test]
fn report_writes_every_plot_and_says_what_is_missing() {
    let dir = tmp("page");
    let sim = olmoe_rows(gates());
    let input = Input::from_rows(
        &dir.join("sim.parquet"),
        ResultsMeta::default(),
        sim.clone(),
    );
    let opts = ReportOptions {
        title: "test".into(),
        command: "llep-trace report sim.parquet".into(),
        ..Default::default()
    };
    let out = dir.join("out");
    let w = write_report(
        std::slice::from_ref(&input),
        &opts,
        &out,
        &llep_trace::progress::Silent,
    )
    .unwrap();
    for stem in [
        "load_heatmap_1",
        "imbalance_cdf",
        "speedup_vs_lambda",
        "phases",
        "memory",
    ] {
        assert!(
            png_has_dark_text(&out.join(format!("{stem}.png"))),
            "{stem}"
        );
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.contains("<text") && svg.contains("sans-serif"),
            "{stem}"
        );
    }
    assert!(!out.join("sim_vs_measured.png").exists());
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("No measured rows in the inputs"));
    assert!(std::fs::read_to_string(out.join("summary.md"))
        .unwrap()
        .contains("![Speedup over EP against λ](speedup_vs_lambda.png)"));
    // No staging folder left behind.
    assert_eq!(
        std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.'))
            .count(),
        0
    );
    assert_eq!(w.files.len(), 12);

    // With the measured fixture the accuracy plot appears with its error.
    let meas = Input::from_rows(
        &dir.join("meas.parquet"),
        ResultsMeta::default(),
        fixture_measured(&sim, 1.1),
    );
    let out2 = dir.join("out2");
    write_report(
        &[input.clone(), meas],
        &opts,
        &out2,
        &llep_trace::progress::Silent,
    )
    .unwrap();
    assert!(png_has_dark_text(&out2.join("sim_vs_measured.png")));
    let html = std::fs::read_to_string(out2.join("index.html")).unwrap();
    assert!(
        html.contains("median |error| 9.09%"),
        "accuracy numbers on the page"
    );
    // Rewriting with simulated rows only drops the stale accuracy plot and
    // the measured series' heatmap.
    write_report(
        std::slice::from_ref(&input),
        &opts,
        &out2,
        &llep_trace::progress::Silent,
    )
    .unwrap();
    assert!(!out2.join("sim_vs_measured.png").exists());
    assert!(!out2.join("load_heatmap_2.svg").exists());
    assert!(out2.join("load_heatmap_1.svg").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plot_functions_for_simulate_and_tune() {
    let dir = tmp("api");
    let rows = olmoe_rows(gates());
    plot_speedup_vs_lambda(&rows, &dir.join("s.svg")).unwrap();
    plot_speedup_vs_lambda(&rows, &dir.join("s.png")).unwrap();
    plot_tune(&rows, Some(1.2), &dir.join("t.png")).unwrap();
    assert!(png_has_dark_text(&dir.join("s.png")));
    assert!(png_has_dark_text(&dir.join("t.png")));
    let svg = std::fs::read_to_string(dir.join("s.svg")).unwrap();
    assert!(svg.contains("speedup over EP"));
    assert!(matches!(
        plot_speedup_vs_lambda(&rows, &dir.join("s.jpg")),
        Err(llep_trace::report::ReportError::Extension(_))
    ));
    let only_ep: Vec<ResultRow> = rows
        .into_iter()
        .filter(|r| r.policy == Policy::Ep)
        .collect();
    assert!(plot_tune(&only_ep, None, &dir.join("x.png")).is_err());
    assert!(!dir.join("x.png").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_report_end_to_end_and_bad_input() {
    let dir = tmp("cli");
    let sim = olmoe_rows(gates());
    let sp = dir.join("sim.parquet");
    write_results(&sp, &sim, &ResultsMeta::default()).unwrap();
    let mp = dir.join("fixture-measured.parquet");
    write_results(&mp, &fixture_measured(&sim, 1.1), &ResultsMeta::default()).unwrap();
    let exe = env!("CARGO_BIN_EXE_llep-trace");
    let out = dir.join("rep");
    let o = Command::new(exe)
        .args(["report", "--quiet"])
        .arg(&sp)
        .arg(&mp)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout)
        .trim()
        .ends_with("index.html"));
    assert!(o.stderr.is_empty(), "--quiet prints nothing on stderr");
    assert!(out.join("sim_vs_measured.svg").exists());
    assert_eq!(read_input(&sp).unwrap().stats.rows, sim.len());

    // Not a results file: one-line error naming the file, nothing written.
    let bad = dir.join("bad.parquet");
    std::fs::write(&bad, b"not parquet").unwrap();
    let out_bad = dir.join("rep-bad");
    let o = Command::new(exe)
        .args(["report"])
        .arg(&bad)
        .arg("--out")
        .arg(&out_bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bad.parquet"), "{err}");
    assert!(!out_bad.exists());

    // A trace instead of results: the error says what to run.
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/olmoe-1b-7b.parquet");
    let o = Command::new(exe)
        .arg("report")
        .arg(&trace)
        .arg("--out")
        .arg(&out_bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("this is a trace") && err.contains("llep-trace simulate"),
        "{err}"
    );
    assert!(!out_bad.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn same_trace_at_another_batch_size_is_another_series() {
    let a = olmoe_rows(gates());
    let b: Vec<ResultRow> = a
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.input_note = "even-split; counts rescaled to 4096 tokens/rank".into();
            r.t_total_ms *= if r.policy == Policy::Ep { 1.0 } else { 2.0 };
            r
        })
        .collect();
    let all: Vec<ResultRow> = a.iter().chain(&b).cloned().collect();
    let curves = data::speedup_curves(&all);
    assert_eq!(curves.len(), 2);
    assert!((curves[0].points[0].1 - 2.0 * curves[1].points[0].1).abs() < 1e-9);
    assert!(data::knobs_vary(&all));
    assert!(curves[1].key.label(true).contains("4096 tokens/rank"));
    assert!(!data::knobs_vary(&a));
}

/// Run the release binary; panic with its stderr when it fails.
fn cli(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_llep-trace"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Synthetic scenarios, one layer-step each, simulated by the CLI.
fn synthetic(dir: &Path, scenarios: &str, ratio: &str) -> Input {
    let p = dir.join(format!(
        "syn-{}.parquet",
        scenarios.replace([',', ':'], "_")
    ));
    let ps = p.to_str().unwrap();
    cli(&[
        "simulate",
        "-q",
        "--synthetic",
        scenarios,
        "--gpus",
        "8",
        "--ratio",
        ratio,
        "--out",
        ps,
    ]);
    let (meta, rows) = llep_trace::results::read_results(&p).unwrap();
    Input::from_rows(&p, meta, rows)
}

fn report_opts() -> ReportOptions {
    ReportOptions {
        title: "test".into(),
        command: "llep-trace report".into(),
        ..Default::default()
    }
}

#[test]
fn one_lambda_draws_bars_and_many_draw_lines() {
    use llep_trace::report::plots::{SpeedupFig, SpeedupStyle};
    let fig = |rows: &[ResultRow]| SpeedupFig {
        curves: data::speedup_curves(rows),
        title: String::new(),
        recommended: None,
        regret: false,
        with_knobs: false,
    };
    let many = olmoe_rows(gates());
    assert_eq!(fig(&many).style(), SpeedupStyle::Lines);
    // one numeric lambda and "always": a line would be one dot
    let one = olmoe_rows(vec![Gate::Ratio(1.3), Gate::Always]);
    assert_eq!(fig(&one).style(), SpeedupStyle::Bars);
    let dir = tmp("bars");
    plot_speedup_vs_lambda(&one, &dir.join("one.svg")).unwrap();
    plot_speedup_vs_lambda(&many, &dir.join("many.svg")).unwrap();
    let one_svg = std::fs::read_to_string(dir.join("one.svg")).unwrap();
    let many_svg = std::fs::read_to_string(dir.join("many.svg")).unwrap();
    // the bar chart writes each bar's value; the line chart has a λ axis
    let c = &data::speedup_curves(&one)[0];
    let label = format!("LLEP λ=1.3: {:.3}×", c.points[0].1);
    assert!(one_svg.contains(&label), "{label}");
    assert!(!one_svg.contains("MOE_ADAPTIVE_LPT_ROUTING_RATIO"));
    assert!(many_svg.contains("MOE_ADAPTIVE_LPT_ROUTING_RATIO"));
    // The legend grows the figure instead of running off it: many series
    // of many lambdas make a taller figure than one series.
    let mut several = many.clone();
    for k in 1..8 {
        several.extend(many.iter().map(|r| {
            let mut r = r.clone();
            r.scenario = format!("copy {k}");
            r
        }));
    }
    let height = |rows: &[ResultRow]| llep_trace::report::plots::Figure::size(&fig(rows)).1;
    assert!(
        height(&several) > height(&many),
        "legend of 24 entries fits"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_layer_step_draws_per_gpu_bars_against_capacity() {
    let dir = tmp("loadbars");
    let one = synthetic(&dir, "balanced,30:4,95:1", "1.3");
    let series = data::by_series(&one.rows);
    assert_eq!(series.len(), 3);
    for (key, rs) in &series {
        let h = data::heatmap(rs, key, Some(1.3)).unwrap();
        assert_eq!(h.columns.len(), 1);
        assert_eq!(data::load_chart(&h), data::LoadChart::Bars);
    }
    let out = dir.join("rep");
    write_report(
        std::slice::from_ref(&one),
        &report_opts(),
        &out,
        &llep_trace::progress::Silent,
    )
    .unwrap();
    let svg = std::fs::read_to_string(out.join("load_heatmap_2.svg")).unwrap();
    assert!(svg.contains("token-copies per GPU"), "bars, not a heatmap");
    assert!(svg.contains("capacity ⌊α·(total div P)⌋"));
    // 18 layer-steps stay a heatmap, with the capacity on its colour bar
    let rows = olmoe_rows(gates());
    let series = data::by_series(&rows);
    let h = data::heatmap(&series[0].1, &series[0].0, Some(1.5)).unwrap();
    assert_eq!(data::load_chart(&h), data::LoadChart::Heatmap);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn heat_scale_is_continuous_across_capacity() {
    use llep_trace::report::plots::heat_color;
    let d = |a: f64, b: f64| {
        let (x, y) = (heat_color(a, 2.0), heat_color(b, 2.0));
        [(x.0, y.0), (x.1, y.1), (x.2, y.2)]
            .iter()
            .map(|(p, q)| (*p as i32 - *q as i32).abs())
            .max()
            .unwrap()
    };
    // 8172 against 8168 token-copies of capacity 8168: the same colour
    assert!(d(8172.0 / 8168.0, 1.0) <= 1);
    assert!(d(1.0005, 0.9995) <= 1);
    // while the scale still spans a visible range
    assert!(d(0.0, 2.0) > 150);
    assert!(d(0.5, 1.5) > 60);
}

#[test]
fn scenarios_keep_the_users_order_balanced_first() {
    let dir = tmp("order");
    let inp = synthetic(&dir, "95:1,30:4,balanced", "1.3");
    let order = |inputs: &[Input]| -> Vec<String> {
        let out = dir.join("rep");
        let w = write_report(inputs, &report_opts(), &out, &llep_trace::progress::Silent).unwrap();
        w.summary
            .iter()
            .map(|r| {
                let s = r.series.split('[').nth(1).unwrap();
                s.split(']').next().unwrap().to_string()
            })
            .collect()
    };
    // as the command gave them, the baseline first
    assert_eq!(
        order(std::slice::from_ref(&inp)),
        ["balanced", "95:1", "30:4"]
    );
    // a file whose rows were sorted as strings (as `replay` writes them):
    // the command's --synthetic list still gives the order
    let mut sorted = inp.clone();
    sorted.rows.sort_by(|a, b| a.scenario.cmp(&b.scenario));
    assert_eq!(sorted.rows[0].scenario, "30:4");
    assert!(sorted
        .meta
        .command
        .contains("--synthetic 95:1,30:4,balanced"));
    assert_eq!(
        order(std::slice::from_ref(&sorted)),
        ["balanced", "95:1", "30:4"]
    );
    // and with no command, first appearance, balanced first
    sorted.meta.command = String::new();
    assert_eq!(order(&[sorted]), ["balanced", "30:4", "95:1"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `tune` and `report` recommend the same lambda on the bundled traces:
/// both go through `llep_trace::tune::tune`. Before, the report took the
/// smallest of tied lambdas and `tune` the middle one (OLMoE 1.0 against
/// 1.05, FLAME 1.2 against 2.1).
#[test]
fn tune_and_report_recommend_the_same_lambda() {
    let dir = tmp("agree");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for t in ["olmoe-1b-7b", "mixtral-8x7b", "flame-moe-290m"] {
        let trace = root.join(format!("traces/{t}.parquet"));
        let trace = trace.to_str().unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&cli(&["tune", "-q", "--trace", trace, "--json"])).unwrap();
        let rec = &json["recommended"];
        assert_eq!(rec["never"], false, "{t}: tune recommends a lambda");
        let lambda = rec["lambda"].as_f64().expect("a numeric lambda");
        // the same grid as tune's default, as a results file
        let res = dir.join(format!("{t}.parquet"));
        let res = res.to_str().unwrap();
        cli(&[
            "simulate",
            "-q",
            "--trace",
            trace,
            "--ratio",
            "always,1.0:3.0:0.05",
            "--out",
            res,
        ]);
        let out = dir.join(t);
        cli(&["report", "-q", res, "--out", out.to_str().unwrap()]);
        let input = read_input(Path::new(res)).unwrap();
        let w = write_report(
            &[input],
            &report_opts(),
            &out,
            &llep_trace::progress::Silent,
        )
        .unwrap();
        assert_eq!(w.summary.len(), 1);
        assert_eq!(w.summary[0].lambda, Some(lambda), "{t}: λ shown");
        let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
        let said = format!(
            "llep-trace tune recommends {}",
            data::lambda_label(Some(lambda))
        );
        assert!(md.contains(&said), "{t}: {said}");
        assert!(md.contains(&format!("| {} |", data::lambda_label(Some(lambda)))));
        // and the speedup plot marks it
        let svg = std::fs::read_to_string(out.join("speedup_vs_lambda.svg")).unwrap();
        let mark = format!("recommended {}", data::lambda_label(Some(lambda)));
        assert!(svg.contains(&mark), "{t}: {mark}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The report reads results files a batch at a time into running totals;
/// the page and every figure must be what the same rows held in memory
/// give (several scenarios and lambdas, simulated and measured rows).
#[test]
fn streamed_report_equals_the_in_memory_one() {
    let dir = tmp("streamed");
    let p = dir.join("syn.parquet");
    cli(&[
        "simulate",
        "-q",
        "--synthetic",
        "95:1,balanced,30:4",
        "--gpus",
        "8",
        "--ratio",
        "always,1.0:2.0:0.25",
        "--out",
        p.to_str().unwrap(),
    ]);
    let sim = olmoe_rows(gates());
    let mp = dir.join("meas.parquet");
    write_results(&mp, &fixture_measured(&sim, 1.1), &ResultsMeta::default()).unwrap();
    let sp = dir.join("sim.parquet");
    write_results(&sp, &sim, &ResultsMeta::default()).unwrap();
    for (name, files) in [
        ("syn", vec![p.clone()]),
        ("acc", vec![sp.clone(), mp.clone()]),
    ] {
        let streamed: Vec<Input> = files.iter().map(|f| read_input(f).unwrap()).collect();
        assert!(
            streamed.iter().all(|i| i.rows.is_empty()),
            "read in batches"
        );
        let held: Vec<Input> = files
            .iter()
            .map(|f| {
                let (meta, rows) = llep_trace::results::read_results(f).unwrap();
                Input::from_rows(f, meta, rows)
            })
            .collect();
        let (a, b) = (dir.join(format!("{name}-a")), dir.join(format!("{name}-b")));
        let wa = write_report(&streamed, &report_opts(), &a, &Silent).unwrap();
        let wb = write_report(&held, &report_opts(), &b, &Silent).unwrap();
        assert_eq!(wa.files.len(), wb.files.len());
        assert!(wa.files.len() >= 10, "{name}: {} files", wa.files.len());
        for f in &wa.files {
            let n = f.file_name().unwrap();
            let (x, y) = (std::fs::read(f).unwrap(), std::fs::read(b.join(n)).unwrap());
            assert!(x == y, "{name}: {n:?} differs");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A heatmap keeps the smallest layer-steps whatever order the rows come
/// in, and at most HEATMAP_MAX_COLUMNS of them.
#[test]
fn heatmap_keeps_the_first_layer_steps_in_any_row_order() {
    let sim = olmoe_rows(gates());
    let ep = sim.iter().find(|r| r.policy == Policy::Ep).unwrap().clone();
    let ll = sim
        .iter()
        .find(|r| r.policy == Policy::Llep && r.lambda() == Some(1.5))
        .unwrap()
        .clone();
    let n = 3 * data::HEATMAP_MAX_COLUMNS as u32;
    let mut rows = vec![];
    for i in (0..n).rev() {
        for r in [&ep, &ll] {
            let mut r = r.clone();
            r.step = i / 10;
            r.layer = i % 10;
            rows.push(r);
        }
    }
    let key = data::SeriesKey::of(&rows[0]);
    let refs: Vec<&ResultRow> = rows.iter().collect();
    let h = data::heatmap(&refs, &key, Some(1.5)).unwrap();
    assert_eq!(h.columns.len(), data::HEATMAP_MAX_COLUMNS);
    let want: Vec<(u32, u32)> = (0..data::HEATMAP_MAX_COLUMNS as u32)
        .map(|i| (i / 10, i % 10))
        .collect();
    assert_eq!(h.columns, want);
    // every layer-step counted once in the CDF and the summary's count
    let cdf = &data::imbalance_cdfs(&rows)[0];
    assert_eq!(cdf.ratios.len(), n as usize);
}

/// A layer-step replayed at two batch sizes is one series (the summary
/// counts one layer-step), and each LLEP row is compared with the EP row
/// of its own batch, whatever order the rows come in.
#[test]
fn speedup_compares_each_batch_with_its_own_ep_row() {
    let sim = olmoe_rows(gates());
    let ep = sim.iter().find(|r| r.policy == Policy::Ep).unwrap().clone();
    let ll = sim
        .iter()
        .find(|r| r.policy == Policy::Llep && r.lambda() == Some(1.5))
        .unwrap()
        .clone();
    let at = |r: &ResultRow, tokens: u64, ms: f64| {
        let mut r = r.clone();
        r.tokens_per_rank = tokens;
        r.t_total_ms = ms;
        r
    };
    // EP 100 ms / LLEP 50 ms at the large batch, EP 10 / LLEP 20 at the small
    let rows = vec![
        at(&ep, 16384, 100.0),
        at(&ll, 16384, 50.0),
        at(&ll, 4096, 20.0),
        at(&ep, 4096, 10.0),
    ];
    let c = &data::speedup_curves(&rows)[0];
    assert_eq!(c.layer_steps, 1);
    assert_eq!(c.points, vec![(1.5, 110.0 / 70.0)]);
}

/// The report holds EP times for the current layer-step only while each
/// series' rows come grouped in ascending order; rows in any other order
/// are read again keeping every EP time. Either way the numbers are those
/// of the rows, not of their order.
#[test]
fn speedup_and_cdf_are_the_same_in_any_row_order() {
    let sorted = olmoe_rows(gates());
    let mut reversed = sorted.clone();
    reversed.reverse();
    // within each layer-step, LLEP and ideal rows before the EP row
    let mut ep_last = sorted.clone();
    ep_last.sort_by_key(|r| (r.step, r.layer, r.policy == Policy::Ep));
    // a long trace split by steps and given in two parts, in order
    let (a, b): (Vec<ResultRow>, Vec<ResultRow>) = sorted.iter().cloned().partition(|r| r.step < 3);
    let split: Vec<ResultRow> = a.into_iter().chain(b).collect();
    // every EP row first, then the rest: LLEP rows go back to layer-steps
    // left long ago, so their EP times must have been kept
    let mut ep_first = sorted.clone();
    ep_first.sort_by_key(|r| (r.policy != Policy::Ep, r.step, r.layer));
    let want = data::speedup_curves(&sorted);
    let want_cdf = data::imbalance_cdfs(&sorted);
    assert_eq!(want_cdf[0].ratios.len(), 18);
    for (name, rows) in [
        ("reversed", &reversed),
        ("ep last", &ep_last),
        ("split", &split),
        ("ep first", &ep_first),
    ] {
        let got = data::speedup_curves(rows);
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.layer_steps, w.layer_steps, "{name}");
            assert_eq!(g.recommended, w.recommended, "{name}");
            assert_eq!(g.points.len(), w.points.len(), "{name}");
            for (p, q) in g.points.iter().zip(&w.points) {
                assert_eq!(p.0, q.0, "{name}");
                assert!((p.1 / q.1 - 1.0).abs() < 1e-12, "{name}: {p:?} {q:?}");
            }
            let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) => (x / y - 1.0).abs() < 1e-12,
                (x, y) => x == y,
            };
            assert!(close(g.always, w.always), "{name}");
            assert!(close(g.ideal, w.ideal), "{name}");
        }
        assert_eq!(data::imbalance_cdfs(rows), want_cdf, "{name}");
    }
}

/// Past `ratios::EXACT_CAP` layer-steps a setup's ratios go to a histogram
/// of 0.1% bins: the page says so; the count, range, mean and the LLEP
/// on-share at the lambda shown stay exact, and the median is within a bin.
#[test]
fn imbalance_past_the_exact_cap_is_binned_and_says_so() {
    use llep_trace::report::ratios::{BIN_REL, EXACT_CAP};
    let sim = olmoe_rows(vec![Gate::Ratio(1.5)]);
    let base: Vec<&ResultRow> = sim.iter().filter(|r| r.policy != Policy::Ideal).collect();
    let n = EXACT_CAP + 4321;
    let mut rows = Vec::with_capacity(2 * n);
    let mut ratios = Vec::with_capacity(n);
    let mut s = 0x9e3779b97f4a7c15u64;
    for i in 0..n as u32 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let ratio = 1.0 + 2.0 * (s >> 11) as f64 / (1u64 << 53) as f64;
        ratios.push(ratio);
        for r in &base[..2] {
            let mut r = (*r).clone();
            (r.step, r.layer) = (i / 40, i % 40);
            r.imbalance_ratio = ratio;
            rows.push(r);
        }
    }
    assert_eq!(rows[0].policy, Policy::Ep);
    assert_eq!(rows[1].lambda(), Some(1.5));
    let c = &data::imbalance_cdfs(&rows)[0];
    assert!(c.ratios.binned());
    assert_eq!(c.ratios.len(), n);
    let on = ratios.iter().filter(|&&r| r >= 1.5).count();
    assert_eq!(c.on_fraction(1.5), on as f64 / n as f64);
    let mean = ratios.iter().sum::<f64>() / n as f64;
    assert!((c.ratios.mean() - mean).abs() < 1e-12);
    ratios.sort_by(f64::total_cmp);
    assert_eq!((c.ratios.min(), c.ratios.max()), (ratios[0], ratios[n - 1]));
    let (m, e) = (c.ratios.median(), ratios[n / 2]);
    assert!(m / e <= 1.0 + BIN_REL && e / m <= 1.0 + BIN_REL, "{m} {e}");

    let dir = tmp("binned");
    let input = Input::from_rows(&dir.join("big.parquet"), ResultsMeta::default(), rows);
    let w = write_report(&[input], &report_opts(), &dir.join("out"), &Silent).unwrap();
    let imb = w.sections.iter().find(|s| s.id == "imbalance").unwrap();
    assert!(
        imb.numbers[0].contains("to within 0.1%"),
        "{}",
        imb.numbers[0]
    );
    assert!(imb.numbers[0].contains(&format!("{n} layer-steps")));
    let row = &w.summary[0];
    assert_eq!(row.layer_steps, n);
    assert_eq!(row.llep_on_pct, Some(on as f64 / n as f64 * 100.0));
    assert!((row.mean_ratio - mean).abs() < 1e-12);
    std::fs::remove_dir_all(&dir).unwrap();
}
