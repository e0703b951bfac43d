//! virtio-rng through the virtio-mmio transport with the simulated driver.

mod common;

use common::driver::{Desc, Driver, DATA, F_WRITE};
use ember_vmm::devices::virtio::rng::Rng;
use ember_vmm::devices::virtio::VirtioDevice;

fn run(d: &mut Driver<Rng>) -> Vec<(u32, u32)> {
    d.kick();
    let dev = d.device.clone();
    let mut dev = dev.lock().unwrap();
    assert_eq!(dev.queue_events()[0].read().unwrap(), 1);
    dev.process_queue();
    drop(dev);
    d.used()
}

#[test]
fn fills_writable_buffers_with_fresh_random_bytes() {
    let mut d = Driver::new(Rng::new().unwrap(), 64);
    d.init();
    assert_eq!(d.read(ember_vmm::devices::virtio::mmio::reg::DEVICE_ID), 4);
    d.poke(DATA, &[0u8; 64]);
    d.submit(&[Desc {
        addr: DATA,
        len: 64,
        flags: F_WRITE,
        next: 0,
    }]);
    assert_eq!(run(&mut d)[0].1, 64);
    let first = d.peek(DATA, 64);
    assert!(
        first.iter().filter(|b| **b != 0).count() > 40,
        "random, not zeros: {first:?}"
    );
    d.submit(&[Desc {
        addr: DATA,
        len: 64,
        flags: F_WRITE,
        next: 0,
    }]);
    run(&mut d);
    assert_ne!(d.peek(DATA, 64), first, "each request gets new bytes");
    assert!(d.irq.read().unwrap() >= 1);
}

#[test]
fn read_only_or_out_of_memory_buffers_get_nothing() {
    let mut d = Driver::new(Rng::new().unwrap(), 64);
    d.init();
    d.poke(DATA, &[7u8; 16]);
    d.submit(&[Desc {
        addr: DATA,
        len: 16,
        flags: 0,
        next: 0,
    }]);
    assert_eq!(run(&mut d)[0].1, 0);
    assert_eq!(
        d.peek(DATA, 16),
        vec![7u8; 16],
        "read-only buffer untouched"
    );
    d.submit(&[Desc {
        addr: 1 << 40,
        len: 16,
        flags: F_WRITE,
        next: 0,
    }]);
    assert_eq!(run(&mut d).len(), 1, "returned, not lost");
    // Still serves good requests.
    d.submit(&[Desc {
        addr: DATA,
        len: 8,
        flags: F_WRITE,
        next: 0,
    }]);
    assert_eq!(run(&mut d)[0].1, 8);
}

#[test]
fn a_running_device_keeps_its_status_and_queues_until_a_reset() {
    use ember_vmm::devices::virtio::mmio::reg;
    use ember_vmm::devices::virtio::mmio::status;
    let mut d = Driver::new(Rng::new().unwrap(), 64);
    let running = d.init();
    assert_ne!(running & status::DRIVER_OK, 0);
    // Taking DRIVER_OK back is ignored: queue setup stays closed.
    d.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    assert_eq!(d.read(reg::STATUS), running);
    d.write(reg::QUEUE_SEL, 0);
    let size = d.read(reg::QUEUE_NUM_MAX);
    d.write(reg::QUEUE_DESC_LOW, 0x1000);
    d.write(reg::QUEUE_READY, 0);
    assert_eq!(d.read(reg::QUEUE_READY), 1, "queue 0 stays ready");
    // The device still serves requests.
    d.poke(DATA, &[0u8; 16]);
    d.submit(&[Desc {
        addr: DATA,
        len: 16,
        flags: F_WRITE,
        next: 0,
    }]);
    assert_eq!(run(&mut d)[0].1, 16);
    assert!(size > 0);
    // A reset still works.
    d.write(reg::STATUS, 0);
    assert_eq!(d.read(reg::STATUS), 0);
}
