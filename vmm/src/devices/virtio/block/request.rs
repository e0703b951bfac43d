//! Parsing and executing one virtio-blk request from a descriptor chain.
//!
//! Everything here comes from the guest and is untrusted: virtio-queue's `Reader` and
//! `Writer` check every descriptor against guest memory, and its chain iterator bounds the
//! chain length (no loops). A malformed request ends with VIRTIO_BLK_S_IOERR (when a
//! status byte can be written) and never touches memory outside the guest.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use thiserror::Error;
use virtio_queue::{Reader, Writer};
use vm_memory::bitmap::BitmapSlice;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;
/// Largest data transfer of one request (bounds the bounce buffer).
pub const MAX_TRANSFER: usize = 16 << 20;

/// Request types (virtio 1.2 §5.2.6).
pub mod types {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Get device id.
    pub const GET_ID: u32 = 8;
}

/// Status values written in the last byte.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Failure.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// Why a request failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// Fewer than 16 device-readable bytes for the header.
    #[error("request header missing or too short")]
    ShortHeader,
    /// No device-writable byte for the status.
    #[error("no writable status byte")]
    NoStatus,
    /// Data length not a multiple of the sector size.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(usize),
    /// The request reaches past the disk's end.
    #[error("sectors {sector}+{len} bytes lie past the end of the disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        len: usize,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A read or write of an empty slot (no backing attached).
    #[error("no disk attached to this slot")]
    NoMedium,
    /// Data larger than [`MAX_TRANSFER`].
    #[error("transfer of {0} bytes is larger than {MAX_TRANSFER}")]
    TooLarge(usize),
    /// Unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Guest memory could not be read or written.
    #[error("guest memory access failed")]
    Memory,
    /// The host file failed.
    #[error("host I/O failed: {0}")]
    Io(String),
}

impl RequestError {
    /// The status byte this failure reports.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// The disk a request runs against.
pub struct Disk<'a> {
    /// Backing file; `None` for an empty slot, where reads and writes fail with IOERR.
    pub file: Option<&'a File>,
    /// Size in bytes (capacity × 512; 0 for an empty slot).
    pub size: u64,
    /// Reject writes.
    pub read_only: bool,
    /// GET_ID answer.
    pub id: &'a [u8; ID_LEN],
}

fn check_range(disk: &Disk<'_>, sector: u64, len: usize) -> Result<u64, RequestError> {
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned(len));
    }
    if len > MAX_TRANSFER {
        return Err(RequestError::TooLarge(len));
    }
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .filter(|o| {
            o.checked_add(len as u64)
                .is_some_and(|end| end <= disk.size)
        })
        .ok_or(RequestError::OutOfRange { sector, len })?;
    Ok(offset)
}

/// Execute one request. `reader`/`writer` are the chain's device-readable and
/// device-writable parts; `bounce` is the device's reusable transfer buffer (it grows to
/// the largest request seen, at most [`MAX_TRANSFER`]). Returns the number of bytes
/// written to the guest (including the status byte), or 0 when not even a status byte
/// could be written.
pub fn execute<B: BitmapSlice>(
    disk: &Disk<'_>,
    reader: &mut Reader<'_, B>,
    writer: &mut Writer<'_, B>,
    bounce: &mut Vec<u8>,
) -> u32 {
    let writable = writer.available_bytes();
    if writable == 0 {
        crate::guest_warn!("virtio-blk: {}", RequestError::NoStatus);
        return 0;
    }
    // The status byte is the last writable byte; data goes before it.
    let mut data_writer = match writer.split_at(writable - 1) {
        Ok(status_writer) => std::mem::replace(writer, status_writer),
        Err(_) => return 0,
    };
    let (st, data_len) = match run(disk, reader, &mut data_writer, bounce) {
        Ok(n) => (status::OK, n),
        Err(e) => {
            log::debug!("virtio-blk: request failed: {e}");
            (e.status(), 0)
        }
    };
    if writer.write_all(&[st]).is_err() {
        return 0;
    }
    (data_len + 1) as u32
}

/// The first `len` bytes of `bounce`, growing it (zero-filled) only when needed.
fn bounce_slice(bounce: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if bounce.len() < len {
        bounce.resize(len, 0);
    }
    &mut bounce[..len]
}

fn run<B: BitmapSlice>(
    disk: &Disk<'_>,
    reader: &mut Reader<'_, B>,
    data: &mut Writer<'_, B>,
    bounce: &mut Vec<u8>,
) -> Result<usize, RequestError> {
    let mut header = [0u8; 16];
    if reader.available_bytes() < header.len() {
        return Err(RequestError::ShortHeader);
    }
    reader
        .read_exact(&mut header)
        .map_err(|_| RequestError::Memory)?;
    let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    match kind {
        types::IN => {
            let file = disk.file.ok_or(RequestError::NoMedium)?;
            let len = data.available_bytes();
            let offset = check_range(disk, sector, len)?;
            let buf = bounce_slice(bounce, len);
            file.read_exact_at(buf, offset)
                .map_err(|e| RequestError::Io(e.to_string()))?;
            data.write_all(buf).map_err(|_| RequestError::Memory)?;
            Ok(len)
        }
        types::OUT => {
            let file = disk.file.ok_or(RequestError::NoMedium)?;
            if disk.read_only {
                return Err(RequestError::ReadOnly);
            }
            let len = reader.available_bytes();
            let offset = check_range(disk, sector, len)?;
            let buf = bounce_slice(bounce, len);
            reader.read_exact(buf).map_err(|_| RequestError::Memory)?;
            file.write_all_at(buf, offset)
                .map_err(|e| RequestError::Io(e.to_string()))?;
            Ok(0)
        }
        types::FLUSH => {
            // Nothing to flush in an empty slot or a read-only disk.
            if let Some(file) = disk.file.filter(|_| !disk.read_only) {
                file.sync_data()
                    .map_err(|e| RequestError::Io(e.to_string()))?;
            }
            Ok(0)
        }
        types::GET_ID => {
            let n = data.available_bytes().min(ID_LEN);
            data.write_all(&disk.id[..n])
                .map_err(|_| RequestError::Memory)?;
            Ok(n)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}
