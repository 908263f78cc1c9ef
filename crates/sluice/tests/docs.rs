//! The project's own documents: `docs/design.md` exists and is what every
//! reference points at, it names every built-in rule id and every flow
//! record field the code has, relative links in the Markdown files lead to
//! files that exist, the licence files match `Cargo.toml`'s `license`, no
//! placeholder `repository` URL, a changelog in Keep a Changelog form, and
//! the README's dashboard picture is there and small.

use std::{
    fs,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Source and documentation files of the repository (not build output,
/// not installed packages), at most 5,000.
fn text_files() -> Vec<PathBuf> {
    const SKIP: [&str; 4] = ["target", "node_modules", ".git", "corpus"];
    const EXT: [&str; 9] = ["rs", "md", "yaml", "yml", "toml", "mjs", "js", "html", "sh"];
    let mut out = Vec::new();
    let mut todo = vec![root()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !SKIP.contains(&name.as_str()) {
                    todo.push(p);
                }
            } else if p
                .extension()
                .is_some_and(|x| EXT.contains(&&*x.to_string_lossy()))
            {
                out.push(p);
            }
            assert!(
                out.len() < 5_000,
                "too many files under {}",
                root().display()
            );
        }
    }
    out
}

#[test]
fn references_point_at_docs_design_md() {
    assert!(
        root().join("docs/design.md").is_file(),
        "docs/design.md is missing"
    );
    // Built so that this file does not find itself.
    let stale = ["DESIGN", ".md"].concat();
    let hits: Vec<String> = text_files()
        .iter()
        .filter_map(|p| {
            let text = fs::read_to_string(p).ok()?;
            text.contains(&stale).then(|| p.display().to_string())
        })
        .collect();
    assert!(hits.is_empty(), "files still citing {stale}: {hits:?}");
}

#[test]
fn design_names_every_rule_id_and_record_field() {
    let design = read("docs/design.md");
    let policy = read("crates/sluice-policy/src/policy.rs");
    let ids: Vec<&str> = policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter(|l| l.contains(": &str = \""))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(ids.len() >= 10, "rule ids read from policy.rs: {ids:?}");
    for id in ids {
        assert!(
            design.contains(&format!("`{id}")),
            "docs/design.md does not name rule id {id}"
        );
    }
    let record = read("crates/sluice-observe/src/record.rs");
    let body = record
        .split("pub struct FlowRecord {")
        .nth(1)
        .and_then(|s| s.split("\n}").next())
        .expect("FlowRecord in record.rs");
    // Serialized fields: `name: Type,` lines, except those under
    // `#[serde(skip)]`.
    let mut fields = Vec::new();
    let mut skip = false;
    for l in body.lines().map(str::trim) {
        if l.starts_with("#[serde(skip)]") {
            skip = true;
        } else if l.ends_with(',') && !l.starts_with("//") && !l.starts_with('#') {
            let l = l.strip_prefix("pub ").unwrap_or(l);
            if !std::mem::take(&mut skip) {
                fields.extend(l.split(':').next());
            }
        }
    }
    assert!(fields.len() >= 30, "fields read from record.rs: {fields:?}");
    let section = design
        .split("## Flow records")
        .nth(1)
        .expect("a Flow records section");
    for f in fields {
        assert!(
            section.contains(&format!("`{f}`")),
            "docs/design.md does not name record field {f}"
        );
    }
}

#[test]
fn markdown_links_lead_to_files() {
    for doc in [
        "README.md",
        "CHANGELOG.md",
        "docs/design.md",
        "docs/architecture.md",
    ] {
        let text = read(doc);
        let base = root().join(doc).parent().unwrap().to_path_buf();
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.contains(' ') {
                continue;
            }
            assert!(
                base.join(target).exists(),
                "{doc} links to {target}, which does not exist"
            );
        }
    }
}

#[test]
fn licence_and_repository_match_cargo_toml() {
    let cargo = read("Cargo.toml");
    let license = cargo
        .lines()
        .find_map(|l| l.strip_prefix("license = "))
        .expect("license in the workspace Cargo.toml")
        .trim_matches('"');
    let files: Vec<(&str, &str)> = match license {
        "Apache-2.0" => vec![(
            "LICENSE",
            "Apache License\n                           Version 2.0",
        )],
        "MIT OR Apache-2.0" => vec![
            (
                "LICENSE-MIT",
                "Permission is hereby granted, free of charge",
            ),
            ("LICENSE-APACHE", "Apache License"),
        ],
        other => panic!("no check for licence {other}"),
    };
    for (file, words) in files {
        assert!(
            read(file).contains(words),
            "{file} is not the {license} text"
        );
    }
    for l in cargo.lines().filter(|l| l.starts_with("repository")) {
        assert!(
            l.contains("\"https://") && !l.contains(".invalid") && !l.contains("example."),
            "placeholder repository URL: {l}"
        );
    }
}

#[test]
fn changelog_has_an_unreleased_section() {
    let log = read("CHANGELOG.md");
    assert!(log.starts_with("# Changelog"));
    assert!(log.contains("keepachangelog.com"));
    let unreleased = log
        .split("## [Unreleased]")
        .nth(1)
        .expect("## [Unreleased]");
    assert!(unreleased.contains("### Added"));
}

#[test]
fn readme_shows_the_dashboard_picture() {
    let readme = read("README.md");
    assert!(
        readme.contains("](docs/dashboard.png)"),
        "README embeds docs/dashboard.png"
    );
    let png = fs::read(root().join("docs/dashboard.png")).expect("docs/dashboard.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() < 300 * 1024, "{} bytes, over 300 KiB", png.len());
}
