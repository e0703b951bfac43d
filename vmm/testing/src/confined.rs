//! A device event loop on its own thread, confined by the VMM's device seccomp filter as
//! the VMM's device thread is, but pumped on demand by the test: device tests run their
//! device through it, so every system call the device makes is checked against the
//! filter (a missing one kills the test process with SIGSYS).

use ember_vmm::event_loop::Subscriber;
use ember_vmm::seccomp::{spawn_confined, Filter, ThreadKind};
use event_manager::{EventManager, SubscriberOps};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

enum Cmd {
    /// One `run_with_timeout(ms)`.
    Run(i32),
    /// `run_with_timeout(ms)` until `n` runs in a row handled nothing.
    Idle(i32, u32),
}

/// The loop thread and its command channel.
pub struct ConfinedLoop {
    cmd: Option<SyncSender<Cmd>>,
    done: Receiver<usize>,
    thread: Option<JoinHandle<()>>,
}

impl ConfinedLoop {
    /// Start the loop with `subscribers`; returns once the thread's filter is installed.
    pub fn new(subscribers: Vec<Subscriber>) -> Self {
        let mut em: EventManager<Subscriber> = EventManager::new().unwrap();
        for s in subscribers {
            em.add_subscriber(s);
        }
        let (cmd, cmds) = sync_channel::<Cmd>(0);
        let (reply, done) = sync_channel(0);
        let filter = Filter::new(ThreadKind::Devices).expect("device filter");
        let thread = spawn_confined("test-devices".into(), Some(filter), &[], move || {
            for c in cmds {
                let handled = match c {
                    Cmd::Run(ms) => em.run_with_timeout(ms).unwrap(),
                    Cmd::Idle(ms, n) => {
                        let (mut idle, mut total) = (0, 0);
                        while idle < n {
                            match em.run_with_timeout(ms).unwrap() {
                                0 => idle += 1,
                                k => {
                                    idle = 0;
                                    total += k;
                                }
                            }
                        }
                        total
                    }
                };
                if reply.send(handled).is_err() {
                    break;
                }
            }
        })
        .expect("confined device thread");
        Self {
            cmd: Some(cmd),
            done,
            thread: Some(thread),
        }
    }

    fn call(&self, c: Cmd) -> usize {
        self.cmd.as_ref().unwrap().send(c).unwrap();
        self.done
            .recv()
            .expect("the confined device thread answers")
    }

    /// One event-loop iteration waiting up to `ms`; returns the events handled.
    pub fn run(&self, ms: i32) -> usize {
        self.call(Cmd::Run(ms))
    }

    /// Iterate (waiting up to `ms` each time) until `n` iterations in a row handled
    /// nothing; returns the events handled.
    pub fn pump(&self, ms: i32, n: u32) -> usize {
        self.call(Cmd::Idle(ms, n))
    }
}

impl Drop for ConfinedLoop {
    fn drop(&mut self) {
        self.cmd.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
