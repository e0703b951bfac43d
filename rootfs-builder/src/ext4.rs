//! A deterministic ext4 image of a guest [`Tree`], made with `mkfs.ext4 -d`.
//!
//! `mkfs.ext4 -d` copies a staging directory into a fresh file system. Its output is
//! made reproducible by: a fixed UUID and directory hash seed (`-U`, `-E hash_seed=`),
//! `E2FSPROGS_FAKE_TIME` for every time mke2fs and debugfs stamp themselves, and a
//! `debugfs` pass that resets the owner (0:0) and the atime/ctime/mtime/crtime of every
//! inode, since `-d` copies those from the staging files (their ctime cannot be set).
//! There is no journal: the image is the shared, read-only guest root.

use crate::tree::{Node, Tree};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file system UUID, also used as the directory hash seed.
pub const UUID: &str = "2d6bfb4c-6d22-4e5f-9f2e-4a0b9e1c0e4b";
/// The volume label.
pub const LABEL: &str = "ember-root";
const BLOCK: u64 = 4096;

/// Errors from making the ext4 image.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// Staging or image files could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// mkfs.ext4 or debugfs failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Tool {
        /// The command.
        command: String,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Ext4Error + '_ {
    move |source| Ext4Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies `tree` into the (empty) directory `staging` with the tree's modes.
pub fn stage(tree: &Tree, staging: &Path) -> Result<u64, Ext4Error> {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = 0u64;
    for e in tree.entries() {
        let dst = staging.join(&e.path);
        match &e.node {
            Node::Dir => {
                std::fs::create_dir(&dst).map_err(io_err(&dst))?;
                bytes += BLOCK;
            }
            Node::File { source } => {
                let n = std::fs::copy(source, &dst).map_err(io_err(&dst))?;
                bytes += n.div_ceil(BLOCK) * BLOCK;
            }
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(target, &dst).map_err(io_err(&dst))?;
                bytes += BLOCK;
            }
        }
        if !matches!(e.node, Node::Symlink { .. }) {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(e.mode))
                .map_err(io_err(&dst))?;
        }
    }
    Ok(bytes)
}

/// Image size for `content` bytes of blocks: content plus a quarter for metadata and
/// growth, plus 4 MiB, rounded up to a MiB, at least 8 MiB.
pub fn image_size(content: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let want = content + content / 4 + 4 * MIB;
    want.div_ceil(MIB).max(8) * MIB
}

/// Runs `cmd`; returns its stderr.
fn run(cmd: &mut Command) -> Result<String, Ext4Error> {
    let describe = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| Ext4Error::Tool {
        command: describe.clone(),
        status: "not started".into(),
        stderr: format!("{e}; install it with `apt-get install e2fsprogs`"),
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(Ext4Error::Tool {
            command: describe,
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// Writes `tree` as an ext4 image at `image` (replacing it), with every inode owned by
/// 0:0 and stamped `mtime`.
pub fn write_image(tree: &Tree, image: &Path, mtime: u32) -> Result<(), Ext4Error> {
    let parent = image.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".ember-rootfs-")
        .tempdir_in(parent)
        .map_err(io_err(parent))?;
    let content = stage(tree, staging.path())?;

    let _ = std::fs::remove_file(image);
    let file = std::fs::File::create(image).map_err(io_err(image))?;
    file.set_len(image_size(content)).map_err(io_err(image))?;
    drop(file);

    let fake_time = mtime.max(1).to_string(); // 0 means "not set" to e2fsprogs
    run(Command::new("mkfs.ext4")
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-m",
            "0",
            "-O",
            "^has_journal",
        ])
        .args(["-L", LABEL, "-U", UUID])
        .arg("-E")
        .arg(format!(
            "hash_seed={UUID},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard"
        ))
        .arg("-d")
        .arg(staging.path())
        .arg(image))?;

    // debugfs exits 0 even when a command fails, so any stderr line other than its
    // version banner is an error.
    let mut script = String::new();
    let mut paths = vec!["/".to_string(), "/lost+found".to_string()];
    paths.extend(tree.entries().map(|e| format!("/{}", e.path)));
    for p in &paths {
        for field in ["atime", "ctime", "mtime", "crtime"] {
            script.push_str(&format!("sif \"{p}\" {field} @{mtime}\n"));
        }
        script.push_str(&format!("sif \"{p}\" uid 0\nsif \"{p}\" gid 0\n"));
    }
    let cmds = parent.join(format!(".ember-debugfs-{}.cmds", std::process::id()));
    std::fs::write(&cmds, script).map_err(io_err(&cmds))?;
    let result = run(Command::new("debugfs")
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(image));
    let _ = std::fs::remove_file(&cmds);
    let stderr = result?;
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Ext4Error::Tool {
            command: format!("debugfs -w -f <fix-up script> {}", image.display()),
            status: "errors reported".into(),
            stderr: errors.join("\n"),
        })
    }
}

/// Lists every path in an ext4 image (absolute, sorted) with `debugfs ls -p`, walking
/// directories; used by checks and tests.
pub fn list(image: &Path) -> Result<Vec<String>, Ext4Error> {
    let mut found = Vec::new();
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        let out = Command::new("debugfs")
            .args(["-R", &format!("ls -p \"{dir}\"")])
            .arg(image)
            .output()
            .map_err(io_err(image))?;
        // `ls -p` lines: /inode/mode/uid/gid/name/size/
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.split('/').collect();
            if fields.len() < 7 {
                continue;
            }
            let (mode, name) = (fields[2], fields[5]);
            if name == "." || name == ".." || name.is_empty() {
                continue;
            }
            let path = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            let is_dir = u32::from_str_radix(mode, 8).is_ok_and(|m| m & 0o170000 == 0o040000);
            if is_dir {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_leaves_room_and_rounds_to_mib() {
        const MIB: u64 = 1 << 20;
        assert_eq!(image_size(0), 8 * MIB);
        assert_eq!(image_size(40 * MIB), 54 * MIB);
        assert_eq!(image_size(40 * MIB + 1) % MIB, 0);
    }

    #[test]
    fn owners_and_times_are_reset() {
        if crate::tools::require(crate::tools::EXT4_TOOLS).is_err() {
            crate::tools::skip_notice(
                "owners_and_times_are_reset",
                "mkfs.ext4/debugfs not installed (apt-get install e2fsprogs)",
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("payload");
        std::fs::write(&src, b"hello").unwrap();
        let mut tree = Tree::new();
        tree.add_file("/a/b", &src, 0o640).unwrap();
        tree.add_symlink("/c", "a/b").unwrap();
        let img = dir.path().join("t.ext4");
        write_image(&tree, &img, 0).unwrap();
        assert_eq!(list(&img).unwrap(), ["/a", "/a/b", "/c", "/lost+found"]);
        let out = Command::new("debugfs")
            .args(["-R", "stat /a/b"])
            .arg(&img)
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&out.stdout);
        assert!(stat.contains("Mode:  0640"), "{stat}");
        assert!(stat.contains("User:     0   Group:     0"), "{stat}");
        for field in ["ctime", "atime", "mtime", "crtime"] {
            assert!(
                stat.contains(&format!("{field}: 0x00000000:00000000")),
                "{field} not reset: {stat}"
            );
        }
    }
}
