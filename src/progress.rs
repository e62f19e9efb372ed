//! Progress of long work, one abstraction for every command: the library
//! reports stages, counts and status lines to a [`Progress`]; the CLI's
//! printer draws them on stderr (a bar on a terminal, nothing with
//! `--quiet`), and tests pass [`Silent`]. Results never go through here.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

/// Where the library reports what it is doing.
pub trait Progress: Sync {
    /// Begin a counted stage of `len` steps, named `what` (replaces the
    /// previous stage).
    fn start(&self, what: &str, len: u64);
    /// Advance the current stage.
    fn inc(&self, n: u64);
    /// End the current stage and clear its bar.
    fn finish(&self);
    /// One status line.
    fn status(&self, msg: &str);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
    fn finish(&self) {}
    fn status(&self, _: &str) {}
}

/// Bars and status lines on stderr; bars only when stderr is a terminal,
/// nothing at all when `quiet`.
#[derive(Debug, Default)]
pub struct Stderr {
    pub quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Stderr {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            bar: Mutex::new(None),
        }
    }

    fn current(&self) -> Option<ProgressBar> {
        self.bar.lock().ok().and_then(|b| b.clone())
    }
}

impl Progress for Stderr {
    fn start(&self, what: &str, len: u64) {
        let pb = bar(len, what, self.quiet);
        if let Ok(mut b) = self.bar.lock() {
            if let Some(old) = b.replace(pb) {
                old.finish_and_clear();
            }
        }
    }

    fn inc(&self, n: u64) {
        if let Some(b) = self.current() {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().ok().and_then(|mut b| b.take()) {
            b.finish_and_clear();
        }
    }

    fn status(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match self.current() {
            Some(b) => b.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }
}

/// A [`Progress`] an options struct can carry (cloned, shared between
/// threads); reports nothing unless set.
#[derive(Clone, Default)]
pub struct Reporter(Option<std::sync::Arc<dyn Progress + Send + Sync>>);

impl Reporter {
    /// Bars and status lines on stderr (none when `quiet`).
    pub fn stderr(quiet: bool) -> Self {
        Reporter(Some(std::sync::Arc::new(Stderr::new(quiet))))
    }

    pub fn get(&self) -> &dyn Progress {
        match &self.0 {
            Some(p) => p.as_ref(),
            None => &Silent,
        }
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Reporter(stderr)"
        } else {
            "Reporter(silent)"
        })
    }
}

/// A bar of `len` steps labelled `what`; invisible when `quiet` or when
/// stderr is not a terminal.
fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
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
