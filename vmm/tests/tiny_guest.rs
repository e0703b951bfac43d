//! Tiny hand-assembled guests under the real `ember-vmm` binary: port I/O to the serial
//! port, an MMIO read of the virtio magic, and each way a guest can end the VM.

mod common;

use common::*;
use std::process::{Command, Output};

fn vmm(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember-vmm"))
        .args(args)
        .output()
        .expect("run ember-vmm")
}

fn run_guest(code: &[u8], pvh: bool, extra: &[&str]) -> (Output, String) {
    run_image(&elf(code, pvh), extra)
}

fn run_image(image: &[u8], extra: &[&str]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "guest.img", image);
    let disk = write(dir.path(), "disk.img", &vec![0u8; 1 << 20]);
    let serial = dir.path().join("serial.log");
    let mut args: Vec<std::ffi::OsString> = vec![
        "--kernel".into(),
        kernel.into(),
        "--memory-mib".into(),
        "64".into(),
        "--disk".into(),
        disk.into(),
        "--serial".into(),
        serial.clone().into(),
    ];
    args.extend(extra.iter().map(Into::into));
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = vmm(&refs);
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    (out, log)
}

#[test]
fn long_mode_guest_writes_serial_and_reads_virtio_magic() {
    if !kvm_available("long_mode_guest_writes_serial_and_reads_virtio_magic") {
        return;
    }
    let (out, serial) = run_guest(&hello_code(), false, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(serial, "Hivirt\n", "stderr: {stderr}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "power-off is exit 0; stderr: {stderr}"
    );
    assert!(stderr.contains("LongMode entry"), "{stderr}");
}

#[test]
fn pvh_guest_enters_in_protected_mode() {
    if !kvm_available("pvh_guest_enters_in_protected_mode") {
        return;
    }
    let (out, serial) = run_guest(&hello_code(), true, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(serial, "Hivirt\n", "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Pvh entry"), "{stderr}");
}

#[test]
fn rng_device_is_announced_after_the_disks() {
    if !kvm_available("rng_device_is_announced_after_the_disks") {
        return;
    }
    let (out, serial) = run_guest(&hello_code(), false, &["--rng"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(serial, "Hivirt\n", "{stderr}");
    assert!(
        stderr.contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
        "disk in slot 0, rng in slot 1: {stderr}"
    );
}

#[test]
fn block_slots_follow_the_disks_as_empty_block_devices() {
    if !kvm_available("block_slots_follow_the_disks_as_empty_block_devices") {
        return;
    }
    // Print the DeviceID of the device in window 1 and the low byte of its capacity, as
    // digits, then power off.
    let code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xbb, 0x08, 0x10, 0x00, 0xd0, // mov ebx, 0xd0001008 (DeviceID of window 1)
        0x8b, 0x03, // mov eax, [rbx]
        0x04, b'0', 0xee, // add al, '0'; out dx, al
        0x8b, 0x83, 0xf8, 0x00, 0x00, 0x00, // mov eax, [rbx + 0xf8] (config: capacity)
        0x04, b'0', 0xee, // add al, '0'; out dx, al
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
        0x66, 0xba, 0x01, 0x05, 0xee, // power off
        0xf4, 0xeb, 0xfe,
    ];
    let (out, serial) = run_guest(&code, false, &["--block-slots", "2", "--rng"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(serial, "20\n", "a block device (2) of capacity 0; {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
             virtio_mmio.device=4K@0xd0002000:7 virtio_mmio.device=4K@0xd0003000:8"
        ),
        "disk, two slots, then rng: {stderr}"
    );
}

#[test]
fn bzimage_guest_enters_at_its_64bit_entry() {
    if !kvm_available("bzimage_guest_enters_at_its_64bit_entry") {
        return;
    }
    let (out, serial) = run_image(&bzimage(&hello_code()), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(serial, "Hivirt\n", "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("LongMode entry at 0x100200"), "{stderr}");
}

#[test]
fn two_vcpus_boot_and_the_bsp_runs_the_guest() {
    if !kvm_available("two_vcpus_boot_and_the_bsp_runs_the_guest") {
        return;
    }
    let (out, serial) = run_guest(&hello_code(), false, &["--vcpus", "2"]);
    assert_eq!(
        serial,
        "Hivirt\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn i8042_reset_exits_with_status_3() {
    if !kvm_available("i8042_reset_exits_with_status_3") {
        return;
    }
    let (out, _) = run_guest(&reset_code(), false, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn triple_fault_exits_with_status_4() {
    if !kvm_available("triple_fault_exits_with_status_4") {
        return;
    }
    let (out, _) = run_guest(&triple_fault_code(), false, &[]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_stops_a_running_guest_with_status_5() {
    if !kvm_available("sigterm_stops_a_running_guest_with_status_5") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "spin.elf", &elf(&[0xeb, 0xfe], false)); // jmp $
    let vsock = dir.path().join("v.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--vsock")
        .arg(&vsock)
        .args(["--memory-mib", "64", "--serial", "none"])
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !vsock.exists() && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(vsock.exists(), "the VM came up");
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5), "{status}");
    assert!(
        !vsock.exists(),
        "the vsock socket file is removed with the VM"
    );
}

/// Bad input: one line naming the problem, exit status 2, no panic.
fn assert_bad_input(args: &[&str], expect: &str) {
    let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let out = vmm(&os);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected `{expect}` in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ember-vmm:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write(dir.path(), "k.elf", &elf(&hello_code(), false));
    let text = write(dir.path(), "notes.txt", b"this is not a kernel");
    let k = kernel.to_str().unwrap();
    assert_bad_input(
        &["--kernel", "/nonexistent/vmlinux"],
        "kernel /nonexistent/vmlinux does not exist",
    );
    assert_bad_input(
        &["--kernel", text.to_str().unwrap()],
        "neither an ELF vmlinux nor a bzImage",
    );
    assert_bad_input(
        &["--kernel", k, "--memory-mib", "32"],
        "memory 32 MiB is out of range: allowed 64 MiB",
    );
    assert_bad_input(
        &["--kernel", k, "--memory-mib", "100000000"],
        "is out of range",
    );
    assert_bad_input(
        &["--kernel", k, "--disk", "/nonexistent/disk.img"],
        "disk /nonexistent/disk.img does not exist",
    );
    assert_bad_input(
        &["--kernel", k, "--block-slots", "30"],
        "30 virtio devices requested, but only 19 fit",
    );
    assert_bad_input(
        &["--kernel", k, "--vcpus", "0"],
        "vcpus = 0 is out of range",
    );
    assert_bad_input(
        &["--kernel", k, "--initrd", "/nonexistent/initrd"],
        "initrd /nonexistent/initrd does not exist",
    );
}

#[test]
fn help_documents_exit_statuses() {
    let out = vmm(&[std::ffi::OsStr::new("--help")]);
    let text = String::from_utf8_lossy(&out.stdout);
    for s in [
        "0 the guest powered off",
        "2 bad input",
        "3 the guest asked for a reset",
        "4 a vCPU triple-faulted",
        "--cpu-profile",
        "--disk",
        "--block-slots",
    ] {
        assert!(text.contains(s), "--help lacks `{s}`:\n{text}");
    }
}
