//! One DNS test server, [`FixtureDns`], on 127.0.0.1 (UDP and TCP on one
//! port), for Sluice to use as its upstream: names with A, AAAA, CNAME and
//! TXT records, answers that change from one query to the next (DNS
//! rebinding), NXDOMAIN and NODATA, truncation of large UDP answers, UDP
//! replies lost on the way back, and counts of what was asked. Also [`silent_udp`], an upstream that never
//! answers, and [`random_label`], what a DNS tunnel's labels look like.
//! It answers; what Sluice should have asked or passed on is for the tests
//! to assert.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, SOA, TXT, opt::EdnsCode},
    },
};

/// A small authoritative-style DNS server built on hickory-proto. Every
/// name's records are replaceable while it runs (`set`); a name may also
/// have a series of record sets, one per query (`set_series`). Two
/// configurations:
///
/// - [`FixtureDns::start`]: TTLs as set, CNAME chains followed like a
///   recursive resolver would, TXT records, NXDOMAIN and NODATA with an
///   SOA (negative TTL 5 s), EDNS sizes honoured: a UDP answer larger than
///   the client's EDNS size (512 without EDNS) is truncated, and the client
///   must retry over TCP.
/// - [`FixtureDns::stub`]: A and AAAA records only, with TTL 0 and negative
///   answers without an SOA, so that nothing is cached and the addresses
///   decide everything. Point Sluice's proxy at it with
///   `dns: {upstreams: [ADDR]}`.
pub struct FixtureDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    zone: Zone,
    counts: Counts,
    ecs: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    lose_every: Arc<AtomicUsize>,
}

/// Name (lower-case, no trailing dot) → record sets, one per query (the
/// last repeats); each record is (type, data, TTL).
type Names = HashMap<String, Vec<Vec<(String, String, u32)>>>;

/// The zone, replaceable while the server runs.
type Zone = Arc<Mutex<Names>>;

/// (name, query type) → queries received.
type Counts = Arc<Mutex<HashMap<(String, String), Asked>>>;

/// The queries for one (name, type): how many, and the ids of the latest,
/// so that a query sent again with the same id (a resend after a lost
/// datagram, a TCP retry after truncation) counts once.
#[derive(Default)]
struct Asked {
    n: usize,
    ids: std::collections::VecDeque<u16>,
}

/// Ids remembered per (name, type).
const RECENT_IDS: usize = 16;

/// How [`FixtureDns`] answers.
#[derive(Clone, Copy)]
struct Config {
    /// Whether NXDOMAIN and NODATA carry an SOA for negative caching.
    negative_soa: bool,
}

impl FixtureDns {
    /// Starts an empty server in the fixture configuration.
    pub fn start() -> FixtureDns {
        Self::start_with(Config { negative_soa: true })
    }

    /// Starts a server in the stub configuration answering A and AAAA
    /// queries for `names` (`("origin.test", &["127.0.0.1", "::1"])`);
    /// other names get NXDOMAIN.
    pub fn stub(names: &[(&str, &[&str])]) -> FixtureDns {
        let dns = Self::start_with(Config {
            negative_soa: false,
        });
        for (name, ips) in names {
            dns.set_addresses(name, ips);
        }
        dns
    }

    fn start_with(config: Config) -> FixtureDns {
        let zone: Zone = Arc::default();
        let counts: Counts = Arc::default();
        let ecs = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let lose_every = Arc::new(AtomicUsize::new(0));
        let (z, c, e, t, l) = (
            zone.clone(),
            counts.clone(),
            ecs.clone(),
            tcp_queries.clone(),
            lose_every.clone(),
        );
        let udp_seen = AtomicUsize::new(0);
        let addr = serve_dns(move |msg, udp| {
            if !udp {
                t.fetch_add(1, Ordering::SeqCst);
            }
            let out = answer(msg, udp, config, &z, &c, &e);
            let every = l.load(Ordering::SeqCst);
            let nth = if udp {
                udp_seen.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                0
            };
            if udp && every > 0 && nth % every == 0 {
                return None;
            }
            out
        });
        FixtureDns {
            addr,
            zone,
            counts,
            ecs,
            tcp_queries,
            lose_every,
        }
    }

    /// Answers every UDP query but loses the reply to every `n`-th one
    /// (counted over every UDP query it received; 0: lose none), as a lossy network
    /// would. The query is still counted.
    pub fn lose_every_nth_reply(&self, n: usize) {
        self.lose_every.store(n, Ordering::SeqCst);
    }

    /// Replaces the records of `name` (each `(type, data)`: `("A",
    /// "93.184.216.34")`, `("AAAA", "2606:2800::1")`, `("CNAME",
    /// "edge.cdn.test")`, `("TXT", "...")`) with TTL `ttl`.
    pub fn set(&self, name: &str, ttl: u32, records: &[(&str, &str)]) {
        self.set_series(name, ttl, &[records]);
    }

    /// Replaces the records of `name` with a series of record sets: the
    /// k-th query of a type for `name` is answered from the k-th set, and
    /// the last set repeats (a CNAME target's own series is indexed by the
    /// same k).
    pub fn set_series(&self, name: &str, ttl: u32, sets: &[&[(&str, &str)]]) {
        let sets = sets
            .iter()
            .map(|set| {
                set.iter()
                    .map(|(t, d)| (t.to_ascii_uppercase(), (*d).to_owned(), ttl))
                    .collect()
            })
            .collect();
        self.zone.lock().unwrap().insert(key(name), sets);
    }

    /// Replaces the addresses of `name` (A and AAAA records, TTL 0).
    pub fn set_addresses(&self, name: &str, ips: &[&str]) {
        let records: Vec<(&str, &str)> = ips
            .iter()
            .map(|ip| match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => ("A", *ip),
                Ok(IpAddr::V6(_)) => ("AAAA", *ip),
                Err(e) => panic!("{ip}: {e}"),
            })
            .collect();
        self.set(name, 0, &records);
    }

    /// How many queries (any type, UDP or TCP) asked for `name`; a query
    /// sent again with the same id counts once.
    pub fn queries_for(&self, name: &str) -> usize {
        let name = key(name);
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, k)| k.n)
            .sum()
    }

    /// How many queries of type `qtype` (`A`, `AAAA`, `TXT`, …) asked for
    /// `name`.
    pub fn queries(&self, name: &str, qtype: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(&(key(name), qtype.to_ascii_uppercase()))
            .map_or(0, |k| k.n)
    }

    /// Queries that carried an EDNS Client Subnet option.
    pub fn ecs_seen(&self) -> usize {
        self.ecs.load(Ordering::SeqCst)
    }

    /// Queries received over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.tcp_queries.load(Ordering::SeqCst)
    }
}

/// A UDP address that never answers (a dead upstream), kept bound while
/// the returned socket lives.
pub fn silent_udp() -> (SocketAddr, std::net::UdpSocket) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    (s.local_addr().unwrap(), s)
}

/// A deterministic base32-looking label of 50 characters, different for
/// every `seed`: what data leaving through a DNS tunnel looks like.
pub fn random_label(seed: u64) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..50)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(alphabet[(x % 32) as usize])
        })
        .collect()
}

/// The zone's key for `name`.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The answer to one query message; `None` (no reply) for anything that
/// is not one well-formed query.
fn answer(
    q: &[u8],
    udp: bool,
    config: Config,
    zone: &Zone,
    counts: &Counts,
    ecs: &AtomicUsize,
) -> Option<Vec<u8>> {
    let req = Message::from_vec(q).ok()?;
    if req
        .edns
        .as_ref()
        .is_some_and(|e| e.option(EdnsCode::Subnet).is_some())
    {
        ecs.fetch_add(1, Ordering::SeqCst);
    }
    if req.metadata.message_type != MessageType::Query || req.queries.len() != 1 {
        return None;
    }
    let query = req.queries[0].clone();
    let nth = nth_asked(counts, &query, req.metadata.id);
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(query.clone());
    if let Some(e) = &req.edns {
        let mut mine = Edns::new();
        mine.set_max_payload(e.max_payload().max(512));
        resp.set_edns(mine);
    }
    let found = resolve(&zone.lock().unwrap(), &query, nth, &mut resp)?;
    if resp.answers.is_empty() || !found {
        negative(&mut resp, found, config)?;
    }
    let mut out = resp.to_vec().ok()?;
    let limit = usize::from(req.edns.as_ref().map_or(512, |e| e.max_payload().max(512)));
    if udp && out.len() > limit {
        out = resp.truncate().to_vec().ok()?;
    }
    Some(out)
}

/// How many queries of this type asked for this name before query `id`:
/// which set of a series answers (a query asked again with the same id is
/// the same query: same count, same set).
fn nth_asked(counts: &Counts, query: &Query, id: u16) -> usize {
    let mut counts = counts.lock().unwrap();
    let k = counts
        .entry((
            key(&query.name().to_ascii()),
            query.query_type().to_string(),
        ))
        .or_default();
    if !k.ids.contains(&id) {
        k.n += 1;
        if k.ids.len() == RECENT_IDS {
            k.ids.pop_front();
        }
        k.ids.push_back(id);
    }
    k.n - 1
}

/// Adds the answers to `query` from the zone's `nth` record sets to
/// `resp`, following CNAMEs (ten at most). Whether the last name had
/// records; `None` for records the zone cannot encode (no reply).
fn resolve(zone: &Names, query: &Query, nth: usize, resp: &mut Message) -> Option<bool> {
    let qtype = query.query_type();
    let mut name = query.name().clone();
    let mut found = false;
    for _ in 0..10 {
        let Some(sets) = zone.get(&key(&name.to_ascii())) else {
            break;
        };
        let Some(records) = sets.get(nth.min(sets.len().saturating_sub(1))) else {
            break;
        };
        found = true;
        let cname = records.iter().find(|(t, _, _)| t == "CNAME");
        if let (Some((_, target, ttl)), false) = (cname, qtype == RecordType::CNAME) {
            let target = Name::from_ascii(format!("{}.", target.trim_end_matches('.'))).ok()?;
            resp.add_answer(Record::from_rdata(
                name.clone(),
                *ttl,
                RData::CNAME(CNAME(target.clone())),
            ));
            name = target;
            found = false;
            continue;
        }
        for (t, data, ttl) in records {
            if let Some(rdata) = rdata(t, data, qtype)? {
                resp.add_answer(Record::from_rdata(name.clone(), *ttl, rdata));
            }
        }
        break;
    }
    Some(found)
}

/// A zone record of type `t` as record data, if `qtype` asks for it
/// (`Some(None)` if it does not); `None` if `data` does not parse.
fn rdata(t: &str, data: &str, qtype: RecordType) -> Option<Option<RData>> {
    let rdata = match (t, qtype) {
        ("A", RecordType::A | RecordType::ANY) => RData::A(A(data.parse().ok()?)),
        ("AAAA", RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(data.parse().ok()?)),
        ("TXT", RecordType::TXT | RecordType::ANY) => {
            // Long texts become several character-strings of 255.
            let parts = data
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            RData::TXT(TXT::new(parts))
        }
        _ => return Some(None),
    };
    Some(Some(rdata))
}

/// A negative or CNAME-only answer: NXDOMAIN when nothing was found,
/// NOERROR (NODATA) after CNAMEs, and the SOA for negative caching if the
/// configuration gives one.
fn negative(resp: &mut Message, found: bool, config: Config) -> Option<()> {
    if !found
        && resp
            .answers
            .iter()
            .all(|r| r.record_type() == RecordType::CNAME)
    {
        resp.metadata.response_code = if resp.answers.is_empty() {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        };
    }
    if config.negative_soa {
        let origin = Name::from_ascii("test.").ok()?;
        let soa = SOA::new(
            origin.clone(),
            Name::from_ascii("hostmaster.test.").ok()?,
            1,
            3600,
            600,
            86400,
            5,
        );
        resp.add_authority(Record::from_rdata(origin, 5, RData::SOA(soa)));
    }
    Some(())
}

/// Serves DNS on 127.0.0.1 over UDP and TCP on one port, each message
/// answered by `answer(message, over_udp)` (`None`: no reply, and a TCP
/// connection is closed). Returns the address.
fn serve_dns(
    answer: impl Fn(&[u8], bool) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> SocketAddr {
    // UDP and TCP on one port: retry until both binds succeed.
    let (udp, tcp) = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = std::net::TcpListener::bind(udp.local_addr().unwrap()) {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let answer = Arc::new(answer);
    let on_udp = answer.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            if let Some(r) = on_udp(&buf[..n], true) {
                let _ = udp.send_to(&r, from);
            }
        }
    });
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut msg).is_err() {
                        return;
                    }
                    let Some(r) = answer(&msg, false) else {
                        return;
                    };
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&r);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
