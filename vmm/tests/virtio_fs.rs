//! virtio-fs through the virtio-mmio transport: the FUSE protocol through the virtqueue,
//! escape attempts from the shared directory, read-only shares, malformed requests, and the
//! device's rate limiter.

mod common;

use common::fuse_client::{cname, decode, FuseClient};
use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, CreateIn, EntryOut, FallocateIn, FlushIn, FsyncIn, LinkIn, LseekIn, LseekOut,
    MkdirIn, MknodIn, OpenOut, ReleaseIn, Rename2In, RenameIn, SetattrIn, WriteOut,
};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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

/// A request body: a fixed part, then NUL-terminated names.
fn body(fixed: &[u8], names: &[&str]) -> Vec<u8> {
    let mut b = fixed.to_vec();
    for n in names {
        b.extend(cname(n));
    }
    b
}

#[test]
fn every_kind_of_request_works_on_the_confined_device_thread() {
    // The device runs on a thread with the device seccomp filter (`FuseClient`): each
    // request here takes the passthrough down a different path of system calls, as an
    // unprivileged guest user (the server switches to the caller's uid and gid).
    let dir = share();
    let p = dir.path();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut c = FuseClient::new(p, false);
    c.init();
    c.creds = (1000, 1000);

    let create = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0o022,
        fuse_flags: 0,
    };
    let reply = c
        .call(35, ROOT, &body(create.as_slice(), &["new"]))
        .unwrap();
    let entry: EntryOut = decode(&reply);
    let fh = decode::<OpenOut>(&reply[std::mem::size_of::<EntryOut>()..]).fh;
    let node = entry.nodeid;
    assert_eq!(
        std::fs::metadata(p.join("new")).unwrap().uid(),
        1000,
        "CREATE as the caller"
    );
    assert_eq!(c.write(node, fh, 0, b"0123456789").unwrap(), 10);
    let fsync = FsyncIn {
        fh,
        ..Default::default()
    };
    c.call(20, node, fsync.as_slice()).expect("FSYNC");
    let flush = FlushIn {
        fh,
        ..Default::default()
    };
    c.call(25, node, flush.as_slice()).expect("FLUSH");
    let fallocate = FallocateIn {
        fh,
        offset: 0,
        length: 8192,
        mode: 0,
        padding: 0,
    };
    c.call(43, node, fallocate.as_slice()).expect("FALLOCATE");
    assert_eq!(std::fs::metadata(p.join("new")).unwrap().len(), 8192);
    let lseek = LseekIn {
        fh,
        offset: 0,
        whence: libc::SEEK_DATA as u32,
        ..Default::default()
    };
    let to = c.call(46, node, lseek.as_slice()).expect("LSEEK");
    assert_eq!(decode::<LseekOut>(&to).offset, 0);
    let setattr = SetattrIn {
        valid: 1 | 8 | 32, // MODE | SIZE | MTIME
        size: 4,
        mode: 0o600,
        mtime: 1_000_000,
        ..Default::default()
    };
    c.call(4, node, setattr.as_slice()).expect("SETATTR");
    let meta = std::fs::metadata(p.join("new")).unwrap();
    assert_eq!(
        (meta.len(), meta.mode() & 0o777, meta.mtime()),
        (4, 0o600, 1_000_000)
    );
    let release = ReleaseIn {
        fh,
        ..Default::default()
    };
    c.call(18, node, release.as_slice()).expect("RELEASE");

    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    c.call(9, ROOT, &body(mkdir.as_slice(), &["d"]))
        .expect("MKDIR");
    assert_eq!(std::fs::metadata(p.join("d")).unwrap().uid(), 1000);
    let link = c
        .call(6, ROOT, &body(&[], &["sym", "new"]))
        .expect("SYMLINK");
    let sym = decode::<EntryOut>(&link).nodeid;
    assert_eq!(c.call(5, sym, &[]).expect("READLINK"), b"new");
    let hard = LinkIn { oldnodeid: node };
    c.call(13, ROOT, &body(hard.as_slice(), &["hard"]))
        .expect("LINK");
    assert_eq!(std::fs::metadata(p.join("new")).unwrap().nlink(), 2);
    let mknod = MknodIn {
        mode: libc::S_IFIFO | 0o644,
        rdev: 0,
        umask: 0,
        padding: 0,
    };
    c.call(8, ROOT, &body(mknod.as_slice(), &["fifo"]))
        .expect("MKNOD");
    assert!(std::fs::metadata(p.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let rename = RenameIn { newdir: ROOT };
    c.call(12, ROOT, &body(rename.as_slice(), &["new", "renamed"]))
        .expect("RENAME");
    let rename2 = Rename2In {
        newdir: ROOT,
        flags: 0,
        padding: 0,
    };
    c.call(45, ROOT, &body(rename2.as_slice(), &["renamed", "again"]))
        .expect("RENAME2");
    assert!(p.join("again").is_file() && !p.join("new").exists());
    c.call(17, ROOT, &[]).expect("STATFS");
    let access = AccessIn {
        mask: libc::R_OK as u32,
        padding: 0,
    };
    c.call(34, ROOT, access.as_slice()).expect("ACCESS");
    let dh = c.open(ROOT, libc::O_RDONLY, true).unwrap();
    let names = FuseClient::dirent_names(&c.read(ROOT, dh, 0, 4096, true).unwrap());
    assert!(names.contains(&"again".to_string()), "{names:?}");
    c.call(10, ROOT, &cname("hard")).expect("UNLINK");
    c.call(11, ROOT, &cname("d")).expect("RMDIR");
    assert!(!p.join("hard").exists() && !p.join("d").exists());
    // Extended attributes are off: refused, not fatal.
    assert!(c.call(22, node, &body(&[0u8; 8], &["user.x"])).is_err());
}

// Rate limiting: the device thread is confined by the device seccomp filter (the limiter's
// timerfd is armed there), with the host's clock and the limiter's real timer.

use common::fuse_client::REQUEST_QUEUE;
use ember_vmm::config::RateLimitConfig;
use ember_vmm::devices::virtio::fs::Fs;
use ember_vmm::rate_limiter::RateLimiter;
use fuse_backend_rs::abi::fuse_abi::{ReadIn, WriteIn};
use std::time::{Duration, Instant};

/// The hiprio queue (FORGET and INTERRUPT in a Linux guest; the server answers anything).
const HIPRIO: usize = 0;

/// A client of `dir` whose device has `limits` ("" for none).
fn limited(dir: &std::path::Path, limits: &str) -> FuseClient {
    let limits: RateLimitConfig = limits.parse().unwrap();
    let limiter = RateLimiter::new(&limits).unwrap();
    assert_eq!(limiter.is_some(), !limits.is_unlimited());
    FuseClient::with_device(
        Fs::new("share", dir, false)
            .unwrap()
            .with_rate_limiter(limiter),
    )
}

fn next_avail(c: &FuseClient, q: usize) -> u16 {
    use ember_vmm::devices::virtio::VirtioDevice;
    use virtio_queue::QueueT;
    c.d.device.lock().unwrap().queues()[q].next_avail()
}

/// Pump the device thread until queue `q` has `want` used entries in all (or 20 s passed).
fn complete(
    c: &mut FuseClient,
    q: usize,
    mut used: Vec<(u32, u32)>,
    want: usize,
) -> Vec<(u32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while used.len() < want && Instant::now() < deadline {
        c.em.run(100);
        used.extend(c.d.used_q(q));
    }
    used
}

/// A READ of `size` bytes at `offset` of open file `fh` of `node`.
fn read_request(c: &mut FuseClient, node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let r = ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    };
    c.request(15, node, r.as_slice())
}

/// A share with `big`: 8 KiB, byte i is i % 251.
fn share_with_big() -> (tempfile::TempDir, Vec<u8>) {
    let dir = share();
    let big: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big"), &big).unwrap();
    (dir, big)
}

#[test]
fn an_ops_limit_completes_the_budget_and_holds_the_next_request_until_the_timer() {
    let dir = share();
    let t0 = Instant::now();
    // One request per 500 ms, and one extra at the start (for INIT).
    let mut c = limited(dir.path(), "ops=1/500,ops_burst=1");
    c.init();
    let a = c.request(1, ROOT, &cname("hello.txt"));
    let b = c.request(1, ROOT, &cname("sub"));
    c.queue_request(REQUEST_QUEUE, 0, &a, 4096);
    c.queue_request(REQUEST_QUEUE, 1, &b, 4096);
    c.d.kick_q(REQUEST_QUEUE);
    c.em.pump(10, 1);
    let used = c.d.used_q(REQUEST_QUEUE);
    assert_eq!(used.len(), 1, "only the budget is completed: {used:?}");
    assert_eq!(
        next_avail(&c, REQUEST_QUEUE),
        2,
        "INIT and the first LOOKUP were taken; the second is still available, not taken \
         and not failed"
    );
    let used = complete(&mut c, REQUEST_QUEUE, used, 2);
    assert_eq!(used.len(), 2, "the timer resumed the queue: {used:?}");
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_millis(490),
        "a second request at 1 per 500 ms after {elapsed:?}"
    );
    let hello: EntryOut = decode(&c.reply_at(0).unwrap());
    assert_eq!(hello.attr.size, 11);
    let sub: EntryOut = decode(&c.reply_at(1).unwrap());
    assert_eq!(
        sub.attr.mode & libc::S_IFMT,
        libc::S_IFDIR,
        "served in full"
    );
}

#[test]
fn the_hiprio_queue_is_under_the_same_limiter() {
    // The server answers any request on any queue, so a queue left out of the limiter
    // would be a way around it.
    let dir = share();
    let mut c = limited(dir.path(), "ops=1/500,ops_burst=1");
    c.init();
    assert_eq!(c.lookup(ROOT, "hello.txt").unwrap().attr.size, 11);
    let t0 = Instant::now();
    let h = c.request(1, ROOT, &cname("hello.txt"));
    c.queue_request(HIPRIO, 0, &h, 4096);
    c.d.kick_q(HIPRIO);
    c.em.pump(10, 1);
    assert_eq!(
        c.d.used_q(HIPRIO),
        vec![],
        "over budget on the hiprio queue too"
    );
    assert_eq!(next_avail(&c, HIPRIO), 0, "still available");
    let used = complete(&mut c, HIPRIO, Vec::new(), 1);
    assert_eq!(used.len(), 1, "the timer resumed the hiprio queue");
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    let e: EntryOut = decode(&c.reply_at(0).unwrap());
    assert_eq!(e.attr.size, 11);
}

#[test]
fn a_bandwidth_limit_counts_the_payload_of_reads_and_writes() {
    // 4 KiB per second, plus 64 bytes once for INIT, LOOKUP and OPEN (28 bytes of
    // requests). A 3000-byte READ fits; a 3000-byte WRITE then waits about 450 ms.
    let (dir, big) = share_with_big();
    let mut c = limited(dir.path(), "bandwidth=4096/1000,bandwidth_burst=64");
    c.init();
    let node = c.lookup(ROOT, "big").unwrap().nodeid;
    let fh = c.open(node, libc::O_RDWR, false).unwrap();
    let t0 = Instant::now();
    let read = read_request(&mut c, node, fh, 0, 3000);
    let w = WriteIn {
        fh,
        offset: 8192,
        size: 3000,
        ..Default::default()
    };
    let mut body = w.as_slice().to_vec();
    body.extend(vec![b'w'; 3000]);
    let write = c.request(16, node, &body);
    c.queue_request(REQUEST_QUEUE, 0, &read, 4096);
    c.queue_request(REQUEST_QUEUE, 1, &write, 4096);
    c.d.kick_q(REQUEST_QUEUE);
    c.em.pump(10, 1);
    let used = c.d.used_q(REQUEST_QUEUE);
    assert_eq!(
        used.len(),
        1,
        "the READ's 3000 bytes fit, not the WRITE's: {used:?}"
    );
    assert_eq!(
        next_avail(&c, REQUEST_QUEUE),
        4,
        "the WRITE is still available"
    );
    assert_eq!(c.reply_at(0).unwrap(), big[..3000]);
    let used = complete(&mut c, REQUEST_QUEUE, used, 2);
    assert_eq!(used.len(), 2, "{used:?}");
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "3000 bytes over a 1132-byte budget at 4 KiB/s after {elapsed:?}"
    );
    let written: WriteOut = decode(&c.reply_at(1).unwrap());
    assert_eq!(written.size, 3000);
    assert_eq!(
        std::fs::metadata(dir.path().join("big")).unwrap().len(),
        11_192
    );
}

#[test]
fn a_read_larger_than_the_bucket_still_completes() {
    // A 2 KiB bucket and 8 KiB READs: each goes through once the bucket is full, and the
    // debt it leaves (6 KiB, three refills of 250 ms) delays the next one.
    let (dir, big) = share_with_big();
    let mut c = limited(dir.path(), "bandwidth=2048/250,bandwidth_burst=64");
    c.init();
    let node = c.lookup(ROOT, "big").unwrap().nodeid;
    let fh = c.open(node, libc::O_RDONLY, false).unwrap();
    let t0 = Instant::now();
    for slot in 0..2 {
        let r = read_request(&mut c, node, fh, 0, 8192);
        c.queue_request(REQUEST_QUEUE, slot, &r, 8192 + 16);
    }
    c.d.kick_q(REQUEST_QUEUE);
    c.em.pump(10, 1);
    let used = c.d.used_q(REQUEST_QUEUE);
    assert_eq!(used.len(), 1, "{used:?}");
    let used = complete(&mut c, REQUEST_QUEUE, used, 2);
    assert_eq!(used.len(), 2, "no deadlock on an oversize request");
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    for slot in 0..2 {
        assert_eq!(c.reply_at(slot).unwrap(), big, "read {slot}");
    }
}

#[test]
fn an_unlimited_device_serves_everything_at_once() {
    let dir = share();
    let mut c = limited(dir.path(), "");
    c.init();
    for slot in 0..16 {
        let r = c.request(1, ROOT, &cname("hello.txt"));
        c.queue_request(REQUEST_QUEUE, slot, &r, 4096);
    }
    c.d.kick_q(REQUEST_QUEUE);
    c.em.pump(10, 1);
    assert_eq!(c.d.used_q(REQUEST_QUEUE).len(), 16);
    assert_eq!(next_avail(&c, REQUEST_QUEUE), 17);
}
