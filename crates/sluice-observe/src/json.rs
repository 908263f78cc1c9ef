//! The flow record's JSON, written by hand: [`write_record`] appends the
//! same bytes `serde_json::to_writer` writes for the serde derive on
//! [`FlowRecord`] (field names, order, `null`s, escaping), without the
//! serializer's per-field machinery.
//!
//! Why not serde: every record of every listener is encoded once on the
//! record path, and for NetFlow (thirty records a datagram, hundreds of
//! thousands a second) serde's encoding was 19 % of the collector's CPU
//! (perf, bench/netflow.sh at 300,000 offered IPFIX flows/s). The serde
//! derive stays the one definition of the format: reading records back
//! uses it, and `tests/record.rs` compares this writer's output with
//! serde_json's, byte for byte, over many random records, so the two
//! cannot drift apart. A new field is added in both places (the test
//! fails until it is).

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use crate::{FlowRecord, record::Finding};

/// Appends `r` as one JSON object, no newline.
pub(crate) fn write_record(r: &FlowRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":");
    string(out, &r.ts);
    out.extend_from_slice(b",\"start\":");
    string(out, &r.start);
    out.extend_from_slice(b",\"duration_ms\":");
    u64_text(out, r.duration_ms);
    out.extend_from_slice(b",\"id\":");
    string(out, r.id());
    out.extend_from_slice(b",\"listener\":\"");
    out.extend_from_slice(r.listener.as_str().as_bytes());
    out.extend_from_slice(b"\",\"protocol\":\"");
    out.extend_from_slice(r.protocol.as_str().as_bytes());
    out.extend_from_slice(b"\",\"src\":\"");
    socket_addr(out, r.src);
    out.extend_from_slice(b"\",\"user\":");
    opt_string(out, r.user.as_deref());
    out.extend_from_slice(b",\"zone\":");
    opt_string(out, r.zone.as_deref());
    out.extend_from_slice(b",\"mode\":");
    opt_plain(out, r.mode.map(sluice_policy::Mode::as_str));
    out.extend_from_slice(b",\"dst_host\":");
    opt_string(out, r.dst_host.as_deref());
    out.extend_from_slice(b",\"dst_ip\":");
    match r.dst_ip {
        Some(ip) => {
            out.push(b'"');
            ip_addr(out, ip);
            out.push(b'"');
        }
        None => null(out),
    }
    out.extend_from_slice(b",\"dst_port\":");
    opt_u64(out, r.dst_port.map(u64::from));
    out.extend_from_slice(b",\"sni\":");
    opt_string(out, r.sni.as_deref());
    out.extend_from_slice(b",\"original_dst\":");
    opt_string(out, r.original_dst.as_deref());
    out.extend_from_slice(b",\"grant\":");
    opt_string(out, r.grant.as_deref());
    out.extend_from_slice(b",\"method\":");
    opt_string(out, r.method.as_deref());
    out.extend_from_slice(b",\"status\":");
    opt_u64(out, r.status.map(u64::from));
    out.extend_from_slice(b",\"qtype\":");
    opt_string(out, r.qtype.as_deref());
    out.extend_from_slice(b",\"answers\":");
    opt_array(out, r.answers.as_deref(), |out, a| string(out, a));
    out.extend_from_slice(b",\"verdict\":\"");
    out.extend_from_slice(r.verdict.as_str().as_bytes());
    out.extend_from_slice(b"\",\"enforced\":");
    bool_text(out, r.enforced);
    out.extend_from_slice(b",\"rule\":");
    string(out, &r.rule);
    out.extend_from_slice(b",\"reason\":");
    string(out, &r.reason);
    out.extend_from_slice(b",\"bytes_out\":");
    u64_text(out, r.bytes_out);
    out.extend_from_slice(b",\"bytes_in\":");
    u64_text(out, r.bytes_in);
    out.extend_from_slice(b",\"route\":");
    opt_string(out, r.route.as_deref());
    out.extend_from_slice(b",\"policy_hash\":");
    string(out, &r.policy_hash);
    out.extend_from_slice(b",\"error\":");
    opt_string(out, r.error.as_deref());
    out.extend_from_slice(b",\"error_kind\":");
    opt_plain(out, r.error_kind.map(crate::ErrorKind::as_str));
    out.extend_from_slice(b",\"interim\":");
    opt_bool(out, r.interim);
    out.extend_from_slice(b",\"country\":");
    opt_string(out, r.country.as_deref());
    out.extend_from_slice(b",\"tls\":");
    opt_bool(out, r.tls);
    out.extend_from_slice(b",\"intercepted\":");
    opt_bool(out, r.intercepted);
    out.extend_from_slice(b",\"findings\":");
    opt_array(out, r.findings.as_deref(), finding);
    out.extend_from_slice(b",\"exporter\":");
    opt_string(out, r.exporter.as_deref());
    out.extend_from_slice(b",\"packets\":");
    opt_u64(out, r.packets);
    out.push(b'}');
}

/// `[item,…]` with each item written by `each`, or `null`.
fn opt_array<T>(out: &mut Vec<u8>, items: Option<&[T]>, each: impl Fn(&mut Vec<u8>, &T)) {
    let Some(items) = items else {
        return null(out);
    };
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.push(b']');
}

fn finding(out: &mut Vec<u8>, f: &Finding) {
    out.extend_from_slice(b"{\"type\":");
    string(out, &f.kind);
    out.extend_from_slice(b",\"count\":");
    u64_text(out, f.count);
    out.extend_from_slice(b",\"hash\":");
    string(out, &f.hash);
    out.push(b'}');
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

fn bool_text(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn opt_bool(out: &mut Vec<u8>, b: Option<bool>) {
    match b {
        Some(b) => bool_text(out, b),
        None => null(out),
    }
}

fn opt_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => u64_text(out, n),
        None => null(out),
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => null(out),
    }
}

/// A string known to need no escaping (an enum's name).
fn opt_plain(out: &mut Vec<u8>, s: Option<&'static str>) {
    match s {
        Some(s) => {
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        None => null(out),
    }
}

/// `n` in decimal, as serde_json (itoa) writes it. Digit by digit with
/// `push`: a short `extend_from_slice` is a call to memmove, which was
/// 2.6 % of NetFlow ingest for the ports, octets and counts (perf).
pub(crate) fn u64_text(out: &mut Vec<u8>, mut n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for &d in &buf[i..] {
        out.push(d);
    }
}

fn ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        u64_text(out, u64::from(o));
    }
}

/// An address as its `Display` writes it (which never needs escaping).
fn ip_addr(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => ipv4(out, v4),
        // Writing to a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip:port` (`[v6%scope]:port`) as `Display` writes it.
fn socket_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            ipv4(out, *v4.ip());
            out.push(b':');
            u64_text(out, u64::from(v4.port()));
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Which bytes serde_json escapes and how: `"`, `\` and the control
/// characters below 0x20 (short forms for \b \t \n \f \r, `\u00XX`
/// otherwise); everything else, DEL and non-ASCII UTF-8 included, is
/// written as it is.
const fn escape(b: u8) -> u8 {
    match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x09 => b't',
        0x0A => b'n',
        0x0C => b'f',
        0x0D => b'r',
        0x00..=0x1F => b'u',
        _ => 0,
    }
}

const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = escape(i as u8);
        i += 1;
    }
    t
};

/// `s` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none needs escaping: a record is
        // ~700 bytes, nearly all of them plain text.
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            if !needs_escape(u64::from_le_bytes(w)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let e = ESCAPE[usize::from(b)];
        if e != 0 {
            out.extend_from_slice(&bytes[start..i]);
            out.push(b'\\');
            out.push(e);
            if e == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xF)]);
            }
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `w` is below 0x20, `"` or `\`
/// (exact: the "has less than" and "has zero byte" tests of Hacker's
/// Delight, which may misplace the byte but never miss or invent one).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}
