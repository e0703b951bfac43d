//! Guest kernel tests: the fragment against the real Kconfig, the built kernel's
//! config, the CLI's errors, and a boot to the ext4 root mount under QEMU's microvm.

mod common;

use common::{agent_binary, builder, have, kernel, s, skip, workspace};
use ember_rootfs_builder::image::{self, Format, ImageSpec};
use ember_rootfs_builder::kconfig::{self, Fragment, KconfigError};
use ember_rootfs_builder::kernel::{self as k, KernelError, KernelInputs, FRAGMENT};
use ember_rootfs_builder::progress::Progress;
use ember_rootfs_builder::tools;
use ember_tests::guest::{retry_a_pvm_hang, ConsoleWatch};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn fragment() -> Fragment {
    Fragment::load(&workspace().join(FRAGMENT)).unwrap()
}

#[test]
fn built_kernel_config_has_every_fragment_option() {
    let built = match kernel() {
        Ok(b) => b,
        Err(why) => return skip("built_kernel_config_has_every_fragment_option", &why),
    };
    let config = kconfig::load_config(&built.config()).unwrap();
    fragment().check_applied(&config).unwrap();
    // The artefact was built from the fragment and patches in this checkout.
    let inputs = KernelInputs::discover(&workspace(), None).unwrap();
    assert_eq!(built.manifest.fragment_sha256, inputs.fragment_sha256);
    assert_eq!(built.manifest.patches, inputs.patches);
    // And the things the runtime cannot do without, spelled out.
    for must in [
        "CONFIG_64BIT",
        "CONFIG_PVH",
        "CONFIG_KVM_GUEST",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
        "CONFIG_VIRTIO_BLK",
        "CONFIG_VIRTIO_NET",
        "CONFIG_VIRTIO_VSOCKETS",
        "CONFIG_VIRTIO_FS",
        "CONFIG_EXT4_FS",
        "CONFIG_OVERLAY_FS",
        "CONFIG_CGROUPS",
        "CONFIG_MEMCG",
        "CONFIG_CGROUP_PIDS",
        "CONFIG_PSI",
        "CONFIG_SECCOMP_FILTER",
        "CONFIG_USER_NS",
        "CONFIG_BLK_DEV_INITRD",
    ] {
        assert_eq!(config.get(must).map(String::as_str), Some("y"), "{must}");
    }
    assert_ne!(config.get("CONFIG_MODULES").map(String::as_str), Some("y"));
    let vmlinux = std::fs::read(built.vmlinux()).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF", "vmlinux is not an ELF image");
}

/// Configures the real kernel source (no compile): the repo's fragment survives
/// `olddefconfig`; an option Kconfig does not know and an option whose dependency is
/// switched off are errors naming them.
#[test]
fn real_kconfig_accepts_fragment_and_names_unknown_and_dropped_options() {
    let test = "real_kconfig_accepts_fragment_and_names_unknown_and_dropped_options";
    let tarball = Path::new(k::DEFAULT_SOURCE_TARBALL);
    if !tarball.is_file() {
        return skip(
            test,
            &format!(
                "{} missing (apt-get install {})",
                tarball.display(),
                k::SOURCE_PACKAGE
            ),
        );
    }
    if let Err(e) = tools::require(tools::KERNEL_TOOLS) {
        return skip(test, &e.to_string());
    }
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("log");
    let quiet = Progress::quiet("kernel");
    let src = k::extract(tarball, work.path(), &log).unwrap();
    let inputs = KernelInputs::discover(&workspace(), None).unwrap();
    k::apply_patches(&src, &inputs.patch_paths, &log, &quiet).unwrap();

    let options = k::configure(&src, &inputs.fragment, &log, &quiet)
        .unwrap_or_else(|e| panic!("the repo's fragment does not configure: {e}"));
    assert_eq!(
        options.get("CONFIG_VIRTIO_MMIO").map(String::as_str),
        Some("y")
    );

    let mut text = std::fs::read_to_string(workspace().join(FRAGMENT)).unwrap();
    text.push_str("CONFIG_EMBER_NO_SUCH_OPTION=y\n");
    let unknown = Fragment::parse(&text, Path::new("ember.config")).unwrap();
    match k::configure(&src, &unknown, &log, &quiet) {
        Err(KernelError::Kconfig(KconfigError::Unknown { names })) => {
            assert_eq!(names, ["CONFIG_EMBER_NO_SUCH_OPTION"])
        }
        other => panic!("expected an unknown-option error, got {other:?}"),
    }

    // virtio-blk needs the block layer; switching BLOCK off makes Kconfig drop it.
    let dropped = Fragment::parse(
        "CONFIG_VIRTIO_MENU=y\nCONFIG_VIRTIO_BLK=y\n# CONFIG_BLOCK is not set\n",
        Path::new("f"),
    )
    .unwrap();
    let err = k::configure(&src, &dropped, &log, &quiet).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, KernelError::Kconfig(KconfigError::Dropped { .. })),
        "{msg}"
    );
    assert!(msg.contains("CONFIG_VIRTIO_BLK (wanted y, got n)"), "{msg}");

    // Deleting the 1.3 GB tree can take minutes on a busy disk: do it in the background.
    ember_rootfs_builder::cache::discard_dir(&work.keep()).unwrap();
}

#[test]
fn missing_host_tool_names_the_apt_package() {
    let empty = tempfile::tempdir().unwrap();
    let source = empty.path().join("linux.tar.xz");
    std::fs::write(&source, b"not really a tarball").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ember-rootfs-builder"))
        .args(["kernel", "--out", s(&empty.path().join("out"))])
        .args(["--cache-dir", s(&empty.path().join("cache"))])
        .args(["--source", s(&source)])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install"), "{err}");
    for pkg in ["make", "bc", "bison", "flex", "gcc"] {
        assert!(err.contains(pkg), "{pkg} not named: {err}");
    }
}

/// The CLI rejects a fragment option that the kernel's Kconfig does not define before
/// configuring, naming it (the source here is a small fake kernel tree).
#[test]
fn cli_rejects_fragment_option_unknown_to_kconfig() {
    if let Err(e) = tools::require(tools::KERNEL_TOOLS) {
        return skip(
            "cli_rejects_fragment_option_unknown_to_kconfig",
            &e.to_string(),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("linux-fake");
    std::fs::create_dir_all(tree.join("drivers")).unwrap();
    std::fs::write(
        tree.join("Makefile"),
        "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 0\n",
    )
    .unwrap();
    std::fs::write(
        tree.join("Kconfig"),
        "config 64BIT\n\tbool\nsource \"drivers/Kconfig\"\n",
    )
    .unwrap();
    std::fs::write(
        tree.join("drivers/Kconfig"),
        "menuconfig VIRTIO_MMIO\n\tbool\n",
    )
    .unwrap();
    let tarball = tmp.path().join("linux-fake.tar.xz");
    let status = Command::new("tar")
        .arg("-cJf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path())
        .arg("linux-fake")
        .status()
        .unwrap();
    assert!(status.success());
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(ws.join("rootfs-builder/kernel/patches")).unwrap();
    std::fs::write(
        ws.join(FRAGMENT),
        "CONFIG_64BIT=y\nCONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICEZ=y\n",
    )
    .unwrap();
    let out = builder(&[
        "kernel",
        "--workspace",
        s(&ws),
        "--cache-dir",
        s(&tmp.path().join("cache")),
        "--source",
        s(&tarball),
        "--out",
        s(&tmp.path().join("out")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("do not exist in this kernel's Kconfig"),
        "{err}"
    );
    assert!(err.contains("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICEZ"), "{err}");
    assert!(!err.contains("CONFIG_64BIT,"), "{err}");
    // Progress lines name the stages as they run.
    assert!(err.contains("[kernel 0:"), "{err}");
    assert!(err.contains("] extract: "), "{err}");
}

/// PVM-safe parameters (see docs/architecture.md) plus a marker to find in the log.
const CMDLINE: &str = "console=ttyS0 root=/dev/vda ro rootfstype=ext4 panic=-1 \
    noxsave clearcpuid=smap,smep,popcnt ember.boot_test=1";
const MOUNTED: &str = "VFS: Mounted root (ext4 filesystem)";
const RUN_SBIN_INIT: &str = "Run /sbin/init as init process";
const RUN_INIT: &str = "Run /init as init process";
/// A hang guard, not a timing: on a PVM host the kernel boots under KVM's instruction
/// emulator and, with the other boot tests running beside it, has taken over 180 s to
/// reach init (as long as the VMM's own boot tests allow, `vmm/tests/real_kernel.rs`).
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// After the milestones, how long to keep reading for a failure to run init (under
/// KVM's emulator the guest stops at the first user-space instruction, so nothing
/// more is expected).
const GRACE: Duration = Duration::from_secs(20);

/// Why a boot test cannot run here, if it cannot.
fn boot_prerequisites() -> Result<k::KernelArtifacts, String> {
    let built = kernel()?;
    if !have("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)".into());
    }
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Err(format!(
            "cannot open /dev/kvm read-write ({e}); QEMU runs with -accel kvm"
        ));
    }
    Ok(built)
}

/// [`boot_once`], once more after a hang on a PVM host
/// ([`ember_tests::guest::retry_a_pvm_hang`]).
fn boot(vmlinux: &Path, extra: &[String], milestones: &[&str]) -> Vec<String> {
    let mut log = Vec::new();
    let _ = retry_a_pvm_hang("boot under QEMU", || {
        let (l, hung) = boot_once(vmlinux, extra, milestones);
        log = l;
        match hung {
            true => Err(log[log.len().saturating_sub(3)..].join("\n")),
            false => Ok(()),
        }
    });
    log
}

/// Boots `vmlinux` under `qemu-system-x86_64 -M microvm -accel kvm` with `extra` QEMU
/// arguments and returns the serial log (QEMU's own stderr lines start with `qemu: `) and whether
/// the guest stopped printing for `HANG_QUIET` before the milestones ([`ConsoleWatch`]).
/// Reading stops `GRACE` after every milestone has shown up, when QEMU exits or
/// reports a KVM internal error, after `BOOT_TIMEOUT`, or
/// after `HANG_QUIET` without a line; QEMU is then killed.
///
/// `arch-capabilities=off`: some PVM hosts refuse QEMU's write of that MSR (0x10a), and
/// QEMU then aborts before the guest runs ("failed to set MSR 0x10a").
fn boot_once(vmlinux: &Path, extra: &[String], milestones: &[&str]) -> (Vec<String>, bool) {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,acpi=off", "-accel", "kvm"])
        .args(["-cpu", "host,arch-capabilities=off"])
        .args(["-m", "256", "-smp", "1", "-no-reboot", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(vmlinux)
        .args(["-append", CMDLINE])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = qemu.stdout.take().unwrap();
    let stderr = qemu.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.trim_end_matches('\r').to_string());
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("qemu: {line}"));
        }
    });

    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut log: Vec<String> = Vec::new();
    let mut grace: Option<Instant> = None;
    let mut console = ConsoleWatch::default();
    let mut hung = false;
    loop {
        if grace.is_some_and(|g| Instant::now() > g) || Instant::now() > deadline {
            break;
        }
        if grace.is_none() && console.hung(log.len()) {
            hung = true;
            break;
        }
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let internal_error = line.contains("KVM internal error");
                log.push(line);
                if internal_error {
                    // QEMU pauses the guest but keeps running: collect the register
                    // dump for the failure message and stop.
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                        log.push(line);
                    }
                    break;
                }
                let all_seen = milestones.iter().all(|m| log.iter().any(|l| l.contains(m)));
                if all_seen && grace.is_none() {
                    grace = Some(Instant::now() + GRACE);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = qemu.try_wait() {
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                        log.push(line);
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    (log, hung)
}

/// The last 60 lines of the console.
fn tail(log: &[String]) -> String {
    ember_sys::tail::lines(&log.join("\n"), 60)
}

fn assert_init_ran(log: &[String]) {
    let failed = log.iter().find(|l| {
        l.contains("Failed to execute")
            || l.contains("No working init found")
            || l.contains("Initramfs unpacking failed")
    });
    assert!(
        failed.is_none(),
        "the kernel could not run the image's init:\n{}",
        tail(log)
    );
}

#[test]
fn kernel_boots_under_qemu_microvm_to_the_ext4_root_mount() {
    let test = "kernel_boots_under_qemu_microvm_to_the_ext4_root_mount";
    let built = match boot_prerequisites() {
        Ok(b) => b,
        Err(why) => return skip(test, &why),
    };
    if let Err(e) = image::require_tools(Format::Ext4) {
        return skip(test, &e.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = image::assemble(&ImageSpec {
        agent: agent_binary(),
        busybox: None,
    })
    .unwrap();
    let (disk, _) = image::write(&tree, Format::Ext4, dir.path()).unwrap();
    let extra = [
        "-drive".to_string(),
        format!("id=root,file={},format=raw,if=none,readonly=on", s(&disk)),
        "-device".to_string(),
        "virtio-blk-device,drive=root".to_string(),
    ];
    let log = boot(&built.vmlinux(), &extra, &["Command line:", MOUNTED]);
    assert!(
        log.iter()
            .any(|l| l.contains("Command line:") && l.contains(CMDLINE)),
        "serial log never showed our command line:\n{}",
        tail(&log)
    );
    assert!(
        log.iter().any(|l| l.contains(MOUNTED)),
        "serial log never showed `{MOUNTED}` within {BOOT_TIMEOUT:?}:\n{}",
        tail(&log)
    );
    assert_init_ran(&log);
    if !log.iter().any(|l| l.contains(RUN_SBIN_INIT)) {
        eprintln!("note: `{RUN_SBIN_INIT}` not seen within {GRACE:?} of the mount");
    }
    eprintln!("booted to the root mount; last lines:\n{}", tail(&log));
}

/// The kernel accepts our newc initramfs (its unpacker is strict about the format) and
/// starts `/init` from it.
#[test]
fn kernel_unpacks_the_initramfs_and_runs_its_init() {
    let test = "kernel_unpacks_the_initramfs_and_runs_its_init";
    let built = match boot_prerequisites() {
        Ok(b) => b,
        Err(why) => return skip(test, &why),
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = image::assemble(&ImageSpec {
        agent: agent_binary(),
        busybox: None,
    })
    .unwrap();
    let (cpio, _) = image::write(&tree, Format::Cpio, dir.path()).unwrap();
    let log = boot(
        &built.vmlinux(),
        &["-initrd".into(), s(&cpio).into()],
        &[RUN_INIT],
    );
    assert!(
        log.iter().any(|l| l.contains(RUN_INIT)),
        "serial log never showed `{RUN_INIT}` within {BOOT_TIMEOUT:?}:\n{}",
        tail(&log)
    );
    assert_init_ran(&log);
}
