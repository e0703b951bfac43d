//! `ember list` and `ember cleanup`: sandboxes known by their state directories, and removal
//! of the ones whose owner (shim or `ember run`) is gone, e.g. after a crash.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::state::{Record, SandboxState, StateError};

/// One sandbox as `ember list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    /// Its state directory.
    pub dir: PathBuf,
    /// Its record, when readable.
    pub record: Option<Record>,
    /// Whether its owner process still runs.
    pub owner_alive: bool,
    /// Why the record could not be read.
    pub error: Option<String>,
}

/// Every sandbox under `state_dir`.
pub fn list(state_dir: &Path) -> Result<Vec<SandboxInfo>, StateError> {
    Ok(SandboxState::list(state_dir)?
        .into_iter()
        .map(|dir| match SandboxState::open(&dir) {
            Ok(s) => SandboxInfo {
                owner_alive: s.owner_alive(),
                record: Some(s.record().clone()),
                error: None,
                dir,
            },
            Err(e) => SandboxInfo {
                dir,
                record: None,
                owner_alive: false,
                error: Some(e.to_string()),
            },
        })
        .collect())
}

/// What one cleanup did.
#[derive(Debug, Clone, Serialize)]
pub struct CleanupOutcome {
    /// The sandbox directory.
    pub dir: PathBuf,
    /// `removed`, `skipped (owner N is running)` or the error.
    pub result: String,
    /// Whether it was removed.
    pub removed: bool,
}

/// Removes the sandboxes under `state_dir` whose owner is gone (all of them, killing their
/// processes, when `force`), or only those named in `ids`.
pub fn cleanup(state_dir: &Path, ids: &[String], force: bool) -> Vec<CleanupOutcome> {
    let dirs = match SandboxState::list(state_dir) {
        Ok(d) => d,
        Err(e) => {
            return vec![CleanupOutcome {
                dir: state_dir.to_path_buf(),
                result: e.to_string(),
                removed: false,
            }]
        }
    };
    let mut out = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !ids.is_empty() && !ids.contains(&name) {
            continue;
        }
        let outcome = match SandboxState::open(&dir) {
            Ok(s) if s.owner_alive() && !force => CleanupOutcome {
                result: format!(
                    "skipped: owner process {} is running (use --force to remove it anyway)",
                    s.record().owner.pid
                ),
                removed: false,
                dir,
            },
            Ok(s) => match s.cleanup() {
                Ok(()) => CleanupOutcome {
                    dir,
                    result: "removed".into(),
                    removed: true,
                },
                Err(e) => CleanupOutcome {
                    dir,
                    result: e.to_string(),
                    removed: false,
                },
            },
            // A directory without a readable record: what can be found without it goes (the
            // mounts below the directory, the directory, the sandbox's cgroup, named after
            // its id), and the outcome names what may remain.
            Err(e) if force || !dir.join(crate::state::STATE_FILE).exists() => {
                recover_without_record(dir, &name, &e.to_string())
            }
            Err(e) => CleanupOutcome {
                dir,
                result: format!("{e} (use --force to remove the directory)"),
                removed: false,
            },
        };
        out.push(outcome);
    }
    out
}

/// Cleanup of sandbox `id`'s directory `dir` whose record could not be read (`why`):
/// removes the mounts below it, the directory and the cgroup `/ember/<id>`, and says what
/// the record alone could have named (a pod tap, processes), which may remain.
fn recover_without_record(dir: PathBuf, id: &str, why: &str) -> CleanupOutcome {
    let mut failed = Vec::new();
    if let Err(e) = crate::mounts::remove_dir_safely(&dir) {
        failed.push(e.to_string());
    }
    let cgroup = crate::cgroups::sandbox_parent(id);
    if let Err(e) = crate::cgroups::remove(&cgroup) {
        failed.push(format!("cgroup {cgroup}: {e}"));
    }
    let removed = failed.is_empty();
    let what = if removed {
        format!("removed its mounts, its directory and cgroup {cgroup}")
    } else {
        format!("could not remove: {}", failed.join("; "))
    };
    CleanupOutcome {
        dir,
        result: format!(
            "{what}; its state record was unreadable ({why}), so resources recorded only there \
             (a pod tap, the agent or VMM process) may remain: look for processes and taps \
             naming sandbox {id}"
        ),
        removed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_record_is_cleaned_up_as_far_as_it_can_be_and_says_what_may_remain() {
        let tmp = tempfile::tempdir().unwrap();
        let id = format!("corrupt-{}", std::process::id());
        let st = SandboxState::create(tmp.path(), &id, "process").unwrap();
        let dir = st.dir().to_path_buf();
        drop(st);
        std::fs::write(dir.join(crate::state::STATE_FILE), b"{ not json").unwrap();
        // As root, the sandbox's cgroup exists too, and goes with it.
        let cgroup = ember_tests::is_root()
            .then(|| crate::cgroups::hierarchies().into_iter().next())
            .flatten()
            .map(|h| h.join("ember").join(&id))
            .filter(|d| std::fs::create_dir_all(d).is_ok());

        let out = cleanup(tmp.path(), std::slice::from_ref(&id), false);
        assert_eq!(out.len(), 1);
        assert!(!out[0].removed, "{}", out[0].result);
        assert!(out[0].result.contains("--force"), "{}", out[0].result);
        assert!(dir.exists());

        let out = cleanup(tmp.path(), std::slice::from_ref(&id), true);
        assert!(out[0].removed, "{}", out[0].result);
        assert!(!dir.exists());
        let r = &out[0].result;
        assert!(r.contains("unreadable") && r.contains(&id), "{r}");
        if let Some(c) = cgroup {
            assert!(!c.exists(), "cgroup {} left", c.display());
        }
    }

    #[test]
    fn removes_stale_sandboxes_and_keeps_live_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let live = SandboxState::create(tmp.path(), "live", "process").unwrap();
        let mut stale = SandboxState::create(tmp.path(), "stale", "process").unwrap();
        let extra = stale.dir().join("agent");
        std::fs::create_dir(&extra).unwrap();
        stale
            .add(crate::state::Resource::Dir {
                path: extra.clone(),
            })
            .unwrap();
        // Make "stale" look like its owner died: rewrite the record with a dead owner.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = crate::state::ProcessId::of(child.id() as i32);
        child.wait().unwrap();
        let dead = dead.unwrap_or(crate::state::ProcessId {
            pid: i32::MAX,
            start_time: 1,
        });
        let path = stale.dir().join(crate::state::STATE_FILE);
        let mut rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        rec["owner"] = serde_json::to_value(&dead).unwrap();
        std::fs::write(&path, rec.to_string()).unwrap();

        let listed = list(tmp.path()).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|i| i.owner_alive));
        assert!(listed.iter().any(|i| !i.owner_alive));

        let out = cleanup(tmp.path(), &[], false);
        assert_eq!(out.len(), 2);
        assert!(out.iter().any(|o| o.removed && o.dir.ends_with("stale")));
        assert!(out
            .iter()
            .any(|o| !o.removed && o.result.contains("running")));
        assert!(!extra.exists());
        assert!(live.dir().exists());
        let out = cleanup(tmp.path(), &["live".into()], true);
        assert!(out[0].removed, "{:?}", out);
        assert!(list(tmp.path()).unwrap().is_empty());
    }
}
