//! The per-connection inbound rate limit: a token bucket. Pure (the caller
//! passes the time), so the bridge's connection loop stays the only I/O and
//! tests need no clock.

use std::time::{Duration, Instant};

/// Allows `rate` frames per second on average and bursts of `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate_per_sec.max(1)),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token if there is one; `false` means: answer `rate_limited`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely by `now` (it can be
    /// forgotten: a new one would be the same).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// How long until the next token, for a `rate_limited` message.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, t0);
        assert_eq!(
            (0..8).filter(|_| bucket.allow(t0)).count(),
            5,
            "a burst of 5"
        );
        assert!(!bucket.allow(t0));
        assert!(bucket.retry_after() <= Duration::from_millis(100));
        // 250 ms at 10/s: 2 more (2.5, rounded down by whole tokens).
        let later = t0 + Duration::from_millis(250);
        assert_eq!((0..8).filter(|_| bucket.allow(later)).count(), 2);
        // A long pause never stores more than the burst.
        let much_later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.allow(much_later)).count(), 5);
    }

    #[test]
    fn time_going_backwards_does_not_mint_tokens() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(1, 1, t0);
        assert!(bucket.allow(t0));
        assert!(!bucket.allow(t0 - Duration::from_millis(500)));
    }
}
