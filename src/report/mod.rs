//! Reports and plots: results rows (simulated and/or measured) -> PNG and SVG
//! figures (plotters, embedded font) and an HTML + Markdown page.
//! `llep-trace report` drives [`write_report`]; `simulate --plot` and
//! `tune --plot` call [`plot_speedup_vs_lambda`] and [`plot_tune`].

pub mod data;
mod digest;
mod font;
mod page;
pub mod plots;
pub mod ratios;
mod sections;

use crate::results::Source;
use crate::results::{ResultRow, ResultsMeta};
use data::SeriesKey;
use digest::Digest;
use plots::{render, SpeedupFig};
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
    /// The rows, when held in memory; empty when the report reads them
    /// from `path` a batch at a time ([`read_input`]).
    pub rows: Vec<ResultRow>,
    /// What the page and the progress bar need of the rows.
    pub stats: InputStats,
    streamed: bool,
}

/// A results file's row count, sources, series and LLEP lambdas.
#[derive(Debug, Clone, Default)]
pub struct InputStats {
    pub rows: usize,
    pub sources: Vec<Source>,
    pub series: Vec<SeriesKey>,
    /// Bits of the numeric lambdas of its LLEP rows.
    pub llep_lambdas: Vec<u64>,
}

impl InputStats {
    fn add(&mut self, r: &ResultRow) {
        self.rows += 1;
        if !self.sources.contains(&r.source) {
            self.sources.push(r.source);
        }
        // rows of one series come in runs: compare with the last first
        if self.series.last().is_none_or(|k| !k.is(r)) && !self.series.iter().any(|k| k.is(r)) {
            self.series.push(SeriesKey::of(r));
        }
        if r.policy == crate::plan::Policy::Llep {
            if let Some(l) = r.lambda() {
                if !self.llep_lambdas.contains(&l.to_bits()) {
                    self.llep_lambdas.push(l.to_bits());
                }
            }
        }
    }
}

impl Input {
    /// An input whose rows are held in memory.
    pub fn from_rows(path: &Path, meta: ResultsMeta, rows: Vec<ResultRow>) -> Self {
        let mut stats = InputStats::default();
        rows.iter().for_each(|r| stats.add(r));
        Self {
            path: path.to_path_buf(),
            meta,
            rows,
            stats,
            streamed: false,
        }
    }

    /// Whether the input has LLEP rows at lambda `l`.
    pub fn has_llep_at(&self, l: f64) -> bool {
        self.stats.llep_lambdas.contains(&l.to_bits())
    }

    /// Hand every row to `f`, in file order, a batch at a time.
    fn each_row(&self, f: &mut dyn FnMut(&ResultRow)) -> Result<(), ReportError> {
        if !self.streamed {
            self.rows.iter().for_each(f);
            return Ok(());
        }
        crate::results::for_each_results_batch(&self.path, &mut |b| {
            b.iter().for_each(&mut *f);
            Ok(())
        })?;
        Ok(())
    }
}

/// Check one results file and read what the page needs of it; its rows
/// are read again, a batch at a time, when the report is written.
pub fn read_input(path: &Path) -> Result<Input, ReportError> {
    let mut stats = InputStats::default();
    let meta = crate::results::for_each_results_batch(path, &mut |b| {
        b.iter().for_each(|r| stats.add(r));
        Ok(())
    })?;
    if stats.rows == 0 {
        return Err(ReportError::NoData(format!(
            "{}: the results file has no rows",
            path.display()
        )));
    }
    Ok(Input {
        path: path.to_path_buf(),
        meta,
        rows: vec![],
        stats,
        streamed: true,
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

const FIG_LIMIT: usize = 6;

/// Draw every figure and write `index.html` and `summary.md` into `out`.
/// Everything is drawn in a staging folder inside `out` and moved into
/// place only when all of it succeeded. `progress` advances once per figure.
pub fn write_report(
    inputs: &[Input],
    opts: &ReportOptions,
    out: &Path,
    progress: &dyn crate::progress::Progress,
) -> Result<Written, ReportError> {
    let digest = digest_inputs(inputs, opts.lambda)?;
    if digest.len() == 0 {
        return Err(ReportError::NoData("no result rows in the inputs".into()));
    }
    let (rows, policies) = kept_rows(inputs, &digest)?;
    std::fs::create_dir_all(out).map_err(|e| ReportError::Io(out.to_path_buf(), e))?;
    let stage = out.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| ReportError::Io(stage.clone(), e))?;
    let res = build(inputs, digest, (&rows, policies), opts, &stage, progress);
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

/// Every input's rows fed to one [`Digest`], a batch at a time, then put
/// in page order: scenarios in the order the user gave them (the
/// `--synthetic` lists of the commands that made the files, else first
/// appearance; "balanced", the baseline, first), see [`data::in_user_order`].
///
/// The digest first holds only each series' current layer-step's EP times
/// (rows grouped by layer-step in ascending order, as `simulate` and `tune`
/// write them); if some series' rows are not in that order the rows are
/// fed again to a digest that keeps every EP time. The LLEP on-share is
/// counted exactly at every lambda of the inputs and at `user_lambda`.
fn digest_inputs(inputs: &[Input], user_lambda: Option<f64>) -> Result<Digest, ReportError> {
    let mut gates: Vec<f64> = user_lambda.into_iter().collect();
    for i in inputs {
        gates.extend(i.stats.llep_lambdas.iter().map(|&b| f64::from_bits(b)));
    }
    let mut d = Digest::windowed(&gates);
    for i in inputs {
        i.each_row(&mut |r| d.add(r))?;
        if d.broken() {
            d = Digest::keeping(&gates);
            for i in inputs {
                i.each_row(&mut |r| d.add(r))?;
            }
            break;
        }
    }
    let commands: Vec<&str> = inputs.iter().map(|i| i.meta.command.as_str()).collect();
    d.order(Some(&commands));
    Ok(d)
}

/// What the accuracy plot and the policy comparison read, in page order:
/// the measured rows and the simulated rows that share a [`data::PairKey`]
/// with one of them (the accuracy plot pairs them layer-step by
/// layer-step), and, where EPLB policies appear, the policy comparison's
/// running totals ([`plots::PolicyAcc`]). Measured rows are few (each is a
/// timed run on a GPU); simulated inputs hold none of their rows here.
/// With measured rows the inputs are read twice: for the measured rows'
/// keys, then for their simulated twins.
fn kept_rows(
    inputs: &[Input],
    d: &Digest,
) -> Result<(Vec<ResultRow>, Option<plots::PolicyFig>), ReportError> {
    if d.measured == 0 && !d.eplb {
        return Ok((vec![], None));
    }
    let mut policies = d.eplb.then(plots::PolicyAcc::default);
    let mut kept: Vec<(usize, ResultRow)> = vec![];
    let mut idx = 0usize;
    for i in inputs {
        i.each_row(&mut |r| {
            let rank = d.rank(r);
            if let Some(p) = &mut policies {
                p.add(r, (rank, idx));
            }
            if r.source == Source::Measured {
                kept.push((idx, r.clone()));
            }
            idx += 1;
        })?;
    }
    if !kept.is_empty() {
        let keys: std::collections::HashSet<data::PairKey> =
            kept.iter().map(|(_, r)| data::pair_key(r)).collect();
        let mut idx = 0usize;
        for i in inputs {
            i.each_row(&mut |r| {
                if r.source == Source::Simulated && keys.contains(&data::pair_key(r)) {
                    kept.push((idx, r.clone()));
                }
                idx += 1;
            })?;
        }
    }
    kept.sort_by_key(|(i, r)| (d.rank(r), *i));
    let rows = kept.into_iter().map(|k| k.1).collect();
    Ok((rows, policies.and_then(plots::PolicyAcc::finish)))
}

/// Number of figure files `write_report` will draw (for a progress bar).
pub fn figure_count(inputs: &[Input]) -> usize {
    let mut keys: Vec<&SeriesKey> = inputs.iter().flat_map(|i| &i.stats.series).collect();
    keys.sort();
    keys.dedup();
    let series = keys.len().min(FIG_LIMIT);
    let measured = inputs
        .iter()
        .any(|i| i.stats.sources.contains(&Source::Measured)) as usize;
    // heatmaps, then CDF, speedup, phases, memory, and the accuracy plot
    // when there are measured rows; each as PNG and SVG
    (series + 4 + measured) * 2
}

fn build(
    inputs: &[Input],
    digest: Digest,
    kept: (&[ResultRow], Option<plots::PolicyFig>),
    opts: &ReportOptions,
    stage: &Path,
    progress: &dyn crate::progress::Progress,
) -> Result<Written, ReportError> {
    let mut b = sections::Build::new(inputs, digest, kept, opts, stage, progress);
    let sections = b.sections()?;
    let summary = b.summary();
    let mut files = std::mem::take(&mut b.files);
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

/// The card capacity used for a series (exposed for tests and notebooks).
pub fn card_capacity(key: &SeriesKey, metas: &[&ResultsMeta]) -> Option<u64> {
    sections::card_bytes(key, metas).map(|c| c.0)
}
