//! A VM: build it from a [`VmConfig`], start it, stop it, wait for it.
//!
//! Building does everything that can fail on bad input (files, sizes, kernel format)
//! before any thread starts, so a bad configuration is reported as one error.

use crate::arch::{boot, cpuid, mptable, regs};
use crate::capabilities;
use crate::config::{ConfigError, SerialSink, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::console_log::ConsoleLog;
use crate::devices::legacy::i8042::{I8042, I8042_LEN, I8042_PORT};
use crate::devices::legacy::power::{ExitLatch, ExitReason, PowerOffPort, POWER_OFF_PORT};
use crate::devices::legacy::serial::{Serial, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::devices::legacy::DebugPort;
use crate::devices::virtio::block::{Block, BlockError, BlockSlot};
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{reg, MmioTransport};
use crate::devices::virtio::net::tap::Tap;
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::event_loop::{EventLoop, Subscriber};
use crate::host::Virtualization;
use crate::layout::*;
use crate::memory::{self, GuestMemory, MemoryError};
use crate::rate_limiter::{RateLimitConfig, RateLimiter, RateLimiterError};
use crate::seccomp::{Filters, SeccompError, SpawnError};
use crate::vcpu::{self, PauseGate, Pauser, Vcpu, VcpuHandle};
use event_manager::MutEventSubscriber;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use vm_memory::{Address, GuestMemory as _, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Errors of building or running a VM.
#[derive(Debug, Error)]
pub enum VmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// /dev/kvm cannot be used.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open it?)")]
    OpenKvm(kvm_ioctls::Error),
    /// The host's KVM lacks what the VMM needs.
    #[error(transparent)]
    Capabilities(#[from] capabilities::CapabilityError),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel or initrd could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// vCPU registers could not be set.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// A disk could not be opened.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A network device could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A device's rate limiter could not be made.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
    /// A shared folder could not be set up.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// Device ranges overlap (a bug in ember's layout).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The serial output file cannot be created.
    #[error("cannot create serial output {path}: {source}")]
    SerialFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A host resource (eventfd, thread, signal handler) could not be created.
    #[error("cannot create {what}: {source}")]
    Host {
        /// Which resource.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The seccomp filters could not be built.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A VMM thread could not be started, or could not install its seccomp filter.
    #[error(transparent)]
    Thread(#[from] SpawnError),
    /// The VM was started twice.
    #[error("the VM is already started")]
    AlreadyStarted,
}

impl VmError {
    /// Whether the error is the user's input (exit status 2 of `ember-vmm`) rather than a
    /// failure of the host.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            VmError::Config(_)
                | VmError::Boot(_)
                | VmError::Block(_)
                | VmError::Vsock(_)
                | VmError::Fs(_)
                | VmError::SerialFile { .. }
        )
    }
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn host_err(what: &'static str) -> impl Fn(std::io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

/// A built VM.
pub struct Vm {
    // Field order matters for drop: vCPUs and devices go before the VM fd and memory.
    vcpus: Vec<Vcpu>,
    running: Vec<VcpuHandle>,
    event_loop: Option<EventLoop>,
    subscribers: Vec<Subscriber>,
    exit: Arc<ExitLatch>,
    gate: Arc<PauseGate>,
    cmdline: String,
    block_slots: Vec<BlockSlot>,
    filters: Option<Filters>,
    _vm: VmFd,
    _memory: GuestMemory,
}

impl Vm {
    /// Build a VM: validate, allocate memory, create devices, load the kernel, set up the
    /// vCPUs. Nothing runs yet.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        config.validate()?;
        let t0 = std::time::Instant::now();
        // Compiled first: a filter that cannot be built fails here, before anything runs.
        let filters = if config.seccomp {
            Some(Filters::new()?)
        } else {
            log::warn!("vm: seccomp is off: the VMM's threads run unconfined");
            None
        };
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        capabilities::require(&capabilities::answers(&kvm)?)?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        // Guest memory goes in before the irqchip and PIT exist: registering a memslot
        // waits for an SRCU grace period, which is immediate while nothing else uses the
        // VM (measured on a PVM host: 82 µs here, 6.4 ms after KVM_CREATE_PIT2).
        let mem = memory::create(config.memory_mib)?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the Vm keeps alive
            // for as long as the VM fd exists.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        vm.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;

        log::debug!(
            "vm: KVM VM and {} MiB of memory in {:?}",
            config.memory_mib,
            t0.elapsed()
        );
        let exit = Arc::new(ExitLatch::new().map_err(host_err("exit eventfd"))?);
        let gate = Arc::new(PauseGate::default());
        let mut pio = Bus::new();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("serial irqfd"))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let sink: Box<dyn std::io::Write + Send> = match &config.serial {
            SerialSink::Stdout => Box::new(std::io::stdout()),
            SerialSink::None => Box::new(std::io::sink()),
            SerialSink::File(path) => Box::new(
                ConsoleLog::create(path, config.serial_max_bytes).map_err(|source| {
                    VmError::SerialFile {
                        path: path.clone(),
                        source,
                    }
                })?,
            ),
        };
        pio.insert(
            COM1_PORT.into(),
            COM1_LEN,
            Arc::new(Mutex::new(Serial::new(serial_irq, sink))),
        )?;
        pio.insert(
            I8042_PORT.into(),
            I8042_LEN,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        pio.insert(0x80, 1, Arc::new(Mutex::new(DebugPort)))?;
        pio.insert(
            POWER_OFF_PORT.into(),
            1,
            Arc::new(Mutex::new(PowerOffPort(exit.clone()))),
        )?;

        let mut devices = VirtioSlots {
            vm: &vm,
            mem: &mem,
            mmio: Bus::new(),
            subscribers: Vec::new(),
            cmdline: config.cmdline.trim().to_string(),
        };
        // Each device gets its own limiter (and timerfd), made here, before the device
        // thread is confined.
        let limiter = |limits: &RateLimitConfig| RateLimiter::new(limits).map_err(VmError::from);
        for (i, disk) in config.disks.iter().enumerate() {
            devices.add(
                Block::new(&disk.path, disk.read_only, &format!("ember-disk{i}"))?
                    .with_rate_limiter(limiter(&config.block_rate_limit)?),
            )?;
        }
        let mut block_slots = Vec::new();
        for i in 0..usize::from(config.block_slots) {
            let added = devices.add(
                Block::slot(&format!("ember-slot{i}"))?
                    .with_rate_limiter(limiter(&config.block_rate_limit)?),
            )?;
            block_slots.push(BlockSlot::new(
                i,
                added.mmio_addr,
                added.device,
                added.interrupt,
            )?);
        }
        for n in &config.net {
            let tap = Tap::open(&n.tap, n.netns.as_deref()).map_err(NetError::from)?;
            let mac = n.mac_bytes().map_err(ConfigError::Invalid)?;
            devices.add(Net::new(tap, mac)?.with_rate_limiters(
                limiter(&config.net_rate_limit.rx)?,
                limiter(&config.net_rate_limit.tx)?,
            ))?;
        }
        for f in &config.fs {
            devices.add(
                Fs::new(&f.tag, &f.dir, f.read_only)?
                    .with_rate_limiter(limiter(&config.fs_rate_limit)?),
            )?;
        }
        if config.rng {
            devices.add(Rng::new().map_err(host_err("virtio-rng"))?)?;
        }
        if let Some(v) = &config.vsock {
            devices.add(Vsock::new(v.cid, &v.path)?)?;
        }
        let VirtioSlots {
            mmio,
            subscribers,
            mut cmdline,
            ..
        } = devices;

        let virt = Virtualization::detect(Path::new("/"));
        let tcg = crate::host::cpu_emulated_by_tcg();
        let profile = cpuid::resolve(config.cpu_profile, virt, tcg);
        match profile {
            cpuid::EffectiveProfile::EmulationSafe => {
                cmdline.push(' ');
                cmdline.push_str(cpuid::EMULATION_SAFE_CMDLINE);
                log::info!(
                    "cpu profile: emulation-safe ({:?} host{}, configured {:?}); appended `{}` to the kernel command line",
                    virt,
                    if tcg { " whose CPU QEMU's TCG emulates" } else { "" },
                    config.cpu_profile,
                    cpuid::EMULATION_SAFE_CMDLINE
                );
            }
            cpuid::EffectiveProfile::Host => {
                log::info!(
                    "cpu profile: host ({virt:?} host, configured {:?})",
                    config.cpu_profile
                )
            }
        }

        let entry = boot::load(&mem, &config.kernel, config.initrd.as_deref(), &cmdline)?;
        mptable::write(&mem, config.vcpus).map_err(|source| regs::RegsError::Memory {
            what: "MP table",
            source,
        })?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::new();
        for index in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut table = supported.clone();
            cpuid::filter(&mut table, profile, index, config.vcpus);
            fd.set_cpuid2(&table).map_err(kvm_err("KVM_SET_CPUID2"))?;
            regs::setup_msrs(&fd)?;
            regs::setup_regs(&fd, entry.mode, entry.addr)?;
            regs::setup_sregs(&mem, &fd, entry.mode)?;
            regs::setup_fpu(&fd)?;
            regs::setup_lapic(&fd)?;
            vcpus.push(Vcpu {
                fd,
                index,
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit: exit.clone(),
                gate: gate.clone(),
            });
        }
        log::debug!("vm: built in {:?}", t0.elapsed());
        log::info!(
            "vm: {} vCPU(s), {} MiB, {:?} entry at {:#x}, cmdline `{cmdline}`",
            config.vcpus,
            config.memory_mib,
            entry.mode,
            entry.addr
        );
        Ok(Self {
            vcpus,
            running: Vec::new(),
            event_loop: None,
            subscribers,
            exit,
            gate,
            cmdline,
            block_slots,
            filters,
            _vm: vm,
            _memory: mem,
        })
    }

    /// The full kernel command line the guest gets.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Handles on the VM's empty virtio-blk slots ([`VmConfig::block_slots`] of them, in
    /// order), to attach and detach disks from any thread while the VM runs. They stay
    /// valid after the VM ends (attaching then reaches no guest).
    pub fn block_slots(&self) -> &[BlockSlot] {
        &self.block_slots
    }

    /// The exit latch: `trigger(ExitReason::Stopped)` on it stops the VM from any thread.
    pub fn exit_latch(&self) -> Arc<ExitLatch> {
        self.exit.clone()
    }

    /// Make the threads [`Vm::start`] starts set their capabilities as they install their
    /// seccomp filters: the device thread keeps `devices` (what virtio-fs needs), the vCPU
    /// threads none. For a jailed VMM ([`crate::jail`]), whose threads would otherwise
    /// inherit the starting thread's. Returns false, changing nothing, when seccomp is off
    /// (the capabilities travel with the filters).
    pub fn confine_thread_capabilities(&mut self, devices: caps::CapsHashSet) -> bool {
        let Some(f) = &mut self.filters else {
            return false;
        };
        f.vcpu = f.vcpu.clone().with_capabilities(caps::CapsHashSet::new());
        f.devices = f.devices.clone().with_capabilities(devices);
        true
    }

    /// Start the device loop and the vCPUs.
    pub fn start(&mut self) -> Result<(), VmError> {
        if self.vcpus.is_empty() {
            return Err(VmError::AlreadyStarted);
        }
        vcpu::install_kick_handler().map_err(|e| VmError::Host {
            what: "vCPU kick signal handler",
            source: e.into(),
        })?;
        let (vcpu_filter, device_filter) = match &self.filters {
            Some(f) => (Some(f.vcpu.clone()), Some(f.devices.clone())),
            None => (None, None),
        };
        self.event_loop = Some(EventLoop::start(
            // The VM keeps its own references: the devices are dropped with the VM, on
            // the caller's thread, not on a confined VMM thread (a vsock device removes
            // its socket file when dropped, which those threads may not do).
            self.subscribers.clone(),
            device_filter,
        )?);
        for v in self.vcpus.drain(..) {
            self.running.push(v.spawn(vcpu_filter.clone())?);
        }
        Ok(())
    }

    /// What pauses and resumes the running vCPUs (from any thread): call it after
    /// [`Vm::start`], which starts the threads it kicks.
    pub fn pauser(&self) -> Pauser {
        Pauser::new(
            self.gate.clone(),
            self.running.iter().filter_map(|v| v.pthread()).collect(),
        )
    }

    /// Ask the VM to stop (from any thread, through [`Vm::exit_latch`] too).
    pub fn stop(&self) {
        self.exit.trigger(ExitReason::Stopped);
    }

    /// Wait until the guest or the host ends the VM, then stop every thread.
    pub fn wait(mut self) -> ExitReason {
        let reason = loop {
            if let Some(r) = self.exit.reason() {
                break r;
            }
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(self.exit.event()),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
        };
        self.shutdown();
        reason
    }

    fn shutdown(&mut self) {
        let t0 = std::time::Instant::now();
        // No Pauser kicks a vCPU thread from here on: they are about to be joined.
        self.gate.end();
        for v in self.running.drain(..) {
            v.stop();
        }
        if let Some(l) = self.event_loop.take() {
            l.stop();
        }
        log::debug!("vm: threads stopped in {:?}", t0.elapsed());
    }

    /// Build, start and wait: run a VM to its end.
    pub fn run(config: &VmConfig) -> Result<ExitReason, VmError> {
        let mut vm = Vm::new(config)?;
        vm.start()?;
        Ok(vm.wait())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.running.is_empty() || self.event_loop.is_some() {
            self.exit.trigger(ExitReason::Stopped);
            self.shutdown();
        }
    }
}

/// Hands out virtio-mmio windows and IRQs in order, and records each device for the
/// event loop and the kernel command line.
struct VirtioSlots<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemory,
    mmio: Bus,
    subscribers: Vec<Subscriber>,
    cmdline: String,
}

/// A device [`VirtioSlots::add`] put on the bus.
struct Added<D> {
    device: Arc<Mutex<D>>,
    interrupt: Arc<Interrupt>,
    mmio_addr: u64,
}

impl VirtioSlots<'_> {
    /// Put `device` on the MMIO bus with its irqfd and one ioeventfd per queue.
    fn add<D: VirtioDevice + MutEventSubscriber + 'static>(
        &mut self,
        device: D,
    ) -> Result<Added<D>, VmError> {
        let slot = self.subscribers.len() as u64;
        let base = VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_SIZE;
        let irq = VIRTIO_IRQ_BASE + slot as u32;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("virtio irqfd"))?;
        self.vm
            .register_irqfd(&irqfd, irq)
            .map_err(kvm_err("KVM_IRQFD"))?;
        for (i, evt) in device.queue_events().iter().enumerate() {
            self.vm
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + reg::QUEUE_NOTIFY),
                    i as u32,
                )
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
        }
        let device = Arc::new(Mutex::new(device));
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let transport = MmioTransport::new(device.clone(), self.mem.clone(), interrupt.clone());
        self.mmio
            .insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
        self.subscribers.push(device.clone());
        self.cmdline
            .push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
        Ok(Added {
            device,
            interrupt,
            mmio_addr: base,
        })
    }
}
