//! Token-bucket rate limiters that bound how much I/O a guest gets through a device
//! (issue #12: "bound what a guest can consume"), shaped as Firecracker's: each limiter has
//! a `bandwidth` bucket (bytes) and an `ops` bucket (requests or frames), each with a
//! `size`, an optional `one_time_burst` and a `refill_time` in milliseconds.
//!
//! Written here rather than taken from a library: `dbs-utils`' `rate_limiter` (Firecracker's,
//! packaged by Dragonball; 0.2.1 is its latest release) depends on event-manager 0.2 and
//! vmm-sys-util 0.11 and pulls in the `timerfd` crate (rustix), thiserror 1 and anyhow, so it
//! would duplicate the rust-vmm line this workspace moves as one (event-manager 0.4,
//! vmm-sys-util 0.15; see
//! `docs/architecture.md`); the other token-bucket crates are async (tokio) or
//! thread-safe counters without a timer to register on an epoll loop. What a device needs
//! is small: the arithmetic ([`bucket`]), a clock that tests can drive ([`clock`]), and a
//! timerfd on the device's event loop ([`limiter`], with vmm-sys-util's `TimerFd`).
//!
//! How devices use a limiter: before taking a request (a virtio-blk chain, a TX frame, an
//! RX frame) they ask [`RateLimiter::consume`]; when it says no, they leave the chain in
//! the available ring (never drop or fail it), stop taking more from that queue, and the
//! limiter's timer, armed for when enough tokens will be there, wakes them on the event
//! loop ([`RateLimiter::on_timer`]). A request larger than a bucket's size is let through
//! once the bucket is full and leaves the bucket in debt, so it makes progress and the
//! average rate still holds.

pub mod bucket;
pub mod clock;
pub mod config;
pub mod limiter;

pub use bucket::TokenBucket;
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use config::{BucketConfig, NetRateLimitConfig, RateLimitConfig};
pub use limiter::{RateLimiter, RateLimiterError};
