//! Where build results are cached: `${XDG_CACHE_HOME:-$HOME/.cache}/ember`, outside the
//! repository, so a second `make guest` (or another worktree) reuses them.

use std::path::{Path, PathBuf};

/// Errors from locating or filling the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither `XDG_CACHE_HOME` nor `HOME` is set.
    #[error("cannot locate the cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir")]
    NoHome,
    /// A cache directory could not be created or written.
    #[error("cannot write the cache at {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Returns ember's cache root from the environment: `$XDG_CACHE_HOME/ember`, else
/// `$HOME/.cache/ember`.
pub fn default_root() -> Result<PathBuf, CacheError> {
    root_from(
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

/// Computes the cache root from the values of `XDG_CACHE_HOME` and `HOME` (an empty
/// `XDG_CACHE_HOME` counts as unset, as the XDG spec says).
pub fn root_from(xdg: Option<PathBuf>, home: Option<PathBuf>) -> Result<PathBuf, CacheError> {
    match (xdg, home) {
        (Some(x), _) if !x.as_os_str().is_empty() => Ok(x.join("ember")),
        (_, Some(h)) if !h.as_os_str().is_empty() => Ok(h.join(".cache").join("ember")),
        _ => Err(CacheError::NoHome),
    }
}

/// Moves a fully written `staging` directory to `dest` in one rename, so readers never
/// see half an entry; an existing `dest` (a concurrent build) is kept.
pub fn install_dir(staging: &Path, dest: &Path) -> Result<(), CacheError> {
    match std::fs::rename(staging, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(staging);
            Ok(())
        }
        Err(source) => Err(CacheError::Io {
            path: dest.to_path_buf(),
            source,
        }),
    }
}

/// Prefix of directories waiting to be deleted.
const TRASH_PREFIX: &str = ".trash-";

/// Removes `dir` without waiting: renames it to a `.trash-*` sibling (instantly gone
/// from its old name) and deletes that with a detached `rm -rf`, since deleting a
/// kernel build tree (~1.3 GB, ~70k files) can take minutes on a busy disk. Leftovers
/// of an interrupted removal are swept by [`sweep_trash`].
pub fn discard_dir(dir: &Path) -> Result<(), CacheError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = parent.join(format!("{TRASH_PREFIX}{name}-{}", std::process::id()));
    std::fs::rename(dir, &trash).map_err(|source| CacheError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    remove_in_background(&trash);
    Ok(())
}

/// Starts background removal of every `.trash-*` directory under `parent`.
pub fn sweep_trash(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in rd.filter_map(Result::ok) {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(TRASH_PREFIX)
        {
            remove_in_background(&entry.path());
        }
    }
}

fn remove_in_background(path: &Path) {
    use std::process::{Command, Stdio};
    // Not waited for: `rm` outlives this process if need be and is reaped by init.
    let spawned = Command::new("rm")
        .arg("-rf")
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if spawned.is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// An exclusive advisory lock on a file in the cache, held until dropped, so two
/// builders of the same entry (say `make guest` and a test run) do not share a work
/// tree.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

impl Lock {
    /// Blocks until the lock on `path` (created if needed) is ours.
    pub fn acquire(path: &Path) -> Result<Self, CacheError> {
        use std::os::unix::io::AsRawFd;
        let io = |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdg_wins_over_home() {
        let r = root_from(Some("/x".into()), Some("/h".into())).unwrap();
        assert_eq!(r, PathBuf::from("/x/ember"));
        let r = root_from(Some("".into()), Some("/h".into())).unwrap();
        assert_eq!(r, PathBuf::from("/h/.cache/ember"));
        assert!(matches!(root_from(None, None), Err(CacheError::NoHome)));
    }

    #[test]
    fn discarded_dirs_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("build-x");
        std::fs::create_dir_all(victim.join("a/b")).unwrap();
        std::fs::write(victim.join("a/b/f"), b"x").unwrap();
        discard_dir(&victim).unwrap();
        assert!(!victim.exists());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_dir(dir.path()).unwrap().next().is_some() {
            assert!(std::time::Instant::now() < deadline, "trash not removed");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.lock");
        let held = Lock::acquire(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            let _l = Lock::acquire(&p2).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
