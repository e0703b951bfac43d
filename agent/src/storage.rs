//! Storages: virtio-fs shares, block devices, bind paths and tmpfs mounted at guest paths
//! for CreateSandbox/CreateContainer, and unmounted again on removal.
//!
//! A block storage named by `mmio:<address>` is usually a virtio-blk slot the host has just
//! attached a disk to: the slot existed since boot with capacity 0, and the guest learns
//! the new capacity from a configuration-change interrupt. The mount waits (up to
//! [`CAPACITY_TIMEOUT`]) for the capacity to show, and fails clearly if it stays 0. On
//! removal a block storage is synced before it is unmounted, because the host detaches the
//! disk right after.
//!
//! The mount system calls go through [`crate::syscall::Syscall`]; the mount points are
//! created and removed with `std::fs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_agent_protocol::agent::{storage::Driver, Storage};
use nix::mount::{MntFlags, MsFlags};

use crate::syscall::Syscall;

/// Where platform devices (virtio-mmio transports among them) are listed in sysfs.
const PLATFORM_DEVICES: &str = "/sys/bus/platform/devices";
/// The physical memory map, which names the device of each MMIO region.
const IOMEM: &str = "/proc/iomem";
/// Where block devices appear in sysfs.
const BLOCK_SYSFS: &str = "/sys/block";
/// How long a block storage's device may show capacity 0 before the mount fails.
pub const CAPACITY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the capacity is read while waiting.
const CAPACITY_POLL: Duration = Duration::from_millis(10);

/// Errors mounting a storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A field of the Storage message is wrong.
    #[error("storages[{index}].{field}: {message}")]
    Field {
        /// Index in the request's storages list.
        index: usize,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// mount(2) failed.
    #[error("storages[{index}]: cannot mount {source_desc} on {target}: {errno}")]
    Mount {
        /// Index in the request's storages list.
        index: usize,
        /// What was mounted.
        source_desc: String,
        /// Mount point.
        target: PathBuf,
        /// The error.
        errno: nix::Error,
    },
}

/// A storage the agent mounted and must unmount.
#[derive(Debug, Clone)]
pub struct Mounted {
    /// The mount point.
    pub target: PathBuf,
    /// Whether it is a block device's filesystem (synced before it is unmounted).
    pub block: bool,
    /// The outermost path the mount created for its mount point (the target itself, or the
    /// first of its ancestors that did not exist): removed again after the unmount, as far
    /// as it is empty.
    pub created: Option<PathBuf>,
}

/// The outermost of `path` and its ancestors that does not exist (what `create_dir_all`
/// would create first), if any.
fn first_missing(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
        .last()
        .map(Path::to_path_buf)
}

/// Removes what [`first_missing`] found was created for `m`'s mount point: the target (a
/// directory, or the file of a file bind) and its parents up to `created`, each only when
/// empty, so nothing the mount did not make is ever removed.
fn remove_created(m: &Mounted) {
    let Some(created) = &m.created else {
        return;
    };
    let target_gone = if m.target.is_dir() {
        std::fs::remove_dir(&m.target).is_ok()
    } else {
        std::fs::remove_file(&m.target).is_ok()
    };
    if !target_gone || &m.target == created {
        return;
    }
    for dir in m.target.ancestors().skip(1) {
        if std::fs::remove_dir(dir).is_err() || dir == created.as_path() {
            break;
        }
    }
}

/// The size of block device `name` (`vdb`) in 512-byte sectors, from `<sys_block>/<name>/size`
/// (`sys_block` is normally `/sys/block`).
pub fn device_sectors(sys_block: &Path, name: &str) -> std::io::Result<u64> {
    let path = sys_block.join(name).join("size");
    let text = std::fs::read_to_string(&path)?;
    text.trim().parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {text:?} is not a number: {e}", path.display()),
        )
    })
}

/// Waits until block device `name` has a non-zero capacity, reading its size every
/// [`CAPACITY_POLL`] for up to `timeout`; returns the capacity in sectors, or the last
/// reading (0, or why it could not be read) once the time is up.
pub fn wait_for_capacity(sys_block: &Path, name: &str, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match device_sectors(sys_block, name) {
            Ok(n) if n > 0 => return Ok(n),
            Ok(_) => "its capacity is 0".to_string(),
            Err(e) => format!("cannot read its size: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(CAPACITY_POLL);
    }
}

/// Splits mount(8)-style options into flags and the data string
/// ([`ember_sys::mount_options::split`], which the runtime uses too).
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let (flags, data) = ember_sys::mount_options::split(options);
    (MsFlags::from_bits_truncate(flags), data)
}

/// Finds the block device of a `mmio:<hex address>` or `serial:<serial>` source, or
/// returns a `/dev/...` path unchanged.
pub fn resolve_block(index: usize, source: &str) -> Result<PathBuf, StorageError> {
    let bad = |message: String| StorageError::Field {
        index,
        field: "source",
        message,
    };
    if let Some(addr) = source.strip_prefix("mmio:") {
        let hex = addr.trim_start_matches("0x");
        let addr = u64::from_str_radix(hex, 16)
            .map_err(|_| bad(format!("{source:?}: expected mmio:<hex address>")))?;
        let iomem = std::fs::read_to_string(IOMEM).unwrap_or_default();
        return mmio_block_device(Path::new(PLATFORM_DEVICES), &iomem, addr)
            .map(|name| Path::new("/dev").join(name))
            .ok_or_else(|| {
                bad(format!(
                    "no virtio-mmio block device at address {addr:#x} (in {IOMEM} and {PLATFORM_DEVICES})"
                ))
            });
    }
    if let Some(serial) = source.strip_prefix("serial:") {
        for b in std::fs::read_dir(BLOCK_SYSFS).map_err(|e| bad(format!("{BLOCK_SYSFS}: {e}")))? {
            let b = b.map_err(|e| bad(e.to_string()))?;
            let s = std::fs::read_to_string(b.path().join("serial")).unwrap_or_default();
            if s.trim() == serial {
                return Ok(Path::new("/dev").join(b.file_name()));
            }
        }
        return Err(bad(format!("no block device with serial {serial:?}")));
    }
    if source.starts_with("/dev/") {
        return Ok(PathBuf::from(source));
    }
    Err(bad(format!(
        "{source:?}: expected /dev/NAME, mmio:<address> or serial:<serial>"
    )))
}

/// The names of the devices whose MMIO region starts at `addr`, from the text of
/// `/proc/iomem` (`d0000000-d0000fff : virtio-mmio.0`, nested lines indented).
fn iomem_devices_at(iomem: &str, addr: u64) -> Vec<String> {
    iomem
        .lines()
        .filter_map(|l| {
            let (range, name) = l.trim().split_once(" : ")?;
            let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
            (start == addr).then(|| name.trim().to_string())
        })
        .collect()
}

/// The block device (`vdX`) of the virtio-mmio transport at `addr`, found in `platform`
/// (`/sys/bus/platform/devices`) as `<device>/virtioN/block/vdX`. A transport from the
/// kernel command line (`virtio_mmio.device=`, as ember's VMM gives them) is named
/// `virtio-mmio.N`, which only `iomem` ties to its address; one from a device tree is named
/// `<addr>.<node>`.
fn mmio_block_device(platform: &Path, iomem: &str, addr: u64) -> Option<String> {
    let dt_prefix = format!("{addr:x}.");
    let mut names = iomem_devices_at(iomem, addr);
    names.extend(
        std::fs::read_dir(platform)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.to_ascii_lowercase().starts_with(&dt_prefix)),
    );
    names.iter().find_map(|name| {
        std::fs::read_dir(platform.join(name))
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|v| {
                std::fs::read_dir(v.path().join("block"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .next()
                    .map(|b| b.file_name().to_string_lossy().into_owned())
            })
    })
}

/// Mounts one storage (creating the mount point) and returns what to unmount later.
pub fn mount_storage(
    sys: &dyn Syscall,
    index: usize,
    s: &Storage,
) -> Result<Mounted, StorageError> {
    let field = |field: &'static str, message: String| StorageError::Field {
        index,
        field,
        message,
    };
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute() {
        return Err(field(
            "mount_point",
            format!("{:?} must be an absolute path", s.mount_point),
        ));
    }
    let (flags, data) = parse_options(&s.options);
    let driver = s.driver.enum_value_or_default();
    let (source, fstype): (PathBuf, &str) = match driver {
        Driver::VIRTIO_FS => {
            if s.source.is_empty() {
                return Err(field("source", "empty; name the virtio-fs tag".into()));
            }
            (PathBuf::from(&s.source), "virtiofs")
        }
        Driver::BLOCK => {
            if s.fstype.is_empty() {
                return Err(field(
                    "fstype",
                    "empty; name the device's filesystem (e.g. ext4)".into(),
                ));
            }
            let dev = resolve_block(index, &s.source)?;
            if s.source.starts_with("mmio:") {
                let name = dev.file_name().unwrap_or_default().to_string_lossy();
                wait_for_capacity(Path::new(BLOCK_SYSFS), &name, CAPACITY_TIMEOUT).map_err(
                    |why| {
                        field(
                            "source",
                            format!(
                                "{} ({}): {why} after {CAPACITY_TIMEOUT:?}; the host attached no \
                                 disk to this virtio-blk slot",
                                s.source,
                                dev.display()
                            ),
                        )
                    },
                )?;
            }
            (dev, s.fstype.as_str())
        }
        Driver::BIND => {
            let src = PathBuf::from(&s.source);
            if !src.exists() {
                return Err(field("source", format!("{} does not exist", src.display())));
            }
            (src, "")
        }
        Driver::TMPFS => (PathBuf::from("tmpfs"), "tmpfs"),
        Driver::UNSPECIFIED => {
            return Err(field(
                "driver",
                "unspecified; use VIRTIO_FS, BLOCK, BIND or TMPFS".into(),
            ))
        }
    };
    let is_file_bind = driver == Driver::BIND && source.is_file();
    let created = first_missing(&target);
    let mk = if is_file_bind {
        target
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .map(|_| ())
            })
    } else {
        std::fs::create_dir_all(&target)
    };
    mk.map_err(|e| {
        field(
            "mount_point",
            format!("cannot create {}: {e}", target.display()),
        )
    })?;
    let made = Mounted {
        target: target.clone(),
        block: driver == Driver::BLOCK,
        created,
    };

    let fail = |errno| {
        remove_created(&made);
        StorageError::Mount {
            index,
            source_desc: source.display().to_string(),
            target: target.clone(),
            errno,
        }
    };
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    if driver == Driver::BIND {
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        sys.mount(Some(&source), &target, None, bind, None)
            .map_err(fail)?;
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            if let Err(e) = sys.mount(
                None,
                &target,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | extra,
                None,
            ) {
                let _ = sys.umount2(&target, MntFlags::MNT_DETACH);
                return Err(fail(e));
            }
        }
    } else {
        sys.mount(Some(&source), &target, Some(fstype), flags, data_opt)
            .map_err(fail)?;
    }
    Ok(made)
}

/// Mounts every storage in order; on failure unmounts the ones already mounted.
pub fn mount_all(sys: &dyn Syscall, storages: &[Storage]) -> Result<Vec<Mounted>, StorageError> {
    let mut done = Vec::new();
    for (i, s) in storages.iter().enumerate() {
        match mount_storage(sys, i, s) {
            Ok(m) => done.push(m),
            Err(e) => {
                unmount_all(sys, &done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Unmounts in reverse order (lazily, so a busy mount does not block removal) and removes
/// the mount points the mounts created. A block storage is synced first and unmounted at
/// once when nothing uses it any more, so its data is on the disk before the host detaches
/// it.
pub fn unmount_all(sys: &dyn Syscall, mounted: &[Mounted]) {
    for m in mounted.iter().rev() {
        let synced_unmount = m.block && {
            let _ = sys.syncfs(&m.target);
            sys.umount2(&m.target, MntFlags::empty()).is_ok()
        };
        if synced_unmount || sys.umount2(&m.target, MntFlags::MNT_DETACH).is_ok() {
            remove_created(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use nix::errno::Errno;

    use super::*;
    use crate::syscall::{Call, Recorder};

    fn storage(
        driver: Driver,
        source: &str,
        target: &Path,
        fstype: &str,
        options: &[&str],
    ) -> Storage {
        let mut s = Storage::new();
        s.driver = driver.into();
        s.source = source.into();
        s.mount_point = target.display().to_string();
        s.fstype = fstype.into();
        s.options = options.iter().map(|o| o.to_string()).collect();
        s
    }

    fn mount_call(
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Call {
        Call::mount(source, target, fstype, flags, data)
    }

    #[test]
    fn a_block_storage_mounts_its_device_with_its_fstype_flags_and_data() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("vol/data");
        let s = storage(
            Driver::BLOCK,
            "/dev/vdb",
            &target,
            "ext4",
            &["ro", "nosuid", "nodev", "data=ordered"],
        );
        let sys = Recorder::new();
        let m = mount_storage(&sys, 0, &s).unwrap();
        assert_eq!(
            sys.calls(),
            [mount_call(
                Some("/dev/vdb"),
                &target,
                Some("ext4"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("data=ordered"),
            )]
        );
        assert!(target.is_dir(), "the mount point is made");
        assert!(m.block);
        assert_eq!(m.created.as_deref(), Some(d.path().join("vol").as_path()));
    }

    #[test]
    fn a_virtio_fs_share_is_mounted_by_its_tag() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("shared");
        let s = storage(
            Driver::VIRTIO_FS,
            "ember-shared",
            &target,
            "",
            &["nosuid", "nodev"],
        );
        let sys = Recorder::new();
        let m = mount_storage(&sys, 0, &s).unwrap();
        assert_eq!(
            sys.calls(),
            [mount_call(
                Some("ember-shared"),
                &target,
                Some("virtiofs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                None,
            )]
        );
        assert!(!m.block);
    }

    #[test]
    fn a_tmpfs_storage_passes_its_data_options() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("tmp");
        let s = storage(
            Driver::TMPFS,
            "",
            &target,
            "",
            &["noexec", "size=64m", "mode=1777"],
        );
        let sys = Recorder::new();
        mount_storage(&sys, 0, &s).unwrap();
        assert_eq!(
            sys.calls(),
            [mount_call(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_NOEXEC,
                Some("size=64m,mode=1777"),
            )]
        );
    }

    #[test]
    fn a_read_only_bind_is_a_recursive_bind_then_a_remount_with_the_flags() {
        let d = tempfile::tempdir().unwrap();
        let source = d.path().join("src");
        std::fs::create_dir(&source).unwrap();
        let target = d.path().join("dst");
        let s = storage(
            Driver::BIND,
            source.to_str().unwrap(),
            &target,
            "",
            &["rbind", "ro", "nosuid"],
        );
        let sys = Recorder::new();
        mount_storage(&sys, 0, &s).unwrap();
        assert_eq!(
            sys.calls(),
            [
                mount_call(
                    source.to_str(),
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None
                ),
                mount_call(
                    None,
                    &target,
                    None,
                    MsFlags::MS_REMOUNT
                        | MsFlags::MS_BIND
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID,
                    None,
                ),
            ]
        );

        // Without flags beyond the bind: no remount.
        let target = d.path().join("plain");
        let s = storage(
            Driver::BIND,
            source.to_str().unwrap(),
            &target,
            "",
            &["rbind"],
        );
        let sys = Recorder::new();
        mount_storage(&sys, 0, &s).unwrap();
        assert_eq!(sys.mounts().len(), 1);

        // A file is bound onto a file made for it.
        let file = d.path().join("resolv.conf");
        std::fs::write(&file, "nameserver 10.0.0.1\n").unwrap();
        let target = d.path().join("etc/resolv.conf");
        let s = storage(Driver::BIND, file.to_str().unwrap(), &target, "", &["ro"]);
        let sys = Recorder::new();
        mount_storage(&sys, 0, &s).unwrap();
        assert!(target.is_file());
        assert_eq!(sys.mounts().len(), 2);
    }

    #[test]
    fn a_failed_remount_undoes_the_bind_and_names_the_paths() {
        let d = tempfile::tempdir().unwrap();
        let source = d.path().join("src");
        std::fs::create_dir(&source).unwrap();
        let target = d.path().join("new/dst");
        let s = storage(Driver::BIND, source.to_str().unwrap(), &target, "", &["ro"]);
        let sys = Recorder::new();
        sys.fail_when(
            |c| matches!(c, Call::Mount { flags, .. } if flags.contains(MsFlags::MS_REMOUNT)),
            Errno::EPERM,
        );
        let e = mount_storage(&sys, 3, &s).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "storages[3]: cannot mount {} on {}: EPERM: Operation not permitted",
                source.display(),
                target.display()
            )
        );
        assert_eq!(
            sys.calls()[2..],
            [Call::Umount(target.clone(), MntFlags::MNT_DETACH)],
            "the bind is undone"
        );
        assert!(
            !d.path().join("new").exists(),
            "the mount point made is removed"
        );
    }

    #[test]
    fn a_failed_mount_names_the_target_and_removes_the_mount_point_it_made() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("a/b");
        let s = storage(Driver::BLOCK, "/dev/vdc", &target, "xfs", &[]);
        let sys = Recorder::new();
        sys.fail_when(|c| matches!(c, Call::Mount { .. }), Errno::ENODEV);
        let e = mount_storage(&sys, 0, &s).unwrap_err().to_string();
        assert!(
            e.starts_with("storages[0]: cannot mount /dev/vdc on ")
                && e.contains(&target.display().to_string())
                && e.contains("ENODEV"),
            "{e}"
        );
        assert_eq!(sys.calls().len(), 1, "nothing to undo");
        assert!(!d.path().join("a").exists());
    }

    #[test]
    fn bad_fields_make_no_system_call() {
        let sys = Recorder::new();
        let e = mount_storage(
            &sys,
            1,
            &storage(Driver::TMPFS, "", Path::new("rel"), "", &[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("storages[1].mount_point"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("x");
        for (s, field) in [
            (storage(Driver::UNSPECIFIED, "", &t, "", &[]), "driver"),
            (storage(Driver::VIRTIO_FS, "", &t, "", &[]), "source"),
            (storage(Driver::BLOCK, "/dev/vdb", &t, "", &[]), "fstype"),
            (
                storage(Driver::BIND, "/no/such/ember/path", &t, "", &[]),
                "source",
            ),
        ] {
            let e = mount_storage(&sys, 0, &s).unwrap_err().to_string();
            assert!(e.starts_with(&format!("storages[0].{field}")), "{e}");
        }
        assert_eq!(sys.calls(), []);
        assert!(!t.exists());
    }

    #[test]
    fn a_failure_in_mount_all_unmounts_the_storages_mounted_before() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        let storages = [
            storage(Driver::TMPFS, "", &a, "", &[]),
            storage(Driver::TMPFS, "", &b, "", &[]),
            storage(Driver::TMPFS, "", &c, "", &[]),
        ];
        let sys = Recorder::new();
        let failing = b.clone();
        sys.fail_when(
            move |call| matches!(call, Call::Mount { target, .. } if *target == failing),
            Errno::ENOSPC,
        );
        let e = mount_all(&sys, &storages).unwrap_err().to_string();
        assert!(
            e.starts_with("storages[1]:") && e.contains(&b.display().to_string()),
            "{e}"
        );
        let calls = sys.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(calls[2], Call::Umount(a.clone(), MntFlags::MNT_DETACH));
        assert!(!a.exists() && !b.exists() && !c.exists());
    }

    #[test]
    fn unmounting_goes_in_reverse_and_syncs_a_block_storage_first() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let storages = [
            storage(Driver::TMPFS, "", &a, "", &[]),
            storage(Driver::BLOCK, "/dev/vdb", &b, "ext4", &[]),
        ];
        let sys = Recorder::new();
        let mounted = mount_all(&sys, &storages).unwrap();
        let sys = Recorder::new();
        unmount_all(&sys, &mounted);
        assert_eq!(
            sys.calls(),
            [
                Call::Syncfs(b.clone()),
                Call::Umount(b.clone(), MntFlags::empty()),
                Call::Umount(a.clone(), MntFlags::MNT_DETACH),
            ]
        );
        assert!(
            !a.exists() && !b.exists(),
            "the mount points made are removed"
        );

        // A busy block storage is detached lazily; one that cannot be unmounted at all
        // keeps its mount point.
        let mounted = mount_all(&Recorder::new(), &storages).unwrap();
        let sys = Recorder::new();
        let busy = b.clone();
        sys.fail_when(
            move |c| matches!(c, Call::Umount(p, f) if *p == busy && f.is_empty()),
            Errno::EBUSY,
        );
        let stuck = a.clone();
        sys.fail_when(
            move |c| matches!(c, Call::Umount(p, _) if *p == stuck),
            Errno::EINVAL,
        );
        unmount_all(&sys, &mounted);
        assert_eq!(
            sys.calls()[1..],
            [
                Call::Umount(b.clone(), MntFlags::empty()),
                Call::Umount(b.clone(), MntFlags::MNT_DETACH),
                Call::Umount(a.clone(), MntFlags::MNT_DETACH),
            ]
        );
        assert!(!b.exists());
        assert!(a.exists(), "still mounted: its mount point stays");
    }

    /// A fake `/sys/block` with one device whose `size` file holds `sectors`.
    fn sys_block(sectors: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("vdb")).unwrap();
        std::fs::write(dir.path().join("vdb/size"), sectors).unwrap();
        dir
    }

    #[test]
    fn only_created_mount_points_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let keep = d.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        let target = keep.join("a/b/c");
        let created = first_missing(&target);
        assert_eq!(created.as_deref(), Some(keep.join("a").as_path()));
        assert_eq!(first_missing(&keep), None);
        std::fs::create_dir_all(&target).unwrap();
        // A file someone else put beside the mount point keeps its directory.
        std::fs::write(keep.join("a/b/other"), "x").unwrap();
        let m = Mounted {
            target: target.clone(),
            block: false,
            created,
        };
        remove_created(&m);
        assert!(!target.exists());
        assert!(keep.join("a/b/other").exists());
        std::fs::remove_file(keep.join("a/b/other")).unwrap();
        std::fs::create_dir(&target).unwrap();
        remove_created(&m);
        assert!(!keep.join("a").exists());
        assert!(
            keep.is_dir(),
            "a directory the mount did not create is kept"
        );
    }

    #[test]
    fn device_sectors_reads_sysfs_size() {
        let d = sys_block("2048\n");
        assert_eq!(device_sectors(d.path(), "vdb").unwrap(), 2048);
        std::fs::write(d.path().join("vdb/size"), "junk\n").unwrap();
        let e = device_sectors(d.path(), "vdb").unwrap_err().to_string();
        assert!(e.contains("vdb/size") && e.contains("junk"), "{e}");
        assert!(device_sectors(d.path(), "vdz").is_err());
    }

    #[test]
    fn capacity_wait_returns_once_the_size_shows_and_gives_up_on_zero() {
        let d = sys_block("0\n");
        // Stays 0: fails after the timeout, saying so.
        let t0 = Instant::now();
        let e = wait_for_capacity(d.path(), "vdb", Duration::from_millis(150)).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(150));
        assert_eq!(e, "its capacity is 0");
        // A missing device is reported as unreadable.
        let e = wait_for_capacity(d.path(), "vdz", Duration::ZERO).unwrap_err();
        assert!(e.starts_with("cannot read its size"), "{e}");
        // The size appears a little later (the config-change interrupt was handled).
        let size = d.path().join("vdb/size");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(size, "4096\n").unwrap();
        });
        let t0 = Instant::now();
        assert_eq!(
            wait_for_capacity(d.path(), "vdb", Duration::from_secs(5)).unwrap(),
            4096
        );
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "returned when the size showed"
        );
        writer.join().unwrap();
    }

    /// The wait against a real block device: a free loop device has capacity 0 until a
    /// file is bound to it, like an empty virtio-blk slot until the host attaches a disk.
    #[test]
    fn capacity_wait_sees_a_loop_device_get_its_file() {
        const TEST: &str = "capacity_wait_sees_a_loop_device_get_its_file";
        // linux/loop.h
        const LOOP_SET_FD: libc::c_ulong = 0x4c00;
        const LOOP_CLR_FD: libc::c_ulong = 0x4c01;
        const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4c82;
        let rw = |p: &str| std::fs::OpenOptions::new().read(true).write(true).open(p);
        let ctl = match rw("/dev/loop-control") {
            Ok(f) => f,
            Err(e) => {
                ember_tests::skip(TEST, &format!("/dev/loop-control: {e} (needs root)"));
                return;
            }
        };
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        let dev = match (n >= 0).then(|| rw(&format!("/dev/loop{n}"))) {
            Some(Ok(f)) => f,
            _ => {
                ember_tests::skip(TEST, "no free loop device to use");
                return;
            }
        };
        let name = format!("loop{n}");
        let sys = Path::new(BLOCK_SYSFS);
        let e = wait_for_capacity(sys, &name, Duration::from_millis(100)).unwrap_err();
        assert_eq!(e, "its capacity is 0", "an unbound loop device");

        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        let binder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: binds the open image file to the loop device; both fds stay open.
            let rc =
                unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, img.as_file().as_raw_fd()) };
            (rc, std::io::Error::last_os_error(), dev, img)
        });
        let waited = wait_for_capacity(sys, &name, Duration::from_secs(5));
        let (rc, err, dev, _img) = binder.join().unwrap();
        if rc != 0 {
            ember_tests::skip(TEST, &format!("cannot bind /dev/{name}: {err}"));
            return;
        }
        // SAFETY: unbinds the loop device this test bound.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
        assert_eq!(waited, Ok(2048), "1 MiB in 512-byte sectors");
    }

    #[test]
    fn mmio_transports_are_found_by_address() {
        // As the guest kernel shows them: two transports from the command line (one with
        // a disk slot, one a vsock device) and one from a device tree.
        let iomem = "00000000-00000fff : Reserved\n\
                     d0000000-d0000fff : virtio-mmio.0\n  \
                     d0000000-d0000fff : virtio-mmio\n\
                     d0001000-d0001fff : virtio-mmio.1\n\
                     fee00000-fee00fff : Local APIC\n";
        assert_eq!(
            iomem_devices_at(iomem, 0xd000_0000),
            ["virtio-mmio.0", "virtio-mmio"]
        );
        let platform = tempfile::tempdir().unwrap();
        let p = platform.path();
        for d in [
            "virtio-mmio.0/virtio0/block/vda",
            "virtio-mmio.1/virtio1/vsock",
            "a0000000.virtio_mmio/virtio2/block/vdb",
        ] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        assert_eq!(
            mmio_block_device(p, iomem, 0xd000_0000).as_deref(),
            Some("vda")
        );
        assert_eq!(
            mmio_block_device(p, iomem, 0xd000_1000),
            None,
            "no block device"
        );
        assert_eq!(
            mmio_block_device(p, iomem, 0xa000_0000).as_deref(),
            Some("vdb")
        );
        assert_eq!(mmio_block_device(p, iomem, 0xd000_2000), None);
        let e = resolve_block(1, "mmio:0xzz").unwrap_err().to_string();
        assert!(
            e.starts_with("storages[1].source") && e.contains("hex address"),
            "{e}"
        );
    }

    #[test]
    fn block_sources_are_checked() {
        assert_eq!(
            resolve_block(0, "/dev/vdb").unwrap(),
            PathBuf::from("/dev/vdb")
        );
        let e = resolve_block(2, "vdb").unwrap_err().to_string();
        assert!(e.starts_with("storages[2].source"), "{e}");
        let e = resolve_block(0, "serial:no-such-serial-ember")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-serial-ember"), "{e}");
    }
}
