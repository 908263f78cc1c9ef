//! The answer cache: upstream answers by (name, type), kept for their TTL
//! (capped by `dns.answer_ttl_max`) or, for negative answers, for the SOA's
//! negative TTL (capped by `dns.negative_ttl`). It holds what the upstream
//! said, before any zone's filter: the filter runs on every hit, so a
//! reload that changes the policy applies to cached answers at once.
//!
//! Bounded: `moka`'s TinyLFU keeps the answers asked for most within
//! `dns.cache_size`, so a flood of one-off names (a scan, DNS tunnelling)
//! cannot push out the names a network really uses; an entry also leaves
//! memory when its lifetime ends. Lookups still check the expiry against
//! the caller's clock, so an answer is never served past its TTL.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};

/// A cache key: the normalised name and the query type.
pub type Key = (Box<str>, u16);

/// Upstream answers with their expiry.
pub struct Cache {
    map: moka::sync::Cache<Key, Entry>,
    ttl_max: Duration,
    negative_max: Duration,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.map.entry_count())
            .field("ttl_max", &self.ttl_max)
            .field("negative_max", &self.negative_max)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    msg: Arc<Message>,
    stored: Instant,
    expires: Instant,
}

/// Each entry leaves memory when its own lifetime ends (a new answer for
/// the same key starts a new one).
struct Lifetime;

impl moka::Expiry<Key, Entry> for Lifetime {
    fn expire_after_create(&self, _: &Key, e: &Entry, _: Instant) -> Option<Duration> {
        Some(e.expires.saturating_duration_since(e.stored))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        e: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.expires.saturating_duration_since(e.stored))
    }
}

// === impl Cache ===

impl Cache {
    /// A cache of at most `capacity` answers.
    pub fn new(capacity: usize, ttl_max: Duration, negative_max: Duration) -> Cache {
        Cache {
            map: moka::sync::Cache::builder()
                .max_capacity(u64::try_from(capacity.max(1)).unwrap_or(u64::MAX))
                .expire_after(Lifetime)
                .build(),
            ttl_max,
            negative_max,
        }
    }

    /// A live answer and its age in whole seconds.
    pub fn get(&self, name: &str, qtype: RecordType, now: Instant) -> Option<(Arc<Message>, u32)> {
        let e = self.map.get(&(Box::from(name), u16::from(qtype)))?;
        if now >= e.expires {
            return None;
        }
        let age = now.saturating_duration_since(e.stored).as_secs();
        Some((e.msg, u32::try_from(age).unwrap_or(u32::MAX)))
    }

    /// Stores `msg` for as long as it may be cached (not at all for
    /// errors, truncated answers and TTL 0).
    pub fn insert(&self, name: &str, qtype: RecordType, msg: Arc<Message>, now: Instant) {
        let Some(ttl) = self.lifetime(&msg) else {
            return;
        };
        let entry = Entry {
            msg,
            stored: now,
            expires: now + ttl,
        };
        self.map.insert((Box::from(name), u16::from(qtype)), entry);
    }

    /// Answers held now (after the cache's pending evictions are applied).
    pub fn len(&self) -> usize {
        self.map.run_pending_tasks();
        usize::try_from(self.map.entry_count()).unwrap_or(usize::MAX)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long `msg` may be cached, if at all.
    fn lifetime(&self, msg: &Message) -> Option<Duration> {
        if msg.metadata.truncation {
            return None;
        }
        let secs = match msg.metadata.response_code {
            ResponseCode::NoError if !msg.answers.is_empty() => {
                let min = msg.answers.iter().map(|r| r.ttl).min()?;
                Duration::from_secs(u64::from(min)).min(self.ttl_max)
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                // RFC 2308: the SOA's TTL, bounded by its MINIMUM field.
                let soa = msg.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                    _ => None,
                });
                match soa {
                    Some(t) => Duration::from_secs(u64::from(t)).min(self.negative_max),
                    None => self.negative_max,
                }
            }
            _ => return None,
        };
        (!secs.is_zero()).then_some(secs)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::{
        op::{MessageType, OpCode},
        rr::{Name, Record, rdata::A},
    };

    use super::*;

    fn answer(ttl: u32) -> Arc<Message> {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_answer(Record::from_rdata(
            Name::from_ascii("a.example.").unwrap(),
            ttl,
            RData::A(A(Ipv4Addr::new(93, 184, 216, 34))),
        ));
        Arc::new(m)
    }

    fn nxdomain() -> Arc<Message> {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        Arc::new(m)
    }

    #[test]
    fn honours_ttls_and_caps() {
        let c = Cache::new(10, Duration::from_secs(100), Duration::from_secs(5));
        let t0 = Instant::now();
        c.insert("a.example", RecordType::A, answer(30), t0);
        c.insert("b.example", RecordType::A, answer(3000), t0);
        c.insert("n.example", RecordType::A, nxdomain(), t0);
        c.insert("z.example", RecordType::A, answer(0), t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(c.get("a.example", RecordType::A, at(29)).unwrap().1, 29);
        assert!(c.get("a.example", RecordType::A, at(30)).is_none());
        assert!(c.get("a.example", RecordType::AAAA, at(1)).is_none());
        assert!(c.get("b.example", RecordType::A, at(99)).is_some());
        assert!(c.get("b.example", RecordType::A, at(100)).is_none());
        assert!(c.get("n.example", RecordType::A, at(4)).is_some());
        assert!(c.get("n.example", RecordType::A, at(5)).is_none());
        assert!(c.get("z.example", RecordType::A, t0).is_none());
    }

    #[test]
    fn stays_within_capacity() {
        let c = Cache::new(3, Duration::from_secs(100), Duration::from_secs(5));
        let t0 = Instant::now();
        for i in 0..10 {
            c.insert(&format!("{i}.example"), RecordType::A, answer(60), t0);
        }
        assert!(c.len() <= 3, "{}", c.len());
        assert!(!c.is_empty());
    }

    /// A flood of one-off names (a scan, a DNS tunnel's random labels)
    /// does not push out the names asked for again and again.
    #[test]
    fn names_in_use_survive_a_flood_of_one_off_names() {
        let c = Cache::new(100, Duration::from_secs(100), Duration::from_secs(5));
        let t0 = Instant::now();
        let hot: Vec<String> = (0..20).map(|i| format!("hot{i}.example")).collect();
        for name in &hot {
            c.insert(name, RecordType::A, answer(60), t0);
        }
        for round in 0..20 {
            for name in &hot {
                assert!(
                    c.get(name, RecordType::A, t0).is_some(),
                    "{name} in round {round}"
                );
            }
            c.len();
        }
        for i in 0..5_000 {
            c.insert(
                &format!("x{i}.tunnel.example"),
                RecordType::TXT,
                answer(60),
                t0,
            );
        }
        assert!(c.len() <= 100, "{}", c.len());
        let kept = hot
            .iter()
            .filter(|n| c.get(n, RecordType::A, t0).is_some())
            .count();
        assert_eq!(kept, hot.len(), "hot names pushed out by one-off ones");
    }

    #[test]
    fn errors_are_not_cached() {
        let c = Cache::new(3, Duration::from_secs(100), Duration::from_secs(5));
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::ServFail;
        c.insert("s.example", RecordType::A, Arc::new(m), Instant::now());
        assert!(c.is_empty());
    }
}
