//! `ember-runtime`: the sandbox runtime and the `ember` CLI.
//!
//! It owns the [`sandbox::Sandbox`] (a microVM or, on hosts without hardware
//! virtualization, the `process` backend), the agent client ([`endpoint`]), the OCI spec
//! translation for the guest ([`oci`]), the sandbox's shared directory and host mounts
//! ([`mounts`]), cgroups ([`cgroups`]), network ([`network`]), the per-sandbox record of
//! host resources that makes cleanup after a crash possible ([`state`], [`cleanup`]), and
//! `ember check`, which tells a user what their host can run ([`check`]), and `ember-oci`,
//! the runc-compatible command line for Docker, Podman and containerd's runc shim
//! ([`ocicli`]).

pub mod cgroups;
pub mod check;
pub mod cleanup;
pub mod endpoint;
pub mod mounts;
pub mod network;
pub mod oci;
pub mod ocicli;
pub mod run;
pub mod sandbox;
pub mod state;
