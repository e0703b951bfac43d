//! The guest image: `ember-agent` as `/init` (and `/sbin/init` linking to it), the
//! shared libraries it loads (copied to the paths the dynamic loader reports), the
//! directories the agent mounts on, and with `--debug` a static busybox; written as a
//! newc initramfs or an ext4 image.

use crate::cpio::{self, CpioError};
use crate::ext4::{self, Ext4Error};
use crate::libs::{self, LibsError};
use crate::tools::{self, ToolError};
use crate::tree::{Tree, TreeError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Directories the agent mounts file systems on as PID 1 (`/dev` devtmpfs, `/proc`,
/// `/sys`, `/run` and `/tmp` tmpfs), with their modes.
pub const MOUNT_POINTS: &[(&str, u32)] = &[
    ("/dev", 0o755),
    ("/proc", 0o555),
    ("/run", 0o755),
    ("/sys", 0o555),
    ("/tmp", 0o1777),
];

/// Where the kernel looks for init on a disk root (it runs `/init` only from an
/// initramfs): a symlink to `/init`, so the ext4 image boots without `init=/init`.
pub const SBIN_INIT: (&str, &str) = ("/sbin/init", "/init");

/// The timestamp of every entry (the epoch), so images do not depend on build time.
pub const MTIME: u32 = 0;

/// File name of the initramfs in the output directory.
pub const CPIO_NAME: &str = "initramfs.cpio";
/// File name of the ext4 image in the output directory.
pub const EXT4_NAME: &str = "rootfs.ext4";

/// Output format of `image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A newc cpio archive the kernel unpacks as its initramfs.
    Cpio,
    /// An ext4 file system image for a virtio-blk root disk.
    Ext4,
}

impl Format {
    /// The output file name for this format.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Cpio => CPIO_NAME,
            Format::Ext4 => EXT4_NAME,
        }
    }
}

/// Errors from building the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host tool is missing.
    #[error(transparent)]
    Tools(#[from] ToolError),
    /// Library resolution failed.
    #[error(transparent)]
    Libs(#[from] LibsError),
    /// The tree could not be assembled.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Writing the cpio failed.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// Writing the ext4 image failed.
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// busybox did not list its applets.
    #[error("`{busybox} --list` failed; is it busybox? (apt-get install busybox-static)")]
    Busybox {
        /// The busybox binary.
        busybox: PathBuf,
    },
}

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The agent binary, installed as `/init`.
    pub agent: PathBuf,
    /// A busybox binary to add as `/bin/busybox` with its applets as symlinks
    /// (`--debug`), or `None`.
    pub busybox: Option<PathBuf>,
}

/// Assembles the guest root for `spec`.
pub fn assemble(spec: &ImageSpec) -> Result<Tree, ImageError> {
    let mut tree = Tree::new();
    for (dir, mode) in MOUNT_POINTS {
        tree.add_dir(dir, *mode)?;
    }
    tree.add_file("/init", &spec.agent, 0o755)?;
    tree.add_symlink(SBIN_INIT.0, SBIN_INIT.1)?;
    add_libraries(&mut tree, &spec.agent)?;
    if let Some(busybox) = &spec.busybox {
        tree.add_file("/bin/busybox", busybox, 0o755)?;
        add_libraries(&mut tree, busybox)?;
        for applet in busybox_applets(busybox)? {
            if applet != "busybox" {
                tree.add_symlink(&format!("/bin/{applet}"), "busybox")?;
            }
        }
    }
    Ok(tree)
}

/// Adds every shared library `binary` loads, at the path the loader reports, as a
/// regular file holding the resolved library (symlinks on the host are followed, so
/// the guest needs no link farm).
fn add_libraries(tree: &mut Tree, binary: &Path) -> Result<(), ImageError> {
    for lib in libs::shared_libraries(binary)? {
        let resolved = std::fs::canonicalize(&lib).map_err(|source| ImageError::Io {
            path: lib.clone(),
            source,
        })?;
        tree.add_file(&lib.to_string_lossy(), &resolved, 0o755)?;
    }
    Ok(())
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|source| ImageError::Io {
            path: busybox.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(ImageError::Busybox {
            busybox: busybox.to_path_buf(),
        });
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// Finds busybox for `--debug`, preferring the static build of `busybox-static`.
pub fn find_busybox() -> Result<PathBuf, ImageError> {
    tools::require(tools::DEBUG_TOOLS)?;
    Ok(tools::find("busybox").expect("checked above"))
}

/// Checks the host tools `format` needs.
pub fn require_tools(format: Format) -> Result<(), ImageError> {
    tools::require(tools::IMAGE_TOOLS)?;
    if format == Format::Ext4 {
        tools::require(tools::EXT4_TOOLS)?;
    }
    Ok(())
}

/// Writes `tree` in `format` into `out_dir`; returns the file written and its size.
pub fn write(tree: &Tree, format: Format, out_dir: &Path) -> Result<(PathBuf, u64), ImageError> {
    std::fs::create_dir_all(out_dir).map_err(|source| ImageError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let path = out_dir.join(format.file_name());
    let io = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    match format {
        Format::Cpio => {
            // Write next to the target and rename, so a failed build never leaves a
            // truncated initramfs where the runtime looks for one.
            let tmp = out_dir.join(format!(".{CPIO_NAME}.tmp-{}", std::process::id()));
            let file = std::fs::File::create(&tmp).map_err(io)?;
            cpio::write_tree(tree, std::io::BufWriter::new(file), MTIME)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        Format::Ext4 => ext4::write_image(tree, &path, MTIME)?,
    }
    let size = std::fs::metadata(&path).map_err(io)?.len();
    Ok((path, size))
}

/// Total bytes of the regular files in `tree` (what the guest root holds).
pub fn content_bytes(tree: &Tree) -> u64 {
    tree.entries()
        .filter_map(|e| match &e.node {
            crate::tree::Node::File { source } => std::fs::metadata(source).ok(),
            _ => None,
        })
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    #[test]
    fn default_image_is_init_libs_and_mount_points_only() {
        let me = std::env::current_exe().unwrap();
        let tree = assemble(&ImageSpec {
            agent: me.clone(),
            busybox: None,
        })
        .unwrap();
        assert_eq!(
            tree.get("/init").unwrap().node,
            Node::File { source: me.clone() }
        );
        for (dir, mode) in MOUNT_POINTS {
            assert_eq!(tree.get(dir).unwrap().mode, *mode, "{dir}");
        }
        let libs = libs::shared_libraries(&me).unwrap();
        assert!(!libs.is_empty());
        for lib in &libs {
            assert!(
                tree.get(&lib.to_string_lossy()).is_some(),
                "{lib:?} missing"
            );
        }
        assert_eq!(
            tree.get("/sbin/init").unwrap().node,
            Node::Symlink {
                target: "/init".into()
            }
        );
        // Nothing but /init, /sbin/init, libraries, their directories and mount points.
        for e in tree.entries() {
            let p = format!("/{}", e.path);
            let ok = p == "/init"
                || p == "/sbin"
                || p == "/sbin/init"
                || MOUNT_POINTS.iter().any(|(d, _)| *d == p)
                || libs.iter().any(|l| l.starts_with(&p));
            assert!(ok, "unexpected entry {p}");
        }
    }
}
