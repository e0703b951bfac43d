//! Errors as the ttrpc statuses containerd receives.

use containerd_shim_protos::ttrpc::{self as shim_ttrpc, Code};
use ember_runtime::sandbox::rpc_message;

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
