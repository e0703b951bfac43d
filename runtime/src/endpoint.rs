//! How the runtime reaches a sandbox's agent: its ttrpc connection (dialled with retries
//! until a deadline, then version-checked) and its stdio stream connections.
//!
//! - `process` backend: the agent's Unix socket, and `PATH.stdio` for streams.
//! - `microvm` backend: the VMM's hybrid-vsock Unix socket; each connection first sends
//!   `CONNECT <port>\n` and reads `OK <n>\n` (the agent port for ttrpc, port + 1 for stdio).
//!
//! A stalled guest must not hang create or exec, so nothing here waits without a bound:
//! each dial attempt gets at most [`DIAL_ATTEMPT_TIMEOUT`] (within the overall
//! `agent.dial_timeout_ms` of [`AgentEndpoint::connect`]), and opening a stdio stream (dial,
//! header, the agent's status byte) at most the limit its caller passes, which is
//! `agent.dial_timeout_ms` as well ([`AgentEndpoint::open_stream`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_agent_protocol::{stream, AgentConnection, ClientError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest one dial attempt may take: the connect and, on the `microvm` backend, the VMM's
/// answer to `CONNECT` (which waits for the guest's). A retry follows while the overall
/// deadline of [`AgentEndpoint::connect`] allows.
pub const DIAL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// One dial got no answer in time.
    #[error(
        "{what}: no answer within {timeout_ms} ms while {step}; the VMM or the guest is stalled"
    )]
    DialTimeout {
        /// Which socket (and port).
        what: String,
        /// What was waited for.
        step: &'static str,
        /// The time allowed.
        timeout_ms: u64,
    },
    /// A stdio stream was not attached in time.
    #[error("stdio stream {id} on {what}: the agent did not attach it within {timeout_ms} ms (agent.dial_timeout_ms); the guest's agent is stalled")]
    StreamTimeout {
        /// The stream id.
        id: String,
        /// Which socket (and port).
        what: String,
        /// The time allowed.
        timeout_ms: u64,
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

    /// Opens one raw connection (ttrpc or stdio), failing with
    /// [`EndpointError::DialTimeout`] after `limit`.
    async fn dial_within(&self, stdio: bool, limit: Duration) -> Result<UnixStream, EndpointError> {
        match tokio::time::timeout(limit, self.dial(stdio)).await {
            Ok(r) => r,
            Err(_) => Err(EndpointError::DialTimeout {
                what: self.describe(stdio),
                step: match self {
                    AgentEndpoint::Unix(_) => "connecting",
                    AgentEndpoint::HybridVsock { .. } => {
                        "connecting and waiting for the VMM's answer to CONNECT"
                    }
                },
                timeout_ms: millis(limit),
            }),
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
                    timeout_ms: millis(timeout),
                    last,
                });
            }
            match self
                .dial_within(false, DIAL_ATTEMPT_TIMEOUT.min(left))
                .await
            {
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
    /// attached connection; fails after `limit` (the dial included; callers pass
    /// `agent.dial_timeout_ms`, the bound on reaching the agent at all) with
    /// [`EndpointError::StreamTimeout`] or [`EndpointError::DialTimeout`].
    pub async fn open_stream(
        &self,
        id: &str,
        limit: Duration,
    ) -> Result<UnixStream, EndpointError> {
        let open = async {
            // The whole limit: the agent is running, but a slow guest (everything emulated,
            // in the nested test host: over 5 s seen) may take long to accept.
            let conn = self.dial_within(true, limit).await?;
            stream::open_stream(conn, id)
                .await
                .map_err(|source| EndpointError::Stream {
                    id: id.to_string(),
                    source,
                })
        };
        match tokio::time::timeout(limit, open).await {
            Ok(r) => r,
            Err(_) => Err(EndpointError::StreamTimeout {
                id: id.to_string(),
                what: self.describe(true),
                timeout_ms: millis(limit),
            }),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A listener that accepts every connection and never answers (a stalled VMM or agent).
    fn stalled(path: &std::path::Path) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        })
    }

    /// Fails the test instead of hanging it when the call under test never returns.
    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("the call hung: no timeout");
        (r, t0.elapsed())
    }

    #[tokio::test]
    async fn dial_of_a_stalled_vmm_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("vsock.sock");
        let _srv = stalled(&socket);
        let ep = AgentEndpoint::HybridVsock {
            socket: socket.clone(),
            port: 1024,
        };
        let (r, took) = bounded(ep.dial_within(false, Duration::from_millis(200))).await;
        let e = r.unwrap_err();
        assert!(
            matches!(
                e,
                EndpointError::DialTimeout {
                    timeout_ms: 200,
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("vsock.sock vsock port 1024"), "{msg}");
        assert!(msg.contains("CONNECT"), "{msg}");
        assert!(took < Duration::from_secs(2), "{took:?}");

        // connect() retries within its own deadline and names the last failure.
        let (r, took) = bounded(ep.connect(Duration::from_millis(500))).await;
        let msg = r.err().expect("no agent").to_string();
        assert!(
            msg.contains("within 500 ms (agent.dial_timeout_ms)"),
            "{msg}"
        );
        assert!(msg.contains("no answer within"), "{msg}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn stream_open_on_a_stalled_agent_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = tmp.path().join("agent.sock");
        let mut stdio = agent.clone().into_os_string();
        stdio.push(ember_agent_protocol::address::UNIX_STREAM_SUFFIX);
        let _srv = stalled(std::path::Path::new(&stdio));
        let ep = AgentEndpoint::Unix(agent);
        let (r, took) = bounded(ep.open_stream("c1.init.stdout", Duration::from_millis(300))).await;
        let e = r.unwrap_err();
        assert!(
            matches!(&e, EndpointError::StreamTimeout { id, timeout_ms: 300, .. } if id == "c1.init.stdout"),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("agent.sock.stdio"), "{msg}");
        assert!(took < Duration::from_secs(2), "{took:?}");

        // The same through a VMM that accepts the connection but never answers CONNECT.
        let socket = tmp.path().join("vsock.sock");
        let _vmm = stalled(&socket);
        let ep = AgentEndpoint::HybridVsock { socket, port: 1024 };
        let (r, _) = bounded(ep.open_stream("c1.init.stdin", Duration::from_millis(300))).await;
        let e = r.unwrap_err();
        // The dial's own limit and the stream's are equal here: either may fire first.
        assert!(
            matches!(
                e,
                EndpointError::DialTimeout { .. } | EndpointError::StreamTimeout { .. }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("vsock port 1025"), "{e}");
    }
}
