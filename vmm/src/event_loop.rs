//! The device event loop: one thread, epoll through event-manager, apart from the vCPUs.
//! Devices subscribe to their queue eventfds; a stop eventfd ends the loop.

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

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
    /// Start the loop thread with `subscribers`.
    pub fn start(subscribers: Vec<Subscriber>) -> std::io::Result<Self> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(|e| std::io::Error::other(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        manager.add_subscriber(Arc::new(Mutex::new(StopWatcher {
            evt: stop_evt.try_clone()?,
            stop: stop.clone(),
        })));
        for s in subscribers {
            manager.add_subscriber(s);
        }
        let thread = std::thread::Builder::new()
            .name("ember-devices".into())
            .spawn(move || {
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
