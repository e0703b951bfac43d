//! virtio-fs: a host directory shared under a tag, served inside the VMM by
//! fuse-backend-rs's passthrough file system (no virtiofsd process; docs/architecture.md).
//!
//! The guest cannot reach outside the shared directory: the passthrough server resolves
//! every name with `openat` relative to an inode it handed out, refuses names with `/`,
//! maps `..` at the root to the root, and never follows symlinks on the host (a symlink
//! is returned to the guest, whose own kernel resolves it inside the guest). Read-only
//! shares are enforced here ([`readonly`]), not only by the guest's mount options.
//!
//! Requests are served on the device event-loop thread, one queue at a time.
//!
//! With a [`RateLimiter`] ([`Fs::with_rate_limiter`]), each FUSE request takes one
//! operation and its data bytes ([`cost`]). The limiter covers every queue, the hiprio
//! queue included (the server answers any request on any queue, so a queue left out would
//! be a way around it): a request the limiter refuses stays in its queue's available ring,
//! every queue stops, and the limiter's timer (on the event loop) resumes them all.

pub mod cost;
pub mod readonly;

use super::{DeviceState, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::rate_limiter::RateLimiter;
use event_manager::{EventOps, Events, MutEventSubscriber};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

/// virtio device id of a file system device.
pub const DEVICE_TYPE: u32 = 26;
/// Queue size (hiprio and the request queue).
pub const QUEUE_SIZE: u16 = 256;
/// Longest tag (the config field is 36 bytes).
pub const MAX_TAG_LEN: usize = 36;
/// Event data of the queues' eventfds: the queue index from here.
const TOKEN_QUEUE_BASE: u32 = 0;
/// Event data of the rate limiter's timer (past any queue index).
const TOKEN_RATE_LIMIT: u32 = 16;

/// Errors of creating a virtio-fs device.
#[derive(Debug, Error)]
pub enum FsError {
    /// The tag is empty or too long.
    #[error("virtio-fs tag `{0}` must be 1 to 36 bytes")]
    BadTag(String),
    /// The shared directory is not a directory.
    #[error("virtio-fs shared directory {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    /// The passthrough server could not open the directory.
    #[error("cannot share {path}: {message}")]
    Passthrough {
        /// The directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An eventfd could not be created.
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Runs `f` on a thread of its own whose file-system context (umask, cwd) is not shared
/// with the rest of the process, and returns what `f` returns.
///
/// fuse-backend-rs's `PassthroughFs::import` sets the umask to 0 (so the guest's modes
/// are kept exactly), and the umask belongs to the whole process unless a thread unshares
/// `CLONE_FS`: run on a shim thread, it left every file the shim created afterwards
/// world-writable. Every VMM thread, the device thread among them, unshares for the same
/// reason (`seccomp::spawn_confined` calls [`unshare_fs_context`]); the library has no
/// option to skip it.
pub fn with_private_umask<T: Send>(
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare_fs_context()?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("virtio-fs import panicked")))
    })
}

/// Gives the calling thread a file-system context (umask, cwd, root) of its own, so what
/// the passthrough server does to its umask stays on this thread.
pub fn unshare_fs_context() -> std::io::Result<()> {
    // SAFETY: unshare(CLONE_FS) only detaches this thread's fs_struct; it touches no memory.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The virtio-fs device.
pub struct Fs {
    tag: String,
    read_only: bool,
    server: Arc<Server<Arc<PassthroughFs>>>,
    state: DeviceState,
    /// Bounds the guest's requests on all queues; `None`: unlimited.
    limiter: Option<RateLimiter>,
}

impl Fs {
    /// Share `dir` under `tag`.
    pub fn new(tag: &str, dir: &Path, read_only: bool) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(FsError::BadTag(tag.to_string()));
        }
        if !dir.is_dir() {
            return Err(FsError::NotADirectory(dir.to_path_buf()));
        }
        let passthrough_err = |message: String| FsError::Passthrough {
            path: dir.to_path_buf(),
            message,
        };
        let cfg = PassthroughConfig {
            root_dir: dir.to_string_lossy().into_owned(),
            do_import: true,
            xattr: false,
            cache_policy: CachePolicy::Auto,
            writeback: false,
            ..Default::default()
        };
        let fs = PassthroughFs::<()>::new(cfg).map_err(|e| passthrough_err(e.to_string()))?;
        // Imported here so that a share that cannot be opened fails the VM's creation,
        // naming the path; the library imports again at the guest's FUSE_INIT (with
        // `do_import` off it would instead take the guest's cache options), which costs
        // one open of the root.
        with_private_umask(|| fs.import()).map_err(|e| passthrough_err(e.to_string()))?;
        Ok(Self {
            tag: tag.to_string(),
            read_only,
            server: Arc::new(Server::new(Arc::new(fs))),
            state: DeviceState::new(&[QUEUE_SIZE, QUEUE_SIZE]).map_err(FsError::EventFd)?,
            limiter: None,
        })
    }

    /// The same device with `limiter` bounding its requests, on every queue (`None`:
    /// unlimited).
    pub fn with_rate_limiter(mut self, limiter: Option<RateLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Serve the requests on queue `q`, as many as the rate limiter (if any) lets through;
    /// returns how many were completed. A refused request is left available for the
    /// limiter's timer to resume.
    pub fn process_queue(&mut self, q: usize) -> usize {
        let Some(mem) = self.state.mem.as_ref() else {
            return 0;
        };
        if self.limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            return 0;
        }
        let Some(queue) = self.state.queues.get_mut(q) else {
            return 0;
        };
        let mut done = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Some(limiter) = self.limiter.as_mut() {
                // A malformed chain costs no bytes (it is dropped below), but an operation.
                let bytes = Reader::from_descriptor_chain(mem, chain.clone()).map_or(0, |r| {
                    let room =
                        VirtioFsWriter::new(mem, chain.clone()).map_or(0, |w| w.available_bytes());
                    cost::data_bytes(r, room)
                });
                if !limiter.consume(bytes) {
                    // Put the chain back: it stays available until the timer fires.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    break;
                }
            }
            let used = match (
                Reader::from_descriptor_chain(mem, chain.clone()),
                VirtioFsWriter::new(mem, chain.clone()).map(Writer::from),
            ) {
                (Ok(reader), Ok(writer)) => {
                    let denied = if self.read_only {
                        Reader::from_descriptor_chain(mem, chain)
                            .ok()
                            .and_then(readonly::violation)
                    } else {
                        None
                    };
                    match denied {
                        Some(header) => readonly::reply_erofs(&header, writer),
                        None => match self.server.handle_message(reader, writer, None, None) {
                            Ok(n) => n,
                            Err(e) => {
                                log::debug!("virtio-fs {}: request {head} failed: {e}", self.tag);
                                0
                            }
                        },
                    }
                }
                _ => {
                    crate::guest_warn!(
                        "virtio-fs {}: descriptor chain {head} is malformed; dropped",
                        self.tag
                    );
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, used as u32) {
                crate::guest_warn!("virtio-fs {}: cannot return chain {head}: {e}", self.tag);
                // A head outside the queue (the only failure once the rings are valid): the
                // chain is consumed, the ones after it are still served.
                continue;
            }
            done += 1;
        }
        self.state.notify(&[(q, done)]);
        done
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // tag: [u8; 36], num_request_queues: le32.
        let mut config = [0u8; MAX_TAG_LEN + 4];
        config[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        config[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        super::read_config_bytes(&config, offset, data);
    }

    fn state(&self) -> &DeviceState {
        &self.state
    }

    fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }
}

impl MutEventSubscriber for Fs {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_RATE_LIMIT {
            if let Some(limiter) = self.limiter.as_mut() {
                limiter.on_timer();
            }
            // Every queue may hold requests the limiter refused (hiprio first).
            if self.is_activated() {
                for q in 0..self.state.queues.len() {
                    self.process_queue(q);
                }
            }
            return;
        }
        // The eventfd is drained even before activation, so it does not spin.
        if let Some(q) = self.state.take_queue_event(&events, "virtio-fs") {
            if self.is_activated() {
                self.process_queue(q);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.state
            .register_queue_events(ops, TOKEN_QUEUE_BASE, "virtio-fs");
        if let Some(limiter) = &self.limiter {
            let events = Events::with_data(limiter, TOKEN_RATE_LIMIT, EventSet::IN);
            if let Err(e) = ops.add(events) {
                log::error!("virtio-fs: cannot watch the rate limiter's timer: {e}");
            }
        }
    }
}

/// The calling thread's umask, read without changing it (`umask(2)` can only set it).
#[cfg(test)]
pub(crate) fn thread_umask() -> u32 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

/// Sets a non-zero umask when the test runs with none, so that a cleared one shows.
#[cfg(test)]
pub(crate) fn ensure_nonzero_umask() -> u32 {
    if thread_umask() == 0 {
        // SAFETY: umask(2) touches no memory.
        unsafe { libc::umask(0o022) };
    }
    thread_umask()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_a_directory_leaves_the_process_umask_alone() {
        let before = ensure_nonzero_umask();
        let dir = tempfile::tempdir().unwrap();
        let fs = Fs::new("t", dir.path(), false).unwrap();
        assert_eq!(fs.tag(), "t");
        assert_eq!(
            thread_umask(),
            before,
            "the passthrough import cleared the umask"
        );
    }

    #[test]
    fn a_private_umask_is_cleared_only_on_its_own_thread() {
        let before = ensure_nonzero_umask();
        let inside = with_private_umask(|| {
            // SAFETY: umask(2) touches no memory.
            unsafe { libc::umask(0) };
            Ok(thread_umask())
        })
        .unwrap();
        assert_eq!(inside, 0);
        assert_eq!(thread_umask(), before);
    }

    #[test]
    fn a_failed_import_names_the_directory() {
        let Err(err) = Fs::new("t", Path::new("/nonexistent/ember"), false) else {
            panic!("a missing directory was shared");
        };
        assert!(err.to_string().contains("/nonexistent/ember"), "{err}");
    }
}
