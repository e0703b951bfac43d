//! Just enough of the i8042 keyboard controller for the guest to request a reset
//! (command 0xFE on port 0x64, which `reboot=k` uses).

use super::power::{ExitLatch, ExitReason};
use crate::devices::bus::BusDevice;
use std::sync::Arc;

/// First I/O port of the controller (0x60 data, 0x64 status/command).
pub const I8042_PORT: u16 = 0x60;
/// Ports covered (0x60..=0x64).
pub const I8042_LEN: u64 = 5;
const CMD_RESET: u8 = 0xfe;
const COMMAND_OFFSET: u64 = 4;

/// The i8042 reset line.
pub struct I8042 {
    exit: Arc<ExitLatch>,
}

impl I8042 {
    /// A controller that records resets in `exit`.
    pub fn new(exit: Arc<ExitLatch>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // No keyboard: empty output buffer, nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET) {
            self.exit.trigger(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_resets() {
        let exit = Arc::new(ExitLatch::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[CMD_RESET]);
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
