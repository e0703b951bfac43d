//! Devices: the buses, the legacy x86 devices and the virtio devices.

pub mod bus;
pub mod legacy;
pub mod virtio;
