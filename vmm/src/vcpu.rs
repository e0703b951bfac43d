//! vCPU threads: one per vCPU, running KVM_RUN and dispatching port-I/O and MMIO exits to
//! the buses until the VM's exit latch is set.

use crate::devices::bus::Bus;
use crate::devices::legacy::power::{ExitLatch, ExitReason};
use crate::seccomp::{spawn_confined, Filter, SpawnError};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub(crate) fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Install the (empty) kick handler; KVM_RUN then returns EINTR when kicked.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), on_kick)
}

/// Everything a vCPU thread needs.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Its index (APIC id).
    pub index: u8,
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Where exits are recorded.
    pub exit: Arc<ExitLatch>,
    /// Where it parks while the VM is paused.
    pub gate: Arc<PauseGate>,
}

/// Where the vCPU threads park while the VM is paused: a flag, how many are parked, and a
/// condition variable. A vCPU checks it before each KVM_RUN; [`Pauser::pause`] sets it and
/// kicks the vCPUs out of KVM_RUN until all have parked.
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    parked: usize,
    /// The VM is shutting down: its vCPU threads may be joined, so no more kicks.
    ended: bool,
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the VM as ending, before its vCPU threads are joined: a [`Pauser`] kicks
    /// threads only under this lock and never after this, so it never signals a thread
    /// that is gone (whose `pthread_t` may name another thread by then).
    pub(crate) fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }

    /// On a vCPU thread: waits while the VM is paused (and not ending).
    fn park_while_paused(&self, exit: &ExitLatch) {
        let mut s = self.lock();
        if !s.paused {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && exit.reason().is_none() {
            // A timeout, so that a VM stopped while paused is seen without a wake-up.
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.parked -= 1;
    }
}

/// Pauses and resumes a running VM's vCPUs, from any thread (the control thread's seccomp
/// filter lets it send the kick signal).
#[derive(Debug, Clone)]
pub struct Pauser {
    gate: Arc<PauseGate>,
    threads: Vec<libc::pthread_t>,
}

/// Why a pause did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// Some vCPU did not stop in time.
    #[error("{parked} of {vcpus} vCPUs stopped within {within:?}; the VM was resumed")]
    NotParked {
        /// How many had stopped.
        parked: usize,
        /// How many there are.
        vcpus: usize,
        /// How long the pause waited.
        within: Duration,
    },
    /// The VM is shutting down.
    #[error("the VM is shutting down")]
    Ended,
}

impl Pauser {
    /// A pauser of the vCPU threads `threads`, which park at `gate`.
    pub(crate) fn new(gate: Arc<PauseGate>, threads: Vec<libc::pthread_t>) -> Pauser {
        Pauser { gate, threads }
    }

    /// How long [`Pauser::pause`] waits for every vCPU to park.
    pub const TIMEOUT: Duration = Duration::from_secs(5);

    /// Stops every vCPU (each parks before its next KVM_RUN); returns once all have.
    pub fn pause(&self) -> Result<(), PauseError> {
        let deadline = Instant::now() + Self::TIMEOUT;
        let mut s = self.gate.lock();
        s.paused = true;
        while s.parked < self.threads.len() {
            if s.ended {
                return Err(PauseError::Ended);
            }
            if Instant::now() > deadline {
                let parked = s.parked;
                drop(s);
                self.resume();
                return Err(PauseError::NotParked {
                    parked,
                    vcpus: self.threads.len(),
                    within: Self::TIMEOUT,
                });
            }
            // Kicks repeat: one sent while a vCPU is outside KVM_RUN is lost, and it
            // then parks at its next check anyway.
            for t in &self.threads {
                // SAFETY: the gate's lock is held and the VM has not ended
                // (`PauseGate::end`, which `Vm::shutdown` calls under this lock before it
                // joins any vCPU thread), so every thread in the list is still joinable.
                unsafe { libc::pthread_kill(*t, kick_signal()) };
            }
            s = self
                .gate
                .changed
                .wait_timeout(s, Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets the vCPUs run again (nothing to do when not paused).
    pub fn resume(&self) {
        self.gate.lock().paused = false;
        self.gate.changed.notify_all();
    }

    /// Whether the VM is paused.
    pub fn paused(&self) -> bool {
        self.gate.lock().paused
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: Option<JoinHandle<()>>,
    done: Arc<AtomicBool>,
    index: u8,
}

impl Vcpu {
    /// Start the thread; it installs `filter` (the vCPU seccomp filter, if any) before
    /// it enters the guest.
    pub fn spawn(self, filter: Option<Filter>) -> Result<VcpuHandle, SpawnError> {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let index = self.index;
        let kick = [kick_signal()];
        let thread = spawn_confined(format!("ember-vcpu{index}"), filter, &kick, move || {
            self.run();
            flag.store(true, Ordering::SeqCst);
        })?;
        Ok(VcpuHandle {
            thread: Some(thread),
            done,
            index,
        })
    }

    fn run(mut self) {
        while self.exit.reason().is_none() {
            self.gate.park_while_paused(&self.exit);
            if self.exit.reason().is_some() {
                break;
            }
            match self.fd.run() {
                Ok(exit) => {
                    if let Some(reason) = handle_exit(exit, &self.pio, &self.mmio, self.index) {
                        if reason != ExitReason::PowerOff {
                            self.log_state();
                        }
                        self.exit.trigger(reason);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if log::log_enabled!(log::Level::Trace) {
                        self.log_state();
                    }
                }
                Err(e) => {
                    log::error!("vcpu{}: KVM_RUN failed: {e}", self.index);
                    self.exit.trigger(ExitReason::Error);
                }
            }
        }
    }
}

impl Vcpu {
    /// Log where the vCPU stopped (for triple faults and errors).
    fn log_state(&self) {
        if let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) {
            log::info!(
                "vcpu{}: rip {:#x} rsp {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x}{}",
                self.index,
                r.rip,
                r.rsp,
                s.cr0,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                reset_state_note(r.rip, s.cs.selector)
            );
        }
    }
}

/// What to add to a logged vCPU state that is the x86 reset state (`cs:rip` =
/// `f000:fff0`): on AMD, KVM re-initialises a vCPU before it reports a triple fault
/// (`shutdown_interception`: the VMCB is undefined after SHUTDOWN), so the faulting state
/// is gone and these registers say nothing about the fault.
fn reset_state_note(rip: u64, cs: u16) -> &'static str {
    if rip == 0xfff0 && cs == 0xf000 {
        " (the reset state: KVM on AMD resets a vCPU before reporting a triple fault, so where it faulted is not known)"
    } else {
        ""
    }
}

/// Handle one exit; `Some` when the VM must stop.
fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus, index: u8) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                log::trace!("vcpu{index}: read of unmapped port {port:#x}");
                data.fill(0xff); // open bus
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                log::trace!("vcpu{index}: write to unmapped port {port:#x}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                log::debug!("vcpu{index}: read of unmapped MMIO {addr:#x}");
                data.fill(0);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                log::debug!("vcpu{index}: write to unmapped MMIO {addr:#x}");
            }
        }
        VcpuExit::Shutdown => {
            log::info!("vcpu{index}: triple fault (KVM_EXIT_SHUTDOWN)");
            return Some(ExitReason::TripleFault);
        }
        VcpuExit::Hlt => {
            log::info!("vcpu{index}: halted");
            return Some(ExitReason::PowerOff);
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                other => {
                    log::error!("vcpu{index}: system event {other}");
                    ExitReason::Error
                }
            });
        }
        VcpuExit::FailEntry(reason, cpu) => {
            log::error!("vcpu{index}: KVM entry failed: hardware reason {reason:#x} on cpu {cpu}");
            return Some(ExitReason::Error);
        }
        VcpuExit::InternalError => {
            log::error!("vcpu{index}: KVM internal error (the instruction emulator gave up)");
            return Some(ExitReason::Error);
        }
        other => {
            log::error!("vcpu{index}: unexpected exit {other:?}");
            return Some(ExitReason::Error);
        }
    }
    None
}

impl VcpuHandle {
    /// The thread, for [`Pauser`]'s kicks.
    pub(crate) fn pthread(&self) -> Option<libc::pthread_t> {
        self.thread.as_ref().map(|t| t.as_pthread_t())
    }

    /// Kick the thread out of KVM_RUN until it notices the exit latch, then join it.
    /// Kicks repeat because one sent while the thread is outside KVM_RUN is lost.
    pub fn stop(mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.done.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                log::error!("vcpu{}: did not stop within 5 s; leaving it", self.index);
                return;
            }
            let _ = thread.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::thread::JoinHandleExt;

    /// A stand-in for a vCPU thread: checks the gate every millisecond until `stop`.
    fn looping_thread(
        gate: Arc<PauseGate>,
        exit: Arc<ExitLatch>,
        stop: Arc<AtomicBool>,
    ) -> JoinHandle<()> {
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                gate.park_while_paused(&exit);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    #[test]
    fn a_pause_parks_the_threads_and_a_resume_lets_them_go() {
        install_kick_handler().unwrap();
        let gate = Arc::new(PauseGate::default());
        let exit = Arc::new(ExitLatch::new().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let t = looping_thread(gate.clone(), exit, stop.clone());
        let pauser = Pauser::new(gate.clone(), vec![t.as_pthread_t() as libc::pthread_t]);
        pauser.pause().unwrap();
        assert!(pauser.paused());
        assert_eq!(gate.lock().parked, 1);
        pauser.resume();
        let start = Instant::now();
        while gate.lock().parked != 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "still parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
    }

    #[test]
    fn a_pause_of_an_ending_vm_kicks_nothing_and_fails_at_once() {
        install_kick_handler().unwrap();
        let gate = Arc::new(PauseGate::default());
        let stop = Arc::new(AtomicBool::new(false));
        // A thread that never checks the gate: only the end of the VM stops the pause.
        let t = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let pauser = Pauser::new(gate.clone(), vec![t.as_pthread_t() as libc::pthread_t]);
        gate.end();
        let start = Instant::now();
        assert!(matches!(pauser.pause(), Err(PauseError::Ended)));
        assert!(start.elapsed() < Pauser::TIMEOUT / 2);
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
    }

    #[test]
    fn the_reset_state_is_called_what_it_is() {
        assert!(reset_state_note(0xfff0, 0xf000).contains("reset state"));
        assert_eq!(reset_state_note(0x1000600, 0x10), "");
    }
}
