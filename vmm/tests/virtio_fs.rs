//! virtio-fs through the virtio-mmio transport: the FUSE protocol through the virtqueue,
//! escape attempts from the shared directory, read-only shares, malformed requests.

mod common;

use common::fuse_client::{cname, FuseClient};
use fuse_backend_rs::abi::fuse_abi::{MkdirIn, SetattrIn};
use std::os::unix::fs::MetadataExt;
use vm_memory::ByteValued;

const ROOT: u64 = 1;

fn share() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello world").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/inner"), "x").unwrap();
    dir
}

#[test]
fn init_lookup_getattr_open_read_write_readdir() {
    let dir = share();
    let mut c = FuseClient::new(dir.path(), false);
    assert_eq!(c.init().major, 7);
    let e = c.lookup(ROOT, "hello.txt").unwrap();
    assert_eq!(e.attr.size, 11);
    let a = c.getattr(e.nodeid).unwrap();
    assert_eq!(a.attr.size, 11);
    assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFREG);
    let fh = c.open(e.nodeid, libc::O_RDONLY, false).unwrap();
    assert_eq!(c.read(e.nodeid, fh, 0, 100, false).unwrap(), b"hello world");
    assert_eq!(c.read(e.nodeid, fh, 6, 3, false).unwrap(), b"wor");
    let fh = c.open(e.nodeid, libc::O_RDWR, false).unwrap();
    assert_eq!(c.write(e.nodeid, fh, 6, b"ember").unwrap(), 5);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hello.txt")).unwrap(),
        "hello ember"
    );
    let dh = c.open(ROOT, libc::O_RDONLY, true).unwrap();
    let names = FuseClient::dirent_names(&c.read(ROOT, dh, 0, 4096, true).unwrap());
    assert!(
        names.contains(&"hello.txt".to_string()) && names.contains(&"sub".to_string()),
        "{names:?}"
    );
    assert_eq!(c.lookup(ROOT, "missing").err(), Some(libc::ENOENT));
    // Unknown opcodes are refused, not fatal.
    assert_eq!(c.call(9999, ROOT, &[]), Err(libc::ENOSYS));
}

#[test]
fn the_guest_cannot_leave_the_shared_directory() {
    let dir = share();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("/proc/self/fd/0", dir.path().join("fd")).unwrap();
    std::os::unix::fs::symlink("..", dir.path().join("up")).unwrap();
    let mut c = FuseClient::new(dir.path(), false);
    c.init();
    // ".." at the root is the root itself.
    let e = c.lookup(ROOT, "..").unwrap();
    assert_eq!(
        e.attr.ino,
        std::fs::metadata(dir.path()).unwrap().ino(),
        "`..` of the root is the root"
    );
    // Names with slashes are refused outright.
    assert_eq!(c.lookup(ROOT, "../etc").err(), Some(libc::EINVAL));
    assert_eq!(c.lookup(ROOT, "/etc").err(), Some(libc::EINVAL));
    // Symlinks are handed to the guest as links; the host never follows them.
    for link in ["abs", "fd"] {
        let e = c.lookup(ROOT, link).unwrap();
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{link}");
        let opened = c.open(e.nodeid, libc::O_RDONLY, false);
        if let Ok(fh) = opened {
            let data = c.read(e.nodeid, fh, 0, 4096, false).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&data).contains("root:"),
                "{link} leaked host data"
            );
        }
    }
    let abs = c.lookup(ROOT, "abs").unwrap().nodeid;
    assert_eq!(
        c.call(5, abs, &[]).unwrap(),
        b"/etc/passwd",
        "READLINK gives the text"
    );
    // A symlink to ".." cannot be used as a directory.
    let up = c.lookup(ROOT, "up").unwrap();
    assert!(c.lookup(up.nodeid, "passwd").is_err());
    // A name that exists only outside the share is not found.
    let outside = dir
        .path()
        .parent()
        .unwrap()
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let outside_name = outside.file_name().into_string().unwrap();
    if !dir.path().join(&outside_name).exists() {
        assert_eq!(c.lookup(ROOT, &outside_name).err(), Some(libc::ENOENT));
    }
}

#[test]
fn read_only_shares_reject_every_write() {
    let dir = share();
    let mut c = FuseClient::new(dir.path(), true);
    c.init();
    let e = c.lookup(ROOT, "hello.txt").unwrap();
    let fh = c.open(e.nodeid, libc::O_RDONLY, false).unwrap();
    assert_eq!(
        c.read(e.nodeid, fh, 0, 5, false).unwrap(),
        b"hello",
        "reads work"
    );
    assert_eq!(
        c.open(e.nodeid, libc::O_RDWR, false).err(),
        Some(libc::EROFS)
    );
    assert_eq!(
        c.open(e.nodeid, libc::O_WRONLY | libc::O_TRUNC, false)
            .err(),
        Some(libc::EROFS)
    );
    assert_eq!(c.write(e.nodeid, fh, 0, b"X").err(), Some(libc::EROFS));
    let mut mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    }
    .as_slice()
    .to_vec();
    mkdir.extend(cname("new"));
    assert_eq!(c.call(9, ROOT, &mkdir).err(), Some(libc::EROFS));
    assert_eq!(
        c.call(10, ROOT, &cname("hello.txt")).err(),
        Some(libc::EROFS),
        "UNLINK"
    );
    let truncate = SetattrIn {
        valid: 1 << 3,
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        c.call(4, e.nodeid, truncate.as_slice()).err(),
        Some(libc::EROFS),
        "SETATTR"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hello.txt")).unwrap(),
        "hello world"
    );
    assert!(!dir.path().join("new").exists());
}

#[test]
fn malformed_requests_fail_alone() {
    let dir = share();
    let mut c = FuseClient::new(dir.path(), false);
    c.init();
    let (len, _) = c.raw(&[1, 2, 3], 4096);
    assert_eq!(len, 0, "a truncated header gets no reply");
    // A header whose length field claims far more than was sent.
    let mut lie = vec![0u8; 40];
    lie[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    lie[4..8].copy_from_slice(&1u32.to_le_bytes());
    let _ = c.raw(&lie, 4096);
    // LOOKUP with a name that is not NUL-terminated: refused without a reply.
    let mut bad = vec![0u8; 40];
    bad[0..4].copy_from_slice(&49u32.to_le_bytes());
    bad[4..8].copy_from_slice(&1u32.to_le_bytes());
    bad[16..24].copy_from_slice(&ROOT.to_le_bytes());
    bad.extend(b"hello.txt");
    let (len, reply) = c.raw(&bad, 4096);
    assert!(
        len == 0 || i32::from_le_bytes(reply[4..8].try_into().unwrap()) < 0,
        "not answered as success"
    );
    // The server still works.
    assert_eq!(c.lookup(ROOT, "hello.txt").unwrap().attr.size, 11);
}
