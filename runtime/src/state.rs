//! The per-sandbox state directory and its record of every host resource the sandbox made.
//!
//! Each sandbox owns `<state_dir>/sandboxes/<id>/` with a `state.json` listing, in creation
//! order, every host resource made for it: processes (the agent of the `process` backend),
//! mounts, sockets, taps, cgroups and directories. The record is rewritten atomically
//! (temporary file + rename) *before* a resource is used, so a crash at any point leaves a
//! record that [`SandboxState::cleanup`] (delete, `containerd-shim-ember-v2 delete`, or
//! `ember cleanup`) can undo in reverse order.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the record file inside a sandbox directory.
pub const STATE_FILE: &str = "state.json";
/// Folder of sandboxes under the configured `sandbox.state_dir`.
pub const SANDBOXES_DIR: &str = "sandboxes";
/// Mode of the state directories the runtime creates: a sandbox's directory holds the
/// guest's console log and, under `shared/`, the containers' root filesystems and mounts
/// (Kubernetes secrets among them), so only root may enter it.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Errors reading or writing sandbox state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory of the state could not be read or written.
    #[error("sandbox state {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `state.json` is not a record this version understands.
    #[error("sandbox state {path}: not a valid ember state record ({source}); remove the directory by hand if no sandbox uses it")]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A sandbox id that cannot be a directory name.
    #[error("sandbox id {id:?}: {reason}")]
    BadId {
        /// The id.
        id: String,
        /// Which part of the rule it breaks.
        reason: ember_sys::id::IdError,
    },
    /// A container id that cannot be a directory name.
    #[error("container id {id:?}: {reason}")]
    BadContainerId {
        /// The id.
        id: String,
        /// Which part of the rule it breaks.
        reason: ember_sys::id::IdError,
    },
    /// A sandbox with this id already has state.
    #[error("sandbox {id}: state already exists at {path} (another sandbox with this id runs, or run `ember cleanup`)")]
    Exists {
        /// The id.
        id: String,
        /// Its directory.
        path: PathBuf,
    },
    /// Some resources could not be removed.
    #[error("sandbox {id}: could not remove {}", failures.join("; "))]
    Cleanup {
        /// The sandbox id.
        id: String,
        /// One message per resource left behind.
        failures: Vec<String>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A host process identified by pid *and* start time, so that a recycled pid is never
/// signalled by mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Host pid.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
}

impl ProcessId {
    /// Identifies the live process `pid`; `None` when it does not exist.
    pub fn of(pid: i32) -> Option<ProcessId> {
        start_time(pid).map(|start_time| ProcessId { pid, start_time })
    }

    /// The current process.
    pub fn current() -> ProcessId {
        ProcessId::of(std::process::id() as i32).expect("/proc/self/stat is readable")
    }

    /// Whether this very process (same pid, same start time) is still running (zombies
    /// count as gone).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }
}

/// Start time of `pid`, from `/proc/PID/stat`.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// One host resource made for a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// A process the sandbox started (the agent, the VMM); killed with SIGKILL on cleanup.
    Process {
        /// What it is, for messages.
        role: String,
        /// Which process.
        id: ProcessId,
    },
    /// A mount point; detached (`umount -l`) on cleanup.
    Mount {
        /// The mount point.
        path: PathBuf,
    },
    /// A Unix socket file; removed on cleanup.
    Socket {
        /// Its path.
        path: PathBuf,
    },
    /// A tap device, in the network namespace `netns` (a bind-mounted nsfs path) or the
    /// host's when empty.
    Tap {
        /// Interface name.
        name: String,
        /// Network namespace path.
        netns: Option<PathBuf>,
    },
    /// A cgroup path relative to every hierarchy's root (`/ember/<sandbox>`); removed
    /// depth-first in every hierarchy where it exists.
    Cgroup {
        /// The path, starting with `/`.
        path: String,
    },
    /// A directory (removed with its content once nothing is mounted below it).
    Dir {
        /// The path.
        path: PathBuf,
    },
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Process { role, id } => write!(f, "{role} process {}", id.pid),
            Resource::Mount { path } => write!(f, "mount {}", path.display()),
            Resource::Socket { path } => write!(f, "socket {}", path.display()),
            Resource::Tap { name, .. } => write!(f, "tap {name}"),
            Resource::Cgroup { path } => write!(f, "cgroup {path}"),
            Resource::Dir { path } => write!(f, "directory {}", path.display()),
        }
    }
}

/// The content of `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The sandbox id.
    pub sandbox_id: String,
    /// `process` or `microvm`.
    pub backend: String,
    /// The process that owns the sandbox (the shim, or `ember run`); when it is gone the
    /// sandbox is stale and `ember cleanup` removes it.
    pub owner: ProcessId,
    /// The containerd namespace, when run by the shim.
    #[serde(default)]
    pub namespace: String,
    /// Ids of the containers created in the sandbox and not yet deleted.
    #[serde(default)]
    pub containers: BTreeSet<String>,
    /// Host resources, in creation order.
    pub resources: Vec<Resource>,
}

/// A sandbox's state directory and its record, kept in step on disk.
#[derive(Debug)]
pub struct SandboxState {
    dir: PathBuf,
    record: Record,
}

/// Checks that `id` is usable as a directory name ([`ember_sys::id`]'s rule).
pub fn check_id(id: &str) -> Result<(), StateError> {
    ember_sys::id::check(id).map_err(|reason| StateError::BadId {
        id: id.to_string(),
        reason,
    })
}

/// Checks that container id `id` is usable as a directory name (the same rule as
/// [`check_id`]; the error names a container).
pub fn check_container_id(id: &str) -> Result<(), StateError> {
    ember_sys::id::check(id).map_err(|reason| StateError::BadContainerId {
        id: id.to_string(),
        reason,
    })
}

/// The directory holding every sandbox's state under `state_dir`.
pub fn sandboxes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SANDBOXES_DIR)
}

impl SandboxState {
    /// Creates the state directory of a new sandbox owned by this process, mode
    /// [`STATE_DIR_MODE`] (as are `state_dir` and its `sandboxes/` when this creates them;
    /// existing ones keep their mode).
    pub fn create(state_dir: &Path, id: &str, backend: &str) -> Result<SandboxState, StateError> {
        check_id(id)?;
        let parent = sandboxes_dir(state_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(STATE_DIR_MODE)
            .create(&parent)
            .map_err(io(&parent))?;
        let dir = parent.join(id);
        match fs::DirBuilder::new().mode(STATE_DIR_MODE).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StateError::Exists {
                    id: id.to_string(),
                    path: dir,
                })
            }
            Err(e) => return Err(io(&dir)(e)),
        }
        let state = SandboxState {
            record: Record {
                sandbox_id: id.to_string(),
                backend: backend.to_string(),
                owner: ProcessId::current(),
                namespace: String::new(),
                containers: BTreeSet::new(),
                resources: vec![Resource::Dir { path: dir.clone() }],
            },
            dir,
        };
        state.save()?;
        Ok(state)
    }

    /// Opens an existing sandbox's state.
    pub fn open(dir: &Path) -> Result<SandboxState, StateError> {
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let record =
            serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })?;
        Ok(SandboxState {
            dir: dir.to_path_buf(),
            record,
        })
    }

    /// Every sandbox directory under `state_dir`, sorted by name.
    pub fn list(state_dir: &Path) -> Result<Vec<PathBuf>, StateError> {
        let parent = sandboxes_dir(state_dir);
        let entries = match fs::read_dir(&parent) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&parent)(e)),
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// The sandbox's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record as last saved.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Sets the containerd namespace.
    pub fn set_namespace(&mut self, ns: &str) -> Result<(), StateError> {
        self.record.namespace = ns.to_string();
        self.save()
    }

    /// Records a container as living in the sandbox.
    pub fn add_container(&mut self, id: &str) -> Result<(), StateError> {
        self.record.containers.insert(id.to_string());
        self.save()
    }

    /// Forgets a deleted container.
    pub fn remove_container(&mut self, id: &str) -> Result<(), StateError> {
        self.record.containers.remove(id);
        self.save()
    }

    /// Records a resource *before* the caller creates it (so a crash in between leaves a
    /// record of something that may not exist, which cleanup tolerates, and never the
    /// reverse).
    pub fn add(&mut self, resource: Resource) -> Result<(), StateError> {
        if !self.record.resources.contains(&resource) {
            self.record.resources.push(resource);
        }
        self.save()
    }

    /// Removes one resource now and forgets it.
    pub fn release(&mut self, resource: &Resource) -> Result<(), StateError> {
        if let Err(e) = remove(resource) {
            return Err(StateError::Cleanup {
                id: self.record.sandbox_id.clone(),
                failures: vec![format!("{resource}: {e}")],
            });
        }
        self.record.resources.retain(|r| r != resource);
        self.save()
    }

    /// Whether the owning process is still running.
    pub fn owner_alive(&self) -> bool {
        self.record.owner.alive()
    }

    /// Writes the record to a temporary file, syncs it, renames it over `state.json` and
    /// syncs the directory: after a crash (of ember, or of the host when the state dir is
    /// on a disk) the record is the old one or the new one, whole.
    fn save(&self) -> Result<(), StateError> {
        use std::io::Write;
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(".state.json.tmp");
        let text = serde_json::to_vec_pretty(&self.record).expect("record serializes");
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Removes every recorded resource, newest first, including the state directory.
    /// Resources that are already gone count as removed; the error lists the others.
    pub fn cleanup(self) -> Result<(), StateError> {
        let mut failures = Vec::new();
        for r in self.record.resources.iter().rev() {
            if let Err(e) = remove(r) {
                failures.push(format!("{r}: {e}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            // Keep a record of what is left so a later `ember cleanup` can retry.
            let mut left = self;
            let record_dir_exists = left.dir.exists();
            if record_dir_exists {
                left.record.resources.retain(exists);
                let _ = left.save();
            }
            Err(StateError::Cleanup {
                id: left.record.sandbox_id,
                failures,
            })
        }
    }
}

/// Whether a resource still exists (best effort, for the record kept after a failure).
fn exists(r: &Resource) -> bool {
    match r {
        Resource::Process { id, .. } => id.alive(),
        Resource::Mount { path } => crate::mounts::is_mount_point(path),
        Resource::Socket { path } | Resource::Dir { path } => path.exists(),
        Resource::Tap { .. } => true,
        Resource::Cgroup { path } => !crate::cgroups::existing(path).is_empty(),
    }
}

/// Removes one resource; a resource that is already gone is not an error.
fn remove(r: &Resource) -> Result<(), String> {
    match r {
        Resource::Process { id, .. } => {
            if id.alive() {
                // SAFETY: kill(2) with a pid we verified by start time just now.
                unsafe { libc::kill(id.pid, libc::SIGKILL) };
                // Wait (up to 2 s) for it to go so that its mounts and cgroups free up.
                for _ in 0..200 {
                    if !id.alive() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                if id.alive() {
                    return Err("still running after SIGKILL".into());
                }
            }
            Ok(())
        }
        Resource::Mount { path } => crate::mounts::unmount_tree(path).map_err(|e| e.to_string()),
        Resource::Socket { path } => match fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        },
        Resource::Tap { name, netns } => {
            crate::network::delete_tap(name, netns.as_deref()).map_err(|e| e.to_string())
        }
        Resource::Cgroup { path } => crate::cgroups::remove(path).map_err(|e| e.to_string()),
        Resource::Dir { path } => crate::mounts::remove_dir_safely(path).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        check_id("pod-1_a.b").unwrap();
        let e = check_id("a/b").unwrap_err().to_string();
        assert!(e.starts_with(r#"sandbox id "a/b": holds '/'"#), "{e}");
        let e = check_container_id("a/b").unwrap_err().to_string();
        assert!(e.starts_with(r#"container id "a/b": holds '/'"#), "{e}");
        check_container_id("pod-1_a.b").unwrap();
    }

    #[test]
    fn state_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let s = SandboxState::create(&root, "sb1", "process").unwrap();
        for dir in [root.clone(), sandboxes_dir(&root), s.dir().to_path_buf()] {
            let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
        }
    }

    #[test]
    fn record_round_trips_and_cleanup_removes_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = SandboxState::create(tmp.path(), "sb1", "process").unwrap();
        let sub = s.dir().join("shared");
        fs::create_dir(&sub).unwrap();
        s.add(Resource::Dir { path: sub.clone() }).unwrap();
        let sock = s.dir().join("x.sock");
        fs::write(&sock, b"").unwrap();
        s.add(Resource::Socket { path: sock.clone() }).unwrap();
        s.add_container("c1").unwrap();
        let again = SandboxState::open(s.dir()).unwrap();
        assert_eq!(again.record(), s.record());
        assert!(again.owner_alive());
        assert!(matches!(
            SandboxState::create(tmp.path(), "sb1", "process"),
            Err(StateError::Exists { .. })
        ));
        assert_eq!(SandboxState::list(tmp.path()).unwrap().len(), 1);
        again.cleanup().unwrap();
        assert!(!sub.exists() && !sock.exists());
        assert!(SandboxState::list(tmp.path()).unwrap().is_empty());
    }

    #[test]
    fn dead_owner_is_detected() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id() as i32);
        child.wait().unwrap();
        if let Some(id) = id {
            assert!(!id.alive());
        }
        assert!(ProcessId::current().alive());
        let wrong = ProcessId {
            start_time: ProcessId::current().start_time + 1,
            ..ProcessId::current()
        };
        assert!(!wrong.alive(), "a recycled pid must not count as the owner");
    }

    #[test]
    fn corrupt_record_is_reported_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(STATE_FILE), "{").unwrap();
        let e = SandboxState::open(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("not a valid"), "{e}");
    }
}
