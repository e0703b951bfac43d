//! `containerd-shim-ember-v2`: containerd's runtime `io.containerd.ember.v2`.
//!
//! containerd starts one shim per pod (CRI groups containers by
//! `io.kubernetes.cri.sandbox-id`; a container without it is its own pod). The shim serves
//! the task v2 API over ttrpc, runs the pod's sandbox through `ember-runtime` (a microVM, or
//! the `process` backend), connects containerd's stdio FIFOs to the agent's stream
//! connections, and publishes task events back to containerd.

mod metrics;
mod oom;
mod options;
mod pod;
mod process;
mod publisher;
mod service;
mod stdio;
mod task;
#[cfg(test)]
mod testing;

use containerd_shim::asynchronous::run;
use containerd_shim::Config;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.ember.v2";

#[tokio::main]
async fn main() {
    let config = Config {
        // The shim waits for its own children (the process backend's agent) through pidfds;
        // the crate's SIGCHLD reaper would steal their exit statuses. Orphans of a sandbox
        // that dies belong to the host's init, not to the shim.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    run::<service::EmberShim>(RUNTIME_ID, Some(config)).await;
}
