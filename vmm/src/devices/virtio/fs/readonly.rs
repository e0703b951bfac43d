//! Read-only shares: FUSE requests that would change the shared directory are answered
//! with EROFS before they reach the passthrough server.
//!
//! fuse-backend-rs's passthrough file system has no read-only mode, and wrapping each of
//! its 45 `FileSystem` methods would repeat the whole trait; the set of modifying FUSE
//! opcodes is small and fixed by the protocol, so the check is done on the request header.

use fuse_backend_rs::abi::fuse_abi::{InHeader, OpenIn, OutHeader};
use fuse_backend_rs::transport::{Reader, Writer};
use std::io::Write;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::ByteValued;

/// FUSE opcodes that modify the file system (Linux `fuse_opcode`).
const MODIFYING: &[u32] = &[
    4,  // SETATTR
    6,  // SYMLINK
    8,  // MKNOD
    9,  // MKDIR
    10, // UNLINK
    11, // RMDIR
    12, // RENAME
    13, // LINK
    16, // WRITE
    21, // SETXATTR
    24, // REMOVEXATTR
    35, // CREATE
    43, // FALLOCATE
    45, // RENAME2
    47, // COPY_FILE_RANGE
    48, // SETUPMAPPING (DAX mappings may be writable)
    51, // TMPFILE
];
const OPEN: u32 = 14;

/// Whether the request in `reader` would modify a read-only share; returns its header.
pub fn violation<S: BitmapSlice>(mut reader: Reader<'_, S>) -> Option<InHeader> {
    let header: InHeader = reader.read_obj().ok()?;
    if MODIFYING.contains(&header.opcode) {
        return Some(header);
    }
    if header.opcode == OPEN {
        let open: OpenIn = reader.read_obj().ok()?;
        let flags = open.flags as i32;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Some(header);
        }
    }
    None
}

/// Answer `header`'s request with EROFS; returns the bytes written.
pub fn reply_erofs<S: BitmapSlice>(header: &InHeader, mut writer: Writer<'_, S>) -> usize {
    let out = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -libc::EROFS,
        unique: header.unique,
    };
    match writer.write_all(out.as_slice()) {
        Ok(()) => out.len as usize,
        Err(_) => 0,
    }
}
