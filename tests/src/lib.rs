//! `ember-tests`: ember's end-to-end tests and their fixtures.
//!
//! It owns the tests that cross crate boundaries: the shim against a real containerd,
//! the benchmarks' runc/crun baselines, and the offline busybox image built from
//! Debian's busybox-static ([`fixtures`], and as an OCI image tarball in [`image`]). The
//! tests live in `tests/tests/`.
//!
//! For end-to-end tests: [`containerd`] starts a private containerd (own root, state,
//! sockets and config, cleaned up on drop) with the `runc` and `ember` runtimes registered,
//! and [`cri`] drives its CRI plugin through a real CRI client.

pub mod containerd;
pub mod cri;
pub mod fixtures;
pub mod guest;
pub mod image;

/// Report that `test` is skipped and why, as `SKIP <test>: <why>`.
///
/// Written to the process's stderr directly, not through `eprintln!` (which the test
/// harness captures and shows only for failures), so a skip is never silent;
/// `scripts/run-tests.sh` lists and counts these lines. Every crate's tests use this one.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}
