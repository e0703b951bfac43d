//! The containers' records under `--root`: `<root>/<id>/container.json` (what `create`
//! knew, the holder's process, where the sandbox's agent listens, and the last status a
//! command set) and `<root>/<id>/exit.json` (written by the holder when the container's
//! init exited). Records are rewritten atomically (temporary file + rename).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::OciCliError;
use crate::endpoint::AgentEndpoint;
use crate::state::ProcessId;

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/run/ember-oci";
/// The record file in a container's directory.
pub const RECORD_FILE: &str = "container.json";
/// The exit file the holder writes.
pub const EXIT_FILE: &str = "exit.json";
/// The lock `start` holds while it starts the init, and the holder takes before it
/// records the init's exit and removes the sandbox.
pub const LOCK_FILE: &str = "lock";
/// The holder's own log (it must not write to its fds 0–2: they are the container's).
pub const HOLDER_LOG: &str = "holder.log";

/// The longest container id used as the sandbox id as it is.
const MAX_SANDBOX_ID: usize = 40;

/// The id of a container's own sandbox: the container id when it has at most 40
/// characters, else its first 23 characters, `-` and 16 hex digits of a hash of the whole
/// id. Docker's and Podman's ids have 64 characters, and the sandbox's Unix sockets (the
/// agent's, and the agent's console sockets below its state) must fit in sun_path.
pub fn sandbox_id(container_id: &str) -> String {
    use std::hash::{Hash, Hasher};
    if container_id.len() <= MAX_SANDBOX_ID {
        return container_id.to_string();
    }
    // Stored in the record, so the hash need not be stable across Rust versions.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    container_id.hash(&mut h);
    let prefix: String = container_id.chars().take(23).collect();
    format!("{prefix}-{:016x}", h.finish())
}

/// A container's status as the OCI state reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `create` is still making the sandbox.
    Creating,
    /// Created, init not started.
    Created,
    /// Started, init running.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// The init exited (or its holder is gone).
    Stopped,
}

impl Status {
    /// The OCI name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// Where the sandbox's agent listens (a serializable [`AgentEndpoint`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredEndpoint {
    /// The agent's Unix socket (process backend).
    Unix {
        /// The socket.
        path: PathBuf,
    },
    /// The VMM's hybrid-vsock socket (microvm backend).
    HybridVsock {
        /// The socket.
        socket: PathBuf,
        /// The agent's port.
        port: u32,
    },
}

impl From<&AgentEndpoint> for StoredEndpoint {
    fn from(e: &AgentEndpoint) -> Self {
        match e {
            AgentEndpoint::Unix(path) => StoredEndpoint::Unix { path: path.clone() },
            AgentEndpoint::HybridVsock { socket, port } => StoredEndpoint::HybridVsock {
                socket: socket.clone(),
                port: *port,
            },
        }
    }
}

impl From<&StoredEndpoint> for AgentEndpoint {
    fn from(e: &StoredEndpoint) -> Self {
        match e {
            StoredEndpoint::Unix { path } => AgentEndpoint::Unix(path.clone()),
            StoredEndpoint::HybridVsock { socket, port } => AgentEndpoint::HybridVsock {
                socket: socket.clone(),
                port: *port,
            },
        }
    }
}

/// `container.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Container id.
    pub id: String,
    /// Its sandbox's id ([`sandbox_id`] of its own id, or of the sandbox container's it
    /// joined).
    pub sandbox_id: String,
    /// The sandbox container whose sandbox this container joined (its pod annotations named
    /// it); `None` when the container owns its sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_sandbox: Option<String>,
    /// The bundle directory (absolute).
    pub bundle: PathBuf,
    /// The rootfs (absolute).
    pub rootfs: PathBuf,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When `create` ran (RFC 3339).
    pub created: String,
    /// The last status a command set (`created`, `running`, `paused`); the state reports
    /// `stopped` once the holder is gone or wrote its exit file.
    pub status: Status,
    /// The holder process (`None` while `create` starts it).
    pub holder: Option<ProcessId>,
    /// Where the agent listens (`None` while `create` starts the sandbox).
    pub endpoint: Option<StoredEndpoint>,
    /// `agent.dial_timeout_ms` of the config `create` used: `exec`'s bound on reaching the
    /// agent and opening its streams (`None` in records of older versions: the config's
    /// default, see [`Record::dial_timeout`]).
    #[serde(default)]
    pub dial_timeout_ms: Option<u64>,
    /// `sandbox.backend` of the config `create` used.
    pub backend: String,
    /// `sandbox.state_dir` of that config (where the sandbox's own state lives).
    pub sandbox_state_dir: PathBuf,
    /// The spec's hooks that run on the host (`poststart` at `start`, `poststop` at
    /// `delete`; the others ran at `create`).
    #[serde(default)]
    pub hooks: super::hooks::HostHooks,
}

impl Record {
    /// How long `exec` may take to reach the agent and open each stdio stream:
    /// `dial_timeout_ms`, or the config's default `agent.dial_timeout_ms` for a record
    /// written by an older version.
    pub fn dial_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.dial_timeout_ms
                .unwrap_or_else(|| ember_config::AgentConfig::default().dial_timeout_ms),
        )
    }
}

/// `exit.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The init's exit status (code, or 128 + signal).
    pub status: i32,
}

/// The `--root` directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One container's directory under `--root`.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    /// The container id.
    pub id: String,
    /// `<root>/<id>`.
    pub dir: PathBuf,
}

/// Checks a container id (the same rule as sandbox ids, [`ember_sys::id`]'s: it names
/// directories).
pub fn check_id(id: &str) -> Result<(), OciCliError> {
    ember_sys::id::check(id).map_err(|reason| OciCliError::BadId {
        id: id.to_string(),
        reason,
    })
}

impl Store {
    /// The store at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the directory of a new container; fails with "already exists" when there is
    /// one.
    pub fn create(&self, id: &str) -> Result<ContainerDir, OciCliError> {
        check_id(id)?;
        // Private, as runc's root: records name agent sockets.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(OciCliError::io(&self.root))?;
        let dir = self.root.join(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(ContainerDir {
                id: id.to_string(),
                dir,
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(OciCliError::Exists {
                id: id.to_string(),
                dir,
            }),
            Err(e) => Err(OciCliError::io(&dir)(e)),
        }
    }

    /// An existing container's directory; "does not exist" otherwise.
    pub fn open(&self, id: &str) -> Result<ContainerDir, OciCliError> {
        check_id(id)?;
        let dir = self.root.join(id);
        if dir.join(RECORD_FILE).is_file() {
            Ok(ContainerDir {
                id: id.to_string(),
                dir,
            })
        } else {
            Err(OciCliError::NotExist {
                id: id.to_string(),
                root: self.root.clone(),
            })
        }
    }
}

/// Writes `value` as JSON to `path` atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), OciCliError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_vec_pretty(value).expect("record serializes");
    std::fs::write(&tmp, text).map_err(OciCliError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(OciCliError::io(path))
}

impl ContainerDir {
    /// Reads `container.json`.
    pub fn record(&self) -> Result<Record, OciCliError> {
        let path = self.dir.join(RECORD_FILE);
        let text = std::fs::read_to_string(&path).map_err(OciCliError::io(&path))?;
        serde_json::from_str(&text).map_err(|e| OciCliError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// Writes `container.json`.
    pub fn save(&self, record: &Record) -> Result<(), OciCliError> {
        write_json_atomic(&self.dir.join(RECORD_FILE), record)
    }

    /// The holder's exit record, once written.
    pub fn exit(&self) -> Option<ExitRecord> {
        let text = std::fs::read_to_string(self.dir.join(EXIT_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the exit record.
    pub fn save_exit(&self, exit: ExitRecord) -> Result<(), OciCliError> {
        write_json_atomic(&self.dir.join(EXIT_FILE), &exit)
    }

    /// The current status: `stopped` once the exit record exists or the holder is gone,
    /// else what the last command recorded.
    pub fn status(&self, record: &Record) -> Status {
        if self.exit().is_some() {
            return Status::Stopped;
        }
        match &record.holder {
            None => Status::Creating,
            Some(h) if !h.alive() => Status::Stopped,
            Some(_) => record.status,
        }
    }

    /// Takes the container's lock (blocking), released when the file is dropped. `start`
    /// holds it across StartContainer and the record update; the holder takes it before
    /// tearing down, so a short-lived init that exits before `start` has its answer does
    /// not lose that answer with the sandbox.
    pub fn lock(&self) -> Result<std::fs::File, OciCliError> {
        use std::os::fd::AsRawFd;
        let path = self.dir.join(LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(OciCliError::io(&path))?;
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(f);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(OciCliError::io(&path)(e));
            }
        }
    }

    /// Removes the directory, and first the network namespace mounted in it
    /// ([`super::netns`]), if any.
    pub fn remove(&self) -> Result<(), OciCliError> {
        // A network namespace the holder made (microvm backend) is mounted in the
        // directory, also after the holder was killed: off first.
        super::netns::remove_at(&self.dir.join(super::netns::NETNS_FILE))?;
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(OciCliError::io(&self.dir)(e)),
            _ => Ok(()),
        }
    }
}

/// The OCI runtime state (`state ID`), as runc prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    /// The OCI runtime spec version.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The holder's host pid (0 once stopped).
    pub pid: i32,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The rootfs.
    pub rootfs: PathBuf,
    /// When the container was created (RFC 3339).
    pub created: String,
    /// The spec's annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
    /// The owner (runc prints an empty string for root).
    pub owner: String,
}

impl OciState {
    /// The state of a container from its record and status.
    pub fn new(record: &Record, status: Status) -> OciState {
        let pid = match (&record.holder, status) {
            (Some(h), s) if s != Status::Stopped => h.pid,
            _ => 0,
        };
        OciState {
            oci_version: super::spec::OCI_VERSION.to_string(),
            id: record.id.clone(),
            status: status.as_str().to_string(),
            pid,
            bundle: record.bundle.clone(),
            rootfs: record.rootfs.clone(),
            created: record.created.clone(),
            annotations: record.annotations.clone(),
            owner: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            sandbox_id: id.into(),
            pod_sandbox: None,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            annotations: BTreeMap::new(),
            created: "now".into(),
            status: Status::Created,
            holder: None,
            endpoint: Some(StoredEndpoint::Unix { path: "/a".into() }),
            dial_timeout_ms: Some(60_000),
            backend: "process".into(),
            sandbox_state_dir: "/run/ember".into(),
            hooks: Default::default(),
        }
    }

    #[test]
    fn exec_reaches_the_agent_within_creates_dial_timeout() {
        let mut r = record("c1");
        r.dial_timeout_ms = Some(1_500);
        assert_eq!(r.dial_timeout(), std::time::Duration::from_millis(1_500));
        // A record written before the field existed.
        let mut json = serde_json::to_value(&r).unwrap();
        json.as_object_mut().unwrap().remove("dial_timeout_ms");
        let old: Record = serde_json::from_value(json).unwrap();
        assert_eq!(
            old.dial_timeout().as_millis() as u64,
            ember_config::AgentConfig::default().dial_timeout_ms
        );
    }

    #[test]
    fn long_ids_get_a_short_unique_sandbox_id() {
        assert_eq!(sandbox_id("c1"), "c1");
        let a = "a".repeat(64);
        let mut b = a.clone();
        b.replace_range(63.., "b");
        assert_eq!(sandbox_id(&a).len(), 40);
        assert_ne!(sandbox_id(&a), sandbox_id(&b));
        assert!(sandbox_id(&a).starts_with(&a[..23]));
        crate::state::check_id(&sandbox_id(&a)).unwrap();
    }

    #[test]
    fn create_twice_and_open_unknown_use_runc_wordings() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let c = store.create("c1").unwrap();
        c.save(&record("c1")).unwrap();
        let e = store.create("c1").unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        let e = store.open("nope").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(store.open("../x").is_err());
    }

    #[test]
    fn status_follows_holder_and_exit_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let c = store.create("c1").unwrap();
        let mut r = record("c1");
        assert_eq!(c.status(&r), Status::Creating);
        r.holder = Some(ProcessId::current());
        assert_eq!(c.status(&r), Status::Created);
        r.status = Status::Running;
        assert_eq!(c.status(&r), Status::Running);
        assert_eq!(
            OciState::new(&r, Status::Running).pid,
            std::process::id() as i32
        );
        c.save_exit(ExitRecord { status: 3 }).unwrap();
        assert_eq!(c.status(&r), Status::Stopped);
        assert_eq!(OciState::new(&r, Status::Stopped).pid, 0);
        let json = serde_json::to_value(OciState::new(&r, Status::Stopped)).unwrap();
        assert_eq!(json["ociVersion"], super::super::spec::OCI_VERSION);
        assert_eq!(json["status"], "stopped");
    }
}
