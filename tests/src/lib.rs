//! `ember-tests`: ember's end-to-end tests and their fixtures.
//!
//! It owns the tests that cross crate boundaries: the shim against a real containerd,
//! the benchmarks' runc/crun baselines, and the offline busybox image built from
//! Debian's busybox-static ([`fixtures`]). The tests live in `tests/tests/`.

pub mod fixtures;
