//! Errors of loading and validating a configuration. Every message names the file, the
//! line and the dotted key, and says what would be accepted.

use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// Where a configuration value came from: a file (and line), or ember's built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The config file, or `None` for the built-in defaults.
    pub file: Option<PathBuf>,
    /// 1-based line in `file`, when the key is written there.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}", file.display()),
            (Some(file), None) => write!(f, "{}", file.display()),
            (None, _) => write!(f, "built-in defaults"),
        }
    }
}

/// Everything that can go wrong when loading ember's configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// `EMBER_CONFIG` names a file that does not exist.
    #[error("EMBER_CONFIG is set to {path}, which does not exist; unset it or point it at a config file")]
    EnvFileMissing {
        /// The path from the environment.
        path: PathBuf,
    },
    /// An explicitly given config file (`--config`, containerd's `ConfigPath`) does not exist.
    #[error("config file {path} does not exist (given with --config or containerd's ConfigPath)")]
    ExplicitFileMissing {
        /// The path that was given.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("{at}: not valid TOML: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The parser's explanation.
        message: String,
    },
    /// A key ember does not know (usually a typo).
    #[error("{at}: unknown key `{key}` in {}; {hint}", section_name(.section))]
    UnknownKey {
        /// Where.
        at: Location,
        /// The dotted key as written.
        key: String,
        /// The dotted section that holds it (`""` for the top level).
        section: String,
        /// `did you mean `x`?` when a valid key is close, else the list of valid keys.
        hint: String,
    },
    /// A value of the wrong type or an unknown variant.
    #[error("{at}: {key}: {message}")]
    InvalidValue {
        /// Where.
        at: Location,
        /// The dotted key.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A number outside the range ember accepts.
    #[error("{at}: {key} = {value} is out of range: allowed {allowed}")]
    OutOfRange {
        /// Where.
        at: Location,
        /// The dotted key.
        key: String,
        /// The value given.
        value: String,
        /// The accepted range, in words.
        allowed: String,
    },
    /// A file the configuration points at does not exist.
    #[error("{at}: {key} = {path}: file does not exist ({why})")]
    MissingFile {
        /// Where.
        at: Location,
        /// The dotted key.
        key: String,
        /// The missing path (after resolving it against the config file's folder).
        path: PathBuf,
        /// Why it is needed and how to get it.
        why: String,
    },
    /// Two keys that cannot both be set, or a value that contradicts another.
    #[error("{at}: {message}")]
    Conflict {
        /// Where.
        at: Location,
        /// What conflicts and how to resolve it.
        message: String,
    },
}

fn section_name(section: &str) -> String {
    if section.is_empty() {
        "the top level (sections are [hypervisor], [sandbox], [agent], [log])".to_string()
    } else {
        format!("[{section}]")
    }
}
