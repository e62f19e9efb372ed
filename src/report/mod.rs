//! Reports and plots: results rows (simulated and/or measured) -> PNG and SVG
//! figures (plotters, embedded font) and an HTML + Markdown page.
//! `llep-trace report` drives [`write_report`]; `simulate --plot` and
//! `tune --plot` call [`plot_speedup_vs_lambda`] and [`plot_tune`].

pub mod data;
mod font;
mod page;
pub mod plots;

use crate::results::{ResultRow, ResultsMeta};
use crate::sim::Profile;
use data::{SeriesKey, SetupKey};
use plots::{render, CdfFig, HeatmapFig, MemoryFig, PhaseFig, ScatterFig, SpeedupFig};
use std::path::{Path, PathBuf};

pub use font::FAMILY;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: drawing failed: {1}")]
    Draw(PathBuf, String),
    #[error("{0}: plot files must end in .png or .svg")]
    Extension(PathBuf),
    #[error("{0}")]
    NoData(String),
    #[error(transparent)]
    Results(#[from] crate::results::ResultsError),
}

/// Speedup of LLEP over EP against lambda for every series in `rows`
/// (simulated as lines, measured as points), ideal and "always" as
/// horizontal lines. PNG or SVG by `out`'s extension.
pub fn plot_speedup_vs_lambda(rows: &[ResultRow], out: &Path) -> Result<(), ReportError> {
    let curves = data::speedup_curves(rows);
    if curves.is_empty() {
        return Err(ReportError::NoData(
            "nothing to plot: speedup against lambda needs EP rows and LLEP rows of the same setup"
                .into(),
        ));
    }
    render(
        &SpeedupFig {
            curves,
            title: "LLEP speedup over EP against λ".into(),
            recommended: None,
            regret: false,
            with_knobs: data::knobs_vary(rows),
        },
        out,
    )
}

/// `tune`'s plot: speedup over EP and regret (time over the best lambda, %)
/// against lambda, with the recommended lambda marked. `recommended = None`
/// marks the lambda with the least simulated total time.
pub fn plot_tune(
    rows: &[ResultRow],
    recommended: Option<f64>,
    out: &Path,
) -> Result<(), ReportError> {
    let curves = data::speedup_curves(rows);
    if curves.iter().all(|c| c.points.is_empty()) {
        return Err(ReportError::NoData(
            "nothing to plot: tuning needs EP rows and LLEP rows at numeric lambdas".into(),
        ));
    }
    let rec = recommended.or_else(|| {
        curves
            .iter()
            .find(|c| !c.key.measured())
            .or(curves.first())
            .and_then(|c| c.best().map(|b| b.0))
    });
    render(
        &SpeedupFig {
            curves,
            title: "Tuning λ: speedup over EP and regret".into(),
            recommended: rec,
            regret: true,
            with_knobs: data::knobs_vary(rows),
        },
        out,
    )
}

/// One results file given to the report.
#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    pub meta: ResultsMeta,
    pub rows: Vec<ResultRow>,
}

/// Read one results file.
pub fn read_input(path: &Path) -> Result<Input, ReportError> {
    let (meta, rows) = crate::results::read_results(path)?;
    if rows.is_empty() {
        return Err(ReportError::NoData(format!(
            "{}: the results file has no rows",
            path.display()
        )));
    }
    Ok(Input {
        path: path.to_path_buf(),
        meta,
        rows,
    })
}

#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    pub title: String,
    /// Show LLEP at this lambda; default: the best simulated lambda per setup.
    pub lambda: Option<f64>,
    /// The command that made the report, printed on the page.
    pub command: String,
    /// Extra lines for "How this report was made" (e.g. the simulate commands).
    pub notes: Vec<String>,
}

/// One section of the page: a figure (PNG + SVG) or the reason there is none.
#[derive(Debug, Clone)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub caption: String,
    /// File stems written (each as .png and .svg), beside the page.
    pub figures: Vec<String>,
    /// Why there is no figure, when there is none.
    pub missing: Option<String>,
    /// Numbers read off the data, for the reader to check the figure with.
    pub numbers: Vec<String>,
}

/// A row of the summary table.
#[derive(Debug, Clone)]
pub struct SummaryRow {
    pub series: String,
    pub layer_steps: usize,
    pub mean_ratio: f64,
    pub lambda: Option<f64>,
    pub llep_on_pct: Option<f64>,
    pub speedup: Option<f64>,
    pub always: Option<f64>,
    pub ideal: Option<f64>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub sections: Vec<Section>,
    pub summary: Vec<SummaryRow>,
}

/// Card memory per series: the profile a simulation used (from the results
/// metadata, else the built-in of that name); for measured rows the
/// built-in profile whose card matches the device.
fn card_bytes(key: &SeriesKey, metas: &[&ResultsMeta]) -> Option<(u64, String)> {
    let builtins: Vec<Profile> = ["h100", "h200"]
        .iter()
        .filter_map(|n| Profile::load(n).ok())
        .collect();
    if key.measured() {
        let dev = key.origin.to_ascii_uppercase();
        return builtins
            .iter()
            .find(|p| {
                p.card.eq_ignore_ascii_case(&key.origin)
                    || dev.contains(&p.name.to_ascii_uppercase())
            })
            .map(|p| {
                (
                    p.gpu_mem_bytes,
                    format!("built-in {} profile ({})", p.name, p.card),
                )
            });
    }
    for m in metas {
        if let Some(p) = m
            .profile
            .as_ref()
            .and_then(|v| serde_json::from_value::<Profile>(v.clone()).ok())
        {
            if p.name == key.origin {
                return Some((p.gpu_mem_bytes, format!("profile {} ({})", p.name, p.card)));
            }
        }
    }
    builtins.iter().find(|p| p.name == key.origin).map(|p| {
        (
            p.gpu_mem_bytes,
            format!("built-in {} profile ({})", p.name, p.card),
        )
    })
}

const FIG_LIMIT: usize = 6;

/// Draw every figure and write `index.html` and `summary.md` into `out`.
/// Everything is drawn in a staging folder inside `out` and moved into
/// place only when all of it succeeded. `tick` is called once per figure.
pub fn write_report(
    inputs: &[Input],
    opts: &ReportOptions,
    out: &Path,
    tick: &dyn Fn(&str),
) -> Result<Written, ReportError> {
    let rows: Vec<ResultRow> = inputs.iter().flat_map(|i| i.rows.iter().cloned()).collect();
    if rows.is_empty() {
        return Err(ReportError::NoData("no result rows in the inputs".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| ReportError::Io(out.to_path_buf(), e))?;
    let stage = out.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| ReportError::Io(stage.clone(), e))?;
    let res = build(inputs, &rows, opts, &stage, tick);
    let res = res.and_then(|mut w| {
        let mut moved = vec![];
        for f in &w.files {
            let name = f.file_name().unwrap_or_default();
            let dest = out.join(name);
            std::fs::rename(f, &dest).map_err(|e| ReportError::Io(dest.clone(), e))?;
            moved.push(dest);
        }
        remove_stale_figures(out, &moved);
        w.files = moved;
        w.dir = out.to_path_buf();
        Ok(w)
    });
    let _ = std::fs::remove_dir_all(&stage);
    res
}

/// Figures an earlier report left in `out` that this one did not draw
/// (fewer heatmaps, no accuracy plot) would sit beside a page that no
/// longer mentions them; remove them. Only names this module writes.
fn remove_stale_figures(out: &Path, keep: &[PathBuf]) {
    let ours = |name: &str| {
        let stem = name
            .strip_suffix(".png")
            .or_else(|| name.strip_suffix(".svg"));
        stem.is_some_and(|s| {
            s.starts_with("load_heatmap_")
                || [
                    "imbalance_cdf",
                    "speedup_vs_lambda",
                    "phases",
                    "memory",
                    "sim_vs_measured",
                ]
                .contains(&s)
        })
    };
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if ours(&name) && !keep.contains(&p) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Number of figure files `write_report` will draw (for a progress bar).
pub fn figure_count(inputs: &[Input]) -> usize {
    let rows: Vec<ResultRow> = inputs.iter().flat_map(|i| i.rows.iter().cloned()).collect();
    let series = data::by_series(&rows).len().min(FIG_LIMIT);
    let measured = rows
        .iter()
        .any(|r| r.source == crate::results::Source::Measured) as usize;
    // heatmaps, then CDF, speedup, phases, memory, and the accuracy plot
    // when there are measured rows; each as PNG and SVG
    (series + 4 + measured) * 2
}

fn fig(
    stage: &Path,
    stem: &str,
    f: &impl plots::Figure,
    files: &mut Vec<PathBuf>,
    tick: &dyn Fn(&str),
) -> Result<(), ReportError> {
    for ext in ["png", "svg"] {
        let p = stage.join(format!("{stem}.{ext}"));
        render(f, &p)?;
        tick(&format!("{stem}.{ext}"));
        files.push(p);
    }
    Ok(())
}

fn gib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0 * 1024.0)
}

fn build(
    inputs: &[Input],
    rows: &[ResultRow],
    opts: &ReportOptions,
    stage: &Path,
    tick: &dyn Fn(&str),
) -> Result<Written, ReportError> {
    let knobs = data::knobs_vary(rows);
    let curves = data::speedup_curves(rows);
    let lambda_of = |s: &SetupKey| data::chosen_lambda(&curves, s, opts.lambda);
    let metas: Vec<&ResultsMeta> = inputs.iter().map(|i| &i.meta).collect();
    let mut files = vec![];
    let mut sections = vec![];
    let series = data::by_series(rows);
    let cdfs = data::imbalance_cdfs(rows);

    // 1. Heatmaps.
    {
        let mut s = Section {
            id: "load".into(),
            title: "Per-GPU load over steps and layers: EP against LLEP".into(),
            caption: "Each cell is one GPU in one layer-step; colour is its token-copies divided by the planner's capacity ⌊α·(total div P)⌋ for that layer-step. Blues stay under capacity; oranges and reds are over it, with the capacity marked as the black line on the colour bar. Top: EP (every copy on its native GPU). Bottom: what each GPU computes under LLEP at the λ shown.".into(),
            figures: vec![],
            missing: None,
            numbers: vec![],
        };
        let mut drawn = 0;
        for (i, (key, rs)) in series.iter().enumerate() {
            if drawn == FIG_LIMIT {
                s.numbers.push(format!(
                    "{} more series not drawn (at most {FIG_LIMIT} heatmaps per page).",
                    series.len() - FIG_LIMIT
                ));
                break;
            }
            let Some(h) = data::heatmap(rs, key, lambda_of(&key.setup)) else {
                continue;
            };
            let stem = format!("load_heatmap_{}", i + 1);
            let (c, e) = (h.columns[0], &h.ep_raw[0]);
            let peak_ep = h.ep.iter().flatten().copied().fold(0.0f64, f64::max);
            let peak_ll = h.llep.iter().flatten().copied().fold(0.0f64, f64::max);
            s.numbers.push(format!(
                "{}: step {} layer {}: capacity {} token-copies; EP loads per GPU {:?}; LLEP {} loads {:?}. Peak load/capacity: EP {:.3}, LLEP {:.3}.",
                key.label(knobs),
                c.0,
                c.1,
                h.capacity[0],
                e,
                data::lambda_label(h.lambda),
                h.llep_raw[0],
                peak_ep,
                peak_ll
            ));
            if h.columns.len() == data::HEATMAP_MAX_COLUMNS {
                s.numbers.push(format!(
                    "{}: only the first {} layer-steps are drawn.",
                    key.label(knobs),
                    data::HEATMAP_MAX_COLUMNS
                ));
            }
            let title = format!("Per-GPU load · {}", key.label(knobs));
            fig(
                stage,
                &stem,
                &HeatmapFig {
                    map: h,
                    title,
                    with_knobs: knobs,
                },
                &mut files,
                tick,
            )?;
            s.figures.push(stem);
            drawn += 1;
        }
        if s.figures.is_empty() {
            s.missing = Some("No series has both EP rows and LLEP rows with per-GPU loads, so there is no EP/LLEP load map to draw.".into());
        }
        sections.push(s);
    }

    // 2. Imbalance CDF.
    {
        let mut s = Section {
            id: "imbalance".into(),
            title: "How often would LLEP switch on? Distribution of max/mean load".into(),
            caption: "Cumulative distribution of the max/mean native GPU load over all layer-steps of each input (EP placement). LLEP plans a layer-step when its ratio is at least λ, so the share of layer-steps right of the dashed λ line is how often LLEP switches on.".into(),
            figures: vec![],
            missing: None,
            numbers: vec![],
        };
        let with_l: Vec<(data::ImbalanceCdf, Option<f64>)> = cdfs
            .iter()
            .map(|c| (c.clone(), lambda_of(&c.setup)))
            .collect();
        for (c, l) in &with_l {
            let n = c.ratios.len();
            let median = c.ratios[n / 2];
            let mut line = format!(
                "{}: {} layer-steps, max/mean from {:.3} to {:.3} (median {:.3})",
                c.setup.label(knobs),
                n,
                c.ratios[0],
                c.ratios[n - 1],
                median
            );
            if let Some(l) = l {
                line.push_str(&format!(
                    "; at {} LLEP is on in {:.1}% of layer-steps",
                    data::lambda_label(Some(*l)),
                    c.on_fraction(*l) * 100.0
                ));
            }
            s.numbers.push(line + ".");
        }
        if with_l.is_empty() {
            s.missing = Some("No layer-steps in the inputs.".into());
        } else {
            fig(
                stage,
                "imbalance_cdf",
                &CdfFig {
                    cdfs: with_l,
                    title: "Max/mean GPU load over all layer-steps".into(),
                    with_knobs: knobs,
                },
                &mut files,
                tick,
            )?;
            s.figures.push("imbalance_cdf".into());
        }
        sections.push(s);
    }

    // 3. Speedup against lambda.
    {
        let mut s = Section {
            id: "speedup".into(),
            title: "Speedup over EP against λ".into(),
            caption: "Total layer time of EP divided by that of LLEP at each λ, summed over the same layer-steps. Simulated results are lines, measured results points (with the p10-p90 spread of their timed runs where recorded). Dashed: LLEP with no gate; dotted: the ideal-balance bound.".into(),
            figures: vec![],
            missing: None,
            numbers: vec![],
        };
        for c in &curves {
            let mut line = format!("{}:", c.key.label(knobs));
            if let Some((l, sp)) = c.best() {
                line.push_str(&format!(
                    " best {} gives {sp:.4}× over EP",
                    data::lambda_label(Some(l))
                ));
            }
            if let (Some(f), Some(l)) = (c.points.first(), c.points.last()) {
                line.push_str(&format!(
                    "; {} gives {:.4}×, {} gives {:.4}×",
                    data::lambda_label(Some(f.0)),
                    f.1,
                    data::lambda_label(Some(l.0)),
                    l.1
                ));
            }
            if let Some(a) = c.always {
                line.push_str(&format!("; no gate {a:.4}×"));
            }
            if let Some(b) = c.ideal {
                line.push_str(&format!("; ideal {b:.4}×"));
            }
            s.numbers.push(line + ".");
        }
        if curves.is_empty() {
            s.missing =
                Some("No series has both EP and LLEP rows, so there is no speedup to plot.".into());
        } else {
            if !curves.iter().any(|c| c.key.measured()) {
                s.numbers.push(
                    "No measured rows in the inputs: only simulated curves are drawn.".into(),
                );
            }
            fig(
                stage,
                "speedup_vs_lambda",
                &SpeedupFig {
                    curves: curves.clone(),
                    title: "LLEP speedup over EP against λ".into(),
                    recommended: None,
                    regret: false,
                    with_knobs: knobs,
                },
                &mut files,
                tick,
            )?;
            s.figures.push("speedup_vs_lambda".into());
        }
        sections.push(s);
    }

    // 4. Phases.
    {
        let bars = data::phase_bars(rows, &lambda_of);
        let mut s = Section {
            id: "phases".into(),
            title: "Where the time goes: per-phase time per policy".into(),
            caption: "Mean time per layer-step in each phase (overhead, dispatch, weight transfer, compute, combine) for EP, LLEP at the λ shown, and the ideal bound. Dispatch and weight transfer overlap (the layer waits for the longer), so the black tick, the layer time, can end before the stack does.".into(),
            figures: vec![],
            missing: None,
            numbers: vec![],
        };
        for b in &bars {
            s.numbers.push(format!(
                "{} · {}: {} layer-steps, mean layer time {:.4} ms (overhead {:.4}, dispatch {:.4}, weight transfer {:.4}, compute {:.4}, combine {:.4}).",
                b.key.label(knobs),
                b.policy_label(),
                b.layer_steps,
                b.total_ms,
                b.phases_ms[0],
                b.phases_ms[1],
                b.phases_ms[2],
                b.phases_ms[3],
                b.phases_ms[4]
            ));
        }
        if bars.is_empty() {
            s.missing = Some("No rows with phase times.".into());
        } else {
            let bars = bars.into_iter().take(36).collect();
            fig(
                stage,
                "phases",
                &PhaseFig {
                    bars,
                    title: "Mean per-phase time per layer-step".into(),
                    with_knobs: knobs,
                },
                &mut files,
                tick,
            )?;
            s.figures.push("phases".into());
        }
        sections.push(s);
    }

    // 5. Memory.
    {
        let mut panels = data::memory_panels(rows, &lambda_of);
        let mut s = Section {
            id: "memory".into(),
            title: "Peak memory per GPU against the card's capacity".into(),
            caption: "Peak memory of each GPU (max over layer-steps): native expert weights, received foreign weights, token buffers and activations; EP against LLEP at the λ shown. The card's capacity is the dashed line, or stated above the chart when the bars would be invisible beside it.".into(),
            figures: vec![],
            missing: None,
            numbers: vec![],
        };
        for p in &mut panels {
            let cap = card_bytes(&p.key, &metas);
            p.card_bytes = cap.as_ref().map(|c| c.0);
            let mx = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
            s.numbers.push(format!(
                "{}: peak EP {:.3} GiB (GPU {}), LLEP {} {:.3} GiB (GPU {}); card {}; out of memory in {} layer-steps under EP and {} under LLEP.",
                p.key.label(knobs),
                gib(mx(&p.ep)),
                argmax(&p.ep),
                data::lambda_label(p.lambda),
                gib(mx(&p.llep)),
                argmax(&p.llep),
                match &cap {
                    Some((b, src)) => format!("{:.1} GiB from the {src}", gib(*b)),
                    None => "capacity unknown".into(),
                },
                p.ep_oom_rows,
                p.oom_rows
            ));
        }
        if panels.is_empty() {
            s.missing = Some("No series has both EP and LLEP rows with memory figures.".into());
        } else {
            let panels = panels.into_iter().take(FIG_LIMIT).collect();
            fig(
                stage,
                "memory",
                &MemoryFig {
                    panels,
                    title: "Peak memory per GPU".into(),
                    with_knobs: knobs,
                },
                &mut files,
                tick,
            )?;
            s.figures.push("memory".into());
        }
        sections.push(s);
    }

    // 6. Simulated against measured.
    {
        let pairs = data::sim_measured_pairs(rows);
        let measured = rows
            .iter()
            .filter(|r| r.source == crate::results::Source::Measured)
            .count();
        let mut s = Section {
            id: "accuracy".into(),
            title: "Simulated against measured layer time".into(),
            caption: "Each point is one measured layer-step under one policy and λ, against the simulation of the same layer-step, setup and policy. On the dashed y = x line the simulation is exact; the dotted lines are measured = simulated × 1.2 and ÷ 1.2. Error = (simulated − measured) / measured.".into(),
            figures: vec![],
            missing: None,
            numbers: vec![],
        };
        match data::error_stats(&pairs) {
            None if measured == 0 => {
                s.missing = Some("No measured rows in the inputs. Give the results of `llep-trace replay` together with their simulated twins to draw this plot.".into());
            }
            None => {
                s.missing = Some(format!("{measured} measured rows, but none has a simulated twin (same trace, scenario, GPUs, α, m, step, layer, policy and λ) in the inputs; simulate the same trace and settings and pass both files."));
            }
            Some((med, worst)) => {
                s.numbers.push(format!(
                    "{} matched layer-steps ({} measured rows in all): median |error| {med:.2}%, worst {worst:.2}%.",
                    pairs.len(),
                    measured
                ));
                for p in pairs.iter().take(2) {
                    s.numbers.push(format!(
                        "step {} layer {} {} {}: simulated {:.4} ms ({} profile), measured {:.4} ms on {} (error {:+.1}%).",
                        p.step,
                        p.layer,
                        p.policy,
                        if p.policy == "llep" { data::lambda_label(p.lambda) } else { String::new() },
                        p.simulated_ms,
                        p.profile,
                        p.measured_ms,
                        p.device,
                        p.rel_error() * 100.0
                    ));
                }
                fig(
                    stage,
                    "sim_vs_measured",
                    &ScatterFig {
                        title: format!(
                            "Simulated vs measured layer time: median |error| {med:.1}%, worst {worst:.1}%"
                        ),
                        pairs,
                    },
                    &mut files,
                    tick,
                )?;
                s.figures.push("sim_vs_measured".into());
            }
        }
        sections.push(s);
    }

    // Summary.
    let mut summary = vec![];
    for (key, rs) in &series {
        let lam = lambda_of(&key.setup);
        let c = curves.iter().find(|c| &c.key == key);
        let cdf = cdfs.iter().find(|c| c.setup == key.setup);
        let n_ls = {
            let mut v: Vec<(u32, u32)> = rs.iter().map(|r| (r.step, r.layer)).collect();
            v.sort();
            v.dedup();
            v.len()
        };
        summary.push(SummaryRow {
            series: key.label(knobs),
            layer_steps: n_ls,
            mean_ratio: cdf.map_or(f64::NAN, |c| {
                c.ratios.iter().sum::<f64>() / c.ratios.len().max(1) as f64
            }),
            lambda: lam,
            llep_on_pct: match (cdf, lam) {
                (Some(c), Some(l)) => Some(c.on_fraction(l) * 100.0),
                (Some(_), None) => Some(100.0),
                _ => None,
            },
            speedup: c.and_then(|c| match lam {
                Some(l) => c.points.iter().find(|p| p.0 == l).map(|p| p.1),
                None => c.always,
            }),
            always: c.and_then(|c| c.always),
            ideal: c.and_then(|c| c.ideal),
        });
    }

    let html = page::html(inputs, opts, &sections, &summary);
    let md = page::markdown(inputs, opts, &sections, &summary);
    for (name, text) in [("index.html", html), ("summary.md", md)] {
        let p = stage.join(name);
        crate::io::write_atomic(&p, text.as_bytes()).map_err(|e| ReportError::Io(p.clone(), e))?;
        files.push(p);
    }
    Ok(Written {
        dir: stage.to_path_buf(),
        files,
        sections,
        summary,
    })
}

fn argmax(v: &[u64]) -> usize {
    v.iter()
        .enumerate()
        .max_by_key(|(i, x)| (**x, std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i)
}

/// The card capacity used for a series (exposed for tests and notebooks).
pub fn card_capacity(key: &SeriesKey, metas: &[&ResultsMeta]) -> Option<u64> {
    card_bytes(key, metas).map(|c| c.0)
}
