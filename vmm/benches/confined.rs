//! What the VMM's own process costs at start: spawn of a jailed `ember-vmm --control-fd 3`
//! to its `Ready` answer (process start, VM build, jail, vCPU and device threads started),
//! against `Vm::new` + `Vm::start` in-process, on the same tiny PVH guest (it halts in a
//! loop), 128 MiB, seccomp on, no devices. Both are then stopped.
//!
//! Run: `cargo bench -p ember-vmm --bench confined` (needs root for the jail, and
//! /dev/kvm). Prints the medians and their ratio.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_vmm::control::{Channel, Reply, Request};
use ember_vmm::{JailConfig, SerialSink, Vm, VmConfig};

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

/// Spawn the jailed VMM rooted at `root`, until `Ready`; then stop it.
fn confined(bin: &Path, kernel: &Path, root: &Path) -> Duration {
    let start = Instant::now();
    let (mut ours, theirs) = Channel::pair().expect("socketpair");
    let fd = theirs.as_fd().as_raw_fd();
    let mut cmd = Command::new(bin);
    cmd.args(["--control-fd", "3", "--log-level", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn ember-vmm");
    drop(theirs);
    let request = Request::Start {
        config: Box::new(config(kernel)),
        jail: JailConfig::new(root),
    };
    ours.send(&request, None).expect("send Start");
    let reply = ours
        .recv::<Reply>()
        .expect("an answer")
        .message
        .expect("a reply");
    let ready = start.elapsed();
    assert!(matches!(reply, Reply::Ready { .. }), "{reply:?}");
    ours.send(&Request::Stop, None).expect("send Stop");
    let _ = ours.recv::<Reply>();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(5), "stopped: {status}");
    ready
}

/// `Vm::new` + `Vm::start` in this process; then stop it.
fn in_process(kernel: &Path) -> Duration {
    let start = Instant::now();
    let mut vm = Vm::new(&config(kernel)).expect("Vm::new");
    vm.start().expect("Vm::start");
    let ready = start.elapsed();
    vm.stop();
    vm.wait();
    ready
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
