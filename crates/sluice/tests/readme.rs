//! The README's configuration reference and the generated JSON Schema must
//! name the same keys, so the documentation cannot drift from the code.

use std::{collections::BTreeSet, process::Command};

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

/// Keys in the first column of the README's configuration reference table.
fn readme_paths() -> BTreeSet<String> {
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
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
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
