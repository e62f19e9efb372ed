//! `llep-trace replay`.

use super::Printer;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Arguments (not implemented yet).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(_a: ReplayArgs, _p: &Printer) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`llep-trace replay` is not implemented in this build yet")
}
