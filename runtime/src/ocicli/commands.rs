//! The commands that act on an existing container: `start`, `state`, `kill`, `delete`,
//! `pause`, `resume`, `ps` and `update`. Each reads the container's record under `--root`
//! and talks to its sandbox's agent directly (the holder only relays and waits).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_agent_protocol::agent::{
    PauseContainerRequest, RemoveContainerRequest, ResumeContainerRequest, SignalProcessRequest,
    StartContainerRequest, UpdateContainerRequest,
};
use ember_agent_protocol::AgentConnection;

use super::error::OciCliError;
use super::store::{ContainerDir, OciState, Record, Status, Store};
use crate::endpoint::AgentEndpoint;
use crate::sandbox::{ctx, rpc_message};
use crate::state::{sandboxes_dir, SandboxState};

/// How long `delete` waits for a holder to exit after its container was removed.
const HOLDER_EXIT_WAIT: Duration = Duration::from_secs(10);

/// Runs `f` on a single-threaded runtime (the commands make a few RPCs and exit).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// The container's directory, record and current status.
fn open(store: &Store, id: &str) -> Result<(ContainerDir, Record, Status), OciCliError> {
    let dir = store.open(id)?;
    let record = dir.record()?;
    let status = dir.status(&record);
    Ok((dir, record, status))
}

/// Connects to the agent of a container whose holder runs.
async fn connect(record: &Record, status: Status) -> Result<AgentConnection, OciCliError> {
    let endpoint = match (&record.endpoint, status) {
        (Some(e), Status::Created | Status::Running | Status::Paused) => AgentEndpoint::from(e),
        _ => {
            return Err(OciCliError::NotRunning {
                id: record.id.clone(),
            })
        }
    };
    endpoint
        .connect(Duration::from_secs(5))
        .await
        .map_err(|source| OciCliError::Unreachable {
            id: record.id.clone(),
            source,
        })
}

/// An agent error; a process the agent no longer has counts as "container not running".
fn agent_err(id: &str, rpc: &'static str, e: ttrpc::Error) -> OciCliError {
    if let ttrpc::Error::RpcStatus(s) = &e {
        if matches!(s.code(), ttrpc::Code::NOT_FOUND) {
            return OciCliError::NotRunning { id: id.to_string() };
        }
    }
    OciCliError::Agent {
        id: id.to_string(),
        rpc,
        message: rpc_message(&e),
    }
}

/// `state`: the OCI state of the container.
pub fn state(store: &Store, id: &str) -> Result<OciState, OciCliError> {
    let (_, record, status) = open(store, id)?;
    Ok(OciState::new(&record, status))
}

/// `start`: starts the init of a created container.
pub fn start(store: &Store, id: &str) -> Result<(), OciCliError> {
    let dir = store.open(id)?;
    let _lock = dir.lock()?;
    let mut record = dir.record()?;
    let status = dir.status(&record);
    match status {
        Status::Created => {}
        Status::Stopped => {
            return Err(OciCliError::WrongStatus {
                id: id.into(),
                action: "start",
                status: "stopped".into(),
            })
        }
        s => {
            return Err(OciCliError::WrongStatus {
                id: id.into(),
                action: "start",
                status: format!("{} (already started)", s.as_str()),
            })
        }
    }
    block_on(async {
        let agent = connect(&record, status).await?;
        let mut r = StartContainerRequest::new();
        r.container_id = id.to_string();
        agent
            .agent
            .start_container(ctx(), &r)
            .await
            .map_err(|e| agent_err(id, "StartContainer", e))
    })?;
    record.status = Status::Running;
    dir.save(&record)?;
    if !record.hooks.poststart.is_empty() {
        let mut st = OciState::new(&record, Status::Running);
        st.pid = init_host_pid(&record, st.pid);
        let state = serde_json::to_string(&st).expect("state serializes");
        // As runc: a failing poststart hook is reported, the container keeps running.
        if let Err(e) = super::hooks::run("poststart", &record.hooks.poststart, &state) {
            log::warn!("container={id}: {e}");
        }
    }
    Ok(())
}

/// `kill`: sends `signal` to the init (to every process of the container with `all`).
pub fn kill(store: &Store, id: &str, signal: i32, all: bool) -> Result<(), OciCliError> {
    let (_, record, status) = open(store, id)?;
    block_on(async {
        let agent = connect(&record, status).await?;
        let mut r = SignalProcessRequest::new();
        r.container_id = id.to_string();
        r.signal = signal as u32;
        r.all = all;
        agent
            .agent
            .signal_process(ctx(), &r)
            .await
            .map_err(|e| agent_err(id, "SignalProcess", e))
    })?;
    Ok(())
}

/// `pause` (`resume` with `pause == false`): freezes or thaws the container's processes.
pub fn pause(store: &Store, id: &str, pause: bool) -> Result<(), OciCliError> {
    let (dir, mut record, status) = open(store, id)?;
    let (want, action) = if pause {
        (Status::Running, "pause")
    } else {
        (Status::Paused, "resume")
    };
    if status == Status::Stopped {
        return Err(OciCliError::NotRunning { id: id.into() });
    }
    if status != want {
        return Err(OciCliError::WrongStatus {
            id: id.into(),
            action,
            status: status.as_str().into(),
        });
    }
    block_on(async {
        let agent = connect(&record, status).await?;
        if pause {
            let mut r = PauseContainerRequest::new();
            r.container_id = id.to_string();
            agent
                .agent
                .pause_container(ctx(), &r)
                .await
                .map(drop)
                .map_err(|e| agent_err(id, "PauseContainer", e))
        } else {
            resume_in(&agent, id).await
        }
    })?;
    record.status = if pause {
        Status::Paused
    } else {
        Status::Running
    };
    dir.save(&record)
}

/// Thaws container `id` through its sandbox's agent.
async fn resume_in(agent: &AgentConnection, id: &str) -> Result<(), OciCliError> {
    let mut r = ResumeContainerRequest::new();
    r.container_id = id.to_string();
    agent
        .agent
        .resume_container(ctx(), &r)
        .await
        .map(drop)
        .map_err(|e| agent_err(id, "ResumeContainer", e))
}

/// Reads `--resources FILE` (`-`: stdin) and validates it as OCI `linux.resources`.
pub fn load_resources(path: &Path) -> Result<String, OciCliError> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(OciCliError::io("stdin"))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(OciCliError::io(path))?
    };
    let bad = |field: String, message: String| OciCliError::BadInput {
        what: "--resources",
        path: path.to_path_buf(),
        field,
        message,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(".".into(), format!("invalid JSON: {e}")))?;
    serde_path_to_error::deserialize::<_, oci_spec::runtime::LinuxResources>(json)
        .map_err(|e| bad(e.path().to_string(), e.into_inner().to_string()))?;
    Ok(text)
}

/// `update`: applies new `linux.resources` to the container's cgroup.
pub fn update(store: &Store, id: &str, resources: &Path) -> Result<(), OciCliError> {
    let (_, record, status) = open(store, id)?;
    let json = load_resources(resources)?;
    block_on(async {
        let agent = connect(&record, status).await?;
        let mut r = UpdateContainerRequest::new();
        r.container_id = id.to_string();
        r.resources_json = json;
        agent
            .agent
            .update_container(ctx(), &r)
            .await
            .map_err(|e| agent_err(id, "UpdateContainer", e))
    })?;
    Ok(())
}

/// `ps`: the container's processes as host pids. On the `process` backend they are the
/// pids in the container's host cgroup (`/ember/<id>/<id>`); in a microVM the container's
/// processes have no host pids, and the holder's pid stands for them.
pub fn pids(store: &Store, id: &str) -> Result<Vec<i32>, OciCliError> {
    let (_, record, status) = open(store, id)?;
    if status == Status::Stopped {
        return Ok(Vec::new());
    }
    Ok(host_pids(&record))
}

/// The host pids of a container's processes: on the `process` backend those of its host
/// cgroup (`/ember/<id>/<id>`) but the holder's; in a microVM the holder's pid stands for
/// them.
pub fn host_pids(record: &Record) -> Vec<i32> {
    if record.backend != "process" {
        return record.holder.iter().map(|h| h.pid).collect();
    }
    let cgroup = super::holder::container_cgroup(record);
    let mut pids = Vec::new();
    for dir in crate::cgroups::existing(&cgroup) {
        collect_procs(&dir, &mut pids);
        if !pids.is_empty() {
            break;
        }
    }
    // The holder sits in the container's cgroup too; it is not one of its processes.
    let holder = record.holder.as_ref().map(|h| h.pid);
    pids.retain(|p| Some(*p) != holder);
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The host process that stands for the container in hook states: on the `process`
/// backend the first of its processes in a network namespace other than this process's
/// (the container's init), so that hooks such as Docker's `libnetwork-setkey` find the
/// container's namespaces under `/proc/<pid>/ns`; otherwise `fallback` (the holder).
pub fn init_host_pid(record: &Record, fallback: i32) -> i32 {
    let own = std::fs::read_link("/proc/self/ns/net").ok();
    host_pids(record)
        .into_iter()
        .find(|p| std::fs::read_link(format!("/proc/{p}/ns/net")).ok() != own)
        .unwrap_or(fallback)
}

fn collect_procs(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_procs(&e.path(), out);
            }
        }
    }
}

/// `ps --format table`: the lines of `ps ARGS` (default `-ef`) whose PID is the
/// container's, after its header.
pub fn ps_table(pids: &[i32], ps_args: &[String]) -> Result<String, OciCliError> {
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(OciCliError::io("ps"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| OciCliError::Usage(format!("ps {}: no PID column", args.join(" "))))?;
    let mut table = format!("{header}\n");
    for l in lines {
        let pid = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            table.push_str(l);
            table.push('\n');
        }
    }
    Ok(table)
}

/// `delete`: removes a stopped (or, with `force` or when only created, any) container:
/// the container in its sandbox (its holder then removes the sandbox and exits), the
/// holder itself if it does not exit in time, whatever the sandbox left when its holder
/// was killed (through the sandbox's own state record), and the record under `--root`.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<(), OciCliError> {
    let dir = store.open(id)?;
    let record = match dir.record() {
        Ok(r) => r,
        Err(e @ OciCliError::Corrupt { .. }) if !force => return Err(e),
        Err(_) => return dir.remove(),
    };
    let status = dir.status(&record);
    if matches!(status, Status::Running | Status::Paused | Status::Creating) && !force {
        return Err(OciCliError::NotStopped {
            id: id.into(),
            status: status.as_str().into(),
        });
    }
    if let Some(sandbox) = &record.pod_sandbox {
        // Out of the pod's sandbox through its owner, which also unshares the container's
        // rootfs; the sandbox stays. Nothing to do when the owner (and the sandbox) is gone.
        let socket = super::owner::socket_path(&store.root().join(sandbox));
        let req = super::owner::Request::Remove { id: id.to_string() };
        if status == Status::Paused {
            // Thawed first: a frozen process cannot die.
            let _ = block_on(async { resume_in(&connect(&record, status).await?, id).await });
        }
        if let Err(e) = block_on(super::owner::request(&socket, sandbox, &req)) {
            log::info!("container={id}: {e}");
        }
    } else if status != Status::Stopped {
        let removed = block_on(async {
            let agent = connect(&record, status).await?;
            if status == Status::Paused {
                let _ = resume_in(&agent, id).await;
            }
            let mut r = RemoveContainerRequest::new();
            r.container_id = id.to_string();
            r.force = true;
            agent
                .agent
                .remove_container(ctx(), &r)
                .await
                .map_err(|e| agent_err(id, "RemoveContainer", e))
        });
        if let Err(e) = removed {
            log::warn!("container={id}: {e}; killing its holder");
        }
    }
    if let Some(h) = &record.holder {
        let deadline = Instant::now() + HOLDER_EXIT_WAIT;
        while h.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if h.alive() {
            // SAFETY: kill(2) of a pid verified by its start time just now.
            unsafe { libc::kill(h.pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while h.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    if record.pod_sandbox.is_none() {
        remove_sandbox_leftovers(&record.sandbox_state_dir, &record.sandbox_id)?;
    }
    if !record.hooks.poststop.is_empty() {
        let state = serde_json::to_string(&OciState::new(&record, Status::Stopped))
            .expect("state serializes");
        if let Err(e) = super::hooks::run("poststop", &record.hooks.poststop, &state) {
            log::warn!("container={id}: {e}");
        }
    }
    dir.remove()
}

/// Removes a sandbox whose owner (the holder) died without removing it.
fn remove_sandbox_leftovers(state_dir: &Path, id: &str) -> Result<(), OciCliError> {
    let sb_dir: PathBuf = sandboxes_dir(state_dir).join(id);
    if !sb_dir.exists() {
        return Ok(());
    }
    let state = SandboxState::open(&sb_dir)?;
    if state.owner_alive() {
        return Err(OciCliError::Usage(format!(
            "sandbox {id}: its owner process {} still runs; not removing {}",
            state.record().owner.pid,
            sb_dir.display()
        )));
    }
    state.cleanup()?;
    Ok(())
}
