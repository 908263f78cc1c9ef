//! The answer cache: upstream answers by (name, type), kept for their TTL
//! (capped by `dns.answer_ttl_max`) or, for negative answers, for the SOA's
//! negative TTL (capped by `dns.negative_ttl`). It holds what the upstream
//! said, before any zone's filter: the filter runs on every hit, so a
//! reload that changes the policy applies to cached answers at once.
//!
//! Bounded: at capacity, expired entries are swept (at most once a
//! second) and otherwise an arbitrary entry makes room.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};

/// A cache key: the normalised name and the query type.
pub type Key = (Box<str>, u16);

/// Upstream answers with their expiry.
#[derive(Debug)]
pub struct Cache {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl_max: Duration,
    negative_max: Duration,
}

#[derive(Debug)]
struct Inner {
    map: HashMap<Key, Entry>,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Entry {
    msg: Arc<Message>,
    stored: Instant,
    expires: Instant,
}

// === impl Cache ===

impl Cache {
    /// A cache of at most `capacity` answers.
    pub fn new(capacity: usize, ttl_max: Duration, negative_max: Duration) -> Cache {
        Cache {
            inner: Mutex::new(Inner {
                map: HashMap::with_capacity(capacity.min(4096)),
                last_sweep: None,
            }),
            capacity: capacity.max(1),
            ttl_max,
            negative_max,
        }
    }

    /// A live answer and its age in whole seconds.
    pub fn get(&self, name: &str, qtype: RecordType, now: Instant) -> Option<(Arc<Message>, u32)> {
        let inner = self.inner.lock().ok()?;
        let e = inner.map.get(&(Box::from(name), u16::from(qtype)))?;
        if now >= e.expires {
            return None;
        }
        let age = now.saturating_duration_since(e.stored).as_secs();
        Some((e.msg.clone(), u32::try_from(age).unwrap_or(u32::MAX)))
    }

    /// Stores `msg` for as long as it may be cached (not at all for
    /// errors, truncated answers and TTL 0).
    pub fn insert(&self, name: &str, qtype: RecordType, msg: Arc<Message>, now: Instant) {
        let Some(ttl) = self.lifetime(&msg) else {
            return;
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key: Key = (Box::from(name), u16::from(qtype));
        if inner.map.len() >= self.capacity && !inner.map.contains_key(&key) {
            if inner
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
            {
                inner.map.retain(|_, e| e.expires > now);
                inner.last_sweep = Some(now);
            }
            if inner.map.len() >= self.capacity {
                if let Some(k) = inner.map.keys().next().cloned() {
                    inner.map.remove(&k);
                }
            }
        }
        inner.map.insert(
            key,
            Entry {
                msg,
                stored: now,
                expires: now + ttl,
            },
        );
    }

    /// Answers held now (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.map.len())
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
        assert_eq!(c.len(), 3);
        assert!(c.get("9.example", RecordType::A, t0).is_some());
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
