//! `ember-tests`: ember's end-to-end tests and their fixtures.
//!
//! It owns the tests that cross crate boundaries: the shim against a real containerd,
//! the benchmarks' runc/crun baselines, and the offline busybox image built from
//! Debian's busybox-static ([`fixtures`]). The tests live in `tests/tests/`.

pub mod fixtures;

/// Report that `test` is skipped and why, as `SKIP <test>: <why>`.
///
/// Written to the process's stderr directly, not through `eprintln!` (which the test
/// harness captures and shows only for failures), so a skip is never silent;
/// `scripts/run-tests.sh` lists and counts these lines. Every crate's tests use this one.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}
