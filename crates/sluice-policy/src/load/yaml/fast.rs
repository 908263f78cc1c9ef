//! A fast path for the YAML that large policies are written in: block
//! mappings and sequences, one-line flow lists and mappings, plain scalars
//! and quoted scalars without escapes, comments; ASCII only. It emits the
//! events saphyr-parser would, with the same marks, into the same
//! [`Builder`](super::Builder), and gives up ([`Bail`]) at the first
//! thing outside that subset — an anchor, a tag, a block scalar, a scalar
//! over several lines, an escape, a tab, an empty value, a syntax error —
//! so that saphyr-parser reads the whole file instead: every error, and
//! every document this path does not know, is still saphyr's.
//!
//! Why: saphyr-parser reads ~25 MB/s here (a 74 MB policy of 1,000,000
//! rules spent ~3 s in it, about half of `sluice check`); this path reads the
//! same file in a fraction of that (`bench/policy-scale.sh`, figures in
//! `bench/README.md`). The tests in `yaml.rs` check it against saphyr's
//! loader document by document.

use std::borrow::Cow;

use saphyr_parser::{Event, Marker, ScalarStyle, Span};

/// The document is outside the fast path's subset (or not valid YAML).
#[derive(Debug)]
pub(super) struct Bail;

type Step = Result<(), Bail>;

/// Reads `source` and hands every event to `emit`.
pub(super) fn parse<'s>(source: &'s str, emit: &mut dyn FnMut(Event<'s>, Span)) -> Step {
    if !source.is_ascii() || source.bytes().any(|b| b == b'\t' || b == b'\r') {
        return Err(Bail);
    }
    let mut p = Fast {
        src: source,
        b: source.as_bytes(),
        at: 0,
        line: 1,
        cur: Line {
            start: 0,
            indent: 0,
            content: 0,
            end: 0,
            number: 1,
        },
        emit,
    };
    let Some(first) = p.peek() else {
        return Err(Bail);
    };
    p.cur = first;
    if first.indent != 0 || starts_doc_marker(&p.b[first.content..]) {
        return Err(Bail);
    }
    let m = p.mark(first.content);
    p.event(Event::StreamStart, m);
    p.event(Event::DocumentStart(false), m);
    if p.b.get(first.content) == Some(&b'-') {
        p.block_seq(0)?;
    } else {
        p.block_map(0, None)?;
    }
    if p.peek().is_some() {
        return Err(Bail);
    }
    let end = p.mark(p.cur.start);
    p.event(Event::DocumentEnd, end);
    p.event(Event::StreamEnd, end);
    Ok(())
}

fn starts_doc_marker(rest: &[u8]) -> bool {
    rest.starts_with(b"---") || rest.starts_with(b"...") || rest.starts_with(b"%")
}

/// The next line with content: where it starts, its indent, where its
/// content starts and where it ends (before the newline).
#[derive(Clone, Copy)]
struct Line {
    start: usize,
    indent: usize,
    content: usize,
    end: usize,
    number: usize,
}

struct Fast<'s, 'e> {
    src: &'s str,
    b: &'s [u8],
    /// The start of the next unread line.
    at: usize,
    /// Its line number (1-based).
    line: usize,
    /// The line being read (marks are on it).
    cur: Line,
    emit: &'e mut dyn FnMut(Event<'s>, Span),
}

impl<'s> Fast<'s, '_> {
    /// The next line that is not blank or a comment, without consuming it
    /// (blank and comment lines before it are consumed).
    fn peek(&mut self) -> Option<Line> {
        while self.at < self.b.len() {
            let end = memchr(b'\n', &self.b[self.at..]).map_or(self.b.len(), |i| self.at + i);
            let mut c = self.at;
            while c < end && self.b[c] == b' ' {
                c += 1;
            }
            if c < end && self.b[c] != b'#' {
                return Some(Line {
                    start: self.at,
                    indent: c - self.at,
                    content: c,
                    end,
                    number: self.line,
                });
            }
            self.at = end + 1;
            self.line += 1;
        }
        None
    }

    fn consume(&mut self, l: Line) {
        self.at = l.end + 1;
        self.line = l.number + 1;
    }

    /// The marker of byte `i` on the line being read.
    fn mark(&self, i: usize) -> Marker {
        Marker::new(i, self.cur.number, i.saturating_sub(self.cur.start))
    }

    fn event(&mut self, ev: Event<'s>, m: Marker) {
        (self.emit)(ev, Span::new(m, m));
    }

    fn scalar(&mut self, style: ScalarStyle, from: usize, text: (usize, usize)) {
        let m = self.mark(from);
        let ev = Event::Scalar(Cow::Borrowed(&self.src[text.0..text.1]), style, 0, None);
        (self.emit)(ev, Span::new(m, m));
    }

    /// A block mapping whose keys are at column `indent`. `first` is the
    /// position of its first key when that sits after a `- ` on the
    /// current line (not yet consumed).
    fn block_map(&mut self, indent: usize, first: Option<usize>) -> Step {
        let mut key_at = match first {
            Some(k) => k,
            None => {
                self.cur = self.peek().ok_or(Bail)?;
                self.cur.content
            }
        };
        let m = self.mark(key_at);
        self.event(Event::MappingStart(0, None), m);
        loop {
            let l = self.peek().ok_or(Bail)?;
            self.cur = l;
            let colon = key_end(self.b, key_at, l.end).ok_or(Bail)?;
            self.scalar(ScalarStyle::Plain, key_at, (key_at, colon));
            let rest = skip_spaces(self.b, colon + 1, l.end);
            if rest == l.end || (self.b[rest] == b'#' && rest > colon + 1) {
                // The value is on the lines below, indented further.
                self.consume(l);
                let next = self.peek().ok_or(Bail)?;
                if next.indent <= indent {
                    return Err(Bail);
                }
                if self.b[next.content] == b'-' {
                    self.block_seq(next.indent)?;
                } else {
                    self.block_map(next.indent, None)?;
                }
            } else {
                self.inline_value(rest, l.end)?;
                self.consume(l);
            }
            match self.peek() {
                Some(n) if n.indent == indent => key_at = n.content,
                Some(n) if n.indent > indent => return Err(Bail),
                _ => break,
            }
        }
        // The end's mark is never read (a collection is never a key here).
        let m = self.mark(self.cur.start);
        self.event(Event::MappingEnd, m);
        Ok(())
    }

    /// A block sequence whose `-` are at column `indent`.
    fn block_seq(&mut self, indent: usize) -> Step {
        self.cur = self.peek().ok_or(Bail)?;
        let m = self.mark(self.cur.content);
        self.event(Event::SequenceStart(0, None), m);
        loop {
            let l = self.peek().ok_or(Bail)?;
            self.cur = l;
            if self.b[l.content] != b'-' || self.b.get(l.content + 1) != Some(&b' ') {
                return Err(Bail);
            }
            let item = skip_spaces(self.b, l.content + 1, l.end);
            if item == l.end || matches!(self.b[item], b'#' | b'-') {
                return Err(Bail);
            }
            if key_end(self.b, item, l.end).is_some() {
                self.block_map(item - l.start, Some(item))?;
            } else {
                self.inline_value(item, l.end)?;
                self.consume(l);
            }
            match self.peek() {
                Some(n) if n.indent == indent && self.b[n.content] == b'-' => {}
                Some(n) if n.indent >= indent => return Err(Bail),
                _ => break,
            }
        }
        let m = self.mark(self.cur.start);
        self.event(Event::SequenceEnd, m);
        Ok(())
    }

    /// A value that starts at `i` and fills the rest of the line (up to a
    /// comment).
    fn inline_value(&mut self, i: usize, end: usize) -> Step {
        let after = match self.b[i] {
            b'"' | b'\'' => self.quoted(i, end)?,
            b'[' => self.flow_seq(i, end)?,
            b'{' => self.flow_map(i, end)?,
            _ => {
                let stop = find_comment(self.b, i, end);
                let mut last = stop;
                while last > i && self.b[last - 1] == b' ' {
                    last -= 1;
                }
                if !plain_block(&self.b[i..last]) {
                    return Err(Bail);
                }
                self.scalar(ScalarStyle::Plain, i, (i, last));
                return Ok(());
            }
        };
        let rest = skip_spaces(self.b, after, end);
        if rest == end || (self.b[rest] == b'#' && rest > after) {
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// A quoted scalar without escapes on one line; the index after it.
    fn quoted(&mut self, i: usize, end: usize) -> Result<usize, Bail> {
        let q = self.b[i];
        let close = i + 1 + memchr(q, &self.b[i + 1..end]).ok_or(Bail)?;
        let body = &self.b[i + 1..close];
        if q == b'"' && body.contains(&b'\\') || q == b'\'' && self.b.get(close + 1) == Some(&b'\'')
        {
            return Err(Bail);
        }
        let style = if q == b'"' {
            ScalarStyle::DoubleQuoted
        } else {
            ScalarStyle::SingleQuoted
        };
        self.scalar(style, i, (i + 1, close));
        Ok(close + 1)
    }

    /// `[a, "b", 3]` on one line; the index after `]`.
    fn flow_seq(&mut self, i: usize, end: usize) -> Result<usize, Bail> {
        let m = self.mark(i);
        self.event(Event::SequenceStart(0, None), m);
        let mut j = skip_spaces(self.b, i + 1, end);
        if self.b.get(j) != Some(&b']') {
            loop {
                j = self.flow_item(j, end, b']')?;
                j = skip_spaces(self.b, j, end);
                match self.b.get(j).filter(|_| j < end) {
                    Some(b',') => j = skip_spaces(self.b, j + 1, end),
                    Some(b']') => break,
                    _ => return Err(Bail),
                }
                if j >= end || self.b[j] == b']' {
                    return Err(Bail);
                }
            }
        }
        let m = self.mark(j);
        self.event(Event::SequenceEnd, m);
        Ok(j + 1)
    }

    /// `{a: b, c: [d]}` on one line; the index after `}`.
    fn flow_map(&mut self, i: usize, end: usize) -> Result<usize, Bail> {
        let m = self.mark(i);
        self.event(Event::MappingStart(0, None), m);
        let mut j = skip_spaces(self.b, i + 1, end);
        if self.b.get(j) != Some(&b'}') {
            loop {
                let colon = key_end(self.b, j, end).ok_or(Bail)?;
                if colon + 1 >= end {
                    return Err(Bail);
                }
                self.scalar(ScalarStyle::Plain, j, (j, colon));
                j = skip_spaces(self.b, colon + 1, end);
                j = match self.b.get(j).filter(|_| j < end) {
                    Some(b'[') => self.flow_seq(j, end)?,
                    Some(_) => self.flow_item(j, end, b'}')?,
                    None => return Err(Bail),
                };
                j = skip_spaces(self.b, j, end);
                match self.b.get(j).filter(|_| j < end) {
                    Some(b',') => j = skip_spaces(self.b, j + 1, end),
                    Some(b'}') => break,
                    _ => return Err(Bail),
                }
                if j >= end || self.b[j] == b'}' {
                    return Err(Bail);
                }
            }
        }
        let m = self.mark(j);
        self.event(Event::MappingEnd, m);
        Ok(j + 1)
    }

    /// A scalar item of a flow collection closed by `close`; the index
    /// after it.
    fn flow_item(&mut self, j: usize, end: usize, close: u8) -> Result<usize, Bail> {
        match self.b.get(j).filter(|_| j < end) {
            Some(b'"' | b'\'') => self.quoted(j, end),
            Some(_) => {
                let mut k = j;
                while k < end && !matches!(self.b[k], b',' | b']' | b'}') {
                    k += 1;
                }
                if k == end || self.b[k] != close && self.b[k] != b',' {
                    return Err(Bail);
                }
                let mut last = k;
                while last > j && self.b[last - 1] == b' ' {
                    last -= 1;
                }
                if !plain_flow(&self.b[j..last]) {
                    return Err(Bail);
                }
                self.scalar(ScalarStyle::Plain, j, (j, last));
                Ok(last)
            }
            None => Err(Bail),
        }
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&c| c == needle)
}

fn skip_spaces(b: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && b[i] == b' ' {
        i += 1;
    }
    i
}

/// If a simple key (`[A-Za-z0-9_-]+`) followed by `:` and a space or the
/// line's end starts at `i`, the index of the `:`. Keys of more than 1000
/// bytes are left to saphyr-parser (YAML caps a simple key at 1024
/// characters, and it reports longer ones).
fn key_end(b: &[u8], i: usize, end: usize) -> Option<usize> {
    let mut k = i;
    while k < end && (b[k].is_ascii_alphanumeric() || b[k] == b'_' || b[k] == b'-') {
        k += 1;
    }
    let ok = k > i
        && k - i <= 1000
        && b[i] != b'-'
        && k < end
        && b[k] == b':'
        && (k + 1 == end || b[k + 1] == b' ');
    ok.then_some(k)
}

/// Where a comment (` #`) starts in `b[i..end]`, or `end`.
fn find_comment(b: &[u8], i: usize, end: usize) -> usize {
    (i + 1..end)
        .find(|&k| b[k] == b'#' && b[k - 1] == b' ')
        .unwrap_or(end)
}

/// A plain scalar this path reads the same as YAML does, in block context:
/// it starts with a letter, digit or one of `/._$~+`, and holds no
/// indicator that could make it something else.
fn plain_block(s: &[u8]) -> bool {
    let Some(&first) = s.first() else {
        return false;
    };
    (first.is_ascii_alphanumeric() || b"/._$~+".contains(&first))
        && !s.iter().any(|&c| INDICATOR[c as usize])
        && !s.windows(2).any(|w| w == b": ")
        && s.last() != Some(&b':')
}

/// Bytes that, anywhere in a plain scalar, send the file to saphyr-parser.
static INDICATOR: [bool; 256] = {
    let mut t = [false; 256];
    let set = b"[]{}\"'`|>&*!%@#";
    let mut i = 0;
    while i < set.len() {
        t[set[i] as usize] = true;
        i += 1;
    }
    t
};

/// The same in flow context, where `:` is not allowed at all here.
fn plain_flow(s: &[u8]) -> bool {
    plain_block(s) && !s.contains(&b':')
}
