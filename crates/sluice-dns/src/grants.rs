//! DNS-derived grants: each address handed to a zone in an allowed answer
//! is remembered as (zone, address) → name until the record's TTL runs out,
//! so that a redirected connection with no name on the wire can be judged
//! by the name it was resolved from (the binary adapts this store to the
//! transparent listener's `Grants`).
//!
//! A grant lives at least [`MIN_GRANT`]: a TTL of 0 means "do not cache",
//! not "do not connect", and the client connects right after the answer.
//! Memory is bounded by `dns.grants_max`: at capacity, expired grants are
//! swept (at most once a second), then new grants are not remembered
//! (counted as dropped) rather than evicting live ones.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_policy::guard;

/// The shortest life of a grant.
pub const MIN_GRANT: Duration = Duration::from_secs(10);

/// (zone, address) → name, expiring.
#[derive(Debug)]
pub struct GrantStore {
    inner: Mutex<Inner>,
    max: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// By address: the zones that were given it (usually one).
    by_ip: HashMap<IpAddr, Vec<Grant>>,
    len: usize,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Grant {
    zone: Arc<str>,
    name: Arc<str>,
    expires: Instant,
}

// === impl GrantStore ===

impl GrantStore {
    /// A store of at most `max` grants.
    pub fn new(max: usize) -> GrantStore {
        GrantStore {
            inner: Mutex::new(Inner::default()),
            max: max.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Remembers that `zone` was given `ip` for `name` for `ttl`. A later
    /// answer for the same (zone, address) replaces the name.
    pub fn insert(&self, zone: &str, ip: IpAddr, name: &str, ttl: Duration, now: Instant) {
        let ip = guard::canonical(ip);
        let expires = now + ttl.max(MIN_GRANT);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some(g) = inner
            .by_ip
            .get_mut(&ip)
            .and_then(|v| v.iter_mut().find(|g| &*g.zone == zone))
        {
            if &*g.name != name {
                g.name = name.into();
            }
            g.expires = g.expires.max(expires);
            return;
        }
        if inner.len >= self.max {
            inner.sweep(now);
            if inner.len >= self.max {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        inner.len += 1;
        inner.by_ip.entry(ip).or_default().push(Grant {
            zone: zone.into(),
            name: name.into(),
            expires,
        });
    }

    /// The name `zone` was given `ip` for, if that grant is live at `now`.
    pub fn lookup_at(&self, zone: &str, ip: IpAddr, now: Instant) -> Option<String> {
        let inner = self.inner.lock().ok()?;
        inner
            .by_ip
            .get(&guard::canonical(ip))?
            .iter()
            .find(|g| &*g.zone == zone && g.expires > now)
            .map(|g| g.name.to_string())
    }

    /// The name `zone` was given `ip` for, if that grant is live.
    pub fn lookup(&self, zone: &str, ip: IpAddr) -> Option<String> {
        self.lookup_at(zone, ip, Instant::now())
    }

    /// Grants held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.len)
    }

    /// Whether no grant is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Grants not remembered because the store was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

// === impl Inner ===

impl Inner {
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.by_ip.retain(|_, v| {
            v.retain(|g| g.expires > now);
            !v.is_empty()
        });
        self.len = self.by_ip.values().map(Vec::len).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn grants_are_per_zone_and_expire() {
        let g = GrantStore::new(10);
        let t0 = Instant::now();
        g.insert(
            "web",
            ip("93.184.216.34"),
            "git.example.com",
            Duration::from_secs(60),
            t0,
        );
        assert_eq!(
            g.lookup_at("web", ip("::ffff:93.184.216.34"), t0)
                .as_deref(),
            Some("git.example.com")
        );
        assert_eq!(g.lookup_at("ci", ip("93.184.216.34"), t0), None);
        assert_eq!(
            g.lookup_at("web", ip("93.184.216.34"), t0 + Duration::from_secs(60)),
            None
        );
        // TTL 0 still lives MIN_GRANT.
        g.insert(
            "ci",
            ip("93.184.216.35"),
            "a.example.com",
            Duration::ZERO,
            t0,
        );
        assert!(
            g.lookup_at("ci", ip("93.184.216.35"), t0 + Duration::from_secs(9))
                .is_some()
        );
        // A later answer names the address anew.
        g.insert(
            "web",
            ip("93.184.216.34"),
            "www.example.com",
            Duration::from_secs(60),
            t0,
        );
        assert_eq!(
            g.lookup_at("web", ip("93.184.216.34"), t0).as_deref(),
            Some("www.example.com")
        );
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn memory_is_bounded() {
        let g = GrantStore::new(2);
        let t0 = Instant::now();
        for i in 0..5u8 {
            g.insert(
                "web",
                IpAddr::from([93, 184, 216, i]),
                "x.example",
                Duration::from_secs(60),
                t0,
            );
        }
        assert_eq!(g.len(), 2);
        assert_eq!(g.dropped(), 3);
        // Once they expire, new grants fit again.
        let later = t0 + Duration::from_secs(120);
        g.insert(
            "web",
            ip("93.184.216.99"),
            "y.example",
            Duration::from_secs(60),
            later,
        );
        assert_eq!(
            g.lookup_at("web", ip("93.184.216.99"), later).as_deref(),
            Some("y.example")
        );
        assert_eq!(g.len(), 1);
    }
}
