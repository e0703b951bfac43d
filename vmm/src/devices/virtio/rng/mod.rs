//! virtio-rng (entropy device) fed from the host's `getrandom(2)`, so the guest's CRNG is
//! ready at once instead of waiting for boot-time entropy.

use super::{DeviceState, VirtioDevice, VIRTIO_F_VERSION_1};
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::Write;
use virtio_queue::QueueT;

/// virtio device id of an entropy device.
pub const DEVICE_TYPE: u32 = 4;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes given for one request (bounds the work a guest can ask for at once).
pub const MAX_REQUEST: usize = 64 << 10;

/// The entropy device.
pub struct Rng {
    state: DeviceState,
}

impl Rng {
    /// A new device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            state: DeviceState::new(&[QUEUE_SIZE])?,
        })
    }

    /// Fill every available buffer; returns how many were completed.
    pub fn process_queue(&mut self) -> usize {
        let Some(mem) = self.state.mem.as_ref() else {
            return 0;
        };
        let queue = &mut self.state.queues[0];
        let mut done = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(MAX_REQUEST);
                    let mut buf = vec![0u8; n];
                    match ember_sys::random::fill(&mut buf) {
                        Ok(()) => w.write_all(&buf).map(|_| n as u32).unwrap_or(0),
                        Err(e) => {
                            log::error!("virtio-rng: {e}");
                            0
                        }
                    }
                }
                Err(_) => {
                    crate::guest_warn!("virtio-rng: descriptor chain {head} is malformed; dropped");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, written) {
                crate::guest_warn!("virtio-rng: cannot return chain {head}: {e}");
                // A head outside the queue (the only failure once the rings are valid): the
                // chain is consumed, the ones after it are still served.
                continue;
            }
            done += 1;
        }
        self.state.notify(&[(0, done)]);
        done
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // no configuration space
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }
}

impl MutEventSubscriber for Rng {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.state.take_queue_event(&events, "virtio-rng").is_some() && self.is_activated() {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state.register_queue_events(ops, 0, "virtio-rng");
    }
}
