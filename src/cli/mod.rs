//! Command-line front: clap arguments, resolved into library settings, one
//! file per subcommand. The library never sees clap types.

mod calibrate;
mod capture;
mod compare;
mod gemm_bench;
mod plan;
mod printer;
mod replay;
mod report;
mod routing_export;
mod settings;
mod simulate;
mod table;
mod tune;
mod tune_eplb;

use clap::{Parser, Subcommand};
pub use printer::Printer;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "llep-trace",
    version,
    about = "Record MoE routing, simulate and replay standard EP against Least-Loaded EP (LLEP), and tune MOE_ADAPTIVE_LPT_ROUTING_RATIO",
    long_about = None
)]
struct Cli {
    /// No progress bars or status lines (results still go to stdout).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Turn recorded routing (counts, per-token ids, router logits, engine dumps) into a trace.
    Capture(capture::CaptureArgs),
    /// Show what the planner does with one layer's expert counts.
    Plan(plan::PlanArgs),
    /// Simulate EP, LLEP and the ideal bound over a trace with a hardware profile.
    Simulate(simulate::SimulateArgs),
    /// Run EP and LLEP MoE layers on real GPUs and measure them.
    Replay(replay::ReplayArgs),
    /// Measure a hardware profile on the GPUs of this machine.
    Calibrate(calibrate::CalibrateArgs),
    /// Sweep lambda (and alpha, m) over a trace and recommend a setting.
    Tune(tune::TuneArgs),
    /// Simulate the twin of every measured row and report the simulator's error.
    Compare(compare::CompareArgs),
    /// Draw plots and write an HTML/Markdown report from results files.
    Report(report::ReportArgs),
    /// Time the expert GEMMs alone through each GEMM path (one GPU).
    #[command(hide = true)]
    GemmBench(gemm_bench::GemmBenchArgs),
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let printer = Printer::new(cli.quiet);
    match cli.command {
        Command::Capture(a) => capture::run(a, &printer),
        Command::Plan(a) => plan::run(a, &printer),
        Command::Simulate(a) => simulate::run(a, &printer),
        Command::Replay(a) => replay::run(a, &printer),
        Command::Calibrate(a) => calibrate::run(a, &printer),
        Command::Tune(a) => tune::run(a, &printer),
        Command::Compare(a) => compare::run(a, &printer),
        Command::Report(a) => report::run(a, &printer),
        Command::GemmBench(a) => gemm_bench::run(a, &printer),
    }
}
