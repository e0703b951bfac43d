//! `Pause` and `Resume` over the control channel of a jailed `ember-vmm` process: a guest
//! that spins (`jmp $`) keeps its vCPU thread busy; paused, the thread takes no CPU time;
//! resumed, it spins again. This goes through the control thread's seccomp filter (which
//! must let it kick the vCPUs) and the vCPU threads' (which park on a futex).

mod common;

use std::path::Path;
use std::time::Duration;

use ember_vmm::control::{Reply, Request};
use ember_vmm::{JailConfig, SerialSink, VmConfig};
use ember_vmm_testing::vmm_process::{ask, spawn};

/// CPU time (user + system, in clock ticks) of the process's vCPU thread.
fn vcpu_ticks(pid: u32) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == "ember-vcpu0" {
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("no ember-vcpu0 thread in process {pid}");
}

/// The vCPU thread's CPU time over `span`, in clock ticks.
fn busy(pid: u32, span: Duration) -> u64 {
    let before = vcpu_ticks(pid);
    std::thread::sleep(span);
    vcpu_ticks(pid) - before
}

#[test]
fn pause_stops_the_vcpus_and_resume_restarts_them() {
    const TEST: &str = "pause_stops_the_vcpus_and_resume_restarts_them";
    if !common::kvm_available(TEST) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {TEST}: the VMM's jail needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("spin.elf");
    std::fs::write(
        &kernel,
        ember_vmm_testing::guest_image::elf(&[0xeb, 0xfe], true),
    )
    .unwrap();
    let root = dir.path().join("jail");
    std::fs::create_dir(&root).unwrap();
    let mut config = VmConfig::new(&kernel);
    config.memory_mib = 64;
    config.serial = SerialSink::None;

    let (mut child, mut ours) = spawn(Path::new(env!("CARGO_BIN_EXE_ember-vmm")), "warn").unwrap();
    let start = Request::Start {
        config: Box::new(config),
        jail: JailConfig::new(&root),
    };
    assert!(
        matches!(ask(&mut ours, 1, start), Reply::Ready { .. }),
        "the VM started"
    );
    let pid = child.id();
    let span = Duration::from_millis(600);
    // A clock tick is 10 ms: spinning for 600 ms takes tens of them, parked none.
    let running = busy(pid, span);
    assert!(
        running >= 20,
        "the spinning guest's vCPU took {running} ticks"
    );
    assert_eq!(ask(&mut ours, 2, Request::Pause), Reply::Paused);
    let paused = busy(pid, span);
    assert!(paused <= 2, "paused, the vCPU still took {paused} ticks");
    // Twice is harmless.
    assert_eq!(ask(&mut ours, 3, Request::Pause), Reply::Paused);
    assert_eq!(ask(&mut ours, 4, Request::Resume), Reply::Resumed);
    let resumed = busy(pid, span);
    assert!(resumed >= 20, "resumed, the vCPU took {resumed} ticks");
    // Paused, then stopped: the parked vCPU sees the stop.
    assert_eq!(ask(&mut ours, 5, Request::Pause), Reply::Paused);
    assert_eq!(ask(&mut ours, 6, Request::Stop), Reply::Stopping);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5), "stopped: {status}");
}
