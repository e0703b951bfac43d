//! The pod socket: how a sandbox container's holder, which owns the pod's sandbox (the VMM
//! or agent process is its child, and it holds the sandbox's shared-directory mounts), lets
//! the holders of the pod's other containers create and remove their containers in it.
//!
//! The owning holder listens on `<root>/<id>/pod.sock` (mode 0600, in the container's 0700
//! directory; peers of another uid are refused). Each connection carries one request, a
//! line of JSON ([`Request`]), and gets one answer, a line of JSON ([`Reply`]). When the
//! sandbox container's init exits, the holder stops listening, removes every container it
//! created for others (their holders' waits then end with 137) and destroys the sandbox.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ember_agent_protocol::agent::StdioStreams;
use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::error::OciCliError;
use super::pod::PodError;
use super::store::ContainerDir;
use crate::sandbox::{ContainerRequest, Sandbox};

/// The socket's name in the sandbox container's directory.
pub const POD_SOCKET: &str = "pod.sock";
/// How long a peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take to be answered (creating a container in a microVM under
/// emulation is slow).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// The stream ids of a process's stdio (the agent's [`StdioStreams`], serializable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streams {
    /// Stdin's stream id (empty: none).
    pub stdin: String,
    /// Stdout's.
    pub stdout: String,
    /// Stderr's.
    pub stderr: String,
}

impl From<&StdioStreams> for Streams {
    fn from(s: &StdioStreams) -> Self {
        Streams {
            stdin: s.stdin.clone(),
            stdout: s.stdout.clone(),
            stderr: s.stderr.clone(),
        }
    }
}

impl From<&Streams> for StdioStreams {
    fn from(s: &Streams) -> Self {
        let mut r = StdioStreams::new();
        r.stdin = s.stdin.clone();
        r.stdout = s.stdout.clone();
        r.stderr = s.stderr.clone();
        r
    }
}

/// A request to the owning holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create container `id` (not started) from `bundle`, its stdio on `stdio`.
    Create {
        /// Container id.
        id: String,
        /// Its bundle directory (absolute).
        bundle: PathBuf,
        /// Its stdio stream ids.
        stdio: Streams,
    },
    /// Remove container `id` (killing it); nothing to do when the owner did not create it or
    /// removed it already.
    Remove {
        /// Container id.
        id: String,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Why the request failed (`None`: done).
    pub error: Option<String>,
}

/// The owning holder's side: the listening socket and the containers created for others.
#[derive(Debug)]
pub struct Owner {
    listener: UnixListener,
    path: PathBuf,
    members: Mutex<BTreeSet<String>>,
}

/// The pod socket of the sandbox container in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(POD_SOCKET)
}

impl Owner {
    /// Listens on the pod socket of the sandbox container in `dir`.
    pub fn bind(dir: &ContainerDir) -> Result<Owner, OciCliError> {
        use std::os::unix::fs::PermissionsExt;
        let path = socket_path(&dir.dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(OciCliError::io(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(OciCliError::io(&path))?;
        Ok(Owner {
            listener,
            path,
            members: Mutex::default(),
        })
    }

    /// Answers requests until dropped (one at a time).
    pub async fn serve(&self, sb: &Sandbox) -> std::convert::Infallible {
        let uid = nix::unistd::geteuid().as_raw();
        loop {
            let (conn, _) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("{}: accept: {e}", self.path.display());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match conn.peer_cred() {
                Ok(c) if c.uid() == uid => {}
                other => {
                    warn!(
                        "{}: refused a peer that is not uid {uid}: {other:?}",
                        self.path.display()
                    );
                    continue;
                }
            }
            if let Err(e) = self.answer(conn, sb).await {
                warn!("{}: {e}", self.path.display());
            }
        }
    }

    async fn answer(&self, conn: UnixStream, sb: &Sandbox) -> std::io::Result<()> {
        let (read, mut write) = conn.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
        tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("no request in time"))??;
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => Reply {
                error: self.handle(req, sb).await.err(),
            },
            Err(e) => Reply {
                error: Some(format!("bad request: {e}")),
            },
        };
        let mut text = serde_json::to_string(&reply).expect("reply serializes");
        text.push('\n');
        write.write_all(text.as_bytes()).await
    }

    async fn handle(&self, req: Request, sb: &Sandbox) -> Result<(), String> {
        match req {
            Request::Create { id, bundle, stdio } => {
                let mut spec = super::holder::load_bundle(&bundle).map_err(|e| e.to_string())?;
                // The joining container's own holder runs its host hooks.
                let _ = super::hooks::HostHooks::take(&mut spec.json);
                if !self.members.lock().expect("members").insert(id.clone()) {
                    return Err(format!("container {id} is in this sandbox already"));
                }
                let created = sb
                    .create_container(ContainerRequest {
                        id: id.clone(),
                        spec,
                        rootfs_mounts: Vec::new(),
                        stdio: (&stdio).into(),
                    })
                    .await;
                match created {
                    Ok(_) => {
                        info!("sandbox={}: created container {id} for its holder", sb.id());
                        Ok(())
                    }
                    Err(e) => {
                        self.members.lock().expect("members").remove(&id);
                        Err(e.to_string())
                    }
                }
            }
            Request::Remove { id } => {
                if !self.members.lock().expect("members").contains(&id) {
                    return Ok(());
                }
                let r = sb.remove_container(&id, true).await;
                self.members.lock().expect("members").remove(&id);
                info!("sandbox={}: removed container {id}", sb.id());
                r.map_err(|e| e.to_string())
            }
        }
    }

    /// Stops listening and removes every container created for others: the sandbox is
    /// about to go.
    pub async fn close(self, sb: &Sandbox) {
        drop(self.listener);
        let _ = std::fs::remove_file(&self.path);
        let members = std::mem::take(&mut *self.members.lock().expect("members"));
        for id in members {
            if let Err(e) = sb.remove_container(&id, true).await {
                warn!("sandbox={}: remove container {id}: {e}", sb.id());
            }
        }
    }
}

/// Sends `req` to the holder of sandbox container `sandbox` listening on `socket`, and
/// waits for its answer.
pub async fn request(socket: &Path, sandbox: &str, req: &Request) -> Result<(), PodError> {
    let fail = |message: String| PodError::Owner {
        sandbox: sandbox.to_string(),
        socket: socket.to_path_buf(),
        message,
    };
    let conn = UnixStream::connect(socket).await.map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                format!("the sandbox container's holder is gone ({e})")
            }
            _ => e.to_string(),
        })
    })?;
    let (read, mut write) = conn.into_split();
    let mut text = serde_json::to_string(req).expect("request serializes");
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut line = String::new();
    tokio::time::timeout(REPLY_TIMEOUT, BufReader::new(read).read_line(&mut line))
        .await
        .map_err(|_| fail(format!("no answer within {REPLY_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let reply: Reply = serde_json::from_str(&line).map_err(|_| {
        fail("it ended without answering (the sandbox container exited?)".to_string())
    })?;
    match reply.error {
        None => Ok(()),
        Some(e) => Err(fail(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let r = Request::Remove { id: "c2".into() };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"op":"remove","id":"c2"}"#);
        let back: Request = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_missing_socket_says_the_holder_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let e = crate::ocicli::commands::block_on(request(
            &tmp.path().join(POD_SOCKET),
            "pod1",
            &Request::Remove { id: "c2".into() },
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("sandbox pod1") && e.contains("holder is gone"),
            "{e}"
        );
    }
}
