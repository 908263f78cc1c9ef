//! The README's configuration reference and the generated JSON Schema must
//! name the same keys, and each key's reload column must say what the
//! loader's key table declares, so the documentation cannot drift from the
//! code.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use serde_json::Value;

/// Every property path of the schema, as `zones[].allow[].host`.
fn schema_paths() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("schema")
        .output()
        .expect("run sluice schema");
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    let mut paths = BTreeSet::new();
    walk(&schema, &schema, "", &mut paths);
    paths
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or_default();
            &root["$defs"][name]
        }
        None => node,
    }
}

fn walk(root: &Value, node: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let node = resolve(root, node);
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(subs) = node.get(key).and_then(Value::as_array) {
            for s in subs {
                walk(root, s, prefix, out);
            }
        }
    }
    if let Some(items) = node.get("items") {
        let items = resolve(root, items);
        if items.get("properties").is_some() {
            let p = format!("{}[]", prefix.trim_end_matches('.'));
            walk(root, items, &format!("{p}."), out);
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let path = format!("{prefix}{k}");
            out.insert(path.clone());
            walk(root, v, &format!("{path}."), out);
        }
    }
}

/// The rows of the README's configuration reference table: key → cells.
fn readme_rows() -> BTreeMap<String, Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("read README.md");
    let section = readme
        .split("## Configuration reference")
        .nth(1)
        .expect("README has a configuration reference")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            (cells[0].trim_matches('`').to_owned(), cells)
        })
        .collect()
}

/// Keys in the first column of the README's configuration reference table.
fn readme_paths() -> BTreeSet<String> {
    readme_rows().into_keys().collect()
}

#[test]
fn readme_reference_matches_schema() {
    let schema = schema_paths();
    let readme = readme_paths();
    assert!(
        schema.len() > 30,
        "schema walk found too little: {schema:?}"
    );
    let undocumented: Vec<_> = schema.difference(&readme).collect();
    let unknown: Vec<_> = readme.difference(&schema).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from README: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "README documents keys the schema lacks: {unknown:?}"
    );
}

/// The reload column says, for every key, what `sluice_policy::keys()`
/// declares (the same table the loader reads by and `run.rs` reports from):
/// "reload applies", "restart needed", or "per key" for a mapping whose
/// keys differ.
#[test]
fn readme_reload_column_matches_the_key_table() {
    let rows = readme_rows();
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("read README.md");
    assert!(
        header.contains("| key | type | default | reload | meaning |"),
        "the reference table lost its reload column"
    );
    let mut problems = Vec::new();
    let keys = sluice_policy::keys();
    assert!(keys.len() > 30, "key table found too little: {keys:?}");
    for k in &keys {
        let want = k.reload.map_or("per key", sluice_policy::Reload::as_str);
        match rows.get(&k.path) {
            None => problems.push(format!("{}: missing from README", k.path)),
            Some(cells) if cells.get(3).map(String::as_str) != Some(want) => {
                problems.push(format!(
                    "{}: README says {:?}, the key table says {want:?}",
                    k.path,
                    cells.get(3)
                ))
            }
            Some(_) => {}
        }
    }
    let known: BTreeSet<&str> = keys.iter().map(|k| k.path.as_str()).collect();
    for path in rows.keys() {
        if !known.contains(path.as_str()) {
            problems.push(format!("{path}: in README, not in the key table"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
