//! ember's shim (`containerd-shim-ember-v2`, runtime `io.containerd.ember.v2`) end to end
//! against a private containerd, on both sandbox backends.
//!
//! Each test body runs twice: as `name` with the `process` backend (the agent on the host in
//! fresh namespaces, no VM), and as `hw_kvm::name` with the `microvm` backend (each pod in a
//! KVM microVM that boots the guest kernel and initramfs of `make guest`, the VMM inside the
//! shim, the agent and the containers in the guest). The `hw_kvm` variants need hardware
//! virtualization ([`ember_tests::hw_kvm_runs_here`]): without it they print a `NESTED` (or
//! `SKIP`) line and return, and `scripts/run-tests.sh` runs them in the nested KVM test host
//! (`ember_tests::kvm_host`), where everything is emulated by TCG: on the microvm backend
//! every wait is [`Backend::slowness`] times longer. Where a body checks something only one
//! backend has (the container's processes and cgroup on the host, the agent's host process),
//! it branches on the backend and says why. Two tests are process-only:
//! `killed_agent_is_cleaned_up` (the microvm backend has no agent process on the host to
//! kill) and `unknown_config_key_is_named` (config checks that start no sandbox).
//!
//! Each test starts its own containerd (with the built shim directory first on its `PATH`)
//! and writes its own ember config, whose `sandbox.state_dir` is a short directory under
//! `/run` (agent and vsock socket paths must stay under 107 bytes), removed when the test
//! ends. Covered: `ctr run` stdout, exit codes (0, 7, 137 after SIGKILL, 143 after SIGTERM),
//! which kernel the container runs on, stdin, a TTY, `ctr task exec`, pause/resume, ps,
//! metrics, crash cleanup after the agent, the shim or the VMM is killed (by SIGKILL, or by
//! its seccomp filter at an injected system call), bad input (an unknown config key, a
//! missing rootfs, a missing executable), and a CRI pod of two containers sharing a
//! process namespace, served by one shim.
//!
//! Needs root, containerd/ctr, busybox-static and a built shim and agent
//! (`cargo build -p ember-shim -p ember-agent`), and for the microvm variants the guest
//! assets (`make guest`); otherwise every test says `SKIP` and why.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ember_tests::backend::Backend;
use ember_tests::containerd::{self, DEFAULT_NAMESPACE, EMBER_RUNTIME, EMBER_SHIM, SANDBOX_IMAGE};
use ember_tests::cri::{self, Cri};
use ember_tests::shim::*;
use ember_tests::skip;

// Each body as `name` (process backend) and `hw_kvm::name` (microvm backend).
ember_tests::on_both_backends!(
    run_passes_stdout_and_exit_codes,
    kill_passes_signal_exit_codes,
    stdin_reaches_the_container,
    tty_gives_the_container_a_pty,
    exec_pause_resume_ps_and_metrics,
    killed_shim_is_cleaned_up,
    missing_rootfs_is_reported_and_leaves_nothing,
    missing_executable_is_named_and_leaves_nothing,
    cri_pod_runs_in_one_shim;
    microvm_only:
        container_cannot_reach_the_agent,
        killed_vmm_is_cleaned_up,
        vmm_killed_by_its_seccomp_filter_is_cleaned_up,
);

/// The test bodies that run on both backends ([`ember_tests::on_both_backends`]).
mod body {
    use super::*;

    pub fn run_passes_stdout_and_exit_codes(backend: Backend) {
        let Some(env) = Env::start(backend, "run_passes_stdout_and_exit_codes", "r", false) else {
            return;
        };
        let out = env.run(&["--rm"], &env.cid("echo"), &["echo", "hello ember"]);
        assert_eq!(
            (out.status.code(), text(&out.stdout).as_str()),
            (Some(0), "hello ember\n"),
            "stderr: {}\n{}",
            text(&out.stderr),
            env.ctrd.log_tail(30)
        );
        // An exit code, stdout and stderr apart, and the kernel the container runs on, in
        // one run (each run is a VM boot on the microvm backend).
        let out = env.run(
            &["--rm"],
            &env.cid("seven"),
            &["sh", "-c", "cat /proc/version; echo to-err >&2; exit 7"],
        );
        assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("to-err") && !text(&out.stdout).contains("to-err"),
            "stdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let (theirs, ours) = (
            text(&out.stdout),
            std::fs::read_to_string("/proc/version").unwrap(),
        );
        match backend {
            // No VM: the container shares the host's kernel, as with runc.
            Backend::Process => assert_eq!(theirs, ours, "the container runs another kernel"),
            // The container runs on the microVM's guest kernel, not on the host's.
            Backend::Microvm => assert!(
                theirs.starts_with("Linux version ") && theirs != ours,
                "the container does not run on the guest kernel: {theirs:?}"
            ),
        }
        // 8 MiB of output arrive whole.
        let out = env.run(
            &["--rm"],
            &env.cid("bulk"),
            &["head", "-c", "8388608", "/dev/urandom"],
        );
        assert_eq!(
            (out.status.code(), out.stdout.len()),
            (Some(0), 8 << 20),
            "{}\n{}",
            text(&out.stderr),
            env.ctrd.log_tail(40)
        );
        assert!(
            env.ctr_ok(&["containers", "ls", "-q"]).trim().is_empty(),
            "--rm left containers"
        );
        // Each sandbox's state (on the microvm backend: its VM's sockets and console log)
        // went with its container.
        let left: Vec<_> = std::fs::read_dir(env.state_dir().join("sandboxes"))
            .map(|d| d.filter_map(|e| Some(e.ok()?.file_name())).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "--rm left sandbox state: {left:?}");
    }

    pub fn kill_passes_signal_exit_codes(backend: Backend) {
        let Some(env) = Env::start(backend, "kill_passes_signal_exit_codes", "k", false) else {
            return;
        };
        // SIGKILL → 137: a detached task stays STOPPED until deleted; `ctr task rm` reports
        // its exit code.
        let id = env.cid("killed");
        env.run_detached(&id, &["sleep", "1000"]);
        env.kill_and_remove(&id);

        // Default SIGTERM → 143. A container's PID 1 ignores signals it has no handler for
        // (the kernel's rule for a PID namespace's init, with runc too), so the SIGTERM goes
        // to an exec'd `sleep`, which is not PID 1; an attached `ctr task exec` sees its code.
        let id = env.cid("termed");
        env.run_detached(&id, &["sleep", "1000"]);
        let exec = env
            .ctrd
            .ctr_command(DEFAULT_NAMESPACE)
            .args(["task", "exec", "--exec-id", "sleeper", &id, "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while env.pids(&id).len() < 2 {
            assert!(
                start.elapsed() < env.timeout,
                "the exec never showed up in ps"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        env.ctr_ok(&["task", "kill", "--exec-id", "sleeper", &id]);
        let (code, _, err) = env.finish(exec);
        assert_eq!(code, Some(143), "ctr task exec stderr: {err}");
        // SIGTERM to PID 1 without a handler: ignored, the task keeps running (given as
        // long to die as it would take to, in the nested KVM test host too).
        env.ctr_ok(&["task", "kill", &id]);
        std::thread::sleep(Duration::from_millis(500) * backend.slowness());
        assert_eq!(env.task_status(&id).as_deref(), Some("RUNNING"));
        env.kill_and_remove(&id);
    }

    pub fn stdin_reaches_the_container(backend: Backend) {
        let Some(env) = Env::start(backend, "stdin_reaches_the_container", "i", false) else {
            return;
        };
        let id = env.cid("cat");
        let mut child = env
            .ctrd
            .ctr_command(DEFAULT_NAMESPACE)
            .args(env.run_args(&["--rm"], &id, &["cat"]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"x from the host\nsecond line\n").unwrap();
        drop(stdin);
        let (code, out, err) = env.finish(child);
        assert_eq!(
            (code, out.as_str()),
            (Some(0), "x from the host\nsecond line\n"),
            "stderr: {err}"
        );
    }

    pub fn tty_gives_the_container_a_pty(backend: Backend) {
        let test = "tty_gives_the_container_a_pty";
        if containerd::which("script").is_none() {
            skip(&backend.test_name(test), "script (util-linux) not on PATH");
            return;
        }
        let Some(env) = Env::start(backend, test, "t", false) else {
            return;
        };
        let id = env.cid("tty");
        let out =
            env.ctr_in_terminal(&env.run_args(&["--rm", "-t"], &id, &["sh", "-c", "tty; exit 5"]));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("/dev/pts/"),
            "no pty in {stdout:?} (stderr {:?})\n{}",
            text(&out.stderr),
            env.ctrd.log_tail(30)
        );
        assert_eq!(out.status.code(), Some(5), "{stdout:?}");

        // An exec with a TTY in a container without one.
        let id = env.cid("tty-exec");
        env.run_detached(&id, &["sleep", "1000"]);
        let args: Vec<String> = ["task", "exec", "-t", "--exec-id", "t1", &id, "sh", "-c"]
            .iter()
            .map(|s| s.to_string())
            .chain(["tty; exit 4".to_string()])
            .collect();
        let out = env.ctr_in_terminal(&args);
        let stdout = text(&out.stdout);
        assert!(stdout.contains("/dev/pts/"), "no pty in exec: {stdout:?}");
        assert_eq!(out.status.code(), Some(4), "{stdout:?}");
        // The container's own stdio is no terminal.
        let out = env.ctr(&["task", "exec", "--exec-id", "t2", &id, "sh", "-c", "tty"]);
        assert!(
            text(&out.stdout).contains("not a tty"),
            "{}",
            text(&out.stdout)
        );
        env.kill_and_remove(&id);
    }

    pub fn exec_pause_resume_ps_and_metrics(backend: Backend) {
        let Some(env) = Env::start(backend, "exec_pause_resume_ps_and_metrics", "x", false) else {
            return;
        };
        let id = env.cid("busy");
        env.run_detached(&id, &["sleep", "1000"]);

        let out = env.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "sh",
            "-c",
            "echo exec-out; exit 3",
        ]);
        assert_eq!(
            (out.status.code(), text(&out.stdout).as_str()),
            (Some(3), "exec-out\n"),
            "stderr: {}\n{}",
            text(&out.stderr),
            env.ctrd.log_tail(30)
        );
        // The exec id is free again once the exec is done.
        let out = env.ctr(&["task", "exec", "--exec-id", "e1", &id, "true"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

        let pids = env.pids(&id);
        assert_eq!(pids.len(), 1, "ctr task ps: {pids:?}");
        assert!(pids[0] > 0);

        // Metrics, read by the agent from the container's cgroup (in the guest on the
        // microvm backend).
        let metrics = env.ctr_ok(&["task", "metrics", &id]);
        let value = |key: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next() == Some(key)).then(|| f.next()?.parse().ok())?
                })
                .unwrap_or_else(|| panic!("no {key} in ctr task metrics: {metrics}"))
        };
        assert!(value("memory.usage_in_bytes") > 0, "{metrics}");
        assert!(value("pids.current") >= 1, "{metrics}");
        // The container's cgroup (`/ember/<sandbox>/<container>`), which the agent reads
        // those metrics from.
        let cgroup = format!("{id}/{id}");
        let host_cgroup = cgroup_dirs(&cgroup);
        match backend {
            // The agent runs on the host: the container's cgroup is a host cgroup.
            Backend::Process => assert!(
                !host_cgroup.is_empty(),
                "no host cgroup /ember/{cgroup} for the container"
            ),
            // The agent makes it in the guest's own cgroup tree: the host has none, and the
            // metrics are the guest's.
            Backend::Microvm => assert!(
                host_cgroup.is_empty(),
                "the container of a microVM has host cgroups: {host_cgroup:?}"
            ),
        }

        env.ctr_ok(&["task", "pause", &id]);
        env.wait_status(&id, Some("PAUSED"));
        env.ctr_ok(&["task", "resume", &id]);
        env.wait_status(&id, Some("RUNNING"));
        // Still alive and answering after the resume.
        let out = env.ctr(&["task", "exec", "--exec-id", "e2", &id, "echo", "back"]);
        assert_eq!(text(&out.stdout), "back\n", "{}", text(&out.stderr));

        env.kill_and_remove(&id);
    }

    pub fn killed_shim_is_cleaned_up(backend: Backend) {
        let Some(env) = Env::start(backend, "killed_shim_is_cleaned_up", "s", false) else {
            return;
        };
        let id = env.cid("shimkill");
        let marker = format!("marker-{id}");
        let script = format!("sleep 1000; echo {marker}");
        // Attached: containerd must tell this `ctr run` that the task ended.
        let child = env.spawn_run(&id, &["sh", "-c", &script]);
        let ctr_pid = child.id();
        env.wait_status(&id, Some("RUNNING"));
        let shims: Vec<u32> = env
            .ctrd
            .shim_pids()
            .into_iter()
            .filter(|p| {
                let c = cmdline(*p);
                c.contains(EMBER_SHIM) && c.contains(&id)
            })
            .collect();
        assert_eq!(shims.len(), 1, "one shim expected for {id}: {shims:?}");
        let record = env.record(&id);
        assert_eq!(record["backend"], backend.name(), "{record}");
        assert_eq!(
            record["owner"]["pid"].as_u64(),
            Some(u64::from(shims[0])),
            "the shim does not own the sandbox: {record}"
        );
        // The container's shell, apart from the `ctr run` whose arguments name it too.
        let shells: Vec<u32> = containerd::processes_mentioning(&marker)
            .into_iter()
            .filter(|p| *p != ctr_pid)
            .collect();
        let mut vmm = None;
        match backend {
            // The agent and the container run on the host, in processes of their own that
            // outlive the shim: the crash cleanup has to end them.
            Backend::Process => {
                let agent = env.agent_pid(&id);
                assert!(containerd::process_alive(agent as u32));
                assert_ne!(agent as u32, shims[0], "the agent is the shim");
                assert!(
                    !shells.is_empty(),
                    "the container's shell is not visible on the host"
                );
            }
            // The VMM is the sandbox's one host process (the container runs in the guest,
            // out of the host's sight); it dies with the shim that spawned it
            // (PR_SET_PDEATHSIG), and the crash cleanup would kill a survivor.
            Backend::Microvm => {
                let procs: Vec<_> = record["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["kind"] == "process")
                    .collect();
                assert!(
                    procs.len() == 1 && procs[0]["role"] == "vmm",
                    "host processes of a microVM: {procs:?}"
                );
                let pid = env.process_pid(&id, "vmm");
                assert!(
                    containerd::process_alive(pid as u32),
                    "the VMM is not running"
                );
                assert_ne!(pid as u32, shims[0], "the VMM is the shim");
                assert!(
                    shells.is_empty(),
                    "the microVM's container runs on the host: {shells:?}"
                );
                vmm = Some(pid as u32);
            }
        }
        // SAFETY: kill on the shim serving our private containerd.
        assert_eq!(unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) }, 0);
        // The attached `ctr run` ends: containerd 1.6 proxies its Wait to the shim, so it
        // fails with "ttrpc: closed" (the runc shim does the same) rather than with an exit
        // code.
        let (code, _, err) = env.finish(child);
        assert_ne!(
            code,
            Some(0),
            "ctr run succeeded after its shim died: {err}"
        );
        // containerd runs `containerd-shim-ember-v2 delete` and forgets the task.
        env.wait_status(&id, None);
        env.ctr_ok(&["containers", "rm", &id]);
        assert!(!env
            .ctr_ok(&["containers", "ls", "-q"])
            .lines()
            .any(|l| l == id));
        env.assert_no_leftovers(&id, Some(&marker));
        if let Some(pid) = vmm {
            assert!(!containerd::process_alive(pid), "the VMM outlived its shim");
        }
    }

    /// Microvm only: kill -9 of the sandbox's VMM process (its vCPU, device and control
    /// threads) ends the VM; containerd sees the container exit 137 (SIGKILL's status, as
    /// for any process of a pod whose sandbox ended) and nothing is left.
    pub fn killed_vmm_is_cleaned_up(backend: Backend) {
        let Some(env) = Env::start(backend, "killed_vmm_is_cleaned_up", "v", false) else {
            return;
        };
        let id = env.cid("vmmkill");
        env.run_detached(&id, &["sleep", "1000"]);
        let vmm = env.process_pid(&id, "vmm");
        assert!(
            containerd::process_alive(vmm as u32),
            "the VMM is not running"
        );
        assert!(
            !env.ctrd.shim_pids().contains(&(vmm as u32)),
            "the VMM is a shim"
        );
        // SAFETY: kill on the VMM pid from the sandbox's record, alive just above.
        assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
        env.wait_status(&id, Some("STOPPED"));
        env.assert_rm_reports(&id, 137);
        env.ctr_ok(&["containers", "rm", &id]);
        env.assert_no_leftovers(&id, None);
        assert!(!containerd::process_alive(vmm as u32));
    }

    /// A system call outside a VMM thread's seccomp filter kills the whole VMM (SIGSYS):
    /// injected with ptrace ([`ember_tests::syscall_inject`]) into the device thread, no
    /// backdoor in the product. The shim reports the pod's containers killed (137, what
    /// it gives every process of a sandbox that ended), names SIGSYS and the filter in
    /// containerd's log, and nothing is left.
    pub fn vmm_killed_by_its_seccomp_filter_is_cleaned_up(backend: Backend) {
        use ember_tests::syscall_inject::{inject_syscall, thread_named};
        let Some(env) = Env::start(
            backend,
            "vmm_killed_by_its_seccomp_filter_is_cleaned_up",
            "y",
            false,
        ) else {
            return;
        };
        let id = env.cid("vmmsys");
        env.run_detached(&id, &["sleep", "1000"]);
        let vmm = env.process_pid(&id, "vmm");
        let tid = thread_named(vmm, "ember-devices").expect("the VMM has its device thread");
        // No VMM thread's filter has ptrace(2).
        let injected = inject_syscall(tid, libc::SYS_ptrace, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\n{}", env.ctrd.log_tail(30)));
        assert_eq!(
            injected.signal,
            nix::sys::signal::Signal::SIGSYS,
            "{injected:?}"
        );
        env.wait_status(&id, Some("STOPPED"));
        let code = 128 + libc::SIGKILL;
        assert_ne!(code, 0);
        env.assert_rm_reports(&id, code);
        let start = Instant::now();
        let said = "the VMM was killed by SIGSYS: a system call outside its seccomp filter";
        while !std::fs::read_to_string(env.ctrd.log_path())
            .unwrap_or_default()
            .contains(said)
        {
            assert!(
                start.elapsed() < Duration::from_secs(10) * backend.slowness(),
                "containerd's log does not say {said:?}:\n{}",
                env.ctrd.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        env.ctr_ok(&["containers", "rm", &id]);
        env.assert_no_leftovers(&id, None);
        assert!(!containerd::process_alive(vmm as u32));
    }

    pub fn missing_rootfs_is_reported_and_leaves_nothing(backend: Backend) {
        let Some(env) = Env::start(
            backend,
            "missing_rootfs_is_reported_and_leaves_nothing",
            "n",
            false,
        ) else {
            return;
        };
        let missing = env.ctrd.scratch().join("no-such-rootfs");
        let id = env.cid("nofs");
        let out = env.ctr(&[
            "run",
            "--rm",
            "--runtime",
            EMBER_RUNTIME,
            "--runtime-config-path",
            &env.config.to_string_lossy(),
            "--rootfs",
            &missing.to_string_lossy(),
            &id,
            "true",
        ]);
        let err = text(&out.stderr);
        eprintln!("ctr run without a rootfs: {err}");
        assert!(!out.status.success(), "ran without a rootfs");
        assert!(
            err.contains(&*missing.to_string_lossy()) && err.contains("does not exist"),
            "the missing rootfs is not named: {err}\n{}",
            env.ctrd.log_tail(30)
        );
        let _ = env.ctr(&["containers", "rm", &id]);
        env.assert_no_leftovers(&id, None);
    }

    pub fn cri_pod_runs_in_one_shim(backend: Backend) {
        let Some(env) = Env::start(backend, "cri_pod_runs_in_one_shim", "p", true) else {
            return;
        };
        let mut cri = Cri::connect(&env.ctrd.address()).unwrap();
        cri.timeout *= backend.slowness();
        cri.wait *= backend.slowness();
        cri.wait_for_image(SANDBOX_IMAGE, cri.wait).unwrap();
        cri.wait_for_image(IMAGE, cri.wait).unwrap();

        let p = cri::start_two_container_pod(
            &cri,
            &env.cid("pod"),
            "ember",
            IMAGE,
            &env.ctrd.scratch().join("pod-logs"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", env.ctrd.log_tail(40)));
        let (pod_id, ids) = (&p.pod_id, &p.ids);
        assert!(
            env.sandbox_dir(pod_id).join("state.json").is_file(),
            "no ember sandbox for the pod under {}",
            env.state_dir().display()
        );
        let shims = env.ctrd.shim_pids();
        assert_eq!(
            shims.len(),
            1,
            "one ember shim should serve the pod: {:?}",
            shims.iter().map(|p| cmdline(*p)).collect::<Vec<_>>()
        );
        assert!(cmdline(shims[0]).contains(EMBER_SHIM));
        // Both containers live in the pod's one sandbox (on the microvm backend: one VM).
        let record = std::fs::read_to_string(env.sandbox_dir(pod_id).join("state.json")).unwrap();
        for id in ids {
            assert!(record.contains(id.as_str()), "{id} not in {record}");
            assert!(
                !env.sandbox_dir(id).exists(),
                "container {id} got its own sandbox"
            );
        }

        p.assert_exec_and_logs(&cri);
        p.tear_down(&cri, &|| env.ctrd.diagnostics(env.state_dir(), 40));
        env.assert_no_leftovers(pod_id, None);
        let start = Instant::now();
        while !env.ctrd.shim_pids().is_empty() {
            assert!(
                start.elapsed() < CLEANUP_TIMEOUT * backend.slowness(),
                "the shim outlived its pod"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn missing_executable_is_named_and_leaves_nothing(backend: Backend) {
        let Some(env) = Env::start(
            backend,
            "missing_executable_is_named_and_leaves_nothing",
            "m",
            false,
        ) else {
            return;
        };
        let id = env.cid("noexe");
        let out = env.run(&["--rm"], &id, &["/no/such/program", "arg"]);
        let err = text(&out.stderr);
        eprintln!("ctr run of a missing program: {err}");
        assert!(!out.status.success(), "ran a missing program");
        assert!(
            err.contains("/no/such/program"),
            "the program is not named: {err}\n{}",
            env.ctrd.log_tail(30)
        );
        let _ = env.ctr(&["containers", "rm", &id]);
        env.assert_no_leftovers(&id, None);

        // The same in an exec: the exec fails, the container keeps running.
        let id = env.cid("noexe-exec");
        env.run_detached(&id, &["sleep", "1000"]);
        let out = env.ctr(&["task", "exec", "--exec-id", "bad", &id, "/no/such/program"]);
        let err = text(&out.stderr);
        eprintln!("ctr task exec of a missing program: {err}");
        assert!(!out.status.success(), "exec'd a missing program");
        assert!(err.contains("/no/such/program"), "not named: {err}");
        assert_eq!(env.task_status(&id).as_deref(), Some("RUNNING"));
        let out = env.ctr(&["task", "exec", "--exec-id", "good", &id, "echo", "ok"]);
        assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));
        env.kill_and_remove(&id);
    }

    /// Microvm only (#12: the agent is reachable from the host alone). A static probe
    /// (`tests/probes/vsock_dial.c`), bind-mounted into a container, dials the agent's
    /// ttrpc and stdio ports at the guest's own context ids and offers a guessed stream id:
    /// no connection is made (the guest kernel has no vsock loopback; the agent would also
    /// close it at once, as it takes the host's CID only), and the container's own run is
    /// unaffected.
    pub fn container_cannot_reach_the_agent(backend: Backend) {
        let test = backend.test_name("container_cannot_reach_the_agent");
        if containerd::which("cc").is_none() {
            skip(
                &test,
                "no C compiler (cc) to build the static vsock probe: apt-get install gcc",
            );
            return;
        }
        let Some(env) = Env::start(backend, "container_cannot_reach_the_agent", "p", false) else {
            return;
        };
        let dir = env.ctrd.scratch().join("probe");
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("probes/vsock_dial.c");
        let built = std::process::Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(dir.join("vsock-dial"))
            .arg(&src)
            .output()
            .unwrap();
        if !built.status.success() {
            skip(
                &test,
                &format!(
                    "cc -static could not build {} (static libc missing? apt-get install libc6-dev): {}",
                    src.display(),
                    text(&built.stderr)
                ),
            );
            return;
        }
        let mount = format!(
            "type=bind,src={},dst=/probe,options=rbind:ro",
            dir.display()
        );
        let id = env.cid("probe");
        let out = env.run(
            &["--rm", "--mount", &mount],
            &id,
            &["sh", "-c", "/probe/vsock-dial; echo probe-done"],
        );
        let stdout = text(&out.stdout);
        eprintln!("vsock probe in the container:\n{stdout}");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\nstderr: {}\n{}",
            text(&out.stderr),
            env.ctrd.log_tail(30)
        );
        assert!(stdout.contains("probe-done"), "{stdout}");
        let tries: Vec<&str> = stdout.lines().filter(|l| l.starts_with("cid ")).collect();
        assert_eq!(tries.len(), 4, "{stdout}");
        // Refused by the guest kernel: it has no loopback transport.
        for line in tries {
            assert!(
                line.contains(": refused: "),
                "a container connected to an agent port: {line}"
            );
        }
        let _ = env.ctr(&["containers", "rm", &id]);
        env.assert_no_leftovers(&id, None);
    }
}

/// Process backend only: it kills the agent's host process, which only the process backend
/// has (the microvm backend's agent is the guest's PID 1; killing the VM means killing
/// its VMM process, which `hw_kvm::killed_vmm_is_cleaned_up` does).
#[test]
fn killed_agent_is_cleaned_up() {
    let Some(env) = Env::start(Backend::Process, "killed_agent_is_cleaned_up", "a", false) else {
        return;
    };
    let id = env.cid("agentkill");
    let marker = format!("marker-{id}");
    let script = format!("sleep 1000; echo {marker}");
    env.run_detached(&id, &["sh", "-c", &script]);
    let agent = env.agent_pid(&id);
    assert!(containerd::process_alive(agent as u32));
    assert!(
        !containerd::processes_mentioning(&marker).is_empty(),
        "the container's shell is not visible on the host"
    );
    // SAFETY: kill on the agent pid from the sandbox's record, alive just above.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGKILL) }, 0);
    // The container died with its agent (its PID namespace is gone): SIGKILL's 137.
    env.wait_status(&id, Some("STOPPED"));
    env.assert_rm_reports(&id, 137);
    env.ctr_ok(&["containers", "rm", &id]);
    env.assert_no_leftovers(&id, Some(&marker));
}

/// Process backend only: the config is refused before any sandbox starts, whatever its
/// backend.
#[test]
fn unknown_config_key_is_named() {
    let Some(env) = Env::start(Backend::Process, "unknown_config_key_is_named", "c", false) else {
        return;
    };
    let bad = env.ctrd.scratch().join("bad-ember.toml");
    write_config(&bad, env.backend, env.state_dir(), "no_such_knob = 1\n");
    let id = env.cid("badcfg");
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        EMBER_RUNTIME,
        "--runtime-config-path",
        &bad.to_string_lossy(),
        IMAGE,
        &id,
        "true",
    ]);
    let err = text(&out.stderr);
    eprintln!("ctr run with a bad config: {err}");
    assert!(!out.status.success(), "ran with a bad config");
    assert!(err.contains("sandbox.no_such_knob"), "key not named: {err}");
    assert!(
        err.contains(&*bad.to_string_lossy()),
        "file not named: {err}"
    );
    let _ = env.ctr(&["containers", "rm", &id]);
    env.assert_no_leftovers(&id, None);

    // A state_dir so long that the agent's socket path cannot fit: refused up front with
    // a message that says what to change, and nothing left.
    let long_dir = env.state_dir().join("x".repeat(80));
    let long = env.ctrd.scratch().join("long-ember.toml");
    write_config(&long, env.backend, &long_dir, "");
    let id = env.cid("longdir");
    let out = env.ctr(&[
        "run",
        "--rm",
        "--runtime",
        EMBER_RUNTIME,
        "--runtime-config-path",
        &long.to_string_lossy(),
        IMAGE,
        &id,
        "true",
    ]);
    let err = text(&out.stderr);
    eprintln!("ctr run with a long state_dir: {err}");
    assert!(
        !out.status.success(),
        "ran with a socket path over the limit"
    );
    assert!(
        err.contains("shorter sandbox.state_dir"),
        "no hint to shorten state_dir: {err}"
    );
    let _ = env.ctr(&["containers", "rm", &id]);
    env.assert_no_leftovers(&id, None);
    let sb = long_dir.join("sandboxes").join(&id);
    assert!(!sb.exists(), "{} left behind", sb.display());
}
