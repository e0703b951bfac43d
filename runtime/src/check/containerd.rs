//! Finding the `containerd` binary and its version.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest containerd ember's shim (task API v2) works with.
pub const MIN_VERSION: (u32, u32) = (1, 6);

/// `containerd` found on `path_var` (a `PATH`-style list), if any.
pub fn find(path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|d| d.join("containerd"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Run `BIN --version` and return its first line.
pub fn version_line(bin: &Path) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({})",
            bin.display(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// The `major.minor` of a `containerd --version` line such as
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1`.
pub fn parse_version(line: &str) -> Option<(u32, u32, String)> {
    line.split_whitespace().find_map(|word| {
        let w = word.trim_start_matches('v');
        let mut parts = w.split(['.', '~', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor, w.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_upstream_and_v_prefixed_versions() {
        let debian = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1";
        assert_eq!(parse_version(debian).unwrap().0, 1);
        assert_eq!(parse_version(debian).unwrap().1, 6);
        let upstream = "containerd containerd.io v2.0.1 88aa2f5";
        assert_eq!(parse_version(upstream).map(|v| (v.0, v.1)), Some((2, 0)));
        assert_eq!(parse_version("containerd what"), None);
    }
}
