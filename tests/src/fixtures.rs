//! Test fixtures built offline: an OCI bundle whose root filesystem is Debian's static
//! busybox (package `busybox-static`) with every applet linked into `/bin`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Errors building a fixture.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// busybox is not installed.
    #[error(
        "{BUSYBOX} not found: install Debian's busybox-static (apt-get install busybox-static)"
    )]
    NoBusybox,
    /// busybox is installed but dynamically linked, so it cannot run in a bare rootfs.
    #[error("{BUSYBOX} is not statically linked: install busybox-static instead of busybox")]
    NotStatic,
    /// Creating a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FixtureError + '_ {
    move |source| FixtureError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether Debian's static busybox is available.
pub fn busybox_available() -> bool {
    check_busybox().is_ok()
}

fn check_busybox() -> Result<(), FixtureError> {
    let bytes = std::fs::read(BUSYBOX).map_err(|_| FixtureError::NoBusybox)?;
    if has_interpreter(&bytes) {
        return Err(FixtureError::NotStatic);
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF image has a PT_INTERP program header (is dynamically
/// linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    if elf.get(..4) != Some(b"\x7fELF") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
            .unwrap_or(false)
    })
}

/// The root filesystem of a busybox bundle at `rootfs`: `/bin/busybox`, a symlink in
/// `/bin` for each applet, the usual mount points, and `/etc/passwd`/`/etc/group` with
/// root and a user `user` (uid/gid 1000).
pub fn busybox_rootfs(rootfs: &Path) -> Result<(), FixtureError> {
    check_busybox()?;
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    let target = bin.join("busybox");
    std::fs::copy(BUSYBOX, &target).map_err(io(&target))?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(io(Path::new(BUSYBOX)))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(io(&link))?;
        }
    }
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "root",
        "home/user",
        "usr/bin",
        "sbin",
        "run",
    ] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    let files = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        ),
        ("etc/group", "root:x:0:\nuser:x:1000:\n"),
        ("etc/hostname", "ember\n"),
    ];
    for (name, text) in files {
        let p = rootfs.join(name);
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(())
}

/// A default OCI runtime spec (like `runc spec`) running `args` in `rootfs` (relative to
/// the bundle): new pid, ipc, uts, mount and network namespaces, the usual mounts, masked
/// and read-only paths, the default capability set and `noNewPrivileges`.
pub fn default_spec(args: &[&str]) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ember",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"
            ]
        }
    })
}

/// Builds a busybox bundle in `dir`: `dir/rootfs` and a `dir/config.json` running
/// `/bin/sh`. Returns the bundle path (`dir`).
pub fn busybox_bundle(dir: &Path) -> Result<PathBuf, FixtureError> {
    busybox_rootfs(&dir.join("rootfs"))?;
    write_spec(dir, &default_spec(&["/bin/sh"]))?;
    Ok(dir.to_path_buf())
}

/// Writes `spec` as the bundle's `config.json`.
pub fn write_spec(bundle: &Path, spec: &Value) -> Result<(), FixtureError> {
    let p = bundle.join("config.json");
    std::fs::write(
        &p,
        serde_json::to_vec_pretty(spec).expect("spec serializes"),
    )
    .map_err(io(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_binaries_are_told_apart() {
        if let Ok(sh) = std::fs::read("/bin/sh") {
            assert!(has_interpreter(&sh), "Debian's /bin/sh (dash) is dynamic");
        }
        if let Ok(bb) = std::fs::read(BUSYBOX) {
            assert!(!has_interpreter(&bb), "busybox-static has no interpreter");
        }
        assert!(!has_interpreter(b"not an elf"));
    }
}
