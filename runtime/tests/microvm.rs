//! The `microvm` backend booting the real guest kernel (built by `make guest`) in-process.
//!
//! On a host without hardware virtualization (PVM KVM, see docs/architecture.md) guest user space
//! cannot run, so the agent never answers, and the backend refuses to start at once (tested
//! here too). The guest kernel itself still boots there under KVM's instruction emulator:
//! the backend made by `MicrovmBackend::for_kernel_boot_tests` (which skips that refusal)
//! is tested directly, up to the guest kernel having probed the VM's virtio devices and its
//! vsock driver answering, then stopped and cleaned up. With hardware KVM the full
//! `Sandbox::start` is also run (it needs the agent's initramfs). A block volume is attached
//! to one of the VM's virtio-blk slots and detached again while the guest kernel runs,
//! which must see both capacity changes. Needs root and /dev/kvm; skips, saying why,
//! otherwise.

use ember_tests::guest::{retry_after_hang, ConsoleWatch};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_config::{Backend as BackendKind, Config};
use ember_runtime::endpoint::AgentEndpoint;
use ember_runtime::sandbox::microvm::{MicrovmBackend, CONSOLE_LOG, VSOCK_SOCKET};
use ember_runtime::sandbox::{Backend, Sandbox, SandboxOptions, StartContext};
use ember_runtime::state::{Resource, SandboxState};
use ember_vmm::Virtualization;

/// How long the guest kernel may take to get there under KVM's instruction emulator.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest kernel, when this host can boot it; otherwise `test`'s SKIP line (what is
/// missing) and `None`.
fn bootable_kernel(test: &str) -> Option<PathBuf> {
    if let Some(why) = host_problem() {
        ember_tests::skip(test, why);
        return None;
    }
    let kernel = guest_kernel();
    if kernel.is_none() {
        ember_tests::skip(
            test,
            "no guest kernel (run `make guest`, or set EMBER_GUEST_KERNEL)",
        );
    }
    kernel
}

/// Root and a usable /dev/kvm, or the reason to skip.
fn host_problem() -> Option<&'static str> {
    if !ember_tests::is_root() {
        return Some("needs root (KVM, taps, the state directory)");
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Some("needs /dev/kvm (run `ember check`)");
    }
    // Every test that gets this far starts the VMM process.
    ember_tests::guest::use_built_vmm();
    None
}

use ember_tests::guest::{initramfs as guest_initramfs, kernel as guest_kernel};

/// A newc cpio holding only its trailer: an initramfs without `/init`, after which the
/// kernel goes on to mount a root device, and `rootdelay` keeps it waiting (with every
/// driver probed) long enough for the test.
fn empty_initramfs(dir: &Path) -> PathBuf {
    let name = b"TRAILER!!!\0";
    let mut h = format!("070701{:08X}", 0); // ino
    for v in [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, name.len(), 0] {
        h.push_str(&format!("{v:08X}"));
    }
    let mut out = h.into_bytes();
    out.extend_from_slice(name);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.resize(512, 0);
    let p = dir.join("empty.cpio");
    std::fs::write(&p, out).unwrap();
    p
}

/// A named network namespace with a veth end as `eth0` (as a CNI plugin leaves it), made
/// with iproute2; deleted on drop. `None` when iproute2 is missing.
struct Netns(String);

impl Netns {
    fn new() -> Option<Netns> {
        let name = format!("ember-vm-{}", std::process::id());
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        let ns = Netns(name);
        let n = ns.0.as_str();
        let ok = ip(&[
            "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]) && ip(&["-n", n, "addr", "add", "10.124.0.2/24", "dev", "eth0"])
            && ip(&["-n", n, "link", "set", "peer0", "up"])
            && ip(&["-n", n, "link", "set", "eth0", "up"]);
        ok.then_some(ns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Why [`wait_for_console`] gave up.
#[derive(Debug)]
enum Missed {
    /// The console did not grow for [`ember_tests::guest::HANG_QUIET`]; its last lines.
    Hung(String),
    /// The VM ended, or the timeout passed; the message.
    Other(String),
}

impl std::fmt::Display for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missed::Hung(tail) => write!(
                f,
                "the guest printed nothing for {:?}; it ends with:\n{tail}",
                ember_tests::guest::HANG_QUIET
            ),
            Missed::Other(m) => f.write_str(m),
        }
    }
}

/// Waits until the console log shows `want`, the VM ends, the console stops growing
/// ([`ConsoleWatch`]), or the timeout passes.
async fn wait_for_console(
    backend: &MicrovmBackend,
    log: &Path,
    want: &str,
) -> Result<String, Missed> {
    let start = Instant::now();
    let mut watch = ConsoleWatch::default();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(want) {
            return Ok(text);
        }
        let tail = || ember_sys::tail::file(log, 20);
        if watch.hung(text.len()) {
            return Err(Missed::Hung(ember_sys::tail::file(log, 3)));
        }
        if start.elapsed() > BOOT_TIMEOUT {
            return Err(Missed::Other(format!(
                "`{want}` not on the console after {:?}; it ends with:\n{}",
                start.elapsed(),
                tail()
            )));
        }
        tokio::select! {
            exit = backend.wait() => {
                return Err(Missed::Other(format!("the VM ended ({}) before `{want}`; console:\n{}", exit.status, tail())));
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_boots_the_guest_kernel_with_its_devices_then_stops_and_cleans_up() {
    const TEST: &str = "microvm_boots_the_guest_kernel_with_its_devices_then_stops_and_cleans_up";
    let Some(kernel) = bootable_kernel(TEST) else {
        return;
    };
    let hardware = Virtualization::detect(Path::new("/")).is_hardware();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.sandbox.backend = BackendKind::Microvm;
    config.sandbox.state_dir = tmp.path().to_path_buf();
    config.hypervisor.kernel = kernel;
    // With hardware KVM and the agent's initramfs the kernel runs it as /init. Otherwise an
    // empty initramfs and rootdelay keep the kernel waiting with its drivers probed: on a
    // host without hardware virtualization the agent's first user-space instruction would
    // stop the guest (it panics and resets), so the real initramfs is not used there.
    // The messages waited for below are informational, which ember's `quiet` hides.
    config.hypervisor.kernel_params = "loglevel=7".into();
    let (initrd, want) = match guest_initramfs().filter(|_| hardware) {
        Some(i) => (i, "Run /init as init process"),
        None => {
            eprintln!("{TEST}: booting an empty initramfs (no hardware virtualization, or no build/guest/initramfs.cpio from `make guest`)");
            config.hypervisor.kernel_params = "loglevel=7 rootdelay=600".into();
            (
                empty_initramfs(tmp.path()),
                "Waiting 600 sec before mounting root device",
            )
        }
    };
    config.hypervisor.initrd = Some(initrd);
    // The pod network too, when iproute2 can make a namespace for it.
    let netns = Netns::new();
    if netns.is_none() {
        eprintln!("{TEST}: no network namespace (iproute2 missing?): testing without a NIC");
    }
    let netns_path = netns.as_ref().map(Netns::path);

    // A guest that hangs on a PVM host is booted once more, in a fresh sandbox.
    let mut attempt = 0;
    let (state, backend, socket, console, cmdline, started, log) = loop {
        attempt += 1;
        let mut state =
            SandboxState::create(tmp.path(), &format!("vm{attempt}"), "microvm").unwrap();
        let shared = state.dir().join("shared");
        std::fs::create_dir(&shared).unwrap();
        state
            .add(Resource::Dir {
                path: shared.clone(),
            })
            .unwrap();
        let socket = state.dir().join(VSOCK_SOCKET);
        let console = state.dir().join(CONSOLE_LOG);

        // Without hardware virtualization the plain backend would refuse this host.
        let mut backend = MicrovmBackend::for_kernel_boot_tests();
        let started = Instant::now();
        let endpoint = backend
            .start(StartContext {
                id: &format!("vm{attempt}"),
                config: &config,
                state: &mut state,
                shared_dir: &shared,
                netns: netns_path.as_deref(),
            })
            .await
            .unwrap();
        assert_eq!(
            endpoint,
            AgentEndpoint::HybridVsock {
                socket: socket.clone(),
                port: config.agent.port
            }
        );
        assert!(state.record().resources.contains(&Resource::Socket {
            path: socket.clone()
        }));
        assert!(socket.exists(), "the VMM listens on {}", socket.display());
        assert_eq!(backend.log_path(), Some(console.clone()));
        assert_ne!(
            backend.pid(),
            std::process::id(),
            "the VMM is a process of its own"
        );
        let cmdline = backend.cmdline().unwrap().to_string();
        assert!(cmdline.contains("ember.agent_port=1024"), "{cmdline}");

        match wait_for_console(&backend, &console, want).await {
            Ok(log) => break (state, backend, socket, console, cmdline, started, log),
            Err(Missed::Hung(tail)) if attempt == 1 && retry_after_hang(TEST, &tail) => {
                backend.stop(Duration::from_secs(5)).await;
                state.cleanup().unwrap();
            }
            Err(e) => {
                backend.stop(Duration::from_secs(5)).await;
                panic!("{e}");
            }
        }
    };
    eprintln!("{TEST}: `{want}` after {:?}", started.elapsed());
    let vmm_pid = backend.pid() as i32;
    assert_confined(vmm_pid, state.dir(), &state.record().sandbox_id.clone());
    if std::env::var_os("EMBER_SHOW_CONSOLE").is_some() {
        eprintln!("{log}");
    }
    assert!(
        log.contains(&format!("Command line: {cmdline}")),
        "the kernel got our command line `{cmdline}`"
    );
    // The block slots, [virtio-net,] virtio-fs (the share), virtio-rng and virtio-vsock,
    // in that order.
    let slots = config.hypervisor.block_slots as usize;
    assert_eq!(slots, 4, "the default");
    let devices = if let Some(ns) = &netns_path {
        let net = backend.network().expect("the pod network is exposed");
        assert_eq!(net.interface.name, "eth0");
        assert_eq!(net.interface.addresses[0].to_string(), "10.124.0.2/24");
        assert!(ember_runtime::network::interface_index(ns, &net.tap)
            .unwrap()
            .is_some());
        assert_eq!(
            ember_runtime::network::redirect_filters(ns, "eth0")
                .unwrap()
                .len(),
            1
        );
        slots + 4
    } else {
        slots + 3
    };
    for i in 0..devices {
        assert!(
            log.contains(&format!("Registering device virtio-mmio.{i} at")),
            "virtio-mmio.{i} registered; console:\n{log}"
        );
    }
    assert!(
        log.contains("[vda] 0 512-byte logical blocks"),
        "the first slot is probed empty; console:\n{log}"
    );

    // A block volume: attached to the first free slot while the guest runs, the guest's
    // virtio_blk sees the new capacity; detached, it sees 0 again.
    let image = tmp.path().join("volume.ext4");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let volume = ember_runtime::oci::BlockVolume {
        index: 3,
        destination: "/data".into(),
        source: image.clone(),
        fstype: "ext4".into(),
        options: vec!["ro".into()],
        read_only: true,
        guest_path: "/run/ember/storage/c1/3".into(),
    };
    let storages = backend
        .attach_block_volumes("c1", std::slice::from_ref(&volume))
        .unwrap();
    assert_eq!(storages[0].source, "mmio:0xd0000000", "the first slot");
    assert_eq!(storages[0].mount_point, "/run/ember/storage/c1/3");
    if let Err(e) = wait_for_console(&backend, &console, "capacity change from 0 to 2048").await {
        backend.stop(Duration::from_secs(5)).await;
        panic!("attach: {e}");
    }
    backend.release_block_volumes("c1");
    if let Err(e) = wait_for_console(&backend, &console, "capacity change from 2048 to 0").await {
        backend.stop(Duration::from_secs(5)).await;
        panic!("detach: {e}");
    }
    eprintln!("{TEST}: the guest saw the volume attached and detached");
    if !hardware {
        // The guest's vsock driver is up: with no agent listening (user space cannot run
        // here) it answers the agent port with a reset, which the VMM turns into EOF.
        let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(format!("CONNECT {}\n", config.agent.port).as_bytes())
            .unwrap();
        let mut buf = [0u8; 32];
        match c.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "unexpected vsock answer {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => panic!("no answer from the guest's vsock driver: {e}"),
        }
    }

    let t = Instant::now();
    backend.stop(Duration::from_secs(10)).await;
    let e = backend
        .attach_block_volumes("c2", &[volume])
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("no free virtio-blk slot (hypervisor.block_slots = 0)"),
        "a stopped VM's slots are gone: {e}"
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), backend.wait())
        .await
        .expect("wait() resolves once stopped");
    assert_eq!(exit.status, "stopped by the host");
    eprintln!("{TEST}: stopped in {:?}", t.elapsed());
    assert!(
        !Path::new(&format!("/proc/{vmm_pid}")).exists(),
        "the stopped VMM is gone (and reaped)"
    );
    let vmm_cgroup = format!("/ember/{}/vmm", state.record().sandbox_id);
    let dir = state.dir().to_path_buf();
    state.cleanup().unwrap();
    assert!(!socket.exists() && !dir.exists(), "cleanup leaves nothing");
    assert!(
        ember_runtime::cgroups::existing(&vmm_cgroup).is_empty(),
        "the VMM's cgroup is removed"
    );
    if let Some(ns) = &netns_path {
        let tap = ember_runtime::network::TAP_NAME;
        assert_eq!(
            ember_runtime::network::interface_index(ns, tap).unwrap(),
            None
        );
        assert!(ember_runtime::network::redirect_filters(ns, "eth0")
            .unwrap()
            .is_empty());
    }
    drop(backend);
}

/// The value of `key:` in a `/proc/.../status` text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
        .trim()
}

/// The jailed VMM `pid` of sandbox `id` (state directory `state_dir`): every thread has
/// its seccomp filter and no_new_privs; no thread but the device thread has a
/// capability, and that one exactly the virtio-fs list (the bounding set too); its
/// mount, network, IPC, UTS and PID namespaces are not the test's (it is the init of its
/// PID namespace, and the procfs it holds open is that namespace's); its root is the state
/// directory; it is in the sandbox's cgroup.
fn assert_confined(pid: i32, state_dir: &Path, id: &str) {
    use std::os::unix::fs::MetadataExt;
    let device_caps: u64 = ember_vmm::DEVICE_CAPABILITIES
        .iter()
        .map(|c| 1u64 << c.index())
        .sum();
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm"))
            .unwrap()
            .trim()
            .to_string();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let caps = |key| u64::from_str_radix(status_field(&status, key), 16).unwrap();
        assert_eq!(
            status_field(&status, "Seccomp"),
            "2",
            "{name}: seccomp filter"
        );
        assert_eq!(
            status_field(&status, "NoNewPrivs"),
            "1",
            "{name}: no_new_privs"
        );
        assert_eq!(caps("CapInh"), 0, "{name}: CapInh");
        assert_eq!(caps("CapAmb"), 0, "{name}: CapAmb");
        assert_eq!(caps("CapBnd"), device_caps, "{name}: CapBnd");
        let want = if name == "ember-devices" {
            device_caps
        } else {
            0
        };
        assert_eq!(caps("CapEff"), want, "{name}: CapEff");
        assert_eq!(caps("CapPrm"), want, "{name}: CapPrm");
        names.push(name);
    }
    names.sort();
    assert!(
        names.iter().any(|n| n == "ember-devices")
            && names.iter().any(|n| n.starts_with("ember-vcpu")),
        "the VMM's threads: {names:?}"
    );
    for ns in ["mnt", "net", "ipc", "uts", "pid"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the VMM's {ns} namespace is its own");
    }
    // The init of its PID namespace, and what it holds open in /proc (fuse-backend-rs's
    // `/proc/self/fd`) is in that namespace's procfs, not the host's.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(
        status_field(&status, "NSpid"),
        format!("{pid}\t1"),
        "the VMM is pid 1 of a PID namespace of its own"
    );
    let host_proc = std::fs::metadata("/proc").unwrap().dev();
    let mut proc_fds = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd = fd.unwrap().path();
        let Ok(target) = std::fs::read_link(&fd) else {
            continue;
        };
        if target.ends_with("fd") {
            let dev = std::fs::metadata(&fd).unwrap().dev();
            assert_ne!(
                dev,
                host_proc,
                "{}: {} is in the host's procfs",
                fd.display(),
                target.display()
            );
            proc_fds.push(target);
        }
    }
    assert!(
        !proc_fds.is_empty(),
        "virtio-fs keeps an fd on /proc/self/fd"
    );
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let dir = std::fs::metadata(state_dir).unwrap();
    assert_eq!(
        (root.dev(), root.ino()),
        (dir.dev(), dir.ino()),
        "the VMM's root is the state directory"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup
            .lines()
            .all(|l| l.ends_with(&format!("/ember/{id}/vmm"))),
        "the VMM is in the sandbox's cgroup in every hierarchy:\n{cgroup}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_vmm_is_reported_by_wait_and_cleaned_up() {
    const TEST: &str = "a_killed_vmm_is_reported_by_wait_and_cleaned_up";
    let status = vmm_death_is_reported_and_cleaned_up(TEST, "killed", |pid| {
        // SAFETY: kill(2) on the VMM this test started, not yet reaped (wait() has not
        // resolved).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    })
    .await;
    if let Some(status) = status {
        assert_eq!(status, "the VMM was killed by SIGKILL");
    }
}

/// A system call outside a VMM thread's seccomp filter kills the whole VMM with SIGSYS
/// (the filters' default action), which `wait()` reports naming the filter. The call is
/// injected with ptrace into the device thread, which makes system calls while the guest
/// kernel boots and idles (its epoll_wait, restarted after the ptrace interrupt); no
/// thread's filter has `ptrace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_killed_by_its_seccomp_filter_is_reported_by_wait_and_cleaned_up() {
    const TEST: &str = "a_vmm_killed_by_its_seccomp_filter_is_reported_by_wait_and_cleaned_up";
    let status = vmm_death_is_reported_and_cleaned_up(TEST, "sigsys", |pid| {
        use ember_tests::syscall_inject::{inject_syscall, thread_named};
        let tid = thread_named(pid, ember_vmm::event_loop::THREAD_NAME)
            .expect("the VMM has its device thread");
        let injected = inject_syscall(tid, libc::SYS_ptrace, Duration::from_secs(10))
            .expect("the device thread is killed by its filter");
        assert_eq!(
            injected.signal,
            nix::sys::signal::Signal::SIGSYS,
            "{injected:?}"
        );
    })
    .await;
    if let Some(status) = status {
        assert!(
            status.starts_with(
                "the VMM was killed by SIGSYS: a system call outside its seccomp filter"
            ),
            "{status}"
        );
    }
}

/// Start sandbox `id`'s VMM (the guest kernel waiting for its root), `kill` it (given its
/// pid, on a thread of its own), and check that `wait()` resolves and that stopping the
/// backend and cleaning up the state leave nothing. `wait()`'s exit status, or `None`
/// when `test` skips.
async fn vmm_death_is_reported_and_cleaned_up(
    test: &str,
    id: &'static str,
    kill: impl FnOnce(i32) + Send + 'static,
) -> Option<String> {
    let kernel = bootable_kernel(test)?;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.sandbox.state_dir = tmp.path().to_path_buf();
    config.hypervisor.kernel = kernel;
    config.hypervisor.initrd = Some(empty_initramfs(tmp.path()));
    config.hypervisor.kernel_params = "loglevel=7 rootdelay=600".into();
    let mut state = SandboxState::create(tmp.path(), id, "microvm").unwrap();
    let shared = state.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let mut backend = MicrovmBackend::for_kernel_boot_tests();
    backend
        .start(StartContext {
            id,
            config: &config,
            state: &mut state,
            shared_dir: &shared,
            netns: None,
        })
        .await
        .unwrap();
    let pid = backend.pid() as i32;
    assert!(
        state.record().resources.iter().any(|r| matches!(
            r,
            Resource::Process { role, id } if role == "vmm" && id.pid == pid
        )),
        "the VMM is recorded for cleanup"
    );
    // One thread for all of `kill` (ptrace requests must come from the tracing thread).
    tokio::task::spawn_blocking(move || kill(pid))
        .await
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), backend.wait())
        .await
        .expect("wait() resolves when the VMM dies");
    backend.stop(Duration::from_secs(1)).await;
    let dir = state.dir().to_path_buf();
    state.cleanup().unwrap();
    assert!(!dir.exists(), "cleanup leaves nothing");
    assert!(ember_runtime::cgroups::existing(&format!("/ember/{id}")).is_empty());
    Some(exit.status)
}

/// `MicrovmBackend::start` of sandbox `id` (state under `dir`) that must fail: its error
/// message and the sandbox's state, for checking what was left.
async fn start_error(dir: &Path, id: &str, config: &Config) -> (String, SandboxState) {
    let mut state = SandboxState::create(dir, id, "microvm").unwrap();
    let shared = state.dir().join("shared");
    let e = MicrovmBackend::default()
        .start(StartContext {
            id,
            config,
            state: &mut state,
            shared_dir: &shared,
            netns: None,
        })
        .await
        .unwrap_err()
        .to_string();
    (e, state)
}

#[tokio::test]
async fn missing_kernel_is_reported_by_its_key_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.hypervisor.kernel = tmp.path().join("no-vmlinux");
    let (e, state) = start_error(tmp.path(), "vm2", &config).await;
    assert!(
        e.contains(&format!(
            "hypervisor.kernel: {} does not exist",
            tmp.path().join("no-vmlinux").display()
        )),
        "{e}"
    );
    assert_eq!(state.record().resources.len(), 1, "only the state dir");
    state.cleanup().unwrap();
}

/// Tests that need hardware virtualization: run directly on a host that has it, and in the
/// nested KVM test host (`ember_tests::kvm_host`, from `scripts/run-tests.sh`) elsewhere.
mod hw_kvm {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn microvm_sandbox_reaches_the_agent() {
        const TEST: &str = "hw_kvm::microvm_sandbox_reaches_the_agent";
        if !ember_tests::hw_kvm_runs_here(TEST) {
            return;
        }
        if let Some(why) = host_problem() {
            ember_tests::skip(TEST, why);
            return;
        }
        let (Some(kernel), Some(initrd)) = (guest_kernel(), guest_initramfs()) else {
            ember_tests::skip(
                TEST,
                "no guest kernel or agent initramfs (run `make guest`)",
            );
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.sandbox.backend = BackendKind::Microvm;
        config.sandbox.state_dir = tmp.path().to_path_buf();
        config.hypervisor.kernel = kernel;
        config.hypervisor.initrd = Some(initrd);
        config.agent.dial_timeout_ms = 60_000;
        let sandbox = Sandbox::start(SandboxOptions {
            id: "vm3".into(),
            config,
            netns: None,
            hostname: Some("vm3".into()),
            namespace: String::new(),
        })
        .await
        .unwrap();
        let dir = sandbox.state_dir();
        sandbox.destroy().await.unwrap();
        assert!(!dir.exists());
    }
}

/// A `microvm` configuration whose guest assets exist (as placeholders: nothing boots them)
/// and whose state directory is `tmp/state`, not made yet.
fn placeholder_config(tmp: &Path) -> Config {
    let mut config = Config::default();
    config.sandbox.backend = BackendKind::Microvm;
    config.sandbox.state_dir = tmp.join("state");
    for f in ["vmlinux", "initramfs.cpio"] {
        std::fs::write(tmp.join(f), b"placeholder").unwrap();
    }
    config.hypervisor.kernel = tmp.join("vmlinux");
    config.hypervisor.initrd = Some(tmp.join("initramfs.cpio"));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_backend_refuses_a_host_without_hardware_virtualization_at_once() {
    const TEST: &str = "microvm_backend_refuses_a_host_without_hardware_virtualization_at_once";
    if let Some(why) = host_problem() {
        ember_tests::skip(TEST, why);
        return;
    }
    let virt = Virtualization::detect(Path::new("/"));
    let host = match virt {
        Virtualization::Pvm => {
            "PVM: KVM without hardware virtualization (kvm_pvm loaded, no vmx/svm CPU flag)"
        }
        Virtualization::KvmWithoutHardware => {
            "KVM without hardware virtualization (no vmx/svm CPU flag)"
        }
        other => {
            ember_tests::skip(
                TEST,
                &format!(
                    "this host has {other:?}: the microvm backend runs here, nothing to refuse"
                ),
            );
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = placeholder_config(tmp.path());
    let state_dir = config.sandbox.state_dir.clone();

    // Through the sandbox, as the shim and `ember run` start it: refused before anything
    // is made, in one line naming the host's virtualization and what to do.
    let started = Instant::now();
    let e = Sandbox::start(SandboxOptions {
        id: "refused".into(),
        config: config.clone(),
        netns: None,
        hostname: None,
        namespace: String::new(),
    })
    .await
    .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(e, ember_runtime::sandbox::SandboxError::Unsupported { .. }),
        "{e:?}"
    );
    let e = e.to_string();
    eprintln!("{TEST}: refused in {elapsed:?}: {e}");
    assert_eq!(
        e,
        format!(
            "sandbox refused: the microvm backend needs hardware virtualization (Intel VT-x or AMD-V) \
             and this host has {host}, under which a guest stops at its first user-space instruction; \
             set `[sandbox] backend = \"process\"` (no VM isolation) or use a host with hardware KVM; \
             `ember check` shows what this host can run"
        )
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "refused at once, not after a boot: {elapsed:?}"
    );
    assert!(
        !state_dir.exists(),
        "nothing is made: {:?}",
        std::fs::read_dir(&state_dir).map(|d| d.collect::<Vec<_>>())
    );

    // The backend on its own refuses too, having made nothing but what its caller made.
    let (e, state) = start_error(&state_dir, "refused2", &config).await;
    assert!(
        e.starts_with("sandbox refused2: the microvm backend needs hardware virtualization")
            && e.contains(host),
        "{e}"
    );
    assert_eq!(state.record().resources.len(), 1, "only the state dir");
    let files: Vec<_> = std::fs::read_dir(state.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files,
        [ember_runtime::state::STATE_FILE],
        "only the state record"
    );
    state.cleanup().unwrap();
}
