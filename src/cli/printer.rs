//! All output goes through here: results to stdout, status to stderr.

use std::io::Write;

pub struct Printer {
    pub quiet: bool,
}

impl Printer {
    pub fn new(quiet: bool) -> Self {
        Self { quiet }
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
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }

    /// Warnings always show.
    pub fn warn(&self, text: &str) {
        let _ = writeln!(std::io::stderr(), "warning: {text}");
    }
}
