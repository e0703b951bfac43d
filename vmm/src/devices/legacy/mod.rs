//! Legacy x86 devices: COM1 serial, the i8042 reset line, the POST debug port and
//! ember's power-off port.

pub mod console_log;
pub mod i8042;
pub mod power;
pub mod serial;

/// The quietly ignored POST code port (0x80).
pub struct DebugPort;

impl crate::devices::bus::BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}
