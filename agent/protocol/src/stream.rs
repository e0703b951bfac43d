//! The stdio stream connection: how a runtime attaches to one stdio stream of a process.
//!
//! CreateContainer and ExecProcess name up to three stream ids (`StdioStreams`). For each
//! id the runtime opens one connection to the agent's stdio listener (see
//! [`crate::Address::stdio_address`]) and sends this header:
//!
//! ```text
//! offset  size  field
//! 0       4     magic, the ASCII bytes "EMIO"
//! 4       1     header version, 1
//! 5       1     N, the length of the stream id in bytes (1..=255)
//! 6       N     the stream id, UTF-8
//! ```
//!
//! The agent answers with one status byte ([`StreamStatus`]); on `0` (attached) the
//! connection carries raw bytes with no further framing:
//! - a `stdin` stream flows runtime → process; the runtime's half-close (shutdown of its
//!   write side) or the `CloseStdin` RPC gives the process EOF;
//! - a `stdout`/`stderr` stream flows process → runtime and ends (EOF) once the process and
//!   every child holding the stream have closed it;
//! - with `terminal: true` the `stdout` stream carries the terminal's output and the `stdin`
//!   stream its input.
//!
//! Output is held in the kernel pipe (or terminal) until the stream is attached, so output
//! written before the runtime connects, even before the process exits, is never lost; a
//! process that writes more than the pipe holds blocks until the stream is attached, as
//! with any pipe. Each stream id can be attached once.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First bytes of every stream header.
pub const MAGIC: &[u8; 4] = b"EMIO";
/// Version of the header format.
pub const HEADER_VERSION: u8 = 1;
/// Longest stream id, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// The agent's one-byte answer to a stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamStatus {
    /// The stream is attached; raw bytes follow.
    Attached = 0,
    /// No process names this stream id (yet, or any more).
    UnknownStream = 1,
    /// Another connection already attached this stream id.
    AlreadyAttached = 2,
    /// The header was malformed (bad magic, version or id).
    BadHeader = 3,
}

impl StreamStatus {
    /// Decodes a status byte.
    pub fn from_byte(b: u8) -> Option<StreamStatus> {
        match b {
            0 => Some(StreamStatus::Attached),
            1 => Some(StreamStatus::UnknownStream),
            2 => Some(StreamStatus::AlreadyAttached),
            3 => Some(StreamStatus::BadHeader),
            _ => None,
        }
    }
}

/// Errors opening or accepting a stream connection.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream id is empty or longer than [`MAX_ID_LEN`] bytes.
    #[error("stream id {0:?}: must be 1 to 255 bytes long")]
    BadId(String),
    /// The peer did not send a valid header.
    #[error("stream header: {0}")]
    BadHeader(String),
    /// The agent refused the stream.
    #[error("stream {id:?}: agent refused it: {status:?}")]
    Refused {
        /// The stream id sent.
        id: String,
        /// The agent's answer.
        status: StreamStatus,
    },
    /// I/O on the connection failed.
    #[error("stream connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes the header for `id`.
pub fn encode_header(id: &str) -> Result<Vec<u8>, StreamError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(StreamError::BadId(id.to_string()));
    }
    let mut h = Vec::with_capacity(6 + id.len());
    h.extend_from_slice(MAGIC);
    h.push(HEADER_VERSION);
    h.push(id.len() as u8);
    h.extend_from_slice(id.as_bytes());
    Ok(h)
}

/// Client side: sends the header for `id` on a fresh connection and waits for the agent's
/// answer. On success the connection is ready for raw stdio bytes.
pub async fn open_stream<S>(mut conn: S, id: &str) -> Result<S, StreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.write_all(&encode_header(id)?).await?;
    conn.flush().await?;
    let status = conn.read_u8().await?;
    match StreamStatus::from_byte(status) {
        Some(StreamStatus::Attached) => Ok(conn),
        Some(status) => Err(StreamError::Refused {
            id: id.to_string(),
            status,
        }),
        None => Err(StreamError::BadHeader(format!(
            "agent answered unknown status byte {status}"
        ))),
    }
}

/// Client side over a Unix socket (the `process` backend): connects to the agent's stdio
/// socket and attaches `id`.
pub async fn connect_unix(
    path: impl AsRef<std::path::Path>,
    id: &str,
) -> Result<tokio::net::UnixStream, StreamError> {
    let conn = tokio::net::UnixStream::connect(path).await?;
    open_stream(conn, id).await
}

/// Agent side: reads a header and returns the stream id. The caller answers with
/// [`write_status`].
pub async fn read_header<S>(conn: &mut S) -> Result<String, StreamError>
where
    S: AsyncRead + Unpin,
{
    let mut fixed = [0u8; 6];
    conn.read_exact(&mut fixed).await?;
    if &fixed[..4] != MAGIC {
        return Err(StreamError::BadHeader(format!(
            "bad magic {:?}, expected \"EMIO\"",
            &fixed[..4]
        )));
    }
    if fixed[4] != HEADER_VERSION {
        return Err(StreamError::BadHeader(format!(
            "header version {} not supported (expected {HEADER_VERSION})",
            fixed[4]
        )));
    }
    let len = fixed[5] as usize;
    if len == 0 {
        return Err(StreamError::BadHeader("empty stream id".into()));
    }
    let mut id = vec![0u8; len];
    conn.read_exact(&mut id).await?;
    String::from_utf8(id).map_err(|_| StreamError::BadHeader("stream id is not UTF-8".into()))
}

/// Agent side: answers a header.
pub async fn write_status<S>(conn: &mut S, status: StreamStatus) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    conn.write_all(&[status as u8]).await?;
    conn.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_round_trips_and_status_is_reported() {
        let (a, mut b) = tokio::io::duplex(64);
        let server = tokio::spawn(async move {
            let id = read_header(&mut b).await.unwrap();
            write_status(&mut b, StreamStatus::Attached).await.unwrap();
            (id, b)
        });
        let _a = open_stream(a, "c1-stdout").await.unwrap();
        let (id, _b) = server.await.unwrap();
        assert_eq!(id, "c1-stdout");

        let (a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = read_header(&mut b).await;
            write_status(&mut b, StreamStatus::UnknownStream)
                .await
                .unwrap();
        });
        let e = open_stream(a, "nope").await.unwrap_err();
        assert!(matches!(
            e,
            StreamError::Refused {
                status: StreamStatus::UnknownStream,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn rejects_bad_magic_and_bad_ids() {
        assert!(matches!(encode_header(""), Err(StreamError::BadId(_))));
        assert!(matches!(
            encode_header(&"x".repeat(256)),
            Err(StreamError::BadId(_))
        ));
        let mut bad: &[u8] = b"HTTP/1.1";
        assert!(matches!(
            read_header(&mut bad).await,
            Err(StreamError::BadHeader(_))
        ));
    }
}
