//! Client packets to questions, and the small answers that need no
//! upstream. Pure: no I/O, so the fuzz target drives it directly.
//!
//! The wire format is hickory-proto's; its decoder already refuses
//! compression loops and forward pointers, labels over 63 and names over
//! 255 octets, and counts that promise more records than the packet holds.
//! What it accepts is then held to what a stub resolver sends: one
//! question, class IN, no records outside the additional section. Before
//! it, [`strict_end`] walks the wire itself for what the decoder lets
//! through: bytes after the message (in a datagram or a TCP frame) and
//! compression pointers into the header both get FORMERR, never an answer
//! to a question guessed from the header's bytes.

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RecordType},
};

/// The UDP payload Sluice advertises and accepts at most (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// One client question, checked.
#[derive(Debug, Clone)]
pub struct Question {
    /// The message id to echo.
    pub id: u16,
    /// Recursion desired, echoed.
    pub recursion_desired: bool,
    /// Checking disabled, echoed.
    pub checking_disabled: bool,
    /// The client's UDP payload size when it sent EDNS (`None`: plain DNS,
    /// 512 octets).
    pub edns_payload: Option<u16>,
    /// The question as asked.
    pub query: Query,
    /// The name as the policy judges it: lower-case, no trailing dot; `None`
    /// when some label holds octets no host name has (the policy then
    /// denies it as an invalid destination).
    pub name: Option<String>,
}

/// Why a packet gets no forwarding.
#[derive(Debug)]
pub enum Refusal {
    /// Not worth an answer (too short to carry an id, or itself a response).
    Drop,
    /// Answer with this code and nothing else.
    Answer(Vec<u8>),
}

// === impl Question ===

impl Question {
    /// The query type.
    pub fn qtype(&self) -> RecordType {
        self.query.query_type()
    }

    /// The largest response the client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        usize::from(
            self.edns_payload
                .map_or(512, |p| p.clamp(512, MAX_UDP_PAYLOAD)),
        )
    }

    /// A response skeleton for this question: id, flags, question, EDNS.
    pub fn response(&self, code: ResponseCode) -> Message {
        let mut m = Message::response(self.id, OpCode::Query);
        m.metadata.recursion_desired = self.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.checking_disabled = self.checking_disabled;
        m.metadata.response_code = code;
        m.add_query(self.query.clone());
        if self.edns_payload.is_some() {
            let mut e = Edns::new();
            e.set_max_payload(MAX_UDP_PAYLOAD);
            m.set_edns(e);
        }
        m
    }
}

/// Parses a client packet into a question, or the answer it gets instead.
pub fn parse(packet: &[u8]) -> Result<Question, Refusal> {
    if packet.len() < 12 {
        return Err(Refusal::Drop);
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    // QR set: a response, never answered (no reflection loops).
    if packet[2] & 0x80 != 0 {
        return Err(Refusal::Drop);
    }
    let opcode = (packet[2] >> 3) & 0x0f;
    // The wire first: a message must end where the packet ends, and its
    // names may point only at earlier names, never into the header (which
    // would turn the id and counts into a guessed question).
    if strict_end(packet) != Some(packet.len()) {
        return Err(bare(id, opcode, ResponseCode::FormErr));
    }
    let Ok(msg) = Message::from_vec(packet) else {
        return Err(bare(id, opcode, ResponseCode::FormErr));
    };
    if msg.metadata.message_type != MessageType::Query {
        return Err(Refusal::Drop);
    }
    if msg.metadata.op_code != OpCode::Query {
        return Err(bare(id, opcode, ResponseCode::NotImp));
    }
    if msg.queries.len() != 1 || !msg.answers.is_empty() || !msg.authorities.is_empty() {
        return Err(bare(id, opcode, ResponseCode::FormErr));
    }
    let query = msg.queries[0].clone();
    let q = Question {
        id,
        recursion_desired: msg.metadata.recursion_desired,
        checking_disabled: msg.metadata.checking_disabled,
        edns_payload: msg.edns.as_ref().map(Edns::max_payload),
        name: normalise(query.name()),
        query,
    };
    let refuse = |code| Err(Refusal::Answer(encode(&q.response(code))));
    // RFC 6891 §6.1.3: an EDNS version we do not implement gets BADVERS,
    // with our own OPT (version 0) saying what we speak.
    if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return refuse(ResponseCode::BADVERS);
    }
    if q.query.query_class() != DNSClass::IN {
        return refuse(ResponseCode::NotImp);
    }
    match q.qtype() {
        // Zone transfers and meta types a forwarder does not pass on.
        RecordType::AXFR | RecordType::IXFR | RecordType::OPT | RecordType::TSIG => {
            refuse(ResponseCode::Refused)
        }
        _ => Ok(q),
    }
}

/// Where the message in `packet` ends, walking the header's counts: every
/// question and record, every name with its compression pointers followed
/// (each to an earlier name after the header, at most
/// [`MAX_POINTERS`] of them). `None` when the packet is cut short or a name
/// is malformed.
pub fn strict_end(packet: &[u8]) -> Option<usize> {
    let count = |i: usize| usize::from(u16::from_be_bytes([packet[i], packet[i + 1]]));
    if packet.len() < 12 {
        return None;
    }
    let (qd, records) = (count(4), count(6) + count(8) + count(10));
    let mut at = 12;
    for _ in 0..qd {
        at = name_end(packet, at)?.checked_add(4)?;
    }
    for _ in 0..records {
        at = name_end(packet, at)?;
        let fixed = packet.get(at..at.checked_add(10)?)?;
        let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        at = at.checked_add(10 + rdlength)?;
    }
    (at <= packet.len()).then_some(at)
}

/// Compression pointers followed in one name at most (a name has at most
/// 127 labels, each a pointer at worst).
const MAX_POINTERS: usize = 127;

/// Where the name starting at `start` ends in place; its labels, through
/// any pointers, must lie inside the packet and after the header.
fn name_end(packet: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *packet.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(end.unwrap_or(at + 1)),
            0x00 => at += 1 + usize::from(len),
            0xc0 => {
                let target = usize::from(u16::from_be_bytes([len & 0x3f, *packet.get(at + 1)?]));
                jumps += 1;
                // Into the header, forward, or onto itself: malformed.
                if target < 12 || target >= at || jumps > MAX_POINTERS {
                    return None;
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            // Extended label types (RFC 6891 retired them): malformed.
            _ => return None,
        }
    }
}

/// A header-only answer for a packet whose question could not be read.
fn bare(id: u16, opcode: u8, code: ResponseCode) -> Refusal {
    let mut m = Message::response(id, OpCode::from_u8(opcode));
    m.metadata.response_code = code;
    Refusal::Answer(encode(&m))
}

/// Encodes a message built here; an encoding failure (a name too long
/// after edits cannot happen: names come from decoded packets) yields a
/// SERVFAIL header.
pub fn encode(m: &Message) -> Vec<u8> {
    match m.to_vec() {
        Ok(v) => v,
        Err(_) => {
            let id = m.metadata.id.to_be_bytes();
            vec![id[0], id[1], 0x81, 0x82, 0, 0, 0, 0, 0, 0, 0, 0]
        }
    }
}

/// The name as policy text, if every label is a host-name label
/// (`[A-Za-z0-9_-]`, plus a leading `*` label).
pub fn normalise(name: &Name) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        let ok = !label.is_empty()
            && (label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
                || (i == 0 && label == b"*"));
        if !ok {
            return None;
        }
        if i > 0 {
            out.push('.');
        }
        out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    if out.is_empty() { None } else { Some(out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn rcode(v: &[u8]) -> u8 {
        v[3] & 0x0f
    }

    #[test]
    fn reads_a_plain_question() {
        let q = parse(&query("Api.Example.COM.", RecordType::AAAA)).unwrap();
        assert_eq!(q.name.as_deref(), Some("api.example.com"));
        assert_eq!(q.qtype(), RecordType::AAAA);
        assert_eq!(q.udp_limit(), 512);
        assert!(q.recursion_desired);
    }

    #[test]
    fn odd_names_are_kept_for_the_policy_to_deny() {
        let name =
            Name::from_labels(vec![b"a.b".to_vec(), b"example".to_vec(), b"com".to_vec()]).unwrap();
        let mut m = Message::query();
        m.add_query(Query::query(name, RecordType::A));
        let q = parse(&m.to_vec().unwrap()).unwrap();
        assert_eq!(q.name, None);
    }

    #[test]
    fn an_edns_version_above_0_gets_badvers_with_an_opt() {
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let Err(Refusal::Answer(a)) = parse(&m.to_vec().unwrap()) else {
            panic!("EDNS version 1 was accepted")
        };
        let reply = Message::from_vec(&a).unwrap();
        // 16 is BADVERS with an OPT (hickory names the code BADSIG too).
        assert_eq!(u16::from(reply.metadata.response_code), 16);
        assert_eq!(reply.edns.as_ref().map(Edns::version), Some(0));
        // Version 0 is served as before.
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        m.set_edns(Edns::new());
        assert!(parse(&m.to_vec().unwrap()).is_ok());
    }

    #[test]
    fn malformed_packets_are_dropped_or_formerr() {
        assert!(matches!(parse(&[]), Err(Refusal::Drop)));
        assert!(matches!(parse(&[0; 11]), Err(Refusal::Drop)));
        // A response is never answered.
        let mut resp = query("example.com.", RecordType::A);
        resp[2] |= 0x80;
        assert!(matches!(parse(&resp), Err(Refusal::Drop)));
        // Counts that lie: two questions promised, one present.
        let mut lying = query("example.com.", RecordType::A);
        lying[5] = 2;
        let Err(Refusal::Answer(a)) = parse(&lying) else {
            panic!("lying count")
        };
        assert_eq!(rcode(&a), 1);
        assert_eq!(&a[..2], &lying[..2]);
        // A compression pointer to itself.
        let mut looped = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let Err(Refusal::Answer(a)) = parse(&looped) else {
            panic!("pointer loop")
        };
        assert_eq!(rcode(&a), 1);
        // A label of 64 octets.
        let mut long = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64];
        long.extend_from_slice(&[b'a'; 64]);
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(parse(&long), Err(Refusal::Answer(a)) if rcode(&a) == 1));
        // A name over 255 octets: five labels of 63.
        let mut huge = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            huge.push(63);
            huge.extend_from_slice(&[b'a'; 63]);
        }
        huge.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(parse(&huge), Err(Refusal::Answer(a)) if rcode(&a) == 1));
        // Truncated after the header.
        let short = &query("example.com.", RecordType::A)[..15];
        assert!(matches!(parse(short), Err(Refusal::Answer(a)) if rcode(&a) == 1));
    }

    #[test]
    fn transfers_and_other_classes_are_refused() {
        let Err(Refusal::Answer(a)) = parse(&query("example.com.", RecordType::AXFR)) else {
            panic!("axfr")
        };
        assert_eq!(rcode(&a), 5);
        let mut chaos = Message::query();
        let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        chaos.add_query(q);
        let Err(Refusal::Answer(a)) = parse(&chaos.to_vec().unwrap()) else {
            panic!("chaos")
        };
        assert_eq!(rcode(&a), 4);
    }
}
