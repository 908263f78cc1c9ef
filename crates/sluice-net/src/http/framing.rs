//! Request heads as the client wrote them, scanned for the one framing
//! shape hyper hides: a head with both `Content-Length` and
//! `Transfer-Encoding`. hyper's parser drops the length (RFC 9112 §6.3
//! allows a recipient to) before the service sees the request; a gateway
//! refuses the shape instead ("ought to be handled as an error": it is the
//! classic smuggling one). Pure: bytes in, one verdict per head out; the
//! client socket's wrapper (`crate::timed::Timed`) feeds it what it reads.
//!
//! The scanner follows the stream: a head, then a body it skips by its
//! `Content-Length`, then the next head (pipelined requests). A chunked
//! body is not followed; the scanner waits for [`HeadScan::resync`] (the
//! request was answered) and reads on from there. Constant memory.
//! Public for the fuzz target (`fuzz/fuzz_targets/head_scan.rs`).

/// The longest header name the scanner compares (`transfer-encoding`).
const NAME_MAX: usize = 17;

/// The scanner's state between reads.
#[derive(Debug)]
pub struct HeadScan {
    mode: Mode,
    /// The request line of the current head was seen.
    request_line: bool,
    /// The current line has no byte but `\r` so far.
    line_empty: bool,
    /// The current header's name, lower-cased (its first `NAME_MAX` bytes).
    name: [u8; NAME_MAX],
    name_len: usize,
    /// The name ran past `NAME_MAX` (so it is neither name of interest).
    name_long: bool,
    /// The `:` was seen: the rest of the line is the value.
    in_value: bool,
    /// The current line is a `Content-Length` line: its value so far
    /// (`None`: not a plain number).
    value: Option<u64>,
    /// What this head had so far.
    length: Length,
    chunked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading a head.
    Head,
    /// Skipping this many body bytes.
    Skip(u64),
    /// In a body the scanner cannot follow, until `resync`.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    None,
    Is(u64),
    Invalid,
}

/// What one head had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Both `Content-Length` and `Transfer-Encoding`.
    pub both_lengths: bool,
}

impl Default for HeadScan {
    fn default() -> HeadScan {
        HeadScan {
            mode: Mode::Head,
            request_line: false,
            line_empty: true,
            name: [0; NAME_MAX],
            name_len: 0,
            name_long: false,
            in_value: false,
            value: None,
            length: Length::None,
            chunked: false,
        }
    }
}

impl HeadScan {
    /// Scans `bytes`, calling `head` at the end of each head.
    pub fn feed(&mut self, mut bytes: &[u8], mut head: impl FnMut(Head)) {
        while !bytes.is_empty() {
            match self.mode {
                Mode::Lost => return,
                Mode::Skip(n) => {
                    let k = n.min(bytes.len() as u64);
                    bytes = &bytes[k as usize..];
                    self.mode = if n == k {
                        Mode::Head
                    } else {
                        Mode::Skip(n - k)
                    };
                }
                Mode::Head => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if let Some(h) = self.byte(b) {
                        head(h);
                    }
                }
            }
        }
    }

    /// The request before was answered: what comes next is a head.
    pub fn resync(&mut self) {
        if self.mode == Mode::Lost {
            *self = HeadScan::default();
        }
    }

    fn byte(&mut self, b: u8) -> Option<Head> {
        if b == b'\n' {
            return self.end_of_line();
        }
        if b == b'\r' {
            return None;
        }
        self.line_empty = false;
        if !self.request_line {
            return None;
        }
        if !self.in_value {
            if b == b':' {
                self.in_value = true;
                self.value = (self.is_name(b"content-length")).then_some(0);
            } else if self.name_len < NAME_MAX {
                self.name[self.name_len] = b.to_ascii_lowercase();
                self.name_len += 1;
            } else {
                self.name_long = true;
            }
        } else if self.is_name(b"content-length") {
            self.value = match (self.value, b) {
                (_, b' ' | b'\t') => self.value,
                (Some(v), b'0'..=b'9') => v
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0'))),
                _ => None,
            };
        }
        None
    }

    fn is_name(&self, want: &[u8]) -> bool {
        !self.name_long && &self.name[..self.name_len] == want
    }

    fn end_of_line(&mut self) -> Option<Head> {
        let empty = self.line_empty;
        let header = self.request_line && !empty;
        if header && self.in_value {
            if self.is_name(b"content-length") {
                self.length = match (self.length, self.value) {
                    (Length::None, Some(v)) => Length::Is(v),
                    (Length::Is(a), Some(v)) if a == v => Length::Is(a),
                    _ => Length::Invalid,
                };
            } else if self.is_name(b"transfer-encoding") {
                self.chunked = true;
            }
        }
        if !self.request_line {
            // Empty lines before a request line are skipped (RFC 9112 §2.2).
            self.request_line = !empty;
            self.next_line();
            return None;
        }
        if !empty {
            self.next_line();
            return None;
        }
        let both_lengths = self.length != Length::None && self.chunked;
        self.mode = match (self.length, self.chunked) {
            (Length::None, false) | (Length::Is(0), false) => Mode::Head,
            (Length::Is(n), false) => Mode::Skip(n),
            _ => Mode::Lost,
        };
        let mode = self.mode;
        *self = HeadScan::default();
        self.mode = mode;
        Some(Head { both_lengths })
    }

    fn next_line(&mut self) {
        self.line_empty = true;
        self.name_len = 0;
        self.name_long = false;
        self.in_value = false;
        self.value = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdicts for `input` fed in pieces of `step` bytes.
    fn scan(input: &[u8], step: usize) -> Vec<bool> {
        let mut s = HeadScan::default();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            s.feed(piece, |h| out.push(h.both_lengths));
        }
        out
    }

    #[test]
    fn both_lengths_in_either_order_and_any_case_are_seen_in_any_split() {
        let cases: &[&[u8]] = &[
            b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST http://a/ HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH:60\r\n\r\n",
            b"POST http://a/ HTTP/1.1\nContent-Length: x\nTransfer-Encoding: chunked\n\n",
        ];
        for c in cases {
            for step in [1, 3, c.len()] {
                assert_eq!(scan(c, step), [true], "{}", String::from_utf8_lossy(c));
            }
        }
    }

    #[test]
    fn pipelined_heads_are_followed_past_bodies_of_known_length() {
        // The second request's body looks like a head with both lengths:
        // skipped by its length, it is not read as one.
        let body = "Transfer-Encoding: x\r\nContent-Length: 1\r\n\r\n";
        let input = format!(
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n\
             POST http://a/ HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}\
             POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            body.len()
        );
        for step in [1, 7, input.len()] {
            assert_eq!(scan(input.as_bytes(), step), [false, false, true]);
        }
    }

    #[test]
    fn a_chunked_body_is_skipped_until_resync() {
        let mut s = HeadScan::default();
        let mut out = Vec::new();
        s.feed(
            b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n",
            |h| out.push(h.both_lengths),
        );
        s.feed(
            b"a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            |h| out.push(h.both_lengths),
        );
        assert_eq!(out, [false]);
        s.resync();
        s.feed(
            b"GET http://a/ HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            |h| out.push(h.both_lengths),
        );
        assert_eq!(out, [false, true]);
    }

    /// The fuzz target's invariant over deterministic pseudo-random inputs
    /// built from head fragments: the verdicts do not depend on the split.
    #[test]
    fn verdicts_do_not_depend_on_how_reads_split_the_bytes() {
        const PARTS: &[&[u8]] = &[
            b"POST http://a/ HTTP/1.1\r\n",
            b"Content-Length: 3\r\n",
            b"content-length:0\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\r\n",
            b"\n",
            b"abc",
            b"Host: a\r\n",
            b"Content-Length: 99999999999999999999\r\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..(x % 12) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                input.extend_from_slice(PARTS[(x % PARTS.len() as u64) as usize]);
            }
            let whole = scan(&input, input.len().max(1));
            for step in [1, 2, 5] {
                assert_eq!(
                    scan(&input, step),
                    whole,
                    "{}",
                    String::from_utf8_lossy(&input)
                );
            }
            x = x.wrapping_add(1);
        }
    }

    #[test]
    fn long_or_similar_names_are_not_lengths() {
        let input = b"GET http://a/ HTTP/1.1\r\nX-Content-Length: 5\r\n\
            Transfer-Encoding-Extra-Long-Name: chunked\r\nContent-Lengths: 1\r\n\r\n";
        assert_eq!(scan(input, 2), [false]);
    }
}
