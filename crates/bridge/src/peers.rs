//! Attempts per peer: a token bucket each. Connects per client IP, checked
//! before the token is verified, so one address cannot flood the bridge with
//! upgrades (each costs an RSA signature check and, with TLS, a handshake);
//! Dev Panel publishes per admin. Buckets that have refilled are forgotten,
//! so the map holds only recent peers.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::rate::TokenBucket;

/// Peers remembered before refilled buckets are swept out.
const SWEEP_OVER: usize = 4096;

/// Limits per peer (a client IP by default); `rate` 0 turns them off.
pub struct PeerLimits<K = IpAddr> {
    rate: u32,
    burst: u32,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq> PeerLimits<K> {
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self {
            rate: rate_per_sec,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `ip`; `Err` says how long to wait.
    pub fn allow(&self, ip: K, now: Instant) -> Result<(), Duration> {
        if self.rate == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_OVER {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let bucket = buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now));
        if bucket.allow(now) {
            Ok(())
        } else {
            Err(bucket.retry_after())
        }
    }

    /// Peers currently remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_is_limited_and_others_are_not() {
        let limits: PeerLimits = PeerLimits::new(1, 2);
        let (a, b) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t = Instant::now();
        assert!(limits.allow(a, t).is_ok());
        assert!(limits.allow(a, t).is_ok());
        let wait = limits.allow(a, t).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(
            limits.allow(b, t).is_ok(),
            "another address has its own bucket"
        );
        assert!(limits.allow(a, t + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let limits = PeerLimits::new(10, 10);
        let t = Instant::now();
        for i in 0..SWEEP_OVER as u32 {
            let _ = limits.allow(IpAddr::from(i.to_be_bytes()), t);
        }
        assert_eq!(limits.len(), SWEEP_OVER);
        let later = t + Duration::from_secs(5);
        let _ = limits.allow([192, 0, 2, 1].into(), later);
        assert_eq!(limits.len(), 1);
    }

    #[test]
    fn rate_zero_is_off() {
        let limits: PeerLimits = PeerLimits::new(0, 0);
        let t = Instant::now();
        for _ in 0..1000 {
            assert!(limits.allow([10, 0, 0, 1].into(), t).is_ok());
        }
        assert!(limits.is_empty());
    }
}
