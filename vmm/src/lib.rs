//! `ember-vmm`: ember's own virtual machine monitor.
//!
//! This crate owns everything that runs a microVM on KVM: the VM and its guest memory,
//! the vCPU threads, x86_64 direct boot of a Linux kernel, the legacy devices (serial,
//! i8042 reset), the virtio-mmio transport and the virtio devices behind it, and the
//! device event loop. The `ember-vmm` binary drives it, from the command line or, one
//! jailed process per sandbox, from the runtime over a control channel ([`control`],
//! [`jail`]); [`Vm`] is the same machine as a library (benches, the VMM's tests).

pub mod arch;
pub mod capabilities;
pub mod config;
pub mod control;
pub mod devices;
pub mod event_loop;
pub mod guest_log;
pub mod host;
pub mod jail;
pub mod layout;
pub mod memory;
pub mod rate_limiter;
pub mod seccomp;
pub mod vcpu;
pub mod vm;

// The facade the runtime uses: what it needs of the VMM is re-exported here, so that the
// device modules can change inside without the runtime following. The modules above stay
// `pub` for the VMM's own integration tests (`vmm/tests`, which drive single devices) and
// the `ember-vmm` binary; `tests/tests/boundaries.rs` checks that the host crates (runtime,
// shim) name nothing of the VMM but what is re-exported here.
pub use capabilities::{probe as probe_capabilities, Capability, CapabilityError};
pub use config::{
    BucketConfig, CpuProfile, DiskConfig, FsConfig, NetConfig, NetRateLimitConfig, RateLimitConfig,
    SerialSink, VmConfig, VsockConfig, DEFAULT_SERIAL_MAX_BYTES, MAX_BUCKET_SIZE,
    MAX_REFILL_TIME_MS, MAX_VCPUS, MAX_VIRTIO_DEVICES, MIN_MEMORY_MIB,
};
pub use control::{
    Channel as ControlChannel, ChannelError as ControlChannelError,
    MessageError as ControlMessageError, Reply as ControlReply,
    ReplyMessage as ControlReplyMessage, Request as ControlRequest,
    RequestMessage as ControlRequestMessage, SlotInfo, MAX_MESSAGE as MAX_CONTROL_MESSAGE,
};
pub use devices::legacy::power::{ExitLatch, ExitReason};
pub use devices::virtio::block::{BlockError, BlockSlot};
pub use host::Virtualization;
pub use jail::{JailConfig, DEFAULT_NOFILE, DEVICE_CAPABILITIES};
pub use vcpu::{PauseError, Pauser};
pub use vm::{Vm, VmError};
