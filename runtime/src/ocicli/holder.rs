//! `create`: the container's holder process.
//!
//! `create` checks the bundle and its pod annotations ([`super::pod`]), makes the
//! container's directory under `--root`, and forks the holder ([`super::fork::spawn`]),
//! which starts the container's own sandbox, creates the container in it (not started),
//! connects its stdio, records itself and the agent's address, and only then lets `create`
//! return and write the holder's pid to `--pid-file`. A pod's sandbox container's holder
//! also answers the pod socket ([`super::owner`]); a container that joins a pod has a
//! holder that asks that socket to create (and at the end remove) the container in the
//! pod's sandbox instead of starting one, and is otherwise the same.
//!
//! The holder then lives exactly as long as the container's init: it relays the init's
//! stdio and the signals it receives ([`super::relay`]), and when the init exits it writes
//! `exit.json`, removes the sandbox and exits with the init's status (code, or 128 +
//! signal). Its parent (`create`) has exited by then, so it is reaped by the caller's
//! subreaper: containerd's runc shim or conmon, which wait for it as for runc's container
//! init. If it is killed (SIGKILL), the sandbox it owned stays until `delete --force`
//! removes it through the sandbox's own state record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use ember_config::Config;
use log::{info, warn};

use super::console;
use super::error::OciCliError;
use super::fork::{self, Ready};
use super::owner::{self, Owner};
use super::pod::{self, PodError, PodRole};
use super::relay::{self, ProcessIo, Relay, Target};
use super::store::{
    ContainerDir, ExitRecord, OciState, Record, Status, Store, StoredEndpoint, HOLDER_LOG,
};
use crate::endpoint::AgentEndpoint;
use crate::oci::BundleSpec;
use crate::sandbox::{stream_ids, ContainerRequest, Sandbox, SandboxOptions, WantedStreams};
use crate::state::ProcessId;
use ember_agent_protocol::agent::StdioStreams;
use ember_agent_protocol::AgentConnection;
use std::time::Duration;

/// What `create` was given.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Container id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Where to write the holder's pid.
    pub pid_file: Option<PathBuf>,
    /// Where to send the terminal's master (needed with `process.terminal`).
    pub console_socket: Option<PathBuf>,
    /// ember's configuration (its `sandbox.backend` picks the backend).
    pub config: Config,
}

/// Loads and checks the bundle: its spec (errors name the field) and its rootfs.
pub fn load_bundle(bundle: &std::path::Path) -> Result<BundleSpec, OciCliError> {
    let abs = std::fs::canonicalize(bundle).map_err(OciCliError::io(bundle))?;
    let bad = |source| OciCliError::Bundle {
        bundle: abs.clone(),
        source,
    };
    let spec = BundleSpec::load(&abs).map_err(bad)?;
    spec.check_rootfs().map_err(bad)?;
    Ok(spec)
}

/// `create`: returns once the container exists (created, not started) with its holder
/// running, after writing the holder's pid to the pid file.
pub fn create(store: &Store, opts: CreateOptions) -> Result<(), OciCliError> {
    super::store::check_id(&opts.id)?;
    let mut spec = load_bundle(&opts.bundle)?;
    let hooks = super::hooks::HostHooks::take(&mut spec.json);
    let config_json = spec.bundle.join("config.json");
    match (spec.terminal(), &opts.console_socket) {
        (true, None) => {
            return Err(OciCliError::Usage(format!(
                "{}: process.terminal is true but no --console-socket was given (the terminal's master goes to a console socket)",
                config_json.display()
            )))
        }
        (false, Some(s)) => {
            return Err(OciCliError::Usage(format!(
                "--console-socket {} was given but process.terminal is false in {}",
                s.display(),
                config_json.display()
            )))
        }
        _ => {}
    }
    let annotations: BTreeMap<String, String> = spec
        .json
        .get("annotations")
        .and_then(|a| a.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    // Which sandbox: checked before anything is made.
    let (home, owner) = match pod::role(&annotations)? {
        PodRole::Standalone => (HomeSpec::Own { listen: false }, None),
        PodRole::Sandbox => (HomeSpec::Own { listen: true }, None),
        PodRole::Member {
            sandbox,
            annotation,
        } => {
            let owner = pod::sandbox_record(store, &sandbox, annotation)?;
            let endpoint = owner
                .endpoint
                .clone()
                .ok_or_else(|| PodError::SandboxGone {
                    annotation,
                    sandbox: sandbox.clone(),
                    status: Status::Creating.as_str(),
                })?;
            let home = HomeSpec::Join {
                socket: owner::socket_path(&store.root().join(&sandbox)),
                sandbox,
                endpoint,
            };
            (home, Some(owner))
        }
    };
    let dir = store.create(&opts.id)?;
    let record = Record {
        id: opts.id.clone(),
        sandbox_id: match &owner {
            Some(o) => o.sandbox_id.clone(),
            None => super::store::sandbox_id(&opts.id),
        },
        pod_sandbox: owner.as_ref().map(|o| o.id.clone()),
        bundle: spec.bundle.clone(),
        rootfs: spec.rootfs(),
        annotations,
        created: super::log::rfc3339(SystemTime::now()),
        status: Status::Created,
        holder: None,
        endpoint: None,
        dial_timeout_ms: match &owner {
            Some(o) => o.dial_timeout_ms,
            None => Some(opts.config.agent.dial_timeout_ms),
        },
        backend: match &owner {
            Some(o) => o.backend.clone(),
            None => opts.config.sandbox.backend.as_str().to_string(),
        },
        sandbox_state_dir: match &owner {
            Some(o) => o.sandbox_state_dir.clone(),
            None => opts.config.sandbox.state_dir.clone(),
        },
        hooks,
    };
    if let Err(e) = dir.save(&record) {
        let _ = dir.remove();
        return Err(e);
    }
    let child_dir = dir.clone();
    let parts = opts.clone_parts(home);
    let pid = match fork::spawn(move |ready| holder_main(ready, child_dir, record, spec, parts)) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = dir.remove();
            return Err(e);
        }
    };
    if let Some(p) = &opts.pid_file {
        fork::write_pid_file(p, pid)?;
    }
    Ok(())
}

/// The parts of [`CreateOptions`] the holder needs, and where its container goes.
struct HolderParts {
    console_socket: Option<PathBuf>,
    config: Config,
    home: HomeSpec,
}

impl CreateOptions {
    fn clone_parts(&self, home: HomeSpec) -> HolderParts {
        HolderParts {
            console_socket: self.console_socket.clone(),
            config: self.config.clone(),
            home,
        }
    }
}

/// Which sandbox the holder puts its container in.
#[derive(Debug, Clone)]
enum HomeSpec {
    /// Its own, started by the holder; with `listen`, the holder also creates the pod's
    /// other containers in it ([`owner`]).
    Own {
        /// Whether to listen on the pod socket (a container of type `sandbox`).
        listen: bool,
    },
    /// The sandbox of another container, whose holder (listening on `socket`) creates the
    /// container in it.
    Join {
        /// The sandbox container's id.
        sandbox: String,
        /// Its holder's pod socket.
        socket: PathBuf,
        /// Its sandbox's agent.
        endpoint: StoredEndpoint,
    },
}

/// The sandbox the holder's container is in, as [`run_init`] uses it.
enum Home<'a> {
    /// The holder's own.
    Own(&'a Sandbox),
    /// Another holder's.
    Joined(Joined),
}

/// A sandbox owned by another holder.
struct Joined {
    sandbox: String,
    socket: PathBuf,
    endpoint: AgentEndpoint,
    agent: AgentConnection,
    dial_timeout: Duration,
}

impl Home<'_> {
    fn endpoint(&self) -> &AgentEndpoint {
        match self {
            Home::Own(sb) => sb.endpoint(),
            Home::Joined(j) => &j.endpoint,
        }
    }

    fn agent(&self) -> &AgentConnection {
        match self {
            Home::Own(sb) => sb.agent(),
            Home::Joined(j) => &j.agent,
        }
    }

    fn dial_timeout(&self) -> Duration {
        match self {
            Home::Own(sb) => sb.dial_timeout(),
            Home::Joined(j) => j.dial_timeout,
        }
    }

    /// Creates the container (not started) in the sandbox: directly, or through the
    /// sandbox container's holder.
    async fn create(
        &self,
        id: &str,
        spec: BundleSpec,
        stdio: &StdioStreams,
    ) -> Result<(), OciCliError> {
        match self {
            Home::Own(sb) => {
                sb.create_container(ContainerRequest {
                    id: id.to_string(),
                    spec,
                    rootfs_mounts: Vec::new(),
                    stdio: stdio.clone(),
                })
                .await?;
            }
            Home::Joined(j) => {
                let req = owner::Request::Create {
                    id: id.to_string(),
                    bundle: spec.bundle.clone(),
                    stdio: stdio.into(),
                };
                owner::request(&j.socket, &j.sandbox, &req).await?;
            }
        }
        Ok(())
    }
}

/// Logs to `holder.log` in the container's directory: the holder's fds 0–2 belong to the
/// container.
fn init_holder_log(dir: &ContainerDir, config: &Config) {
    let level = config.log.level.filter();
    let path = dir.dir.join(HOLDER_LOG);
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = env_logger::Builder::new()
            .parse_filters(&std::env::var("EMBER_LOG").unwrap_or_else(|_| level.to_string()))
            .target(env_logger::Target::Pipe(Box::new(f)))
            .try_init();
    }
}

/// The holder: runs until the container's init exits and returns its status.
fn holder_main(
    mut ready: Ready,
    dir: ContainerDir,
    record: Record,
    spec: BundleSpec,
    parts: HolderParts,
) -> i32 {
    init_holder_log(&dir, &parts.config);
    if parts.console_socket.is_some() {
        fork::detach_stdio();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ready.fail(&format!("tokio runtime: {e}"));
            return 1;
        }
    };
    let code = rt.block_on(hold(&mut ready, &dir, record, spec, parts));
    // The stdin copy may sit in a blocking read: do not wait for it.
    rt.shutdown_background();
    code
}

async fn hold(
    ready: &mut Ready,
    dir: &ContainerDir,
    record: Record,
    spec: BundleSpec,
    parts: HolderParts,
) -> i32 {
    match parts.home.clone() {
        HomeSpec::Own { listen } => hold_own(ready, dir, record, spec, parts, listen).await,
        HomeSpec::Join {
            sandbox,
            socket,
            endpoint,
        } => {
            let joined = Joined {
                sandbox,
                socket,
                endpoint: AgentEndpoint::from(&endpoint),
                agent: match AgentEndpoint::from(&endpoint)
                    .connect(record.dial_timeout())
                    .await
                {
                    Ok(a) => a,
                    Err(source) => {
                        let e = OciCliError::Unreachable {
                            id: record.id.clone(),
                            source,
                        };
                        ready.fail(&e.to_string());
                        return 1;
                    }
                },
                dial_timeout: record.dial_timeout(),
            };
            hold_joined(ready, dir, record, spec, parts.console_socket, joined).await
        }
    }
}

/// A holder with its own sandbox: starts it, creates the container (and, as a pod's
/// sandbox container, with `listen`, those of the pod's other containers), and destroys
/// the sandbox when the init exits.
async fn hold_own(
    ready: &mut Ready,
    dir: &ContainerDir,
    mut record: Record,
    spec: BundleSpec,
    parts: HolderParts,
    listen: bool,
) -> i32 {
    let id = record.id.clone();
    // A microVM container whose spec asks for a new network namespace that host hooks may
    // fill (Docker's bridge network): the namespace is made here and the hooks run before
    // the sandbox starts, so that the pod-network code finds the interface they put there.
    let early_network = record.backend == "microvm"
        && has_create_hooks(&record.hooks)
        && super::netns::spec_wants_new(&spec.json);
    let (netns, held) = if early_network {
        match own_network(dir, &mut record) {
            Ok(held) => (held.as_ref().map(|h| h.path().to_path_buf()), held),
            Err(e) => {
                ready.fail(&e.to_string());
                return 1;
            }
        }
    } else {
        (spec.network_namespace_path(), None)
    };
    let sb = match Sandbox::start(SandboxOptions {
        id: record.sandbox_id.clone(),
        config: parts.config,
        netns,
        hostname: spec.hostname().map(str::to_string),
        namespace: String::new(),
    })
    .await
    {
        Ok(sb) => sb,
        Err(e) => {
            // The sandbox removed what it made (its tap too); the namespace goes before
            // `create` learns of the failure.
            drop(held);
            ready.fail(&e.to_string());
            return 1;
        }
    };
    let owner = if listen {
        match Owner::bind(dir) {
            Ok(o) => Some(o),
            Err(e) => {
                ready.fail(&e.to_string());
                if let Err(e) = sb.destroy().await {
                    warn!("container={id}: destroy sandbox: {e}");
                }
                return 1;
            }
        }
    } else {
        None
    };
    let mut cgroup = None;
    let home = Home::Own(&sb);
    let init = run_init(
        ready,
        dir,
        record,
        spec,
        parts.console_socket,
        &home,
        &mut cgroup,
    );
    let result = match &owner {
        Some(o) => tokio::select! {
            r = init => r,
            never = o.serve(&sb) => match never {},
        },
        None => init.await,
    };
    report(ready, &id, &result, cgroup);
    if let Some(o) = owner {
        // The pod's other containers end with the sandbox.
        o.close(&sb).await;
    }
    if let Err(e) = sb.remove_container(&id, true).await {
        warn!("container={id}: remove: {e}");
    }
    if let Err(e) = sb.destroy().await {
        warn!("container={id}: destroy sandbox: {e}");
    }
    // After the sandbox, which removed its tap from the namespace by this path.
    if let Some(h) = held {
        if let Err(e) = h.remove() {
            warn!("container={id}: {e}");
        }
    }
    let code = result.unwrap_or(1);
    info!("container={id}: holder exits with {code}");
    code
}

/// Whether a container has hooks that run before `create` returns (and may put an
/// interface into its network namespace).
fn has_create_hooks(hooks: &super::hooks::HostHooks) -> bool {
    !hooks.prestart.is_empty() || !hooks.create_runtime.is_empty()
}

/// The network namespace of a microVM container whose spec asks for a new one: made on
/// the host ([`super::netns`]), then the `prestart` and `createRuntime` hooks run with a
/// state whose `pid` is a process in it (Docker's `libnetwork-setkey` enters
/// `/proc/<pid>/ns/net`, moves its veth end there and configures it). Returns the held
/// namespace when the hooks put an interface there, for the sandbox's pod network; `None`
/// (and nothing left) when they did not (Docker's `--network none`): the VM then gets no
/// NIC, as without a namespace.
///
/// The hooks are taken out of `record` (they ran; [`run_init`] then runs none). Runs on
/// the holder's main thread (the keeper's death signal is tied to it), before the sandbox
/// exists: a failed hook leaves no VM, tap or namespace behind.
fn own_network(
    dir: &ContainerDir,
    record: &mut Record,
) -> Result<Option<super::netns::HeldNetns>, OciCliError> {
    let mut held = super::netns::HeldNetns::create(&dir.dir)?;
    let mut st = OciState::new(record, Status::Created);
    st.pid = held.keeper_pid().unwrap_or(st.pid);
    let state = serde_json::to_string(&st).expect("state serializes");
    let prestart = std::mem::take(&mut record.hooks.prestart);
    let create_runtime = std::mem::take(&mut record.hooks.create_runtime);
    super::hooks::run("prestart", &prestart, &state)?;
    super::hooks::run("createRuntime", &create_runtime, &state)?;
    held.end_keeper();
    if !held.has_interface()? {
        info!(
            "container={}: the hooks put no interface into {}: no network for the VM",
            record.id,
            held.path().display()
        );
        held.remove()?;
        return Ok(None);
    }
    info!(
        "container={}: network namespace {} for the VM",
        record.id,
        held.path().display()
    );
    Ok(Some(held))
}

/// A holder whose container joins a pod's sandbox: the sandbox container's holder creates
/// it there and removes it again when its init exited.
async fn hold_joined(
    ready: &mut Ready,
    dir: &ContainerDir,
    record: Record,
    spec: BundleSpec,
    console_socket: Option<PathBuf>,
    joined: Joined,
) -> i32 {
    let id = record.id.clone();
    let mut cgroup = None;
    let home = Home::Joined(joined);
    let result = run_init(ready, dir, record, spec, console_socket, &home, &mut cgroup).await;
    report(ready, &id, &result, cgroup);
    if let Home::Joined(j) = &home {
        let req = owner::Request::Remove { id: id.clone() };
        if let Err(e) = owner::request(&j.socket, &j.sandbox, &req).await {
            // The sandbox went first (and the container with it).
            info!("container={id}: remove: {e}");
        }
    }
    let code = result.unwrap_or(1);
    info!("container={id}: holder exits with {code}");
    code
}

/// Leaves the container's cgroup and reports `result`'s error: to `create` while it
/// waits, else to the log.
fn report(
    ready: &mut Ready,
    id: &str,
    result: &Result<i32, OciCliError>,
    cgroup: Option<crate::cgroups::Joined>,
) {
    if let Some(joined) = cgroup {
        // Out of the container's cgroup, or it could not be removed.
        for e in joined.leave() {
            warn!("container={id}: {e}");
        }
    }
    if let Err(e) = result {
        if !ready.sent() {
            ready.fail(&e.to_string());
        } else {
            warn!("container={id}: {e}");
        }
    }
}

async fn run_init(
    ready: &mut Ready,
    dir: &ContainerDir,
    mut record: Record,
    spec: BundleSpec,
    console_socket: Option<PathBuf>,
    sb: &Home<'_>,
    cgroup: &mut Option<crate::cgroups::Joined>,
) -> Result<i32, OciCliError> {
    let id = record.id.clone();
    let terminal = spec.terminal();
    let streams = stream_ids(
        &id,
        "",
        WantedStreams {
            stdin: true,
            stdout: true,
            stderr: true,
            terminal,
        },
    )?;
    sb.create(&id, spec, &streams).await?;
    match (record.backend.as_str(), sb) {
        ("process", _) => *cgroup = Some(join_cgroup(&record, &container_cgroup(&record))),
        // A microVM's processes are its VMM's: the holder of the VM's own sandbox joins
        // the VMM's cgroup, so that `docker stats` (and conmon's stats) show what the VM
        // costs the host. It leaves before the sandbox goes (`report`). The holders of a
        // pod's other containers stay out: their sandbox may go before they do.
        (_, Home::Own(_)) => {
            let vmm = crate::sandbox::microvm::vmm_cgroup(&record.sandbox_id);
            *cgroup = Some(join_cgroup(&record, &vmm));
        }
        _ => {}
    }
    let io = match (terminal, console_socket) {
        (true, Some(socket)) => {
            let pty = console::open_pty()?;
            console::send_fd(&socket, &pty.master, "/dev/pts/ember")?;
            drop(pty.master);
            if let Err(e) = console::make_controlling(&pty.slave) {
                warn!("container={id}: no window size changes: TIOCSCTTY: {e}");
            }
            ProcessIo::Pty(pty.slave)
        }
        _ => ProcessIo::Stdio,
    };
    let relay = Relay::attach(sb.endpoint(), &streams, &io, sb.dial_timeout())
        .await
        .map_err(|source| OciCliError::Unreachable {
            id: id.clone(),
            source,
        })?;
    let target = Target {
        container_id: id.clone(),
        exec_id: String::new(),
    };
    let pty = match &io {
        ProcessIo::Pty(p) => Some(p),
        ProcessIo::Stdio => None,
    };
    if let Some(p) = pty {
        relay::resize(sb.agent(), &target, p).await;
    }
    record.holder = Some(ProcessId::current());
    record.endpoint = Some(sb.endpoint().into());
    dir.save(&record)?;
    // After the container was created, with its init's pid on the process backend (the
    // hooks enter its namespaces); none left when [`own_network`] ran them already.
    let hooks = &record.hooks;
    if has_create_hooks(hooks) {
        let mut st = OciState::new(&record, Status::Created);
        st.pid = super::commands::init_host_pid(&record, st.pid);
        let state = serde_json::to_string(&st).expect("state serializes");
        super::hooks::run("prestart", &hooks.prestart, &state)?;
        super::hooks::run("createRuntime", &hooks.create_runtime, &state)?;
    }
    ready.ok();
    info!("container={id}: created; holder {}", std::process::id());
    let status = relay::wait(sb.agent(), &target, pty).await;
    info!("container={id}: init exited with {status}");
    relay
        .drain(&target, crate::sandbox::exit_output_drain(&target.exec_id))
        .await;
    // A `start` still waiting for its answer finishes before the sandbox goes.
    let lock_dir = dir.clone();
    let _lock = tokio::task::spawn_blocking(move || lock_dir.lock())
        .await
        .map_err(|e| OciCliError::Holder(format!("lock: {e}")))??;
    dir.save_exit(ExitRecord { status })?;
    Ok(status)
}

/// The oom_score_adj of a holder in its container's cgroup: the kernel's OOM killer picks
/// the container's processes, not the holder (which would end the container for the
/// caller without an OOM of its own).
const HOLDER_OOM_SCORE_ADJ: &str = "-998";

/// Moves the holder into the host cgroup `path` that stands for its container: the
/// container's own (`process` backend) or its VMM's (`microvm`). containerd's runc shim
/// and conmon find a container's cgroup through the pid in the pid file, so `docker
/// stats`, its memory limit and OOM events are that cgroup's. The holder's own OOM score
/// is lowered first.
fn join_cgroup(record: &Record, path: &str) -> crate::cgroups::Joined {
    let id = &record.id;
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", HOLDER_OOM_SCORE_ADJ) {
        warn!("container={id}: oom_score_adj {HOLDER_OOM_SCORE_ADJ}: {e}");
    }
    let (joined, failed) = crate::cgroups::join(path, std::process::id());
    for e in failed {
        warn!("container={id}: {e}");
    }
    info!(
        "container={id}: holder in cgroup {path} ({} hierarchies)",
        joined.count()
    );
    joined
}

/// The host cgroup of a `process`-backend container (`/ember/<sandbox>/<id>`).
pub fn container_cgroup(record: &Record) -> String {
    format!(
        "{}/{}",
        crate::cgroups::sandbox_parent(&record.sandbox_id),
        record.id
    )
}
