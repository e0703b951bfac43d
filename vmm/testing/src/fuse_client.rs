//! A FUSE client speaking to the virtio-fs device through the simulated driver, the way
//! the guest kernel's virtiofs driver does: request queue 1, one readable descriptor for
//! the request and one writable for the reply.

use crate::confined::ConfinedLoop;
use crate::driver::{Desc, Driver, DATA, F_WRITE};
use ember_vmm::devices::virtio::fs::Fs;
use fuse_backend_rs::abi::fuse_abi::*;
use std::path::Path;
use vm_memory::ByteValued;

const REQ: u64 = DATA;
const RESP: u64 = DATA + 0x4_0000;
/// Request queue index.
pub const REQUEST_QUEUE: usize = 1;

/// The client.
pub struct FuseClient {
    /// The driver.
    pub d: Driver<Fs>,
    /// The device thread, confined by the device seccomp filter.
    pub em: ConfinedLoop,
    unique: u64,
    /// The caller's uid and gid in the requests' headers (root by default).
    pub creds: (u32, u32),
}

/// Copy a plain struct out of reply bytes.
pub fn decode<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = std::mem::size_of::<T>();
    assert!(bytes.len() >= n, "reply of {} bytes, need {n}", bytes.len());
    v.as_mut_slice().copy_from_slice(&bytes[..n]);
    v
}

/// `name` as FUSE wants it: NUL-terminated.
pub fn cname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

impl FuseClient {
    /// A client for `dir` shared under "share".
    pub fn new(dir: &Path, read_only: bool) -> Self {
        Self::with_device(Fs::new("share", dir, read_only).unwrap())
    }

    /// A client for `fs` (a device set up by the test, e.g. with a rate limiter).
    pub fn with_device(fs: Fs) -> Self {
        let mut d = Driver::new(fs, 64);
        assert_eq!(d.init_queues(2) & 0x40, 0);
        let em = ConfinedLoop::new(vec![d.device.clone()]);
        Self {
            d,
            em,
            unique: 0,
            creds: (0, 0),
        }
    }

    /// Send raw request bytes; returns the used length and the reply bytes.
    pub fn raw(&mut self, request: &[u8], reply_cap: u32) -> (u32, Vec<u8>) {
        let used = self.raw_len(request, reply_cap);
        (used, self.d.peek(RESP, used as usize))
    }

    /// Send raw request bytes; returns only the used length (nothing is copied out).
    pub fn raw_len(&mut self, request: &[u8], reply_cap: u32) -> u32 {
        self.d.poke(REQ, request);
        self.d.submit_q(
            REQUEST_QUEUE,
            &[
                Desc {
                    addr: REQ,
                    len: request.len() as u32,
                    flags: 0,
                    next: 0,
                },
                Desc {
                    addr: RESP,
                    len: reply_cap,
                    flags: F_WRITE,
                    next: 0,
                },
            ],
        );
        self.d.kick_q(REQUEST_QUEUE);
        // The device thread reads the queue's eventfd and serves the request.
        assert_eq!(self.em.run(10_000), 1, "one queue event handled");
        let used = self.d.used_q(REQUEST_QUEUE);
        assert_eq!(used.len(), 1);
        used[0].1
    }

    /// Put `request` on queue `q` without kicking or waiting, in buffer `slot` (each slot
    /// has its own request and reply area, so several can be in flight; the reply is
    /// [`FuseClient::reply_at`]`(slot)`).
    pub fn queue_request(&mut self, q: usize, slot: u64, request: &[u8], reply_cap: u32) {
        let (req, resp) = Self::slot_addrs(slot);
        self.d.poke(req, request);
        self.d.submit_q(
            q,
            &[
                Desc {
                    addr: req,
                    len: request.len() as u32,
                    flags: 0,
                    next: 0,
                },
                Desc {
                    addr: resp,
                    len: reply_cap,
                    flags: F_WRITE,
                    next: 0,
                },
            ],
        );
    }

    /// The reply header and body written into buffer `slot`: `Err(errno)` or the body.
    pub fn reply_at(&self, slot: u64) -> Result<Vec<u8>, i32> {
        let (_, resp) = Self::slot_addrs(slot);
        let out: OutHeader = decode(&self.d.peek(resp, std::mem::size_of::<OutHeader>()));
        if out.error != 0 {
            return Err(-out.error);
        }
        let body = out.len as usize - std::mem::size_of::<OutHeader>();
        Ok(self
            .d
            .peek(resp + std::mem::size_of::<OutHeader>() as u64, body))
    }

    /// Request and reply addresses of buffer `slot` (above the areas of `raw`).
    fn slot_addrs(slot: u64) -> (u64, u64) {
        let base = DATA + 0x10_0000 * (slot + 1);
        (base, base + 0x8_0000)
    }

    /// Header + body of the next request (a fresh `unique`).
    pub fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        self.unique += 1;
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.creds.0,
            gid: self.creds.1,
            pid: 1,
            padding: 0,
        };
        let mut req = header.as_slice().to_vec();
        req.extend_from_slice(body);
        req
    }

    /// One FUSE call: `Err(errno)` or the reply body.
    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Result<Vec<u8>, i32> {
        let req = self.request(opcode, nodeid, body);
        let (len, reply) = self.raw(&req, 0x2_1000);
        assert!(
            len as usize >= std::mem::size_of::<OutHeader>(),
            "reply too short: {len}"
        );
        let out: OutHeader = decode(&reply);
        assert_eq!(out.unique, self.unique);
        assert_eq!(out.len, len);
        if out.error != 0 {
            Err(-out.error)
        } else {
            Ok(reply[std::mem::size_of::<OutHeader>()..].to_vec())
        }
    }

    /// One FUSE call that may get no reply at all (malformed on purpose).
    pub fn call_lenient(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Option<i32> {
        let req = self.request(opcode, nodeid, body);
        let (len, reply) = self.raw(&req, 0x2_1000);
        (len as usize >= std::mem::size_of::<OutHeader>())
            .then(|| decode::<OutHeader>(&reply).error)
    }

    /// FUSE_INIT.
    pub fn init(&mut self) -> InitOut {
        let init = InitIn {
            major: 7,
            minor: 33,
            max_readahead: 0x2_0000,
            flags: 0,
        };
        decode(&self.call(26, 0, init.as_slice()).expect("INIT"))
    }

    /// FUSE_LOOKUP.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        self.call(1, parent, &cname(name)).map(|b| decode(&b))
    }

    /// FUSE_GETATTR.
    pub fn getattr(&mut self, node: u64) -> Result<AttrOut, i32> {
        self.call(3, node, GetattrIn::default().as_slice())
            .map(|b| decode(&b))
    }

    /// FUSE_OPEN (or OPENDIR with `dir`); returns the file handle.
    pub fn open(&mut self, node: u64, flags: i32, dir: bool) -> Result<u64, i32> {
        let o = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call(if dir { 27 } else { 14 }, node, o.as_slice())
            .map(|b| decode::<OpenOut>(&b).fh)
    }

    /// FUSE_READ (or READDIR with `dir`).
    pub fn read(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        dir: bool,
    ) -> Result<Vec<u8>, i32> {
        let r = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(if dir { 28 } else { 15 }, node, r.as_slice())
    }

    /// FUSE_READ whose data stays in guest memory; returns how many bytes were read.
    pub fn read_in_place(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> usize {
        let r = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let req = self.request(15, node, r.as_slice());
        let used = self.raw_len(&req, size + std::mem::size_of::<OutHeader>() as u32);
        let out: OutHeader = decode(&self.d.peek(RESP, std::mem::size_of::<OutHeader>()));
        assert_eq!(out.error, 0);
        used as usize - std::mem::size_of::<OutHeader>()
    }

    /// FUSE_WRITE; returns the size written.
    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let w = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let mut body = w.as_slice().to_vec();
        body.extend_from_slice(data);
        self.call(16, node, &body)
            .map(|b| decode::<WriteOut>(&b).size)
    }

    /// Names in a READDIR reply.
    pub fn dirent_names(buf: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 0;
        let size = std::mem::size_of::<Dirent>();
        while at + size <= buf.len() {
            let d: Dirent = decode(&buf[at..]);
            let name = &buf[at + size..at + size + d.namelen as usize];
            names.push(String::from_utf8_lossy(name).into_owned());
            at += (size + d.namelen as usize + 7) & !7;
        }
        names
    }
}
