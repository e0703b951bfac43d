//! ember's low-level Linux helpers, each written once, for the host crates (runtime, VMM)
//! and the guest agent alike.
//!
//! One module per concern, each with its own error type where it can fail. This crate
//! depends on `libc` (and `thiserror`) only, and on no other ember crate, so that every
//! ember crate, the guest's agent included, may use it.

pub mod id;
pub mod mac;
pub mod mount_options;
pub mod mountinfo;
pub mod netns;
pub mod random;
pub mod tail;
pub mod tap;
pub mod tty;

/// For a test that needs root: `true` when it runs as root; otherwise it prints
/// `SKIP <test>: <why>` to stderr (past the harness's capture, as `ember_tests::skip` does,
/// which this crate cannot depend on) and returns `false`.
#[cfg(test)]
pub(crate) fn needs_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip_line(test, "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
    false
}

/// Prints `SKIP <test>: <why>` to stderr, past the test harness's capture.
#[cfg(test)]
pub(crate) fn skip_line(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}
