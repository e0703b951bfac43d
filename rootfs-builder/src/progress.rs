//! Progress lines on stderr: which stage a build is in and how long it has run.

use std::time::{Duration, Instant};

/// Prints `[what mm:ss] stage: detail` lines for one build.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    start: Instant,
    quiet: bool,
}

impl Progress {
    /// Starts the clock for a build called `what` (e.g. `kernel`, `image`).
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            start: Instant::now(),
            quiet: false,
        }
    }

    /// A reporter that prints nothing (used by library callers such as tests).
    pub fn quiet(what: &'static str) -> Self {
        Self {
            quiet: true,
            ..Self::new(what)
        }
    }

    /// Time since the build started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Reports that `stage` started or advanced.
    pub fn stage(&self, stage: &str, detail: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{}", self.line(stage, &detail.to_string()));
        }
    }

    /// Formats a progress line (exposed for tests of the format).
    pub fn line(&self, stage: &str, detail: &str) -> String {
        format!(
            "[{} {}] {stage}: {detail}",
            self.what,
            format_elapsed(self.elapsed())
        )
    }
}

/// Formats a duration as `m:ss`.
pub fn format_elapsed(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{}:{:02}", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_minutes_and_seconds() {
        assert_eq!(format_elapsed(Duration::from_secs(0)), "0:00");
        assert_eq!(format_elapsed(Duration::from_secs(754)), "12:34");
        let p = Progress::quiet("kernel");
        assert_eq!(
            p.line("compile", "10 objects"),
            "[kernel 0:00] compile: 10 objects"
        );
    }
}
