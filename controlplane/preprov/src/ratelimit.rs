//! Per-source token buckets for the device application, bounded in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most sources tracked at once; past it, sources whose buckets have refilled are forgotten, and
/// if none has, new sources share one overflow bucket (so memory never grows without bound).
const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// `rate` requests per second per source address, with bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    overflow: Mutex<Bucket>,
}

impl RateLimiter {
    /// A limiter of `rate` per second and `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            buckets: Mutex::new(HashMap::new()),
            overflow: Mutex::new(Bucket { tokens: burst, last: Instant::now() }),
        }
    }

    fn take(&self, bucket: &mut Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token for `source`; false means the request is over the limit.
    pub fn allow(&self, source: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(&source) && buckets.len() >= MAX_SOURCES {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_SOURCES {
                drop(buckets);
                let mut overflow = self.overflow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut b = *overflow;
                let allowed = self.take(&mut b, now);
                *overflow = b;
                return allowed;
            }
        }
        let bucket = buckets.entry(source).or_insert(Bucket { tokens: self.burst, last: now });
        let mut b = *bucket;
        let allowed = self.take(&mut b, now);
        *bucket = b;
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let limiter = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!((0..8).filter(|_| limiter.allow(a, t0)).count(), 5);
        // Another source has its own bucket.
        assert!(limiter.allow(b, t0));
        // 10 per second: after 300 ms, three more.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| limiter.allow(a, t1)).count(), 3);
    }

    #[test]
    fn memory_is_bounded() {
        let limiter = RateLimiter::new(1, 1);
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 1000) {
            limiter.allow(IpAddr::from(i.to_be_bytes()), now);
        }
        let len = limiter.buckets.lock().map(|b| b.len()).unwrap_or(0);
        assert!(len <= MAX_SOURCES, "{len}");
    }
}
