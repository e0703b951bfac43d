//! Client side for the runtime: one ttrpc connection to the agent carrying both services,
//! and the version handshake that refuses an agent speaking another protocol.

use std::time::Duration;

use crate::agent::VersionRequest;
use crate::agent_ttrpc::{AgentClient, HealthClient};
use crate::{check_version, Address, VersionError};

/// Errors connecting to an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made.
    #[error("cannot connect to the agent at {addr}: {message}")]
    Connect {
        /// The address tried.
        addr: String,
        /// ttrpc's message.
        message: String,
    },
    /// The Version call failed or timed out.
    #[error("agent Health.Version failed: {0}")]
    Version(String),
    /// The agent speaks another protocol version.
    #[error(transparent)]
    Incompatible(#[from] VersionError),
}

/// A connection to an agent: its `Agent` and `Health` services share one ttrpc client.
#[derive(Clone)]
pub struct AgentConnection {
    /// Container and sandbox RPCs.
    pub agent: AgentClient,
    /// Check and Version.
    pub health: HealthClient,
}

impl AgentConnection {
    /// Connects to `unix://PATH` or `vsock://CID:PORT` (a guest-side client; the host
    /// reaches a microVM's agent through the VMM's hybrid-vsock socket, see
    /// [`AgentConnection::from_stream`]).
    pub async fn connect(addr: &Address) -> Result<AgentConnection, ClientError> {
        let client = ttrpc::asynchronous::Client::connect(&addr.to_string())
            .await
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self::from_client(client))
    }

    /// Uses an already connected byte stream (e.g. a hybrid-vsock Unix stream after its
    /// `CONNECT` handshake).
    pub fn from_stream<S>(stream: S) -> AgentConnection
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + 'static,
    {
        let socket = ttrpc::asynchronous::transport::Socket::new(stream);
        Self::from_client(ttrpc::asynchronous::Client::new(socket))
    }

    fn from_client(client: ttrpc::asynchronous::Client) -> AgentConnection {
        AgentConnection {
            agent: AgentClient::new(client.clone()),
            health: HealthClient::new(client),
        }
    }

    /// Asks the agent's version and refuses a protocol this crate does not speak.
    pub async fn handshake(
        &self,
        timeout: Duration,
    ) -> Result<crate::agent::VersionResponse, ClientError> {
        let ctx = ttrpc::context::with_timeout(timeout.as_nanos() as i64);
        let v = self
            .health
            .version(ctx, &VersionRequest::new())
            .await
            .map_err(|e| ClientError::Version(e.to_string()))?;
        check_version(&v)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::agent::VersionResponse;
    use crate::agent_ttrpc::{create_health, Health};

    struct FakeAgent(u32);

    #[async_trait]
    impl Health for FakeAgent {
        async fn version(
            &self,
            _ctx: &ttrpc::r#async::TtrpcContext,
            _req: VersionRequest,
        ) -> ttrpc::Result<VersionResponse> {
            let mut r = VersionResponse::new();
            r.protocol_version = self.0;
            r.agent_version = "test".into();
            Ok(r)
        }
    }

    async fn serve(version: u32) -> (tempfile::TempDir, Address, ttrpc::asynchronous::Server) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let mut server = ttrpc::asynchronous::Server::new()
            .add_listener(listener.into())
            .register_service(create_health(Arc::new(FakeAgent(version))));
        server.start().await.unwrap();
        (dir, Address::Unix(path), server)
    }

    #[tokio::test]
    async fn handshake_accepts_our_version_and_refuses_others() {
        let (_d, addr, _s) = serve(crate::PROTOCOL_VERSION).await;
        let c = AgentConnection::connect(&addr).await.unwrap();
        let v = c.handshake(Duration::from_secs(5)).await.unwrap();
        assert_eq!(v.protocol_version, crate::PROTOCOL_VERSION);

        let (_d, addr, _s) = serve(crate::PROTOCOL_VERSION + 7).await;
        let c = AgentConnection::connect(&addr).await.unwrap();
        let e = c.handshake(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ClientError::Incompatible(_)), "{e}");
        assert!(e.to_string().contains("rebuild the guest image"), "{e}");
    }

    #[tokio::test]
    async fn connect_failure_names_the_address() {
        let e = match AgentConnection::connect(&Address::Unix("/nonexistent/ember.sock".into()))
            .await
        {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e,
        };
        assert!(
            e.to_string().contains("unix:///nonexistent/ember.sock"),
            "{e}"
        );
    }
}
