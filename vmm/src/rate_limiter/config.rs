//! The settings of rate limiters, as `VmConfig`, `vm.toml` and the command line give them.
//!
//! Shaped as Firecracker's: a limiter is a `bandwidth` bucket (bytes) and an `ops` bucket
//! (requests), each `size` tokens refilled in `refill_time` milliseconds, with an optional
//! `one_time_burst`. A bucket left at zero is no limit; a limiter whose buckets are both
//! zero is no limiter at all (the device runs as it does without one).

use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// Largest bucket `size` or `one_time_burst` accepted: 2^50 (1 PiB of bytes, or a
/// quadrillion operations), far beyond any real limit and small enough for exact
/// arithmetic.
pub const MAX_BUCKET_SIZE: u64 = 1 << 50;
/// Longest `refill_time` accepted, in milliseconds (one hour).
pub const MAX_REFILL_TIME_MS: u64 = 3_600_000;

/// Why a bucket's settings are refused; the caller names the bucket's key.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BucketConfigError {
    /// `refill_time` or `one_time_burst` without a `size`.
    #[error("size is 0 but refill_time or one_time_burst is set: give size (1 to {MAX_BUCKET_SIZE}), or remove the bucket for no limit")]
    NoSize,
    /// A `size` without a `refill_time`.
    #[error("refill_time is 0: give the milliseconds it takes to refill the bucket (1 to {MAX_REFILL_TIME_MS})")]
    NoRefillTime,
    /// A number above the accepted maximum.
    #[error("{field} = {value} is out of range: allowed up to {max}")]
    TooLarge {
        /// `size`, `one_time_burst` or `refill_time`.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The maximum.
        max: u64,
    },
}

/// One token bucket's settings. All zero: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full (bytes for `bandwidth`, requests for `ops`).
    pub size: u64,
    /// Extra tokens available once, at the start, spent before the bucket's own.
    pub one_time_burst: u64,
    /// Milliseconds to refill the bucket from empty to full.
    pub refill_time: u64,
}

impl BucketConfig {
    /// `size` tokens per `refill_time` milliseconds, no burst.
    pub fn new(size: u64, refill_time: u64) -> Self {
        Self {
            size,
            one_time_burst: 0,
            refill_time,
        }
    }

    /// Whether this bucket sets no limit (everything zero).
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }

    /// Check the settings: all zero, or a size and a refill time within range.
    pub fn validate(&self) -> Result<(), BucketConfigError> {
        if self.is_unlimited() {
            return Ok(());
        }
        for (field, value, max) in [
            ("size", self.size, MAX_BUCKET_SIZE),
            ("one_time_burst", self.one_time_burst, MAX_BUCKET_SIZE),
            ("refill_time", self.refill_time, MAX_REFILL_TIME_MS),
        ] {
            if value > max {
                return Err(BucketConfigError::TooLarge { field, value, max });
            }
        }
        if self.size == 0 {
            return Err(BucketConfigError::NoSize);
        }
        if self.refill_time == 0 {
            return Err(BucketConfigError::NoRefillTime);
        }
        Ok(())
    }

    /// The refill time as a duration.
    pub fn refill_duration(&self) -> Duration {
        Duration::from_millis(self.refill_time)
    }
}

/// One device's (or one direction's) limiter: a bandwidth and an operations bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Bytes.
    pub bandwidth: BucketConfig,
    /// Requests (virtio-blk) or frames (virtio-net).
    pub ops: BucketConfig,
}

impl RateLimitConfig {
    /// Whether neither bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_unlimited() && self.ops.is_unlimited()
    }

    /// Check both buckets; the error names the bucket (`bandwidth: ...`).
    pub fn validate(&self) -> Result<(), String> {
        self.bandwidth
            .validate()
            .map_err(|e| format!("bandwidth: {e}"))?;
        self.ops.validate().map_err(|e| format!("ops: {e}"))
    }
}

impl std::str::FromStr for RateLimitConfig {
    type Err = String;
    /// `bandwidth=SIZE/MS,ops=SIZE/MS,bandwidth_burst=N,ops_burst=N`, any subset in any
    /// order: SIZE tokens (bytes, or requests) refilled every MS milliseconds.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut c = Self::default();
        let number = |v: &str, what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("`{v}`: {what} must be a whole number"))
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                format!("`{part}`: expected bandwidth=SIZE/MS, ops=SIZE/MS, bandwidth_burst=N or ops_burst=N")
            })?;
            let rate = |v: &str| -> Result<(u64, u64), String> {
                let (size, ms) = v.split_once('/').ok_or_else(|| {
                    format!("`{part}`: expected {key}=SIZE/MS (SIZE tokens every MS milliseconds)")
                })?;
                Ok((number(size, "SIZE")?, number(ms, "MS")?))
            };
            match key {
                "bandwidth" => (c.bandwidth.size, c.bandwidth.refill_time) = rate(value)?,
                "ops" => (c.ops.size, c.ops.refill_time) = rate(value)?,
                "bandwidth_burst" => c.bandwidth.one_time_burst = number(value, "the burst")?,
                "ops_burst" => c.ops.one_time_burst = number(value, "the burst")?,
                _ => {
                    return Err(format!(
                        "unknown rate limit `{key}`: expected bandwidth, ops, bandwidth_burst or ops_burst"
                    ))
                }
            }
        }
        c.validate()?;
        Ok(c)
    }
}

/// The two limiters of a network device: frames the guest receives (`rx`) and sends
/// (`tx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetRateLimitConfig {
    /// Frames from the tap to the guest.
    pub rx: RateLimitConfig,
    /// Frames from the guest to the tap.
    pub tx: RateLimitConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_unlimited_and_valid() {
        assert!(RateLimitConfig::default().is_unlimited());
        assert!(RateLimitConfig::default().validate().is_ok());
        assert!(!RateLimitConfig {
            ops: BucketConfig::new(10, 1000),
            ..Default::default()
        }
        .is_unlimited());
    }

    #[test]
    fn nonsense_is_refused_naming_the_field() {
        let b = |size, one_time_burst, refill_time| BucketConfig {
            size,
            one_time_burst,
            refill_time,
        };
        assert_eq!(b(0, 0, 100).validate(), Err(BucketConfigError::NoSize));
        assert_eq!(b(0, 10, 0).validate(), Err(BucketConfigError::NoSize));
        assert_eq!(b(10, 0, 0).validate(), Err(BucketConfigError::NoRefillTime));
        let e = b(MAX_BUCKET_SIZE + 1, 0, 10).validate().unwrap_err();
        assert!(e.to_string().starts_with("size = "), "{e}");
        let e = b(10, 0, MAX_REFILL_TIME_MS + 1).validate().unwrap_err();
        assert!(e.to_string().starts_with("refill_time = "), "{e}");
        let e = RateLimitConfig {
            ops: b(5, 0, 0),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("ops: refill_time is 0"), "{e}");
    }

    #[test]
    fn command_line_syntax() {
        let c: RateLimitConfig = "bandwidth=1048576/1000,ops=100/500,bandwidth_burst=4096"
            .parse()
            .unwrap();
        assert_eq!(
            c,
            RateLimitConfig {
                bandwidth: BucketConfig {
                    size: 1 << 20,
                    one_time_burst: 4096,
                    refill_time: 1000
                },
                ops: BucketConfig::new(100, 500),
            }
        );
        assert!("".parse::<RateLimitConfig>().unwrap().is_unlimited());
        for (bad, says) in [
            ("speed=1/1", "unknown rate limit `speed`"),
            ("bandwidth=100", "expected bandwidth=SIZE/MS"),
            ("ops=x/10", "SIZE must be a whole number"),
            ("ops=10/0", "refill_time is 0"),
            ("ops_burst=5", "size is 0"),
        ] {
            let e = bad.parse::<RateLimitConfig>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
