//! A private containerd for one test: `/usr/bin/containerd` started as a child with its own
//! root, state, sockets and config in temporary directories, so tests never touch the host's
//! containerd and leave nothing behind.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ember_tests::containerd::{Containerd, Options};
//! let ctrd = Containerd::start(Options::default())?;
//! let out = ctrd.ctr_ok(&["version"])?;
//! # Ok(()) }
//! ```
//!
//! Dropping a [`Containerd`] kills the tasks it still runs, stops containerd and its shims,
//! unmounts whatever is left under its root and state, and removes its directories.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::image::{pause_image_tar, ImageError};

/// The runtime type of ember's shim (binary `containerd-shim-ember-v2`).
pub const EMBER_RUNTIME: &str = "io.containerd.ember.v2";
/// The runtime type of containerd's runc shim.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// The name of ember's shim binary, which containerd looks up on its `PATH`.
pub const EMBER_SHIM: &str = "containerd-shim-ember-v2";
/// The CRI plugin's namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The sandbox ("pause") image [`Containerd::start`] imports when CRI is enabled: busybox
/// sleeping until SIGTERM (see [`crate::image::pause_image_tar`]).
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:ember";
/// The namespace [`Containerd::ctr`] uses.
pub const DEFAULT_NAMESPACE: &str = "ember-test";
/// How long one `ctr` command may run unless [`Containerd::set_ctr_timeout`] says otherwise.
pub const DEFAULT_CTR_TIMEOUT: Duration = Duration::from_secs(600);

/// Errors starting or driving the private containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// A binary is missing.
    #[error("{0} not found: install Debian's containerd package (apt-get install containerd), which brings containerd and ctr")]
    NotInstalled(String),
    /// containerd must run as root (mounts, cgroups, namespaces).
    #[error("containerd needs root: run the tests as root")]
    NotRoot,
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Starting a process failed.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// containerd exited while starting.
    #[error("containerd exited during startup ({status}); its log ends with:\n{log}")]
    Exited {
        /// The exit status.
        status: std::process::ExitStatus,
        /// The tail of containerd's log.
        log: String,
    },
    /// containerd did not answer `ctr version` in time.
    #[error("containerd did not answer on {address} within {waited:?}; its log ends with:\n{log}")]
    Timeout {
        /// The socket.
        address: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// The tail of containerd's log.
        log: String,
    },
    /// A `ctr` command failed.
    #[error("`ctr {args}` failed ({status}): {stderr}\ncontainerd's log ends with:\n{log}")]
    Ctr {
        /// The arguments after `--address`/`--namespace`.
        args: String,
        /// The exit status.
        status: std::process::ExitStatus,
        /// ctr's stderr.
        stderr: String,
        /// The tail of containerd's log.
        log: String,
    },
    /// A `ctr` command did not end in time (it was killed).
    #[error("`ctr {args}` did not end within {waited:?} and was killed; its stderr:\n{stderr}\ncontainerd's log ends with:\n{log}")]
    CtrTimeout {
        /// The arguments after `--address`/`--namespace`.
        args: String,
        /// How long it ran.
        waited: Duration,
        /// ctr's stderr so far.
        stderr: String,
        /// The tail of containerd's log.
        log: String,
    },
    /// Building the sandbox image failed.
    #[error("building the CRI sandbox image: {0}")]
    Image(#[from] ImageError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerdError + '_ {
    move |source| ContainerdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to start the private containerd.
#[derive(Debug, Clone)]
pub struct Options {
    /// Enable the CRI plugin (and import [`SANDBOX_IMAGE`] into [`CRI_NAMESPACE`]).
    pub cri: bool,
    /// Directories put first on containerd's `PATH`, in this order: where it finds shims
    /// such as `containerd-shim-ember-v2` (see [`ember_shim_dir`]).
    pub path_prepend: Vec<PathBuf>,
    /// ember's config file, passed to the CRI `ember` runtime as `options.ConfigPath`.
    pub ember_config: Option<PathBuf>,
    /// containerd's log level (`info`, `debug`, ...).
    pub log_level: String,
    /// The containerd binary.
    pub containerd: PathBuf,
    /// How long to wait for containerd to answer.
    pub start_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cri: false,
            path_prepend: Vec::new(),
            ember_config: None,
            log_level: "info".into(),
            containerd: "containerd".into(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

impl Options {
    /// Options with the CRI plugin enabled.
    pub fn with_cri() -> Self {
        Options {
            cri: true,
            ..Options::default()
        }
    }
}

/// Why the private containerd cannot run here (not root, containerd or ctr missing), or
/// `None` when it can: tests pass this to [`crate::skip`].
pub fn unavailable() -> Option<String> {
    check_host().err().map(|e| e.to_string())
}

fn check_host() -> Result<(), ContainerdError> {
    if !crate::is_root() {
        return Err(ContainerdError::NotRoot);
    }
    for bin in ["containerd", "ctr"] {
        if which(bin).is_none() {
            return Err(ContainerdError::NotInstalled(bin.into()));
        }
    }
    Ok(())
}

/// The first `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A directory holding containerd's runc shim under the ember shim's name, for
/// [`Options::path_prepend`]: with it, a task of runtime `io.containerd.ember.v2` runs only
/// if containerd maps that name to the binary [`EMBER_SHIM`] in that directory. `Err` says
/// why it cannot be made (no runc shim on `PATH`).
pub fn runc_shim_as_ember() -> Result<tempfile::TempDir, String> {
    let runc_shim =
        which("containerd-shim-runc-v2").ok_or("containerd-shim-runc-v2 not on PATH")?;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    std::os::unix::fs::symlink(&runc_shim, dir.path().join(EMBER_SHIM))
        .map_err(|e| format!("symlink {}: {e}", runc_shim.display()))?;
    Ok(dir)
}

/// The directory holding the built `containerd-shim-ember-v2`: `$EMBER_SHIM_DIR` if set
/// (and not empty),
/// else the workspace's `target/debug` or `target/release` (debug first, honoring
/// `$CARGO_TARGET_DIR`), else the directory of one on `PATH`. `None` if there is none.
pub fn ember_shim_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("EMBER_SHIM_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        return d.join(EMBER_SHIM).is_file().then_some(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p))
        .find(|d| d.join(EMBER_SHIM).is_file())
        .or_else(|| which(EMBER_SHIM).and_then(|p| p.parent().map(Path::to_path_buf)))
}

/// A binary of this workspace (`ember-oci`, `ember-agent`): in the workspace's
/// `target/debug` or `target/release` (debug first, honoring `$CARGO_TARGET_DIR`), else on
/// `PATH`. `None` if it is not built.
pub fn workspace_binary(name: &str) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join(name))
        .find(|p| p.is_file())
        .or_else(|| which(name))
}

/// A running private containerd. See the [module docs](self).
pub struct Containerd {
    child: Option<Child>,
    /// root/, state/, config.toml, containerd.log, cni dirs.
    dir: tempfile::TempDir,
    /// The sockets (a short path under /run or the temp dir).
    sock_dir: tempfile::TempDir,
    namespaces: Mutex<BTreeSet<String>>,
    /// How long one `ctr` command may run ([`Containerd::set_ctr_timeout`]).
    ctr_timeout: Mutex<Duration>,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("pid", &self.pid())
            .field("address", &self.address())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// containerd's config (version 2) for a private instance under `dir` with sockets in
/// `sock_dir`.
fn config_toml(opts: &Options, dir: &Path, sock_dir: &Path) -> String {
    let p = |sub: &str| toml_str(&dir.join(sub).to_string_lossy());
    let s = |sub: &str| toml_str(&sock_dir.join(sub).to_string_lossy());
    let mut disabled = vec![
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    ];
    if !opts.cri {
        disabled.push("io.containerd.grpc.v1.cri");
    }
    let disabled: Vec<String> = disabled.iter().map(|d| toml_str(d)).collect();
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Written by ember-tests for a private containerd.\nversion = 2\n\
         root = {}\nstate = {}\noom_score = 0\ndisabled_plugins = [{}]\n",
        p("root"),
        p("state"),
        disabled.join(", ")
    );
    let _ = writeln!(
        c,
        "[grpc]\n  address = {}\n\n[ttrpc]\n  address = {}\n\n[debug]\n  address = \"\"\n  \
         level = {}\n\n[metrics]\n  address = \"\"\n",
        s("c.sock"),
        s("t.sock"),
        toml_str(&opts.log_level)
    );
    let _ = writeln!(
        c,
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {}\n  \
         restrict_oom_score_adj = true\n  disable_tcp_service = true\n  \
         stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n  \
         enable_selinux = false\n",
        toml_str(SANDBOX_IMAGE)
    );
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    let _ = writeln!(
        c,
        "[{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\n\
         [{cri}.containerd.runtimes.runc]\n  runtime_type = {}\n\n\
         [{cri}.containerd.runtimes.ember]\n  runtime_type = {}\n",
        toml_str(RUNC_RUNTIME),
        toml_str(EMBER_RUNTIME)
    );
    if let Some(cfg) = &opts.ember_config {
        let _ = writeln!(
            c,
            "[{cri}.containerd.runtimes.ember.options]\n  ConfigPath = {}\n",
            toml_str(&cfg.to_string_lossy())
        );
    }
    let _ = writeln!(
        c,
        "[{cri}.cni]\n  bin_dir = {}\n  conf_dir = {}\n  max_conf_num = 1\n",
        p("cni/bin"),
        p("cni/conf")
    );
    c
}

/// A short directory for unix sockets (their paths must stay under 108 bytes): under
/// `/run` when writable, else the temp dir.
fn short_sock_dir() -> Result<tempfile::TempDir, ContainerdError> {
    let b = tempfile::Builder::new().prefix("ectr").to_owned();
    b.tempdir_in("/run")
        .or_else(|_| b.tempdir())
        .map_err(io(Path::new("/run")))
}

impl Containerd {
    /// Writes the config, starts containerd and waits until `ctr version` answers. With
    /// `opts.cri`, also imports [`SANDBOX_IMAGE`] into [`CRI_NAMESPACE`].
    pub fn start(opts: Options) -> Result<Containerd, ContainerdError> {
        check_host()?;
        let dir = tempfile::Builder::new()
            .prefix("ember-containerd-")
            .tempdir()
            .map_err(io(&std::env::temp_dir()))?;
        let sock_dir = short_sock_dir()?;
        for sub in ["root", "state", "cni/bin", "cni/conf"] {
            let d = dir.path().join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml(&opts, dir.path(), sock_dir.path()))
            .map_err(io(&config))?;
        let log_path = dir.path().join("containerd.log");
        let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
        let log2 = log.try_clone().map_err(io(&log_path))?;

        let mut path = std::env::join_paths(&opts.path_prepend).unwrap_or_default();
        let base = std::env::var_os("PATH").unwrap_or_else(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        if !path.is_empty() {
            path.push(":");
        }
        path.push(base);

        let child = Command::new(&opts.containerd)
            .arg("--config")
            .arg(&config)
            .env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| ContainerdError::Spawn {
                program: opts.containerd.display().to_string(),
                source,
            })?;
        let mut ctrd = Containerd {
            child: Some(child),
            dir,
            sock_dir,
            namespaces: Mutex::new(BTreeSet::new()),
            ctr_timeout: Mutex::new(DEFAULT_CTR_TIMEOUT),
        };
        ctrd.wait_ready(opts.start_timeout)?;
        if opts.cri {
            let tar = ctrd.dir.path().join("pause.tar");
            pause_image_tar(&tar, SANDBOX_IMAGE)?;
            ctrd.import_image(&tar, CRI_NAMESPACE)?;
        }
        Ok(ctrd)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), ContainerdError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(ContainerdError::Exited {
                        status,
                        log: self.log_tail(40),
                    });
                }
            }
            if self.address().exists() {
                let out = Command::new("ctr")
                    .arg("--address")
                    .arg(self.address())
                    .arg("--timeout")
                    .arg("2s")
                    .arg("version")
                    .output();
                if matches!(&out, Ok(o) if o.status.success()) {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                return Err(ContainerdError::Timeout {
                    address: self.address(),
                    waited: timeout,
                    log: self.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's gRPC socket.
    pub fn address(&self) -> PathBuf {
        self.sock_dir.path().join("c.sock")
    }

    /// containerd's ttrpc socket.
    pub fn ttrpc_address(&self) -> PathBuf {
        self.sock_dir.path().join("t.sock")
    }

    /// containerd's `root` directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's `state` directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The config file containerd runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// containerd's log file (its stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// A scratch directory owned by this instance (removed on drop).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's pid (`None` once it has exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What explains a failure inside a sandbox: the last `lines` lines of containerd's log
    /// (which carries the shim's), then those of every sandbox console log under ember's
    /// `state_dir` (`sandboxes/<id>/console.log`, microvm backend), each headed by its path.
    pub fn diagnostics(&self, state_dir: &Path, lines: usize) -> String {
        let mut out = format!(
            "--- containerd log (last {lines} lines)\n{}",
            self.log_tail(lines)
        );
        let mut consoles: Vec<PathBuf> = std::fs::read_dir(state_dir.join("sandboxes"))
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.path().join("console.log")))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default();
        consoles.sort();
        for path in consoles {
            out.push_str(&format!(
                "\n--- {} (last {lines} lines)\n{}",
                path.display(),
                ember_sys::tail::file(&path, lines)
            ));
        }
        out
    }

    /// A `ctr` command with `--address` and `--namespace ns` set, for callers that want to
    /// spawn it themselves (piped stdout, timing).
    pub fn ctr_command(&self, ns: &str) -> Command {
        self.namespaces.lock().unwrap().insert(ns.to_string());
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.address())
            .arg("--namespace")
            .arg(ns);
        c
    }

    /// Runs `ctr ARGS` in [`DEFAULT_NAMESPACE`] and returns its output, whatever its status.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, ContainerdError> {
        self.ctr_ns(DEFAULT_NAMESPACE, args)
    }

    /// Runs `ctr ARGS` in namespace `ns` and returns its output, whatever its status.
    ///
    /// A command still running after [`Containerd::set_ctr_timeout`] (10 minutes unless
    /// set) is killed and is a [`ContainerdError::CtrTimeout`], so that a hang fails its
    /// test with containerd's log instead of stalling the whole run.
    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Result<Output, ContainerdError> {
        let timeout = *self.ctr_timeout.lock().unwrap();
        let mut child = self
            .ctr_command(ns)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ContainerdError::Spawn {
                program: "ctr".into(),
                source,
            })?;
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = stderr.join().unwrap_or_default();
                    return Err(ContainerdError::CtrTimeout {
                        args: args.join(" "),
                        waited: started.elapsed(),
                        stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
                        log: self.log_tail(40),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(ContainerdError::Spawn {
                        program: "ctr".into(),
                        source,
                    })
                }
            }
        };
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    /// Sets how long one `ctr` command may run before it is killed ([`Containerd::ctr_ns`]).
    pub fn set_ctr_timeout(&self, timeout: Duration) {
        *self.ctr_timeout.lock().unwrap() = timeout;
    }

    /// Runs `ctr ARGS` in [`DEFAULT_NAMESPACE`]; returns its stdout, or an error with its
    /// stderr and containerd's log when it fails.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String, ContainerdError> {
        self.ctr_ns_ok(DEFAULT_NAMESPACE, args)
    }

    /// Runs `ctr ARGS` in namespace `ns`; returns its stdout, or an error with its stderr
    /// and containerd's log when it fails.
    pub fn ctr_ns_ok(&self, ns: &str, args: &[&str]) -> Result<String, ContainerdError> {
        let out = self.ctr_ns(ns, args)?;
        if !out.status.success() {
            return Err(ContainerdError::Ctr {
                args: args.join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                log: self.log_tail(20),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports an image tarball (OCI layout or docker-archive) into namespace `ns` and
    /// unpacks it for the overlayfs snapshotter.
    pub fn import_image(&self, tar: &Path, ns: &str) -> Result<(), ContainerdError> {
        let tar = tar.to_string_lossy();
        self.ctr_ns_ok(ns, &["image", "import", &tar]).map(drop)
    }

    /// The pids of the shims serving this containerd (processes whose command line names
    /// its socket).
    pub fn shim_pids(&self) -> Vec<u32> {
        let addr = self.address().to_string_lossy().into_owned();
        let me = self.pid();
        processes_mentioning(&addr)
            .into_iter()
            .filter(|p| Some(*p) != me)
            .collect()
    }

    /// Best effort: kill and delete every task and container in every namespace.
    fn remove_all_containers(&self) {
        let mut namespaces = self.namespaces.lock().unwrap().clone();
        if let Ok(out) = self.ctr_ns(DEFAULT_NAMESPACE, &["namespaces", "ls", "-q"]) {
            namespaces.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string),
            );
        }
        for ns in namespaces.iter().filter(|n| !n.is_empty()) {
            let ids = |what: &str| -> Vec<String> {
                self.ctr_ns(ns, &[what, "ls", "-q"])
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for task in ids("tasks") {
                let _ = self.ctr_ns(ns, &["tasks", "kill", "-a", "-s", "KILL", &task]);
            }
            for task in ids("tasks") {
                let _ = self.ctr_ns(ns, &["tasks", "rm", "-f", &task]);
            }
            for c in ids("containers") {
                let _ = self.ctr_ns(ns, &["containers", "rm", &c]);
            }
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all_containers();
        }
        let shims = self.shim_pids();
        self.stop();
        // Shims outlive containerd; the ones still serving it are ours to end.
        for pid in shims.into_iter().chain(self.shim_pids()) {
            // SAFETY: kill on a pid whose command line names our private socket.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        unmount_under(self.dir.path());
        // Not removed: the empty directories the runc shim and ctr create under the fixed
        // host path /run/containerd (runc/<namespace>, fifo, s), which another containerd
        // (or a parallel test) may be using at the same moment.
    }
}

/// Mount points under `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = ember_sys::mountinfo::read(Path::new("/proc/self/mountinfo")).unwrap_or_default();
    let mut out = ember_sys::mountinfo::mount_points_under(&mounts, dir);
    out.retain(|m| m != dir);
    out
}

/// Lazily unmounts everything under `dir`, deepest first (best effort).
pub fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Live (not zombie) processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && process_alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_runtimes_and_sockets() {
        let opts = Options {
            cri: true,
            ember_config: Some("/x/ember \"q\".toml".into()),
            ..Options::default()
        };
        let c = config_toml(&opts, Path::new("/d"), Path::new("/run/s"));
        assert!(c.contains("version = 2"));
        assert!(c.contains("address = \"/run/s/c.sock\""));
        assert!(c.contains("runtime_type = \"io.containerd.ember.v2\""));
        assert!(c.contains("ConfigPath = \"/x/ember \\\"q\\\".toml\""));
        assert!(c.contains("restrict_oom_score_adj = true"));
        let disabled = |c: &str| {
            c.lines()
                .find(|l| l.starts_with("disabled_plugins"))
                .expect("disabled_plugins line")
                .to_string()
        };
        assert!(!disabled(&c).contains("grpc.v1.cri"), "CRI enabled");
        let no_cri = config_toml(&Options::default(), Path::new("/d"), Path::new("/s"));
        assert!(disabled(&no_cri).contains("\"io.containerd.grpc.v1.cri\""));
        assert!(!no_cri.contains("ConfigPath"));
    }

    #[test]
    fn our_own_process_is_alive() {
        // Our parent is alive and not a zombie; pid 0 does not exist in /proc.
        assert!(process_alive(std::os::unix::process::parent_id()));
        assert!(!process_alive(0));
    }
}
