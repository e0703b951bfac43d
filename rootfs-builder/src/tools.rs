//! Host tools the builder runs, and the Debian packages that provide them.
//!
//! Every external program is looked up here before a stage starts, so a missing one is
//! reported as the exact `apt-get install` line that fixes it instead of a failure deep
//! inside `make` or `mkfs.ext4`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// An external program the builder needs, with the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// Program name looked up on `PATH`.
    pub program: &'static str,
    /// Debian package that provides it.
    pub package: &'static str,
}

/// Errors from looking up host tools.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ToolError {
    /// One or more programs are not on `PATH`.
    #[error(
        "missing host tools: {programs}; install them with `apt-get install {packages}`",
        programs = .missing.iter().map(|t| t.program).collect::<Vec<_>>().join(", "),
        packages = packages(.missing).join(" ")
    )]
    Missing {
        /// The programs that were not found.
        missing: Vec<Tool>,
    },
    /// A file that a Debian package installs is absent.
    #[error("{what} not found at {path}; install it with `apt-get install {package}`")]
    MissingFile {
        /// What the file is (for the message).
        what: &'static str,
        /// Where it was expected.
        path: PathBuf,
        /// The package that installs it.
        package: &'static str,
    },
}

fn packages(tools: &[Tool]) -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = tools.iter().map(|t| t.package).collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    pkgs
}

const fn tool(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

/// Programs the kernel build runs (extracting, patching, configuring, compiling).
pub const KERNEL_TOOLS: &[Tool] = &[
    tool("tar", "tar"),
    tool("xz", "xz-utils"),
    tool("patch", "patch"),
    tool("make", "make"),
    tool("gcc", "gcc"),
    tool("ld", "binutils"),
    tool("bc", "bc"),
    tool("bison", "bison"),
    tool("flex", "flex"),
    tool("perl", "perl"),
    tool("dpkg-query", "dpkg"),
];

/// Headers the kernel build compiles against (objtool needs libelf).
pub const KERNEL_HEADERS: &[(&str, &str)] = &[("/usr/include/libelf.h", "libelf-dev")];

/// Programs the image build runs for both formats.
pub const IMAGE_TOOLS: &[Tool] = &[tool("ldd", "libc-bin")];

/// Extra programs the ext4 format needs.
pub const EXT4_TOOLS: &[Tool] = &[tool("mkfs.ext4", "e2fsprogs"), tool("debugfs", "e2fsprogs")];

/// Programs `--debug` images need.
pub const DEBUG_TOOLS: &[Tool] = &[tool("busybox", "busybox-static")];

/// Looks `program` up on the `PATH` given (or the process `PATH` when `None`).
pub fn find_in(program: &str, path_var: Option<&OsString>) -> Option<PathBuf> {
    let path_var = match path_var {
        Some(p) => p.clone(),
        None => std::env::var_os("PATH")?,
    };
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds `program` on the process `PATH`.
pub fn find(program: &str) -> Option<PathBuf> {
    find_in(program, None)
}

/// Checks that every tool is on the given `PATH` (process `PATH` when `None`); the error
/// names all missing ones and the packages to install.
pub fn require_in(tools: &[Tool], path_var: Option<&OsString>) -> Result<(), ToolError> {
    let missing: Vec<Tool> = tools
        .iter()
        .copied()
        .filter(|t| find_in(t.program, path_var).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ToolError::Missing { missing })
    }
}

/// Checks that every tool is on the process `PATH`.
pub fn require(tools: &[Tool]) -> Result<(), ToolError> {
    require_in(tools, None)
}

/// Checks that the files Debian packages install (headers) are present.
pub fn require_files(files: &[(&'static str, &'static str)]) -> Result<(), ToolError> {
    for (path, package) in files {
        if !Path::new(path).exists() {
            return Err(ToolError::MissingFile {
                what: "header",
                path: PathBuf::from(path),
                package,
            });
        }
    }
    Ok(())
}

/// Test helper: reports a skipped test on the process's stderr, bypassing the test
/// harness's output capture so the skip is visible in a normal `cargo test` run.
#[cfg(test)]
pub(crate) fn skip_notice(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_name_the_apt_packages() {
        let empty = tempfile::tempdir().unwrap();
        let path = OsString::from(empty.path());
        let err = require_in(EXT4_TOOLS, Some(&path)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing host tools: mkfs.ext4, debugfs; install them with `apt-get install e2fsprogs`"
        );
    }

    #[test]
    fn tools_on_path_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("bc");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = OsString::from(dir.path());
        assert!(require_in(&[tool("bc", "bc")], Some(&path)).is_ok());
        let err = require_in(&[tool("bc", "bc"), tool("flex", "flex")], Some(&path)).unwrap_err();
        assert!(err.to_string().contains("`apt-get install flex`"), "{err}");
    }
}
