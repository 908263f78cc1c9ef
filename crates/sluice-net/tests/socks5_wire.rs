//! The SOCKS5 wire layer, pure: parsers, the method choice and replies
//! (moved here from the in-file test module of `socks5`).

#![allow(clippy::unwrap_used)]

use std::{io, net::Ipv6Addr, time::Duration};

use sluice_net::{Refusal, socks5::*};
use sluice_policy::Policy;

#[test]
fn greeting() {
    assert_eq!(parse_greeting(&[]), Ok(None));
    assert_eq!(parse_greeting(&[5]), Ok(None));
    assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
    assert_eq!(
        parse_greeting(&[5, 2, 0, 2, 9]),
        Ok(Some((
            Greeting {
                no_auth: true,
                user_pass: true
            },
            4
        )))
    );
    assert_eq!(
        parse_greeting(&[5, 1, 1]),
        Ok(Some((Greeting::default(), 3)))
    );
    assert_eq!(parse_greeting(&[4, 1, 0]), Err(Malformed::Version(4)));
    assert_eq!(
        parse_greeting(b"GET / HTTP/1.1"),
        Err(Malformed::Version(b'G'))
    );
    assert_eq!(parse_greeting(&[5, 0]), Err(Malformed::NoMethods));
    // 255 methods: the longest greeting.
    let mut long = vec![5, 255];
    long.extend(0..=254u8);
    assert_eq!(parse_greeting(&long).unwrap().unwrap().1, 257);
}

#[test]
fn credentials() {
    let msg = [1, 2, b'c', b'i', 3, b'p', b'w', b'd', 0xAA];
    let (c, n) = parse_auth(&msg).unwrap().unwrap();
    assert_eq!(
        (c.user.as_slice(), c.pass.as_slice(), n),
        (&b"ci"[..], &b"pwd"[..], 8)
    );
    assert!(!format!("{c:?}").contains("pwd"));
    for cut in 0..8 {
        assert_eq!(parse_auth(&msg[..cut]), Ok(None), "prefix {cut}");
    }
    assert_eq!(parse_auth(&[5, 1, 0]), Err(Malformed::AuthVersion(5)));
    // Empty name and password parse (and then fail verification).
    assert_eq!(parse_auth(&[1, 0, 0]).unwrap().unwrap().1, 3);
}

#[test]
fn requests() {
    let v4 = [5, 1, 0, 1, 93, 184, 216, 34, 1, 187];
    assert_eq!(
        parse_request(&v4),
        Ok(Some((
            SocksRequest {
                command: Command::Connect,
                address: Address::Ip("93.184.216.34".parse().unwrap()),
                port: 443
            },
            10
        )))
    );
    let mut v6 = vec![5, 1, 0, 4];
    v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    v6.extend_from_slice(&[0, 80]);
    let (r, n) = parse_request(&v6).unwrap().unwrap();
    assert_eq!(
        (r.address, r.port, n),
        (Address::Ip("2001:db8::1".parse().unwrap()), 80, 22)
    );
    let mut name = vec![5, 3, 0, 3, 11];
    name.extend_from_slice(b"example.com");
    name.extend_from_slice(&[0x1f, 0x90]);
    let (r, n) = parse_request(&name).unwrap().unwrap();
    assert_eq!(r.command, Command::UdpAssociate);
    assert_eq!(
        (r.address, r.port, n),
        (Address::Domain(b"example.com".to_vec()), 8080, 18)
    );
    for msg in [&v4[..], &v6, &name] {
        for cut in 0..msg.len() {
            assert_eq!(
                parse_request(&msg[..cut]),
                Ok(None),
                "prefix {cut} of {msg:?}"
            );
        }
    }
    assert_eq!(
        parse_request(&[5, 1, 0, 3, 0, 0, 80]),
        Err(Malformed::EmptyDomain)
    );
    assert_eq!(
        parse_request(&[5, 1, 0, 2, 1]),
        Err(Malformed::AddressType(2))
    );
    assert_eq!(parse_request(&[4, 1, 0, 1]), Err(Malformed::Version(4)));
    assert_eq!(
        parse_request(&[5, 2, 0, 1, 1, 2, 3, 4, 0, 1])
            .unwrap()
            .unwrap()
            .0
            .command,
        Command::Bind
    );
    assert_eq!(
        parse_request(&[5, 9, 0, 1, 1, 2, 3, 4, 0, 1])
            .unwrap()
            .unwrap()
            .0
            .command,
        Command::Other(9)
    );
}

#[test]
fn method_choice() {
    let g = |no_auth, user_pass| Greeting { no_auth, user_pass };
    // (offered, user zones, zone without user) → answer
    let table = [
        (g(true, false), false, true, NO_AUTH),
        (g(true, false), false, false, NO_AUTH), // denied later: default/no-zone
        (g(true, true), false, true, NO_AUTH),
        (g(true, true), true, true, USER_PASS),
        (g(true, false), true, true, NO_AUTH),
        (g(true, false), true, false, NO_ACCEPTABLE),
        (g(false, true), true, false, USER_PASS),
        (g(false, true), false, true, USER_PASS),
        (g(false, false), false, true, NO_ACCEPTABLE),
    ];
    for (offered, uz, zw, want) in table {
        assert_eq!(
            choose_method(offered, uz, zw),
            want,
            "{offered:?} {uz} {zw}"
        );
    }
}

#[test]
fn replies() {
    assert_eq!(
        encode_reply(Reply::Succeeded, "10.1.2.3:4660".parse().unwrap()),
        [5, 0, 0, 1, 10, 1, 2, 3, 0x12, 0x34]
    );
    let r = encode_reply(Reply::NotAllowed, "[::1]:1".parse().unwrap());
    assert_eq!((r.len(), r[1], r[3], r[19], r[21]), (22, 2, 4, 1, 1));
    let d = || {
        Box::new(
            Policy::load("zones: []\n", "t")
                .unwrap()
                .invalid_destination("127.0.0.1".parse().unwrap(), None, String::new()),
        )
    };
    let connect = |kind| Refusal::Connect {
        addr: "192.0.2.1:1".parse().unwrap(),
        msg: String::new(),
        kind,
    };
    let table = [
        (
            Refusal::Resolve {
                host: "x".into(),
                msg: String::new(),
            },
            4,
        ),
        (Refusal::Denied(d()), 2),
        (Refusal::Timeout(Duration::from_secs(1)), 6),
        (connect(io::ErrorKind::ConnectionRefused), 5),
        (connect(io::ErrorKind::HostUnreachable), 4),
        (connect(io::ErrorKind::NetworkUnreachable), 3),
        (connect(io::ErrorKind::PermissionDenied), 1),
        (Refusal::InvalidDestination("x".into()), 2),
        (
            Refusal::AuthFailed {
                user: Some("u".into()),
                retry_after: None,
            },
            2,
        ),
        (Refusal::Draining, 1),
    ];
    for (e, code) in table {
        assert_eq!(reply_for(&e).code(), code, "{e:?}");
    }
}
