//! One process of a task (a container's init or an exec) as the shim tracks it: its
//! containerd-facing state, stdio, and exit.

use containerd_shim_protos::api::Status;
use protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use crate::stdio::{Copiers, StdioPaths};

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: u32,
    /// When the shim saw it end.
    pub at: Timestamp,
}

/// A process of a container.
#[derive(Debug)]
pub struct Proc {
    /// Empty for the init process.
    pub exec_id: String,
    /// The pid reported to containerd.
    pub pid: u32,
    /// Created, running, paused or stopped.
    pub status: Status,
    /// containerd's FIFOs.
    pub stdio: StdioPaths,
    /// For an exec: its OCI process JSON, kept from Exec until Start.
    pub spec_json: Option<String>,
    /// The stdio copies, once started.
    pub copiers: Copiers,
    exit_tx: watch::Sender<Option<Exit>>,
}

impl Proc {
    /// A new process that has not run yet.
    pub fn new(exec_id: &str, stdio: StdioPaths) -> Proc {
        Proc {
            exec_id: exec_id.to_string(),
            pid: 0,
            status: Status::CREATED,
            stdio,
            spec_json: None,
            copiers: Copiers::default(),
            exit_tx: watch::channel(None).0,
        }
    }

    /// Its exit, once it ended.
    pub fn exit(&self) -> Option<Exit> {
        self.exit_tx.borrow().clone()
    }

    /// A receiver that sees the exit.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }

    /// Records the exit (the first one wins).
    pub fn set_exit(&mut self, status: u32) -> Exit {
        if let Some(e) = self.exit() {
            return e;
        }
        let e = Exit { status, at: now() };
        self.status = Status::STOPPED;
        self.exit_tx.send_replace(Some(e.clone()));
        e
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_is_seen_once_by_waiters() {
        let mut p = Proc::new("", StdioPaths::default());
        let mut w = p.exit_watch();
        assert_eq!(p.status, Status::CREATED);
        let e = p.set_exit(7);
        assert_eq!(p.set_exit(9).status, 7, "the first exit wins");
        w.wait_for(|e| e.is_some()).await.unwrap();
        assert_eq!(w.borrow().as_ref().unwrap().status, e.status);
        assert_eq!(p.status, Status::STOPPED);
    }
}
