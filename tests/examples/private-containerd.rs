//! Runs a private containerd (the test harness's, [`ember_tests::containerd`]) for scripts:
//! `private-containerd ADDRESS_FILE [--cri] [--ember-config PATH]`.
//!
//! Once containerd answers, writes its socket path to ADDRESS_FILE (and prints it). Then
//! waits until its stdin reaches end of file, and stops containerd, cleaning up everything
//! it created. SIGINT is ignored (so Ctrl-C in a script reaches the script, which then
//! closes our stdin); SIGTERM ends it the same way as end of file. Directories on
//! `$EMBER_SHIM_DIR` (default: the built `containerd-shim-ember-v2`'s) go first on
//! containerd's `PATH`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use ember_tests::containerd::{self, Containerd, Options};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut opts = Options::default();
    let mut address_file = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cri" => opts.cri = true,
            "--ember-config" => opts.ember_config = args.next().map(PathBuf::from),
            _ if address_file.is_none() && !a.starts_with("--") => address_file = Some(a),
            _ => {
                eprintln!("usage: private-containerd ADDRESS_FILE [--cri] [--ember-config PATH]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(address_file) = address_file else {
        eprintln!("usage: private-containerd ADDRESS_FILE [--cri] [--ember-config PATH]");
        return ExitCode::from(2);
    };
    // SAFETY: ignoring SIGINT, and a SIGTERM handler that only stores to an atomic, installed
    // without SA_RESTART so that it interrupts the blocking read of stdin below.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    opts.path_prepend = containerd::ember_shim_dir().into_iter().collect();
    let ctrd = match Containerd::start(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("private-containerd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let address = ctrd.address();
    eprintln!(
        "private-containerd: pid {} listening on {} (log {})",
        ctrd.pid().unwrap_or(0),
        address.display(),
        ctrd.log_path().display()
    );
    if let Err(e) = std::fs::write(&address_file, address.to_string_lossy().as_bytes()) {
        eprintln!("private-containerd: {address_file}: {e}");
        return ExitCode::FAILURE;
    }
    // Wait for end of file on stdin (or SIGTERM, which interrupts the read).
    let mut buf = [0u8; 256];
    let mut stdin = std::io::stdin();
    while !TERM.load(Ordering::SeqCst) {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(ctrd);
    ExitCode::SUCCESS
}
