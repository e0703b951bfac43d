//! Block volumes of a microVM sandbox: which virtio-blk slot holds which container's
//! volume.
//!
//! The VM boots with `hypervisor.block_slots` empty slots (virtio-mmio has no hot-plug).
//! Creating a container attaches each of its [`BlockVolume`]s to a free slot and hands the
//! agent a `Storage` that names the slot by its virtio-mmio address (`mmio:0x...`, which
//! the agent resolves to `/dev/vdX` through sysfs); removing the container (or a failed
//! create) detaches them, after the agent has unmounted them.
//!
//! The bookkeeping is the runtime's; the VMM (a process of its own) only backs a slot
//! with the disk the runtime opened ([`SlotControl`]: the control channel's `Attach`, the
//! fd in `SCM_RIGHTS`, and `Detach`). Nothing here is recorded in the sandbox's state
//! file: an attachment is an open file of the VMM, so the VMM's end ends it and leaves
//! nothing on the host to clean up.

use std::fs::File;
use std::path::{Path, PathBuf};

use ember_agent_protocol::agent::{storage::Driver, Storage};
use ember_vmm::SlotInfo;

use crate::oci::BlockVolume;

/// Errors attaching a block volume, naming the mount.
#[derive(Debug, thiserror::Error)]
pub enum BlockVolumeError {
    /// Every slot holds a volume.
    #[error("{volume}: no free virtio-blk slot (hypervisor.block_slots = {slots})")]
    NoFreeSlot {
        /// `mounts[N]: DESTINATION`.
        volume: String,
        /// How many slots the VM has.
        slots: usize,
    },
    /// The backend has no block volumes (the translation made some anyway: a bug).
    #[error("{volume}: the {backend} backend has no virtio-blk slots")]
    Unsupported {
        /// `mounts[N]: DESTINATION`.
        volume: String,
        /// The backend's name.
        backend: &'static str,
    },
    /// The source is already attached, and one of the two attachments is read-write: two
    /// guest mounts of one filesystem through two devices would corrupt it.
    #[error("{volume}: {path} is already attached to container {owner}{how}; a disk can be shared between mounts only read-only")]
    InUse {
        /// `mounts[N]: DESTINATION`.
        volume: String,
        /// The source.
        path: PathBuf,
        /// The container that holds it.
        owner: String,
        /// ` (read-write)` when the existing attachment is writable.
        how: &'static str,
    },
    /// The source cannot be opened.
    #[error("{volume}: cannot open disk {path}: {source}")]
    Open {
        /// `mounts[N]: DESTINATION`.
        volume: String,
        /// The source.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM could not attach the source.
    #[error("{volume}: {message}")]
    Attach {
        /// `mounts[N]: DESTINATION`.
        volume: String,
        /// Why (names the source path).
        message: String,
    },
}

/// What backs the VM's slots: the VMM, over its control channel.
pub trait SlotControl: Send + Sync {
    /// Back slot `index` with the open `disk` (shown as `path`); its capacity in sectors.
    fn attach(
        &self,
        index: usize,
        disk: &File,
        path: &Path,
        read_only: bool,
    ) -> Result<u64, String>;
    /// Empty slot `index`.
    fn detach(&self, index: usize) -> Result<(), String>;
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The disk's host path.
    pub path: PathBuf,
    /// Whether the guest may not write.
    pub read_only: bool,
    /// Its capacity in 512-byte sectors, as the VMM measured it.
    pub capacity: u64,
}

struct Slot {
    info: SlotInfo,
    held: Option<Held>,
    /// The container whose volume the slot holds.
    owner: Option<String>,
}

/// The VM's virtio-blk slots and their owners.
#[derive(Default)]
pub struct BlockSlots {
    slots: Vec<Slot>,
    control: Option<Box<dyn SlotControl>>,
}

impl BlockSlots {
    /// The slots of a VM (as its `Ready` listed them), all free, backed through `control`.
    pub fn new(slots: Vec<SlotInfo>, control: Box<dyn SlotControl>) -> Self {
        Self {
            slots: slots
                .into_iter()
                .map(|info| Slot {
                    info,
                    held: None,
                    owner: None,
                })
                .collect(),
            control: Some(control),
        }
    }

    /// How many slots the VM has.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the VM has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many slots are free.
    pub fn free(&self) -> usize {
        self.slots.iter().filter(|s| s.owner.is_none()).count()
    }

    /// What slot `index` holds.
    pub fn held(&self, index: usize) -> Option<&Held> {
        self.slots.get(index).and_then(|s| s.held.as_ref())
    }

    /// Attaches `volume` of `container_id` to the first free slot and returns the
    /// agent's storage for it. A failure leaves every slot as it was.
    pub fn attach(
        &mut self,
        container_id: &str,
        volume: &BlockVolume,
    ) -> Result<Storage, BlockVolumeError> {
        if let Some(id) = disk_identity(&volume.source) {
            for s in &self.slots {
                let (Some(owner), Some(held)) = (&s.owner, &s.held) else {
                    continue;
                };
                if disk_identity(&held.path) == Some(id) && !(held.read_only && volume.read_only) {
                    return Err(BlockVolumeError::InUse {
                        volume: volume.describe(),
                        path: volume.source.clone(),
                        owner: owner.clone(),
                        how: if held.read_only { "" } else { " (read-write)" },
                    });
                }
            }
        }
        let slots = self.slots.len();
        let no_slot = || BlockVolumeError::NoFreeSlot {
            volume: volume.describe(),
            slots,
        };
        let control = self.control.as_deref().ok_or_else(no_slot)?;
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.owner.is_none())
            .ok_or_else(no_slot)?;
        // Opened here, by the runtime: the jailed VMM cannot open host paths.
        let disk = std::fs::OpenOptions::new()
            .read(true)
            .write(!volume.read_only)
            .open(&volume.source)
            .map_err(|source| BlockVolumeError::Open {
                volume: volume.describe(),
                path: volume.source.clone(),
                source,
            })?;
        let capacity = control
            .attach(slot.info.index, &disk, &volume.source, volume.read_only)
            .map_err(|message| BlockVolumeError::Attach {
                volume: volume.describe(),
                message,
            })?;
        slot.held = Some(Held {
            path: volume.source.clone(),
            read_only: volume.read_only,
            capacity,
        });
        slot.owner = Some(container_id.to_string());
        Ok(storage(volume, slot.info.mmio_addr))
    }

    /// Detaches every volume of `container_id`; returns how many slots were freed. A slot
    /// the VMM could not empty is freed all the same (the VMM is gone, or will be).
    pub fn release(&mut self, container_id: &str) -> usize {
        let mut freed = 0;
        for s in &mut self.slots {
            if s.owner.as_deref() == Some(container_id) {
                if let Some(c) = &self.control {
                    if let Err(e) = c.detach(s.info.index) {
                        log::warn!(
                            "container={container_id}: virtio-blk slot {}: detach: {e}",
                            s.info.index
                        );
                    }
                }
                s.held = None;
                s.owner = None;
                freed += 1;
            }
        }
        freed
    }
}

/// What makes two paths the same disk: the device number of a block device, or the
/// (device, inode) of an image file, so links and symlinks to one disk compare equal.
fn disk_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    Some(if m.file_type().is_block_device() {
        (u64::MAX, m.rdev())
    } else {
        (m.dev(), m.ino())
    })
}

/// The agent's storage for `volume` in the slot at `mmio_addr`.
pub fn storage(volume: &BlockVolume, mmio_addr: u64) -> Storage {
    let mut s = Storage::new();
    s.driver = Driver::BLOCK.into();
    s.source = format!("mmio:{mmio_addr:#x}");
    s.fstype = volume.fstype.clone();
    s.options = volume.options.clone();
    s.mount_point = volume.guest_path.display().to_string();
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{translate, BundleSpec, Translation};
    use std::path::{Path, PathBuf};

    /// The VMM's side in-process: slots outside any VM, backed with the fd as the
    /// control channel's server does.
    struct InProcess(Vec<ember_vmm::BlockSlot>);

    impl SlotControl for InProcess {
        fn attach(&self, index: usize, disk: &File, path: &Path, ro: bool) -> Result<u64, String> {
            let file = disk.try_clone().map_err(|e| e.to_string())?;
            self.0[index]
                .attach_file(file, path, ro)
                .map(|a| a.capacity)
                .map_err(|e| e.to_string())
        }
        fn detach(&self, index: usize) -> Result<(), String> {
            self.0[index].detach();
            Ok(())
        }
    }

    /// `n` slots, at the addresses a VM would give them.
    fn slots(n: usize) -> BlockSlots {
        let info = |i: usize| SlotInfo {
            index: i,
            mmio_addr: 0xd000_1000 + 0x1000 * i as u64,
        };
        BlockSlots::new(
            (0..n).map(info).collect(),
            Box::new(InProcess(
                (0..n)
                    .map(|i| ember_vmm::BlockSlot::detached(i, info(i).mmio_addr).unwrap())
                    .collect(),
            )),
        )
    }

    fn volume(index: usize, source: &Path, read_only: bool) -> BlockVolume {
        BlockVolume {
            index,
            destination: format!("/data{index}"),
            source: source.to_path_buf(),
            fstype: "ext4".into(),
            options: if read_only { vec!["ro".into()] } else { vec![] },
            read_only,
            guest_path: PathBuf::from(format!("/run/ember/storage/c1/{index}")),
        }
    }

    /// An ext4 image file like a loop-mounted volume's (contents do not matter here).
    fn image(dir: &Path, name: &str, sectors: usize) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; sectors * 512]).unwrap();
        p
    }

    #[test]
    fn an_ext4_image_mount_gets_a_slot_storage_and_a_bind() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "vol.ext4", 64);
        let spec = BundleSpec::parse(
            &serde_json::json!({
                "ociVersion": "1.0.2",
                "root": {"path": "rootfs"},
                "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
                "mounts": [
                    {"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]},
                    {"destination": "/data", "type": "ext4", "source": img, "options": ["ro", "noatime"]}
                ]
            })
            .to_string(),
            Path::new("/b"),
        )
        .unwrap();
        let t = translate(
            &spec,
            &Translation {
                sandbox_id: "sb",
                container_id: "c1",
                agent_shared_dir: Path::new("/run/ember/shared"),
                vm: true,
                block_volume_dir: Some(Path::new("/run/ember/storage")),
                pod_sandbox_pid: None,
            },
        );
        assert_eq!(t.block_volumes.len(), 1);
        let mut s = slots(2);
        let st = s.attach("c1", &t.block_volumes[0]).unwrap();
        assert_eq!(st.driver.enum_value_or_default(), Driver::BLOCK);
        assert_eq!(st.source, "mmio:0xd0001000", "the first slot's address");
        assert_eq!(st.fstype, "ext4");
        assert_eq!(st.options, ["ro", "noatime"]);
        assert_eq!(st.mount_point, "/run/ember/storage/c1/2");
        let held = s.held(0).unwrap().clone();
        assert_eq!((held.path, held.read_only, held.capacity), (img, true, 64));
        assert_eq!(s.free(), 1);
        // The container binds the agent's mount; the bind mount is left to the share.
        assert_eq!(t.spec["mounts"][2]["type"], "bind");
        assert_eq!(t.spec["mounts"][2]["source"], "/run/ember/storage/c1/2");
        assert_eq!(
            t.spec["mounts"][2]["options"],
            serde_json::json!(["rbind", "ro", "noatime"])
        );
        assert_eq!(
            t.spec["mounts"][1]["source"],
            "/run/ember/shared/c1/mounts/1"
        );
        assert_eq!(t.binds.len(), 1);
    }

    #[test]
    fn a_disk_is_shared_only_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "shared.ext4", 8);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let mut s = slots(4);
        s.attach("c1", &volume(1, &img, true)).unwrap();
        // Read-only twice is fine (also through a symlink).
        s.attach("c2", &volume(2, &link, true)).unwrap();
        // A writable attachment of a disk already attached is refused, and the other way.
        let e = s
            .attach("c3", &volume(3, &link, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("mounts[3]: /data3: ") && e.contains("already attached to container c1"),
            "{e}"
        );
        assert_eq!(s.free(), 2, "a refused attach takes no slot");
        let other = image(dir.path(), "rw.ext4", 8);
        s.attach("c4", &volume(1, &other, false)).unwrap();
        let e = s
            .attach("c5", &volume(2, &other, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("container c4 (read-write)"), "{e}");
        // Once released, the disk can be attached read-write.
        s.release("c1");
        s.release("c2");
        s.attach("c3", &volume(3, &img, false)).unwrap();
    }

    #[test]
    fn out_of_slots_names_the_mount_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (image(dir.path(), "a", 8), image(dir.path(), "b", 8));
        let mut s = slots(1);
        s.attach("c1", &volume(1, &a, false)).unwrap();
        let mut v = volume(3, &b, false);
        v.destination = "/data".into();
        let e = s.attach("c2", &v).unwrap_err().to_string();
        assert_eq!(
            e,
            "mounts[3]: /data: no free virtio-blk slot (hypervisor.block_slots = 1)"
        );
        let e = slots(0).attach("c1", &v).unwrap_err().to_string();
        assert_eq!(
            e,
            "mounts[3]: /data: no free virtio-blk slot (hypervisor.block_slots = 0)"
        );
    }

    #[test]
    fn release_frees_only_the_containers_slots() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "v", 8);
        let mut s = slots(3);
        s.attach("c1", &volume(1, &img, true)).unwrap();
        let st = s.attach("c2", &volume(1, &img, true)).unwrap();
        assert_eq!(st.source, "mmio:0xd0002000");
        s.attach("c1", &volume(2, &img, true)).unwrap();
        assert_eq!(s.free(), 0);
        assert!(s.attach("c3", &volume(1, &img, true)).is_err());
        assert_eq!(s.release("c1"), 2);
        assert_eq!(s.free(), 2);
        assert!(s.held(0).is_none(), "detached");
        assert!(s.held(1).is_some(), "c2 keeps its slot");
        assert_eq!(s.release("c1"), 0, "nothing left to release");
        // A freed slot is reused.
        let st = s.attach("c3", &volume(1, &img, true)).unwrap();
        assert_eq!(st.source, "mmio:0xd0001000");
    }

    #[test]
    fn a_source_that_cannot_be_attached_is_named_and_takes_no_slot() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone.ext4");
        let mut s = slots(1);
        let e = s
            .attach("c1", &volume(4, &gone, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("mounts[4]: /data4: ") && e.contains(&gone.display().to_string()),
            "{e}"
        );
        assert_eq!(s.free(), 1);
    }
}
