//! OCI spec handling on the host: reading a bundle's `config.json` with errors that name the
//! bad field, and translating the spec for the sandbox's agent.
//!
//! Translation (the agent sees the sandbox, not the host):
//! - `root.path` becomes the container's rootfs inside the sandbox's shared directory;
//! - `linux.cgroupsPath` becomes `/ember/<sandbox>/<container>` so that two sandboxes never
//!   collide and delete can remove the sandbox's cgroups as one tree;
//! - namespaces with a `path` (CRI's "join the pod's namespace") name host paths the agent
//!   cannot see. A pid, IPC or UTS namespace is rewritten to the same namespace of the pod's
//!   sandbox ("pause") container inside the sandbox (`/proc/<its agent pid>/ns/<type>`), so a
//!   pod that shares its process namespace sees the pause process as PID 1, as with runc.
//!   Any other joined namespace (network above all), or one without a known pause container,
//!   is dropped: the pod's network namespace is the agent's own, so a container joins it
//!   simply by not asking for a new one;
//! - in a microVM: host device nodes, hooks (host programs) and the network namespace are
//!   dropped (the guest's network is the pod network), bind mounts of host paths are
//!   shared through the sandbox's shared directory, and block volumes (a mount whose
//!   `source` is a host block device or regular file and whose `type` is a disk filesystem
//!   such as ext4) become [`BlockVolume`]s: the sandbox attaches the source to a free
//!   virtio-blk slot, the agent mounts it at a guest path, and the mount becomes a bind of
//!   that path.
//!
//! The spec is edited as JSON so fields this crate does not model pass through unchanged.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// CRI's annotation of the container kind: `sandbox` for the pod's pause container,
/// `container` for the others.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming the pod sandbox of a container.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI-O's annotation of the container kind (values as [`CRI_CONTAINER_TYPE`]'s).
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// CRI-O's annotation naming the pod sandbox of a container.
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
/// The namespace types a pod's containers join in its sandbox container (with the name of
/// the `/proc/<pid>/ns` file).
const POD_NAMESPACES: [(&str, &str); 3] = [("pid", "pid"), ("ipc", "ipc"), ("uts", "uts")];
/// Off a VM, a pod's containers also join the sandbox container's network namespace (the
/// agent's, or the one the sandbox container's spec made); in a VM the network namespace
/// is the guest's, shared by all.
const POD_NETWORK_NAMESPACE: (&str, &str) = ("network", "net");

/// Errors reading or translating a spec.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// config.json could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// config.json is not valid JSON or not a valid OCI spec.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The JSON path of the bad field (`.` for the document itself).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The rootfs named by `root.path` is missing.
    #[error("{path}: root.path: {rootfs} does not exist or is not a directory")]
    MissingRootfs {
        /// config.json.
        path: PathBuf,
        /// The resolved rootfs path.
        rootfs: PathBuf,
    },
}

/// A bundle's spec, validated against the OCI runtime schema.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The spec as JSON (every field kept).
    pub json: Value,
    /// The bundle directory.
    pub bundle: PathBuf,
}

impl BundleSpec {
    /// Reads and validates `BUNDLE/config.json`.
    pub fn load(bundle: &Path) -> Result<BundleSpec, OciError> {
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| OciError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, bundle)
    }

    /// Validates spec text of `bundle`.
    pub fn parse(text: &str, bundle: &Path) -> Result<BundleSpec, OciError> {
        let path = bundle.join("config.json");
        let invalid = |field: String, message: String| OciError::Invalid {
            path: path.clone(),
            field,
            message,
        };
        let json: Value = serde_json::from_str(text)
            .map_err(|e| invalid(".".into(), format!("invalid JSON: {e}")))?;
        let de = json.clone();
        serde_path_to_error::deserialize::<_, oci_spec::runtime::Spec>(de).map_err(|e| {
            let field = e.path().to_string();
            invalid(field, e.into_inner().to_string())
        })?;
        Ok(BundleSpec {
            json,
            bundle: bundle.to_path_buf(),
        })
    }

    /// The host path of the rootfs (`root.path` relative to the bundle).
    pub fn rootfs(&self) -> PathBuf {
        let p = self
            .json
            .pointer("/root/path")
            .and_then(Value::as_str)
            .unwrap_or("rootfs");
        self.bundle.join(p)
    }

    /// Checks that the rootfs exists.
    pub fn check_rootfs(&self) -> Result<(), OciError> {
        let rootfs = self.rootfs();
        if rootfs.is_dir() {
            Ok(())
        } else {
            Err(OciError::MissingRootfs {
                path: self.bundle.join("config.json"),
                rootfs,
            })
        }
    }

    /// An annotation's value.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.json.get("annotations")?.get(key)?.as_str()
    }

    /// Whether this is a CRI (containerd's or CRI-O's) pod's sandbox ("pause") container,
    /// whose namespaces the pod's other containers join.
    pub fn is_pod_sandbox(&self) -> bool {
        [CRI_CONTAINER_TYPE, CRIO_CONTAINER_TYPE]
            .iter()
            .any(|k| self.annotation(k) == Some("sandbox"))
    }

    /// `hostname`, when set.
    pub fn hostname(&self) -> Option<&str> {
        self.json
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
    }

    /// The path of the network namespace to join, when the spec names one.
    pub fn network_namespace_path(&self) -> Option<PathBuf> {
        namespaces(&self.json)?
            .iter()
            .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))?
            .get("path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// Whether `process.terminal` is set.
    pub fn terminal(&self) -> bool {
        self.json
            .pointer("/process/terminal")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

fn namespaces(spec: &Value) -> Option<&Vec<Value>> {
    spec.pointer("/linux/namespaces")?.as_array()
}

/// A host path the sandbox must share with a microVM guest before the container starts:
/// `host` is bind-mounted at `shared_rel` under the sandbox's shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBind {
    /// The host source.
    pub host: PathBuf,
    /// Path relative to the shared directory.
    pub shared_rel: PathBuf,
    /// Whether the mount asked for `ro`.
    pub read_only: bool,
}

/// A block volume of a microVM container: the host `source` goes to a virtio-blk slot,
/// and the agent mounts it (`fstype`, `options`) at `guest_path`, which the container's
/// spec binds at the mount's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockVolume {
    /// Index of the mount in the spec's `mounts` (for messages: `mounts[3]`).
    pub index: usize,
    /// The mount's destination in the container (for messages).
    pub destination: String,
    /// The host block device or image file.
    pub source: PathBuf,
    /// The filesystem on it.
    pub fstype: String,
    /// mount(8) options for the agent's mount (bind and propagation options removed).
    pub options: Vec<String>,
    /// Whether the mount asked for `ro` (the disk is then attached read-only).
    pub read_only: bool,
    /// Where the agent mounts it in the guest.
    pub guest_path: PathBuf,
}

impl BlockVolume {
    /// `mounts[INDEX]: DESTINATION`, how messages name the volume.
    pub fn describe(&self) -> String {
        format!("mounts[{}]: {}", self.index, self.destination)
    }
}

/// Inputs of [`translate`].
#[derive(Debug, Clone)]
pub struct Translation<'a> {
    /// The sandbox id.
    pub sandbox_id: &'a str,
    /// The container id.
    pub container_id: &'a str,
    /// Where the agent sees the sandbox's shared directory.
    pub agent_shared_dir: &'a Path,
    /// Whether the agent runs in a microVM (else on the host, `process` backend).
    pub vm: bool,
    /// The pid, as the agent sees it, of the pod's sandbox ("pause") container, whose pid,
    /// IPC and UTS namespaces a container joins when its spec names a path for them.
    pub pod_sandbox_pid: Option<i32>,
    /// Where the agent mounts block volumes (a microVM with virtio-blk slots); each volume
    /// gets `<dir>/<container>/<mount index>`. `None` leaves filesystem mounts of block
    /// devices and image files as they are (the `process` backend, where libcontainer
    /// mounts them on the host).
    pub block_volume_dir: Option<&'a Path>,
}

/// The translated spec and what the caller must share for it.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The spec for the agent.
    pub spec: Value,
    /// Host paths to bind into the shared directory (microVM only).
    pub binds: Vec<SharedBind>,
    /// Block volumes to attach and have the agent mount (microVM only).
    pub block_volumes: Vec<BlockVolume>,
    /// What was dropped or changed, for the log.
    pub notes: Vec<String>,
}

/// Filesystem types a block volume can carry: filesystems that live on a disk. Anything
/// else (bind, none, proc, tmpfs, overlay, ...) is not a block volume.
pub const DISK_FILESYSTEMS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "fat", "msdos", "exfat", "ntfs", "ntfs3",
    "f2fs", "squashfs", "erofs", "iso9660", "udf", "jfs", "reiserfs", "nilfs2", "hfs", "hfsplus",
    "minix",
];

/// Mount propagation options: they concern the container's bind, not the volume's mount.
const PROPAGATION: &[&str] = &[
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

/// Options that also restrict the container's bind of a volume.
const BIND_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "nosuid",
    "nodev",
    "noexec",
    "relatime",
    "noatime",
    "nodiratime",
    "strictatime",
];

/// Whether `path` is a host block device or a regular file (following symlinks): what a
/// virtio-blk slot can be backed by.
pub fn is_disk_source(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() || m.file_type().is_block_device())
}

/// The block volume `m` (the `index`th mount) is, if it is one: not a bind, a disk
/// filesystem type, and an absolute source that is a block device or regular file.
fn block_volume(m: &Value, index: usize, guest_path: PathBuf) -> Option<BlockVolume> {
    let fstype = m.get("type").and_then(Value::as_str)?;
    if !DISK_FILESYSTEMS.contains(&fstype) {
        return None;
    }
    let options: Vec<String> = m
        .get("options")
        .and_then(Value::as_array)
        .map(|o| {
            o.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if options.iter().any(|o| o == "bind" || o == "rbind") {
        return None;
    }
    let source = PathBuf::from(m.get("source").and_then(Value::as_str)?);
    if !source.is_absolute() || !is_disk_source(&source) {
        return None;
    }
    let (flags, _) = ember_sys::mount_options::split(&options);
    Some(BlockVolume {
        index,
        destination: m
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        source,
        fstype: fstype.to_string(),
        options: options
            .iter()
            .filter(|o| !PROPAGATION.contains(&o.as_str()))
            .cloned()
            .collect(),
        read_only: flags & libc::MS_RDONLY != 0,
        guest_path,
    })
}

/// The container's side of a block volume: a recursive bind of the agent's mount, with the
/// mount's access flags and propagation.
fn volume_bind_options(m: &Value) -> Value {
    let mut options = vec![Value::String("rbind".into())];
    if let Some(o) = m.get("options").and_then(Value::as_array) {
        options.extend(
            o.iter()
                .filter(|x| {
                    x.as_str()
                        .is_some_and(|x| BIND_FLAGS.contains(&x) || PROPAGATION.contains(&x))
                })
                .cloned(),
        );
    }
    Value::Array(options)
}

/// Where a container's rootfs lives, relative to the shared directory.
pub fn rootfs_rel(container_id: &str) -> PathBuf {
    PathBuf::from(container_id).join("rootfs")
}

/// Translates a validated spec for the agent (see the module docs).
pub fn translate(spec: &BundleSpec, t: &Translation) -> Translated {
    let mut json = spec.json.clone();
    let mut notes = Vec::new();
    let mut binds = Vec::new();
    let mut block_volumes = Vec::new();
    let agent_rootfs = t.agent_shared_dir.join(rootfs_rel(t.container_id));
    let root = json
        .as_object_mut()
        .expect("a validated spec is an object")
        .entry("root")
        .or_insert_with(|| Value::Object(Default::default()));
    root["path"] = Value::String(agent_rootfs.display().to_string());

    let linux = json
        .as_object_mut()
        .expect("object")
        .entry("linux")
        .or_insert_with(|| Value::Object(Default::default()));
    linux["cgroupsPath"] = Value::String(format!(
        "{}/{}",
        crate::cgroups::sandbox_parent(t.sandbox_id),
        t.container_id
    ));
    if let Some(nss) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        nss.retain_mut(|n| {
            let typ = n
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let joins = n
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| !p.is_empty());
            let pod_ns = POD_NAMESPACES
                .iter()
                .chain((!t.vm).then_some(&POD_NETWORK_NAMESPACE))
                .find(|(t, _)| *t == typ);
            if let (true, Some((_, file)), Some(pid)) = (joins, pod_ns, t.pod_sandbox_pid) {
                n["path"] = Value::String(format!("/proc/{pid}/ns/{file}"));
                notes.push(format!(
                    "linux.namespaces: joins the pod sandbox container's {typ} namespace"
                ));
                true
            } else if joins {
                notes.push(format!(
                    "linux.namespaces: {typ} namespace path dropped (the pod's {typ} namespace is the sandbox's)"
                ));
                false
            } else if t.vm && typ == "network" {
                notes.push("linux.namespaces: network dropped (the guest's network is the pod network)".into());
                false
            } else {
                true
            }
        });
    }
    if t.vm {
        if let Some(devs) = linux.as_object_mut().and_then(|l| l.remove("devices")) {
            if devs.as_array().is_some_and(|d| !d.is_empty()) {
                notes.push("linux.devices: host devices dropped (not present in the guest)".into());
            }
        }
        if json
            .as_object_mut()
            .and_then(|o| o.remove("hooks"))
            .is_some()
        {
            notes.push("hooks: dropped (host programs cannot run in the guest)".into());
        }
        if let Some(mounts) = json.get_mut("mounts").and_then(Value::as_array_mut) {
            for (i, m) in mounts.iter_mut().enumerate() {
                if let Some(dir) = t.block_volume_dir {
                    let guest_path = dir.join(t.container_id).join(i.to_string());
                    if let Some(v) = block_volume(m, i, guest_path) {
                        notes.push(format!(
                            "{}: {} ({}) is a block volume: attached over virtio-blk, mounted at {} in the guest{}",
                            v.describe(),
                            v.source.display(),
                            v.fstype,
                            v.guest_path.display(),
                            if v.read_only { ", read-only" } else { "" }
                        ));
                        m["options"] = volume_bind_options(m);
                        m["type"] = Value::String("bind".into());
                        m["source"] = Value::String(v.guest_path.display().to_string());
                        block_volumes.push(v);
                        continue;
                    }
                }
                let is_bind = m.get("type").and_then(Value::as_str) == Some("bind")
                    || m.get("options")
                        .and_then(Value::as_array)
                        .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
                let Some(src) = m.get("source").and_then(Value::as_str).map(PathBuf::from) else {
                    continue;
                };
                if !is_bind || !src.is_absolute() {
                    continue;
                }
                let read_only = m
                    .get("options")
                    .and_then(Value::as_array)
                    .is_some_and(|o| o.iter().any(|x| x == "ro"));
                let rel = PathBuf::from(t.container_id)
                    .join("mounts")
                    .join(i.to_string());
                m["source"] = Value::String(t.agent_shared_dir.join(&rel).display().to_string());
                binds.push(SharedBind {
                    host: src,
                    shared_rel: rel,
                    read_only,
                });
            }
        }
    }
    Translated {
        spec: json,
        binds,
        block_volumes,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> BundleSpec {
        BundleSpec::parse(&v.to_string(), Path::new("/b")).unwrap()
    }

    fn base() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "hostname": "h1",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts", "options": ["rbind", "ro"]}
            ],
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "linux": {
                "cgroupsPath": "/k8s/pod",
                "namespaces": [
                    {"type": "pid"}, {"type": "mount"}, {"type": "network"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"}
                ],
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
            }
        })
    }

    /// The inputs of a translation of container `c1` in sandbox `sb`, in a microVM (`vm`,
    /// shared dir `/run/ember/shared`) or on the host (shared dir under the state dir),
    /// without a pause container or block volumes.
    fn inputs(vm: bool) -> Translation<'static> {
        Translation {
            sandbox_id: "sb",
            container_id: "c1",
            agent_shared_dir: Path::new(if vm {
                "/run/ember/shared"
            } else {
                "/run/ember/sandboxes/sb/shared"
            }),
            vm,
            pod_sandbox_pid: None,
            block_volume_dir: None,
        }
    }

    /// The `type`s of a translated spec's namespaces, in order.
    fn namespace_types(spec: &Value) -> Vec<&str> {
        spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn invalid_json_and_bad_fields_are_named() {
        let e = BundleSpec::parse("{\"ociVersion\": ", Path::new("/b"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/b/config.json") && e.contains("invalid JSON"),
            "{e}"
        );
        let mut v = base();
        v["linux"]["namespaces"][0]["type"] = json!("bogus");
        let e = BundleSpec::parse(&v.to_string(), Path::new("/b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux.namespaces[0].type"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn process_backend_keeps_host_fields_and_drops_joined_namespaces() {
        let s = spec(base());
        assert_eq!(s.hostname(), Some("h1"));
        assert_eq!(s.rootfs(), PathBuf::from("/b/rootfs"));
        let t = translate(&s, &inputs(false));
        assert_eq!(
            t.spec["root"]["path"],
            "/run/ember/sandboxes/sb/shared/c1/rootfs"
        );
        assert_eq!(t.spec["linux"]["cgroupsPath"], "/ember/sb/c1");
        assert_eq!(namespace_types(&t.spec), ["pid", "mount", "network"]);
        assert!(t.spec.get("hooks").is_some());
        assert_eq!(t.spec["linux"]["devices"].as_array().unwrap().len(), 1);
        assert!(t.binds.is_empty());
        assert_eq!(t.spec["mounts"][1]["source"], "/var/lib/x/hosts");
    }

    #[test]
    fn pod_namespaces_are_the_sandbox_containers() {
        let mut v = base();
        v["linux"]["namespaces"] = json!([
            {"type": "pid", "path": "/proc/42/ns/pid"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"},
            {"type": "uts", "path": "/proc/42/ns/uts"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "mount"}
        ]);
        v["annotations"] = json!({CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod"});
        let s = spec(v);
        assert!(!s.is_pod_sandbox());
        for vm in [false, true] {
            let t = translate(
                &s,
                &Translation {
                    pod_sandbox_pid: Some(7),
                    ..inputs(vm)
                },
            );
            let mut want = json!([
                {"type": "pid", "path": "/proc/7/ns/pid"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"},
                {"type": "mount"}
            ]);
            if !vm {
                // Off a VM the pod's network namespace is the sandbox container's too.
                want.as_array_mut()
                    .unwrap()
                    .insert(3, json!({"type": "network", "path": "/proc/7/ns/net"}));
            }
            assert_eq!(t.spec["linux"]["namespaces"], want, "vm: {vm}");
        }
        // Without a known pause container, joined namespaces are dropped (the agent's).
        let t = translate(&s, &inputs(false));
        assert_eq!(t.spec["linux"]["namespaces"], json!([{"type": "mount"}]));
        let mut v = base();
        v["annotations"] = json!({CRI_CONTAINER_TYPE: "sandbox"});
        assert!(spec(v.clone()).is_pod_sandbox());
        v["annotations"] = json!({CRIO_CONTAINER_TYPE: "sandbox"});
        assert!(spec(v.clone()).is_pod_sandbox());
        v["annotations"] = json!({CRIO_CONTAINER_TYPE: "container"});
        assert!(!spec(v).is_pod_sandbox());
    }

    #[test]
    fn microvm_shares_binds_and_drops_host_only_fields() {
        let s = spec(base());
        let t = translate(
            &s,
            &Translation {
                block_volume_dir: Some(Path::new("/run/ember/storage")),
                ..inputs(true)
            },
        );
        assert!(t.spec.get("hooks").is_none());
        assert!(t.spec["linux"].get("devices").is_none());
        assert_eq!(namespace_types(&t.spec), ["pid", "mount"]);
        assert_eq!(
            t.binds,
            [SharedBind {
                host: "/var/lib/x/hosts".into(),
                shared_rel: "c1/mounts/1".into(),
                read_only: true
            }]
        );
        assert_eq!(
            t.spec["mounts"][1]["source"],
            "/run/ember/shared/c1/mounts/1"
        );
        assert_eq!(t.spec["mounts"][0]["source"], "proc");
        assert!(t.notes.len() >= 3, "{:?}", t.notes);
    }

    /// A spec with `base()`'s mounts plus `extra`, and a microVM translation of it.
    fn translate_vm(extra: Vec<Value>, volumes: Option<&Path>) -> Translated {
        let mut v = base();
        v["mounts"].as_array_mut().unwrap().extend(extra);
        translate(
            &spec(v),
            &Translation {
                block_volume_dir: volumes,
                ..inputs(true)
            },
        )
    }

    #[test]
    fn a_filesystem_on_an_image_file_becomes_a_block_volume_bound_into_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("data.ext4");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let t = translate_vm(
            vec![json!({
                "destination": "/data", "type": "ext4", "source": image,
                "options": ["ro", "nosuid", "rprivate", "noatime", "errors=remount-ro"]
            })],
            Some(Path::new("/run/ember/storage")),
        );
        assert_eq!(
            t.block_volumes,
            [BlockVolume {
                index: 2,
                destination: "/data".into(),
                source: image.clone(),
                fstype: "ext4".into(),
                options: vec![
                    "ro".into(),
                    "nosuid".into(),
                    "noatime".into(),
                    "errors=remount-ro".into()
                ],
                read_only: true,
                guest_path: "/run/ember/storage/c1/2".into(),
            }]
        );
        assert_eq!(t.block_volumes[0].describe(), "mounts[2]: /data");
        assert_eq!(
            t.spec["mounts"][2],
            json!({
                "destination": "/data", "type": "bind", "source": "/run/ember/storage/c1/2",
                "options": ["rbind", "ro", "nosuid", "rprivate", "noatime"]
            })
        );
        // Not also shared through the shared directory: only the hosts file is.
        assert_eq!(t.binds.len(), 1);
        assert_eq!(t.binds[0].host, PathBuf::from("/var/lib/x/hosts"));
        assert!(
            t.notes.iter().any(|n| n.contains("mounts[2]: /data")
                && n.contains("block volume")
                && n.contains("read-only")),
            "{:?}",
            t.notes
        );
        // Without `ro` the volume is writable.
        let t = translate_vm(
            vec![json!({"destination": "/w", "type": "xfs", "source": image})],
            Some(Path::new("/vol")),
        );
        assert!(!t.block_volumes[0].read_only);
        assert_eq!(t.spec["mounts"][2]["options"], json!(["rbind"]));
        assert_eq!(t.spec["mounts"][2]["source"], "/vol/c1/2");
    }

    #[test]
    fn a_host_block_device_is_a_block_volume_source() {
        // Any block device of the host will do; the translation only looks at its type.
        let dev = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| Path::new("/dev").join(e.file_name()))
            .find(|p| p.exists());
        let Some(dev) = dev else {
            ember_tests::skip(
                "a_host_block_device_is_a_block_volume_source",
                "no block device under /dev",
            );
            return;
        };
        assert!(is_disk_source(&dev), "{}", dev.display());
        assert!(
            !is_disk_source(Path::new("/dev/null")),
            "a character device"
        );
        assert!(!is_disk_source(Path::new("/")), "a directory");
        let t = translate_vm(
            vec![json!({"destination": "/d", "type": "ext4", "source": dev})],
            Some(Path::new("/run/ember/storage")),
        );
        assert_eq!(t.block_volumes.len(), 1);
        assert_eq!(t.block_volumes[0].source, dev);
    }

    #[test]
    fn binds_pseudo_filesystems_and_missing_sources_are_not_block_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("data.img");
        std::fs::write(&image, b"x").unwrap();
        let extra = vec![
            // A bind of an image file, even with a filesystem type.
            json!({"destination": "/a", "type": "ext4", "source": image, "options": ["rbind"]}),
            json!({"destination": "/b", "type": "bind", "source": image}),
            // Not disk filesystems.
            json!({"destination": "/c", "type": "tmpfs", "source": image}),
            json!({"destination": "/d", "type": "none", "source": image}),
            // Sources that are no disk.
            json!({"destination": "/e", "type": "ext4", "source": dir.path().join("gone")}),
            json!({"destination": "/f", "type": "ext4", "source": dir.path()}),
            json!({"destination": "/g", "type": "ext4", "source": "relative.img"}),
        ];
        let t = translate_vm(extra.clone(), Some(Path::new("/run/ember/storage")));
        assert!(t.block_volumes.is_empty(), "{:?}", t.block_volumes);
        // The two binds are shared as before; the rest pass through unchanged.
        assert_eq!(
            t.binds
                .iter()
                .map(|b| b.shared_rel.clone())
                .collect::<Vec<_>>(),
            [
                PathBuf::from("c1/mounts/1"),
                "c1/mounts/2".into(),
                "c1/mounts/3".into()
            ]
        );
        for (i, m) in extra.iter().enumerate().skip(2) {
            assert_eq!(&t.spec["mounts"][i + 2], m, "mounts[{}]", i + 2);
        }
        // Without a volume directory (process backend) a filesystem mount of an image
        // file stays as it is, for libcontainer to mount.
        let m = json!({"destination": "/data", "type": "ext4", "source": image, "options": ["ro"]});
        let t = translate_vm(vec![m.clone()], None);
        assert!(t.block_volumes.is_empty());
        assert_eq!(t.spec["mounts"][2], m);
        let mut v = base();
        v["mounts"].as_array_mut().unwrap().push(m.clone());
        let t = translate(&spec(v), &inputs(false));
        assert!(t.block_volumes.is_empty());
        assert_eq!(t.spec["mounts"][2], m);
    }
}
