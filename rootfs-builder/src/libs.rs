//! The shared libraries a binary needs, as the dynamic loader resolves them (`ldd`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors from resolving shared libraries.
#[derive(Debug, thiserror::Error)]
pub enum LibsError {
    /// `ldd` could not be run.
    #[error("cannot run ldd: {0}; install it with `apt-get install libc-bin`")]
    Spawn(std::io::Error),
    /// The loader could not find some libraries.
    #[error("{binary} needs shared libraries the dynamic loader cannot find: {}", .missing.join(", "))]
    NotFound {
        /// The binary.
        binary: PathBuf,
        /// Sonames that were not found.
        missing: Vec<String>,
    },
    /// `ldd` failed for another reason.
    #[error("ldd {binary} failed: {message}")]
    Failed {
        /// The binary.
        binary: PathBuf,
        /// ldd's stderr.
        message: String,
    },
}

/// Returns the absolute paths of the shared libraries (including the dynamic loader)
/// that `binary` loads, in `ldd` order; empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, LibsError> {
    let out = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(LibsError::Spawn)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("not a dynamic executable")
        || stderr.contains("not a dynamic executable")
        || stdout.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(LibsError::Failed {
            binary: binary.to_path_buf(),
            message: stderr.trim().to_string(),
        });
    }
    parse_ldd(&stdout).map_err(|missing| LibsError::NotFound {
        binary: binary.to_path_buf(),
        missing,
    })
}

/// Parses `ldd` output into library paths; `Err` lists the sonames marked
/// `not found`. The vDSO (no path) is skipped.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, Vec<String>> {
    let mut paths = Vec::new();
    let mut missing = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, rest) = match line.split_once(" => ") {
            Some((n, r)) => (n.trim(), r.trim()),
            None => (line, line),
        };
        if rest.starts_with("not found") {
            missing.push(name.to_string());
            continue;
        }
        let path = rest.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            let p = PathBuf::from(path);
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    if missing.is_empty() {
        Ok(paths)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_glibc_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd1b7f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0a1c000000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0a1be00000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0a1c1f0000)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn missing_libraries_are_named() {
        let out = "\tlibseccomp.so.2 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n";
        assert_eq!(
            parse_ldd(out).unwrap_err(),
            vec!["libseccomp.so.2".to_string()]
        );
    }

    #[test]
    fn resolves_a_real_dynamic_binary() {
        // `ldd` itself may be a script; use the test binary, which links libc.
        let me = std::env::current_exe().unwrap();
        let libs = shared_libraries(&me).unwrap();
        assert!(
            libs.iter().any(|p| p.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter().all(|p| p.is_absolute() && p.exists()),
            "{libs:?}"
        );
    }
}
