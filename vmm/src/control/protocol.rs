//! The control channel's messages, as JSON objects tagged by `type`.
//!
//! The runtime sends [`Request`]s, the VMM answers each with one [`Reply`]:
//! - `Start {config, jail}` first, once: the VMM builds the VM, jails itself, starts the
//!   vCPUs and answers `Ready {cmdline, slots}` (or `Error`, and exits);
//! - `Attach {slot, read_only, path}` with the disk's fd in `SCM_RIGHTS` (the jailed VMM
//!   cannot open host paths; `path` is only what messages show): `Attached`;
//! - `Detach {slot}`: `Detached`;
//! - `Stop`: `Stopping`.
//!
//! Every failure of a request is an `Error {message, bad_input}` answer, never the VMM's
//! end. The VMM sends `Exited {reason}` last, before it exits, however the VM ended.

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
}
