//! Network namespaces: entering one, and running a closure inside one on a short-lived
//! thread.
//!
//! `setns(2)` changes only the calling thread's namespace. [`run_in`] therefore runs its
//! closure on a thread of its own, which enters the namespace and ends, so the caller's
//! threads stay where they are. Sockets and taps opened there stay bound to that namespace
//! after the thread ends.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A network namespace that cannot be entered.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// The namespace file cannot be opened.
    #[error("cannot open network namespace {path}: {source} (expected a namespace file such as /var/run/netns/NAME or /proc/PID/ns/net)")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// setns(2) refused it.
    #[error("cannot enter network namespace {path}: {source} (entering one needs CAP_SYS_ADMIN, and the file must be a network namespace)")]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Moves the calling thread into the network namespace `ns` (an open namespace file).
///
/// One system call and no allocation: safe to call between `fork` and `exec` (in a
/// `pre_exec` hook or a `clone` child).
pub fn enter(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns on an fd that is open for the borrow's lifetime; it changes only the
    // calling thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread that first entered the network namespace at `netns`, and
/// returns what `f` returns. A panic in `f` is passed on to the caller.
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            let file = File::open(netns).map_err(|source| NetnsError::Open {
                path: netns.to_path_buf(),
                source,
            })?;
            enter(file.as_fd()).map_err(|source| NetnsError::Enter {
                path: netns.to_path_buf(),
                source,
            })?;
            Ok(f())
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn own_netns() -> std::fs::Metadata {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap()
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = run_in(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(matches!(e, NetnsError::Open { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }

    #[test]
    fn a_file_that_is_no_namespace_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = run_in(f.path(), || ()).unwrap_err();
        assert!(matches!(e, NetnsError::Enter { .. }), "{e}");
    }

    #[test]
    fn runs_in_the_namespace_and_leaves_the_caller_alone() {
        if !crate::needs_root("netns::runs_in_the_namespace_and_leaves_the_caller_alone") {
            return;
        }
        let before = own_netns().ino();
        // A new namespace, held by a thread that made it until the test is done.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            // SAFETY: gettid has no preconditions and cannot fail.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let ns = PathBuf::from(format!("/proc/self/task/{tid}/ns/net"));
        let made = std::fs::metadata(&ns).unwrap().ino();
        assert_ne!(made, before);
        let inside = run_in(&ns, || own_netns().ino()).unwrap();
        assert_eq!(inside, made);
        assert_eq!(own_netns().ino(), before);
        done_tx.send(()).unwrap();
        holder.join().unwrap();
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        if !crate::needs_root("netns::a_panic_reaches_the_caller") {
            return;
        }
        let r = std::panic::catch_unwind(|| {
            let _ = run_in(Path::new("/proc/self/ns/net"), || panic!("boom"));
        });
        assert!(r.is_err());
    }
}
