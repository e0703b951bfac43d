//! Boot the guest kernel that `ember-rootfs-builder` builds, under ember's VMM (through
//! the library API, as the runtime will), with an ext4 root disk made by `mkfs.ext4 -d`
//! and the default CPU profile.
//!
//! On a PVM host (no hardware virtualization) a stock kernel runs under KVM's instruction
//! emulator and stops at its first user-space instruction, so the test asserts the boot up
//! to the root mount (about a minute here). With hardware KVM it also waits for the init
//! program. Skips, saying why, when the kernel or mkfs.ext4 is missing.

mod common;

use ember_vmm::config::{FsConfig, VsockConfig};
use ember_vmm::host::Virtualization;
use ember_vmm::{DiskConfig, ExitReason, SerialSink, Vm, VmConfig};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(400);

use ember_tests::guest::kernel as find_kernel;
use ember_tests::guest::{retry_a_pvm_hang, ConsoleWatch};

/// A root tree whose /sbin/init prints a marker and reboots (busybox-static).
fn make_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("root");
    for d in ["sbin", "bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    if Path::new("/bin/busybox").is_file() {
        std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
        std::fs::write(
            tree.join("sbin/init"),
            "#!/bin/busybox sh\n/bin/busybox echo EMBER_INIT_OK\n/bin/busybox reboot -f\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tree.join("sbin/init"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    tree
}

/// An ext4 image of [`make_tree`].
fn make_root(dir: &Path) -> Option<PathBuf> {
    let tree = make_tree(dir);
    let image = dir.join("root.ext4");
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("32M")
        .status()
        .ok()?
        .success();
    ok.then_some(image)
}

#[test]
fn guest_kernel_boots_to_the_ext4_root_mount() {
    if !common::kvm_available("guest_kernel_boots_to_the_ext4_root_mount") {
        return;
    }
    let Some(kernel) = find_kernel() else {
        common::skip(
            "guest_kernel_boots_to_the_ext4_root_mount",
            "no guest kernel (run `make guest`, or set EMBER_GUEST_KERNEL)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = make_root(dir.path()) else {
        common::skip(
            "guest_kernel_boots_to_the_ext4_root_mount",
            "mkfs.ext4 missing (apt-get install e2fsprogs)",
        );
        return;
    };
    let serial = dir.path().join("serial.log");
    let mut config = VmConfig::new(&kernel);
    config.cmdline = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ember.test=1".into();
    config.disks = vec![DiskConfig {
        path: root,
        read_only: false,
    }];
    config.serial = SerialSink::File(serial.clone());
    config.memory_mib = 256;
    config.rng = true;

    let hardware = Virtualization::detect(Path::new("/")).is_hardware();
    let want = if hardware {
        "EMBER_INIT_OK"
    } else {
        "VFS: Mounted root (ext4 filesystem)"
    };
    let mut start = Instant::now();
    let mut cmdline = String::new();
    let mut reason = ExitReason::Stopped;
    let mut seen = false;
    let _ = retry_a_pvm_hang("guest_kernel_boots_to_the_ext4_root_mount", || {
        let _ = std::fs::remove_file(&serial);
        start = Instant::now();
        let mut vm = Vm::new(&config).expect("build the VM");
        cmdline = vm.cmdline().to_string();
        let latch = vm.exit_latch();
        vm.start().expect("start the VM");
        let mut console = ConsoleWatch::default();
        let mut hung = false;
        while start.elapsed() < TIMEOUT && latch.reason().is_none() {
            let log = std::fs::read_to_string(&serial).unwrap_or_default();
            seen = log.contains(want);
            hung = !seen && console.hung(log.len());
            if seen || hung {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        vm.stop();
        reason = vm.wait();
        match hung {
            true => Err(last_lines(&serial, 3)),
            false => Ok(()),
        }
    });
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        seen,
        "`{want}` not on the serial log after {:?} (exit {reason:?}); last lines:\n{tail}",
        start.elapsed()
    );
    assert!(
        log.contains(&format!("Command line: {cmdline}")),
        "the kernel got our command line `{cmdline}`; log:\n{tail}"
    );
    assert!(cmdline.contains("virtio_mmio.device=4K@0xd0000000:5"));
    assert!(log.contains("[vda]"), "virtio-blk probed vda");
    let crng = log.find("random: crng init done");
    let root = log.find("VFS: Mounted root");
    assert!(
        matches!((crng, root), (Some(c), Some(r)) if c < r),
        "virtio-rng seeds the CRNG before the root mount; log:\n{tail}"
    );
    if !hardware {
        assert!(
            cmdline.contains(ember_vmm::arch::cpuid::EMULATION_SAFE_CMDLINE),
            "auto picks emulation-safe here"
        );
        assert!(matches!(reason, ExitReason::Stopped), "{reason:?}");
    }
    eprintln!("booted to `{want}` in {:?}", start.elapsed());
}

/// The last `n` lines of the serial log.
fn last_lines(serial: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(serial).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Why [`wait_for`] gave up.
enum Missed {
    /// The guest printed nothing for [`ember_tests::guest::HANG_QUIET`]; the log's tail.
    Hung(String),
    /// Timeout or VM exit; the message.
    Other(String),
}

/// Wait until the serial log contains `want`; returns the log.
fn wait_for(
    serial: &Path,
    want: &str,
    start: Instant,
    latch: &ember_vmm::devices::legacy::power::ExitLatch,
) -> Result<String, Missed> {
    let mut console = ConsoleWatch::default();
    loop {
        let log = std::fs::read_to_string(serial).unwrap_or_default();
        if log.contains(want) {
            return Ok(log);
        }
        if console.hung(log.len()) {
            return Err(Missed::Hung(last_lines(serial, 3)));
        }
        if start.elapsed() > TIMEOUT || latch.reason().is_some() {
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            return Err(Missed::Other(format!(
                "`{want}` not seen after {:?}; last lines:\n{}",
                start.elapsed(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn guest_kernel_mounts_a_virtiofs_root_and_its_vsock_driver_answers() {
    const TEST: &str = "guest_kernel_mounts_a_virtiofs_root_and_its_vsock_driver_answers";
    if !common::kvm_available(TEST) {
        return;
    }
    let Some(kernel) = find_kernel() else {
        common::skip(
            TEST,
            "no guest kernel (run `make guest`, or set EMBER_GUEST_KERNEL)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let serial = dir.path().join("serial.log");
    let vsock = dir.path().join("vsock.sock");
    let mut config = VmConfig::new(&kernel);
    // rootdelay keeps the kernel idle (and its drivers alive) before the root mount, so
    // the vsock check does not race the init program, which a PVM host cannot run.
    config.cmdline =
        "console=ttyS0 reboot=k panic=1 rootfstype=virtiofs root=rootfs rw rootdelay=4".into();
    config.fs = vec![FsConfig {
        tag: "rootfs".into(),
        dir: tree,
        read_only: false,
    }];
    config.vsock = Some(VsockConfig {
        path: vsock.clone(),
        cid: 3,
    });
    config.serial = SerialSink::File(serial.clone());
    let mut start = Instant::now();
    let outcome = retry_a_pvm_hang(TEST, || {
        let _ = std::fs::remove_file(&serial);
        let _ = std::fs::remove_file(&vsock);
        start = Instant::now();
        let mut vm = Vm::new(&config).expect("build the VM");
        let latch = vm.exit_latch();
        vm.start().expect("start the VM");
        let result = (|| {
            wait_for(
                &serial,
                "Waiting 4 sec before mounting root device",
                start,
                &latch,
            )?;
            let other = |e: std::io::Error| Missed::Other(e.to_string());
            // Nobody listens on guest port 4242: the guest kernel answers RST, the client EOF.
            let mut c = std::os::unix::net::UnixStream::connect(&vsock).map_err(other)?;
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.write_all(b"CONNECT 4242\n").map_err(other)?;
            let mut buf = [0u8; 16];
            match c.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    return Err(Missed::Other(format!(
                        "unexpected answer {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    )))
                }
                Err(e) => {
                    return Err(Missed::Other(format!(
                        "no RST from the guest's vsock driver: {e}"
                    )))
                }
            }
            wait_for(
                &serial,
                "VFS: Mounted root (virtiofs filesystem)",
                start,
                &latch,
            )
        })();
        vm.stop();
        vm.wait();
        match result {
            Err(Missed::Hung(tail)) => Err(tail),
            Err(Missed::Other(e)) => Ok(Err(e)),
            Ok(log) => Ok(Ok(log)),
        }
    });
    let log = match outcome {
        Ok(Ok(log)) => log,
        Ok(Err(e)) => panic!("{e}"),
        Err(tail) => panic!("the guest hung twice; last lines:\n{tail}"),
    };
    assert!(log
        .contains("Command line: console=ttyS0 reboot=k panic=1 rootfstype=virtiofs root=rootfs"));
    eprintln!(
        "virtio-fs root and vsock RST seen after {:?}",
        start.elapsed()
    );
}
