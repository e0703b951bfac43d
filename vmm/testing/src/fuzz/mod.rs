//! The fuzz targets' bodies: each takes the raw input bytes, decodes them with
//! [`arbitrary`] into what a hostile guest does, does it to a device through the simulated
//! driver, and asserts the device's invariants (a panic is a finding).
//!
//! The fuzz crate (`fuzz/fuzz_targets/*.rs`) calls [`run`]; `tests/corpus.rs` replays the
//! committed corpus (`fuzz/corpus/<target>/`) through the same function on the stable
//! toolchain, so every seed and every past finding is a regression test.

pub mod blk;
pub mod fuse;
pub mod mmio;
pub mod net;
pub mod virtqueue;
pub mod vsock;

use arbitrary::{Arbitrary, Unstructured};

/// The targets, by the name of their fuzz binary and corpus directory.
pub const TARGETS: &[&str] = &["mmio", "virtqueue", "blk", "vsock", "net", "fuse"];

/// Run target `name` on `data`; panics on a broken invariant, and on an unknown name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "mmio" => mmio::run(data),
        "virtqueue" => virtqueue::run(data),
        "blk" => blk::run(data),
        "vsock" => vsock::run(data),
        "net" => net::run(data),
        "fuse" => fuse::run(data),
        other => panic!("unknown fuzz target {other:?}; the targets are {TARGETS:?}"),
    }
}

/// Decode `data` as a `T`; `None` when the bytes do not make one (the input is skipped).
/// With `EMBER_FUZZ_DEBUG` set, print what was decoded (to read a crashing input).
pub(crate) fn decode<'a, T: Arbitrary<'a> + std::fmt::Debug>(data: &'a [u8]) -> Option<T> {
    let input = T::arbitrary_take_rest(Unstructured::new(data)).ok();
    if std::env::var_os("EMBER_FUZZ_DEBUG").is_some() {
        eprintln!("{input:#?}");
    }
    input
}

/// A guest address as a fuzzer should pick it: mostly inside the buffers the target laid
/// out, sometimes at the edge of guest memory, sometimes anywhere.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub(crate) enum Addr {
    /// `base + offset` of the target's data area.
    Data(u16),
    /// This many bytes before the end of guest memory.
    NearEnd(u8),
    /// Any 64-bit address.
    Raw(u64),
}

impl Addr {
    /// The address, for a data area at `base` in a guest of `mem_size` bytes.
    pub(crate) fn resolve(self, base: u64, mem_size: u64) -> u64 {
        match self {
            Addr::Data(o) => base + u64::from(o),
            Addr::NearEnd(n) => mem_size - u64::from(n),
            Addr::Raw(a) => a,
        }
    }
}
