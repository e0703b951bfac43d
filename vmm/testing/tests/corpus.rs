//! The fuzz corpus as a regression suite, on the stable toolchain: every committed input
//! of every target (`fuzz/corpus/<target>/`, minimized seeds, and
//! `fuzz/regressions/<target>/`, inputs that once broke an invariant) runs through the
//! same code the fuzzer runs, and must keep every invariant.

use ember_vmm_testing::fuzz;
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.map(|e| e.expect("corpus entry").path()));
    }
    files.sort();
    files
}

fn replay(target: &str) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no corpus for fuzz target {target}: fuzz/corpus/{target}/ is empty or missing"
    );
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).expect("read corpus file");
        if std::panic::catch_unwind(|| fuzz::run(target, &data)).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {target} break an invariant (replay one with \
         `EMBER_FUZZ_DEBUG=1 cargo fuzz run --sanitizer none {target} FILE`): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn mmio_corpus() {
    replay("mmio");
}

#[test]
fn virtqueue_corpus() {
    replay("virtqueue");
}

#[test]
fn blk_corpus() {
    replay("blk");
}

#[test]
fn vsock_corpus() {
    replay("vsock");
}

#[test]
fn net_corpus() {
    replay("net");
}

#[test]
fn fuse_corpus() {
    replay("fuse");
}

#[test]
fn every_target_is_replayed() {
    assert_eq!(
        fuzz::TARGETS,
        ["mmio", "virtqueue", "blk", "vsock", "net", "fuse"],
        "a new target needs its replay test here"
    );
}
