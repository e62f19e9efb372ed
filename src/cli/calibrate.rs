//! `llep-trace calibrate`.

use super::Printer;
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Arguments (not implemented yet).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(_a: CalibrateArgs, _p: &Printer) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`llep-trace calibrate` is not implemented in this build yet")
}
