//! `sluice validate` and `sluice check` run as an operator runs them: the
//! built binary, real files, exit codes and `--json` output.
//!
//! Layout: `validate` tests first (examples, the embedded default, every
//! malformed case at once), then the `check` decision table against
//! `fixtures/check.yaml`.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

mod util;

use std::{fs, path::Path};

use serde_json::Value;
use util::{code, fixture, scratch_file, sluice, stderr, stdout, workspace_root};

// === validate ===

fn validate(path: &Path) -> std::process::Output {
    sluice(["validate".as_ref(), "-c".as_ref(), path.as_os_str()])
}

#[test]
fn validate_accepts_every_example() {
    let dir = workspace_root().join("examples");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let out = validate(&path);
            assert_eq!(
                code(&out),
                0,
                "{} must be valid:\n{}",
                path.display(),
                stderr(&out)
            );
            assert!(stdout(&out).contains(": ok ("), "{}", stdout(&out));
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected the examples in {}", dir.display());
}

#[test]
fn validate_accepts_the_embedded_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/default.yaml");
    let out = validate(&path);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok (1 zones, 0 users"),
        "{}",
        stdout(&out)
    );
}

/// An empty file is what a truncating writer leaves behind; loaded, it
/// would deny every request (the hardening issue's first fault). `validate`
/// refuses it as start-up and reload do; `zones: []` says it on purpose.
#[test]
fn validate_refuses_a_file_without_zones() {
    for (name, text, fragment) in [
        ("empty.yaml", "", "the configuration is empty"),
        (
            "comment-only.yaml",
            "# nothing yet\n",
            "the configuration is empty",
        ),
        (
            "no-zones.yaml",
            "mode: open\n",
            "no `zones` in the configuration",
        ),
    ] {
        let path = scratch_file(name, text);
        let out = validate(&path);
        assert_eq!(code(&out), 1, "{name}: {}", stdout(&out));
        let got = positioned(&stderr(&out), &path.display().to_string());
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert_eq!((got[0].0, got[0].1), (1, 1), "{name}");
        assert!(got[0].2.contains(fragment), "{name}: {}", got[0].2);
    }
    let out = validate(&scratch_file(
        "deny-all.yaml",
        "listen:\n  http: 127.0.0.1:0\nzones: []\n",
    ));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("ok (0 zones, 0 users"));
}

/// One expected error: line, column and a fragment of its message.
#[derive(Debug)]
struct Expected {
    line: usize,
    column: usize,
    fragment: String,
}

/// Reads the `#! @COL fragment @COL fragment` markers of a fixture.
fn markers(text: &str) -> Vec<Expected> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((_, spec)) = line.split_once("#!").filter(|_| !line.starts_with('#')) else {
            continue;
        };
        for item in spec.split('@').skip(1) {
            let (col, fragment) = item.trim().split_once(' ').unwrap();
            out.push(Expected {
                line: i + 1,
                column: col.parse().unwrap(),
                fragment: fragment.trim().to_owned(),
            });
        }
    }
    out
}

/// Splits `file:line:column: message` lines printed by `validate`.
fn positioned(stderr: &str, file: &str) -> Vec<(usize, usize, String)> {
    stderr
        .lines()
        .map(|l| {
            let rest = l
                .strip_prefix(file)
                .and_then(|r| r.strip_prefix(':'))
                .unwrap_or_else(|| panic!("not a positioned error: {l}"));
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().unwrap().parse().unwrap();
            let column = parts.next().unwrap().parse().unwrap();
            let msg = parts.next().unwrap().trim().to_owned();
            (line, column, msg)
        })
        .collect()
}

#[test]
fn validate_reports_every_malformed_case_at_once_with_positions() {
    let path = fixture("invalid.yaml");
    let expected = markers(&fs::read_to_string(&path).unwrap());
    assert!(expected.len() > 60, "the fixture lost its markers");
    let out = validate(&path);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    let got = positioned(&stderr(&out), &path.display().to_string());
    let mut problems = Vec::new();
    for e in &expected {
        if !got
            .iter()
            .any(|(l, c, m)| *l == e.line && *c == e.column && m.contains(&e.fragment))
        {
            problems.push(format!("missing {}:{}: …{}…", e.line, e.column, e.fragment));
        }
    }
    for (l, c, m) in &got {
        if !expected
            .iter()
            .any(|e| e.line == *l && e.column == *c && m.contains(&e.fragment))
        {
            problems.push(format!("unexpected {l}:{c}: {m}"));
        }
    }
    assert_eq!(got.len(), expected.len(), "{}", problems.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Printed in file order.
    let mut sorted = got.clone();
    sorted.sort_by_key(|(l, c, _)| (*l, *c));
    assert_eq!(got, sorted);
}

#[test]
fn validate_positions_yaml_syntax_errors() {
    for (name, text, line, column, fragment) in [
        (
            "unclosed.yaml",
            "mode: enforce\nzones: [a\n",
            3,
            1,
            "expected ',' or ']'",
        ),
        (
            "colon.yaml",
            "mode: enforce\n  x: : :\n",
            2,
            4,
            "mapping values are not allowed",
        ),
        (
            "dupkey.yaml",
            "mode: enforce\nlog: {}\nmode: open\n",
            3,
            1,
            "duplicated key",
        ),
        (
            "quote.yaml",
            "log:\n  flows: 'stdout\n",
            2,
            10,
            "quoted scalar",
        ),
    ] {
        let path = scratch_file(name, text);
        let out = validate(&path);
        assert_eq!(code(&out), 1, "{name}");
        let got = positioned(&stderr(&out), &path.display().to_string());
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        let (l, c, m) = &got[0];
        assert_eq!((*l, *c), (line, column), "{name}: {m}");
        assert!(m.contains(fragment), "{name}: {m}");
    }
}

#[test]
fn validate_rejects_several_documents() {
    let path = scratch_file("two-docs.yaml", "mode: enforce\n---\nmode: open\n");
    let out = validate(&path);
    assert_eq!(code(&out), 1);
    let got = positioned(&stderr(&out), &path.display().to_string());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (3, 1));
    assert!(got[0].2.contains("one YAML document"));
}

/// What `run` refuses before it binds anything, `validate` refuses too, in
/// the same words, each naming the file (and the path at fault).
#[test]
fn validate_finds_what_run_rejects() {
    let not_a_dir = scratch_file("flows-parent-is-a-file", "x\n");
    let cases = [
        (
            "no-listener.yaml",
            "zones: []\n".to_owned(),
            "no-listener.yaml: no listener configured".to_owned(),
        ),
        (
            "same-address.yaml",
            "listen:\n  http: 127.0.0.1:3128\n  socks5: 127.0.0.1:3128\nzones: []\n".to_owned(),
            "same-address.yaml:3:11: listen.socks5 (127.0.0.1:3128) and listen.http (127.0.0.1:3128) cannot both bind".to_owned(),
        ),
        (
            "flows-missing-dir.yaml",
            "listen:\n  http: 127.0.0.1:0\nlog:\n  flows: /nonexistent-sluice-dir/flows.log\nzones: []\n".to_owned(),
            "flows-missing-dir.yaml: log.flows `/nonexistent-sluice-dir/flows.log`: directory /nonexistent-sluice-dir does not exist".to_owned(),
        ),
        (
            "flows-not-a-dir.yaml",
            format!(
                "listen:\n  http: 127.0.0.1:0\nlog:\n  flows: {}/flows.log\nzones: []\n",
                not_a_dir.display()
            ),
            "is not a directory".to_owned(),
        ),
    ];
    for (name, text, want) in &cases {
        let path = scratch_file(name, text);
        let out = validate(&path);
        assert_eq!(code(&out), 1, "{name}: {}", stdout(&out));
        assert!(
            stderr(&out).contains(want.as_str()),
            "{name}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).starts_with(&path.display().to_string()),
            "{name}: {}",
            stderr(&out)
        );
        // `run` fails the same way, before binding anything.
        let out = sluice(["run".as_ref(), "-c".as_ref(), path.as_os_str()]);
        assert_eq!(code(&out), 2, "{name}");
        assert!(
            stderr(&out).contains(want.as_str()),
            "{name}: {}",
            stderr(&out)
        );
    }
}

/// A flow-log directory the gateway's user cannot write: refused by
/// `validate` and by `run` before binding. Root writes anywhere, so as root
/// both run as `nobody` (setpriv); the directory is read-only to them.
#[test]
fn validate_and_run_refuse_an_unwritable_flow_log_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sluice-cli-tests/read-only");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let path = scratch_file(
        "flows-read-only.yaml",
        &format!(
            "listen:\n  http: 127.0.0.1:0\nlog:\n  flows: {}/flows.log\nzones: []\n",
            dir.display()
        ),
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    let want = format!(
        "log.flows `{}/flows.log`: directory {} is not writable",
        dir.display(),
        dir.display()
    );
    for (command, code_wanted) in [("validate", 1), ("run", 2)] {
        let mut cmd = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_sluice"),
            ]);
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        };
        let out = cmd.args([command, "-c"]).arg(&path).output().unwrap();
        assert_eq!(code(&out), code_wanted, "{command}: {}", stderr(&out));
        assert!(stderr(&out).contains(&want), "{command}: {}", stderr(&out));
    }
}

/// A file that loads but probably does not say what was meant: every
/// warning printed as `file:line:column: warning: …`, exit 0, or 1 with
/// `--strict`.
#[test]
fn validate_prints_warnings_and_fails_on_them_with_strict() {
    let text = "listen:\n  http: 127.0.0.1:0\nzones:\n  - name: a\n    allow:\n      - host: \"*.co.uk\"\n        ports: 443\n      - host: localhost\n        ports: [8000]\n      - host: api.example.com\n        ports: \"8000-8100\"\n";
    let path = scratch_file("warned.yaml", text);
    let file = path.display().to_string();
    let out = validate(&path);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok (1 zones, 0 users"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(", 2 warnings)"), "{}", stdout(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "{file}:6:15: warning: `*.co.uk` allows every name under the public suffix `co.uk`"
        )),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{file}:8:15: warning: `localhost` only ever means loopback"
        )),
        "{lines:?}"
    );
    let out = sluice([
        "validate".as_ref(),
        "--strict".as_ref(),
        "-c".as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warnings are errors with --strict"),
        "{}",
        stderr(&out)
    );
    // Without warnings, --strict changes nothing.
    let clean = scratch_file("clean.yaml", "listen:\n  http: 127.0.0.1:0\nzones: []\n");
    let out = sluice([
        "validate".as_ref(),
        "--strict".as_ref(),
        "-c".as_ref(),
        clean.as_os_str(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

/// A host rule written as a URL says so, instead of a message about IPv6.
#[test]
fn validate_explains_a_url_in_a_host_rule() {
    let path = scratch_file(
        "url-host.yaml",
        "listen:\n  http: 127.0.0.1:0\nzones:\n  - name: a\n    allow:\n      - host: https://api.github.com/\n        ports: [443]\n",
    );
    let out = validate(&path);
    assert_eq!(code(&out), 1);
    let got = positioned(&stderr(&out), &path.display().to_string());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (6, 15));
    assert!(
        got[0].2.contains("not a URL; write `host: api.github.com`"),
        "{}",
        got[0].2
    );
    assert!(!got[0].2.contains("IPv6"), "{}", got[0].2);
}

/// `sluice schema` says what `validate` says, as a real JSON Schema
/// validator (`check-jsonschema`, PyPI) reads it: every example and a file
/// of partial blocks and one-port lists pass both; each invalid file fails
/// both.
#[test]
fn the_schema_accepts_and_rejects_what_validate_does() {
    let schema = sluice(["schema"]);
    assert_eq!(code(&schema), 0);
    let schema = scratch_file("sluice.schema.json", &stdout(&schema));
    let json_schema = |file: &Path| {
        std::process::Command::new("check-jsonschema")
            .arg("--schemafile")
            .arg(&schema)
            .arg(file)
            .output()
            .expect("check-jsonschema (`pip install check-jsonschema`, see .ci/run)")
    };
    let mut valid: Vec<_> = fs::read_dir(workspace_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(valid.len() >= 2);
    valid.push(scratch_file(
        "schema-partial.yaml",
        "listen:\n  http: 127.0.0.1:0\nlimits:\n  max_connections: 100\nadmin:\n  window: 5m\nlog:\n  flows: stdout\ndns:\n  cache_size: 10\nusers:\n  - name: u\n    password_hash: $argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA\nzones:\n  - name: a\n    users: [u]\n    allow:\n      - host: a.example\n        ports: 443\n      - host: b.example\n        ports: \"8000-8100\"\n      - cidr: 198.51.100.0/24\n        ports: [\"443\", 80, \"1-2\"]\n      - host: c.example\n        ports: any\n    deny:\n      - host: d.example\n",
    ));
    for path in &valid {
        let out = validate(path);
        assert_eq!(
            code(&out),
            0,
            "validate {}: {}",
            path.display(),
            stderr(&out)
        );
        let out = json_schema(path);
        assert!(
            out.status.success(),
            "schema {}: {}{}",
            path.display(),
            stdout(&out),
            stderr(&out)
        );
    }
    let head = "listen:\n  http: 127.0.0.1:0\n";
    for (name, body) in [
        (
            "allow-without-ports",
            "zones:\n  - name: a\n    allow:\n      - host: a.example\n",
        ),
        ("unknown-key", "limits:\n  max_conections: 5\nzones: []\n"),
        ("bad-enum", "mode: enforcing\nzones: []\n"),
        (
            "host-and-cidr",
            "zones:\n  - name: a\n    deny:\n      - host: a.example\n        cidr: 10.0.0.0/8\n",
        ),
        (
            "neither-host-nor-cidr",
            "zones:\n  - name: a\n    deny:\n      - ports: [22]\n",
        ),
        ("zone-without-name", "zones:\n  - mode: open\n"),
        ("no-zones", "mode: open\n"),
        (
            "port-zero",
            "zones:\n  - name: a\n    allow:\n      - host: a.example\n        ports: [0]\n",
        ),
        (
            "port-too-big",
            "zones:\n  - name: a\n    allow:\n      - host: a.example\n        ports: 70000\n",
        ),
        ("user-without-hash", "users:\n  - name: u\nzones: []\n"),
        (
            "ports-empty",
            "zones:\n  - name: a\n    allow:\n      - host: a.example\n        ports: []\n",
        ),
    ] {
        let path = scratch_file(&format!("schema-{name}.yaml"), &format!("{head}{body}"));
        let out = validate(&path);
        assert_eq!(
            code(&out),
            1,
            "validate must reject {name}: {}",
            stdout(&out)
        );
        let out = json_schema(&path);
        assert_eq!(
            out.status.code(),
            Some(1),
            "the schema must reject {name}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

// === check ===

/// `sluice check` against `fixtures/check.yaml`, one case a line:
///
/// `from user target addrs exit verdict enforced zone rule [field=value…]`
///
/// `-` means none (no `--user`, no `--addr`, zone null); `addrs` is a comma
/// list passed as repeated `--addr`. Exit 2 cases print no decision, so their
/// last four columns are `-`. Extra `field=value` pairs check other `--json`
/// fields (lists are comma-joined).
const CASES: &str = r#"
# --- exact names, case, trailing dots ------------------------------------------------------------
10.0.1.5  -  api.example.com:443                 -  0 allow true  web  web/allow/1   pending=guard
10.0.1.5  -  api.example.com:444                 -  1 deny  true  web  default
10.0.1.5  -  x.api.example.com:443               -  1 deny  true  web  default
10.0.1.5  -  API.Example.COM:443                 -  0 allow true  web  web/allow/1   destination=api.example.com
10.0.1.5  -  api.example.com.:443                -  0 allow true  web  web/allow/1   destination=api.example.com
10.0.1.5  -  api.example.com..:443               -  1 deny  true  web  default/invalid-destination
10.0.1.5  -  https://api.example.com/x?y         -  0 allow true  web  web/allow/1   port=443
10.0.1.5  -  http://api.example.com/             -  1 deny  true  web  default       port=80
10.0.1.5  -  mixed.case.example:443              -  0 allow true  web  web/allow/12
10.0.1.5  -  MIXED.case.EXAMPLE.:443             -  0 allow true  web  web/allow/12
# --- wildcards: *.cdn.example matches a.x and a.b.x, not x itself, not ax ------------------------
10.0.1.5  -  a.cdn.example:443                   -  0 allow true  web  cdn
10.0.1.5  -  a.b.cdn.example:443                 -  0 allow true  web  cdn
10.0.1.5  -  A.CDN.Example.:443                  -  0 allow true  web  cdn           destination=a.cdn.example
10.0.1.5  -  cdn.example:443                     -  1 deny  true  web  default
10.0.1.5  -  acdn.example:443                    -  1 deny  true  web  default
10.0.1.5  -  a.cdn.example.evil.test:443         -  1 deny  true  web  default
10.0.1.5  -  x.corp.example:443                  -  0 allow true  web  web/allow/10
10.0.1.5  -  corp.example:443                    -  1 deny  true  web  default
# --- IDN: rules and requests meet as punycode ---------------------------------------------------
10.0.1.5  -  bücher.example:443                  -  0 allow true  web  web/allow/3   destination=xn--bcher-kva.example
10.0.1.5  -  BÜCHER.example:443                  -  0 allow true  web  web/allow/3
10.0.1.5  -  xn--bcher-kva.example:443           -  0 allow true  web  web/allow/3
10.0.1.5  -  buecher.example:443                 -  1 deny  true  web  default
10.0.1.5  -  münchen.example:443                 -  0 allow true  web  web/allow/13
10.0.1.5  -  xn--mnchen-3ya.example:443          -  0 allow true  web  web/allow/13
# --- ports and ranges ---------------------------------------------------------------------------
10.0.1.5  -  a.cdn.example:8000                  -  0 allow true  web  cdn
10.0.1.5  -  a.cdn.example:8100                  -  0 allow true  web  cdn
10.0.1.5  -  a.cdn.example:7999                  -  1 deny  true  web  default
10.0.1.5  -  a.cdn.example:8101                  -  1 deny  true  web  default
10.0.1.5  -  x.corp.example:1                    -  0 allow true  web  web/allow/10
10.0.1.5  -  x.corp.example:65535                -  0 allow true  web  web/allow/10
10.0.1.5  -  x.corp.example:0                    -  2 -     -     -    -
10.0.1.5  -  x.corp.example:65536                -  2 -     -     -    -
10.0.1.5  -  x.corp.example:0x50                 -  2 -     -     -    -
10.0.1.5  -  x.corp.example:+443                 -  2 -     -     -    -
10.0.1.5  -  x.corp.example:443x                 -  2 -     -     -    -
10.0.1.5  -  x.corp.example:                     -  2 -     -     -    -
10.0.1.5  -  a@x.corp.example:443                -  2 -     -     -    -
10.0.1.5  -  http://u:p@x.corp.example/          -  2 -     -     -    -
10.0.1.5  -  x.corp.example                      -  2 -     -     -    -
# --- numeric IP forms: judged as addresses, never as names --------------------------------------
10.0.1.5  -  93.184.216.10:443                   -  0 allow true  web  web/allow/4
10.0.1.5  -  1572395018:443                      -  0 allow true  web  web/allow/4   destination=93.184.216.10
10.0.1.5  -  0x5db8d80a:443                      -  0 allow true  web  web/allow/4   destination=93.184.216.10
10.0.1.5  -  0135.0270.0330.012:443              -  0 allow true  web  web/allow/4   destination=93.184.216.10
10.0.1.5  -  93.184.55306:443                    -  0 allow true  web  web/allow/4   destination=93.184.216.10
10.0.1.5  -  ９３.１８４.２１６.１０:443           -  0 allow true  web  web/allow/4   destination=93.184.216.10
10.0.1.5  -  2130706433:443                      -  1 deny  true  web  guard/special-address destination=127.0.0.1
10.0.1.5  -  0x7f000001:443                      -  1 deny  true  web  guard/special-address destination=127.0.0.1
10.0.1.5  -  0177.0.0.1:443                      -  1 deny  true  web  guard/special-address destination=127.0.0.1
10.0.1.5  -  127.1:443                           -  1 deny  true  web  guard/special-address destination=127.0.0.1
10.0.1.5  -  0x7f.1:8443                         -  1 deny  true  web  guard/special-address destination=127.0.0.1
10.0.1.5  -  １２７.０.０.１:443                 -  1 deny  true  web  guard/special-address destination=127.0.0.1
10.0.1.5  -  256.1.1.1:443                       -  1 deny  true  web  default/invalid-destination
10.0.1.5  -  4294967296:443                      -  1 deny  true  web  default/invalid-destination
10.0.1.5  -  cdn.example.123:443                 -  1 deny  true  web  default/invalid-destination
# --- CIDR edges, v4 and v6: first and last address in, the neighbours out -----------------------
10.0.1.5  -  93.184.216.0:443                    -  0 allow true  web  web/allow/4
10.0.1.5  -  93.184.216.255:443                  -  0 allow true  web  web/allow/4
10.0.1.5  -  93.184.215.255:443                  -  1 deny  true  web  default
10.0.1.5  -  93.184.217.0:443                    -  1 deny  true  web  default
10.0.1.5  -  93.184.216.10:444                   -  1 deny  true  web  default
10.0.1.5  -  [2606:4700::]:443                   -  0 allow true  web  web/allow/5
10.0.1.5  -  [2606:4700:ffff:ffff:ffff:ffff:ffff:ffff]:443 - 0 allow true web web/allow/5
10.0.1.5  -  [2606:46ff:ffff:ffff:ffff:ffff:ffff:ffff]:443 - 1 deny true  web default
10.0.1.5  -  [2606:4701::]:443                   -  1 deny  true  web  default
10.0.1.5  -  [2606:4700::1%eth0]:443             -  0 allow true  web  web/allow/5   destination=2606:4700::1
10.0.1.5  -  [::ffff:93.184.216.10]:443          -  0 allow true  web  web/allow/4
# --- guard lifting: only a cidr allow inside special space, for its ports -----------------------
10.0.1.5  -  10.20.0.0:5432                      -  0 allow true  web  internal-db
10.0.1.5  -  10.20.255.255:5432                  -  0 allow true  web  internal-db
10.0.1.5  -  10.19.255.255:5432                  -  1 deny  true  web  guard/special-address
10.0.1.5  -  10.21.0.0:5432                      -  1 deny  true  web  guard/special-address
10.0.1.5  -  10.20.0.1:5433                      -  1 deny  true  web  guard/special-address
10.0.1.5  -  [::ffff:10.20.0.1]:5432             -  0 allow true  web  internal-db
10.0.1.5  -  169.254.169.254:80                  -  0 allow true  web  metadata
10.0.1.5  -  169.254.169.253:80                  -  1 deny  true  web  guard/special-address
10.0.1.5  -  169.254.169.254:443                 -  1 deny  true  web  guard/special-address
10.0.1.5  -  100.64.0.0:1                        -  0 allow true  web  web/allow/16
10.0.1.5  -  100.127.255.255:65535               -  0 allow true  web  web/allow/16
10.0.1.5  -  100.64.0.1:2                        -  1 deny  true  web  guard/special-address
10.0.1.5  -  100.128.0.0:1                       -  1 deny  true  web  default
10.0.1.5  -  [2001:db8:abcd::]:443               -  0 allow true  web  doc-v6
10.0.1.5  -  [2001:db8:abcd:ffff:ffff:ffff:ffff:ffff]:443 - 0 allow true web doc-v6
10.0.1.5  -  [2001:db8:abce::]:443               -  1 deny  true  web  guard/special-address
10.0.1.5  -  8.8.8.8:8443                        -  0 allow true  web  everything-v4
10.0.1.5  -  10.0.0.1:8443                       -  1 deny  true  web  guard/special-address
10.0.1.5  -  127.0.0.1:8443                      -  1 deny  true  web  guard/special-address
10.0.1.5  -  [2606:4700::1]:8443                 -  0 allow true  web  everything-v6
10.0.1.5  -  [::1]:8443                          -  1 deny  true  web  guard/special-address
10.0.1.5  -  [::]:8443                           -  1 deny  true  web  guard/special-address
10.0.1.5  -  [fd00:ec2::254]:8443                -  1 deny  true  web  guard/special-address
10.0.1.5  -  [fe80::1%eth0]:8443                 -  1 deny  true  web  guard/special-address
10.0.1.5  -  app.localhost:80                    -  1 deny  true  web  guard/special-address
10.0.1.5  -  localhost:80                        -  1 deny  true  web  guard/special-address
10.0.1.5  -  LOCALHOST.:443                      -  1 deny  true  web  guard/special-address
10.0.1.5  -  a.b.localhost:443                   -  1 deny  true  web  guard/special-address
10.0.1.5  -  localhost.example:443               -  1 deny  true  web  default
10.0.1.5  -  api.example.com:443                 127.0.0.1      1 deny true web guard/special-address
10.0.1.5  -  api.example.com:443                 10.20.0.5      1 deny true web guard/special-address
10.0.1.5  -  x.corp.example:5433                 10.20.0.5      1 deny true web guard/special-address
10.0.1.5  -  x.corp.example:8443                 10.0.0.1       1 deny true web guard/special-address
# --- IPv6 forms that embed a special IPv4 (mapped, compatible, NAT64, 6to4, Teredo) --------------
10.0.1.5  -  [::ffff:127.0.0.1]:8443             -  1 deny  true  web  guard/special-address
10.0.1.5  -  [::ffff:8.8.8.8]:8443               -  0 allow true  web  everything-v4
10.0.1.5  -  [::7f00:1]:8443                     -  1 deny  true  web  guard/special-address
10.0.1.5  -  [64:ff9b::7f00:1]:8443              -  1 deny  true  web  guard/special-address
10.0.1.5  -  [64:ff9b::a9fe:a9fe]:80             -  1 deny  true  web  guard/special-address
10.0.1.5  -  [64:ff9b::808:808]:8443             -  0 allow true  web  everything-v6
10.0.1.5  -  [2002:7f00:1::1]:8443               -  1 deny  true  web  guard/special-address
10.0.1.5  -  [2002:a00:1::1]:8443                -  1 deny  true  web  guard/special-address
10.0.1.5  -  [2002:808:808::1]:8443              -  0 allow true  web  everything-v6
10.0.1.5  -  [2001:0:4136:e378:8000:63bf:80ff:fffe]:8443 - 1 deny true web guard/special-address
10.0.1.5  -  [2001:0:a00:1::f7f7:f7f7]:8443      -  1 deny  true  web  guard/special-address
10.0.1.5  -  [2001:0:808:808::f7f7:f7f7]:8443    -  0 allow true  web  everything-v6
10.0.1.5  -  [3fff::1]:8443                      -  1 deny  true  web  guard/special-address
# --- precedence: deny before allow; the first rule in file order is reported --------------------
10.0.1.5  -  bad.cdn.example:443                 -  1 deny  true  web  web/deny/1
10.0.1.5  -  bad.cdn.example:9999                -  1 deny  true  web  web/deny/1
10.0.1.5  -  93.184.216.34:443                   -  1 deny  true  web  web/deny/2
10.0.1.5  -  93.184.216.33:443                   -  0 allow true  web  web/allow/4
10.0.1.5  -  x.evil.example:443                  -  1 deny  true  web  evil-wide
10.0.1.5  -  y.x.evil.example:443                -  1 deny  true  web  evil-wide
10.0.1.5  -  evil.example:443                    -  1 deny  true  web  default
10.0.1.5  -  img.cdn.example:443                 -  0 allow true  web  cdn
10.0.1.5  -  img.cdn.example:9000                -  0 allow true  web  img
10.0.1.5  -  a.cdn.example:8080                  -  1 deny  true  web  no-8080
10.0.1.5  -  a.cdn.example:8081                  -  0 allow true  web  cdn
# --- two phases: names pending on cidr rules, every address checked -----------------------------
10.0.1.5  -  unknown.example:443                 -  1 deny  true  web  default       pending=cidr_allow
10.0.1.5  -  unknown.example:443                 93.184.216.10  0 allow true web web/allow/4 allowed_addrs=93.184.216.10
10.0.1.5  -  unknown.example:443                 93.184.217.1   1 deny true web default allowed_addrs=
10.0.1.5  -  unknown.example:443                 93.184.216.34  1 deny true web web/deny/2
10.0.1.5  -  unknown.example:443                 10.0.0.1,93.184.216.10 0 allow true web web/allow/4 allowed_addrs=93.184.216.10
10.0.1.5  -  unknown.example:443                 [2606:4700::5] 0 allow true web web/allow/5
10.0.1.5  -  unknown.example:5432                10.20.0.9      0 allow true web internal-db
10.0.1.5  -  api.example.com:443                 93.184.216.34  1 deny true web web/deny/2
10.0.1.5  -  api.example.com:443                 8.8.8.8        0 allow true web web/allow/1 pending=nothing
10.0.1.5  -  api.example.com:443                 127.0.0.1,8.8.8.8 0 allow true web web/allow/1 allowed_addrs=8.8.8.8
10.0.1.5  -  bad.cdn.example:443                 8.8.8.8        1 deny true web web/deny/1 allowed_addrs=
# --- open mode (zone app): a blocklist, guard still enforced ------------------------------------
10.0.2.5  alice  anything.example:443            -  0 allow true  app  default
10.0.2.5  alice  x.pastebin.com:443              -  1 deny  true  app  app/deny/1
10.0.2.5  alice  8.8.4.4:53                      -  1 deny  true  app  app/deny/2
10.0.2.5  alice  8.8.4.4:443                     -  0 allow true  app  default
10.0.2.5  alice  10.0.0.1:80                     -  1 deny  true  app  guard/special-address
10.0.2.5  alice  localhost:80                    -  1 deny  true  app  guard/special-address
10.0.2.5  alice  anything.example:53             8.8.4.4        1 deny true app app/deny/2
10.0.2.5  alice  anything.example:443            127.0.0.1      1 deny true app guard/special-address
10.0.2.5  alice  1.1.1.1:443                     -  1 deny  true  app  app/deny/3
10.0.2.5  alice  [::ffff:1.1.1.255]:443          -  1 deny  true  app  app/deny/3
10.0.2.5  alice  anything.example:443            1.1.1.1        1 deny true app app/deny/3
10.0.2.5  alice  1.1.2.0:443                     -  0 allow true  app  default
# --- report mode (zone staging): would-be denials exit 1 with enforced false --------------------
10.0.2.5  -  ok.example:443                      -  0 allow true  staging staging/allow/1
10.0.2.5  -  nothing.example:443                 -  1 deny  false staging default
10.0.2.5  -  blocked.example:443                 -  1 deny  false staging staging/deny/1
10.0.2.5  -  8.8.8.8:443                         -  1 deny  false staging default
10.0.2.5  -  93.184.216.1:443                    -  0 allow true  staging staging/allow/2
10.0.2.5  -  127.0.0.1:443                       -  1 deny  true  staging guard/special-address
10.0.2.5  -  localhost:443                       -  1 deny  true  staging guard/special-address
10.0.2.5  -  nothing.example:443                 93.184.216.1   0 allow true  staging staging/allow/2
10.0.2.5  -  nothing.example:443                 8.8.8.8        1 deny  false staging default allowed_addrs=8.8.8.8
10.0.2.5  -  blocked.example:443                 8.8.8.8        1 deny  false staging staging/deny/1
10.0.2.5  -  blocked.example:443                 10.0.0.1       1 deny  true  staging guard/special-address
# --- zone selection: by source, by user, by both, first in file order, none ---------------------
10.0.1.0  -  api.example.com:443                 -  0 allow true  web  web/allow/1
10.0.1.255 - api.example.com:443                 -  0 allow true  web  web/allow/1
10.0.0.255 - api.example.com:443                 -  1 deny  true  -    default/no-zone auth_required=true
::ffff:10.0.1.5 - api.example.com:443            -  0 allow true  web  web/allow/1
2001:db8:1::5 - api.example.com:443              -  0 allow true  web  web/allow/1
2001:db8:1:0:ffff:ffff:ffff:ffff - api.example.com:443 - 0 allow true web web/allow/1
2001:db8:1:1:: - api.example.com:443             -  1 deny  true  -    default/no-zone
2001:db8:2:ffff::1 - api.example.com:443         -  1 deny  true  lab  default
2001:db8:2::1 - [2606:4700::1]:443               -  1 deny  true  lab  default
2001:db8:2::1 - [::1]:443                        -  1 deny  true  lab  guard/special-address
10.0.2.5  alice      crates.io:443               -  0 allow true  app  default  mode=open
10.0.2.5  bob        crates.io:443               -  1 deny  false staging default mode=report
10.0.2.0  -          ok.example:443              -  0 allow true  staging staging/allow/1
192.0.2.1 ci-runner  crates.io:443               -  0 allow true  ci   ci/allow/2
192.0.2.1 ci-runner  static.crates.io:443        -  0 allow true  ci   ci/allow/1
192.0.2.1 ci-runner  api.example.com:443         -  1 deny  true  ci   default
192.0.2.1 alice      crates.io:443               -  0 allow true  ci   ci/allow/2
10.0.1.5  ci-runner  crates.io:443               -  1 deny  true  web  default
192.0.2.1 -          crates.io:443               -  1 deny  true  -    default/no-zone auth_required=true
192.0.2.1 bob        crates.io:443               -  1 deny  true  -    default/no-zone auth_required=false
192.0.2.1 nobody     crates.io:443               -  1 deny  true  -    default/no-zone
192.0.2.1 -          crates.io:443               8.8.8.8  1 deny true  -  default/no-zone allowed_addrs=
10.0.4.1  -          crates.io:443               -  0 allow true  mapped default
::ffff:10.0.4.255 -  crates.io:443               -  0 allow true  mapped default
10.0.5.0  -          crates.io:443               -  1 deny  true  -    default/no-zone
"#;

/// A JSON value as the table writes it.
fn as_cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(as_cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[test]
fn check_decision_table() {
    let config = fixture("check.yaml");
    let mut cases = 0;
    let mut failures = Vec::new();
    for (n, line) in CASES.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        cases += 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(
            cols.len() >= 9,
            "table line {}: too few columns: {line}",
            n + 1
        );
        let (from, user, target, addrs) = (cols[0], cols[1], cols[2], cols[3]);
        let want_exit: i32 = cols[4].parse().unwrap();
        let mut args: Vec<String> = vec!["check".into(), "-c".into()];
        args.push(config.display().to_string());
        args.extend(["--json".into(), "--from".into(), from.into()]);
        if user != "-" {
            args.extend(["--user".into(), user.into()]);
        }
        if addrs != "-" {
            for a in addrs.split(',') {
                args.extend(["--addr".into(), a.trim_matches(['[', ']']).into()]);
            }
        }
        args.push(target.into());
        let out = sluice(&args);
        let mut fail = |what: String| failures.push(format!("line {}: {line}\n    {what}", n + 1));
        if code(&out) != want_exit {
            fail(format!(
                "exit {} (want {want_exit})\n    stdout: {}    stderr: {}",
                code(&out),
                stdout(&out),
                stderr(&out)
            ));
            continue;
        }
        if want_exit == 2 {
            assert_eq!(&cols[5..9], ["-"; 4], "table line {}", n + 1);
            if !stdout(&out).is_empty() || stderr(&out).is_empty() {
                fail(format!("a usage error prints no decision: {out:?}"));
            }
            continue;
        }
        let json: Value = match serde_json::from_str(&stdout(&out)) {
            Ok(v) => v,
            Err(e) => {
                fail(format!("not JSON ({e}): {}", stdout(&out)));
                continue;
            }
        };
        let mut checks = vec![
            ("verdict", cols[5]),
            ("enforced", cols[6]),
            ("zone", cols[7]),
            ("rule", cols[8]),
        ];
        for extra in &cols[9..] {
            let (k, v) = extra
                .split_once('=')
                .unwrap_or_else(|| panic!("table line {}: `{extra}` is not field=value", n + 1));
            checks.push((k, v));
        }
        for (field, want) in checks {
            let got = json.get(field).map(as_cell);
            if got.as_deref() != Some(want) {
                fail(format!(
                    "{field} = {got:?} (want {want:?}); reason: {}",
                    json["reason"]
                ));
            }
        }
        // The exit code follows the verdict, report mode included.
        let allow = json["verdict"] == "allow";
        if allow != (want_exit == 0) {
            fail(format!("exit {want_exit} disagrees with verdict"));
        }
    }
    assert!(cases >= 80, "the table shrank to {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn check_exits_2_on_a_configuration_error() {
    let path = scratch_file("check-bad.yaml", "mode: sometimes\n");
    let out = sluice([
        "check".as_ref(),
        "-c".as_ref(),
        path.as_os_str(),
        "--from".as_ref(),
        "10.0.0.1".as_ref(),
        "example.com:443".as_ref(),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains(":1:7: expected mode"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_exits_2_on_usage_errors() {
    let config = fixture("check.yaml");
    for args in [
        vec!["--from", "not-an-ip", "example.com:443"],
        vec!["--from", "10.0.1.5", "ftp://example.com/"],
        vec![
            "--from",
            "10.0.1.5",
            "--addr",
            "10.0.0.1",
            "--resolve",
            "example.com:443",
        ],
        vec!["example.com:443"],
    ] {
        let mut full = vec!["check", "-c", config.to_str().unwrap()];
        full.extend(&args);
        let out = sluice(&full);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
}

#[test]
fn check_text_output_names_the_pending_phase() {
    let text = check_text_denied("unknown.example:443");
    assert!(
        text.starts_with("unknown.example:443: deny zone=web mode=enforce rule=default"),
        "{text}"
    );
    assert!(text.contains("pending: phase two"), "{text}");
}

#[test]
fn check_text_output_brackets_an_ipv6_destination() {
    let text = check_text_denied("[::1]:8443");
    assert!(text.starts_with("[::1]:8443: deny "), "{text}");
}

/// `sluice check`'s text output for `target` from 10.0.1.5 in
/// check.yaml, which must deny it (exit 1).
fn check_text_denied(target: &str) -> String {
    let config = fixture("check.yaml");
    let out = sluice([
        "check",
        "-c",
        config.to_str().unwrap(),
        "--from",
        "10.0.1.5",
        target,
    ]);
    assert_eq!(code(&out), 1, "{target}");
    stdout(&out)
}

#[test]
fn check_says_when_a_rule_matches_the_host_but_not_the_port() {
    let config = fixture("check.yaml");
    let run = |target: &str, json: bool| {
        let mut args = vec![
            "check",
            "-c",
            config.to_str().unwrap(),
            "--from",
            "10.0.1.5",
        ];
        if json {
            args.push("--json");
        }
        args.push(target);
        sluice(args)
    };
    let out = run("api.example.com:8443", false);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(
        text.contains(
            "note: rule web/allow/1 (host api.example.com ports [443]) matches api.example.com but not port 8443"
        ),
        "{text}"
    );
    let v: Value = serde_json::from_str(&stdout(&run("x.cdn.example:9000", true))).unwrap();
    assert_eq!(v["port_miss"]["rule"], "cdn", "{v}");
    // Allowed, or no rule for the host at all: no note.
    let v: Value = serde_json::from_str(&stdout(&run("api.example.com:443", true))).unwrap();
    assert!(v.get("port_miss").is_none(), "{v}");
    assert!(!stdout(&run("unknown.example:443", false)).contains("note:"));
}

/// `check --resolve` asks the resolver the gateway would ask
/// (`dns.upstreams`), not the system's: a name only the configured
/// upstream knows resolves, and its address decides phase two; a silent
/// upstream fails within `dns.upstream_timeout`, not the system's timeouts.
#[test]
fn check_resolve_uses_the_configured_resolver() {
    let dns = sluice_testkit::FixtureDns::stub(&[("only-here.test", &["198.51.100.7"])]);
    let (dead, _keep) = sluice_testkit::silent_udp();
    let policy = |upstream: std::net::SocketAddr| {
        format!(
            "listen:\n  http: 127.0.0.1:0\ndns:\n  upstreams: [\"{upstream}\"]\n  upstream_timeout: 300ms\n\
             zones:\n  - name: web\n    sources: [10.0.0.0/8]\n    allow:\n      - cidr: 198.51.100.0/24\n        ports: [443]\n"
        )
    };
    let run = |upstream| {
        let path = scratch_file("check-resolve.yaml", &policy(upstream));
        sluice([
            "check".as_ref(),
            "-c".as_ref(),
            path.as_os_str(),
            "--from".as_ref(),
            "10.0.0.1".as_ref(),
            "--resolve".as_ref(),
            "--json".as_ref(),
            "only-here.test:443".as_ref(),
        ])
    };
    let out = run(dns.addr);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["verdict"], "allow", "{v}");
    assert!(v.to_string().contains("198.51.100.7"), "{v}");
    assert!(dns.queries_for("only-here.test") > 0);

    let t0 = std::time::Instant::now();
    let out = run(dead);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("cannot resolve only-here.test"),
        "{}",
        stderr(&out)
    );
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t0.elapsed()
    );
}
