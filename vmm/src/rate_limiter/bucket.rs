//! One token bucket: `size` tokens at most, refilled from empty to full in `refill_time`,
//! plus a `one_time_burst` of tokens spent first and never refilled.
//!
//! Pure arithmetic on the times it is given (no clock, no timer), so it is tested
//! exactly. Refill is exact: the fraction of a token earned between two updates is carried
//! over, so many small updates refill as much as one large one. A request larger than
//! `size` would never fit; it is let through once the bucket is full and leaves the bucket
//! in debt, which refill pays back before the bucket holds tokens again (Firecracker lets
//! such a request through too, and makes the next ones wait).

use std::time::Duration;

/// A token bucket (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    one_time_burst: u64,
    refill_ns: u64,
    budget: u64,
    debt: u64,
    /// Earned fraction of a token, in units of 1/`refill_ns` token.
    carry: u128,
    last_update: Duration,
}

impl TokenBucket {
    /// A full bucket of `size` tokens refilled in `refill_time`, with `one_time_burst`
    /// extra tokens, as of time `now`. `None` when `size` or `refill_time` is zero (no
    /// limit).
    pub fn new(
        size: u64,
        one_time_burst: u64,
        refill_time: Duration,
        now: Duration,
    ) -> Option<Self> {
        let refill_ns = u64::try_from(refill_time.as_nanos()).unwrap_or(u64::MAX);
        (size > 0 && refill_ns > 0).then_some(Self {
            size,
            one_time_burst,
            refill_ns,
            budget: size,
            debt: 0,
            carry: 0,
            last_update: now,
        })
    }

    /// The bucket's capacity.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Tokens that can be spent now without waiting (the burst left plus the budget; 0
    /// while the bucket is in debt).
    pub fn available(&self) -> u64 {
        if self.debt > 0 {
            0
        } else {
            self.budget.saturating_add(self.one_time_burst)
        }
    }

    /// What is left of the one-time burst.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// Add the tokens earned between the last update and `now` (an earlier `now` adds
    /// nothing).
    pub fn refill(&mut self, now: Duration) {
        let Some(elapsed) = now.checked_sub(self.last_update) else {
            return;
        };
        self.last_update = now;
        let earned = elapsed
            .as_nanos()
            .saturating_mul(u128::from(self.size))
            .saturating_add(self.carry);
        let mut tokens = earned / u128::from(self.refill_ns);
        self.carry = earned % u128::from(self.refill_ns);
        let paid = tokens.min(u128::from(self.debt));
        self.debt -= paid as u64;
        tokens -= paid;
        let room = u128::from(self.size - self.budget);
        if tokens >= room {
            self.budget = self.size;
            self.carry = 0;
        } else {
            self.budget += tokens as u64;
        }
    }

    /// The budget `tokens` need: all of it for a request larger than the bucket, else
    /// what the burst does not cover.
    fn target(&self, tokens: u64) -> u64 {
        tokens.saturating_sub(self.one_time_burst).min(self.size)
    }

    /// Whether `tokens` can be taken now (call [`TokenBucket::refill`] first).
    pub fn can_take(&self, tokens: u64) -> bool {
        tokens == 0 || (self.debt == 0 && self.budget >= self.target(tokens))
    }

    /// Take `tokens`: from the burst first, then the budget; what exceeds the budget (a
    /// request larger than the bucket) becomes debt. Callers check
    /// [`TokenBucket::can_take`] first.
    pub fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.one_time_burst);
        self.one_time_burst -= from_burst;
        let rest = tokens - from_burst;
        if rest <= self.budget {
            self.budget -= rest;
        } else {
            self.debt = self.debt.saturating_add(rest - self.budget);
            self.budget = 0;
        }
    }

    /// How long from the last update until [`TokenBucket::can_take`] holds for `tokens`
    /// (zero if it holds now), assuming nothing else is taken meanwhile.
    pub fn time_until(&self, tokens: u64) -> Duration {
        if self.can_take(tokens) {
            return Duration::ZERO;
        }
        let needed =
            u128::from(self.debt) + u128::from(self.target(tokens).saturating_sub(self.budget));
        // Smallest t (ns) with t * size + carry >= needed * refill_ns.
        let goal = needed.saturating_mul(u128::from(self.refill_ns));
        let missing = goal.saturating_sub(self.carry);
        let ns = missing.div_ceil(u128::from(self.size));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(size: u64, burst: u64, refill_ms: u64) -> TokenBucket {
        TokenBucket::new(size, burst, MS * refill_ms as u32, Duration::ZERO).unwrap()
    }

    #[test]
    fn zero_size_or_refill_time_is_no_bucket() {
        assert!(TokenBucket::new(0, 5, MS, Duration::ZERO).is_none());
        assert!(TokenBucket::new(5, 0, Duration::ZERO, Duration::ZERO).is_none());
    }

    #[test]
    fn starts_full_and_refills_at_size_per_refill_time() {
        let mut b = bucket(1000, 0, 1000);
        assert!(b.can_take(1000));
        b.take(1000);
        assert_eq!(b.available(), 0);
        assert!(!b.can_take(1));
        b.refill(MS * 250);
        assert_eq!(b.available(), 250);
        b.refill(MS * 1000);
        assert_eq!(b.available(), 1000);
        b.refill(MS * 5000);
        assert_eq!(b.available(), 1000, "never more than size");
    }

    #[test]
    fn fractions_of_a_token_are_carried_over() {
        // 3 tokens per 1000 ms: one token every 333.3 ms.
        let mut b = bucket(3, 0, 1000);
        b.take(3);
        for t in 1..=1000u32 {
            b.refill(MS * t);
        }
        assert_eq!(
            b.available(),
            3,
            "1000 updates of 1 ms refill as much as one of 1 s"
        );
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refilled() {
        let mut b = bucket(100, 500, 1000);
        assert_eq!(b.available(), 600);
        assert!(b.can_take(600));
        b.take(550);
        assert_eq!((b.one_time_burst(), b.available()), (0, 50));
        b.refill(MS * 10_000);
        assert_eq!(b.available(), 100, "the burst is gone for good");
    }

    #[test]
    fn time_until_is_exact() {
        let mut b = bucket(1000, 0, 1000);
        b.take(1000);
        assert_eq!(b.time_until(0), Duration::ZERO);
        assert_eq!(b.time_until(100), MS * 100);
        b.refill(MS * 40);
        assert_eq!(b.time_until(100), MS * 60);
        b.refill(MS * 100);
        assert!(b.can_take(100));
        assert_eq!(b.time_until(100), Duration::ZERO);
        // With a carried fraction: 3 tokens per second, after 100 ms.
        let mut b = bucket(3, 0, 1000);
        b.take(3);
        b.refill(MS * 100);
        let wait = b.time_until(1);
        b.refill(MS * 100 + wait);
        assert!(b.can_take(1), "ready after exactly the time said");
        let mut early = bucket(3, 0, 1000);
        early.take(3);
        early.refill(MS * 100 + wait - Duration::from_nanos(1));
        assert!(!early.can_take(1), "and not a nanosecond before");
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_when_full_and_leaves_debt() {
        let mut b = bucket(1000, 0, 1000);
        b.take(10);
        assert!(
            !b.can_take(2500),
            "only a full bucket lets an oversize request through"
        );
        assert_eq!(b.time_until(2500), MS * 10);
        b.refill(MS * 10);
        assert!(b.can_take(2500));
        b.take(2500);
        assert_eq!(b.available(), 0);
        // 1500 tokens of debt, then 1 token: 1.501 s.
        assert_eq!(b.time_until(1), MS * 1501);
        b.refill(MS * 10 + MS * 1500);
        assert!(!b.can_take(1), "debt paid, nothing earned yet");
        b.refill(MS * 10 + MS * 1501);
        assert!(b.can_take(1));
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut b = bucket(10, 0, 10);
        b.take(10);
        b.refill(MS * 5);
        b.refill(MS * 2);
        assert_eq!(b.available(), 5);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let mut b = TokenBucket::new(
            u64::MAX,
            u64::MAX,
            Duration::from_secs(u64::MAX),
            Duration::ZERO,
        )
        .unwrap();
        b.take(u64::MAX);
        b.take(u64::MAX);
        b.take(u64::MAX);
        assert!(b.time_until(u64::MAX) > Duration::ZERO);
        b.refill(Duration::MAX);
        let mut b = bucket(1, 0, 1);
        b.take(u64::MAX);
        assert!(!b.can_take(1));
        assert!(b.time_until(1) > Duration::from_secs(1 << 30));
        b.refill(Duration::MAX);
        assert!(b.can_take(1));
    }
}
