//! `ember-tests`: ember's end-to-end tests and their fixtures.
//!
//! It owns the tests that cross crate boundaries: the shim against a real containerd,
//! the benchmarks' runc/crun baselines, and the offline busybox image built from
//! Debian's busybox-static ([`fixtures`], and as an OCI image tarball in [`image`]). The
//! tests live in `tests/tests/`.
//!
//! For end-to-end tests: [`containerd`] starts a private containerd (own root, state,
//! sockets and config, cleaned up on drop) with the `runc` and `ember` runtimes registered,
//! and [`cri`] drives its CRI plugin through a real CRI client. [`oci`] wraps `ember-oci`,
//! the runc-compatible command line, for callers that take a runc binary. [`backend`]
//! gives each sandbox backend's config and how much slower its tests may be.
//! [`syscall_inject`] makes a running thread of another process (a VMM) call a system
//! call of the test's choosing, with ptrace, to check its seccomp filter.

pub mod backend;
pub mod containerd;
pub mod cri;
pub mod fixtures;
pub mod guest;
pub mod image;
pub mod kvm_host;
pub mod oci;
pub mod shim;
pub mod syscall_inject;

/// Report that `test` is skipped and why, as `SKIP <test>: <why>`.
///
/// Written to the process's stderr directly, not through `eprintln!` (which the test
/// harness captures and shows only for failures), so a skip is never silent;
/// `scripts/run-tests.sh` lists and counts these lines. Every crate's tests use this one.
///
/// Inside the nested KVM test host ([`kvm_host`]) nothing may skip: there a skip is a
/// failure (it panics), since the host is set up to run every test it is given.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    if kvm_host::inside() {
        panic!("{test} would skip inside the nested KVM test host: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Whether this process runs as root (effective uid 0): the one place tests ask.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For a test that needs root: `true` when it has it; otherwise prints the `SKIP` line
/// ([`skip`]) saying root is needed and `what_for`, and returns `false`.
pub fn require_root(test: &str, what_for: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, &format!("needs root ({what_for})"));
    false
}

/// Whether `test`, which needs hardware virtualization (a microVM whose guest runs user
/// space), runs on this host. Such tests live in a module named `hw_kvm` so that
/// `scripts/run-tests.sh` can find them.
///
/// On a host with hardware KVM (vmx/svm and `/dev/kvm`, as inside the nested KVM test
/// host): true. Without it: false, after one line on stderr: `NESTED <test>: ...` when the
/// caller runs the nested KVM test host afterwards (`EMBER_NESTED_KVM=later`, set by
/// `scripts/run-tests.sh`, which then runs the test there and counts it once), else a
/// `SKIP` line saying how to run it.
pub fn hw_kvm_runs_here(test: &str) -> bool {
    use std::io::Write;
    if kvm_host::hardware_kvm() {
        return true;
    }
    if std::env::var("EMBER_NESTED_KVM").as_deref() == Ok("later") {
        let _ = writeln!(
            std::io::stderr(),
            "NESTED {test}: no hardware virtualization here; runs in the nested KVM test host"
        );
    } else {
        skip(
            test,
            "no hardware virtualization here (no vmx/svm in /proc/cpuinfo): `scripts/run-tests.sh` runs it in the nested KVM test host (`scripts/kvm-host.sh`)",
        );
    }
    false
}
