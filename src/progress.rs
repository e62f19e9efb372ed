//! Progress bars for long work: shown on a terminal, hidden otherwise or
//! with `--quiet`. Progress goes to stderr; results go to stdout.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar of `len` steps labelled `what`; invisible when `quiet` or when
/// stderr is not a terminal.
pub fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
        return pb;
    }
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
