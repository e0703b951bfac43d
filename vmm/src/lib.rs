//! `ember-vmm`: ember's own virtual machine monitor.
//!
//! This crate owns everything that runs a microVM on KVM: the VM and its guest memory,
//! the vCPU threads, x86_64 direct boot of a Linux kernel, the legacy devices (serial,
//! i8042 reset), the virtio-mmio transport and the virtio devices behind it (block,
//! vsock, fs, net, rng), and the device event loop. The runtime calls it in-process;
//! the `ember-vmm` binary drives the same library from the command line.
//!
//! The VMM itself is built by the VMM issue; this crate is its place in the workspace.
