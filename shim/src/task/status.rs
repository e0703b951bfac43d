//! Errors as the ttrpc statuses containerd receives.

use containerd_shim_protos::ttrpc::{self as shim_ttrpc, Code};
use ember_runtime::sandbox::{rpc_message, SandboxError};

use crate::pod::PodStartError;

pub(super) fn status(code: Code, msg: impl ToString) -> shim_ttrpc::Error {
    shim_ttrpc::Error::RpcStatus(shim_ttrpc::get_status(code, msg))
}

pub(super) fn not_found(what: &str) -> shim_ttrpc::Error {
    status(Code::NOT_FOUND, format!("{what}: not found"))
}

/// Maps an agent RPC error to a status for containerd, keeping the agent's code.
pub(super) fn agent_err(rpc: &str, e: ember_agent_protocol::ttrpc::Error) -> shim_ttrpc::Error {
    let code = match &e {
        ember_agent_protocol::ttrpc::Error::RpcStatus(s) => match s.code() {
            ember_agent_protocol::ttrpc::Code::NOT_FOUND => Code::NOT_FOUND,
            ember_agent_protocol::ttrpc::Code::INVALID_ARGUMENT => Code::INVALID_ARGUMENT,
            ember_agent_protocol::ttrpc::Code::ALREADY_EXISTS => Code::ALREADY_EXISTS,
            ember_agent_protocol::ttrpc::Code::FAILED_PRECONDITION => Code::FAILED_PRECONDITION,
            _ => Code::UNKNOWN,
        },
        _ => Code::UNAVAILABLE,
    };
    status(code, format!("ember agent {rpc}: {}", rpc_message(&e)))
}

/// Maps a failure to start the pod's sandbox to a status for containerd.
pub(super) fn start_err(e: PodStartError) -> shim_ttrpc::Error {
    let code = match e {
        PodStartError::Config(_) => Code::INVALID_ARGUMENT,
        // A host the backend cannot run on is refused in one line, before anything is
        // made; containerd prints it as the reason the task was not created.
        PodStartError::Sandbox(SandboxError::Unsupported { .. }) => Code::FAILED_PRECONDITION,
        PodStartError::Sandbox(_) => Code::UNKNOWN,
    };
    status(code, e)
}
