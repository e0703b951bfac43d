//! The `microvm` backend end to end: containers run by the agent inside a real microVM
//! (the guest kernel and agent initramfs of `make guest`), through `ember run` and through
//! the runtime's `Sandbox` API: stdio, exit status, terminal and signals of `ember run`;
//! ttrpc over vsock, stdio streams, the virtio-fs rootfs, a virtio-blk volume, a cgroup v2
//! OOM kill and the pod network's NIC in the guest.
//!
//! Guest user space needs hardware virtualization, so every test is in `hw_kvm`: on a host
//! without it they print a NESTED (or SKIP) line and `scripts/run-tests.sh` runs them in
//! the nested KVM test host, where everything is emulated: timeouts are minutes.
//! Needs root, Debian's busybox-static, the guest assets, e2fsprogs, iproute2 and
//! util-linux's `script`.

/// Tests that need hardware virtualization (see `ember_tests::hw_kvm_runs_here`).
mod hw_kvm {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    use ember_agent_protocol::agent::{
        GetOOMEventRequest, StartContainerRequest, StdioStreams, WaitProcessRequest,
    };
    use ember_config::{Backend as BackendKind, Config};
    use ember_runtime::oci::BundleSpec;
    use ember_runtime::sandbox::microvm::CONSOLE_LOG;
    use ember_runtime::sandbox::{ctx, ctx_no_timeout, ContainerRequest, Sandbox, SandboxOptions};
    use ember_tests::containerd::{mounts_under, processes_mentioning};
    use ember_tests::fixtures::{busybox_available, busybox_bundle, default_spec, write_spec};
    use ember_tests::guest::{initramfs as guest_initramfs, kernel as guest_kernel};
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const EMBER: &str = env!("CARGO_BIN_EXE_ember");
    /// How long the agent may take to answer: the guest boots under emulation.
    const DIAL_TIMEOUT_MS: u64 = 120_000;
    /// How long one container (or one `ember run`, VM boot included) may take.
    const TIMEOUT: Duration = Duration::from_secs(300);

    /// The guest kernel and initramfs when `test` runs here; otherwise it has printed its
    /// NESTED or SKIP line (`tools` names the host tools it needs besides busybox).
    fn assets(test: &str, tools: &[&str]) -> Option<(PathBuf, PathBuf)> {
        if !ember_tests::hw_kvm_runs_here(test) {
            return None;
        }
        let problem = if !ember_tests::is_root() {
            Some("needs root (KVM, mounts, cgroups)".to_string())
        } else if !busybox_available() {
            Some("needs Debian's busybox-static".into())
        } else {
            tools
                .iter()
                .find(|t| Command::new(t).arg("-V").output().is_err())
                .map(|t| format!("needs `{t}` (e2fsprogs, iproute2, util-linux)"))
        };
        let assets = guest_kernel().zip(guest_initramfs());
        match (problem, assets) {
            (None, Some(a)) => Some(a),
            (Some(why), _) => {
                ember_tests::skip(test, &why);
                None
            }
            (None, None) => {
                ember_tests::skip(
                    test,
                    "no guest kernel or agent initramfs (run `make guest`)",
                );
                None
            }
        }
    }

    /// A busybox bundle in `dir` running `spec`.
    fn bundle(dir: &Path, spec: &Value) -> PathBuf {
        let b = busybox_bundle(&dir.join("bundle")).unwrap();
        write_spec(&b, spec).unwrap();
        b
    }

    fn sh(script: &str) -> Value {
        default_spec(&["sh", "-c", script])
    }

    // ------------------------------------------------------------------ ember run

    /// A state dir and a config file naming the microvm backend and the guest assets;
    /// `ember cleanup --force` and removal on drop.
    struct Cli {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        state: PathBuf,
        config: PathBuf,
    }

    impl Cli {
        fn new(name: &str, (kernel, initrd): &(PathBuf, PathBuf)) -> Cli {
            let tmp = tempfile::tempdir().unwrap();
            // Short: the vsock socket's path must fit in sun_path.
            let state = PathBuf::from(format!("/run/ember-e2e-{}-{name}", std::process::id()));
            let config = tmp.path().join("ember.toml");
            std::fs::write(
                &config,
                format!(
                    "[hypervisor]\nkernel = \"{}\"\ninitrd = \"{}\"\n\n[sandbox]\nbackend = \"microvm\"\nstate_dir = \"{}\"\n\n[agent]\ndial_timeout_ms = {DIAL_TIMEOUT_MS}\n",
                    kernel.display(),
                    initrd.display(),
                    state.display()
                ),
            )
            .unwrap();
            Cli {
                dir: tmp.path().to_path_buf(),
                _tmp: tmp,
                state,
                config,
            }
        }

        fn ember(&self) -> Command {
            let mut c = Command::new(EMBER);
            c.arg("--config")
                .arg(&self.config)
                .env_remove("EMBER_CONFIG")
                .env_remove("EMBER_LOG");
            c
        }

        /// `ember run --id ID --bundle B`, with piped stdio.
        fn run(&self, id: &str, bundle: &Path) -> Child {
            self.ember()
                .args(["run", "--id", id, "--bundle"])
                .arg(bundle)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        }

        /// Nothing of sandbox `id` is left: state, mounts, processes, cgroups.
        fn assert_nothing_left(&self, id: &str) {
            let left: Vec<_> = std::fs::read_dir(self.state.join("sandboxes"))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "sandbox state left: {left:?}");
            assert!(
                mounts_under(&self.state).is_empty(),
                "mounts left under {}",
                self.state.display()
            );
            assert!(
                processes_mentioning(&self.state.display().to_string()).is_empty(),
                "processes of the sandbox left"
            );
            for h in ember_runtime::cgroups::hierarchies() {
                let d = h.join("ember").join(id);
                assert!(!d.exists(), "cgroup left: {}", d.display());
            }
        }
    }

    impl Drop for Cli {
        fn drop(&mut self) {
            let _ = self.ember().args(["cleanup", "--force"]).output();
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }

    /// Reads a pipe to its end on a thread.
    fn collect(r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut r = r;
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    }

    /// Waits for `child` (killing it after [`TIMEOUT`]).
    fn wait(child: &mut Child) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`ember run` did not end within {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `ember run` of `bundle` with `input` on its stdin: exit code, stdout, stderr.
    fn ember_run(
        cli: &Cli,
        id: &str,
        bundle: &Path,
        input: &[u8],
    ) -> (Option<i32>, String, String) {
        let mut child = cli.run(id, bundle);
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        drop(stdin);
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let status = wait(&mut child);
        (status.code(), out.join().unwrap(), err.join().unwrap())
    }

    #[test]
    fn ember_run_passes_stdio_and_exit_status() {
        const TEST: &str = "hw_kvm::ember_run_passes_stdio_and_exit_status";
        let Some(assets) = assets(TEST, &[]) else {
            return;
        };
        let cli = Cli::new("stdio", &assets);
        let b = bundle(
            &cli.dir,
            &sh("echo hi; echo err >&2; read x; echo got $x; exit 7"),
        );
        let (code, stdout, stderr) = ember_run(&cli, "stdio1", &b, b"hello\n");
        assert_eq!(code, Some(7), "stdout: {stdout}\nstderr: {stderr}");
        assert_eq!(stdout, "hi\ngot hello\n", "stderr: {stderr}");
        assert!(stderr.contains("err\n"), "{stderr}");
        assert!(
            !stderr.contains("NO VM isolation"),
            "the microvm backend runs: {stderr}"
        );
        cli.assert_nothing_left("stdio1");
    }

    #[test]
    fn ember_run_gives_a_terminal_bundle_a_pty_with_its_window_size() {
        const TEST: &str = "hw_kvm::ember_run_gives_a_terminal_bundle_a_pty_with_its_window_size";
        let Some(assets) = assets(TEST, &["script"]) else {
            return;
        };
        let cli = Cli::new("tty", &assets);
        let mut spec = sh("tty; stty size; exit 3");
        spec["process"]["terminal"] = true.into();
        let b = bundle(&cli.dir, &spec);
        let line = format!(
            "stty rows 33 cols 91; {EMBER} --config {} run --id tty1 --bundle {}",
            cli.config.display(),
            b.display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let status = wait(&mut child);
        let (text, err) = (out.join().unwrap(), err.join().unwrap());
        assert_eq!(status.code(), Some(3), "{text}\nstderr: {err}");
        assert!(text.contains("/dev/pts/"), "a terminal: {text}");
        assert!(
            text.contains("33 91"),
            "the window size reaches the container: {text}"
        );
        cli.assert_nothing_left("tty1");
    }

    /// `ember run` of `spec`; once the container printed `ready`, SIGTERM to `ember run`.
    /// Returns the exit code and the rest of stdout.
    fn sigterm_run(cli: &Cli, id: &str, spec: &Value) -> (Option<i32>, String) {
        let b = bundle(&cli.dir.join(id), spec);
        let mut child = cli.run(id, &b);
        drop(child.stdin.take());
        let err = collect(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
            let mut rest = String::new();
            let _ = stdout.read_to_string(&mut rest);
            rest
        });
        match rx.recv_timeout(TIMEOUT) {
            Ok(l) if l == "ready\n" => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{id}: no `ready` from the container: {other:?}; stderr: {}",
                    err.join().unwrap()
                );
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = wait(&mut child);
        let err = err.join().unwrap();
        let rest = reader.join().unwrap();
        assert!(
            !err.contains("ember run:"),
            "{id}: `ember run` failed: {err}"
        );
        (status.code(), rest)
    }

    #[test]
    fn ember_run_passes_sigterm_to_the_container() {
        const TEST: &str = "hw_kvm::ember_run_passes_sigterm_to_the_container";
        let Some(assets) = assets(TEST, &[]) else {
            return;
        };
        let cli = Cli::new("term", &assets);
        // PID 1 of its PID namespace with a handler: the handler runs and picks the status.
        let (code, rest) = sigterm_run(
            &cli,
            "term1",
            &sh("trap 'echo got TERM; exit 42' TERM; echo ready; sleep 600 & wait"),
        );
        assert_eq!(code, Some(42), "{rest}");
        assert_eq!(rest, "got TERM\n");
        cli.assert_nothing_left("term1");
        // Without a handler the default action kills it: 128 + 15. (Not as PID 1 of a PID
        // namespace, which the kernel protects from signals it has no handler for, as with
        // runc; so this container shares the guest's PID namespace.)
        let mut spec = sh("echo ready; exec sleep 600");
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "pid");
        let (code, rest) = sigterm_run(&cli, "term2", &spec);
        assert_eq!(code, Some(143), "{rest}");
        cli.assert_nothing_left("term2");
    }

    // ------------------------------------------------------------------ Sandbox API

    /// A microVM sandbox; on a panic, the guest console's end (the agent logs there) is
    /// printed with the failure.
    struct Vm {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        sb: Option<Sandbox>,
        console: PathBuf,
    }

    impl Vm {
        async fn start(
            id: &str,
            (kernel, initrd): (PathBuf, PathBuf),
            netns: Option<PathBuf>,
        ) -> Vm {
            ember_tests::guest::use_built_vmm();
            let tmp = tempfile::tempdir().unwrap();
            let mut config = Config::default();
            config.sandbox.backend = BackendKind::Microvm;
            config.sandbox.state_dir = tmp.path().join("state");
            config.hypervisor.kernel = kernel;
            config.hypervisor.initrd = Some(initrd);
            config.agent.dial_timeout_ms = DIAL_TIMEOUT_MS;
            let sb = Sandbox::start(SandboxOptions {
                id: id.into(),
                config,
                netns,
                hostname: Some(id.into()),
                namespace: String::new(),
            })
            .await
            .unwrap();
            let console = sb.state_dir().join(CONSOLE_LOG);
            Vm {
                dir: tmp.path().to_path_buf(),
                _tmp: tmp,
                sb: Some(sb),
                console,
            }
        }

        fn sb(&self) -> &Sandbox {
            self.sb.as_ref().unwrap()
        }

        /// Creates container `id` from `bundle` over ttrpc, attaches its stdio streams,
        /// writes `input` to its stdin, starts it and waits for it: exit status, stdout,
        /// stderr. The container is left for [`Vm::remove`].
        async fn run(&self, id: &str, bundle: &Path, input: &[u8]) -> (i32, String, String) {
            let sb = self.sb();
            let mut streams = StdioStreams::new();
            streams.stdin = format!("{id}.init.stdin");
            streams.stdout = format!("{id}.init.stdout");
            streams.stderr = format!("{id}.init.stderr");
            let pid = sb
                .create_container(ContainerRequest {
                    id: id.into(),
                    spec: BundleSpec::load(bundle).unwrap(),
                    rootfs_mounts: Vec::new(),
                    stdio: streams.clone(),
                })
                .await
                .unwrap();
            assert!(pid > 0, "the agent's pid of {id}: {pid}");
            let mut stdin = sb.open_stream(&streams.stdin).await.unwrap();
            let read = |mut s: tokio::net::UnixStream| {
                tokio::spawn(async move {
                    let mut b = Vec::new();
                    let _ = s.read_to_end(&mut b).await;
                    String::from_utf8_lossy(&b).into_owned()
                })
            };
            let stdout = read(sb.open_stream(&streams.stdout).await.unwrap());
            let stderr = read(sb.open_stream(&streams.stderr).await.unwrap());
            stdin.write_all(input).await.unwrap();
            stdin.shutdown().await.unwrap();
            let mut r = StartContainerRequest::new();
            r.container_id = id.into();
            sb.agent().agent.start_container(ctx(), &r).await.unwrap();
            let mut w = WaitProcessRequest::new();
            w.container_id = id.into();
            let status =
                tokio::time::timeout(TIMEOUT, sb.agent().agent.wait_process(ctx_no_timeout(), &w))
                    .await
                    .unwrap_or_else(|_| panic!("{id} did not end within {TIMEOUT:?}"))
                    .unwrap()
                    .exit_status;
            let out = tokio::time::timeout(TIMEOUT, stdout)
                .await
                .unwrap()
                .unwrap();
            let err = tokio::time::timeout(TIMEOUT, stderr)
                .await
                .unwrap()
                .unwrap();
            (status, out, err)
        }

        async fn remove(&self, id: &str) {
            self.sb().remove_container(id, false).await.unwrap();
        }

        /// Destroys the sandbox: nothing of it is left.
        async fn destroy(mut self) {
            let sb = self.sb.take().unwrap();
            let dir = sb.state_dir();
            sb.destroy().await.unwrap();
            assert!(!dir.exists(), "{} is left", dir.display());
            assert!(mounts_under(&self.dir).is_empty(), "mounts left");
        }
    }

    impl Drop for Vm {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!(
                    "--- the guest console ({}) ends with:\n{}",
                    self.console.display(),
                    ember_sys::tail::file(&self.console, 80)
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sandbox_runs_a_container_over_vsock_with_stdio_on_the_virtio_fs_rootfs() {
        const TEST: &str =
            "hw_kvm::sandbox_runs_a_container_over_vsock_with_stdio_on_the_virtio_fs_rootfs";
        let Some(assets) = assets(TEST, &[]) else {
            return;
        };
        let vm = Vm::start("e2e-fs", assets, None).await;
        let b = bundle(
            &vm.dir,
            &sh(
                "cat /etc/from-host; read x; echo \"stdin: $x\"; echo oops >&2; \
                 echo written in the guest > /root/from-guest; exit 3",
            ),
        );
        let rootfs = b.join("rootfs");
        std::fs::write(rootfs.join("etc/from-host"), "written on the host\n").unwrap();
        let (status, out, err) = vm.run("c1", &b, b"hello\n").await;
        assert_eq!(status, 3, "stdout: {out}\nstderr: {err}");
        assert_eq!(out, "written on the host\nstdin: hello\n", "stderr: {err}");
        assert_eq!(err, "oops\n");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("root/from-guest")).unwrap(),
            "written in the guest\n",
            "the guest's write reaches the bundle's rootfs over virtio-fs"
        );
        vm.remove("c1").await;
        vm.destroy().await;
    }

    /// Runs `cmd`, panicking with its stderr unless it succeeds; returns its stdout.
    fn run_cmd(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sandbox_mounts_a_block_volume_whose_writes_reach_the_image() {
        const TEST: &str = "hw_kvm::sandbox_mounts_a_block_volume_whose_writes_reach_the_image";
        let Some(assets) = assets(TEST, &["mkfs.ext4", "debugfs", "e2fsck"]) else {
            return;
        };
        let vm = Vm::start("e2e-blk", assets, None).await;
        let content = vm.dir.join("content");
        std::fs::create_dir(&content).unwrap();
        std::fs::write(content.join("hello.txt"), "on the volume\n").unwrap();
        let image = vm.dir.join("volume.ext4");
        run_cmd(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&content)
                .arg(&image)
                .arg("16M"),
        );
        let mut spec = sh("cat /data/hello.txt; echo from the guest > /data/out.txt");
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "ext4",
            "source": image.display().to_string(), "options": ["rw"]
        }));
        let b = bundle(&vm.dir, &spec);
        let (status, out, err) = vm.run("c1", &b, b"").await;
        assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
        assert_eq!(out, "on the volume\n", "stderr: {err}");
        // Removal syncs and unmounts the volume before the slot is freed.
        vm.remove("c1").await;
        let written = run_cmd(
            Command::new("debugfs")
                .args(["-R", "cat /out.txt"])
                .arg(&image),
        );
        assert_eq!(written, "from the guest\n");
        run_cmd(Command::new("e2fsck").arg("-fn").arg(&image));
        vm.destroy().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sandbox_reports_an_oom_kill() {
        const TEST: &str = "hw_kvm::sandbox_reports_an_oom_kill";
        let Some(assets) = assets(TEST, &[]) else {
            return;
        };
        let vm = Vm::start("e2e-oom", assets, None).await;
        // A 16 MiB cgroup limit and a 64 MiB buffer.
        let mut spec = default_spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
        spec["linux"]["resources"]["memory"] = json!({"limit": 16 << 20});
        let b = bundle(&vm.dir, &spec);
        let (status, out, err) = vm.run("hog", &b, b"").await;
        assert_eq!(
            status, 137,
            "killed by SIGKILL; stdout: {out}\nstderr: {err}"
        );
        let ev = tokio::time::timeout(
            Duration::from_secs(60),
            vm.sb()
                .agent()
                .agent
                .get_oom_event(ctx_no_timeout(), &GetOOMEventRequest::new()),
        )
        .await
        .expect("an OOM event within 60 s")
        .unwrap();
        assert_eq!(ev.container_id, "hog");
        vm.remove("hog").await;
        vm.destroy().await;
    }

    /// Two network namespaces joined by a veth pair: the pod's, with `eth0` at
    /// 10.125.0.2/24 and a default route via 10.125.0.1 (as a CNI plugin leaves it), and
    /// the peer's, with `peer0` at 10.125.0.1/24. Deleted on drop.
    struct Netns(String);

    impl Netns {
        fn new() -> Netns {
            let name = format!("ember-e2e-{}", std::process::id());
            let ns = Netns(name);
            let (pod, peer) = (ns.0.clone(), format!("{}-peer", ns.0));
            let ip = |args: &[&str]| run_cmd(Command::new("ip").args(args));
            ip(&["netns", "add", &pod]);
            ip(&["netns", "add", &peer]);
            ip(&[
                "-n", &pod, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
                "netns", &peer,
            ]);
            ip(&["-n", &pod, "addr", "add", "10.125.0.2/24", "dev", "eth0"]);
            ip(&["-n", &pod, "link", "set", "eth0", "up"]);
            ip(&["-n", &pod, "route", "add", "default", "via", "10.125.0.1"]);
            ip(&["-n", &peer, "addr", "add", "10.125.0.1/24", "dev", "peer0"]);
            ip(&["-n", &peer, "link", "set", "peer0", "up"]);
            ns
        }

        fn path(&self) -> PathBuf {
            Path::new("/run/netns").join(&self.0)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            for n in [self.0.clone(), format!("{}-peer", self.0)] {
                let _ = Command::new("ip").args(["netns", "del", &n]).output();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sandbox_gives_the_container_the_pod_network() {
        const TEST: &str = "hw_kvm::sandbox_gives_the_container_the_pod_network";
        let Some(assets) = assets(TEST, &["ip"]) else {
            return;
        };
        let ns = Netns::new();
        let vm = Vm::start("e2e-net", assets, Some(ns.path())).await;
        let b = bundle(
            &vm.dir,
            &sh("ip -o addr show dev eth0; ip route; ping -c 1 -w 60 10.125.0.1 >/dev/null && echo pong"),
        );
        let (status, out, err) = vm.run("c1", &b, b"").await;
        assert_eq!(status, 0, "stdout: {out}\nstderr: {err}");
        assert!(
            out.contains("eth0") && out.contains("inet 10.125.0.2/24"),
            "the guest NIC has the pod address: {out}"
        );
        assert!(
            out.contains("default via 10.125.0.1"),
            "and the pod's routes: {out}"
        );
        assert!(
            out.ends_with("pong\n"),
            "the peer answers through the tap: {out}"
        );
        vm.remove("c1").await;
        vm.destroy().await;
        assert_eq!(
            ember_runtime::network::interface_index(&ns.path(), ember_runtime::network::TAP_NAME)
                .unwrap(),
            None,
            "the tap is gone with the sandbox"
        );
    }
}
