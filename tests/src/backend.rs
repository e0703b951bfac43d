//! The sandbox backends an end-to-end test runs ember with, and the ember config of each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::guest;

/// The sandbox backend a test runs ember with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The agent on the host, in fresh namespaces: no VM.
    Process,
    /// Each pod in a KVM microVM; the agent and the containers in the guest.
    Microvm,
}

impl Backend {
    /// `sandbox.backend` in ember's config.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Microvm => "microvm",
        }
    }

    /// How many times longer than on the process backend anything may take. On a host
    /// without hardware virtualization the microvm variants run in the nested KVM test host,
    /// where containerd, the shim and the microVM inside all run under TCG.
    pub fn slowness(self) -> u32 {
        match self {
            Backend::Process => 1,
            Backend::Microvm => 5,
        }
    }

    /// `base` (how long a step may take on the process backend) on this backend.
    pub fn scaled(self, base: Duration) -> Duration {
        base * self.slowness()
    }

    /// The name the test harness lists `body`'s test of this backend by: the microvm
    /// variants live in `hw_kvm` modules ([`crate::hw_kvm_runs_here`]).
    pub fn test_name(self, body: &str) -> String {
        match self {
            Backend::Process => body.to_string(),
            Backend::Microvm => format!("hw_kvm::{body}"),
        }
    }

    /// Why this backend cannot run here as far as ember's own pieces go (the guest assets of
    /// `make guest` for the microvm backend), if it cannot.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Backend::Process => None,
            Backend::Microvm => guest_assets().err(),
        }
    }

    /// The ember config of this backend with `state_dir`, plus `extra` lines (each ending in
    /// a newline) in `[sandbox]`. The microvm backend gets the guest assets of `make guest`
    /// and 120 s for its agent to answer (in the nested KVM test host the guest boots under
    /// TCG). Panics when the guest assets are missing ([`Backend::unavailable`] says so
    /// first).
    pub fn config(self, state_dir: &Path, extra: &str) -> String {
        let mut config = format!(
            "[sandbox]\nbackend = \"{}\"\nstate_dir = \"{}\"\n{extra}",
            self.name(),
            state_dir.display()
        );
        if self == Backend::Microvm {
            let (kernel, initrd) = guest_assets().unwrap_or_else(|why| panic!("{why}"));
            config.push_str(&format!(
                "[hypervisor]\nkernel = \"{}\"\ninitrd = \"{}\"\n[agent]\ndial_timeout_ms = 120000\n",
                kernel.display(),
                initrd.display()
            ));
        }
        config
    }
}

/// The guest kernel and initramfs of `make guest`, or why they are missing.
pub fn guest_assets() -> Result<(PathBuf, PathBuf), String> {
    let built = guest::workspace_root().join("build/guest");
    let kernel = guest::kernel().filter(|p| p.is_file()).ok_or_else(|| {
        format!(
            "no guest kernel ({}, or EMBER_GUEST_KERNEL): run `make guest`",
            built.join("vmlinux").display()
        )
    })?;
    let initrd = guest::initramfs().filter(|p| p.is_file()).ok_or_else(|| {
        format!(
            "no guest initramfs ({}, or EMBER_GUEST_INITRD): run `make guest`",
            built.join("initramfs.cpio").display()
        )
    })?;
    Ok((kernel, initrd))
}

/// Defines, for each body in the calling file's `body` module (a `fn(Backend)`), the test
/// `name` on the process backend and `hw_kvm::name` on the microvm backend. The module name
/// `hw_kvm` is how the test runner finds the tests that need hardware virtualization (and
/// runs them in the nested KVM test host where there is none; see
/// [`crate::hw_kvm_runs_here`]). After `microvm_only:`, bodies that test what only a
/// microVM has (the guest's vsock, say): only their `hw_kvm::name` test.
///
/// ```ignore
/// ember_tests::on_both_backends!(runs_echo, kills; microvm_only: guest_only_thing);
/// mod body {
///     pub fn runs_echo(backend: ember_tests::backend::Backend) { /* ... */ }
/// }
/// ```
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $crate::on_both_backends!($($name),+; microvm_only:);
    };
    ($($name:ident),+ $(,)?; microvm_only: $($vm_name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                body::$name($crate::backend::Backend::Process);
            }
        )+

        mod hw_kvm {
            use super::body;
            $(
                #[test]
                fn $name() {
                    if !$crate::hw_kvm_runs_here(concat!("hw_kvm::", stringify!($name))) {
                        return;
                    }
                    body::$name($crate::backend::Backend::Microvm);
                }
            )+
            $(
                #[test]
                fn $vm_name() {
                    if !$crate::hw_kvm_runs_here(concat!("hw_kvm::", stringify!($vm_name))) {
                        return;
                    }
                    body::$vm_name($crate::backend::Backend::Microvm);
                }
            )*
        }
    };
}
