//! `/proc/<pid>/mountinfo` (proc(5)): one parser for every reader of the mount table.
//!
//! A line is `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
//! SUPER_OPTIONS`, fields separated by single spaces. The kernel escapes space, tab,
//! newline and backslash in paths (and the source) as a backslash and three octal digits
//! (`\040` is a space); [`unescape`] decodes them, byte by byte, so paths that are not
//! UTF-8 come out intact.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A mountinfo line that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed mountinfo line {line:?}: {why} (see proc(5) for the format)")]
pub struct MountinfoError {
    /// The line.
    pub line: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// One mount, as one mountinfo line describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Its mount ID.
    pub id: u32,
    /// Its parent's mount ID; the mount's own ID when it has no parent (the initial rootfs).
    pub parent: u32,
    /// The directory of its filesystem that is mounted (decoded).
    pub root: PathBuf,
    /// Where it is mounted, relative to the reader's root (decoded).
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub options: String,
    /// The filesystem type (`ext4`, `cgroup2`, `rootfs`).
    pub fstype: String,
    /// The source (decoded): a device, `overlay`, `none`...
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

/// Parses one mountinfo line.
pub fn parse_line(line: &str) -> Result<Mount, MountinfoError> {
    let bad = |why| MountinfoError {
        line: line.to_string(),
        why,
    };
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 7 {
        return Err(bad("fewer than six fields before the separator"));
    }
    // The separator comes after the six fixed fields (a mount point may be `-` itself).
    let sep = 6 + fields[6..]
        .iter()
        .position(|f| *f == "-")
        .ok_or_else(|| bad("no ` - ` separator before the filesystem type"))?;
    let number = |i: usize, why| fields[i].parse::<u32>().map_err(|_| bad(why));
    Ok(Mount {
        id: number(0, "the mount ID is not a number")?,
        parent: number(1, "the parent ID is not a number")?,
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        options: fields[5].to_string(),
        fstype: fields
            .get(sep + 1)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| bad("no filesystem type after the separator"))?
            .to_string(),
        source: fields
            .get(sep + 2)
            .map(|s| unescape(s).to_string_lossy().into_owned())
            .unwrap_or_default(),
        super_options: fields.get(sep + 3).copied().unwrap_or_default().to_string(),
    })
}

/// Parses a mountinfo text, in its order, leaving out lines [`parse_line`] cannot read.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(|l| parse_line(l).ok()).collect()
}

/// Reads and parses a mountinfo file (`/proc/self/mountinfo`, or
/// `/proc/thread-self/mountinfo` for a thread with its own view).
pub fn read(path: &Path) -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

/// The mount points of `mounts` at or below `dir`, deepest first, each once: the order to
/// unmount them in.
pub fn mount_points_under(mounts: &[Mount], dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .iter()
        .map(|m| m.mount_point.clone())
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Decodes mountinfo's octal escapes (`\ooo`, three octal digits, as the kernel writes
/// them); a backslash not followed by three octal digits stays as it is.
pub fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    const SAMPLE: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate
41 1 8:1 /data/my\\040dir /mnt/a\\040b\\011c\\134d rw - ext4 /dev/sd\\040a rw
not a mountinfo line
";

    #[test]
    fn lines_are_parsed_with_optional_fields() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(
            m[0],
            Mount {
                id: 1,
                parent: 1,
                root: "/".into(),
                mount_point: "/".into(),
                options: "rw".into(),
                fstype: "rootfs".into(),
                source: "rootfs".into(),
                super_options: "rw".into(),
            }
        );
        assert_eq!((m[2].id, m[2].parent), (30, 22));
        assert_eq!(m[2].fstype, "cgroup2");
        assert_eq!(m[2].mount_point, Path::new("/sys/fs/cgroup"));
        assert_eq!(m[2].super_options, "rw,nsdelegate");
    }

    #[test]
    fn escapes_are_decoded() {
        let m = &parse(SAMPLE)[3];
        assert_eq!(m.mount_point, Path::new("/mnt/a b\tc\\d"));
        assert_eq!(m.root, Path::new("/data/my dir"));
        assert_eq!(m.source, "/dev/sd a");
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
        // Not three octal digits: kept as written.
        assert_eq!(unescape(r"/plain\04"), r"/plain\04");
        assert_eq!(unescape(r"/x\089"), r"/x\089");
        assert_eq!(unescape(r"\"), r"\");
        // Above 0o377 is no byte: kept.
        assert_eq!(unescape(r"\400"), r"\400");
        // Bytes that are not UTF-8 come out as bytes, not as chars.
        assert_eq!(unescape(r"/\377\012").as_bytes(), b"/\xff\n");
        assert_eq!(unescape("/é\\040"), "/é ");
    }

    #[test]
    fn malformed_lines_say_why() {
        let e = parse_line("1 2 0:1 / /x rw shared:1").unwrap_err();
        assert!(e.why.contains("separator"), "{e}");
        let e = parse_line("1 2 0:1 / -").unwrap_err();
        assert!(e.why.contains("six fields"), "{e}");
        // A mount point named `-` is no separator.
        let m = parse_line("1 2 0:1 / - rw shared:1 - tmpfs tmpfs rw").unwrap();
        assert_eq!(
            (m.mount_point.as_path(), m.fstype.as_str()),
            (Path::new("-"), "tmpfs")
        );
        let e = parse_line("x 2 0:1 / /x rw - ext4 /dev/a rw").unwrap_err();
        assert!(e.why.contains("mount ID"), "{e}");
        assert!(e.to_string().contains("proc(5)"));
        let e = parse_line("1 2 0:1 / /x rw -").unwrap_err();
        assert!(e.why.contains("filesystem type"), "{e}");
        // A missing source or super options is tolerated.
        let m = parse_line("1 2 0:1 / /x rw - tmpfs").unwrap();
        assert_eq!((m.source.as_str(), m.super_options.as_str()), ("", ""));
    }

    #[test]
    fn mount_points_under_are_deepest_first() {
        let text = "\
1 0 0:1 / /run rw - tmpfs tmpfs rw
2 1 0:2 / /run/a rw - tmpfs tmpfs rw
3 2 0:3 / /run/a/b\\040c rw - tmpfs tmpfs rw
4 1 0:4 / /run/a rw - tmpfs tmpfs rw
5 1 0:5 / /runner rw - tmpfs tmpfs rw
";
        let got = mount_points_under(&parse(text), Path::new("/run/a"));
        assert_eq!(got, [PathBuf::from("/run/a/b c"), PathBuf::from("/run/a")]);
    }

    #[test]
    fn this_process_has_a_root_mount() {
        let mounts = read(Path::new("/proc/self/mountinfo")).unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
