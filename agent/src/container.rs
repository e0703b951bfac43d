//! The agent's container table and every lifecycle operation: create (through the spawn
//! helper), start, exec, signal, wait, remove, pause/resume, stats, update, terminal resize,
//! close-stdin and OOM events. The ttrpc layer (`service`) only translates messages.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_agent_protocol::agent::{StatsContainerResponse, Storage};
use libcontainer::container::{Container as LcContainer, ContainerStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slog::{info, o, warn, Logger};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cgroup::{self, CgroupError};
use crate::reaper::Reaper;
use crate::spawn::{self, SpawnError, SpawnRequest, Spawner};
use crate::spec::{self, SpecError};
use crate::stdio::{self, ProcessStdio, StdioError, StreamRegistry};
use crate::storage::{self, Mounted, StorageError};
use crate::tty::{self, ConsoleSocket, TtyError};

/// How often a container's OOM-kill counter is read.
const OOM_POLL: Duration = Duration::from_millis(100);
/// How long removal waits for a killed init process to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often removal retries libcontainer's delete when the cgroup is still busy.
const DELETE_RETRIES: u32 = 5;
/// How many emptied bundle directories are kept for reuse.
const SPARE_BUNDLES: usize = 8;
/// Where they are kept, under the bundles directory.
const SPARES_DIR: &str = ".spare";

/// Errors of container operations; each names the container (and exec) concerned.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No container with this id.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// No such exec in the container.
    #[error("container {container:?} has no process with exec_id {exec:?}")]
    ExecNotFound {
        /// Container id.
        container: String,
        /// Exec id.
        exec: String,
    },
    /// The exec id is taken.
    #[error("container {container:?} already has a process with exec_id {exec:?}")]
    ExecExists {
        /// Container id.
        container: String,
        /// Exec id.
        exec: String,
    },
    /// The operation does not fit the container's state.
    #[error("container {id:?}: {message}")]
    State {
        /// Container id.
        id: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A bad request field or OCI document.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Stdio setup failed.
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// The process could not be created.
    #[error("container {id:?}: {source}")]
    Spawn {
        /// Container id.
        id: String,
        /// Why.
        source: SpawnError,
    },
    /// Terminal handling failed.
    #[error("container {id:?}: {source}")]
    Tty {
        /// Container id.
        id: String,
        /// Why.
        source: TtyError,
    },
    /// A cgroup operation failed.
    #[error("container {id:?}: {source}")]
    Cgroup {
        /// Container id.
        id: String,
        /// Why.
        source: CgroupError,
    },
    /// A storage could not be mounted.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// libcontainer failed on start, kill, pause, resume or delete.
    #[error("container {id:?}: {op}: {message}")]
    Libcontainer {
        /// Container id.
        id: String,
        /// The operation.
        op: &'static str,
        /// libcontainer's error chain.
        message: String,
    },
    /// An I/O error on the agent's state directory.
    #[error("container {id:?}: {path}: {source}")]
    Io {
        /// Container id.
        id: String,
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One process of a container (its init or an exec).
struct Process {
    pid: i32,
    exit: watch::Receiver<Option<i32>>,
    stdio: ProcessStdio,
    pty: Option<OwnedFd>,
}

struct Container {
    cgroup: PathBuf,
    bundle: PathBuf,
    init: Process,
    execs: HashMap<String, Process>,
    storages: Vec<Mounted>,
    started: bool,
    /// The spec has hooks: start and delete then run in the spawn helper.
    hooks: bool,
    oom_task: JoinHandle<()>,
}

/// The pool of reusable bundle directories.
#[derive(Default)]
struct SpareBundles {
    dirs: Vec<PathBuf>,
    /// Names the next directory put into the pool.
    next: u64,
}

/// Stdio stream ids of a new process.
#[derive(Debug, Clone, Default)]
pub struct StreamIds {
    /// stdin stream id (empty: /dev/null).
    pub stdin: String,
    /// stdout stream id (empty: /dev/null).
    pub stdout: String,
    /// stderr stream id (empty: /dev/null).
    pub stderr: String,
}

/// The container table.
pub struct Containers {
    log: Logger,
    reaper: Reaper,
    spawner: Spawner,
    streams: StreamRegistry,
    /// libcontainer's state root.
    root: PathBuf,
    /// The agent's bundle copies.
    bundles: PathBuf,
    /// Bundle directories of removed containers (each with its `config.json`), reused by
    /// the next creates: renaming a directory into place and overwriting its file is much
    /// cheaper than creating and deleting both on a disk file system (ext4 scans past
    /// every recently deleted inode when it allocates one).
    spares: Arc<Mutex<SpareBundles>>,
    /// Containers being cleaned up in the background (see [`Containers::remove`]); done
    /// when the value turns true.
    cleanups: Arc<Mutex<HashMap<String, watch::Receiver<bool>>>>,
    /// Console sockets.
    consoles: PathBuf,
    /// Numbers the console sockets: short names (`c<n>.sock`), because the socket path
    /// must fit in sun_path (108 bytes) and container ids may be 64 characters long.
    console_seq: std::sync::atomic::AtomicU64,
    table: Mutex<HashMap<String, Container>>,
    reserved: Mutex<HashSet<String>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

fn lc_err(id: &str, op: &'static str, e: libcontainer::error::LibcontainerError) -> ContainerError {
    ContainerError::Libcontainer {
        id: id.to_string(),
        op,
        message: spawn::error_chain(&e),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking agent task panicked")
}

/// Frees an id reservation when creation ends, whichever way.
struct Reservation<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("reserved lock").remove(&self.id);
    }
}

/// Keeps a removed container's bundle directory for reuse in `spares`, or deletes it when
/// the pool is full. Only a directory holding nothing but `config.json` is kept.
fn recycle_bundle(spares: &Mutex<SpareBundles>, bundles: &Path, bundle: &Path) {
    let mut pool = spares.lock().expect("spares lock");
    if pool.dirs.len() < SPARE_BUNDLES && only_config_json(bundle) {
        let spare = bundles.join(SPARES_DIR).join(pool.next.to_string());
        pool.next += 1;
        if std::fs::rename(bundle, &spare).is_ok() {
            pool.dirs.push(spare);
            return;
        }
    }
    drop(pool);
    let _ = std::fs::remove_dir_all(bundle);
}

/// Whether `dir` holds exactly one entry, `config.json`.
fn only_config_json(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let names: Vec<_> = entries.flatten().map(|e| e.file_name()).take(2).collect();
    names.len() == 1 && names[0] == "config.json"
}

/// Deletes a hook-less container's libcontainer state and cgroup. A stopped container on a
/// cgroup v1 or hybrid host is deleted here: its cgroup through [`cgroup::remove_v1`] (which
/// does not re-read the mount table for each controller, as a libcontainer delete does),
/// then its state directory; anything else (a process still alive, Intel RDT, cgroup v2)
/// goes through libcontainer's own delete.
fn delete_state(id: &str, dir: PathBuf, cgroup: &Path) -> Result<(), ContainerError> {
    let mut c = LcContainer::load(dir.clone()).map_err(|e| lc_err(id, "delete", e))?;
    if c.status() == ContainerStatus::Stopped && c.intel_rdt_dir().is_none() {
        let removed = cgroup::remove_v1(cgroup).map_err(|source| ContainerError::Cgroup {
            id: id.to_string(),
            source,
        })?;
        if removed {
            return std::fs::remove_dir_all(&dir).map_err(|source| ContainerError::Io {
                id: id.to_string(),
                path: dir,
                source,
            });
        }
    }
    c.delete(true).map_err(|e| lc_err(id, "delete", e))
}

impl Containers {
    /// A table keeping its state under `state_dir`.
    pub fn new(
        log: Logger,
        reaper: Reaper,
        streams: StreamRegistry,
        state_dir: &Path,
    ) -> std::io::Result<Self> {
        let root = state_dir.join("containers");
        let bundles = state_dir.join("bundles");
        let consoles = state_dir.join("consoles");
        for d in [&root, &bundles, &consoles] {
            std::fs::create_dir_all(d)?;
        }
        // Spares left by an agent that did not shut down cleanly are not reused.
        let spares = bundles.join(SPARES_DIR);
        let _ = std::fs::remove_dir_all(&spares);
        std::fs::create_dir_all(&spares)?;
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Ok(Containers {
            log,
            spawner: Spawner::new(reaper.clone()),
            reaper,
            streams,
            root,
            bundles,
            spares: Arc::new(Mutex::new(SpareBundles::default())),
            cleanups: Arc::new(Mutex::new(HashMap::new())),
            consoles,
            console_seq: Default::default(),
            table: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        })
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>, ContainerError> {
        let table = self.table.lock().expect("table lock");
        let mut reserved = self.reserved.lock().expect("reserved lock");
        if table.contains_key(id) || !reserved.insert(id.to_string()) {
            return Err(ContainerError::Exists(id.to_string()));
        }
        Ok(Reservation {
            set: &self.reserved,
            id: id.to_string(),
        })
    }

    /// Watches `pid` and publishes its exit status.
    fn watch_exit(&self, pid: i32) -> watch::Receiver<Option<i32>> {
        let (tx, rx) = watch::channel(None);
        let reaped = self.reaper.watch(pid);
        tokio::spawn(async move {
            if let Ok(status) = reaped.await {
                let _ = tx.send(Some(status));
            }
        });
        rx
    }

    /// Creates the process of `req` with stdio on `ids`, a terminal when `terminal`.
    async fn spawn_process(
        &self,
        id: &str,
        terminal: bool,
        ids: &StreamIds,
        make_req: impl FnOnce(Option<PathBuf>) -> SpawnRequest,
    ) -> Result<Process, ContainerError> {
        if terminal {
            self.streams
                .check_terminal_ids(&ids.stdin, &ids.stdout, &ids.stderr)?;
            let n = self
                .console_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let console_name = format!("c{n}.sock");
            let sock =
                ConsoleSocket::bind(&self.consoles.join(&console_name)).map_err(|source| {
                    ContainerError::Tty {
                        id: id.to_string(),
                        source,
                    }
                })?;
            let req = make_req(Some(sock.path().to_path_buf()));
            let (child, _) = self.streams.pipes("", "", "")?;
            let receive = tokio::spawn(sock.receive());
            let pid = match self.spawner.spawn(&req, child).await {
                Ok(pid) => pid,
                Err(source) => {
                    receive.abort();
                    let _ = std::fs::remove_file(self.consoles.join(&console_name));
                    return Err(ContainerError::Spawn {
                        id: id.to_string(),
                        source,
                    });
                }
            };
            let exit = self.watch_exit(pid);
            let master = receive
                .await
                .map_err(|e| ContainerError::Tty {
                    id: id.to_string(),
                    source: TtyError::Receive {
                        path: self.consoles.join(&console_name),
                        reason: e.to_string(),
                    },
                })?
                .map_err(|source| ContainerError::Tty {
                    id: id.to_string(),
                    source,
                });
            let master = match master {
                Ok(m) => m,
                Err(e) => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    return Err(e);
                }
            };
            let stdio = self.streams.terminal(&master, &ids.stdin, &ids.stdout)?;
            Ok(Process {
                pid,
                exit,
                stdio,
                pty: Some(master),
            })
        } else {
            let (child, stdio) = self.streams.pipes(&ids.stdin, &ids.stdout, &ids.stderr)?;
            let req = make_req(None);
            match self.spawner.spawn(&req, child).await {
                Ok(pid) => Ok(Process {
                    pid,
                    exit: self.watch_exit(pid),
                    stdio,
                    pty: None,
                }),
                Err(source) => {
                    self.streams.release(&stdio.ids);
                    Err(ContainerError::Spawn {
                        id: id.to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// Runs a libcontainer operation that waits for child processes (hooks) in the
    /// single-threaded helper, where no reaper races it.
    async fn in_helper(&self, id: &str, req: SpawnRequest) -> Result<(), ContainerError> {
        let (child, _) = self.streams.pipes("", "", "")?;
        self.spawner
            .spawn(&req, child)
            .await
            .map(|_| ())
            .map_err(|source| ContainerError::Spawn {
                id: id.to_string(),
                source,
            })
    }

    /// Creates a container whose init waits for [`Containers::start`]. On failure nothing
    /// is left behind: no process, mount, cgroup, state or stream.
    pub async fn create(
        &self,
        id: &str,
        spec_json: &str,
        bundle_path: &str,
        storages: &[Storage],
        ids: &StreamIds,
    ) -> Result<i32, ContainerError> {
        spec::check_id("container_id", id)?;
        // A removed container with this id may still be being cleaned up.
        let pending = self
            .cleanups
            .lock()
            .expect("cleanups lock")
            .get(id)
            .cloned();
        if let Some(mut done) = pending {
            let _ = done.wait_for(|d| *d).await;
        }
        let _reservation = self.reserve(id)?;
        let log = self.log.new(o!("container" => id.to_string()));
        let (spec, cgroup) = spec::prepare(id, spec_json, bundle_path)?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let hooks = spec.hooks().as_ref().is_some_and(|h| {
            [
                h.prestart(),
                h.create_runtime(),
                h.create_container(),
                h.start_container(),
                h.poststart(),
                h.poststop(),
            ]
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
        });
        let mounted = if storages.is_empty() {
            Vec::new()
        } else {
            // A block storage may wait for its disk to show a capacity: off the async threads.
            let storages = storages.to_vec();
            blocking(move || storage::mount_all(&storages)).await?
        };
        let bundle = self.bundles.join(id);
        let result = async {
            self.take_spare_bundle(&bundle);
            spec::write_bundle(&bundle, &spec)?;
            let (root, bundle_c, id_s) = (self.root.clone(), bundle.clone(), id.to_string());
            self.spawn_process(id, terminal, ids, move |console_socket| {
                SpawnRequest::Create {
                    id: id_s,
                    root,
                    bundle: bundle_c,
                    console_socket,
                }
            })
            .await
        }
        .await;
        let init = match result {
            Ok(p) => p,
            Err(e) => {
                warn!(log, "create failed"; "error" => %e);
                // libcontainer removes its own state and cgroup when its build fails; if the
                // build succeeded and a later step failed (the terminal hand-over), the
                // container exists and is deleted here, processes and cgroup included.
                let dir = self.root.join(id);
                for _ in 0..DELETE_RETRIES {
                    if !dir.exists() {
                        break;
                    }
                    let d = dir.clone();
                    let _ = blocking(move || LcContainer::load(d).and_then(|mut c| c.delete(true)))
                        .await;
                    if dir.exists() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir_all(&bundle);
                storage::unmount_all(&mounted);
                return Err(e);
            }
        };
        let pid = init.pid;
        let oom_task = self.watch_oom(id, &cgroup);
        info!(log, "container created"; "pid" => pid, "terminal" => terminal);
        self.table.lock().expect("table lock").insert(
            id.to_string(),
            Container {
                cgroup,
                bundle,
                init,
                execs: HashMap::new(),
                storages: mounted,
                started: false,
                hooks,
                oom_task,
            },
        );
        Ok(pid)
    }

    fn watch_oom(&self, id: &str, cgroup: &Path) -> JoinHandle<()> {
        let file = cgroup::oom_counter_file(cgroup);
        let tx = self.oom_tx.clone();
        let id = id.to_string();
        let log = self.log.new(o!("container" => id.clone()));
        tokio::spawn(async move {
            let mut seen = cgroup::read_oom_kills(&file).unwrap_or(0);
            let mut tick = tokio::time::interval(OOM_POLL);
            loop {
                tick.tick().await;
                let Some(n) = cgroup::read_oom_kills(&file) else {
                    continue;
                };
                if n > seen {
                    warn!(log, "OOM kill in container"; "count" => n);
                    seen = n;
                    if tx.send(id.clone()).is_err() {
                        return;
                    }
                }
            }
        })
    }

    fn with<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> Result<T, ContainerError>,
    ) -> Result<T, ContainerError> {
        let mut table = self.table.lock().expect("table lock");
        let c = table
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        f(c)
    }

    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process) -> Result<T, ContainerError>,
    ) -> Result<T, ContainerError> {
        self.with(id, |c| {
            let p = if exec_id.is_empty() {
                &mut c.init
            } else {
                c.execs
                    .get_mut(exec_id)
                    .ok_or_else(|| ContainerError::ExecNotFound {
                        container: id.to_string(),
                        exec: exec_id.to_string(),
                    })?
            };
            f(p)
        })
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<i32, ContainerError> {
        let (pid, hooks) = self.with(id, |c| {
            if c.started {
                return Err(ContainerError::State {
                    id: id.to_string(),
                    message: "is already started".into(),
                });
            }
            Ok((c.init.pid, c.hooks))
        })?;
        if hooks {
            self.in_helper(
                id,
                SpawnRequest::Start {
                    id: id.to_string(),
                    root: self.root.clone(),
                },
            )
            .await?;
        } else {
            let dir = self.root.join(id);
            let idc = id.to_string();
            blocking(move || {
                LcContainer::load(dir)
                    .and_then(|mut c| c.start())
                    .map_err(|e| lc_err(&idc, "start", e))
            })
            .await?;
        }
        self.with(id, |c| {
            c.started = true;
            Ok(())
        })?;
        info!(self.log, "container started"; "container" => id, "pid" => pid);
        Ok(pid)
    }

    /// Runs an additional process (an OCI `process` JSON) in a running container. The
    /// exec id must not name a process that is still running.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &str,
        ids: &StreamIds,
    ) -> Result<i32, ContainerError> {
        spec::check_id("exec_id", exec_id)?;
        let process: oci_spec::runtime::Process = spec::parse("process_json", process_json)?;
        spec::check_process(&process, "process_json: ")?;
        let streams = &self.streams;
        let bundle = self.with(id, |c| {
            // An exec id is free again once its process has exited (containerd reuses ids).
            if let Some(old) = c.execs.get(exec_id) {
                if old.exit.borrow().is_none() {
                    return Err(ContainerError::ExecExists {
                        container: id.to_string(),
                        exec: exec_id.to_string(),
                    });
                }
                if let Some(old) = c.execs.remove(exec_id) {
                    streams.release(&old.stdio.ids);
                }
            }
            if !c.started || c.init.exit.borrow().is_some() {
                return Err(ContainerError::State {
                    id: id.to_string(),
                    message: "is not running; exec needs a started, running container".into(),
                });
            }
            Ok(c.bundle.clone())
        })?;
        let terminal = process.terminal().unwrap_or(false);
        let path = bundle.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&process).expect("process serializes");
        std::fs::write(&path, json).map_err(|source| ContainerError::Io {
            id: id.to_string(),
            path: path.clone(),
            source,
        })?;
        let (root, id_s, p) = (self.root.clone(), id.to_string(), path.clone());
        let result = self
            .spawn_process(id, terminal, ids, move |console_socket| {
                SpawnRequest::Exec {
                    id: id_s,
                    root,
                    process: p,
                    console_socket,
                }
            })
            .await;
        let _ = std::fs::remove_file(&path);
        let proc = result?;
        let pid = proc.pid;
        let inserted = self.with(id, |c| {
            if c.execs.contains_key(exec_id) {
                return Err(ContainerError::ExecExists {
                    container: id.to_string(),
                    exec: exec_id.to_string(),
                });
            }
            c.execs.insert(exec_id.to_string(), proc);
            Ok(())
        });
        if let Err(e) = inserted {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(e);
        }
        info!(self.log, "process executed"; "container" => id, "exec" => exec_id, "pid" => pid);
        Ok(pid)
    }

    /// Sends `signal` to one process, or with `all` to every process of the container.
    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let sig = Signal::try_from(signal as i32).map_err(|_| SpecError::Field {
            field: "signal".into(),
            message: format!("{signal} is not a valid signal number"),
        })?;
        if all {
            self.with(id, |_| Ok(()))?;
            let dir = self.root.join(id);
            let idc = id.to_string();
            return blocking(move || {
                LcContainer::load(dir)
                    .and_then(|mut c| c.kill(sig, true))
                    .map_err(|e| lc_err(&idc, "kill", e))
            })
            .await;
        }
        let pid = self.with_process(id, exec_id, |p| {
            if p.exit.borrow().is_some() {
                return Err(ContainerError::State {
                    id: id.to_string(),
                    message: format!("process {exec_id:?} has already exited"),
                });
            }
            Ok(p.pid)
        })?;
        kill(Pid::from_raw(pid), sig).map_err(|e| ContainerError::State {
            id: id.to_string(),
            message: format!("cannot signal pid {pid}: {e}"),
        })
    }

    /// Waits for a process to exit; returns its exit status (128 + N for signal N).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        let mut rx = self.with_process(id, exec_id, |p| Ok(p.exit.clone()))?;
        let status = rx
            .wait_for(|s| s.is_some())
            .await
            .map_err(|_| ContainerError::State {
                id: id.to_string(),
                message: "was removed while waiting".into(),
            })?;
        Ok(status.expect("waited for Some"))
    }

    /// Removes a container: kills it (only with `force` if it is running), deletes its
    /// cgroup and state, closes its streams and unmounts its storages.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let (running, init_exit) = self.with(id, |c| {
            Ok((
                c.started && c.init.exit.borrow().is_none(),
                c.init.exit.clone(),
            ))
        })?;
        // The init had exited by itself: nothing is left to kill, and the cgroup and state
        // are deleted in the background.
        let exited = init_exit.borrow().is_some();
        if running && !force {
            return Err(ContainerError::State {
                id: id.to_string(),
                message: "is running; stop it first or remove it with force".into(),
            });
        }
        // Kill whatever still runs (the init of a created container or, with force, of a
        // running one; execs that outlive an init without a pid namespace) and let the
        // reaper collect it before the cgroup goes: a killed but unreaped process keeps
        // its cgroup busy.
        let (init_pid, mut waits) = self.with(id, |c| {
            let mut waits = vec![c.init.exit.clone()];
            for p in c.execs.values() {
                if p.exit.borrow().is_none() {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                    waits.push(p.exit.clone());
                }
            }
            Ok((c.init.pid, waits))
        })?;
        let dir = self.root.join(id);
        if init_exit.borrow().is_none() && dir.exists() {
            let (d, idc) = (dir.clone(), id.to_string());
            // libcontainer's kill of all processes also copes with a frozen (paused) cgroup.
            let killed = blocking(move || {
                LcContainer::load(d)
                    .and_then(|mut c| c.kill(Signal::SIGKILL, true))
                    .map_err(|e| lc_err(&idc, "kill", e))
            })
            .await;
            if let Err(e) = killed {
                warn!(self.log, "kill before removal failed"; "container" => id, "error" => %e);
            }
            let _ = kill(Pid::from_raw(init_pid), Signal::SIGKILL);
        }
        for w in waits.iter_mut() {
            let _ = tokio::time::timeout(REAP_TIMEOUT, w.wait_for(|s| s.is_some())).await;
        }
        let (hooks, execs_done) = self.with(id, |c| {
            Ok((c.hooks, c.execs.values().all(|p| p.exit.borrow().is_some())))
        })?;
        if exited && execs_done && !hooks && dir.exists() {
            return self.remove_in_background(id, dir);
        }
        if dir.exists() && hooks {
            self.in_helper(
                id,
                SpawnRequest::Delete {
                    id: id.to_string(),
                    root: self.root.clone(),
                },
            )
            .await?;
        } else if dir.exists() {
            let cg = self.with(id, |c| Ok(c.cgroup.clone()))?;
            let mut attempt = 0;
            loop {
                let (d, idc, cg) = (dir.clone(), id.to_string(), cg.clone());
                let r = blocking(move || delete_state(&idc, d, &cg)).await;
                match r {
                    Ok(()) => break,
                    // A process in uninterruptible sleep can hold the cgroup a while longer.
                    Err(e) if attempt < DELETE_RETRIES && dir.exists() => {
                        warn!(self.log, "delete failed, retrying"; "container" => id, "error" => %e);
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let c = self
            .table
            .lock()
            .expect("table lock")
            .remove(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        c.oom_task.abort();
        self.streams.release(&c.init.stdio.ids);
        for p in c.execs.values() {
            self.streams.release(&p.stdio.ids);
        }
        storage::unmount_all(&c.storages);
        recycle_bundle(&self.spares, &self.bundles, &c.bundle);
        info!(self.log, "container removed"; "container" => id);
        Ok(())
    }

    /// Removes a hook-less container whose processes have all exited and been reaped: it
    /// leaves the table, its streams and storages are released at once, and its cgroup,
    /// libcontainer state and bundle copy are deleted by a background task. Nothing of the
    /// container is running any more, so the client need not wait for that; a create with
    /// the same id waits for it, and [`Containers::settle`] waits for every pending one.
    fn remove_in_background(&self, id: &str, dir: PathBuf) -> Result<(), ContainerError> {
        let (tx, rx) = watch::channel(false);
        let c = {
            let mut table = self.table.lock().expect("table lock");
            let c = table
                .remove(id)
                .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
            // Registered before the table lock is released: the id is always either in
            // the table or pending, so a create with it either fails or waits.
            self.cleanups
                .lock()
                .expect("cleanups lock")
                .insert(id.to_string(), rx);
            c
        };
        c.oom_task.abort();
        self.streams.release(&c.init.stdio.ids);
        for p in c.execs.values() {
            self.streams.release(&p.stdio.ids);
        }
        storage::unmount_all(&c.storages);
        // Its pipes and terminal close now, as with a synchronous removal.
        let Container { cgroup, bundle, .. } = c;
        let (log, cleanups, spares, bundles) = (
            self.log.new(o!("container" => id.to_string())),
            self.cleanups.clone(),
            self.spares.clone(),
            self.bundles.clone(),
        );
        let id = id.to_string();
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                let (d, idc, cg) = (dir.clone(), id.clone(), cgroup.clone());
                match blocking(move || delete_state(&idc, d, &cg)).await {
                    Ok(()) => break,
                    // A process in uninterruptible sleep can hold the cgroup a while longer.
                    Err(e) if attempt < DELETE_RETRIES && dir.exists() => {
                        warn!(log, "delete failed, retrying"; "error" => %e);
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        warn!(log, "delete failed"; "error" => %e);
                        break;
                    }
                }
            }
            recycle_bundle(&spares, &bundles, &bundle);
            cleanups.lock().expect("cleanups lock").remove(&id);
            let _ = tx.send(true);
            info!(log, "container removed");
        });
        Ok(())
    }

    /// Waits until every background cleanup of removed containers has finished.
    pub async fn settle(&self) {
        let pending: Vec<_> = self
            .cleanups
            .lock()
            .expect("cleanups lock")
            .values()
            .cloned()
            .collect();
        for mut done in pending {
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Moves a spare bundle directory (if there is one) to `bundle`, where
    /// [`spec::write_bundle`] then overwrites its `config.json`.
    fn take_spare_bundle(&self, bundle: &Path) {
        let spare = self.spares.lock().expect("spares lock").dirs.pop();
        if let Some(spare) = spare {
            if std::fs::rename(&spare, bundle).is_err() {
                let _ = std::fs::remove_dir_all(&spare);
            }
        }
    }

    /// Deletes the spare bundle directories (on shutdown).
    pub fn remove_spare_bundles(&self) {
        self.spares.lock().expect("spares lock").dirs.clear();
        let _ = std::fs::remove_dir_all(self.bundles.join(SPARES_DIR));
    }

    /// Ids of every container.
    pub fn ids(&self) -> Vec<String> {
        self.table
            .lock()
            .expect("table lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Pids in the container's cgroup.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<i32>, ContainerError> {
        let cg = self.with(id, |c| Ok(c.cgroup.clone()))?;
        let idc = id.to_string();
        blocking(move || {
            cgroup::pids(&idc, &cg).map_err(|source| ContainerError::Cgroup {
                id: idc.clone(),
                source,
            })
        })
        .await
    }

    /// Resource usage from the container's cgroup.
    pub async fn stats(&self, id: &str) -> Result<StatsContainerResponse, ContainerError> {
        let cg = self.with(id, |c| Ok(c.cgroup.clone()))?;
        let idc = id.to_string();
        blocking(move || {
            cgroup::stats(&idc, &cg).map_err(|source| ContainerError::Cgroup {
                id: idc.clone(),
                source,
            })
        })
        .await
    }

    /// Applies new `linux.resources`.
    pub async fn update(&self, id: &str, resources_json: &str) -> Result<(), ContainerError> {
        let res = spec::resources(resources_json)?;
        let cg = self.with(id, |c| Ok(c.cgroup.clone()))?;
        let idc = id.to_string();
        blocking(move || {
            cgroup::update(&idc, &cg, &res).map_err(|source| ContainerError::Cgroup {
                id: idc.clone(),
                source,
            })
        })
        .await
    }

    /// Freezes (`pause`) or thaws the container.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<(), ContainerError> {
        self.with(id, |_| Ok(()))?;
        let dir = self.root.join(id);
        let idc = id.to_string();
        blocking(move || {
            let mut c = LcContainer::load(dir).map_err(|e| lc_err(&idc, "load", e))?;
            if pause {
                c.pause().map_err(|e| lc_err(&idc, "pause", e))
            } else {
                c.resume().map_err(|e| lc_err(&idc, "resume", e))
            }
        })
        .await
    }

    /// Resizes a process's terminal.
    pub fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), ContainerError> {
        self.with_process(id, exec_id, |p| {
            let master = p.pty.as_ref().ok_or_else(|| ContainerError::State {
                id: id.to_string(),
                message: format!("process {exec_id:?} has no terminal (terminal: false)"),
            })?;
            tty::resize(
                master,
                rows.min(u16::MAX as u32) as u16,
                cols.min(u16::MAX as u32) as u16,
            )
            .map_err(|source| ContainerError::Tty {
                id: id.to_string(),
                source,
            })
        })
    }

    /// Closes a process's stdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        self.with_process(id, exec_id, |p| {
            if let Some(h) = &p.stdio.stdin {
                stdio::close_stdin(h);
            }
            Ok(())
        })
    }

    /// Waits for the next OOM kill in any container and returns its id.
    pub async fn next_oom(&self) -> Option<String> {
        self.oom_rx.lock().await.recv().await
    }
}
