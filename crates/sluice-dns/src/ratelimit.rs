//! Per-source query rate limit: a token bucket per client address that
//! holds `rate_limit_qps` tokens and refills at that rate. Over the limit a
//! query is dropped unanswered, which is what stops a spoofed-source flood
//! from using Sluice as a reflector.
//!
//! Bounded: at [`MAX_SOURCES`] buckets, those full again (idle at least a
//! second) are swept; if none are, unknown sources share the limit of one
//! overflow bucket until room appears.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use sluice_policy::guard;

/// Source addresses tracked at most.
pub const MAX_SOURCES: usize = 65_536;

/// Token buckets by source address.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

// === impl RateLimiter ===

impl RateLimiter {
    /// `qps` queries a second per source, with a burst of the same size.
    pub fn new(qps: u32, now: Instant) -> RateLimiter {
        let qps = f64::from(qps.max(1));
        RateLimiter {
            qps,
            inner: Mutex::new(Inner {
                buckets: HashMap::new(),
                overflow: Bucket {
                    tokens: qps,
                    last: now,
                },
            }),
        }
    }

    /// Takes a token for `src`; false means drop the query.
    pub fn allow(&self, src: IpAddr, now: Instant) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let src = guard::canonical(src);
        let qps = self.qps;
        if !inner.buckets.contains_key(&src) && inner.buckets.len() >= MAX_SOURCES {
            inner
                .buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(1));
            if inner.buckets.len() >= MAX_SOURCES {
                return inner.overflow.take(qps, now);
            }
        }
        inner
            .buckets
            .entry(src)
            .or_insert(Bucket {
                tokens: qps,
                last: now,
            })
            .take(qps, now)
    }
}

// === impl Bucket ===

impl Bucket {
    fn take(&mut self, qps: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * qps).min(qps);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_per_source() {
        let t0 = Instant::now();
        let r = RateLimiter::new(5, t0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!((0..8).filter(|_| r.allow(a, t0)).count(), 5);
        assert!(r.allow(b, t0), "another source has its own bucket");
        assert!(!r.allow(a, t0 + Duration::from_millis(100)));
        assert!(r.allow(a, t0 + Duration::from_millis(210)));
        assert_eq!(
            (0..8)
                .filter(|_| r.allow(a, t0 + Duration::from_secs(5)))
                .count(),
            5
        );
    }
}
