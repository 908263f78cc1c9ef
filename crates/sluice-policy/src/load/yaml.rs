//! The only code that knows the YAML tree's type: saphyr's
//! position-annotated `MarkedYaml`, read with `early_parse` off so that every
//! scalar keeps the text it was written as. The loader asks these few
//! questions of a node and nothing else, so a leaner tree (the 1M-rule
//! target of the hardening issue) replaces this module alone.

use saphyr::{MarkedYaml, ScalarStyle, YamlData, YamlLoader};

/// A node of the document, with its position.
pub(crate) type Node<'a> = MarkedYaml<'a>;

/// A 1-based line and 1-based column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A YAML syntax error: where, and what the parser said.
pub(crate) struct SyntaxError {
    pub at: Pos,
    pub message: String,
}

/// The documents of `source`, or the first syntax error.
pub(crate) fn documents(source: &str) -> Result<Vec<Node<'_>>, SyntaxError> {
    let mut loader: YamlLoader<'_, MarkedYaml<'_>> = YamlLoader::default();
    loader.early_parse(false);
    let mut parser = saphyr_parser::Parser::new_from_str(source);
    let fail = |e: &saphyr::ScanError| SyntaxError {
        at: Pos {
            line: e.marker().line(),
            column: e.marker().col() + 1,
        },
        message: e.info().to_owned(),
    };
    if let Err(e) = parser.load(&mut loader, true) {
        return Err(fail(&e));
    }
    if let Some(e) = loader.error() {
        return Err(fail(e));
    }
    Ok(loader.into_documents())
}

/// Where `n` starts.
pub(crate) fn pos(n: &Node<'_>) -> Pos {
    Pos {
        line: n.span.start.line(),
        column: n.span.start.col() + 1,
    }
}

/// A scalar's text as written (quoted or not), or `None` for a collection.
pub(crate) fn scalar<'n>(n: &'n Node<'_>) -> Option<&'n str> {
    match &n.data {
        YamlData::Representation(s, _, _) => Some(s.as_ref()),
        _ => None,
    }
}

/// Whether `n` is a plain (unquoted) scalar.
pub(crate) fn plain(n: &Node<'_>) -> bool {
    matches!(&n.data, YamlData::Representation(_, ScalarStyle::Plain, _))
}

/// Whether `n` is YAML's null: nothing, `~` or `null` unquoted.
pub(crate) fn is_null(n: &Node<'_>) -> bool {
    match &n.data {
        YamlData::Representation(s, ScalarStyle::Plain, _) => {
            matches!(s.as_ref(), "" | "~" | "null" | "Null" | "NULL")
        }
        _ => false,
    }
}

/// The items of a sequence.
pub(crate) fn items<'n, 'a>(n: &'n Node<'a>) -> Option<&'n [Node<'a>]> {
    match &n.data {
        YamlData::Sequence(s) => Some(s.as_slice()),
        _ => None,
    }
}

/// The entries of a mapping, in file order.
pub(crate) fn entries<'n, 'a>(
    n: &'n Node<'a>,
) -> Option<impl Iterator<Item = (&'n Node<'a>, &'n Node<'a>)>> {
    match &n.data {
        YamlData::Mapping(map) => Some(map.iter()),
        _ => None,
    }
}

/// What `n` is, for "expected …, found …" messages.
pub(crate) fn kind(n: &Node<'_>) -> &'static str {
    match &n.data {
        YamlData::Mapping(_) => "a mapping",
        YamlData::Sequence(_) => "a list",
        YamlData::Representation(..) if is_null(n) => "nothing (null)",
        YamlData::Representation(..) | YamlData::Value(_) => "a scalar",
        YamlData::Alias(_) => "an alias",
        _ => "an invalid value",
    }
}
