//! Who may talk to the agent. On vsock only the host (CID 2, where the VMM's muxer
//! connects from) may open a ttrpc or stdio connection: a process inside the guest (a
//! container that dials the agent's port, which `/proc/cmdline` names) is refused at
//! accept, before it can send a request or attach a stream. The guest kernel is built
//! without `CONFIG_VSOCKETS_LOOPBACK` as well, so such a dial does not even connect; this
//! check holds should a kernel with loopback be used. Unix listeners (the process backend)
//! are guarded by their socket's file mode instead.
//!
//! Refusals are logged at most once per [`REFUSAL_LOG_EVERY`], with the number left
//! unlogged, so a dialling loop inside the guest cannot grow the log without bound.

use std::time::{Duration, Instant};

use slog::{warn, Logger};
use tokio_vsock::{VsockListener, VsockStream, VMADDR_CID_HOST};

/// The least time between two log lines about refused peers.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether a vsock peer with context id `cid` may talk to the agent: only the host.
pub fn allowed(cid: u32) -> bool {
    cid == VMADDR_CID_HOST
}

/// Rate limit for the log lines about refused peers.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// Counts a refusal at `now`; returns `Some(n)` when it is to be logged, `n` being the
    /// refusals left unlogged since the last line.
    pub fn refused(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < REFUSAL_LOG_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// Accepts the next connection from the host on `listener`, closing (and logging, rate
/// limited) every connection from anywhere else.
pub async fn accept_host(
    listener: &VsockListener,
    refusals: &mut RefusalLog,
    log: &Logger,
) -> std::io::Result<VsockStream> {
    loop {
        let (conn, addr) = listener.accept().await?;
        if allowed(addr.cid()) {
            return Ok(conn);
        }
        drop(conn);
        if let Some(unlogged) = refusals.refused(Instant::now()) {
            warn!(log, "refused a vsock connection that is not from the host";
                "peer_cid" => addr.cid(), "peer_port" => addr.port(), "refused_unlogged" => unlogged);
        }
    }
}

/// The host's connections on `listener`, as a stream for ttrpc's server.
pub fn host_only(
    listener: VsockListener,
    log: Logger,
) -> impl futures::Stream<Item = std::io::Result<VsockStream>> + Send + 'static {
    futures::stream::unfold(
        (listener, RefusalLog::default(), log),
        |(listener, mut refusals, log)| async move {
            let next = accept_host(&listener, &mut refusals, &log).await;
            Some((next, (listener, refusals, log)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_is_allowed() {
        assert!(allowed(VMADDR_CID_HOST));
        for cid in [
            0,
            1,
            tokio_vsock::VMADDR_CID_LOCAL,
            3,
            1024,
            tokio_vsock::VMADDR_CID_ANY,
        ] {
            assert!(!allowed(cid), "cid {cid}");
        }
    }

    #[test]
    fn refusals_are_logged_once_per_period_with_the_count_in_between() {
        let mut r = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(r.refused(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(r.refused(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(r.refused(t0 + REFUSAL_LOG_EVERY), Some(1000));
        assert_eq!(r.refused(t0 + REFUSAL_LOG_EVERY), None);
    }
}
