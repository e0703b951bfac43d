//! Cold start and memory overhead of ember-vmm against QEMU's `microvm` machine, on the
//! same tiny PVH guest. Its first port write sends one byte to COM1, which both VMMs
//! copy to their stdout pipe: the time that byte arrives is "spawn to first guest port
//! write". Then the guest writes port 0x501 (ember's power-off port; QEMU gets an
//! `isa-debug-exit` device there) and the VMM exits: "spawn to exit" includes the
//! kernel's teardown of the VM.
//!
//! Run: `cargo bench -p ember-vmm --bench coldstart` (needs /dev/kvm and Debian's
//! qemu-system-x86). Prints medians of wall time, CPU time and peak RSS, and the ratios.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 30;
const MEMORY_MIB: &str = "128";

/// `mov dx, 0x3f8; mov al, '!'; out dx, al; mov dx, 0x501; mov al, 0; out dx, al; hlt`
/// as a PVH ELF loaded at 1 MiB.
fn guest() -> Vec<u8> {
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'!', 0xee, // first port write: '!' to COM1
        0x66, 0xba, 0x01, 0x05, 0xb0, 0x00, 0xee, // power off / isa-debug-exit
        0xf4, 0xeb, 0xfe,
    ];
    ember_vmm_testing::guest_image::elf(&code, true)
}

struct Sample {
    first_write: Duration,
    wall: Duration,
    cpu: Duration,
    maxrss_kib: i64,
}

/// Spawn `cmd`, wait with wait4 for its resource usage, check its exit status.
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command, expect_code: i32) -> Sample {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(child.stdout.as_mut().expect("piped"), &mut byte)
        .expect("first serial byte");
    let first_write = start.elapsed();
    assert_eq!(&byte, b"!");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child we spawned; pointers are valid for the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(pid, child.id() as i32, "wait4");
    let st = std::process::ExitStatus::from_raw(status);
    assert_eq!(st.code(), Some(expect_code), "{cmd:?} exited with {st}");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Sample {
        first_write,
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        maxrss_kib: usage.ru_maxrss,
    }
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list; nothing to list.
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("coldstart: /dev/kvm is not usable; this benchmark needs KVM");
        std::process::exit(1);
    }
    let qemu = "qemu-system-x86_64";
    if Command::new(qemu).arg("--version").output().is_err() {
        eprintln!(
            "coldstart: {qemu} not found (apt-get install qemu-system-x86); it is the reference"
        );
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = dir.path().join("port.elf");
    std::fs::write(&elf, guest()).unwrap();
    let ember_bin = Path::new(env!("CARGO_BIN_EXE_ember-vmm"));

    let ember_cmd = || {
        let mut c = Command::new(ember_bin);
        c.arg("--kernel").arg(&elf).args([
            "--memory-mib",
            MEMORY_MIB,
            "--serial",
            "stdout",
            "--log-level",
            "off",
        ]);
        c
    };
    let qemu_cmd = || {
        let mut c = Command::new(qemu);
        c.args([
            "-M",
            "microvm,x-option-roms=off,rtc=off",
            "-accel",
            "kvm",
            "-cpu",
            // Some PVM hosts refuse QEMU's write of IA32_ARCH_CAPABILITIES (MSR 0x10a).
            "host,arch-capabilities=off",
            "-m",
            MEMORY_MIB,
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(&elf)
        .args(["-device", "isa-debug-exit,iobase=0x501,iosize=1"]);
        c
    };
    // Warm up the page cache for both binaries.
    measure(&mut ember_cmd(), 0);
    measure(&mut qemu_cmd(), 1);
    let (mut e, mut q) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        e.push(measure(&mut ember_cmd(), 0));
        q.push(measure(&mut qemu_cmd(), 1)); // isa-debug-exit: (0 << 1) | 1
    }
    let summary = |s: &[Sample]| {
        (
            median(s.iter().map(|x| x.first_write).collect()),
            median(s.iter().map(|x| x.wall).collect()),
            median(s.iter().map(|x| x.cpu).collect()),
            median(s.iter().map(|x| x.maxrss_kib).collect()),
        )
    };
    let (ef, ew, ec, er) = summary(&e);
    let (qf, qw, qc, qr) = summary(&q);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("cold start, {RUNS} runs each, {MEMORY_MIB} MiB guest, medians:");
    println!(
        "  {:<14} {:>16} {:>13} {:>9} {:>12}",
        "", "to 1st port ms", "to exit ms", "cpu ms", "peak RSS"
    );
    for (name, f, w, c, r) in [
        ("ember-vmm", ef, ew, ec, er),
        ("qemu microvm", qf, qw, qc, qr),
    ] {
        println!(
            "  {:<14} {:>16.1} {:>13.1} {:>9.1} {:>8.1} MiB",
            name,
            ms(f),
            ms(w),
            ms(c),
            r as f64 / 1024.0
        );
    }
    println!(
        "  ratio ember/qemu: first port write {:.2}x, exit {:.2}x, cpu {:.2}x, peak RSS {:.2}x",
        ms(ef) / ms(qf),
        ms(ew) / ms(qw),
        ms(ec) / ms(qc).max(0.001),
        er as f64 / qr as f64
    );
    println!(
        "  ember-vmm peak RSS {:.1} MiB (an upper bound of its overhead: the guest touches under 100 KiB)",
        er as f64 / 1024.0
    );
}
