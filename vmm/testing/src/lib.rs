//! A simulated guest for ember-vmm's devices, shared by the VMM's integration tests
//! (`vmm/tests`) and the coverage-guided fuzz targets (`fuzz/`).
//!
//! - [`driver`]: a virtio driver that sets a device up through its virtio-mmio registers
//!   and writes descriptor tables and rings into guest memory;
//! - [`confined`]: a device event loop on a thread under the VMM's device seccomp filter;
//! - [`fuse_client`] and [`vsock_guest`]: the guest side of virtio-fs and virtio-vsock;
//! - [`guest_image`]: tiny guests (ELF, PVH, bzImage) around a few bytes of code, for the
//!   VMM's tests and benchmarks;
//! - [`fuzz`]: the fuzz targets' bodies, one per guest-facing surface, which the fuzz
//!   crate calls on each input and `tests/corpus.rs` replays over the committed corpus.
//!
//! Everything here panics on failure: it is test code.

pub mod confined;
pub mod driver;
pub mod fuse_client;
pub mod fuzz;
pub mod guest_image;
pub mod vmm_process;
pub mod vsock_guest;
