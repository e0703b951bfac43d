//! `exec`: a new process in a running container. The process is described by an OCI
//! `process` JSON (`--process FILE`), or by the container's own `process` with the command
//! line's arguments. With `--detach`, a relay process is forked (like the holder, see
//! [`super::holder`]): its pid goes to `--pid-file`, it relays the process's stdio and
//! signals and exits with the process's status. Without, this command is the relay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ember_agent_protocol::agent::ExecProcessRequest;
use serde_json::Value;

use super::console;
use super::error::OciCliError;
use super::fork::{self, Ready};
use super::relay::{self, ProcessIo, Relay, Target};
use super::store::{Status, Store};
use crate::endpoint::AgentEndpoint;
use crate::sandbox::{ctx, rpc_message, stream_ids, WantedStreams};

/// What `exec` was given.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Container id.
    pub id: String,
    /// The process JSON file.
    pub process: Option<PathBuf>,
    /// The command, when there is no `--process`.
    pub args: Vec<String>,
    /// Return once the process runs, leaving a relay behind.
    pub detach: bool,
    /// Where to write the relay's pid.
    pub pid_file: Option<PathBuf>,
    /// Where to send the terminal's master.
    pub console_socket: Option<PathBuf>,
    /// Give the process a terminal.
    pub tty: bool,
}

/// Reads and validates a process JSON; errors name the file and the bad field.
pub fn load_process(path: &Path) -> Result<Value, OciCliError> {
    let text = std::fs::read_to_string(path).map_err(OciCliError::io(path))?;
    parse_process(&text, path)
}

/// Validates process JSON text against the OCI `process` schema.
pub fn parse_process(text: &str, path: &Path) -> Result<Value, OciCliError> {
    let bad = |field: String, message: String| OciCliError::BadInput {
        what: "--process",
        path: path.to_path_buf(),
        field,
        message,
    };
    let json: Value =
        serde_json::from_str(text).map_err(|e| bad(".".into(), format!("invalid JSON: {e}")))?;
    serde_path_to_error::deserialize::<_, oci_spec::runtime::Process>(json.clone())
        .map_err(|e| bad(e.path().to_string(), e.into_inner().to_string()))?;
    let has_args = json
        .get("args")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_args {
        return Err(bad("args".into(), "must name the program to run".into()));
    }
    Ok(json)
}

/// A process id unique on this host for the agent.
fn new_exec_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("exec-{}-{nanos}", std::process::id())
}

/// `exec`: returns the command's exit status (0 with `--detach` once the process runs; the
/// process's status otherwise).
pub fn exec(store: &Store, opts: ExecOptions) -> Result<i32, OciCliError> {
    let dir = store.open(&opts.id)?;
    let record = dir.record()?;
    match dir.status(&record) {
        Status::Running => {}
        Status::Paused => {
            return Err(OciCliError::WrongStatus {
                id: opts.id,
                action: "exec in",
                status: "paused".into(),
            })
        }
        _ => return Err(OciCliError::NotRunning { id: opts.id }),
    }
    let mut process = match &opts.process {
        Some(p) => load_process(p)?,
        None => {
            if opts.args.is_empty() {
                return Err(OciCliError::Usage(
                    "exec: give --process FILE or the command to run".into(),
                ));
            }
            let spec = super::holder::load_bundle(&record.bundle)?;
            let mut p = spec.json.get("process").cloned().unwrap_or(Value::Null);
            p["args"] = serde_json::json!(opts.args);
            p["terminal"] = Value::Bool(false);
            p
        }
    };
    if opts.tty {
        process["terminal"] = Value::Bool(true);
    }
    let terminal = process
        .get("terminal")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if terminal && opts.detach && opts.console_socket.is_none() {
        return Err(OciCliError::Usage(
            "exec: a detached process with a terminal needs --console-socket".into(),
        ));
    }
    let endpoint: AgentEndpoint =
        record
            .endpoint
            .as_ref()
            .map(Into::into)
            .ok_or_else(|| OciCliError::NotRunning {
                id: opts.id.clone(),
            })?;
    let job = Job {
        endpoint,
        dial_timeout: record.dial_timeout(),
        target: Target {
            container_id: opts.id.clone(),
            exec_id: new_exec_id(),
        },
        process,
        terminal,
        console_socket: opts.console_socket.clone(),
    };
    if opts.detach {
        let pid = fork::spawn(move |mut ready| {
            if job.terminal {
                fork::detach_stdio();
            }
            let code = run_blocking(&mut ready, job);
            if !ready.sent() {
                ready.fail("exec relay ended early");
            }
            code
        })?;
        if let Some(p) = &opts.pid_file {
            fork::write_pid_file(p, pid)?;
        }
        return Ok(0);
    }
    if let Some(p) = &opts.pid_file {
        fork::write_pid_file(p, std::process::id() as i32)?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut ready = ReadyOrError::Local(tx);
    let code = run_blocking_local(&mut ready, job);
    match rx.try_recv() {
        Ok(msg) => Err(OciCliError::Holder(msg)),
        Err(_) => Ok(code),
    }
}

/// The process to start and how.
struct Job {
    endpoint: AgentEndpoint,
    /// `agent.dial_timeout_ms` of the container's `create`.
    dial_timeout: Duration,
    target: Target,
    process: Value,
    terminal: bool,
    console_socket: Option<PathBuf>,
}

/// Where a failure before the process runs is reported.
enum ReadyOrError<'a> {
    Fork(&'a mut Ready),
    Local(std::sync::mpsc::Sender<String>),
}

impl ReadyOrError<'_> {
    fn ok(&mut self) {
        if let ReadyOrError::Fork(r) = self {
            r.ok();
        }
    }

    fn fail(&mut self, msg: String) {
        match self {
            ReadyOrError::Fork(r) => r.fail(&msg),
            ReadyOrError::Local(tx) => {
                let _ = tx.send(msg);
            }
        }
    }
}

fn run_blocking(ready: &mut Ready, job: Job) -> i32 {
    let mut r = ReadyOrError::Fork(ready);
    run_blocking_local(&mut r, job)
}

fn run_blocking_local(ready: &mut ReadyOrError<'_>, job: Job) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ready.fail(format!("tokio runtime: {e}"));
            return 1;
        }
    };
    let code = rt.block_on(async {
        match run(ready, &job).await {
            Ok(code) => code,
            Err(e) => {
                ready.fail(e.to_string());
                1
            }
        }
    });
    rt.shutdown_background();
    code
}

async fn run(ready: &mut ReadyOrError<'_>, job: &Job) -> Result<i32, OciCliError> {
    let cid = &job.target.container_id;
    let agent = job
        .endpoint
        .connect(job.dial_timeout)
        .await
        .map_err(|source| OciCliError::Unreachable {
            id: cid.clone(),
            source,
        })?;
    let use_pty = job.terminal && job.console_socket.is_some();
    let streams = stream_ids(
        cid,
        &job.target.exec_id,
        WantedStreams {
            stdin: true,
            stdout: true,
            stderr: true,
            terminal: job.terminal,
        },
    )?;
    let mut r = ExecProcessRequest::new();
    r.container_id = cid.clone();
    r.exec_id = job.target.exec_id.clone();
    r.process_json = job.process.to_string();
    r.stdio = Some(streams.clone()).into();
    agent
        .agent
        .exec_process(ctx(), &r)
        .await
        .map_err(|e| OciCliError::Agent {
            id: cid.clone(),
            rpc: "ExecProcess",
            message: rpc_message(&e),
        })?;
    let io = match (&job.console_socket, use_pty) {
        (Some(socket), true) => {
            let pty = console::open_pty()?;
            console::send_fd(socket, &pty.master, "/dev/pts/ember")?;
            drop(pty.master);
            let _ = console::make_controlling(&pty.slave);
            ProcessIo::Pty(pty.slave)
        }
        _ => ProcessIo::Stdio,
    };
    let relay = Relay::attach(&job.endpoint, &streams, &io, job.dial_timeout)
        .await
        .map_err(|source| OciCliError::Unreachable {
            id: cid.clone(),
            source,
        })?;
    let pty = match &io {
        ProcessIo::Pty(p) => Some(p),
        ProcessIo::Stdio => None,
    };
    if let Some(p) = pty {
        relay::resize(&agent, &job.target, p).await;
    }
    ready.ok();
    let status = relay::wait(&agent, &job.target, pty).await;
    relay
        .drain(
            &job.target,
            crate::sandbox::exit_output_drain(&job.target.exec_id),
        )
        .await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_process_json_names_the_field() {
        let p = Path::new("/x/process.json");
        let e = parse_process("{", p).unwrap_err().to_string();
        assert!(
            e.contains("invalid JSON") && e.contains("process.json"),
            "{e}"
        );
        let e = parse_process(
            r#"{"cwd": "/", "args": "sh", "user": {"uid": 0, "gid": 0}}"#,
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("args"), "{e}");
        let e = parse_process(r#"{"cwd": "/", "args": ["sh"], "user": {"uid": "x"}}"#, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("user.uid"), "{e}");
        let e = parse_process(
            r#"{"cwd": "/", "args": [], "user": {"uid": 0, "gid": 0}}"#,
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("args: must name"), "{e}");
        parse_process(
            r#"{"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}}"#,
            p,
        )
        .unwrap();
    }
}
