//! Strict parsing of client packets: bytes after the message and
//! compression pointers into the header get FORMERR (a bare header that
//! echoes the id and carries no question), never an answer to a question
//! guessed from the header. The fuzz target's seed corpus
//! (`fuzz/seeds/dns`) is run here too, so `cargo test` covers the shapes
//! the fuzzer starts from.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use proptest::prelude::*;
use sluice_dns::query::{self, Refusal, strict_end};

fn query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// Asserts `packet` got a bare FORMERR for its id: no question echoed.
fn assert_formerr(packet: &[u8], what: &str) {
    match query::parse(packet) {
        Err(Refusal::Answer(a)) => {
            assert_eq!(&a[..2], &packet[..2], "{what}: id echoed");
            assert_eq!(a[3] & 0x0f, 1, "{what}: FORMERR");
            assert_eq!(&a[4..12], &[0; 8], "{what}: no question, no records");
            assert_eq!(a.len(), 12, "{what}: header only");
        }
        Err(Refusal::Drop) => panic!("{what}: dropped, want FORMERR"),
        Ok(q) => panic!("{what}: answered as a question for {:?}", q.query),
    }
}

#[test]
fn trailing_bytes_get_formerr() {
    let q = query("app.example.com.", RecordType::A, 0x1234);
    assert!(query::parse(&q).is_ok());
    assert_eq!(strict_end(&q), Some(q.len()));
    let mut one = q.clone();
    one.push(0);
    assert_formerr(&one, "one trailing zero");
    let mut two = q.clone();
    two.extend_from_slice(&q);
    assert_formerr(&two, "a second query after the first");
}

#[test]
fn pointers_into_the_header_get_formerr() {
    let header = |qd: u8, ar: u8| vec![0x12, 0x34, 0x01, 0, 0, qd, 0, 0, 0, 0, 0, ar];
    for target in 0..12u8 {
        let mut p = header(1, 0);
        p.extend_from_slice(&[0xc0, target, 0, 1, 0, 1]);
        assert_formerr(&p, &format!("question name -> offset {target}"));
        // A label first, then the pointer.
        let mut p = header(1, 0);
        p.extend_from_slice(&[3, b'w', b'w', b'w', 0xc0, target, 0, 1, 0, 1]);
        assert_formerr(&p, &format!("www + pointer -> offset {target}"));
    }
    // A record whose owner points into the header.
    let mut p = header(1, 1);
    p.extend_from_slice(&[1, b'a', 7]);
    p.extend_from_slice(b"example");
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    p.extend_from_slice(&[0xc0, 2, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
    assert_formerr(&p, "additional owner -> offset 2");
    // A pointer to the question name is fine.
    let mut ok = header(1, 1);
    ok.extend_from_slice(&[1, b'a', 7]);
    ok.extend_from_slice(b"example");
    ok.extend_from_slice(&[0, 0, 1, 0, 1]);
    ok.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
    assert_eq!(strict_end(&ok), Some(ok.len()));
    assert!(query::parse(&ok).is_ok());
}

#[test]
fn the_fuzz_seed_corpus_parses_as_its_names_say() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/dns");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(&path).unwrap();
        if name.starts_with("formerr-") {
            assert_formerr(&bytes, &name);
        } else if name.starts_with("ok-") {
            assert!(query::parse(&bytes).is_ok(), "{name}");
        }
        seen += 1;
    }
    assert!(seen >= 8, "{seen} seeds in {dir}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any well-formed query followed by any bytes: FORMERR, never a question.
    #[test]
    fn any_trailing_bytes_get_formerr(
        labels in proptest::collection::vec("[a-z0-9]{1,20}", 1..5),
        qtype in prop::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::TXT, RecordType::MX]),
        id in any::<u16>(),
        tail in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut q = query(&format!("{}.", labels.join(".")), qtype, id);
        prop_assert!(query::parse(&q).is_ok());
        q.extend_from_slice(&tail);
        assert_formerr(&q, "trailing bytes");
    }

    /// Any bytes at all: no panic, and a question only from a packet that
    /// ends where its message ends.
    #[test]
    fn a_question_only_from_an_exact_message(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if query::parse(&bytes).is_ok() {
            prop_assert_eq!(strict_end(&bytes), Some(bytes.len()));
        }
    }
}
