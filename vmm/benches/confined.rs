//! What the VMM's own process costs at start: spawn of a jailed `ember-vmm --control-fd 3`
//! to its `Ready` answer (process start, VM build, jail, vCPU and device threads started),
//! against `Vm::new` + `Vm::start` in-process, on the same tiny PVH guest (it halts in a
//! loop), 128 MiB, seccomp on, no devices. Both are then stopped.
//!
//! Run: `cargo bench -p ember-vmm --bench confined` (needs root for the jail, and
//! /dev/kvm). Prints the medians and their ratio.
//!
//! With `--agent`, the same two against each other to the **agent serving**: the guest
//! kernel and initramfs of `make guest` (`EMBER_BENCH_GUEST`, default `build/guest`; 1 vCPU,
//! 256 MiB, virtio-rng, vsock), timed from the spawn (or `Vm::new`) to the agent accepting
//! `CONNECT 1024` on the VM's hybrid vsock socket, the runs interleaved. The guest's user
//! space needs hardware virtualization; on a host without it, run it in the nested KVM test
//! host, where only the ratio means something (`scripts/bench-microvm.sh` does, part 4):
//! `scripts/kvm-host.sh run -- BENCH-EXECUTABLE --agent`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ember_vmm::control::{Reply, Request};
use ember_vmm::{JailConfig, SerialSink, Vm, VmConfig};
use ember_vmm_testing::vmm_process::{ask, spawn};

const RUNS: usize = 20;

/// `hlt; jmp back` as a PVH ELF loaded at 1 MiB.
fn guest() -> Vec<u8> {
    ember_vmm_testing::guest_image::elf(&[0xf4, 0xeb, 0xfd], true)
}

fn config(kernel: &Path) -> VmConfig {
    let mut c = VmConfig::new(kernel);
    c.memory_mib = 128;
    c.serial = SerialSink::None;
    c
}

/// The agent's vsock port (the agent's default, which the runtime uses too).
const AGENT_PORT: u32 = 1024;

/// The real guest of `make guest`, with its vsock socket at `socket`.
fn agent_config(guest: &Path, socket: &Path) -> VmConfig {
    let mut c = VmConfig::new(guest.join("vmlinux"));
    c.initrd = Some(guest.join("initramfs.cpio"));
    c.cmdline = "console=ttyS0 reboot=k panic=1 quiet".into();
    c.vcpus = 1;
    c.memory_mib = 256;
    c.rng = true;
    c.serial = SerialSink::None;
    c.vsock = Some(
        format!("{},cid=3", socket.display())
            .parse()
            .expect("a vsock config"),
    );
    c
}

/// Polls the hybrid vsock socket until the agent accepts `CONNECT 1024`.
fn wait_for_agent(socket: &Path, start: Instant) -> Duration {
    let answers = || -> std::io::Result<bool> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"OK "))
    };
    loop {
        if answers().unwrap_or(false) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the agent did not answer on {} within 300 s",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a start is timed to.
#[derive(Clone, Copy)]
enum Until {
    /// The VMM's `Ready` (or `Vm::start`'s return): vCPUs running.
    Running,
    /// The agent accepting a vsock connection.
    Agent,
}

/// Spawn the jailed VMM rooted at `root`, until `Ready`; then stop it.
fn confined(bin: &Path, kernel: &Path, root: &Path) -> Duration {
    confined_with(bin, config(kernel), root, Until::Running)
}

/// Spawn the jailed VMM rooted at `root` with `vm`, until `until`; then stop it.
fn confined_with(bin: &Path, vm: VmConfig, root: &Path, until: Until) -> Duration {
    let socket = vm.vsock.as_ref().map(|v| v.path.clone());
    let start = Instant::now();
    let (mut child, mut ours) = spawn(bin, "off").expect("spawn ember-vmm");
    let request = Request::Start {
        config: Box::new(vm),
        jail: JailConfig::new(root),
    };
    let reply = ask(&mut ours, 1, request);
    let mut ready = start.elapsed();
    assert!(matches!(reply, Reply::Ready { .. }), "{reply:?}");
    if let (Until::Agent, Some(socket)) = (until, socket) {
        ready = wait_for_agent(&socket, start);
    }
    assert_eq!(ask(&mut ours, 2, Request::Stop), Reply::Stopping);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(5), "stopped: {status}");
    ready
}

/// `Vm::new` + `Vm::start` in this process; then stop it.
fn in_process(kernel: &Path) -> Duration {
    in_process_with(&config(kernel), Until::Running)
}

/// `Vm::new` + `Vm::start` of `config` in this process, until `until`; then stop it.
fn in_process_with(config: &VmConfig, until: Until) -> Duration {
    let start = Instant::now();
    let mut vm = Vm::new(config).expect("Vm::new");
    vm.start().expect("Vm::start");
    let mut ready = start.elapsed();
    if let (Until::Agent, Some(v)) = (until, &config.vsock) {
        ready = wait_for_agent(&v.path, start);
    }
    vm.stop();
    vm.wait();
    ready
}

/// `--agent`: both to the agent serving, on the real guest.
fn agent_ready(bin: &Path, dir: &Path, runs: usize) {
    let guest = std::env::var_os("EMBER_BENCH_GUEST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/guest"));
    for f in ["vmlinux", "initramfs.cpio"] {
        if !guest.join(f).is_file() {
            eprintln!(
                "confined: {} is missing: run `make guest`",
                guest.join(f).display()
            );
            std::process::exit(1);
        }
    }
    let root = dir.join("agent-jail");
    std::fs::create_dir(&root).unwrap();
    let jailed_socket = root.join("vsock.sock");
    let own_socket = dir.join("own-vsock.sock");
    let (mut c, mut p) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let _ = std::fs::remove_file(&jailed_socket);
        let _ = std::fs::remove_file(&own_socket);
        let vm = agent_config(&guest, &jailed_socket);
        c.push(confined_with(bin, vm, &root, Until::Agent));
        p.push(in_process_with(
            &agent_config(&guest, &own_socket),
            Until::Agent,
        ));
        eprintln!(
            "  run {}: jailed {:.3} s, in-process {:.3} s",
            i + 1,
            c[i].as_secs_f64(),
            p[i].as_secs_f64()
        );
    }
    let (c, p) = (median(c), median(p));
    println!("start to the agent serving, {runs} runs each, guest of `make guest`, medians:");
    println!(
        "  jailed ember-vmm process, spawn to agent: {:.3} s",
        c.as_secs_f64()
    );
    println!(
        "  in-process Vm::new + start to agent:      {:.3} s",
        p.as_secs_f64()
    );
    println!(
        "  ratio process/in-process: {:.2}x",
        c.as_secs_f64() / p.as_secs_f64()
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list; nothing to list.
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("confined: the jail needs root");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("halt.elf");
    std::fs::write(&kernel, guest()).unwrap();
    let root = dir.path().join("jail");
    std::fs::create_dir(&root).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_ember-vmm"));
    if std::env::args().any(|a| a == "--agent") {
        let runs = std::env::var("EMBER_BENCH_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5);
        agent_ready(bin, dir.path(), runs);
        return;
    }
    // Warm up the page cache.
    confined(bin, &kernel, &root);
    in_process(&kernel);
    let (mut c, mut p) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        c.push(confined(bin, &kernel, &root));
        p.push(in_process(&kernel));
    }
    let (c, p) = (median(c), median(p));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("start to running vCPUs, {RUNS} runs each, 128 MiB tiny guest, medians:");
    println!(
        "  jailed ember-vmm process, spawn to Ready: {:.2} ms",
        ms(c)
    );
    println!(
        "  in-process Vm::new + start:               {:.2} ms",
        ms(p)
    );
    println!("  ratio process/in-process: {:.2}x", ms(c) / ms(p));
}
