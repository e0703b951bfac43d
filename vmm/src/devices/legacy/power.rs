//! How the guest ends the VM: the i8042 reset line, ember's power-off port, or a triple
//! fault seen by a vCPU. Devices record the reason here and wake the VMM.

use std::sync::atomic::{AtomicU8, Ordering};
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitReason {
    /// The guest wrote to the power-off port.
    PowerOff = 1,
    /// The guest asked for a reset (i8042 pulse, or `reboot`).
    Reset = 2,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault = 3,
    /// The host stopped the VM.
    Stopped = 4,
    /// A vCPU hit an error KVM could not handle.
    Error = 5,
}

impl ExitReason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::PowerOff,
            2 => Self::Reset,
            3 => Self::TripleFault,
            4 => Self::Stopped,
            5 => Self::Error,
            _ => return None,
        })
    }
}

/// The VM's exit latch: the first reason wins.
#[derive(Debug)]
pub struct ExitLatch {
    reason: AtomicU8,
    event: EventFd,
}

impl ExitLatch {
    /// A latch with its wake-up eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: AtomicU8::new(0),
            event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Record `reason` (unless one is already recorded) and wake the waiter.
    pub fn trigger(&self, reason: ExitReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.event.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        ExitReason::from_u8(self.reason.load(Ordering::SeqCst))
    }

    /// The eventfd that becomes readable on the first trigger.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

/// ember's power-off port: any write powers the VM off. Linux without ACPI has no other
/// way to power off, so the agent (and tiny test guests) use this port, which sits where
/// QEMU's `isa-debug-exit` usually does.
pub struct PowerOffPort(pub std::sync::Arc<ExitLatch>);

/// I/O port of [`PowerOffPort`].
pub const POWER_OFF_PORT: u16 = 0x501;

impl crate::devices::bus::BusDevice for PowerOffPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0.trigger(ExitReason::PowerOff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let l = ExitLatch::new().unwrap();
        assert_eq!(l.reason(), None);
        l.trigger(ExitReason::Reset);
        l.trigger(ExitReason::PowerOff);
        assert_eq!(l.reason(), Some(ExitReason::Reset));
        assert_eq!(l.event().read().unwrap(), 2);
    }
}
