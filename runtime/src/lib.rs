//! `ember-runtime`: the sandbox runtime and the `ember` CLI.
//!
//! It owns the `Sandbox` (a microVM or, on hosts without hardware virtualization, the
//! `process` backend), the agent client, the OCI spec translation for the guest, the
//! sandbox's shared filesystem, network and resource sizing, and `ember check`, which
//! tells a user what their host can run ([`check`]).

pub mod check;
