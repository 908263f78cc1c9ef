//! Bytes → the SOCKS5 handshake parsers (`parse_greeting`, `parse_auth`,
//! `parse_request`), chained as a server reads them: greeting, then (when
//! the first byte of the input says so) credentials, then the request.
//! Invariants: no panic; a complete message uses between 1 and
//! `MAX_MESSAGE` bytes of the input; a message reported incomplete is
//! shorter than `MAX_MESSAGE` (so the server's buffer stays bounded); a
//! complete message's prefixes are all incomplete; a domain is never empty.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_net::socks5::{
    Address, MAX_MESSAGE, Parsed, USER_PASS, parse_auth, parse_greeting, parse_request,
};

fn check<T: std::fmt::Debug>(parse: fn(&[u8]) -> Parsed<T>, data: &[u8]) -> Option<usize> {
    match parse(data) {
        Ok(Some((_, used))) => {
            assert!(used >= 1 && used <= MAX_MESSAGE && used <= data.len(), "{used}");
            for cut in 0..used {
                assert!(matches!(parse(&data[..cut]), Ok(None)), "prefix {cut} of {used}");
            }
            Some(used)
        }
        Ok(None) => {
            assert!(data.len() < MAX_MESSAGE, "incomplete after {} bytes", data.len());
            None
        }
        Err(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    // Each parser alone.
    check(parse_greeting, data);
    check(parse_auth, data);
    if let Ok(Some((r, _))) = parse_request(data) {
        if let Address::Domain(d) = &r.address {
            assert!(!d.is_empty() && d.len() <= 255);
        }
    }
    check(parse_request, data);

    // As a session: the first byte chooses whether credentials follow.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some(used) = check(parse_greeting, rest) else {
        return;
    };
    let mut rest = &rest[used..];
    if mode == USER_PASS {
        let Some(used) = check(parse_auth, rest) else {
            return;
        };
        rest = &rest[used..];
    }
    check(parse_request, rest);
});
