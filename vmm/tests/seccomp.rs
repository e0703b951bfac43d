//! The VMM threads' seccomp filters: a forbidden system call kills the process with
//! SIGSYS (in a forked child), an allowed one does not; a confined thread shows seccomp
//! mode 2 in /proc while other threads stay unconfined; a running VM's vCPU and device
//! threads are confined unless `seccomp` is off. (The device tests run their devices on
//! a confined thread too: `common::confined`.)

mod common;

use common::kvm_available;
use ember_vmm::seccomp::{spawn_confined, Filter, ThreadKind};
use ember_vmm::{ExitReason, Vm, VmConfig};
use std::time::{Duration, Instant};

/// How a forked child that installed `filter` and then ran `f` ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// `_exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// Fork; the child installs `filter` (no core dump), runs `f` (raw system calls only: the
/// parent is multi-threaded) and exits with its result.
fn in_child(filter: &Filter, f: impl FnOnce() -> i32) -> End {
    in_bare_child(|| {
        if filter.apply().is_err() {
            return 100;
        }
        f()
    })
}

/// Fork; the child (no core dump) runs `f` and exits with its result.
fn in_bare_child(f: impl FnOnce() -> i32) -> End {
    // SAFETY: the child runs `f` and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit with a valid struct; `_exit` ends the child.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::_exit(f());
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    if libc::WIFSIGNALED(status) {
        End::Signaled(libc::WTERMSIG(status))
    } else {
        End::Exited(libc::WEXITSTATUS(status))
    }
}

fn filter(kind: ThreadKind) -> Filter {
    Filter::new(kind).expect("the filter compiles")
}

/// `socket(AF_INET, SOCK_STREAM)`: no VMM thread opens network sockets.
fn inet_socket() -> i32 {
    // SAFETY: plain system call.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    0
}

/// `execve("/bin/true")`: no VMM thread runs programs.
fn exec() -> i32 {
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated path and argument arrays.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    7
}

/// An executable anonymous mapping: never allowed.
fn exec_mapping() -> i32 {
    // SAFETY: anonymous mapping; not used.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    i32::from(p == libc::MAP_FAILED)
}

/// An ioctl no VMM thread makes (TIOCSTI, which pushes input into a terminal).
fn tty_ioctl() -> i32 {
    let c = 0u8;
    // SAFETY: on fd -1 the call fails (if it is let through at all).
    unsafe { libc::ioctl(-1, libc::TIOCSTI, &c) };
    0
}

/// Allowed on every VMM thread: the time, an allocation, a futex wake, an eventfd write
/// (how interrupts are raised) on `evt`; exits 0 when they all worked.
fn ordinary_work(evt: i32) -> i32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let word = 0u32;
    let one = 1u64;
    // SAFETY: valid pointers for each call; the mapping is unmapped right away.
    let ok = unsafe {
        let t = libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts);
        let p = libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        let mapped = p != libc::MAP_FAILED && libc::munmap(p, 1 << 20) == 0;
        let woke = libc::syscall(libc::SYS_futex, &word, libc::FUTEX_WAKE, 1);
        let wrote = libc::write(evt, (&one as *const u64).cast(), 8);
        t == 0 && mapped && woke == 0 && wrote == 8
    };
    i32::from(!ok)
}

#[test]
fn forbidden_system_calls_kill_the_process_with_sigsys() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Devices, ThreadKind::Control] {
        let f = filter(kind);
        // SAFETY: plain system call; the fd is closed below.
        let evt = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
        assert!(evt >= 0);
        assert_eq!(
            in_child(&f, || ordinary_work(evt)),
            End::Exited(0),
            "{kind}: ordinary work"
        );
        // SAFETY: our eventfd.
        unsafe { libc::close(evt) };
        // A panic in a release build (panic = "abort") still ends with SIGABRT, so the
        // cause is not hidden behind a SIGSYS. (The filter allows tgkill on the pid it was
        // built in only, so the child builds its own: glibc's fork leaves malloc usable.)
        let abort = || {
            let Ok(own) = Filter::new(kind) else {
                return 101;
            };
            if own.apply().is_err() {
                return 100;
            }
            // SAFETY: ends the child.
            unsafe { libc::abort() }
        };
        assert_eq!(
            in_bare_child(abort),
            End::Signaled(libc::SIGABRT),
            "{kind}: abort"
        );
        let foreign_abort = || {
            // SAFETY: ends the child.
            unsafe { libc::abort() }
        };
        assert_eq!(
            in_child(&f, foreign_abort),
            End::Signaled(libc::SIGSYS),
            "{kind}: tgkill on a pid other than the one the filter was built for"
        );
        for (what, call) in [
            ("socket(AF_INET)", inet_socket as fn() -> i32),
            ("execve", exec),
            ("mmap(PROT_EXEC)", exec_mapping),
            ("ioctl(TIOCSTI)", tty_ioctl),
        ] {
            assert_eq!(
                in_child(&f, call),
                End::Signaled(libc::SIGSYS),
                "{kind} thread: {what}"
            );
        }
    }
}

#[test]
fn each_thread_kind_gets_only_its_own_calls() {
    let vcpu = filter(ThreadKind::Vcpu);
    let devices = filter(ThreadKind::Devices);
    // KVM_RUN is a vCPU's call (on fd -1 it fails with EBADF, but is let through); the
    // device thread never makes it.
    let kvm_run = || {
        // SAFETY: fails on fd -1.
        let r = unsafe { libc::ioctl(-1, 0xae80, 0) };
        i32::from(r != -1)
    };
    assert_eq!(in_child(&vcpu, kvm_run), End::Exited(0));
    assert_eq!(in_child(&devices, kvm_run), End::Signaled(libc::SIGSYS));
    // Opening files is the device thread's (virtio-fs); a vCPU never opens anything.
    let open = || {
        // SAFETY: NUL-terminated path; the fd is left to `_exit`.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, c"/".as_ptr(), libc::O_RDONLY) };
        i32::from(fd < 0)
    };
    assert_eq!(in_child(&devices, open), End::Exited(0));
    assert_eq!(in_child(&vcpu, open), End::Signaled(libc::SIGSYS));
    // Unix sockets are the device thread's (vsock); other families are nobody's.
    let unix_socket = || {
        // SAFETY: plain system call.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        i32::from(fd < 0)
    };
    assert_eq!(in_child(&devices, unix_socket), End::Exited(0));
    assert_eq!(in_child(&vcpu, unix_socket), End::Signaled(libc::SIGSYS));
    // Flushing a file is virtio-blk's (and virtio-fs's), on the device thread.
    let flush = || {
        // SAFETY: fails on fd -1 (if let through).
        let r = unsafe { libc::fdatasync(-1) };
        i32::from(r != -1)
    };
    assert_eq!(in_child(&devices, flush), End::Exited(0));
    assert_eq!(in_child(&vcpu, flush), End::Signaled(libc::SIGSYS));
    // Arming a rate limiter's timer (virtio-blk, virtio-net) is the device thread's; the
    // timerfd itself is made before the thread is confined.
    // SAFETY: plain system call; the fd is closed below.
    let timer = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
    assert!(timer >= 0);
    let arm = move || {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: 60,
                tv_nsec: 0,
            },
        };
        // SAFETY: a valid itimerspec; the old value is not asked for.
        let r = unsafe { libc::timerfd_settime(timer, 0, &spec, std::ptr::null_mut()) };
        i32::from(r != 0)
    };
    assert_eq!(in_child(&devices, arm), End::Exited(0));
    assert_eq!(in_child(&vcpu, arm), End::Signaled(libc::SIGSYS));
    // SAFETY: closes the fd made above.
    unsafe { libc::close(timer) };
    // virtio-fs may switch the effective uid (to the caller's and back), and no other.
    let setresuid = |r: u32, e: u32, s: u32| {
        move || {
            // SAFETY: changes only the child's (thread's) ids.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, r, e, s) };
            i32::from(rc != 0)
        }
    };
    assert_eq!(
        in_child(&devices, setresuid(u32::MAX, 0, u32::MAX)),
        End::Exited(0)
    );
    assert_eq!(
        in_child(&devices, setresuid(0, 0, 0)),
        End::Signaled(libc::SIGSYS)
    );
    assert_eq!(
        in_child(&vcpu, setresuid(u32::MAX, 0, u32::MAX)),
        End::Signaled(libc::SIGSYS)
    );
    // virtio-fs may clear the umask, and nothing else.
    let umask = |mask| {
        move || {
            // SAFETY: only changes the child's mask.
            unsafe { libc::umask(mask) };
            0
        }
    };
    assert_eq!(in_child(&devices, umask(0)), End::Exited(0));
    assert_eq!(in_child(&devices, umask(0o22)), End::Signaled(libc::SIGSYS));
}

#[test]
fn the_control_thread_gets_its_channel_and_nothing_of_the_devices() {
    let control = filter(ThreadKind::Control);
    let devices = filter(ThreadKind::Devices);
    let vcpu = filter(ThreadKind::Vcpu);
    // The channel: messages with fds (sendmsg/recvmsg, on fd -1 they fail with EBADF
    // but are let through), waited on with poll.
    let messages = || {
        // SAFETY: a zeroed msghdr is an empty message; the calls fail on fd -1.
        let (s, r) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            (
                libc::sendmsg(-1, &msg, 0),
                libc::recvmsg(-1, &mut msg, libc::MSG_CMSG_CLOEXEC),
            )
        };
        i32::from(s != -1 || r != -1)
    };
    let poll = || {
        // SAFETY: no pollfds, no wait.
        let r = unsafe { libc::poll(std::ptr::null_mut(), 0, 0) };
        i32::from(r != 0)
    };
    // An attached disk is measured: statx or fstat, lseek (on fd -1: EBADF).
    let measure = || {
        // SAFETY: a stat buffer on the stack; the calls fail on fd -1.
        let (st, sk) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            (libc::fstat(-1, &mut st), libc::lseek(-1, 0, libc::SEEK_END))
        };
        i32::from(st != -1 || sk != -1)
    };
    for (what, call) in [
        ("sendmsg/recvmsg", &messages as &dyn Fn() -> i32),
        ("poll", &poll),
        ("fstat/lseek", &measure),
    ] {
        assert_eq!(in_child(&control, call), End::Exited(0), "control: {what}");
    }
    assert_eq!(
        in_child(&vcpu, messages),
        End::Signaled(libc::SIGSYS),
        "no vCPU thread has a channel"
    );
    // The control thread opens nothing (the jail has no host paths to open: the runtime
    // sends fds), makes no socket, switches no id, runs no vCPU and no queue I/O.
    let open = || {
        // SAFETY: NUL-terminated path; the fd is left to `_exit`.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, c"/".as_ptr(), libc::O_RDONLY) };
        i32::from(fd < 0)
    };
    assert_eq!(in_child(&devices, open), End::Exited(0));
    let unix_socket = || {
        // SAFETY: plain system call.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0) };
        i32::from(fd < 0)
    };
    let setresuid = || {
        // SAFETY: changes only the child's (thread's) ids.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, u32::MAX, 0, u32::MAX) };
        i32::from(rc != 0)
    };
    let kvm_run = || {
        // SAFETY: fails on fd -1.
        let r = unsafe { libc::ioctl(-1, 0xae80, 0) };
        i32::from(r != -1)
    };
    let capset = || {
        // SAFETY: a header asking for the version only; fails or not, it is the call.
        unsafe {
            libc::syscall(
                libc::SYS_capset,
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
            )
        };
        0
    };
    let write_disk = || {
        // SAFETY: fails on fd -1 (if let through).
        unsafe { libc::pwrite(-1, std::ptr::null(), 0, 0) };
        0
    };
    for (what, call) in [
        ("openat", &open as &dyn Fn() -> i32),
        ("socket(AF_UNIX)", &unix_socket),
        ("setresuid", &setresuid),
        ("ioctl(KVM_RUN)", &kvm_run),
        ("capset", &capset),
        ("pwrite64", &write_disk),
    ] {
        assert_eq!(
            in_child(&control, call),
            End::Signaled(libc::SIGSYS),
            "control thread: {what}"
        );
    }
}

/// What a thread's status says of its confinement.
struct Status {
    /// The `Seccomp:` line.
    mode: String,
    /// The `NoNewPrivs:` line.
    no_new_privs: String,
    /// The blocked signals (`SigBlk:`), bit `n - 1` for signal `n`.
    blocked: u64,
}

impl Status {
    fn blocks(&self, sig: i32) -> bool {
        self.blocked & (1 << (sig - 1)) != 0
    }
}

fn thread_status(tid: i64) -> Status {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let line = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in the status of thread {tid}"))
            .to_string()
    };
    let blocked = line("SigBlk:");
    Status {
        mode: line("Seccomp:"),
        no_new_privs: line("NoNewPrivs:"),
        blocked: u64::from_str_radix(blocked.trim_start_matches("SigBlk:").trim(), 16).unwrap(),
    }
}

fn gettid() -> i64 {
    // SAFETY: plain system call.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

#[test]
fn a_confined_thread_shows_seccomp_mode_2_and_the_others_stay_unconfined() {
    for (kind, confined) in [
        (ThreadKind::Vcpu, true),
        (ThreadKind::Devices, true),
        (ThreadKind::Devices, false),
    ] {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let t = spawn_confined(
            format!("test-{kind}"),
            confined.then(|| filter(kind)),
            &[libc::SIGUSR1],
            move || {
                tid_tx.send(gettid()).unwrap();
                let _ = go_rx.recv();
            },
        )
        .expect("the thread starts with its filter");
        let tid = tid_rx.recv().unwrap();
        let st = thread_status(tid);
        if confined {
            assert_eq!(st.mode, "Seccomp:\t2", "{kind} thread is in filter mode");
            assert_eq!(st.no_new_privs, "NoNewPrivs:\t1");
        } else {
            assert_eq!(st.mode, "Seccomp:\t0", "no filter asked, none installed");
        }
        // Signals sent to the process are left to the other threads.
        assert!(st.blocks(libc::SIGCHLD) && st.blocks(libc::SIGTERM) && st.blocks(libc::SIGPIPE));
        assert!(!st.blocks(libc::SIGSEGV) && !st.blocks(libc::SIGSYS));
        assert!(!st.blocks(libc::SIGUSR1), "the signal asked for is taken");
        go_tx.send(()).unwrap();
        t.join().unwrap();
    }
    assert_eq!(
        thread_status(gettid()).mode,
        "Seccomp:\t0",
        "the spawning thread is not confined"
    );
}

/// The ids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<i64> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Run a VM whose guest spins (`jmp $`) with a disk and virtio-rng, check its threads'
/// seccomp mode, stop it.
fn running_vm_thread_modes(seccomp: bool) -> Vec<(String, Status)> {
    let dir = tempfile::tempdir().unwrap();
    let kernel = common::write(dir.path(), "guest.img", &common::elf(&[0xeb, 0xfe], false));
    let disk = common::write(dir.path(), "disk.img", &vec![0u8; 1 << 20]);
    let mut config = VmConfig::new(&kernel);
    config.memory_mib = 64;
    config.vcpus = 2;
    config.rng = true;
    config.disks = vec![ember_vmm::DiskConfig {
        path: disk,
        read_only: false,
    }];
    config.serial = ember_vmm::SerialSink::None;
    config.seccomp = seccomp;
    let mut vm = Vm::new(&config).expect("build the VM");
    vm.start().expect("start the VM");
    let start = Instant::now();
    let names = ["ember-vcpu0", "ember-vcpu1", "ember-devices"];
    let tids = loop {
        let tids: Vec<_> = names.iter().map(|n| threads_named(n)).collect();
        if tids.iter().all(|t| t.len() == 1) {
            break tids;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "threads {names:?}: {tids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let modes = names
        .iter()
        .zip(tids)
        .map(|(n, t)| (n.to_string(), thread_status(t[0])))
        .collect();
    vm.stop();
    assert_eq!(vm.wait(), ExitReason::Stopped);
    modes
}

#[test]
fn a_running_vm_confines_its_vcpu_and_device_threads_unless_seccomp_is_off() {
    if !kvm_available("a_running_vm_confines_its_vcpu_and_device_threads") {
        return;
    }
    let kick = libc::SIGRTMIN();
    for (thread, st) in running_vm_thread_modes(true) {
        assert_eq!(st.mode, "Seccomp:\t2", "{thread} with seccomp on");
        assert!(
            st.blocks(libc::SIGCHLD),
            "{thread} leaves SIGCHLD to others"
        );
        let vcpu = thread.starts_with("ember-vcpu");
        assert_eq!(!st.blocks(kick), vcpu, "{thread}: only vCPUs take the kick");
    }
    for (thread, st) in running_vm_thread_modes(false) {
        assert_eq!(st.mode, "Seccomp:\t0", "{thread} with seccomp off");
    }
}

#[test]
fn no_seccomp_flag_turns_the_filters_off_and_says_so() {
    if !kvm_available("no_seccomp_flag_turns_the_filters_off_and_says_so") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = common::write(
        dir.path(),
        "guest.img",
        &common::elf(&common::hello_code(), false),
    );
    let serial = dir.path().join("serial.log");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ember-vmm"))
            .arg("--kernel")
            .arg(&kernel)
            .args(["--memory-mib", "64", "--rng", "--serial"])
            .arg(&serial)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "power-off; stderr: {stderr}");
        assert_eq!(std::fs::read_to_string(&serial).unwrap(), "Hivirt\n");
        stderr
    };
    let on = run(&[]);
    assert!(!on.contains("seccomp is off"), "{on}");
    let off = run(&["--no-seccomp"]);
    assert!(off.contains("seccomp is off"), "{off}");
}

#[test]
fn a_console_log_that_wraps_is_compacted_under_the_vcpu_filter() {
    // The serial port's file sink drops its older half when full: pread64, pwrite64 and
    // ftruncate on the vCPU thread that handles the port write.
    if !kvm_available("a_console_log_that_wraps_is_compacted_under_the_vcpu_filter") {
        return;
    }
    let mut code = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb9, 0x10, 0x27, 0x00, 0x00, // mov ecx, 10000
        0xb0, b'x', 0xee, // loop: mov al, 'x'; out dx, al
        0xff, 0xc9, // dec ecx
        0x75, 0xf9, // jnz loop
    ];
    code.extend([0x66, 0xba, 0x01, 0x05, 0xee, 0xf4, 0xeb, 0xfe]); // power off
    let dir = tempfile::tempdir().unwrap();
    let kernel = common::write(dir.path(), "guest.img", &common::elf(&code, false));
    let serial = dir.path().join("serial.log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ember-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .args([
            "--memory-mib",
            "64",
            "--serial-max-bytes",
            "4096",
            "--serial",
        ])
        .arg(&serial)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "power-off, no SIGSYS; stderr: {stderr}"
    );
    let log = std::fs::read(&serial).unwrap();
    assert!(log.len() <= 4096, "capped: {} bytes", log.len());
    assert!(
        log.starts_with(b"[ember: earlier console output dropped"),
        "compacted"
    );
    assert!(log.ends_with(b"xxxx"));
}
