//! `llep-trace tune`.

use super::Printer;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Arguments (not implemented yet).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(_a: TuneArgs, _p: &Printer) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`llep-trace tune` is not implemented in this build yet")
}
