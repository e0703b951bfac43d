//! FUSE requests: any opcode, node id, header and body, in sequences that reuse the node
//! ids and file handles the server returned, sent through virtio-fs to the passthrough
//! server on a temporary directory (read-write or read-only) that holds a file, a
//! directory and symlinks pointing out of it; the device runs on a thread under the
//! VMM's device seccomp filter.
//!
//! Invariants: every reply has a well-formed header (its `unique`, its length equal to
//! the used length, an error that is 0 or a negated errno); nothing outside the shared
//! directory changes (no entry appears or goes, the file beside it keeps its contents,
//! mode and size); a read-only share does not change at all; the server still answers a
//! LOOKUP afterwards.

use super::decode;
use crate::fuse_client::{cname, decode as decode_reply, FuseClient};
use arbitrary::Arbitrary;
use fuse_backend_rs::abi::fuse_abi::OutHeader;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// FUSE_DESTROY.
const DESTROY: u32 = 38;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Node {
    Root,
    /// A value a reply returned (a node id or a file handle), by index.
    Seen(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    File,
    Dir,
    Escape,
    Absolute,
    Dot,
    DotDot,
    New(u8),
}

impl Name {
    fn get(self) -> String {
        match self {
            Name::File => "f".into(),
            Name::Dir => "d".into(),
            Name::Escape => "escape".into(),
            Name::Absolute => "abs".into(),
            Name::Dot => ".".into(),
            Name::DotDot => "..".into(),
            Name::New(n) => format!("n{}", n % 4),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Request {
    /// 1..=51 are the opcodes FUSE defines, as `opcode % 52`; `raw` sends it as is.
    opcode: u32,
    raw: bool,
    node: Node,
    /// The body's fixed part (at most 128 bytes), then each name NUL-terminated.
    body: Vec<u8>,
    names: Vec<Name>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    /// At most 16 are sent.
    requests: Vec<Request>,
}

/// Run one input.
pub fn run(data: &[u8]) {
    let Some(input) = decode::<Input>(data) else {
        return;
    };
    let outer = tempfile::tempdir().expect("temp dir");
    let share = outer.path().join("share");
    std::fs::create_dir(&share).expect("share");
    std::fs::write(share.join("f"), "data").expect("file");
    std::fs::create_dir(share.join("d")).expect("dir");
    std::os::unix::fs::symlink("../secret", share.join("escape")).expect("symlink");
    std::os::unix::fs::symlink("/", share.join("abs")).expect("symlink");
    let secret = outer.path().join("secret");
    std::fs::write(&secret, "outside").expect("secret");
    let before = snapshot(outer.path(), &share);

    let mut c = FuseClient::new(&share, input.read_only);
    c.init();
    let mut seen: Vec<u64> = Vec::new();
    let mut destroyed = false;
    for r in input.requests.iter().take(16) {
        let opcode = if r.raw { r.opcode } else { r.opcode % 52 };
        destroyed |= opcode == DESTROY;
        let node = match r.node {
            Node::Root => 1,
            Node::Seen(i) if !seen.is_empty() => seen[usize::from(i) % seen.len()],
            Node::Seen(_) => 1,
            Node::Raw(n) => n,
        };
        let mut body = r.body[..r.body.len().min(128)].to_vec();
        for n in r.names.iter().take(2) {
            body.extend(cname(&n.get()));
        }
        let req = c.request(opcode, node, &body);
        let (len, reply) = c.raw(&req, 0x2_1000);
        let hdr = std::mem::size_of::<OutHeader>();
        if (len as usize) < hdr {
            // No reply at all (FORGET and friends, or a request the server refused).
            continue;
        }
        let out: OutHeader = decode_reply(&reply);
        assert_eq!(
            out.len, len,
            "reply length = used length for opcode {opcode}"
        );
        assert!(
            out.error <= 0 && out.error > -4096,
            "error {} is a negated errno",
            out.error
        );
        if out.error == 0 {
            let unique = out.unique;
            assert_eq!(unique, req_unique(&req), "the reply answers this request");
            if reply.len() >= hdr + 8 {
                let v = u64::from_le_bytes(reply[hdr..hdr + 8].try_into().expect("8 bytes"));
                if seen.len() < 16 {
                    seen.push(v);
                }
            }
        }
    }
    let after = snapshot(outer.path(), &share);
    assert_eq!(before.0, after.0, "nothing outside the share changed");
    if input.read_only {
        assert_eq!(before.1, after.1, "a read-only share does not change");
    }
    // Still serving (a DESTROY ends the session; the guest would INIT again).
    if destroyed {
        c.init();
    }
    assert!(
        c.lookup(1, "f").is_ok() || !share.join("f").exists(),
        "the server still answers"
    );
    assert!(
        c.lookup(1, ".").is_ok(),
        "the server still answers a LOOKUP"
    );
}

fn req_unique(req: &[u8]) -> u64 {
    u64::from_le_bytes(req[8..16].try_into().expect("header"))
}

/// What can be seen of the directory outside the share (the share only by name: the
/// guest may change its root's attributes), and of the share's top level.
fn snapshot(outer: &Path, share: &Path) -> (Vec<String>, Vec<String>) {
    let describe = |dir: &Path| {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        let mut v = Vec::new();
        for p in entries {
            if p == share {
                v.push(p.display().to_string());
                continue;
            }
            let m = std::fs::symlink_metadata(&p).expect("metadata");
            let content = if m.is_file() {
                std::fs::read(&p).expect("read")
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .expect("link")
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            v.push(format!(
                "{} mode={:o} uid={} gid={} len={} {:?}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.len() },
                content
            ));
        }
        v
    };
    (describe(outer), describe(share))
}
