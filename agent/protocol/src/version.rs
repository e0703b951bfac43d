//! The protocol version and the check a runtime applies to an agent's `Health.Version`.

use crate::agent::VersionResponse;

/// The version of the wire protocol defined by `agent.proto` in this crate. Bump it on any
/// change an older peer cannot understand (a changed field meaning, a required new RPC).
pub const PROTOCOL_VERSION: u32 = 1;

/// The agent speaks a protocol this build does not understand.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "agent {agent_version:?} speaks agent protocol version {agent}, but this runtime speaks \
     version {ours}: install an ember-agent built from the same ember release as the runtime \
     (rebuild the guest image)"
)]
pub struct VersionError {
    /// The protocol version the agent reported.
    pub agent: u32,
    /// This crate's [`PROTOCOL_VERSION`].
    pub ours: u32,
    /// The agent's build version, for the message.
    pub agent_version: String,
}

/// Accepts a `Health.Version` answer only when its protocol version equals
/// [`PROTOCOL_VERSION`].
pub fn check_version(resp: &VersionResponse) -> Result<(), VersionError> {
    if resp.protocol_version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionError {
            agent: resp.protocol_version,
            ours: PROTOCOL_VERSION,
            agent_version: resp.agent_version.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_same_and_refuses_other_versions() {
        let mut r = VersionResponse::new();
        r.protocol_version = PROTOCOL_VERSION;
        assert!(check_version(&r).is_ok());
        r.protocol_version = PROTOCOL_VERSION + 1;
        r.agent_version = "9.9.9".into();
        let e = check_version(&r).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        assert!(e.to_string().contains("9.9.9"), "{e}");
    }
}
