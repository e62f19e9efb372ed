//! `llep-trace report`: results files (simulated and/or measured) -> a
//! folder with an HTML page, a Markdown summary and PNG + SVG plots.

use super::Printer;
use anyhow::{bail, Context};
use clap::Args;
use llep_trace::progress::Progress;
use llep_trace::report::{figure_count, read_input, write_report, ReportOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Results files (Parquet) from `simulate --out` or `replay --out`;
    /// simulated and measured rows may be mixed.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Folder to write index.html, summary.md and the plots into.
    #[arg(long)]
    pub out: PathBuf,
    /// Show LLEP at this lambda (default: the best simulated lambda of each setup).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Page title.
    #[arg(long, default_value = "llep-trace report: EP against LLEP")]
    pub title: String,
    /// A line to add under "how this report was made" (repeatable).
    #[arg(long)]
    pub note: Vec<String>,
}

pub fn run(a: ReportArgs, p: &Printer) -> anyhow::Result<ExitCode> {
    if let Some(l) = a.lambda {
        if !(l.is_finite() && l > 0.0) {
            bail!("--lambda must be a number > 0 (got {l})");
        }
    }
    // Read and check every input before writing anything.
    p.start("reading", a.results.len() as u64);
    let mut inputs = Vec::with_capacity(a.results.len());
    for path in &a.results {
        match read_input(path) {
            Ok(i) => inputs.push(i),
            // A trace is the most likely wrong input: say what to run.
            Err(_) if llep_trace::trace::parquet_io::read_meta(path).is_ok() => bail!(
                "{}: this is a trace, not a results file; run `llep-trace simulate --trace {} --ratio always,1.0:3.0:0.05 --out results.parquet` and report on that",
                path.display(),
                path.display()
            ),
            Err(e) => return Err(e.into()),
        }
        p.inc(1);
    }
    p.finish();
    if let Some(l) = a.lambda {
        let present = inputs.iter().any(|i| i.has_llep_at(l));
        if !present {
            p.warn(&format!(
                "no LLEP rows at λ={l} in the inputs; the plots show the nearest λ each setup has"
            ));
        }
    }
    let opts = ReportOptions {
        title: a.title.clone(),
        lambda: a.lambda,
        command: quoted_command_line(),
        notes: a.note.clone(),
    };
    p.start("plotting", figure_count(&inputs) as u64);
    let written = write_report(&inputs, &opts, &a.out, p)
        .with_context(|| format!("writing the report into {}", a.out.display()))?;
    p.finish();
    for s in &written.sections {
        if let Some(m) = &s.missing {
            p.status(&format!("{}: no plot: {m}", s.title));
        }
    }
    p.status(&format!(
        "wrote {} files into {}",
        written.files.len(),
        written.dir.display()
    ));
    p.out(&written.dir.join("index.html").display().to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// The command line, quoted so it can be pasted back into a POSIX shell.
fn quoted_command_line() -> String {
    std::env::args()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
