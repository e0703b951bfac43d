//! How the runtime reaches a sandbox's agent: its ttrpc connection (dialled with retries
//! until a deadline, then version-checked) and its stdio stream connections.
//!
//! - `process` backend: the agent's Unix socket, and `PATH.stdio` for streams.
//! - `microvm` backend: the VMM's hybrid-vsock Unix socket; each connection first sends
//!   `CONNECT <port>\n` and reads `OK <n>\n` (the agent port for ttrpc, port + 1 for stdio).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_agent_protocol::{stream, AgentConnection, ClientError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Errors reaching the agent.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The socket could not be connected.
    #[error("cannot connect to {what}: {source}")]
    Connect {
        /// Which socket (and port).
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The hybrid-vsock handshake failed.
    #[error("{what}: the VMM refused CONNECT {port}: {answer:?}")]
    Refused {
        /// Which socket.
        what: String,
        /// The vsock port asked for.
        port: u32,
        /// What it answered.
        answer: String,
    },
    /// The agent did not answer before the deadline.
    #[error("the agent did not answer within {timeout_ms} ms (agent.dial_timeout_ms); last error: {last}")]
    Timeout {
        /// The deadline.
        timeout_ms: u64,
        /// The last failure seen.
        last: String,
    },
    /// The agent speaks another protocol.
    #[error(transparent)]
    Incompatible(ClientError),
    /// Opening a stdio stream failed.
    #[error("stdio stream {id}: {source}")]
    Stream {
        /// The stream id.
        id: String,
        /// Why.
        source: stream::StreamError,
    },
}

/// Where a sandbox's agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// A Unix socket served by the agent itself; streams at `PATH.stdio`.
    Unix(PathBuf),
    /// A VMM hybrid-vsock socket and the agent's vsock port (streams on port + 1).
    HybridVsock {
        /// The VMM's Unix socket.
        socket: PathBuf,
        /// The agent's ttrpc port.
        port: u32,
    },
}

impl AgentEndpoint {
    fn describe(&self, stdio: bool) -> String {
        match self {
            AgentEndpoint::Unix(p) if stdio => format!("{}.stdio", p.display()),
            AgentEndpoint::Unix(p) => p.display().to_string(),
            AgentEndpoint::HybridVsock { socket, port } => {
                format!("{} vsock port {}", socket.display(), port + stdio as u32)
            }
        }
    }

    /// Opens one raw connection (ttrpc or stdio).
    async fn dial(&self, stdio: bool) -> Result<UnixStream, EndpointError> {
        let what = self.describe(stdio);
        let err = |source| EndpointError::Connect {
            what: what.clone(),
            source,
        };
        match self {
            AgentEndpoint::Unix(p) => {
                let path = if stdio {
                    let mut s = p.clone().into_os_string();
                    s.push(ember_agent_protocol::address::UNIX_STREAM_SUFFIX);
                    PathBuf::from(s)
                } else {
                    p.clone()
                };
                UnixStream::connect(&path).await.map_err(err)
            }
            AgentEndpoint::HybridVsock { socket, port } => {
                let port = port + stdio as u32;
                let mut s = UnixStream::connect(socket).await.map_err(err)?;
                s.write_all(format!("CONNECT {port}\n").as_bytes())
                    .await
                    .map_err(err)?;
                // Read the answer line byte by byte so nothing after it is consumed.
                let mut reader = BufReader::with_capacity(1, &mut s);
                let mut line = String::new();
                reader.read_line(&mut line).await.map_err(err)?;
                if !line.starts_with("OK ") {
                    return Err(EndpointError::Refused {
                        what,
                        port,
                        answer: line.trim().to_string(),
                    });
                }
                Ok(s)
            }
        }
    }

    /// Dials the agent until it answers a version handshake or `timeout` passes. A version
    /// mismatch fails at once.
    pub async fn connect(&self, timeout: Duration) -> Result<AgentConnection, EndpointError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(2);
        let mut last = String::from("none");
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(EndpointError::Timeout {
                    timeout_ms: timeout.as_millis() as u64,
                    last,
                });
            }
            match self.dial(false).await {
                Ok(s) => {
                    let conn = AgentConnection::from_stream(s);
                    match conn.handshake(left).await {
                        Ok(_) => return Ok(conn),
                        Err(e @ ClientError::Incompatible(_)) => {
                            return Err(EndpointError::Incompatible(e))
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(delay.min(left)).await;
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Opens the stdio stream `id` (named in CreateContainer/ExecProcess) and returns the
    /// attached connection.
    pub async fn open_stream(&self, id: &str) -> Result<UnixStream, EndpointError> {
        let conn = self.dial(true).await?;
        stream::open_stream(conn, id)
            .await
            .map_err(|source| EndpointError::Stream {
                id: id.to_string(),
                source,
            })
    }
}
