//! DNS servers for tests, on 127.0.0.1 (UDP and TCP on one port) over one
//! `serve_dns` loop: [`StubDns`] (addresses only, TTL 0) and [`FixtureDns`]
//! (records, CNAME chains, truncation); also [`silent_udp`], an upstream
//! that never answers, and [`random_label`], what a DNS tunnel's labels
//! look like.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

/// A stub DNS server on 127.0.0.1 (UDP and TCP, same port) answering A and
/// AAAA queries from a name → addresses map with TTL 0, so nothing is cached
/// and answers may be changed between queries (`set`). Unknown names get
/// NXDOMAIN. Point Sluice at it with `dns: {upstreams: [ADDR]}`.
pub struct StubDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// Name (lower-case, no trailing dot) → addresses.
    pub answers: Arc<Mutex<std::collections::HashMap<String, Vec<std::net::IpAddr>>>>,
    /// Queries answered, per name.
    pub queries: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

impl StubDns {
    /// Starts a server answering `names` (`("origin.test", &["127.0.0.1"])`).
    pub fn start(names: &[(&str, &[&str])]) -> StubDns {
        let answers: std::collections::HashMap<_, _> = names
            .iter()
            .map(|(n, ips)| {
                let ips = ips.iter().map(|i| i.parse().unwrap()).collect();
                (n.to_ascii_lowercase(), ips)
            })
            .collect();
        let answers = Arc::new(Mutex::new(answers));
        let queries = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let (a, q) = (answers.clone(), queries.clone());
        let addr = serve_dns(move |msg, _udp| dns_answer(msg, &a, &q));
        StubDns {
            addr,
            answers,
            queries,
        }
    }

    /// Replaces the addresses of `name`.
    pub fn set(&self, name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        self.answers
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), ips);
    }

    /// How many queries (any type) asked for `name`.
    pub fn queries_for(&self, name: &str) -> usize {
        self.queries
            .lock()
            .unwrap()
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

type DnsMap<V> = Arc<Mutex<std::collections::HashMap<String, V>>>;

/// One answer for one query message; None for anything unparseable.
fn dns_answer(
    q: &[u8],
    answers: &DnsMap<Vec<std::net::IpAddr>>,
    queries: &DnsMap<usize>,
) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let l = usize::from(*q.get(i)?);
        i += 1;
        if l == 0 {
            break;
        }
        if l > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + l)?).to_ascii_lowercase());
        i += l;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    q.get(i + 3)?;
    i += 4;
    let name = labels.join(".");
    *queries.lock().unwrap().entry(name.clone()).or_default() += 1;
    let ips = answers.lock().unwrap().get(&name).cloned();
    let rdata: Vec<Vec<u8>> = ips
        .iter()
        .flatten()
        .filter_map(|ip| match (ip, qtype) {
            (std::net::IpAddr::V4(v4), 1) => Some(v4.octets().to_vec()),
            (std::net::IpAddr::V6(v6), 28) => Some(v6.octets().to_vec()),
            _ => None,
        })
        .collect();
    let rcode = if ips.is_none() { 3 } else { 0 };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]);
    r.push(0x84 | (q[2] & 0x01)); // response, authoritative, RD copied
    r.push(0x80 | rcode); // RA
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..i]);
    for d in rdata {
        r.extend_from_slice(&[0xc0, 0x0c]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 0]); // class IN, TTL 0
        r.extend_from_slice(&(d.len() as u16).to_be_bytes());
        r.extend_from_slice(&d);
    }
    Some(r)
}

/// A record of a [`FixtureDns`]: `("A", "93.184.216.34")`,
/// `("AAAA", "2606:2800::1")`, `("CNAME", "edge.cdn.test")`, `("TXT", "...")`.
pub type FixtureRecord = (&'static str, String);

/// A small authoritative-style DNS server on 127.0.0.1 (UDP and TCP, same
/// port) built on hickory-proto, for tests that need more than [`StubDns`]:
/// TTLs, CNAME chains (followed like a recursive resolver would),
/// TXT records, NXDOMAIN and NODATA with an SOA, and truncation of UDP
/// answers larger than the client's EDNS size (the client must retry over
/// TCP). Every name's records are replaceable while it runs.
pub struct FixtureDns {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    zone: FixtureZone,
    queries: DnsMap<usize>,
    tcp_queries: Arc<AtomicUsize>,
}

impl FixtureDns {
    /// Starts an empty server.
    pub fn start() -> FixtureDns {
        let zone = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let queries: DnsMap<usize> = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let (z, q, t) = (zone.clone(), queries.clone(), tcp_queries.clone());
        let addr = serve_dns(move |msg, udp| {
            if !udp {
                t.fetch_add(1, Ordering::SeqCst);
            }
            fixture_answer(msg, &z, &q, udp)
        });
        FixtureDns {
            addr,
            zone,
            queries,
            tcp_queries,
        }
    }

    /// Replaces the records of `name` (each `(type, data)`) with TTL `ttl`.
    pub fn set(&self, name: &str, ttl: u32, records: &[(&str, &str)]) {
        let list = records
            .iter()
            .map(|(t, d)| (t.to_ascii_uppercase(), (*d).to_owned(), ttl))
            .collect();
        self.zone
            .lock()
            .unwrap()
            .insert(name.trim_end_matches('.').to_ascii_lowercase(), list);
    }

    /// How many queries (any type, UDP or TCP) asked for `name`.
    pub fn queries_for(&self, name: &str) -> usize {
        self.queries
            .lock()
            .unwrap()
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Queries that carried an EDNS Client Subnet option.
    pub fn ecs_seen(&self) -> usize {
        self.queries_for("#ecs")
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

type FixtureZone = Arc<Mutex<std::collections::HashMap<String, Vec<(String, String, u32)>>>>;

fn fixture_answer(
    q: &[u8],
    zone: &FixtureZone,
    queries: &DnsMap<usize>,
    udp: bool,
) -> Option<Vec<u8>> {
    use hickory_proto::{
        op::{Edns, Message, MessageType, OpCode, ResponseCode},
        rr::{
            Name, RData, Record, RecordType,
            rdata::{A, AAAA, CNAME, SOA, TXT},
        },
    };
    let req = Message::from_vec(q).ok()?;
    let subnet = hickory_proto::rr::rdata::opt::EdnsCode::Subnet;
    if req
        .edns
        .as_ref()
        .is_some_and(|e| e.option(subnet).is_some())
    {
        *queries
            .lock()
            .unwrap()
            .entry("#ecs".to_owned())
            .or_default() += 1;
    }
    if req.metadata.message_type != MessageType::Query || req.queries.len() != 1 {
        return None;
    }
    let query = req.queries[0].clone();
    let qtype = query.query_type();
    let key = |n: &Name| n.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    *queries
        .lock()
        .unwrap()
        .entry(key(query.name()))
        .or_default() += 1;
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(query.clone());
    if let Some(e) = &req.edns {
        let mut mine = Edns::new();
        mine.set_max_payload(e.max_payload().max(512));
        resp.set_edns(mine);
    }
    let zone = zone.lock().unwrap();
    let mut name = query.name().clone();
    let mut found = false;
    for _ in 0..10 {
        let Some(records) = zone.get(&key(&name)) else {
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
            let rdata = match (t.as_str(), qtype) {
                ("A", RecordType::A | RecordType::ANY) => RData::A(A(data.parse().ok()?)),
                ("AAAA", RecordType::AAAA | RecordType::ANY) => {
                    RData::AAAA(AAAA(data.parse().ok()?))
                }
                ("TXT", RecordType::TXT | RecordType::ANY) => {
                    // Long texts become several character-strings of 255.
                    let parts = data
                        .as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect();
                    RData::TXT(TXT::new(parts))
                }
                _ => continue,
            };
            resp.add_answer(Record::from_rdata(name.clone(), *ttl, rdata));
        }
        break;
    }
    if resp.answers.is_empty() || !found {
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
    let mut out = resp.to_vec().ok()?;
    let limit = usize::from(req.edns.as_ref().map_or(512, |e| e.max_payload().max(512)));
    if udp && out.len() > limit {
        out = resp.truncate().to_vec().ok()?;
    }
    Some(out)
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
