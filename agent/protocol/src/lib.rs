//! `ember-agent-protocol`: the wire protocol between ember's runtime (host side) and
//! `ember-agent` (guest side).
//!
//! It owns `agent.proto`, ember's own service definition, and the Rust code that
//! `ttrpc-codegen` generates from it, so that the agent and the runtime compile against
//! exactly the same messages and protocol version.
