//! Key descriptors and the one walker that reads every mapping by them.
//!
//! A section (the file itself, `listen`, `admin`, a zone, a rule, …) is a
//! static table of [`Key`]s. A key says its name, its description, whether a
//! reload applies it, and (through the `key!` macro, from its kind) how to
//! read it, how to describe it in the JSON Schema and how to tell whether it
//! changed. Adding a key is one entry in `catalog.rs`: nothing else lists keys.

use std::fmt;

use serde_json::{Map, Value as Json, json};

use super::{
    Cx, Label,
    yaml::{self, Node, Pos},
};

/// What a reload does with a key's new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The reloaded policy uses the new value at once.
    Applies,
    /// The value is read once at start; a reload that changes it logs that
    /// a restart is needed and keeps running with the old value.
    Restart,
}

impl Reload {
    /// How the README's reference table says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reload::Applies => "reload applies",
            Reload::Restart => "restart needed",
        }
    }
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configuration key as documented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    /// Dotted path, with `[]` for the items of a list: `zones[].allow[].host`.
    pub path: String,
    /// What a reload does with it. `None` for a mapping whose keys differ:
    /// each of them says.
    pub reload: Option<Reload>,
    /// What the key means (the schema's `description`).
    pub doc: &'static str,
}

/// One key of a section whose values are read into a `T`.
pub(crate) struct Key<T: 'static> {
    pub name: &'static str,
    pub doc: &'static str,
    /// `None` for a mapping: each of its keys says.
    pub reload: Option<Reload>,
    /// Reads the value into `T`, reporting what is wrong with it.
    pub read: fn(&mut Cx<'_>, &Node<'_>, &mut T),
    /// Adds the dotted names of keys that need a restart and differ
    /// between two values (`prefix` leads each name).
    pub changed: fn(&T, &T, &str, &mut Vec<String>),
    /// The value's JSON Schema, without its description.
    pub schema: fn() -> Json,
    /// The keys inside the value, if it is a mapping or a list of them.
    pub nested: fn() -> Nested,
}

/// What is inside a key's value, for listings and the schema.
pub(crate) enum Nested {
    /// A scalar, or a list of scalars.
    Leaf,
    /// A mapping with keys of its own.
    Map(&'static dyn Table),
    /// A list of mappings with keys of their own.
    List(&'static dyn Table),
}

/// A mapping's keys and how messages name it.
pub(crate) struct Section<T: 'static> {
    /// The mapping in "expected a mapping for …" and "unknown key … in …":
    /// `admin`, `a zone`, `the configuration`.
    pub what: &'static str,
    /// What key names are prefixed with in messages about values:
    /// `admin` (`admin.window`), `users[]`, or empty.
    pub label: &'static str,
    pub keys: &'static [Key<T>],
    /// Keys of features that this build does not have: rejected as "not
    /// supported yet", never silently ignored.
    pub not_yet: &'static [&'static str],
}

/// The most keys a section may have (the size of [`Seen`]).
pub(crate) const MAX_KEYS: usize = 16;

/// Which keys a mapping had, and where each value starts.
pub(crate) struct Seen<T: 'static> {
    keys: &'static [Key<T>],
    at: [Option<Pos>; MAX_KEYS],
    /// No value failed to read (unknown keys do not count).
    pub ok: bool,
}

impl<T> Seen<T> {
    /// Where the value of key `name` starts, if the mapping had it.
    pub fn at(&self, name: &str) -> Option<Pos> {
        let i = self.keys.iter().position(|k| k.name == name)?;
        self.at.get(i).copied().flatten()
    }

    /// Whether the mapping had key `name`.
    pub fn has(&self, name: &str) -> bool {
        self.at(name).is_some()
    }
}

/// A section with its item type erased: what listings and the schema need.
pub(crate) trait Table: Sync {
    /// Appends every key under `prefix`, depth first in table order.
    fn docs(&self, prefix: &str, out: &mut Vec<KeyDoc>);
    /// The JSON Schema of the mapping.
    fn schema(&self) -> Json;
}

impl<T: 'static> Section<T> {
    /// Adds the keys that need a restart and differ between `a` and `b`.
    pub fn changed(&self, a: &T, b: &T, prefix: &str, out: &mut Vec<String>) {
        for k in self.keys {
            (k.changed)(a, b, prefix, out);
        }
    }

    fn names(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl<T: 'static> Table for Section<T> {
    fn docs(&self, prefix: &str, out: &mut Vec<KeyDoc>) {
        for k in self.keys {
            let path = format!("{prefix}{}", k.name);
            let here = out.len();
            out.push(KeyDoc {
                path: path.clone(),
                reload: k.reload,
                doc: k.doc,
            });
            match (k.nested)() {
                Nested::Leaf => {}
                Nested::List(t) => t.docs(&format!("{path}[]."), out),
                Nested::Map(t) => {
                    t.docs(&format!("{path}."), out);
                    // A mapping is as its keys are, if they agree.
                    let mut inner = out[here + 1..].iter().map(|d| d.reload);
                    let first = inner.next().flatten();
                    if inner.all(|r| r == first) {
                        out[here].reload = first;
                    }
                }
            }
        }
    }

    fn schema(&self) -> Json {
        let mut props = Map::new();
        for k in self.keys {
            let mut s = (k.schema)();
            if let Json::Object(o) = &mut s {
                o.insert("description".to_owned(), Json::from(k.doc));
            }
            props.insert(k.name.to_owned(), s);
        }
        json!({ "type": "object", "additionalProperties": false, "properties": props })
    }
}

impl Cx<'_> {
    /// Reads mapping `n` into `out` by `sec`'s keys, in file order. Reports
    /// unknown keys, keys of features not built yet, and (through each
    /// key's reader) bad values. `None` if `n` is not a mapping.
    pub(crate) fn section_into<T>(
        &mut self,
        sec: &Section<T>,
        n: &Node<'_>,
        out: &mut T,
    ) -> Option<Seen<T>> {
        let Some(entries) = yaml::entries(n) else {
            self.err(
                n,
                format!(
                    "expected a mapping for {}, found {}",
                    sec.what,
                    yaml::kind(n)
                ),
            );
            return None;
        };
        let outer = self.label;
        let mut seen = Seen {
            keys: sec.keys,
            at: [None; MAX_KEYS],
            ok: true,
        };
        for (k, v) in entries {
            let (k, v) = (&k, &v);
            let Some(name) = yaml::scalar(k) else {
                self.err(k, format!("expected a string key in {}", sec.what));
                continue;
            };
            let Some(i) = sec.keys.iter().position(|key| key.name == name) else {
                if sec.not_yet.contains(&name) {
                    self.err(
                        k,
                        format!(
                            "`{name}` in {} is not supported yet by this version of Sluice",
                            sec.what
                        ),
                    );
                } else {
                    self.err(
                        k,
                        format!(
                            "unknown key `{name}` in {}; expected one of: {}",
                            sec.what,
                            sec.names()
                        ),
                    );
                }
                continue;
            };
            let key = &sec.keys[i];
            if let Some(slot) = seen.at.get_mut(i) {
                *slot = Some(yaml::pos(v));
            }
            self.label = Label {
                section: sec.label,
                key: key.name,
            };
            let before = self.error_count();
            (key.read)(self, v, out);
            seen.ok &= self.error_count() == before;
        }
        self.label = outer;
        Some(seen)
    }
}

/// Turns `key!` entries into [`Key`]s. A value key reads its kind into the
/// model field of the same name:
///
/// ```text
/// key!(window: Time(Min::Secs(60)), Restart, "How far back top lists reach."),
/// ```
///
/// and a mapping key walks its own section: `key!(admin: map &ADMIN, "…")`.
macro_rules! key {
    // A mapping whose key is not a Rust name (`new-destination`).
    ($key:literal => $name:ident: map $table:expr, $doc:literal) => {
        $crate::load::table::Key {
            name: $key,
            doc: $doc,
            reload: None,
            read: |cx, n, t| {
                cx.section_into($table, n, &mut t.$name);
            },
            changed: |a, b, prefix, out| {
                let prefix = format!("{prefix}{}.", $key);
                $table.changed(&a.$name, &b.$name, &prefix, out)
            },
            schema: || $crate::load::table::Table::schema($table),
            nested: || $crate::load::table::Nested::Map($table),
        }
    };
    ($name:ident: map $table:expr, $doc:literal) => {
        $crate::load::table::Key {
            name: stringify!($name),
            doc: $doc,
            reload: None,
            read: |cx, n, t| {
                cx.section_into($table, n, &mut t.$name);
            },
            changed: |a, b, prefix, out| {
                let prefix = format!("{prefix}{}.", stringify!($name));
                $table.changed(&a.$name, &b.$name, &prefix, out)
            },
            schema: || $crate::load::table::Table::schema($table),
            nested: || $crate::load::table::Nested::Map($table),
        }
    };
    ($name:ident: $kind:expr, Applies, $doc:literal) => {
        key!(@value $name, $kind, Applies, $doc, |_, _, _, _| {})
    };
    ($name:ident: $kind:expr, Restart, $doc:literal) => {
        key!(@value $name, $kind, Restart, $doc, |a, b, prefix, out| {
            if a.$name != b.$name {
                out.push(format!("{prefix}{}", stringify!($name)));
            }
        })
    };
    (@value $name:ident, $kind:expr, $reload:ident, $doc:literal, $changed:expr) => {
        $crate::load::table::Key {
            name: stringify!($name),
            doc: $doc,
            reload: Some($crate::load::table::Reload::$reload),
            read: |cx, n, t| {
                if let Some(v) = $crate::load::kinds::Kind::read(&$kind, cx, n) {
                    t.$name = v.into();
                }
            },
            changed: $changed,
            schema: || $crate::load::kinds::Kind::schema(&$kind),
            nested: || $crate::load::kinds::Kind::nested(&$kind),
        }
    };
}
pub(crate) use key;
