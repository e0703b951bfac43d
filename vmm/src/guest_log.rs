//! Rate limit for log lines the guest can trigger (a malformed descriptor chain, a write to
//! a read-only register, a bad RX buffer): the guest owns its kernel and can repeat such a
//! thing millions of times a second, and the VMM's log ends up in containerd's log on the
//! host. At most [`LINES_PER_WINDOW`] such lines are written per [`WINDOW`]; the rest are
//! counted, and the count is written with the first line of a later window.
//!
//! Written here rather than taken from a crate: the `log` ecosystem's rate limiters limit
//! per call site or need a global logger of their own; this needs one budget shared by
//! every device, so a guest cannot get around it by rotating through devices.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The length of one budget window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Guest-triggered lines written per [`WINDOW`], across all devices.
pub const LINES_PER_WINDOW: u32 = 20;

/// A fixed-window budget of log lines.
#[derive(Debug)]
pub struct Budget {
    start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` lines were dropped before it (say so when non-zero).
    Write {
        /// Lines dropped since the last written one.
        suppressed: u64,
    },
    /// Drop it (counted).
    Drop,
}

impl Budget {
    /// An empty budget.
    pub const fn new() -> Budget {
        Budget {
            start: None,
            written: 0,
            suppressed: 0,
        }
    }

    /// Decides about one line at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let in_window = matches!(self.start, Some(s) if now.duration_since(s) < WINDOW);
        if !in_window {
            self.start = Some(now);
            self.written = 0;
        }
        if self.written < LINES_PER_WINDOW {
            self.written += 1;
            Verdict::Write {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Drop
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

/// The VMM's one budget for guest-triggered lines.
pub static BUDGET: Mutex<Budget> = Mutex::new(Budget::new());

/// Whether a guest-triggered line may be written now; `Some(n)` with the number dropped
/// before it. Used by [`guest_warn!`](crate::guest_warn).
pub fn admit() -> Option<u64> {
    let mut b = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    match b.take(Instant::now()) {
        Verdict::Write { suppressed } => Some(suppressed),
        Verdict::Drop => None,
    }
}

/// `log::warn!` for a line the guest can trigger, within the VMM's [`BUDGET`].
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {
        if let Some(suppressed) = $crate::guest_log::admit() {
            if suppressed > 0 {
                log::warn!(
                    "({suppressed} earlier guest-triggered warnings were not logged: at most {} per {} s)",
                    $crate::guest_log::LINES_PER_WINDOW,
                    $crate::guest_log::WINDOW.as_secs()
                );
            }
            log::warn!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_the_budget_then_counts_the_rest() {
        let mut b = Budget::new();
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..100_000u64 {
            if let Verdict::Write { suppressed } = b.take(t0 + Duration::from_micros(i)) {
                assert_eq!(suppressed, 0);
                written += 1;
            }
        }
        assert_eq!(written, LINES_PER_WINDOW);
        // The next window writes again, and says how many were dropped.
        assert_eq!(
            b.take(t0 + WINDOW),
            Verdict::Write {
                suppressed: 100_000 - u64::from(LINES_PER_WINDOW)
            }
        );
        assert_eq!(b.take(t0 + WINDOW), Verdict::Write { suppressed: 0 });
    }
}
