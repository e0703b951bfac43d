//! Which OOM notices from the agent become containerd TaskOOM events.
//!
//! The agent runs in a guest the containers may own, so its answers to `GetOOMEvent` are
//! claims, not facts: it may name containers this shim never created (which containerd
//! would then attribute to another task) or repeat a notice as fast as it can answer. The
//! shim publishes an OOM event only for a container it knows, and at most one per
//! container per [`OOM_EVENT_INTERVAL`]; repeats within the interval are coalesced into the
//! event already sent (containerd only counts and reports that an OOM happened).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Shortest time between two TaskOOM events of one container.
pub const OOM_EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with one OOM notice from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomVerdict {
    /// Publish a TaskOOM event.
    Publish,
    /// The container is not one of this shim's: drop the notice.
    UnknownContainer,
    /// An event for this container was published less than [`OOM_EVENT_INTERVAL`] ago:
    /// drop the notice (the earlier event stands for it).
    Throttled,
}

/// Decides, notice by notice, which OOM notices are published (see the module doc).
#[derive(Debug)]
pub struct OomGate {
    interval: Duration,
    last: HashMap<String, Instant>,
}

impl Default for OomGate {
    fn default() -> Self {
        Self::new(OOM_EVENT_INTERVAL)
    }
}

impl OomGate {
    /// A gate letting through one event per container per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// The verdict on a notice for container `id` at `now`; `known` says whether `id` is a
    /// container of this shim. Remembers only containers it let through, and forgets them
    /// once their interval is over, so what it holds is bounded by this shim's containers.
    pub fn check(&mut self, id: &str, known: bool, now: Instant) -> OomVerdict {
        let interval = self.interval;
        self.last
            .retain(|_, at| now.saturating_duration_since(*at) < interval);
        if !known {
            return OomVerdict::UnknownContainer;
        }
        if self.last.contains_key(id) {
            return OomVerdict::Throttled;
        }
        self.last.insert(id.to_string(), now);
        OomVerdict::Publish
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_containers_and_one_event_per_interval() {
        let mut g = OomGate::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(g.check("c1", true, t0), OomVerdict::Publish);
        assert_eq!(
            g.check("other-pod", false, t0),
            OomVerdict::UnknownContainer
        );
        // A flood of repeats within the interval: nothing more is published.
        for ms in 1..1000 {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(g.check("c1", true, now), OomVerdict::Throttled, "{ms} ms");
        }
        // Another container is not held back by c1.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(g.check("c2", true, t1), OomVerdict::Publish);
        // Once the interval is over, c1 may be published again.
        assert_eq!(
            g.check("c1", true, t0 + Duration::from_secs(1)),
            OomVerdict::Publish
        );
        // Unknown ids are never remembered, so a guest naming many cannot grow the gate.
        for i in 0..10_000 {
            assert_eq!(
                g.check(&format!("x{i}"), false, t1),
                OomVerdict::UnknownContainer
            );
        }
        assert!(g.last.len() <= 2);
        // Expired entries are forgotten.
        g.check("c3", false, t0 + Duration::from_secs(10));
        assert!(g.last.is_empty());
    }
}
