//! A deterministic writer (and a reader, for checks) of the newc cpio format the kernel
//! unpacks as an initramfs.
//!
//! Written here rather than taken from a crate: newc is a 110-byte ASCII header, the
//! name and the data, each padded to 4 bytes, so the writer is a few dozen lines; and
//! the image must be byte-for-byte reproducible, which means every header field (inode
//! numbers, mtimes, owners, device numbers, link counts) is chosen here rather than
//! taken from the host file, which archive crates built around `stat` do not promise.

use crate::tree::{Node, Tree};
use std::io::{self, Write};
use std::path::PathBuf;

/// File type bits of `mode` (as in `<sys/stat.h>`).
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Mask of the file type bits.
pub const S_IFMT: u32 = 0o170000;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// Errors from writing or reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Writing the archive failed.
    #[error("cannot write the cpio archive: {0}")]
    Write(#[from] io::Error),
    /// A file of the tree could not be read.
    #[error("cannot read {path} for the cpio archive: {source}")]
    Source {
        /// The host file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is larger than newc's 32-bit size field.
    #[error("{0} is larger than 4 GiB, which newc cannot store")]
    TooLarge(String),
    /// The bytes are not a newc archive.
    #[error("malformed newc archive at byte {offset}: {reason}")]
    Malformed {
        /// Offset of the bad header.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Writes newc entries with fixed owners (0:0), a fixed mtime and sequential inode
/// numbers, so the same entries always give the same bytes.
pub struct Writer<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// A writer stamping every entry with `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            mtime,
            next_ino: 1,
            written: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.to_string()))?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        if name != TRAILER {
            self.next_ino += 1;
        }
        let mtime = if name == TRAILER { 0 } else { self.mtime };
        let namesize = name.len() as u32 + 1;
        let fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, namesize, 0];
        let mut header = Vec::with_capacity(110);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.put(&header)?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()?;
        Ok(())
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | perm, 2, &[])
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | perm, 1, data)
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.entry(name, S_IFLNK | 0o777, 1, target.as_bytes())
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.entry(TRAILER, 0, 1, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes `tree` as a newc archive (entries in path order) to `out`.
pub fn write_tree<W: Write>(tree: &Tree, out: W, mtime: u32) -> Result<W, CpioError> {
    let mut w = Writer::new(out, mtime);
    for e in tree.entries() {
        match &e.node {
            Node::Dir => w.dir(&e.path, e.mode)?,
            Node::Symlink { target } => w.symlink(&e.path, target)?,
            Node::File { source } => {
                let data = std::fs::read(source).map_err(|err| CpioError::Source {
                    path: source.clone(),
                    source: err,
                })?;
                w.file(&e.path, e.mode, &data)?
            }
        }
    }
    w.finish()
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Entry name as stored.
    pub name: String,
    /// Full mode (type and permission bits).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time.
    pub mtime: u32,
    /// Contents (link target for symlinks).
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer.
pub fn read(bytes: &[u8]) -> Result<Vec<ReadEntry>, CpioError> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    let align = |x: usize| (x + 3) & !3;
    loop {
        let bad = |reason| CpioError::Malformed {
            offset: off,
            reason,
        };
        let header = bytes
            .get(off..off + 110)
            .ok_or_else(|| bad("truncated header"))?;
        if &header[..6] != MAGIC {
            return Err(bad("bad magic (not newc)"));
        }
        let field = |i: usize| -> Result<u32, CpioError> {
            let s = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| bad("non-ASCII header"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad("non-hex header field"))
        };
        let (mode, uid, gid, mtime, size, namesize) = (
            field(1)?,
            field(2)?,
            field(3)?,
            field(5)?,
            field(6)?,
            field(11)?,
        );
        let name_start = off + 110;
        let name_end = name_start + namesize as usize;
        let name_bytes = bytes
            .get(name_start..name_end.saturating_sub(1))
            .ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let data_start = align(name_end);
        let data_end = data_start + size as usize;
        let data = bytes
            .get(data_start..data_end)
            .ok_or_else(|| bad("truncated data"))?
            .to_vec();
        off = align(data_end);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(ReadEntry {
            name,
            mode,
            uid,
            gid,
            mtime,
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), 0);
        w.dir("dev", 0o755).unwrap();
        w.file("init", 0o755, b"\x7fELF-ish").unwrap();
        w.symlink("sh", "init").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_and_pads_to_four_bytes() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..6], b"070701");
        let entries = read(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "init", "sh"]);
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[1].mode, S_IFREG | 0o755);
        assert_eq!(entries[1].data, b"\x7fELF-ish");
        assert_eq!(entries[2].mode & S_IFMT, S_IFLNK);
        assert_eq!(entries[2].data, b"init");
        assert!(entries
            .iter()
            .all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 0));
    }

    #[test]
    fn same_entries_same_bytes() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn host_cpio_reads_our_archive() {
        let Some(cpio) = crate::tools::find("cpio") else {
            crate::tools::skip_notice(
                "host_cpio_reads_our_archive",
                "`cpio` not installed (apt-get install cpio)",
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, sample()).unwrap();
        let out = std::process::Command::new(cpio)
            .args(["-t", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "dev\ninit\nsh\n");
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(read(b"hello"), Err(CpioError::Malformed { .. })));
        let mut bytes = sample();
        bytes[0] = b'1';
        assert!(matches!(read(&bytes), Err(CpioError::Malformed { .. })));
    }
}
