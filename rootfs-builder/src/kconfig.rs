//! Kernel configuration: ember's config fragment, `.config` files and the Kconfig tree.
//!
//! The fragment (`rootfs-builder/kernel/ember.config`) is a list of requirements. Before
//! the build every option it names must exist in the kernel's Kconfig; after
//! `make olddefconfig` every option must still have the value the fragment asks for.
//! Either failure names the options, so a fragment edit that cannot work is caught
//! before (or right after) configuration instead of producing a kernel that lacks it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Errors from reading or checking kernel configuration.
#[derive(Debug, thiserror::Error)]
pub enum KconfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the fragment is neither `CONFIG_X=value`, `# CONFIG_X is not set`, a
    /// comment nor blank.
    #[error("{path}:{line}: cannot parse `{text}` (expected `CONFIG_NAME=value` or `# CONFIG_NAME is not set`)")]
    Syntax {
        /// The fragment file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending text.
        text: String,
    },
    /// The fragment names the same option twice.
    #[error("{path}:{line}: {name} is set twice in the fragment")]
    Duplicate {
        /// The fragment file.
        path: PathBuf,
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The option.
        name: String,
    },
    /// The fragment names options that no Kconfig file of this kernel defines.
    #[error("the config fragment names options that do not exist in this kernel's Kconfig (typo, or renamed in this version): {}", .names.join(", "))]
    Unknown {
        /// The unknown options (with the `CONFIG_` prefix).
        names: Vec<String>,
    },
    /// After `make olddefconfig` some options no longer have the value the fragment
    /// requires (usually a dependency missing from the fragment).
    #[error("Kconfig dropped options the fragment requires (add their dependencies to the fragment): {}", .dropped.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))]
    Dropped {
        /// The options whose final value differs.
        dropped: Vec<Mismatch>,
    },
}

/// An option whose final value differs from the one the fragment requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The option, with the `CONFIG_` prefix.
    pub name: String,
    /// The value the fragment requires (`n` for "is not set").
    pub wanted: String,
    /// The value in the final `.config` (`n` when absent or not set).
    pub got: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (wanted {}, got {})",
            self.name, self.wanted, self.got
        )
    }
}

/// Option values of a config file or fragment, keyed by `CONFIG_NAME`; "is not set" is
/// stored as `n`.
pub type Options = BTreeMap<String, String>;

/// A parsed config fragment, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// `(CONFIG_NAME, value)` pairs in the order of the file.
    pub entries: Vec<(String, String)>,
}

impl Fragment {
    /// Parses fragment text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KconfigError> {
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let parsed = match parse_line(line) {
                Line::Option(name, value) => (name, value),
                Line::Blank => continue,
                Line::Invalid => {
                    return Err(KconfigError::Syntax {
                        path: path.to_path_buf(),
                        line: idx + 1,
                        text: line.to_string(),
                    })
                }
            };
            if !seen.insert(parsed.0.clone()) {
                return Err(KconfigError::Duplicate {
                    path: path.to_path_buf(),
                    line: idx + 1,
                    name: parsed.0,
                });
            }
            entries.push(parsed);
        }
        Ok(Self { entries })
    }

    /// Reads and parses a fragment file.
    pub fn load(path: &Path) -> Result<Self, KconfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KconfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Fails naming every option that `symbols` (the Kconfig tree) does not define.
    pub fn check_known(&self, symbols: &BTreeSet<String>) -> Result<(), KconfigError> {
        let names: Vec<String> = self
            .entries
            .iter()
            .filter(|(name, _)| !symbols.contains(name.trim_start_matches("CONFIG_")))
            .map(|(name, _)| name.clone())
            .collect();
        if names.is_empty() {
            Ok(())
        } else {
            Err(KconfigError::Unknown { names })
        }
    }

    /// Fails naming every option whose value in `config` differs from the fragment's.
    pub fn check_applied(&self, config: &Options) -> Result<(), KconfigError> {
        let dropped: Vec<Mismatch> = self
            .entries
            .iter()
            .filter_map(|(name, wanted)| {
                let got = config.get(name).map(String::as_str).unwrap_or("n");
                (got != wanted).then(|| Mismatch {
                    name: name.clone(),
                    wanted: wanted.clone(),
                    got: got.to_string(),
                })
            })
            .collect();
        if dropped.is_empty() {
            Ok(())
        } else {
            Err(KconfigError::Dropped { dropped })
        }
    }

    /// Returns `config` text with every option of the fragment replaced by the
    /// fragment's value (the result still needs `make olddefconfig`).
    pub fn merge_into(&self, config: &str) -> String {
        let ours: BTreeSet<&str> = self.entries.iter().map(|(n, _)| n.as_str()).collect();
        let mut out = String::with_capacity(config.len() + 4096);
        for line in config.lines() {
            if let Line::Option(name, _) = parse_line(line.trim()) {
                if ours.contains(name.as_str()) {
                    continue;
                }
            }
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("\n# ember config fragment\n");
        for (name, value) in &self.entries {
            if value == "n" {
                out.push_str(&format!("# {name} is not set\n"));
            } else {
                out.push_str(&format!("{name}={value}\n"));
            }
        }
        out
    }
}

enum Line {
    Option(String, String),
    Blank,
    Invalid,
}

fn is_symbol(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_line(line: &str) -> Line {
    if let Some(rest) = line.strip_prefix("# ") {
        if let Some(name) = rest.strip_suffix(" is not set") {
            if name.starts_with("CONFIG_") && is_symbol(name) {
                return Line::Option(name.to_string(), "n".to_string());
            }
        }
        return Line::Blank;
    }
    if line.is_empty() || line.starts_with('#') {
        return Line::Blank;
    }
    match line.split_once('=') {
        Some((name, value))
            if name.starts_with("CONFIG_") && is_symbol(name) && !value.is_empty() =>
        {
            Line::Option(name.to_string(), value.to_string())
        }
        _ => Line::Invalid,
    }
}

/// Parses `.config` text into option values (`n` for "is not set").
pub fn parse_config(text: &str) -> Options {
    text.lines()
        .filter_map(|l| match parse_line(l.trim()) {
            Line::Option(name, value) => Some((name, value)),
            _ => None,
        })
        .collect()
}

/// Reads and parses a `.config` file.
pub fn load_config(path: &Path) -> Result<Options, KconfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KconfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_config(&text))
}

/// Collects every symbol (`config X` / `menuconfig X`, without the `CONFIG_` prefix)
/// defined by the `Kconfig*` files under a kernel source tree.
pub fn kconfig_symbols(source: &Path) -> Result<BTreeSet<String>, KconfigError> {
    let mut symbols = BTreeSet::new();
    let mut stack = vec![source.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| KconfigError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| KconfigError::Read {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|source| KconfigError::Read {
                path: path.clone(),
                source,
            })?;
            if ft.is_dir() {
                if entry.file_name() != ".git" {
                    stack.push(path);
                }
            } else if ft.is_file() && entry.file_name().to_string_lossy().starts_with("Kconfig") {
                let bytes = std::fs::read(&path).map_err(|source| KconfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                for line in String::from_utf8_lossy(&bytes).lines() {
                    let mut words = line.split_whitespace();
                    if let (Some("config" | "menuconfig"), Some(sym)) = (words.next(), words.next())
                    {
                        if is_symbol(sym) {
                            symbols.insert(sym.to_string());
                        }
                    }
                }
            }
        }
    }
    Ok(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("drivers/virtio")).unwrap();
        std::fs::write(
            dir.path().join("Kconfig"),
            "mainmenu \"fake\"\nconfig 64BIT\n\tbool \"64-bit\"\nmenuconfig NET\n\tbool \"net\"\nsource \"drivers/virtio/Kconfig\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("drivers/virtio/Kconfig"),
            "config VIRTIO_MMIO\n\ttristate \"mmio\"\n\tdepends on NET\n\nif VIRTIO_MMIO\nconfig VIRTIO_MMIO_CMDLINE_DEVICES\n\tbool \"cmdline\"\nendif\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn parses_fragment_lines() {
        let f = Fragment::parse(
            "# comment\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_D=64\n",
            Path::new("f"),
        )
        .unwrap();
        assert_eq!(
            f.entries,
            vec![
                ("CONFIG_A".into(), "y".into()),
                ("CONFIG_B".into(), "n".into()),
                ("CONFIG_C".into(), "\"x y\"".into()),
                ("CONFIG_D".into(), "64".into()),
            ]
        );
    }

    #[test]
    fn rejects_bad_and_duplicate_lines() {
        let err = Fragment::parse("CONFIG_A=y\nVIRTIO=y\n", Path::new("frag")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("frag:2: cannot parse `VIRTIO=y`"),
            "{err}"
        );
        let err = Fragment::parse("CONFIG_A=y\nCONFIG_A=n\n", Path::new("frag")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frag:2: CONFIG_A is set twice in the fragment"
        );
    }

    #[test]
    fn scans_kconfig_symbols() {
        let tree = fake_tree();
        let syms = kconfig_symbols(tree.path()).unwrap();
        let want: BTreeSet<String> = ["64BIT", "NET", "VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(syms, want);
    }

    #[test]
    fn unknown_option_is_an_error_naming_it() {
        let tree = fake_tree();
        let syms = kconfig_symbols(tree.path()).unwrap();
        let ok = Fragment::parse(
            "CONFIG_VIRTIO_MMIO=y\n# CONFIG_NET is not set\n",
            Path::new("f"),
        )
        .unwrap();
        ok.check_known(&syms).unwrap();
        let bad = Fragment::parse(
            "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICE=y\nCONFIG_NOPE=y\n",
            Path::new("f"),
        )
        .unwrap();
        let err = bad.check_known(&syms).unwrap_err();
        match &err {
            KconfigError::Unknown { names } => assert_eq!(
                names,
                &[
                    "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICE".to_string(),
                    "CONFIG_NOPE".to_string()
                ]
            ),
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains("CONFIG_NOPE"));
    }

    #[test]
    fn dropped_option_is_an_error_naming_it() {
        let frag = Fragment::parse(
            "CONFIG_NET=y\nCONFIG_VIRTIO_MMIO=y\n# CONFIG_MODULES is not set\nCONFIG_NR_CPUS=64\n",
            Path::new("f"),
        )
        .unwrap();
        let good = parse_config(
            "CONFIG_NET=y\nCONFIG_VIRTIO_MMIO=y\n# CONFIG_MODULES is not set\nCONFIG_NR_CPUS=64\n",
        );
        frag.check_applied(&good).unwrap();
        // Kconfig dropped VIRTIO_MMIO (absent), turned MODULES on and clamped NR_CPUS.
        let bad = parse_config("CONFIG_NET=y\nCONFIG_MODULES=y\nCONFIG_NR_CPUS=8\n");
        let err = frag.check_applied(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Kconfig dropped options the fragment requires (add their dependencies to the \
             fragment): CONFIG_VIRTIO_MMIO (wanted y, got n), CONFIG_MODULES (wanted n, got y), \
             CONFIG_NR_CPUS (wanted 64, got 8)"
        );
    }

    #[test]
    fn merge_overrides_base_values() {
        let frag = Fragment::parse("CONFIG_A=y\n# CONFIG_B is not set\n", Path::new("f")).unwrap();
        let merged = frag.merge_into("# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C=y\n");
        let opts = parse_config(&merged);
        assert_eq!(opts.get("CONFIG_A").unwrap(), "y");
        assert_eq!(opts.get("CONFIG_B").unwrap(), "n");
        assert_eq!(opts.get("CONFIG_C").unwrap(), "y");
        assert_eq!(merged.matches("CONFIG_A").count(), 1);
    }
}
