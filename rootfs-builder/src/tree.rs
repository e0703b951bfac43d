//! The guest root as a sorted list of entries (directories, files, symlinks), the one
//! model both image formats are written from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file whose contents are read from `source` on the host.
    File {
        /// Host file to copy.
        source: PathBuf,
    },
    /// A symbolic link.
    Symlink {
        /// Link target, stored verbatim.
        target: String,
    },
}

/// One entry of the guest root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the guest, relative to `/` (no leading slash), e.g. `lib/libc.so.6`.
    pub path: String,
    /// Permission bits (e.g. `0o755`), without the file type.
    pub mode: u32,
    /// What it is.
    pub node: Node,
}

/// Errors from assembling the tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// A path is not absolute, or contains `.`/`..` or empty components.
    #[error("invalid guest path `{0}`: it must be absolute and normalized (no `.`, `..` or `//`)")]
    InvalidPath(String),
    /// Two different entries were added at one path.
    #[error("guest path /{0} is added twice with different contents")]
    Conflict(String),
}

/// A guest root: entries keyed and sorted by path, parents before children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

fn normalize(path: &str) -> Result<String, TreeError> {
    let rel = path
        .strip_prefix('/')
        .ok_or_else(|| TreeError::InvalidPath(path.to_string()))?;
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(TreeError::InvalidPath(path.to_string()));
    }
    Ok(rel.to_string())
}

impl Tree {
    /// An empty root.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, entry: Entry) -> Result<(), TreeError> {
        if let Some((parent, _)) = entry.path.rsplit_once('/') {
            self.add_dir(&format!("/{parent}"), 0o755)?;
        }
        match self.entries.get(&entry.path) {
            Some(existing) if *existing == entry => Ok(()),
            // Implicit parent directories may be re-added with explicit modes.
            Some(existing) if existing.node == Node::Dir && entry.node == Node::Dir => {
                self.entries.insert(entry.path.clone(), entry);
                Ok(())
            }
            Some(_) => Err(TreeError::Conflict(entry.path)),
            None => {
                self.entries.insert(entry.path.clone(), entry);
                Ok(())
            }
        }
    }

    /// Adds a directory (and its parents, mode 0755).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        let path = normalize(path)?;
        if let Some(e) = self.entries.get(&path) {
            if e.node == Node::Dir && (e.mode == mode || mode == 0o755) {
                return Ok(());
            }
        }
        self.insert(Entry {
            path,
            mode,
            node: Node::Dir,
        })
    }

    /// Adds a regular file copied from `source` (and its parent directories).
    pub fn add_file(&mut self, path: &str, source: &Path, mode: u32) -> Result<(), TreeError> {
        self.insert(Entry {
            path: normalize(path)?,
            mode,
            node: Node::File {
                source: source.to_path_buf(),
            },
        })
    }

    /// Adds a symlink (and its parent directories).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), TreeError> {
        self.insert(Entry {
            path: normalize(path)?,
            mode: 0o777,
            node: Node::Symlink {
                target: target.to_string(),
            },
        })
    }

    /// The entries in path order (every parent directory before its children).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Looks an entry up by absolute guest path.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_start_matches('/'))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_are_implicit() {
        let mut t = Tree::new();
        t.add_file("/lib/x86_64-linux-gnu/libc.so.6", Path::new("/x"), 0o755)
            .unwrap();
        t.add_dir("/tmp", 0o1777).unwrap();
        t.add_file("/init", Path::new("/a"), 0o755).unwrap();
        t.add_symlink("/lib-x", "lib").unwrap();
        let paths: Vec<&str> = t.entries().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "init",
                "lib",
                "lib-x",
                "lib/x86_64-linux-gnu",
                "lib/x86_64-linux-gnu/libc.so.6",
                "tmp"
            ]
        );
        assert_eq!(t.get("/tmp").unwrap().mode, 0o1777);
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut t = Tree::new();
        assert!(matches!(
            t.add_dir("tmp", 0o755),
            Err(TreeError::InvalidPath(_))
        ));
        assert!(matches!(
            t.add_dir("/a/../b", 0o755),
            Err(TreeError::InvalidPath(_))
        ));
        t.add_file("/init", Path::new("/a"), 0o755).unwrap();
        t.add_file("/init", Path::new("/a"), 0o755).unwrap();
        assert_eq!(
            t.add_file("/init", Path::new("/b"), 0o755),
            Err(TreeError::Conflict("init".into()))
        );
    }
}
