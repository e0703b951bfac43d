//! The last lines of a text or a log file, for error messages.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Most bytes [`file`] reads from the end of a file.
pub const FILE_MAX_BYTES: u64 = 64 << 10;

/// The last `n` lines of `text`, joined by `\n` (no trailing newline).
pub fn lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of the file at `path` (empty when unreadable), from at most its last
/// [`FILE_MAX_BYTES`]: a guest writes the console log, so its size and its line lengths are
/// the guest's choice, and reading it whole could take the host's memory. A line cut by
/// that limit is left out; bytes that are not UTF-8 are shown as U+FFFD.
pub fn file(path: &Path, n: usize) -> String {
    let read_end = || -> std::io::Result<(Vec<u8>, bool)> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(FILE_MAX_BYTES);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.take(FILE_MAX_BYTES).read_to_end(&mut buf)?;
        Ok((buf, start > 0))
    };
    let Ok((buf, cut)) = read_end() else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.lines().collect();
    if cut && !all.is_empty() {
        all.remove(0);
    }
    all[all.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keeps_the_last_lines() {
        assert_eq!(lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(lines("a", 5), "a");
        assert_eq!(lines("", 5), "");
        assert_eq!(lines("a\nb", 0), "");
    }

    #[test]
    fn file_reads_the_last_lines_of_a_large_log() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.log");
        let mut text: String = (0..200_000).map(|i| format!("line {i}\n")).collect();
        assert!(text.len() as u64 > 10 * FILE_MAX_BYTES);
        text.push_str("not utf-8 \u{fffd} end");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b" \xff\n");
        std::fs::write(&path, &bytes).unwrap();
        let got = file(&path, 3);
        assert_eq!(
            got,
            "line 199998\nline 199999\nnot utf-8 \u{fffd} end \u{fffd}"
        );
        assert_eq!(file(&path, 0), "");
        // Asking for more lines than the window holds gives whole lines only.
        let all = file(&path, usize::MAX);
        assert!(all.len() as u64 <= FILE_MAX_BYTES);
        assert!(all.starts_with("line "), "{}", &all[..20]);
        assert!(all.lines().next().unwrap().len() > "line ".len());
    }

    #[test]
    fn file_of_a_small_or_missing_log() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.log");
        assert_eq!(file(&path, 5), "");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(file(&path, 2), "b\nc");
        assert_eq!(file(&path, 10), "a\nb\nc");
    }
}
