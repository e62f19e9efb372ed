//! All output goes through here: results to stdout, status, warnings and
//! progress to stderr. The printer is the library's [`Progress`] too.

use llep_trace::progress::{Progress, Stderr};
use std::io::Write;

pub struct Printer {
    pub quiet: bool,
    progress: Stderr,
}

impl Printer {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            progress: Stderr::new(quiet),
        }
    }

    /// Results, to stdout.
    pub fn out(&self, text: &str) -> std::io::Result<()> {
        let mut o = std::io::stdout().lock();
        o.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            o.write_all(b"\n")?;
        }
        o.flush()
    }

    /// Status lines, to stderr, unless quiet.
    pub fn status(&self, text: &str) {
        self.progress.status(text);
    }

    /// Warnings always show.
    pub fn warn(&self, text: &str) {
        let _ = writeln!(std::io::stderr(), "warning: {text}");
    }
}

impl Progress for Printer {
    fn start(&self, what: &str, len: u64) {
        self.progress.start(what, len);
    }
    fn inc(&self, n: u64) {
        self.progress.inc(n);
    }
    fn finish(&self) {
        self.progress.finish();
    }
    fn status(&self, msg: &str) {
        self.progress.status(msg);
    }
}
