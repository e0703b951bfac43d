//! The control channel's messages, as JSON objects tagged by `type`.
//!
//! The runtime sends [`Request`]s, each in a [`RequestMessage`] with an `id` it chooses
//! (a `u64`, greater than the last), and the VMM answers each with one [`Reply`], in a
//! [`ReplyMessage`] carrying the request's `id` back: a reply that comes late (after the
//! runtime gave up waiting for it) is thus never taken for the next request's. A request
//! without a valid `id` is answered with an `Error` that has none.
//! - `Start {config, jail}` first, once: the VMM builds the VM, jails itself, starts the
//!   vCPUs and answers `Ready {cmdline, slots}` (or `Error`, and exits);
//! - `Attach {slot, read_only, path}` with the disk's fd in `SCM_RIGHTS` (the jailed VMM
//!   cannot open host paths; `path` is only what messages show): `Attached`;
//! - `Detach {slot}`: `Detached`;
//! - `Stop`: `Stopping`.
//!
//! Every failure of a request is an `Error {message, bad_input}` answer, never the VMM's
//! end. The VMM sends `Exited {reason}` last, before it exits, however the VM ended: it
//! answers no request, so it has no `id`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::devices::legacy::power::ExitReason;
use crate::jail::JailConfig;

/// What the runtime asks of the VMM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Request {
    /// Build the VM from `config`, jail the process as `jail` says, start the vCPUs.
    Start {
        /// The VM.
        config: Box<VmConfig>,
        /// The jail.
        jail: JailConfig,
    },
    /// Back the empty slot `slot` with the disk whose fd comes with the message.
    Attach {
        /// The slot's index.
        slot: usize,
        /// Refuse the guest's writes.
        read_only: bool,
        /// The disk's host path, for messages only.
        path: PathBuf,
    },
    /// Empty the slot `slot`.
    Detach {
        /// The slot's index.
        slot: usize,
    },
    /// Stop the VM.
    Stop,
    /// Stop every vCPU until `Resume` (the devices keep serving what is queued).
    Pause,
    /// Let the vCPUs run again.
    Resume,
}

/// A request as sent: `{"id":N,"type":...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestMessage {
    /// The runtime's id for the request, which its reply carries back.
    pub id: u64,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// A reply as sent: `{"id":N,"type":...}`, or without `id` for `Exited` and for an
/// `Error` about a request whose id could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyMessage {
    /// The id of the request it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The reply.
    #[serde(flatten)]
    pub reply: Reply,
}

/// One virtio-blk slot of the VM, as `Ready` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// The slot's index (what `Attach` and `Detach` name).
    pub index: usize,
    /// Guest-physical address of its virtio-mmio window.
    pub mmio_addr: u64,
}

/// What the VMM answers, and its last word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Reply {
    /// The VM runs, jailed.
    Ready {
        /// The guest's full kernel command line.
        cmdline: String,
        /// The VM's empty virtio-blk slots.
        slots: Vec<SlotInfo>,
    },
    /// The disk is attached.
    Attached {
        /// The slot.
        slot: usize,
        /// Its capacity in 512-byte sectors.
        capacity: u64,
    },
    /// The slot is empty.
    Detached {
        /// The slot.
        slot: usize,
        /// Whether it held a disk.
        held: bool,
    },
    /// The VM is stopping; `Exited` follows.
    Stopping,
    /// Every vCPU has stopped.
    Paused,
    /// The vCPUs run again.
    Resumed,
    /// The request failed.
    Error {
        /// What failed, for the user.
        message: String,
        /// Whether the request (or the configuration) was at fault rather than the host.
        bad_input: bool,
    },
    /// The VM ended; the VMM exits next.
    Exited {
        /// Why.
        reason: ExitReason,
    },
}

impl Reply {
    /// An `Error` answer.
    pub fn error(message: impl std::fmt::Display, bad_input: bool) -> Reply {
        Reply::Error {
            message: message.to_string(),
            bad_input,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json_and_round_trip() {
        let mut config = VmConfig::new("/k");
        config.serial = crate::config::SerialSink::File("/s/console.log".into());
        config.vsock = Some(crate::config::VsockConfig {
            path: "/s/vsock.sock".into(),
            cid: 3,
        });
        let start = Request::Start {
            config: Box::new(config),
            jail: JailConfig::new("/s"),
        };
        let json = serde_json::to_string(&start).unwrap();
        assert!(json.starts_with("{\"type\":\"Start\""), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), start);
        assert_eq!(
            serde_json::to_string(&Request::Stop).unwrap(),
            "{\"type\":\"Stop\"}"
        );
        let exited = Reply::Exited {
            reason: ExitReason::TripleFault,
        };
        let json = serde_json::to_string(&exited).unwrap();
        assert_eq!(json, "{\"type\":\"Exited\",\"reason\":\"triple-fault\"}");
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), exited);
        assert!(serde_json::from_str::<Request>("{\"type\":\"Reboot\"}").is_err());
    }

    #[test]
    fn messages_carry_the_id_beside_the_type() {
        let attach = RequestMessage {
            id: u64::MAX,
            request: Request::Attach {
                slot: 2,
                read_only: true,
                path: "/d.img".into(),
            },
        };
        let json = serde_json::to_string(&attach).unwrap();
        assert_eq!(
            json,
            "{\"id\":18446744073709551615,\"type\":\"Attach\",\"slot\":2,\"read_only\":true,\"path\":\"/d.img\"}"
        );
        assert_eq!(
            serde_json::from_str::<RequestMessage>(&json).unwrap(),
            attach
        );
        let mut config = VmConfig::new("/k");
        config.memory_mib = 256;
        let start = RequestMessage {
            id: 1,
            request: Request::Start {
                config: Box::new(config),
                jail: JailConfig::new("/s"),
            },
        };
        let json = serde_json::to_string(&start).unwrap();
        assert_eq!(
            serde_json::from_str::<RequestMessage>(&json).unwrap(),
            start
        );
        // A request must have its id.
        let e = serde_json::from_str::<RequestMessage>("{\"type\":\"Stop\"}").unwrap_err();
        assert!(e.to_string().contains("missing field `id`"), "{e}");
        let stopping = ReplyMessage {
            id: Some(7),
            reply: Reply::Stopping,
        };
        let json = serde_json::to_string(&stopping).unwrap();
        assert_eq!(json, "{\"id\":7,\"type\":\"Stopping\"}");
        assert_eq!(
            serde_json::from_str::<ReplyMessage>(&json).unwrap(),
            stopping
        );
        // `Exited` has none.
        let exited = ReplyMessage {
            id: None,
            reply: Reply::Exited {
                reason: ExitReason::PowerOff,
            },
        };
        let json = serde_json::to_string(&exited).unwrap();
        assert_eq!(json, "{\"type\":\"Exited\",\"reason\":\"power-off\"}");
        assert_eq!(serde_json::from_str::<ReplyMessage>(&json).unwrap(), exited);
    }
}
