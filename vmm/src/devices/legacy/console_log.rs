//! The file behind COM1 when the guest's console goes to a file: private and capped.
//!
//! The guest owns its kernel, so it writes to its serial port whatever and as much as it
//! likes, and a sandbox's console log lives in its state directory, on a tmpfs (`/run`):
//! host RAM. [`ConsoleLog`] keeps that file at most a fixed size, as the *end* of what the
//! guest wrote, and readable by its owner only (it can hold anything the guest or its
//! containers print).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use crate::config::DEFAULT_SERIAL_MAX_BYTES as DEFAULT_MAX_BYTES;

/// Mode of a console log file: the owner (root) only.
pub const MODE: u32 = 0o600;
/// Smallest cap [`ConsoleLog::create`] applies (a smaller one is raised to this): room for
/// [`TRUNCATED_MARKER`] and a screenful of output.
pub const MIN_MAX_BYTES: u64 = 4096;
/// The line a capped console log starts with once earlier output was dropped.
pub const TRUNCATED_MARKER: &[u8] =
    b"[ember: earlier console output dropped: this log keeps only the guest's latest output]\n";

/// Bytes moved per read/write while dropping the old half of a full log.
const COPY_CHUNK: usize = 64 << 10;

/// A console log file capped at `max` bytes, holding the guest's latest output.
///
/// When a write would take the file past `max`, the file is rewritten in place (no second
/// file, so `tail` and error messages keep reading one path): it then holds
/// [`TRUNCATED_MARKER`] followed by the newest bytes, about half the cap (from the first
/// line boundary in the oldest quarter of them, when there is one), and the write goes on
/// after them. So:
///
/// - the file never exceeds `max` bytes;
/// - its end is always the guest's latest output, which is what an error message quotes
///   when a guest kernel panics;
/// - the rewrite moves at most `max / 2` bytes once per `max / 2` bytes written (constant
///   amortized cost per byte, and a fixed 64 KiB buffer, whatever the cap).
///
/// Console output is best effort: a failing write (a full disk) is logged once, and the
/// guest's output is then dropped rather than failing or stalling the vCPU writing it.
#[derive(Debug)]
pub struct ConsoleLog {
    file: File,
    path: PathBuf,
    len: u64,
    max: u64,
    failed: bool,
}

impl ConsoleLog {
    /// Creates (or truncates) `path` with mode [`MODE`], to hold at most `max` bytes (at
    /// least [`MIN_MAX_BYTES`]). An existing file's mode is set to [`MODE`] too.
    pub fn create(path: &Path, max: u64) -> io::Result<ConsoleLog> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(MODE)
            .open(path)?;
        file.set_permissions(Permissions::from_mode(MODE))?;
        Ok(ConsoleLog {
            file,
            path: path.to_path_buf(),
            len: 0,
            max: max.max(MIN_MAX_BYTES),
            failed: false,
        })
    }

    /// The cap, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let marker = TRUNCATED_MARKER.len() as u64;
        let mut buf = buf;
        let mut shrunk = false;
        if self.len + buf.len() as u64 > self.max {
            let half = self.max / 2;
            if buf.len() as u64 >= half {
                // This write alone fills the kept half: keep the end of it only.
                let fits = (self.max - marker) as usize;
                buf = &buf[buf.len().saturating_sub(fits)..];
                self.file.write_all_at(TRUNCATED_MARKER, 0)?;
                self.len = marker;
                shrunk = true;
            } else {
                self.drop_oldest(half - buf.len() as u64)?;
            }
        }
        self.file.write_all_at(buf, self.len)?;
        self.len += buf.len() as u64;
        if shrunk {
            self.file.set_len(self.len)?;
        }
        Ok(())
    }

    /// Rewrites the file as the marker followed by (about) its newest `keep` bytes.
    fn drop_oldest(&mut self, keep: u64) -> io::Result<()> {
        let marker = TRUNCATED_MARKER.len() as u64;
        let end = self.len;
        let mut src = end - keep.min(end);
        let mut chunk = vec![0u8; COPY_CHUNK.min(keep.max(1) as usize)];
        // Start at a line boundary when one is in the oldest quarter of what is kept.
        let first = &mut chunk[..((end - src) as usize).min(COPY_CHUNK)];
        self.file.read_exact_at(first, src)?;
        let window = first.len().min((keep / 4) as usize);
        if let Some(i) = first[..window].iter().position(|&b| b == b'\n') {
            src += i as u64 + 1;
        }
        // Moving bytes towards the start, chunk by chunk in increasing order, never
        // overwrites bytes not yet read: the destination stays below the source (the
        // marker is shorter than the half of the file that is dropped).
        let mut dst = marker;
        while src < end {
            let n = ((end - src) as usize).min(chunk.len());
            self.file.read_exact_at(&mut chunk[..n], src)?;
            self.file.write_all_at(&chunk[..n], dst)?;
            src += n as u64;
            dst += n as u64;
        }
        self.file.write_all_at(TRUNCATED_MARKER, 0)?;
        self.len = dst;
        self.file.set_len(dst)
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.failed {
            if let Err(e) = self.append(buf) {
                self.failed = true;
                log::warn!(
                    "console log {}: {e}; the guest's further console output is dropped",
                    self.path.display()
                );
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(from: usize, to: usize) -> Vec<u8> {
        (from..to)
            .flat_map(|i| format!("guest line {i:06}\n").into_bytes())
            .collect()
    }

    #[test]
    fn is_private_even_when_the_file_existed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let _log = ConsoleLog::create(&path, DEFAULT_MAX_BYTES).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(meta.len(), 0, "truncated");
        let fresh = tmp.path().join("fresh.log");
        let _log = ConsoleLog::create(&fresh, DEFAULT_MAX_BYTES).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
    }

    #[test]
    fn stays_under_the_cap_and_keeps_the_latest_output() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        let max = 8192;
        let mut log = ConsoleLog::create(&path, max).unwrap();
        // Byte by byte, as the UART writes, then in odd-sized chunks.
        let text = lines(0, 2000);
        for b in &text[..text.len() / 2] {
            log.write_all(std::slice::from_ref(b)).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() <= max);
        }
        for c in text[text.len() / 2..].chunks(777) {
            log.write_all(c).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() <= max);
        }
        let got = std::fs::read(&path).unwrap();
        assert!(got.len() as u64 <= max, "{} > {max}", got.len());
        assert!(
            got.len() as u64 >= max / 2,
            "keeps about half: {}",
            got.len()
        );
        assert!(got.starts_with(TRUNCATED_MARKER));
        let rest = &got[TRUNCATED_MARKER.len()..];
        assert!(
            text.ends_with(rest),
            "the kept part is the end of the output"
        );
        assert!(
            rest.starts_with(b"guest line "),
            "starts at a line boundary"
        );
    }

    #[test]
    fn one_write_larger_than_the_cap_keeps_its_end() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        let mut log = ConsoleLog::create(&path, 100).unwrap();
        assert_eq!(log.max_bytes(), MIN_MAX_BYTES);
        log.write_all(b"start\n").unwrap();
        let text = lines(0, 1000);
        log.write_all(&text).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len() as u64, MIN_MAX_BYTES);
        assert!(got.starts_with(TRUNCATED_MARKER));
        assert!(text.ends_with(&got[TRUNCATED_MARKER.len()..]));
        // Small writes after that go on under the cap.
        log.write_all(b"after\n").unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got.len() as u64 <= MIN_MAX_BYTES);
        assert!(got.ends_with(b"guest line 000999\nafter\n"));
    }
}
