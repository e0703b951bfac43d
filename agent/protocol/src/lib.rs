//! `ember-agent-protocol`: the wire protocol between ember's runtime (host side) and
//! `ember-agent` (guest side).
//!
//! It owns `proto/agent.proto`, ember's own service definition, the Rust code that
//! `ttrpc-codegen` generates from it ([`agent`] messages, [`agent_ttrpc`] services and
//! clients), a connection helper for the runtime ([`AgentConnection`]), the protocol
//! version ([`PROTOCOL_VERSION`], checked with [`check_version`]), the agent's listen
//! addresses ([`address`]) and the header that opens a stdio stream connection
//! ([`stream`]).

#![deny(missing_docs)]

pub mod address;
pub mod client;
pub mod stream;
pub mod version;

/// Protobuf messages of `agent.proto` (generated).
#[allow(warnings, missing_docs, clippy::all, clippy::pedantic)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// ttrpc services (`Health`, `Agent`) and async clients of `agent.proto` (generated).
#[allow(warnings, missing_docs, clippy::all, clippy::pedantic)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use address::{Address, AddressError};
pub use client::{AgentConnection, ClientError};
pub use stream::{StreamError, StreamStatus};
pub use version::{check_version, VersionError, PROTOCOL_VERSION};

/// Re-exported so that users name the same ttrpc and protobuf versions as the generated code.
pub use protobuf;
pub use ttrpc;
