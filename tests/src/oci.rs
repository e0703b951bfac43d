//! Helpers for the tests of `ember-oci`, ember's runc-compatible command line, under real
//! callers (containerd's runc shim, dockerd): the built binary, an ember config for a
//! sandbox backend, and a wrapper script that sets `EMBER_CONFIG` for it (callers take
//! the path of one executable and pass no environment of their own).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::containerd::workspace_binary;

/// The `ember-oci` to test: `$EMBER_OCI` when set (e.g. a release build for the
/// benchmark), else the workspace's build ([`workspace_binary`]).
pub fn binary() -> Option<PathBuf> {
    match std::env::var_os("EMBER_OCI").filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => workspace_binary("ember-oci"),
    }
}

/// Why `ember-oci` cannot be tested here (not built, or `ember-agent` missing next to it).
pub fn unavailable() -> Option<String> {
    let Some(oci) = binary() else {
        return Some(
            "ember-oci is not built (or $EMBER_OCI names no file): run `cargo build -p ember-runtime`"
                .into(),
        );
    };
    if !oci.with_file_name("ember-agent").is_file() {
        return Some(format!(
            "ember-agent is not built next to {}: run `cargo build -p ember-agent`",
            oci.display()
        ));
    }
    None
}

/// Writes, in `dir`, the ember config of `backend` ([`Backend::config`]) with `state_dir`
/// (keep it short: agent socket paths must fit in sun_path) and an executable `ember-runc`
/// that runs the built `ember-oci` with it. Returns the wrapper's path.
pub fn wrapper(dir: &Path, state_dir: &Path, backend: Backend) -> std::io::Result<PathBuf> {
    let oci = binary().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "ember-oci is not built")
    })?;
    let config = dir.join("ember.toml");
    std::fs::write(&config, backend.config(state_dir, ""))?;
    let runc = dir.join("ember-runc");
    std::fs::write(
        &runc,
        format!(
            "#!/bin/sh\nEMBER_CONFIG='{}' exec '{}' \"$@\"\n",
            config.display(),
            oci.display()
        ),
    )?;
    std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755))?;
    Ok(runc)
}
