//! Storages: virtio-fs shares, block devices, bind paths and tmpfs mounted at guest paths
//! for CreateSandbox/CreateContainer, and unmounted again on removal.

use std::path::{Path, PathBuf};

use ember_agent_protocol::agent::{storage::Driver, Storage};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where virtio-mmio devices appear in sysfs.
const MMIO_SYSFS: &str = "/sys/devices/platform";
/// Where block devices appear in sysfs.
const BLOCK_SYSFS: &str = "/sys/block";

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
}

/// Splits mount(8)-style options into flags and the data string (the protocol crate's
/// [`ember_agent_protocol::mount_options::split`]).
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let (flags, data) = ember_agent_protocol::mount_options::split(options);
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
        let addr = addr.trim_start_matches("0x").to_ascii_lowercase();
        let prefix = format!("{addr}.");
        for dev in std::fs::read_dir(MMIO_SYSFS).map_err(|e| bad(format!("{MMIO_SYSFS}: {e}")))? {
            let dev = dev.map_err(|e| bad(e.to_string()))?;
            let name = dev.file_name().to_string_lossy().to_ascii_lowercase();
            if !name.starts_with(&prefix) {
                continue;
            }
            // <addr>.virtio_mmio/virtioN/block/vdX
            for v in std::fs::read_dir(dev.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let block = v.path().join("block");
                if let Some(b) = std::fs::read_dir(&block)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .next()
                {
                    return Ok(Path::new("/dev").join(b.file_name()));
                }
            }
        }
        return Err(bad(format!(
            "no virtio-mmio block device at address 0x{addr} under {MMIO_SYSFS}"
        )));
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

/// Mounts one storage (creating the mount point) and returns what to unmount later.
pub fn mount_storage(index: usize, s: &Storage) -> Result<Mounted, StorageError> {
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
            (resolve_block(index, &s.source)?, s.fstype.as_str())
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

    let fail = |errno| StorageError::Mount {
        index,
        source_desc: source.display().to_string(),
        target: target.clone(),
        errno,
    };
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    if driver == Driver::BIND {
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(&source), &target, None::<&str>, bind, None::<&str>).map_err(fail)?;
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            if let Err(e) = mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | extra,
                None::<&str>,
            ) {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
                return Err(fail(e));
            }
        }
    } else {
        mount(Some(&source), &target, Some(fstype), flags, data_opt).map_err(fail)?;
    }
    Ok(Mounted { target })
}

/// Mounts every storage in order; on failure unmounts the ones already mounted.
pub fn mount_all(storages: &[Storage]) -> Result<Vec<Mounted>, StorageError> {
    let mut done = Vec::new();
    for (i, s) in storages.iter().enumerate() {
        match mount_storage(i, s) {
            Ok(m) => done.push(m),
            Err(e) => {
                unmount_all(&done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Unmounts in reverse order (lazily, so a busy mount does not block removal).
pub fn unmount_all(mounted: &[Mounted]) {
    for m in mounted.iter().rev() {
        let _ = umount2(&m.target, MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
