//! Builds `ember-agent` in release mode with cargo and finds the binary cargo produced.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The agent's cargo package and binary name.
pub const AGENT_PACKAGE: &str = "ember-agent";

/// Errors from building the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// cargo could not be started.
    #[error("cannot run `{cargo}`: {source}; install Rust with rustup (or `apt-get install cargo`), or set CARGO")]
    Spawn {
        /// The cargo program.
        cargo: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// cargo failed (its diagnostics were printed on stderr).
    #[error("`cargo build --release -p {AGENT_PACKAGE}` in {workspace} failed with {status} (see the compiler output above)")]
    Build {
        /// The workspace root.
        workspace: PathBuf,
        /// Exit status.
        status: String,
    },
    /// cargo succeeded but reported no executable for the agent.
    #[error("cargo built {AGENT_PACKAGE} but reported no executable named {AGENT_PACKAGE}")]
    NoExecutable,
}

/// Runs `cargo build --release -p ember-agent` in `workspace` and returns the path of
/// the executable (read from cargo's JSON messages, so `CARGO_TARGET_DIR` and
/// `--target-dir` settings are honoured). Compiler diagnostics go to stderr.
pub fn build(workspace: &Path) -> Result<PathBuf, AgentError> {
    // `CARGO` is set when running under `cargo run`; else cargo must be on PATH.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            AGENT_PACKAGE,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| AgentError::Spawn {
            cargo: cargo.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(AgentError::Build {
            workspace: workspace.to_path_buf(),
            status: out.status.to_string(),
        });
    }
    executable_from_messages(&String::from_utf8_lossy(&out.stdout)).ok_or(AgentError::NoExecutable)
}

/// Finds the agent's executable in cargo's `--message-format=json` output.
pub fn executable_from_messages(stdout: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == AGENT_PACKAGE)
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_agent_executable_in_cargo_messages() {
        let msgs = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"ember_agent_protocol"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"ember-agent"},"executable":"/t/release/ember-agent"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n"
        );
        assert_eq!(
            executable_from_messages(msgs),
            Some(PathBuf::from("/t/release/ember-agent"))
        );
        assert_eq!(
            executable_from_messages("{\"reason\":\"build-finished\"}\n"),
            None
        );
    }
}
