//! [`RateLimiter`]: a bandwidth and an operations [`TokenBucket`], and the timerfd that
//! wakes the device on its event loop when a blocked request can go.

use super::bucket::TokenBucket;
use super::clock::{Clock, MonotonicClock};
use super::config::{BucketConfig, RateLimitConfig};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use thiserror::Error;
use vmm_sys_util::timerfd::TimerFd;

/// Errors of creating a rate limiter.
#[derive(Debug, Error)]
pub enum RateLimiterError {
    /// The timerfd could not be created or made non-blocking.
    #[error(
        "cannot create the rate limiter's timerfd: {0} (is the process out of file descriptors?)"
    )]
    Timer(std::io::Error),
}

/// A device's limiter: each request takes one token from `ops` and its length from
/// `bandwidth` (see the [module documentation](super)).
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
    clock: Box<dyn Clock>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter on the host's monotonic clock, or `None` when `config` limits nothing.
    /// The timerfd is created here, on the caller's thread (before the device thread is
    /// confined by its seccomp filter).
    pub fn new(config: &RateLimitConfig) -> Result<Option<Self>, RateLimiterError> {
        Self::with_clock(config, Box::new(MonotonicClock::new()))
    }

    /// A limiter whose buckets refill by `clock` (tests drive a
    /// [`ManualClock`](super::ManualClock)), or `None` when `config` limits nothing.
    pub fn with_clock(
        config: &RateLimitConfig,
        clock: Box<dyn Clock>,
    ) -> Result<Option<Self>, RateLimiterError> {
        let now = clock.now();
        let bucket =
            |b: &BucketConfig| TokenBucket::new(b.size, b.one_time_burst, b.refill_duration(), now);
        let (bandwidth, ops) = (bucket(&config.bandwidth), bucket(&config.ops));
        if bandwidth.is_none() && ops.is_none() {
            return Ok(None);
        }
        let timer = TimerFd::new().map_err(|e| RateLimiterError::Timer(e.into()))?;
        // The device thread reads the timer only when epoll says it expired, but a read
        // must never block that thread.
        // SAFETY: F_SETFL on an fd this function owns; no memory is passed.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(RateLimiterError::Timer(std::io::Error::last_os_error()));
        }
        Ok(Some(Self {
            bandwidth,
            ops,
            timer,
            blocked: false,
            clock,
        }))
    }

    /// Take one operation and `bytes` of bandwidth if both buckets have them; otherwise
    /// take nothing, arm the timer for when they will, and report the limiter blocked
    /// until [`RateLimiter::on_timer`]. A blocked limiter refuses everything.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = self.clock.now();
        for b in [&mut self.bandwidth, &mut self.ops].into_iter().flatten() {
            b.refill(now);
        }
        let bw_ok = self.bandwidth.as_ref().is_none_or(|b| b.can_take(bytes));
        let ops_ok = self.ops.as_ref().is_none_or(|b| b.can_take(1));
        if bw_ok && ops_ok {
            if let Some(b) = self.bandwidth.as_mut() {
                b.take(bytes);
            }
            if let Some(b) = self.ops.as_mut() {
                b.take(1);
            }
            return true;
        }
        let wait = [
            self.bandwidth.as_ref().map(|b| b.time_until(bytes)),
            self.ops.as_ref().map(|b| b.time_until(1)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default()
        // A zero duration would disarm the timer.
        .max(Duration::from_nanos(1));
        match self.timer.reset(wait, None) {
            Ok(()) => {
                self.blocked = true;
                false
            }
            Err(e) => {
                // Never strand a queue: without a timer to resume it, let the request go.
                log::error!("rate limiter: cannot arm its timer ({e}); request let through");
                true
            }
        }
    }

    /// Whether the limiter is waiting for its timer (refusing every request until then).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timer fired (its fd became readable on the event loop): drain it and take
    /// requests again.
    pub fn on_timer(&mut self) {
        // Non-blocking: an early or spurious wake-up reads EAGAIN, which is fine.
        let _ = self.timer.wait();
        self.blocked = false;
    }

    /// Tokens the bandwidth bucket can give now (`None` without one); for tests and
    /// diagnostics.
    pub fn bandwidth_available(&mut self) -> Option<u64> {
        let now = self.clock.now();
        self.bandwidth.as_mut().map(|b| {
            b.refill(now);
            b.available()
        })
    }
}

impl AsRawFd for RateLimiter {
    /// The timerfd to watch (readable when the limiter may unblock).
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::ManualClock;

    const MS: Duration = Duration::from_millis(1);

    fn limiter(config: RateLimitConfig) -> (RateLimiter, ManualClock) {
        let clock = ManualClock::new();
        let l = RateLimiter::with_clock(&config, Box::new(clock.clone()))
            .unwrap()
            .expect("limited");
        (l, clock)
    }

    /// Whether the timerfd is armed, and for how long.
    fn timer_remaining(l: &RateLimiter) -> Option<Duration> {
        // SAFETY: an all-zero itimerspec is valid (plain integers).
        let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: timerfd_gettime on the limiter's own timerfd writes only `spec`.
        let rc = unsafe { libc::timerfd_gettime(l.as_raw_fd(), &mut spec) };
        assert_eq!(rc, 0);
        let d = Duration::new(spec.it_value.tv_sec as u64, spec.it_value.tv_nsec as u32);
        (!d.is_zero()).then_some(d)
    }

    #[test]
    fn no_buckets_no_limiter() {
        assert!(RateLimiter::new(&RateLimitConfig::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn blocked_then_timer_then_unblocked() {
        let (mut l, clock) = limiter(RateLimitConfig {
            bandwidth: BucketConfig::new(1000, 1000),
            ..Default::default()
        });
        assert!(l.consume(600));
        assert!(!l.is_blocked());
        assert_eq!(timer_remaining(&l), None, "no timer while within budget");
        assert!(!l.consume(600), "400 left");
        assert!(l.is_blocked());
        let armed = timer_remaining(&l).expect("the timer is armed when blocked");
        assert!(
            armed > MS * 150 && armed <= MS * 200,
            "{armed:?}: 200 tokens take 200 ms"
        );
        clock.advance(MS * 500);
        assert!(
            !l.consume(1),
            "a blocked limiter waits for its timer, whatever the clock"
        );
        l.on_timer();
        assert!(!l.is_blocked());
        assert!(l.consume(600));
        assert_eq!(l.bandwidth_available(), Some(300));
    }

    #[test]
    fn ops_and_bandwidth_are_both_required_and_nothing_is_taken_on_refusal() {
        let (mut l, clock) = limiter(RateLimitConfig {
            bandwidth: BucketConfig::new(1000, 1000),
            ops: BucketConfig::new(2, 1000),
        });
        assert!(l.consume(100));
        assert!(l.consume(100));
        assert!(!l.consume(100), "out of ops");
        assert_eq!(
            l.bandwidth_available(),
            Some(800),
            "the refused request took no bytes"
        );
        // One op comes back after 500 ms; the timer says so.
        let armed = timer_remaining(&l).unwrap();
        assert!(armed > MS * 450 && armed <= MS * 500, "{armed:?}");
        clock.advance(MS * 500);
        l.on_timer();
        assert!(l.consume(100));
    }

    #[test]
    fn an_oversize_request_makes_progress() {
        // A 64 KiB request through a 4 KiB bucket: it goes when the bucket is full, and the
        // next request waits for the debt to be paid.
        let (mut l, clock) = limiter(RateLimitConfig {
            bandwidth: BucketConfig::new(4096, 100),
            ..Default::default()
        });
        assert!(l.consume(65_536));
        assert!(!l.consume(1));
        let armed = timer_remaining(&l).unwrap();
        // 61440 + 1 tokens at 4096 per 100 ms: 1.5 s.
        assert!(armed > MS * 1400 && armed <= MS * 1501, "{armed:?}");
        clock.advance(MS * 1501);
        l.on_timer();
        assert!(l.consume(1));
        // Never stuck: the same oversize request again goes as soon as the bucket refills.
        assert!(!l.consume(65_536));
        clock.advance(MS * 100);
        l.on_timer();
        assert!(l.consume(65_536));
    }

    #[test]
    fn one_time_burst_lets_a_first_burst_through() {
        let (mut l, _clock) = limiter(RateLimitConfig {
            bandwidth: BucketConfig {
                size: 100,
                one_time_burst: 1000,
                refill_time: 1000,
            },
            ..Default::default()
        });
        for _ in 0..11 {
            assert!(l.consume(100));
        }
        assert!(!l.consume(100));
    }
}
