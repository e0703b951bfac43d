//! What a FUSE request costs the bandwidth bucket of the device's rate limiter (the `ops`
//! bucket takes one token per request, whatever it is).
//!
//! The bandwidth bucket counts the bytes of data a request moves between the guest and the
//! shared directory, read from the request before it is served:
//!
//! - READ, READDIR and READDIRPLUS: the `size` the guest asks for, capped at the room its
//!   reply buffer has after the reply header (the host never reads more into the guest
//!   than that buffer takes, so a guest cannot overcharge or undercharge itself by lying
//!   about `size`);
//! - WRITE: the `size` the guest gives, capped at the data the chain actually carries;
//! - everything else: the bytes of the request body (names, attributes, symlink targets,
//!   forget lists), which is what the guest hands the host. Metadata requests (LOOKUP,
//!   GETATTR, ...) are thus nearly free in bytes and bounded by the `ops` bucket instead:
//!   charging each a nominal size (say a page) would make a bandwidth-only limit silently
//!   also a limit on metadata operations, at an arbitrary rate, which is what `ops` is
//!   there to say explicitly.
//!
//! A request whose header or fixed part cannot be read costs nothing here (it fails
//! without moving data); it still takes its operation.

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader, ReadIn, WriteIn};
use fuse_backend_rs::transport::Reader;
use vm_memory::bitmap::BitmapSlice;

/// The bytes the request in `reader` charges the bandwidth bucket; `reply_room` is the
/// writable length of its descriptor chain (the reply buffer).
pub fn data_bytes<S: BitmapSlice>(mut reader: Reader<'_, S>, reply_room: usize) -> u64 {
    let Ok(header) = reader.read_obj::<InHeader>() else {
        return 0;
    };
    let bytes = match header.opcode {
        op if op == Opcode::Read as u32
            || op == Opcode::Readdir as u32
            || op == Opcode::Readdirplus as u32 =>
        {
            let Ok(read) = reader.read_obj::<ReadIn>() else {
                return 0;
            };
            let room = reply_room.saturating_sub(std::mem::size_of::<OutHeader>());
            (read.size as usize).min(room)
        }
        op if op == Opcode::Write as u32 => {
            let Ok(write) = reader.read_obj::<WriteIn>() else {
                return 0;
            };
            (write.size as usize).min(reader.available_bytes())
        }
        _ => reader.available_bytes(),
    };
    bytes as u64
}
