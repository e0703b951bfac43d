//! The device event loop: one thread, epoll through event-manager, apart from the vCPUs.
//! Devices subscribe to their queue eventfds; a stop eventfd ends the loop.

use crate::seccomp::{spawn_confined, Filter, SpawnError};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// The device thread's name.
pub const THREAD_NAME: &str = "ember-devices";

/// A subscriber shared between the event loop and the MMIO bus.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

struct StopWatcher {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop: cannot watch the stop eventfd: {e}");
        }
    }
}

/// The running loop.
pub struct EventLoop {
    thread: Option<JoinHandle<()>>,
    stop_evt: EventFd,
}

impl EventLoop {
    /// Start the loop thread with `subscribers`; it installs `filter` (the device
    /// seccomp filter, if any) before it handles any event.
    pub fn start(subscribers: Vec<Subscriber>, filter: Option<Filter>) -> Result<Self, SpawnError> {
        let host_err = |source| SpawnError::Thread {
            name: THREAD_NAME.into(),
            source,
        };
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| host_err(std::io::Error::other(e.to_string())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err)?;
        manager.add_subscriber(Arc::new(Mutex::new(StopWatcher {
            evt: stop_evt.try_clone().map_err(host_err)?,
            stop: stop.clone(),
        })));
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let thread = spawn_confined(THREAD_NAME.into(), filter, &[], move || {
            while !stop.load(Ordering::SeqCst) {
                if let Err(e) = manager.run() {
                    log::error!("event loop: {e}");
                    break;
                }
            }
        })?;
        Ok(Self {
            thread: Some(thread),
            stop_evt,
        })
    }

    /// Stop the loop and join its thread.
    pub fn stop(mut self) {
        let _ = self.stop_evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::fs::{ensure_nonzero_umask, thread_umask};
    use std::sync::mpsc;

    /// Clears its thread's umask when its eventfd fires, and reports the thread's umask.
    struct UmaskClearer {
        evt: EventFd,
        seen: mpsc::Sender<u32>,
    }

    impl MutEventSubscriber for UmaskClearer {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.evt.read();
            // SAFETY: umask(2) touches no memory.
            unsafe { libc::umask(0) };
            let _ = self.seen.send(thread_umask());
        }

        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn what_a_device_does_to_its_umask_stays_on_the_device_thread() {
        let before = ensure_nonzero_umask();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        let clearer: Subscriber = Arc::new(Mutex::new(UmaskClearer {
            evt: evt.try_clone().unwrap(),
            seen: tx,
        }));
        let filter = crate::seccomp::Filter::new(crate::seccomp::ThreadKind::Devices).unwrap();
        let event_loop = EventLoop::start(vec![clearer], Some(filter)).unwrap();
        evt.write(1).unwrap();
        let on_device_thread = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the subscriber never ran");
        event_loop.stop();
        assert_eq!(on_device_thread, 0);
        assert_eq!(
            thread_umask(),
            before,
            "the device thread cleared the process umask"
        );
    }
}
