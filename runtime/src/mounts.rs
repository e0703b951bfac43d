//! Host mounts a sandbox makes: binds into its shared directory, containerd's rootfs mounts,
//! and their safe removal (nothing is ever deleted through a mount that is still attached).
//!
//! A sandbox's shared directory is exported read-write to the guest, which is not trusted:
//! guest root can replace any directory in it with a symlink at any moment. Every mount into
//! it therefore goes through [`Beneath`]: the target is resolved with libpathrs beneath the
//! shared directory with no symlinks allowed ([`bind_beneath`], [`mount_all_beneath`]), and
//! the mount is attached to the resolved inode through its file descriptor, never to a path
//! that is looked up again later. [`remove_beneath`] unmounts and deletes the same way. The
//! path-based [`bind`], [`unmount_tree`] and [`remove_dir_safely`] are only for trees no
//! running guest can write (the state directory, or the shared directory once its VM has
//! stopped).

use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use pathrs::flags::{OpenFlags, ResolverFlags};

/// Errors mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) failed.
    #[error("cannot mount {source_desc} on {target} (type {fstype}): {errno}")]
    Mount {
        /// What was mounted.
        source_desc: String,
        /// Where.
        target: PathBuf,
        /// Filesystem type.
        fstype: String,
        /// Why.
        errno: nix::Error,
    },
    /// umount2(2) failed.
    #[error("cannot unmount {target}: {errno}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Why.
        errno: nix::Error,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A directory still had mounts under it after unmounting.
    #[error("{0}: still has mounts below it; not removing it")]
    StillMounted(PathBuf),
    /// A path inside a guest-writable tree could not be resolved safely: it (or one of its
    /// parents) is a symlink, is missing, or was swapped while it was being resolved.
    #[error(
        "{op} {path}: cannot resolve it beneath {root} without following a symlink or \
         leaving that directory (the guest can write there; nothing was mounted or removed \
         outside it): {source}"
    )]
    Beneath {
        /// What was being done (`create directory`, `create file`, `resolve`, ...).
        op: &'static str,
        /// The full path that was asked for.
        path: PathBuf,
        /// The guest-writable directory it must stay beneath.
        root: PathBuf,
        /// libpathrs' reason.
        source: pathrs::error::Error,
    },
    /// A bind target for a file source exists but is not a regular file (the guest may have
    /// planted a directory, device node, FIFO or symlink there).
    #[error(
        "{0}: the bind target exists but is not a regular file; refusing to mount on it \
         (remove it, or check what wrote into the shared directory)"
    )]
    NotAFile(PathBuf),
    /// A mount point below a tree being removed sits across a mount boundary the removal
    /// must not cross, or could not be reached safely.
    #[error("{path}: {why}; not removing it")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// One mount as containerd describes a container rootfs (`type`, `source`, `options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Filesystem type (`overlay`, `bind`, ...).
    pub fstype: String,
    /// Source (device, directory or `overlay`).
    pub source: String,
    /// mount(8)-style options.
    pub options: Vec<String>,
}

/// Mount points currently at or below `path` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(mounts) = ember_sys::mountinfo::read(Path::new("/proc/self/mountinfo")) else {
        return Vec::new();
    };
    ember_sys::mountinfo::mount_points_under(&mounts, path)
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// Detaches every mount at or below `path`, deepest first. Nothing mounted is fine.
///
/// Path-based: `UMOUNT_NOFOLLOW` keeps a symlink in the last component from being
/// followed, but symlinks in parent directories still are. Use it only on trees no running
/// guest can write; inside a live sandbox's shared directory use [`remove_beneath`].
pub fn unmount_tree(path: &Path) -> Result<(), MountError> {
    for m in mounts_under(path) {
        match umount2(&m, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(errno) => return Err(MountError::Unmount { target: m, errno }),
        }
    }
    Ok(())
}

/// Removes a directory tree, but only after detaching every mount below it, so a bind
/// mount of user data is never deleted through. A missing directory is fine. Path-based
/// like [`unmount_tree`]: for trees no running guest can write (see [`remove_beneath`]).
pub fn remove_dir_safely(path: &Path) -> Result<(), MountError> {
    unmount_tree(path)?;
    if !mounts_under(path).is_empty() {
        return Err(MountError::StillMounted(path.to_path_buf()));
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(MountError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Bind-mounts `source` on `target` (creating `target` as a file or directory like the
/// source), read-only when asked. Path-based, following symlinks: only for targets no guest
/// can write; inside a sandbox's shared directory use [`bind_beneath`].
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MountError::Io { path: p, source }
    };
    let meta = std::fs::metadata(source).map_err(io(source))?;
    if meta.is_dir() {
        std::fs::create_dir_all(target).map_err(io(target))?;
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if !target.exists() {
            std::fs::write(target, b"").map_err(io(target))?;
        }
    }
    let err = |errno| MountError::Mount {
        source_desc: source.display().to_string(),
        target: target.to_path_buf(),
        fstype: "bind".into(),
        errno,
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err)?;
    if read_only {
        remount_read_only(&source.display().to_string(), target, target)?;
    }
    Ok(())
}

/// Makes the bind mount at `target` read-only: a bind mount ignores MS_RDONLY until it is
/// remounted. `desc` names the target in errors (`target` may be a `/proc/self/fd` path).
fn remount_read_only(source_desc: &str, target: &Path, desc: &Path) -> Result<(), MountError> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|errno| MountError::Mount {
        source_desc: source_desc.to_string(),
        target: desc.to_path_buf(),
        fstype: "bind (read-only remount)".into(),
        errno,
    })
}

/// The size of the tmpfs a sandbox's shared directory is (`size=`): the guest can write
/// into the share's root through virtio-fs, and without a bound that would be host memory
/// (the state dir is under `/run`). Only directories and mount points live there; the
/// containers' files are in the mounts made below it.
pub const SHARE_ROOT_SIZE: &str = "1m";
/// The inode bound of that tmpfs (`nr_inodes=`): directories and mount points of every
/// container of the pod.
pub const SHARE_ROOT_INODES: u32 = 16_384;

/// Makes `dir` (a sandbox's shared directory) a mount point of its own: a small tmpfs
/// ([`SHARE_ROOT_SIZE`], [`SHARE_ROOT_INODES`], `nosuid,nodev`, the directory's mode), so
/// that a guest writing into the share's root through virtio-fs is bounded and cannot make
/// a usable device node or setuid file there; with shared propagation, so that mounts made
/// below it later also appear in namespaces that were copied from this one as slaves
/// (the `process` backend's agent).
pub fn make_shared_mount_point(dir: &Path) -> Result<(), MountError> {
    let mode = std::fs::metadata(dir)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o700);
    let options = format!("size={SHARE_ROOT_SIZE},nr_inodes={SHARE_ROOT_INODES},mode={mode:o}");
    mount(
        Some("ember-shared"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| MountError::Mount {
        source_desc: format!("tmpfs ({options})"),
        target: dir.to_path_buf(),
        fstype: "tmpfs".into(),
        errno,
    })?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|errno| MountError::Mount {
        source_desc: "(propagation)".into(),
        target: dir.to_path_buf(),
        fstype: "shared".into(),
        errno,
    })
}

/// A guest-writable directory (a sandbox's shared directory), opened once as a libpathrs
/// [`pathrs::Root`] that resolves paths beneath it without ever following a symlink or
/// leaving it. Mount targets inside it are reached only through this.
#[derive(Debug)]
pub struct Beneath {
    root: pathrs::Root,
    path: PathBuf,
}

impl Beneath {
    /// Opens `dir`, which the host created and the guest cannot replace (the guest writes
    /// below it, not the directory itself). Open it after `dir` has become a mount point of
    /// its own (see [`make_shared_mount_point`]), so that mounts made below it are made in
    /// that mount and seen by whoever shares it.
    pub fn open(dir: &Path) -> Result<Self, MountError> {
        let root = pathrs::Root::open(dir)
            .map_err(|source| MountError::Beneath {
                op: "open",
                path: dir.to_path_buf(),
                root: dir.to_path_buf(),
                source,
            })?
            .with_resolver_flags(ResolverFlags::NO_SYMLINKS);
        Ok(Beneath {
            root,
            path: dir.to_path_buf(),
        })
    }

    /// The directory's path (for messages and for matching `/proc/self/mountinfo`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, op: &'static str, rel: &Path) -> impl FnOnce(pathrs::error::Error) -> MountError {
        let path = self.path.join(rel);
        let root = self.path.clone();
        move |source| MountError::Beneath {
            op,
            path,
            root,
            source,
        }
    }

    /// Creates `rel` and its parents as directories (mode 0755) and returns an `O_PATH`
    /// handle to the directory that was resolved.
    fn mkdir_all(&self, rel: &Path) -> Result<pathrs::Handle, MountError> {
        self.root
            .mkdir_all(rel, &std::fs::Permissions::from_mode(0o755))
            .map_err(self.err("create directory", rel))
    }

    /// Creates `rel` as an empty regular file (its parents as directories) unless it exists,
    /// and returns a handle to it. An existing `rel` must be a regular file, so that a
    /// planted device node or FIFO is never opened or mounted on.
    fn file(&self, rel: &Path) -> Result<OwnedFd, MountError> {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.mkdir_all(parent)?;
        }
        let flags =
            OpenFlags::O_WRONLY | OpenFlags::O_EXCL | OpenFlags::O_NOFOLLOW | OpenFlags::O_CLOEXEC;
        match self
            .root
            .create_file(rel, flags, &std::fs::Permissions::from_mode(0o644))
        {
            Ok(f) => Ok(f.into()),
            Err(e) if e.kind() == pathrs::error::ErrorKind::OsError(Some(libc::EEXIST)) => {
                let h = self
                    .root
                    .resolve_nofollow(rel)
                    .map_err(self.err("resolve", rel))?;
                let st = rustix::fs::fstat(&h).map_err(|e| MountError::Io {
                    path: self.path.join(rel),
                    source: e.into(),
                })?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    != rustix::fs::FileType::RegularFile
                {
                    return Err(MountError::NotAFile(self.path.join(rel)));
                }
                Ok(h.as_fd()
                    .try_clone_to_owned()
                    .map_err(|source| MountError::Io {
                        path: self.path.join(rel),
                        source,
                    })?)
            }
            Err(e) => Err(self.err("create file", rel)(e)),
        }
    }
}

/// The `/proc/self/fd/<n>` path of an fd: mount(2) and umount2(2) given this path act on the
/// inode the fd refers to (the kernel jumps to it), not on a path looked up again.
fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Attaches a copy of the mount tree at `source` (recursively when `recursive`) onto the
/// inode `target` refers to, read-only when asked: `open_tree(OPEN_TREE_CLONE)` then
/// `move_mount` onto the target fd, so the mount lands exactly where `target` was resolved.
fn attach_bind(
    source: &Path,
    target: BorrowedFd<'_>,
    target_desc: &Path,
    recursive: bool,
    read_only: bool,
) -> Result<(), MountError> {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags};
    let err = |errno: rustix::io::Errno| MountError::Mount {
        source_desc: source.display().to_string(),
        target: target_desc.to_path_buf(),
        fstype: "bind".into(),
        errno: nix::Error::from_raw(errno.raw_os_error()),
    };
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags).map_err(err)?;
    if read_only {
        // Read-only all the way down: the detached copy, submounts included, before it is
        // attached (a bind remount would leave the submounts writable).
        set_read_only_recursively(tree.as_fd()).map_err(|errno| MountError::Mount {
            source_desc: source.display().to_string(),
            target: target_desc.to_path_buf(),
            fstype: "bind (mount_setattr MOUNT_ATTR_RDONLY, recursive)".into(),
            errno,
        })?;
    }
    rustix::mount::move_mount(
        &tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(err)?;
    Ok(())
}

/// `mount_setattr(2)` with `AT_RECURSIVE` and `MOUNT_ATTR_RDONLY` on the mount tree `tree`
/// (Linux 5.12+). Neither rustix nor nix wraps this call yet; libc has its number and
/// struct.
fn set_read_only_recursively(tree: BorrowedFd<'_>) -> Result<(), nix::Error> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a valid empty C string, `attr` is a live mount_attr and its
    // size is passed with it; the kernel only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(nix::Error::last())
    }
}

/// Bind-mounts the trusted host path `source` (recursively) on `rel` beneath the
/// guest-writable `root`, creating `rel` as a directory or an empty file like the source,
/// read-only when asked. `rel` is resolved without following symlinks and without leaving
/// `root`; the bind is attached to the inode that was resolved, so a guest that swaps a
/// parent of `rel` for a symlink gets an error, never a mount elsewhere.
pub fn bind_beneath(
    root: &Beneath,
    rel: &Path,
    source: &Path,
    read_only: bool,
) -> Result<(), MountError> {
    let meta = std::fs::metadata(source).map_err(|e| MountError::Io {
        path: source.to_path_buf(),
        source: e,
    })?;
    let desc = root.path.join(rel);
    if meta.is_dir() {
        let h = root.mkdir_all(rel)?;
        attach_bind(source, h.as_fd(), &desc, true, read_only)
    } else {
        let fd = root.file(rel)?;
        attach_bind(source, fd.as_fd(), &desc, true, read_only)
    }
}

/// Mounts containerd's rootfs mounts in order on the directory `rel` beneath the
/// guest-writable `root` (created if missing, resolved as [`bind_beneath`] does). Every
/// mount is made on the resolved directory's fd, stacking on the previous one. Fails naming
/// the mount that failed.
pub fn mount_all_beneath(
    root: &Beneath,
    mounts: &[MountSpec],
    rel: &Path,
) -> Result<(), MountError> {
    let target = root.mkdir_all(rel)?;
    let desc = root.path.join(rel);
    let fd_target = fd_path(target.as_fd());
    for m in mounts {
        let (flags, data) = parse_options(&m.options);
        if m.fstype == "bind" || flags.contains(MsFlags::MS_BIND) {
            attach_bind(
                Path::new(&m.source),
                target.as_fd(),
                &desc,
                flags.contains(MsFlags::MS_REC),
                flags.contains(MsFlags::MS_RDONLY),
            )?;
            continue;
        }
        mount(
            Some(m.source.as_str()),
            &fd_target,
            Some(m.fstype.as_str()),
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|errno| MountError::Mount {
            source_desc: m.source.clone(),
            target: desc.clone(),
            fstype: m.fstype.clone(),
            errno,
        })?;
    }
    Ok(())
}

/// How often [`remove_beneath`] re-reads the mount table when mounts keep appearing below
/// the tree (a guest moving mount points around inside the shared directory).
const UNMOUNT_ROUNDS: usize = 8;

/// Unmounts everything at or below `rel` beneath the guest-writable `root`, then deletes
/// `rel`. A missing `rel` is fine.
///
/// Each mount point listed in `/proc/self/mountinfo` is resolved beneath `root` with no
/// symlinks and detached through the resolved fd, so a swapped parent makes the unmount
/// fail instead of detaching a host mount of the guest's choosing. The deletion walks by
/// fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS)` and
/// `unlinkat`, so it never crosses into a mount (a bind of host data) or follows a symlink
/// out of the tree, even if the guest moves a mount point below `rel` after the unmount.
///
/// What remains racy: the guest can rename a mount point's parent elsewhere inside the
/// shared directory between our reading mountinfo and resolving it; that mount is then not
/// found under `rel` (or cannot be resolved, and the call fails with the path named) and
/// stays attached until the whole shared directory is unmounted when the sandbox is
/// destroyed. It can never make us unmount or delete anything outside `root`.
pub fn remove_beneath(root: &Beneath, rel: &Path) -> Result<(), MountError> {
    let full = root.path.join(rel);
    for _ in 0..UNMOUNT_ROUNDS {
        let found = mounts_under(&full);
        if found.is_empty() {
            break;
        }
        for m in found {
            let Ok(mrel) = m.strip_prefix(&root.path) else {
                continue;
            };
            let h = match root.root.resolve_nofollow(mrel) {
                Ok(h) => h,
                // Moved away since mountinfo was read: the next round sees where it went.
                Err(e) if e.kind() == pathrs::error::ErrorKind::OsError(Some(libc::ENOENT)) => {
                    continue
                }
                Err(e) => return Err(root.err("resolve mount point", mrel)(e)),
            };
            match umount2(&fd_path(h.as_fd()), MntFlags::MNT_DETACH) {
                // EINVAL: what was resolved is not (or no longer) the root of a mount.
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(errno) => return Err(MountError::Unmount { target: m, errno }),
            }
        }
    }
    if !mounts_under(&full).is_empty() {
        return Err(MountError::StillMounted(full));
    }
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => {
            return Err(MountError::Unsafe {
                path: full,
                why: "not a path below the shared directory".into(),
            })
        }
    };
    if parent.as_os_str().is_empty() {
        return remove_at(root.root.as_fd(), Path::new(name), &full);
    }
    let parent_h = match root.root.resolve(parent) {
        Ok(h) => h,
        Err(e) if e.kind() == pathrs::error::ErrorKind::OsError(Some(libc::ENOENT)) => {
            return Ok(())
        }
        Err(e) => return Err(root.err("resolve", parent)(e)),
    };
    remove_at(parent_h.as_fd(), Path::new(name), &full)
}

/// Opens the directory `name` in `dir` for reading, refusing symlinks, `..` and mount
/// crossings.
fn open_dir_no_xdev(dir: BorrowedFd<'_>, name: &Path) -> nix::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_XDEV
                | ResolveFlag::RESOLVE_NO_SYMLINKS,
        );
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), name, how)?;
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Deletes `name` in `dir` and everything below it by fd, never crossing a mount
/// boundary (`full` is its path, for messages).
fn remove_at(dir: BorrowedFd<'_>, name: &Path, full: &Path) -> Result<(), MountError> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let sub = match open_dir_no_xdev(dir, name) {
        Ok(fd) => fd,
        Err(nix::Error::ENOENT) => return Ok(()),
        // A file, or a symlink: unlink the entry itself (a file that is a mount point
        // fails with EBUSY).
        Err(nix::Error::ENOTDIR) | Err(nix::Error::ELOOP) => {
            return match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
                Err(e) => Err(MountError::Io {
                    path: full.to_path_buf(),
                    source: e.into(),
                }),
            };
        }
        Err(nix::Error::EXDEV) => {
            return Err(MountError::Unsafe {
                path: full.to_path_buf(),
                why: "a mount point (appeared after unmounting)".into(),
            })
        }
        Err(e) => {
            return Err(MountError::Io {
                path: full.to_path_buf(),
                source: e.into(),
            })
        }
    };
    let names: Vec<std::ffi::OsString> = {
        let dup = sub.try_clone().map_err(|source| MountError::Io {
            path: full.to_path_buf(),
            source,
        })?;
        let mut d =
            nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(dup)).map_err(|e| {
                MountError::Io {
                    path: full.to_path_buf(),
                    source: e.into(),
                }
            })?;
        d.iter()
            .filter_map(Result::ok)
            .map(|e| {
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                    e.file_name().to_bytes(),
                )
                .to_os_string()
            })
            .filter(|n| n != "." && n != "..")
            .collect()
    };
    for n in names {
        remove_at(sub.as_fd(), Path::new(&n), &full.join(&n))?;
    }
    match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(MountError::Io {
            path: full.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Splits mount(8)-style options into flags and the data string
/// ([`ember_sys::mount_options::split`], which the agent's storages use too).
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let (flags, data) = ember_sys::mount_options::split(options);
    (MsFlags::from_bits_truncate(flags), data)
}

/// Mounts containerd's rootfs mounts on `target` in order (the usual case is one overlay or
/// one bind mount). Fails naming the mount that failed. Path-based, following symlinks:
/// only for targets no guest can write; inside a sandbox's shared directory use
/// [`mount_all_beneath`].
pub fn mount_all(mounts: &[MountSpec], target: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|source| MountError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    for m in mounts {
        let (mut flags, data) = parse_options(&m.options);
        let fstype = if m.fstype == "bind" {
            flags |= MsFlags::MS_BIND;
            None
        } else {
            Some(m.fstype.as_str())
        };
        let ro = flags.contains(MsFlags::MS_RDONLY) && flags.contains(MsFlags::MS_BIND);
        mount(
            Some(m.source.as_str()),
            target,
            fstype,
            if ro {
                flags - MsFlags::MS_RDONLY
            } else {
                flags
            },
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|errno| MountError::Mount {
            source_desc: m.source.clone(),
            target: target.to_path_buf(),
            fstype: m.fstype.clone(),
            errno,
        })?;
        if ro {
            remount_read_only(&m.source, target, target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_root_is_a_small_tmpfs_without_devices_or_setuid() {
        if !ember_tests::require_root(
            "the_share_root_is_a_small_tmpfs_without_devices_or_setuid",
            "mounts",
        ) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o710)).unwrap();
        make_shared_mount_point(&shared).unwrap();
        let mounts = ember_sys::mountinfo::read(Path::new("/proc/self/mountinfo")).unwrap();
        let m = mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == shared)
            .expect("the share root is a mount point");
        let flags: Vec<&str> = m.options.split(',').collect();
        let data = m.super_options.clone();
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
        // A guest filling the share root runs out of room at the bound.
        let big = std::fs::write(shared.join("fill"), vec![0u8; 2 << 20]);
        let _ = std::fs::remove_file(shared.join("fill"));
        let small = std::fs::write(shared.join("small"), b"x");
        unmount_tree(&shared).unwrap();
        assert_eq!(m.fstype, "tmpfs");
        assert!(
            flags.contains(&"nosuid") && flags.contains(&"nodev"),
            "{flags:?}"
        );
        assert!(data.contains("size=1024k"), "{data}");
        assert_eq!(mode, 0o710, "the directory's mode is kept");
        let e = big.expect_err("2 MiB fit in the share root");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        small.unwrap();
        assert!(!is_mount_point(&shared));
    }

    #[test]
    fn bind_and_safe_removal() {
        if !ember_tests::require_root("bind_and_safe_removal", "mounts") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("precious"), b"x").unwrap();
        let state = tmp.path().join("state");
        let target = state.join("shared/c1/rootfs");
        bind(&data, &target, true).unwrap();
        assert!(is_mount_point(&target));
        assert!(
            std::fs::write(target.join("new"), b"y").is_err(),
            "read-only bind"
        );
        remove_dir_safely(&state).unwrap();
        assert!(!state.exists());
        assert!(
            data.join("precious").exists(),
            "removal must never delete through a bind mount"
        );
    }

    /// Unmounts everything under a test's temp dir before the dir itself is deleted, so a
    /// failing test never deletes through (or leaks) a mount.
    struct Unmounter(PathBuf);

    impl Drop for Unmounter {
        fn drop(&mut self) {
            let _ = unmount_tree(&self.0);
        }
    }

    #[test]
    fn beneath_binds_mounts_and_removes() {
        if !ember_tests::require_root("beneath_binds_mounts_and_removes", "mounts") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _guard = Unmounter(tmp.path().to_path_buf());
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("precious"), b"x").unwrap();
        // A writable submount inside the source: a read-only bind must cover it too.
        std::fs::create_dir(data.join("sub")).unwrap();
        mount(
            Some("tmpfs"),
            &data.join("sub"),
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(data.join("sub/writable"), b"w").unwrap();
        let file = tmp.path().join("hosts");
        std::fs::write(&file, b"127.0.0.1 localhost\n").unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        make_shared_mount_point(&shared).unwrap();
        let root = Beneath::open(&shared).unwrap();

        bind_beneath(&root, Path::new("c1/mounts/0"), &data, true).unwrap();
        let target = shared.join("c1/mounts/0");
        assert!(is_mount_point(&target));
        assert!(target.join("precious").exists());
        assert!(
            std::fs::write(target.join("new"), b"y").is_err(),
            "read-only bind"
        );
        assert!(target.join("sub/writable").exists(), "submount not bound");
        let e = std::fs::write(target.join("sub/new"), b"y").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "a submount of a read-only bind is writable"
        );
        // The source's own submount stays writable.
        std::fs::write(data.join("sub/still"), b"y").unwrap();
        bind_beneath(&root, Path::new("c1/mounts/1"), &file, false).unwrap();
        assert_eq!(
            std::fs::read(shared.join("c1/mounts/1")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        let spec = MountSpec {
            fstype: "bind".into(),
            source: data.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
        };
        mount_all_beneath(&root, &[spec], Path::new("c1/rootfs")).unwrap();
        assert!(shared.join("c1/rootfs/precious").exists());
        assert!(std::fs::write(shared.join("c1/rootfs/new"), b"y").is_err());

        // A planted device-like target (a FIFO) for a file bind is refused, not opened.
        std::fs::create_dir_all(shared.join("c2")).unwrap();
        nix::unistd::mkfifo(&shared.join("c2/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = bind_beneath(&root, Path::new("c2/fifo"), &file, false).unwrap_err();
        assert!(matches!(e, MountError::NotAFile(_)), "{e}");
        // A symlinked parent is refused, naming the path.
        std::os::unix::fs::symlink(&data, shared.join("c2/link")).unwrap();
        let e = bind_beneath(&root, Path::new("c2/link/x"), &data, false).unwrap_err();
        assert!(e.to_string().contains("c2/link/x"), "{e}");
        assert!(!data.join("x").exists());

        remove_beneath(&root, Path::new("c1")).unwrap();
        remove_beneath(&root, Path::new("c2")).unwrap();
        assert!(!shared.join("c1").exists() && !shared.join("c2").exists());
        assert!(mounts_under(&shared.join("c1")).is_empty());
        assert!(
            data.join("precious").exists(),
            "never deleted through a bind"
        );
        unmount_tree(&shared).unwrap();
    }

    /// CVE-2020-2026's class: while the host creates and binds `shared/c1/mounts/0`, a
    /// "guest" thread keeps exchanging `shared/c1` and `shared/c1/mounts` with symlinks to a
    /// victim directory. The victim must never be mounted on or written to; the race may
    /// only turn a create or a removal into a clean error.
    #[test]
    fn bind_beneath_never_follows_a_swapped_parent() {
        use nix::fcntl::{renameat2, RenameFlags};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        if !ember_tests::require_root("bind_beneath_never_follows_a_swapped_parent", "mounts") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let _guard = Unmounter(tmp.path().to_path_buf());
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("sentinel"), b"v").unwrap();
        let source = tmp.path().join("source");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("payload"), b"p").unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        make_shared_mount_point(&shared).unwrap();
        std::fs::create_dir_all(shared.join("c1/mounts")).unwrap();
        // Symlinks the "guest" swaps in, pointing at the victim.
        std::os::unix::fs::symlink(&victim, shared.join("evil-c1")).unwrap();
        std::os::unix::fs::symlink(&victim, shared.join("c1/evil-mounts")).unwrap();
        let root = Beneath::open(&shared).unwrap();

        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let swaps = std::sync::Arc::new(AtomicUsize::new(0));
        let racer = {
            let (stop, swaps, shared) = (stop.clone(), swaps.clone(), shared.clone());
            std::thread::spawn(move || {
                let pairs = [
                    (shared.join("c1"), shared.join("evil-c1")),
                    (shared.join("c1/mounts"), shared.join("c1/evil-mounts")),
                ];
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (a, b) = &pairs[i % 2];
                    // Swap the symlink in, hold it briefly, swap the directory back.
                    if renameat2(None, a, None, b, RenameFlags::RENAME_EXCHANGE).is_ok() {
                        for _ in 0..(i % 64) {
                            std::hint::spin_loop();
                        }
                        renameat2(None, a, None, b, RenameFlags::RENAME_EXCHANGE)
                            .expect("swap back");
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                    i = i.wrapping_add(1);
                }
            })
        };

        let check_victim = |cycle: usize| {
            assert!(
                mounts_under(&victim).is_empty(),
                "cycle {cycle}: the victim was mounted on"
            );
            let entries: Vec<_> = std::fs::read_dir(&victim)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                entries,
                ["sentinel"],
                "cycle {cycle}: a file appeared in the victim"
            );
            for m in mounts_under(tmp.path()) {
                assert!(
                    m.starts_with(&shared),
                    "cycle {cycle}: a mount outside shared: {m:?}"
                );
            }
        };
        let rel = Path::new("c1/mounts/0");
        let (mut bound, mut refused, mut remove_retries) = (0, 0, 0);
        let started = std::time::Instant::now();
        for cycle in 0..1000 {
            match bind_beneath(&root, rel, &source, false) {
                Ok(()) => bound += 1,
                Err(e) => {
                    // A clean refusal naming the target, never a mount elsewhere.
                    let msg = e.to_string();
                    assert!(msg.contains("c1"), "cycle {cycle}: unhelpful error: {msg}");
                    refused += 1;
                }
            }
            check_victim(cycle);
            let mut tries = 0;
            while let Err(e) = remove_beneath(&root, rel) {
                tries += 1;
                assert!(tries < 10_000, "cycle {cycle}: removal keeps failing: {e}");
                std::thread::yield_now();
            }
            remove_retries += tries;
            check_victim(cycle);
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        remove_beneath(&root, Path::new("c1")).unwrap();
        assert!(!shared.join("c1").exists());
        check_victim(1000);
        assert!(mounts_under(&shared.join("c1")).is_empty());
        assert!(
            source.join("payload").exists(),
            "never deleted through a bind"
        );
        eprintln!(
            "1000 cycles in {:?}: {bound} bound, {refused} refused by the race, \
             {remove_retries} removal retries, {} swaps",
            started.elapsed(),
            swaps.load(Ordering::Relaxed)
        );
        assert!(bound > 0, "no bind ever succeeded");
        assert!(swaps.load(Ordering::Relaxed) > 0, "the racer never swapped");
        unmount_tree(&shared).unwrap();
    }
}
