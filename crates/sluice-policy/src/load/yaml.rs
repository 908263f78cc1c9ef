//! The only code that knows how YAML is parsed: saphyr-parser's event
//! stream, built into a compact tree of our own. The loader asks these few
//! questions of a node and nothing else.
//!
//! Why not saphyr's `MarkedYaml` tree: it keeps a node of ~100 bytes per
//! scalar plus an owned `String` for each and a hash map per mapping; a
//! 74 MB policy of 1,000,000 rules took 2.5 GB and ~12 s to load
//! (`bench/policy-scale.sh`, figures in `bench/README.md`). Here a node is
//! one 20-byte entry in one `Vec`, in document order; a scalar that is
//! written as it reads (most of them) points into the source text instead
//! of being copied, and a collection records where it ends so that its
//! items are found by skipping. The tree means exactly what saphyr's
//! loader built (scalars as written, with `early_parse` off; aliases
//! expanded under the same node budget; duplicate keys and collections with
//! a non-core tag treated the same), which the tests below check against
//! saphyr itself.

mod fast;

use std::borrow::Cow;

use std::hash::{DefaultHasher, Hash, Hasher};

use hashbrown::HashMap;
use saphyr_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Span, Tag};

/// A 1-based line and 1-based column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A YAML syntax error: where, and what the parser said.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub at: Pos,
    pub message: String,
}

/// Alias expansion stops past this many nodes (saphyr's loader's budget,
/// against "billion laughs" documents).
const ALIAS_LIMIT: usize = 100_000;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// A scalar; `a`/`b` locate its text (see [`Entry`]).
    Scalar(Style),
    /// A sequence; `a` is the index after its last descendant, `b` its
    /// item count.
    Seq,
    /// A mapping; `a` as for `Seq`, `b` its entry count (keys and values
    /// alternate among its children).
    Map,
    /// A collection with a tag outside YAML's core schema, kept as such
    /// (nothing of it is read); `a` as for `Seq`.
    Tagged,
    /// An unknown alias or an empty document.
    Bad,
}

/// A scalar's style, as far as the loader cares (and for key equality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
    Folded,
}

/// One node. A scalar's text is `source[a..a + b]` when `owned` is false,
/// else `owned[a]`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    what: What,
    owned: bool,
    line: u32,
    column: u32,
    a: u32,
    b: u32,
}

/// A parsed stream of documents.
pub(crate) struct Tree<'s> {
    source: &'s str,
    entries: Vec<Entry>,
    /// Texts that differ from the source as written (escapes, folding).
    owned: Vec<Box<str>>,
    /// Tags of tagged scalars, by entry: only key equality looks at them.
    tags: Vec<(u32, Tag)>,
    roots: Vec<u32>,
}

/// A node of the document, with its position.
#[derive(Clone, Copy)]
pub(crate) struct Node<'t> {
    tree: &'t Tree<'t>,
    i: u32,
}

/// The items of a sequence (or the keys and values of a mapping), in order.
#[derive(Clone)]
pub(crate) struct Items<'t> {
    tree: &'t Tree<'t>,
    next: u32,
    left: u32,
}

/// The documents of `source`, or the first syntax error.
pub(crate) fn documents(source: &str) -> Result<Tree<'_>, SyntaxError> {
    if u32::try_from(source.len()).is_err() {
        return Err(SyntaxError {
            at: Pos { line: 1, column: 1 },
            message: "the file is larger than 4 GiB".to_owned(),
        });
    }
    let mut b = Builder::new(source);
    let fail = |e: &ScanError| SyntaxError {
        at: at(*e.marker()),
        message: e.info().to_owned(),
    };
    // The fast path first; on anything it does not know, saphyr-parser.
    let fast = fast::parse(source, &mut |ev, span| {
        if b.error.is_none() {
            b.event(ev, span);
        }
    });
    if fast.is_err() || b.error.is_some() {
        b.reset();
        for ev in Parser::new_from_str(source) {
            let (ev, span) = ev.map_err(|e| fail(&e))?;
            if b.error.is_none() {
                b.event(ev, span);
            }
        }
    }
    match b.error {
        Some(e) => Err(fail(&e)),
        None => Ok(b.tree),
    }
}

fn at(m: Marker) -> Pos {
    Pos {
        line: m.line(),
        column: m.col() + 1,
    }
}

fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<'s> Tree<'s> {
    /// The documents, in order.
    pub(crate) fn docs(&self) -> Vec<Node<'_>> {
        self.roots.iter().map(|&i| Node { tree: self, i }).collect()
    }

    fn end(&self, i: u32) -> u32 {
        let e = &self.entries[i as usize];
        match e.what {
            What::Seq | What::Map | What::Tagged => e.a,
            What::Scalar(_) | What::Bad => i + 1,
        }
    }

    fn text(&self, i: u32) -> &str {
        let e = &self.entries[i as usize];
        if e.owned {
            &self.owned[e.a as usize]
        } else {
            &self.source[e.a as usize..(e.a + e.b) as usize]
        }
    }

    fn tag(&self, i: u32) -> Option<&Tag> {
        if self.tags.is_empty() {
            return None;
        }
        self.tags
            .binary_search_by_key(&i, |(j, _)| *j)
            .ok()
            .map(|k| &self.tags[k].1)
    }

    /// Whether the subtrees at `x` and `y` are equal as saphyr compares
    /// nodes: by value, style and tag, never by position.
    fn same(&self, x: u32, y: u32) -> bool {
        let (ex, ey) = (&self.entries[x as usize], &self.entries[y as usize]);
        if ex.what != ey.what {
            return false;
        }
        match ex.what {
            What::Scalar(_) => self.text(x) == self.text(y) && self.tag(x) == self.tag(y),
            What::Seq | What::Map | What::Tagged => {
                ex.a - x == ey.a - y
                    && self
                        .children(x)
                        .zip(self.children(y))
                        .all(|(a, b)| self.same(a, b))
            }
            What::Bad => true,
        }
    }

    /// The children of a collection, in order.
    fn children(&self, i: u32) -> impl Iterator<Item = u32> + '_ {
        let end = self.end(i);
        let mut next = i + 1;
        std::iter::from_fn(move || {
            let c = next;
            (c < end).then(|| {
                next = self.end(c);
                c
            })
        })
    }

    /// A hash of a key, agreeing with [`same`](Self::same).
    fn key_hash(&self, i: u32) -> u64 {
        // Fixed keys: the same key hashes the same in every mapping.
        let mut h = DefaultHasher::new();
        let e = &self.entries[i as usize];
        match e.what {
            What::Scalar(style) => (style, self.text(i)).hash(&mut h),
            _ => (e.a - i).hash(&mut h),
        }
        h.finish()
    }
}

// === impl Node ===

impl<'t> Node<'t> {
    fn entry(&self) -> &'t Entry {
        &self.tree.entries[self.i as usize]
    }
}

/// Where `n` starts.
pub(crate) fn pos(n: &Node<'_>) -> Pos {
    let e = n.entry();
    Pos {
        line: e.line as usize,
        column: e.column as usize,
    }
}

/// A scalar's text as written (quoted or not), or `None` for a collection.
pub(crate) fn scalar<'t>(n: &Node<'t>) -> Option<&'t str> {
    match n.entry().what {
        What::Scalar(_) => Some(n.tree.text(n.i)),
        _ => None,
    }
}

/// Whether `n` is a plain (unquoted) scalar.
pub(crate) fn plain(n: &Node<'_>) -> bool {
    n.entry().what == What::Scalar(Style::Plain)
}

/// Whether `n` is YAML's null: nothing, `~` or `null` unquoted.
pub(crate) fn is_null(n: &Node<'_>) -> bool {
    plain(n) && matches!(n.tree.text(n.i), "" | "~" | "null" | "Null" | "NULL")
}

/// The items of a sequence.
pub(crate) fn items<'t>(n: &Node<'t>) -> Option<Items<'t>> {
    let e = n.entry();
    (e.what == What::Seq).then_some(Items {
        tree: n.tree,
        next: n.i + 1,
        left: e.b,
    })
}

/// The entries of a mapping, in file order.
pub(crate) fn entries<'t>(n: &Node<'t>) -> Option<impl Iterator<Item = (Node<'t>, Node<'t>)>> {
    let e = n.entry();
    let mut all = Items {
        tree: n.tree,
        next: n.i + 1,
        left: e.b.saturating_mul(2),
    };
    (e.what == What::Map).then(move || std::iter::from_fn(move || Some((all.next()?, all.next()?))))
}

/// What `n` is, for "expected …, found …" messages.
pub(crate) fn kind(n: &Node<'_>) -> &'static str {
    match n.entry().what {
        What::Map => "a mapping",
        What::Seq => "a list",
        What::Scalar(_) if is_null(n) => "nothing (null)",
        What::Scalar(_) => "a scalar",
        What::Tagged | What::Bad => "an invalid value",
    }
}

// === impl Items ===

impl<'t> Iterator for Items<'t> {
    type Item = Node<'t>;

    fn next(&mut self) -> Option<Node<'t>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.next;
        self.next = self.tree.end(i);
        Some(Node { tree: self.tree, i })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Items<'_> {}

impl Items<'_> {
    /// Whether there are no (more) items.
    pub(crate) fn is_empty(&self) -> bool {
        self.left == 0
    }
}

// === building ===

/// An open collection: where its entry is, its anchor and tag (applied when
/// it closes), and for a mapping where its keys start in `Builder::keys`.
struct Open {
    at: u32,
    anchor: usize,
    tag: Option<Tag>,
    /// Children so far (keys and values of a mapping both count).
    children: u32,
    /// The pending key of a mapping and where the loader marks it.
    key: u32,
    key_mark: Marker,
    keys_from: usize,
    /// Keys by hash, once a mapping has many (so that a mapping of
    /// 100,000 keys is not checked pairwise).
    index: Option<HashMap<u64, Vec<u32>>>,
}

/// Mappings with at most this many keys are checked for duplicates pairwise.
const PAIRWISE_KEYS: usize = 16;

struct Builder<'s> {
    tree: Tree<'s>,
    /// Whether the source is ASCII, so that a marker's character index is
    /// also a byte offset.
    ascii: bool,
    /// Otherwise the last (character index, byte offset) pair found:
    /// scalars come in file order, so finding each one's offset from the
    /// last is linear in the file.
    chars: (usize, usize),
    open: Vec<Open>,
    /// The keys of every open mapping, innermost last.
    keys: Vec<u32>,
    /// Roots before the current document.
    doc_roots: usize,
    /// Anchor id → the entries of its node (start, end).
    anchors: HashMap<usize, (u32, u32)>,
    alias_budget: usize,
    /// The first error the loader would report (the parser's own errors
    /// come first, so the stream is still read to its end).
    error: Option<ScanError>,
}

impl<'s> Builder<'s> {
    fn new(source: &'s str) -> Builder<'s> {
        Builder {
            tree: Tree {
                source,
                // A policy needs one node per 6 to 10 bytes. Capacity
                // never written is never touched, so reserving for the
                // densest files costs nothing, and growing (a copy of
                // every node so far) is rare. Capped (16M nodes, 320 MB of
                // address space) so that a huge file grows as it is read
                // instead of reserving ahead of what it holds.
                entries: Vec::with_capacity((source.len() / 6).min(1 << 24)),
                owned: Vec::new(),
                tags: Vec::new(),
                roots: Vec::new(),
            },
            ascii: source.is_ascii(),
            chars: (0, 0),
            open: Vec::new(),
            keys: Vec::new(),
            doc_roots: 0,
            anchors: HashMap::new(),
            alias_budget: ALIAS_LIMIT,
            error: None,
        }
    }

    /// Forgets everything read, to read the source again.
    fn reset(&mut self) {
        self.tree.entries.clear();
        self.tree.owned.clear();
        self.tree.tags.clear();
        self.tree.roots.clear();
        self.open.clear();
        self.keys.clear();
        self.doc_roots = 0;
        self.anchors.clear();
        self.alias_budget = ALIAS_LIMIT;
        self.error = None;
    }

    fn event(&mut self, ev: Event<'_>, span: Span) {
        let mark = span.start;
        match ev {
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
            Event::DocumentStart(_) => self.doc_roots = self.tree.roots.len(),
            Event::DocumentEnd => {
                if self.open.is_empty() && self.tree.roots.len() == self.doc_roots {
                    // An empty document.
                    let i = self.push(What::Bad, mark, 0, 0, false);
                    self.tree.roots.push(i);
                }
            }
            Event::SequenceStart(anchor, tag) => self.start(What::Seq, anchor, tag, mark),
            Event::MappingStart(anchor, tag) => self.start(What::Map, anchor, tag, mark),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(o) = self.open.pop() else {
                    return;
                };
                self.keys.truncate(o.keys_from);
                let end = small(self.tree.entries.len());
                let e = &mut self.tree.entries[o.at as usize];
                e.a = end;
                e.b = if e.what == What::Map {
                    o.children / 2
                } else {
                    o.children
                };
                if o.tag.as_ref().is_some_and(|t| !t.is_yaml_core_schema()) {
                    e.what = What::Tagged;
                }
                self.done(o.at, o.anchor, mark);
            }
            Event::Scalar(text, style, anchor, tag) => {
                let i = self.scalar(text, style, span);
                if let Some(t) = tag {
                    self.tree.tags.push((i, t.into_owned()));
                }
                self.done(i, anchor, mark);
            }
            Event::Alias(id) => {
                let i = self.alias(id, mark);
                self.done(i, 0, mark);
            }
        }
    }

    fn start(&mut self, what: What, anchor: usize, tag: Option<Cow<'_, Tag>>, mark: Marker) {
        let at = self.push(what, mark, 0, 0, false);
        self.open.push(Open {
            at,
            anchor,
            tag: tag.map(Cow::into_owned),
            children: 0,
            key: at,
            key_mark: mark,
            keys_from: self.keys.len(),
            index: None,
        });
    }

    fn push(&mut self, what: What, m: Marker, a: u32, b: u32, owned: bool) -> u32 {
        let i = small(self.tree.entries.len());
        self.tree.entries.push(Entry {
            what,
            owned,
            line: small(m.line()),
            column: small(m.col() + 1),
            a,
            b,
        });
        i
    }

    fn scalar(&mut self, text: Cow<'_, str>, style: ScalarStyle, span: Span) -> u32 {
        let style = match style {
            ScalarStyle::Plain => Style::Plain,
            ScalarStyle::SingleQuoted => Style::SingleQuoted,
            ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
            ScalarStyle::Literal => Style::Literal,
            _ => Style::Folded,
        };
        let source = self.tree.source;
        let base = source.as_ptr() as usize;
        // Borrowed text is a slice of the source; owned text that is what
        // is written where it starts (a plain scalar on one line, a quoted
        // one without escapes) is kept as that slice too.
        let slice = match &text {
            Cow::Borrowed(s) => {
                let off = (s.as_ptr() as usize).wrapping_sub(base);
                (off <= source.len() && s.len() <= source.len() - off).then_some(off)
            }
            Cow::Owned(s) if !s.is_empty() => {
                let quote = matches!(style, Style::SingleQuoted | Style::DoubleQuoted);
                self.byte_offset(span.start.index())
                    .map(|at| at + usize::from(quote))
                    .filter(|&at| {
                        source
                            .get(at..)
                            .is_some_and(|rest| rest.starts_with(s.as_str()))
                    })
            }
            Cow::Owned(_) => None,
        };
        match slice {
            Some(off) => self.push(
                What::Scalar(style),
                span.start,
                small(off),
                small(text.len()),
                false,
            ),
            None => {
                let k = small(self.tree.owned.len());
                self.tree.owned.push(text.into_owned().into_boxed_str());
                self.push(What::Scalar(style), span.start, k, 0, true)
            }
        }
    }

    /// The byte offset of the character at index `ch`.
    fn byte_offset(&mut self, ch: usize) -> Option<usize> {
        if self.ascii {
            return Some(ch);
        }
        if ch < self.chars.0 {
            self.chars = (0, 0);
        }
        let (mut i, mut at) = self.chars;
        let mut rest = self.tree.source.get(at..)?.chars();
        while i < ch {
            at += rest.next()?.len_utf8();
            i += 1;
        }
        self.chars = (i, at);
        Some(at)
    }

    /// Copies the anchored node for an alias, positioned at the alias.
    fn alias(&mut self, id: usize, mark: Marker) -> u32 {
        let Some(&(start, end)) = self.anchors.get(&id) else {
            return self.push(What::Bad, mark, 0, 0, false);
        };
        let size = (end - start) as usize;
        if size > self.alias_budget {
            self.error = Some(ScanError::new_str(
                mark,
                "alias expansion exceeded the maximum node budget (possible billion-laughs attack)",
            ));
            return self.push(What::Bad, mark, 0, 0, false);
        }
        self.alias_budget -= size;
        let to = small(self.tree.entries.len());
        for k in start..end {
            let mut e = self.tree.entries[k as usize];
            if matches!(e.what, What::Seq | What::Map | What::Tagged) {
                e.a = e.a - start + to;
            }
            self.tree.entries.push(e);
        }
        for k in 0..self.tree.tags.len() {
            let (j, _) = self.tree.tags[k];
            if (start..end).contains(&j) {
                let t = self.tree.tags[k].1.clone();
                self.tree.tags.push((j - start + to, t));
            }
        }
        let top = &mut self.tree.entries[to as usize];
        top.line = small(mark.line());
        top.column = small(mark.col() + 1);
        to
    }

    /// Node `i` is complete: register its anchor and attach it to its
    /// parent (or make it a document's root).
    fn done(&mut self, i: u32, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, (i, self.tree.end(i)));
        }
        if self.open.is_empty() {
            self.tree.roots.push(i);
            return;
        }
        let tree = &self.tree;
        let Some(parent) = self.open.last_mut() else {
            return;
        };
        parent.children += 1;
        if tree.entries[parent.at as usize].what != What::Map {
            return;
        }
        if parent.children % 2 == 1 {
            parent.key = i;
            parent.key_mark = mark;
            return;
        }
        // A value completed its entry: was its key seen before?
        let key = parent.key;
        let mine = &mut self.keys[parent.keys_from..];
        let dup = if mine.len() < PAIRWISE_KEYS {
            mine.iter().any(|&k| tree.same(k, key))
        } else {
            let index = parent.index.get_or_insert_with(|| {
                let mut m: HashMap<u64, Vec<u32>> = HashMap::new();
                for &k in mine.iter() {
                    m.entry(tree.key_hash(k)).or_default().push(k);
                }
                m
            });
            let same = index.entry(tree.key_hash(key)).or_default();
            let dup = same.iter().any(|&k| tree.same(k, key));
            same.push(key);
            dup
        };
        if dup {
            self.error = Some(ScanError::new_str(
                parent.key_mark,
                "duplicated key in mapping",
            ));
        }
        self.keys.push(key);
    }
}

#[cfg(test)]
mod tests {
    //! The tree against saphyr's own loader (what this module replaced): for
    //! every document, the same nodes at the same positions with the same
    //! text, and the same first error.

    use super::*;
    use saphyr::{LoadableYamlNode, MarkedYaml, YamlData, YamlLoader};

    /// saphyr's tree as one line a node: position, kind, text.
    fn saphyr_dump(source: &str) -> Result<String, (usize, usize, String)> {
        let mut loader: YamlLoader<'_, MarkedYaml<'_>> = YamlLoader::default();
        loader.early_parse(false);
        let mut parser = Parser::new_from_str(source);
        let fail = |e: &ScanError| (e.marker().line(), e.marker().col() + 1, e.info().to_owned());
        parser.load(&mut loader, true).map_err(|e| fail(&e))?;
        if let Some(e) = loader.error() {
            return Err(fail(e));
        }
        fn walk(n: &MarkedYaml<'_>, depth: usize, out: &mut String) {
            let (l, c) = (n.span.start.line(), n.span.start.col() + 1);
            let pad = " ".repeat(depth);
            match &n.data {
                YamlData::Representation(s, style, _) => {
                    let plain = *style == saphyr::ScalarStyle::Plain;
                    out.push_str(&format!("{pad}{l}:{c} scalar plain={plain} {s:?}\n"));
                }
                YamlData::Sequence(items) => {
                    out.push_str(&format!("{pad}{l}:{c} list {}\n", items.len()));
                    for i in items {
                        walk(i, depth + 1, out);
                    }
                }
                YamlData::Mapping(m) => {
                    out.push_str(&format!("{pad}{l}:{c} mapping {}\n", m.len()));
                    for (k, v) in m {
                        walk(k, depth + 1, out);
                        walk(v, depth + 1, out);
                    }
                }
                _ => out.push_str(&format!("{pad}{l}:{c} invalid\n")),
            }
        }
        let mut out = String::new();
        for d in loader.into_documents() {
            assert!(!d.is_badvalue() || d.span.start.line() > 0);
            out.push_str("---\n");
            walk(&d, 0, &mut out);
        }
        Ok(out)
    }

    /// This module's tree, dumped the same way through its accessors.
    fn dump(source: &str) -> Result<String, (usize, usize, String)> {
        let tree = documents(source).map_err(|e| (e.at.line, e.at.column, e.message))?;
        Ok(dump_tree(&tree))
    }

    /// The fast path's tree alone, if it reads `source`.
    fn fast_dump(source: &str) -> Option<String> {
        let mut b = Builder::new(source);
        fast::parse(source, &mut |ev, span| b.event(ev, span)).ok()?;
        // A duplicate key: `documents` reads the file again with saphyr.
        b.error.is_none().then(|| dump_tree(&b.tree))
    }

    fn dump_tree(tree: &Tree<'_>) -> String {
        fn walk(n: &Node<'_>, depth: usize, out: &mut String) {
            let Pos { line: l, column: c } = pos(n);
            let pad = " ".repeat(depth);
            if let Some(s) = scalar(n) {
                out.push_str(&format!("{pad}{l}:{c} scalar plain={} {s:?}\n", plain(n)));
            } else if let Some(items) = items(n) {
                out.push_str(&format!("{pad}{l}:{c} list {}\n", items.len()));
                for i in items {
                    walk(&i, depth + 1, out);
                }
            } else if let Some(entries) = entries(n) {
                let entries: Vec<_> = entries.collect();
                out.push_str(&format!("{pad}{l}:{c} mapping {}\n", entries.len()));
                for (k, v) in entries {
                    walk(&k, depth + 1, out);
                    walk(&v, depth + 1, out);
                }
            } else {
                assert_eq!(kind(n), "an invalid value");
                out.push_str(&format!("{pad}{l}:{c} invalid\n"));
            }
        }
        let mut out = String::new();
        for d in tree.docs() {
            out.push_str("---\n");
            walk(&d, 0, &mut out);
        }
        out
    }

    const CASES: &[&str] = &[
        "",
        "# only a comment\n",
        "---\n",
        "---\n...\n---\n",
        "mode: enforce\n",
        "mode: enforce\n---\nmode: open\n",
        "a: 1\nb:\n  - x\n  - 'y'\n  - \"z\\tq\"\n  -\n  - ~\nc: {d: e, f: [1, \"2-3\"]}\n",
        "a: &x {b: [1, 2]}\nc: *x\nd: *x\ne: *nope\n",
        "a: &s plain text\nb: *s\n",
        "a: !!str 5\nb: !custom {c: d}\nc: !!map {d: e}\nd: !x [1]\n",
        "a: |\n  line one\n  line two\nb: >\n  folded\n  text\n",
        "a: plain\n  continued on\n  three lines\nb: 'it''s'\n",
        "héllo: wörld\nname: \"ünïcode \\u00e9\"\nx: [ä, b]\n",
        "mode: enforce\nlog: {}\nmode: open\n",
        "a: 1\n'a': 2\n\"a\": 3\n",
        "a: 1\n!t a: 2\n",
        "? [1, 2]\n: x\n? [1, 2]\n: y\n",
        "? {a: b}\n: x\n",
        "mode: enforce\nzones: [a\n",
        "mode: enforce\n  x: : :\n",
        "log:\n  flows: 'stdout\n",
        "a: *x\nb: &x 1\n",
        "- a\n- b: c\n  d: e\n- [f, {g: h}]\n",
        "k0: 0\nk1: 1\nk2: 2\nk3: 3\nk4: 4\nk5: 5\nk6: 6\nk7: 7\nk8: 8\nk9: 9\nk10: 10\nk11: 11\nk12: 12\nk13: 13\nk14: 14\nk15: 15\nk16: 16\nk17: 17\nk3: again\n",
        "x: 1 # comment\ny: \"a # b\"\nz: a#b\n",
        "zones:\n  - name: web   \n    sources: [10.0.0.0/8]\n",
        "a:\tb\n",
        "key with spaces: value with: colon\n",
        "a: [1, 2,\n  3]\n",
        "a: 'multi\n  line'\nb: \"multi\n  line\"\n",
    ];

    #[test]
    fn the_tree_is_what_saphyr_loads() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../sluice/tests/fixtures");
        let mut files: Vec<String> = CASES.iter().map(|s| (*s).to_owned()).collect();
        for f in ["check.yaml", "invalid.yaml"] {
            files.push(std::fs::read_to_string(format!("{fixtures}/{f}")).unwrap());
        }
        for text in &files {
            assert_eq!(dump(text), saphyr_dump(text), "for:\n{text}");
        }
    }

    /// Documents the fast path must read, exactly as saphyr does.
    const FAST: &[&str] = &[
        "mode: enforce\n",
        "a: b\n",
        "- a\n- 'b'\n- \"c\"\n",
        "mode: enforce\nzones:\n  - name: z0\n    sources: [10.0.0.0/24]\n    allow:\n      - host: svc0.team0.zone0.example.com\n        ports: [443]\n      - host: \"*.w2.zone0.example.com\"\n        ports: [443, \"8000-8100\"]\n    deny:\n      - host: x.example\n  - name: z1\n    sources: [10.0.1.0/24]\n",
        "# Generated\nmode: enforce\nzones:\n  - name: z0\n    sources: [10.0.0.0/24]\n    allow:\n      - {host: \"svc0.t0.z0.example\", ports: [443]}\n      - {host: \"*.w7.z0.example\", ports: [443, \"8000-8100\"]}\n    deny:\n      - {host: \"*.w19.z0.example\"}\n",
        "listen:\n  http: 127.0.0.1:3128   # proxy\n  admin: \"[::1]:9901\"\n\n# comment\nlimits:\n    idle_timeout: 300s\n    header_timeout: 10s\nlog: {flows: stdout}\n",
        "a: [ ]\nb: {}\nc: [ x ,  y ]\nd: { e: f }\ng:   'single'   # c\nh: 1:2\ni: ~\nj: null\n",
        "users:\n  - name: ci-runner\n    password_hash: $argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA\nzones:\n  - name: ci\n    users: [ci-runner]\n    mode: report\n",
        "a:\n  b:\n    c: d\n  e: f\ng: h\n",
        "x: 1 # comment\ny: \"a # b\"\nz: a, b\n",
        "zones:\n  - name: web   \n    sources: [10.0.0.0/8]\n",
    ];

    /// Documents near the subset's edge: the fast path may give up on
    /// them, but must not read them differently.
    const EDGES: &[&str] = &[
        "a: 1\nb: 2\na: 3\n",
        "k: a#b c\n",
        "a: 1\n'a': 2\n",
        "a:\n- b\n- c\n",
        "a:\nb: c\n",
        "a: b\n  c\n",
        "- a\n  b\n",
        "a: 'it''s'\n",
        "a: \"t\\tq\"\n",
        "a: [1, [2]]\n",
        "a: [1, 2,]\n",
        "a: [1,\n  2]\n",
        "a: {b: c, d: {e: f}}\n",
        "a: -1\n",
        "a: b: c\n",
        "a: b:\n",
        "a:b\n",
        "- - a\n",
        "-\n",
        "- a: b\n  c: d\n- e\n",
        "- a: b\n   c: d\n",
        "a: [b: c]\n",
        "a: [::1, 2]\n",
        "a: \"x\" y\n",
        "---\na: b\n",
        "a: b\n---\nc: d\n",
        "a: b\n...\n",
        "a: &x b\nc: *x\n",
        "a: !t b\n",
        "a: |\n  b\n",
        "a: >\n  b\n",
        "? a\n: b\n",
        "a: b # c\n  # d\ne: f\n",
        "a:\n  # only a comment\n  b: c\n",
        "a: b\n c: d\n",
        "  a: b\n",
        "a: [b, c] d\n",
        "a: \"b\n  c\"\n",
        "a: b  \n\n\n",
        "k: x\n k2: y\n",
        "a: {b: c} # x\n",
        "a: {b: [c, d], e: 'f'}\n",
        "a: {b: }\n",
        "a: {b}\n",
        "1: x\n_a-b: y\n",
    ];

    #[test]
    fn over_long_keys_are_saphyrs_to_report() {
        for n in [1_000, 1_030, 2_000] {
            let key = "k".repeat(n);
            for text in [format!("{key}: v\n"), format!("a: {{{key}: v}}\n")] {
                if n > 1_000 {
                    assert!(fast_dump(&text).is_none(), "{n}");
                }
                assert_eq!(dump(&text), saphyr_dump(&text), "{n}");
            }
        }
    }

    #[test]
    fn the_fast_path_reads_what_saphyr_loads() {
        for text in FAST {
            let fast = fast_dump(text);
            assert!(fast.is_some(), "the fast path gave up on:\n{text}");
            assert_eq!(fast.map(Ok), Some(saphyr_dump(text)), "for:\n{text}");
        }
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../sluice/tests/fixtures");
        let mut edges: Vec<String> = EDGES.iter().chain(CASES).map(|s| (*s).to_owned()).collect();
        for f in ["check.yaml", "invalid.yaml"] {
            let text = std::fs::read_to_string(format!("{fixtures}/{f}")).unwrap();
            // Whole, and without its non-ASCII lines (which the fast path
            // leaves to saphyr) line by line cut short.
            let ascii: String = text
                .lines()
                .filter(|l| l.is_ascii())
                .map(|l| format!("{l}\n"))
                .collect();
            let lines: Vec<&str> = ascii.lines().collect();
            for n in 1..=lines.len() {
                edges.push(lines[..n].iter().map(|l| format!("{l}\n")).collect());
            }
            edges.push(text);
        }
        let mut taken = 0;
        for text in &edges {
            if let Some(fast) = fast_dump(text) {
                taken += 1;
                assert_eq!(Ok(fast), saphyr_dump(text), "for:\n{text}");
            }
            assert_eq!(dump(text), saphyr_dump(text), "for:\n{text}");
        }
        assert!(taken > 20, "the fast path read only {taken} documents");
    }

    /// Keys and values of `the_fast_path_agrees_on_random_documents`'s
    /// documents: pieces near the edge of the fast path's subset.
    const KEYS: &[&str] = &["a", "b-c", "d_1", "9", "a", "'q'", "k k", "-x"];
    const VALUES: &[&str] = &[
        "",
        "x",
        "1:2",
        "a b",
        "~",
        "'s'",
        "\"d\"",
        "\"e f\" # c",
        "[]",
        "[1, 2]",
        "[ a ,b ]",
        "{}",
        "{k: v}",
        "{k: [1, \"2-3\"], l: m}",
        "a # c",
        "a#b",
        "x:",
        "x: y",
        "- z",
        "[a, ]",
        "'it''s'",
        "\"t\\n\"",
        "$argon2id$v=19",
        "/p/q.r",
        "[a, [b]]",
        "{k: {l: m}}",
        "&a x",
        "*a",
        "!t x",
        "|",
        "a, b",
        "- ",
    ];
    /// A seeded generator of those documents (the same ones every run):
    /// mostly well-formed block YAML, now and then a piece off.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) as usize) % n
        }
        /// Mostly well-formed block YAML, now and then a piece off.
        fn indent(&mut self, n: usize) -> String {
            let n = match self.next(30) {
                0 => n + 1,
                1 => n.saturating_sub(1),
                _ => n,
            };
            " ".repeat(n)
        }
        fn value(&mut self) -> &'static str {
            if self.next(3) == 0 {
                VALUES[self.next(VALUES.len())]
            } else {
                VALUES[1 + self.next(12)]
            }
        }
        fn key(&mut self) -> &'static str {
            if self.next(6) == 0 {
                KEYS[self.next(KEYS.len())]
            } else {
                KEYS[self.next(4)]
            }
        }
        fn extra(&mut self, out: &mut String, indent: usize) {
            match self.next(12) {
                0 => out.push('\n'),
                1 => out.push_str(&format!("{}# note\n", " ".repeat(indent))),
                _ => {}
            }
        }
        fn map(&mut self, out: &mut String, indent: usize, depth: usize, first_inline: bool) {
            for i in 0..1 + self.next(3) {
                if !(first_inline && i == 0) {
                    let pad = self.indent(indent);
                    out.push_str(&pad);
                }
                out.push_str(self.key());
                out.push(':');
                self.entry_value(out, indent, depth);
                self.extra(out, indent);
            }
        }
        fn entry_value(&mut self, out: &mut String, indent: usize, depth: usize) {
            match self.next(if depth > 2 { 1 } else { 4 }) {
                0 => {
                    out.push(' ');
                    out.push_str(self.value());
                    out.push('\n');
                }
                1 => {
                    out.push('\n');
                    self.map(out, indent + 2, depth + 1, false);
                }
                _ => {
                    out.push('\n');
                    self.seq(out, indent + 2, depth + 1);
                }
            }
        }
        fn seq(&mut self, out: &mut String, indent: usize, depth: usize) {
            for _ in 0..1 + self.next(3) {
                let pad = self.indent(indent);
                out.push_str(&pad);
                out.push_str("- ");
                if depth < 3 && self.next(2) == 0 {
                    self.map(out, indent + 2, depth + 1, true);
                } else {
                    out.push_str(self.value());
                    out.push('\n');
                }
                self.extra(out, indent);
            }
        }
    }

    /// Random documents from pieces near the subset's edge (a fixed seed,
    /// so every run checks the same ones): whatever the fast path reads, it
    /// reads as saphyr does.
    #[test]
    fn the_fast_path_agrees_on_random_documents() {
        let mut g = Gen(0x5eed_1155);
        let mut taken = 0;
        const DOCS: usize = 3_000;
        for _ in 0..DOCS {
            let mut text = String::new();
            if g.next(5) == 0 {
                g.seq(&mut text, 0, 0);
            } else {
                g.map(&mut text, 0, 0, false);
            }
            if let Some(fast) = fast_dump(&text) {
                taken += 1;
                assert_eq!(Ok(fast), saphyr_dump(&text), "for:\n{text}");
            }
        }
        println!("the fast path read {taken} of {DOCS} random documents");
        assert!(taken > 300, "the fast path read only {taken} documents");
    }

    #[test]
    fn an_alias_bomb_stops_at_the_budget() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_owned()
            } else {
                format!("b{}", i - 1)
            };
            let refs = vec![format!("*{prev}"); 10].join(", ");
            text.push_str(&format!("b{i}: &b{i} [{refs}]\n"));
        }
        let e = documents(&text).err().unwrap();
        assert!(e.message.contains("alias expansion"), "{}", e.message);
    }

    #[test]
    fn scalars_point_into_the_source() {
        let text = "a: plain\nb: 'quoted'\nc: [x, y]\n";
        let tree = documents(text).unwrap();
        assert!(tree.owned.is_empty(), "{:?}", tree.owned);
        // Also where saphyr-parser reads the file (not ASCII), but not
        // where the text differs from what is written.
        let text = "ä: plain\nb: 'quöted'\nc: [x, \"y\\tz\", 'it''s']\nd: two\n  lines\n";
        let tree = documents(text).unwrap();
        assert_eq!(tree.owned, ["y\tz", "it's", "two lines"].map(Box::from));
        assert_eq!(std::mem::size_of::<Entry>(), 20);
    }
}
