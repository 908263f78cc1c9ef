//! The key tables against what they feed: the schema names exactly the keys
//! the loader accepts, each reload declaration is what `restart_needed`
//! reports, and the new keys load with their bounds.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::{
    Need, Reload,
    catalog::{ADMIN, BUS, DNS, LIMITS, LISTEN, LOG, NETFLOW, ROOT, RULE, USER, ZONE},
    keys, parse, parse_config, restart_needed, schema,
    table::MAX_KEYS,
};

/// Every property path of a schema, as `zones[].allow[].host`.
fn schema_paths(node: &Json, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(items) = node.get("items") {
        if items.get("properties").is_some() {
            schema_paths(items, &format!("{}[].", prefix.trim_end_matches('.')), out);
        }
    }
    if let Some(props) = node.get("properties").and_then(Json::as_object) {
        for (k, v) in props {
            let path = format!("{prefix}{k}");
            out.insert(path.clone());
            schema_paths(v, &format!("{path}."), out);
        }
    }
}

#[test]
fn the_schema_names_exactly_the_keys_the_loader_accepts() {
    let mut from_schema = BTreeSet::new();
    schema_paths(&schema(), "", &mut from_schema);
    let from_table: BTreeSet<String> = keys().into_iter().map(|k| k.path).collect();
    assert_eq!(from_schema, from_table);
    assert!(from_table.len() > 50, "{from_table:?}");
    // Every key has a description, and every property in the schema too.
    for k in keys() {
        assert!(!k.doc.is_empty(), "{} has no description", k.path);
    }
}

#[test]
fn every_key_the_table_lists_is_accepted_and_every_other_is_refused() {
    // One key at a time, each in a minimal valid file (rules and users need
    // their companions): the loader accepts the key by its table name.
    let ok = [
        "listen:\n  http: 127.0.0.1:3128\n",
        "admin:\n  recent_alerts: 5\n",
        "log:\n  flows: stdout\n",
        "zones:\n  - name: a\n    deny:\n      - host: x.example\n        id: r1\n",
        "users:\n  - name: u\n    password_hash_file: /x\n",
    ];
    for text in ok {
        parse_config(text, "k.yaml").unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    let bad = parse_config("listen:\n  htp: 1.2.3.4:5\n", "k.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("expected one of: http, admin, socks5, dns, transparent, transparent_mark, netflow, proxy_protocol_from"),
        "{bad}"
    );
}

#[test]
fn sections_fit_the_seen_table() {
    fn check<T>(name: &str, keys: &[super::table::Key<T>]) {
        assert!(keys.len() <= MAX_KEYS, "{name} has {} keys", keys.len());
        let names: BTreeSet<&str> = keys.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), keys.len(), "{name} names a key twice");
    }
    check("root", ROOT.keys);
    check("listen", LISTEN.keys);
    check("admin", ADMIN.keys);
    check("dns", DNS.keys);
    check("limits", LIMITS.keys);
    check("log", LOG.keys);
    check("netflow", NETFLOW.keys);
    check("bus", BUS.keys);
    check("zone", ZONE.keys);
    check("rule", RULE.keys);
    check("user", USER.keys);
    check("inspect", super::inspect::INSPECT.keys);
    check("inspect.ca", super::inspect::INSPECT_CA.keys);
    check("inspect.clamd", super::inspect::CLAMD.keys);
    check("inspect.icap", super::inspect::ICAP.keys);
    check("inspect.dlp", super::inspect::DLP.keys);
    check("a DLP pattern", super::inspect::PATTERN.keys);
    check("zone inspect", super::inspect::ZONE_INSPECT.keys);
    for k in keys() {
        // `inspect.dlp.patterns[].name` is the deepest.
        let depth = k.path.matches('.').count();
        assert!(depth <= 3, "{}", k.path);
    }
}

/// A file where every key that needs a restart differs from its default.
const EVERY_RESTART_KEY: &str = "
listen:
  http: 127.0.0.1:1
  admin: 127.0.0.1:2
  socks5: 127.0.0.1:3
  dns: 127.0.0.1:4
  transparent: 127.0.0.1:5
  transparent_mark: 0x5c
  netflow: 127.0.0.1:6
  proxy_protocol_from: [192.0.2.0/24]
netflow:
  exporters: [192.0.2.0/24]
  max_templates: 7
  template_timeout: 7s
  pending_sets: 7
admin:
  token_file: /run/token
  open_paths: [/metrics]
  hosts: [sluice.example]
  recent_flows: 7
  recent_denials: 7
  window: 2m
  top_entries: 7
  recent_alerts: 7
dns:
  upstreams: [192.0.2.1:53]
  upstream_timeout: 3s
  answer_ttl_max: 1m
  negative_ttl: 0s
  cache_size: 7
  blocked_answer: refused
  rate_limit_qps: 7
  grants_max: 7
  tunnel_threshold: 0.5
  tunnel_window: 2m
  tunnel_min_queries: 7
limits:
  max_connections: 7
  max_connections_per_source: 7
  header_timeout: 7s
  max_header_bytes: 2048
  idle_timeout: 7s
  connect_timeout: 7s
  drain_timeout: 7s
  drain_grace: 7s
  pool_max_idle: 7
  pool_max_idle_per_host: 7
  pool_idle_timeout: 7s
log:
  flows: /var/log/sluice/flows.jsonl
bus:
  url: nats://192.0.2.9:4222
  stream: FLOWS
  partitions: 3
  queue: 7
detect:
  embedded: false
  webhook:
    url: http://127.0.0.1:9/alerts
    timeout: 7s
    queue: 7
  syslog:
    address: tcp://127.0.0.1:514
  geoip: /var/lib/geo.mmdb
  state_dir: /var/lib/sluice/detect
  learn: 3d
  max_lateness: 1m
  max_sources: 7
  volume:
    enabled: false
    window: 2m
    floor: 7MB
    factor: 2.5
  new-destination:
    enabled: false
    min_bytes: 7KB
    min_flows: 7
  geo:
    enabled: false
    min_bytes: 7B
  beaconing:
    enabled: false
    min_repeats: 7
    max_jitter: 0.2
    max_bytes: 7GB
  dns-tunnel:
    enabled: false
  denied-burst:
    enabled: false
    window: 7m
    min_distinct: 7
inspect:
  ca:
    cert_file: /etc/sluice/ca.pem
    key_file: /etc/sluice/ca.key
  extra_roots: [/etc/sluice/roots.pem]
  clamd:
    address: unix:/run/clamd.ctl
    timeout: 7s
    max_size: 7MiB
  icap:
    reqmod: icap://127.0.0.1:1344/req
    respmod: icap://127.0.0.1:1344/resp
    timeout: 7s
    preview: 7B
    max_size: 7MiB
  dlp:
    hash_key_file: /run/sluice-dlp-key
zones: []
";

#[test]
fn restart_needed_names_exactly_the_changed_keys_declared_restart() {
    let base = parse_config("zones: []\n", "a.yaml").unwrap();
    let changed = parse_config(EVERY_RESTART_KEY, "b.yaml").unwrap();
    let all = keys();
    let is_leaf = |p: &str| !all.iter().any(|o| o.path.starts_with(&format!("{p}.")));
    let declared: Vec<String> = all
        .iter()
        .filter(|k| k.reload == Some(Reload::Restart) && is_leaf(&k.path))
        .map(|k| k.path.clone())
        .collect();
    assert_eq!(restart_needed(&base, &changed), declared);
    assert_eq!(restart_needed(&changed, &base), declared);
    assert!(restart_needed(&changed, &changed).is_empty());

    // One key alone is named alone.
    let one = parse_config("limits:\n  idle_timeout: 1s\nzones: []\n", "c.yaml").unwrap();
    assert_eq!(restart_needed(&base, &one), ["limits.idle_timeout"]);
}

#[test]
fn policy_changes_apply_on_reload() {
    let base = parse_config(EVERY_RESTART_KEY, "a.yaml").unwrap();
    let policy = EVERY_RESTART_KEY.replace(
        "zones: []\n",
        "mode: open\ntls_sni_must_match: false\nzones:\n  - name: a\n    users: [u]\n    mode: report\n    allow:\n      - host: x.example\n        ports: any\nusers:\n  - name: u\n    password_hash_file: /x\n",
    );
    let policy = policy.replace(
        "  recent_alerts: 7\n",
        "  recent_alerts: 7\n  stale_after: 1h\n",
    );
    // The collector's exporters and gateways are read per datagram.
    let policy = policy.replace(
        "  exporters: [192.0.2.0/24]\n",
        "  exporters: [192.0.2.0/25]\n  gateways: [10.0.9.1/32]\n",
    );
    let new = parse_config(&policy, "b.yaml").unwrap();
    assert_ne!(base, new);
    assert!(restart_needed(&base, &new).is_empty());
}

#[test]
fn keys_inside_lists_apply_on_reload() {
    // `restart_needed` does not look inside lists: zones and users are
    // policy, swapped whole on reload.
    for k in keys() {
        if k.path.contains("[]") {
            assert_eq!(k.reload, Some(Reload::Applies), "{}", k.path);
        }
    }
}

#[test]
fn mappings_say_per_key_only_when_their_keys_differ() {
    let by_path = |p: &str| keys().into_iter().find(|k| k.path == p).unwrap().reload;
    assert_eq!(by_path("listen"), Some(Reload::Restart));
    // `log.interim` applies to tunnels opened after a reload; `log.flows` not.
    assert_eq!(by_path("log"), None);
    assert_eq!(by_path("log.interim"), Some(Reload::Applies));
    assert_eq!(by_path("detect"), Some(Reload::Restart));
    // `limits.response_timeout` applies on reload; the other limits do not.
    assert_eq!(by_path("limits"), None);
    assert_eq!(by_path("limits.response_timeout"), Some(Reload::Applies));
    assert_eq!(by_path("admin"), None);
    assert_eq!(by_path("admin.stale_after"), Some(Reload::Applies));
    assert_eq!(by_path("zones"), Some(Reload::Applies));
    assert_eq!(by_path("tls_sni_must_match"), Some(Reload::Applies));
}

#[test]
fn admin_recent_alerts_loads_with_its_default_and_bounds() {
    let c = parse_config("", "a.yaml").unwrap();
    assert_eq!(c.admin.recent_alerts, 1_000);
    let c = parse_config("admin:\n  recent_alerts: 1000000\n", "a.yaml").unwrap();
    assert_eq!(c.admin.recent_alerts, 1_000_000);
    for (text, want) in [
        (
            "admin:\n  recent_alerts: 0\n",
            "b.yaml:2:18: expected a number above zero for admin.recent_alerts",
        ),
        (
            "admin:\n  recent_alerts: 1000001\n",
            "b.yaml:2:18: expected at most 1000000 for admin.recent_alerts",
        ),
        (
            "admin:\n  recent_alerts: lots\n",
            "b.yaml:2:18: expected a decimal whole number for admin.recent_alerts",
        ),
    ] {
        let errs = parse_config(text, "b.yaml").unwrap_err().to_string();
        assert_eq!(errs, want);
    }
}

#[test]
fn a_rule_with_a_bad_host_still_has_its_other_keys_checked() {
    let text = "zones:\n  - name: a\n    allow:\n      - host: [x.example]\n        ports: [0]\n";
    let errs = parse_config(text, "r.yaml").unwrap_err().to_string();
    assert_eq!(
        errs,
        "r.yaml:4:15: expected a string for host, found a list\nr.yaml:5:17: invalid port `0`: port 0 is not a destination port"
    );
}

#[test]
fn a_policy_file_must_name_zones() {
    for (text, want) in [
        (
            "",
            "e.yaml:1:1: the configuration is empty: expected at least `zones`",
        ),
        ("# nothing yet\n", "e.yaml:1:1: the configuration is empty"),
        ("~\n", "e.yaml:1:1: the configuration is empty"),
        ("{}\n", "e.yaml:1:1: no `zones` in the configuration"),
        (
            "# cut short\nlisten:\n  http: 127.0.0.1:3128\n",
            "e.yaml:2:1: no `zones` in the configuration",
        ),
    ] {
        let errs = parse(text, "e.yaml", Need::Zones).unwrap_err().to_string();
        assert!(errs.starts_with(want), "{text:?}: {errs}");
        assert_eq!(errs.lines().count(), 1, "{errs}");
        // The fragment reader takes it as the defaults.
        parse_config(text, "e.yaml").unwrap();
    }
    // Denying everything on purpose is still possible.
    let c = parse("zones: []\n", "e.yaml", Need::Zones).unwrap();
    assert!(c.zones.is_empty());
    // Other errors are reported with it, in one pass.
    let errs = parse("mode: sometimes\n", "e.yaml", Need::Zones)
        .unwrap_err()
        .to_string();
    assert_eq!(errs.lines().count(), 2, "{errs}");
}

#[test]
fn admin_max_streams_loads_with_its_default_and_bounds_and_reloads() {
    let c = parse_config("", "a.yaml").unwrap();
    assert_eq!(c.admin.max_streams, 32);
    let c = parse_config("admin:\n  max_streams: 96\n", "a.yaml").unwrap();
    assert_eq!(c.admin.max_streams, 96);
    for (text, want) in [
        (
            "admin:\n  max_streams: 0\n",
            "b.yaml:2:16: expected a number above zero for admin.max_streams",
        ),
        (
            "admin:\n  max_streams: 97\n",
            "b.yaml:2:16: expected at most 96 for admin.max_streams",
        ),
    ] {
        let errs = parse_config(text, "b.yaml").unwrap_err().to_string();
        assert_eq!(errs, want);
    }
    let reload = keys()
        .into_iter()
        .find(|k| k.path == "admin.max_streams")
        .unwrap()
        .reload;
    assert_eq!(reload, Some(Reload::Applies));
}

/// The warnings of a file that loads, as `validate` prints them.
fn warnings(text: &str) -> Vec<String> {
    super::parse_warned(text, "w.yaml", Need::Zones)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .1
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn wildcards_over_public_suffixes_and_localhost_rules_warn_with_their_position() {
    let text = "zones:\n  - name: a\n    allow:\n      - host: \"*.com\"\n        ports: [443]\n      - host: \"*.co.uk\"\n        ports: any\n      - host: localhost\n        ports: [8000]\n      - host: \"*.example.com\"\n        ports: [443]\n      - host: \"*.github.io\"\n        ports: [443]\n      - host: \"*.corp.internal\"\n        ports: [443]\n    deny:\n      - host: \"*.zip\"\n";
    let w = warnings(text);
    assert_eq!(w.len(), 4, "{w:#?}");
    assert!(
        w[0].starts_with(
            "w.yaml:4:15: warning: `*.com` allows every name under the public suffix `com`"
        ),
        "{w:#?}"
    );
    assert!(
        w[1].starts_with(
            "w.yaml:6:15: warning: `*.co.uk` allows every name under the public suffix `co.uk`"
        ),
        "{w:#?}"
    );
    assert!(
        w[2].starts_with("w.yaml:8:15: warning: `localhost` only ever means loopback"),
        "{w:#?}"
    );
    assert!(w[2].contains("`cidr` rule"), "{w:#?}");
    assert!(
        w[3].starts_with("w.yaml:12:15: warning: `*.github.io`"),
        "{w:#?}"
    );
    // A clean file has none.
    assert!(
        warnings(
            "zones:\n  - name: a\n    allow:\n      - host: api.github.com\n        ports: [443]\n"
        )
        .is_empty()
    );
}

#[test]
fn a_url_in_a_host_rule_says_to_write_the_host_name() {
    for (url, host) in [
        ("https://api.github.com/", "api.github.com"),
        ("http://example.com:8080/x?y", "example.com"),
        ("api.github.com/v3", "api.github.com"),
    ] {
        let text = format!(
            "zones:\n  - name: a\n    allow:\n      - host: \"{url}\"\n        ports: [443]\n"
        );
        let e = parse(&text, "u.yaml", Need::Zones).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "u.yaml:4:15: invalid host pattern `{url}`: a host rule takes a host name, not a URL; write `host: {host}` and put the port under `ports`"
            )
        );
    }
}

#[test]
fn a_bare_port_or_range_is_a_list_of_one() {
    use crate::model::Ports;
    for (ports, want) in [
        ("443", (443, 443)),
        ("\"8000-8100\"", (8000, 8100)),
        ("\"80\"", (80, 80)),
    ] {
        let text = format!(
            "zones:\n  - name: a\n    allow:\n      - host: a.example\n        ports: {ports}\n"
        );
        let c = parse(&text, "p.yaml", Need::Zones).unwrap_or_else(|e| panic!("{ports}: {e}"));
        assert_eq!(c.zones[0].allow[0].ports, Some(Ports::List(vec![want])));
    }
    let e = parse(
        "zones:\n  - name: a\n    allow:\n      - host: a.example\n        ports: 70000\n",
        "p.yaml",
        Need::Zones,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, "p.yaml:5:16: invalid port `70000`: expected 1 to 65535");
}

#[test]
fn two_listeners_on_one_address_are_an_error_at_the_second() {
    let e = parse(
        "listen:\n  http: 127.0.0.1:3128\n  socks5: 127.0.0.1:3128\n  admin: 0.0.0.0:9901\n  dns: 127.0.0.1:9901\n  transparent: 127.0.0.1:0\nadmin:\n  token_file: /t\nzones: []\n",
        "l.yaml",
        Need::Zones,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "l.yaml:3:11: listen.socks5 (127.0.0.1:3128) and listen.http (127.0.0.1:3128) cannot both bind: each listener needs its own address or port\n\
         l.yaml:5:8: listen.dns (127.0.0.1:9901) and listen.admin (0.0.0.0:9901) cannot both bind: each listener needs its own address or port"
    );
    // Port 0 never clashes; neither do different ports.
    parse("listen:\n  http: 127.0.0.1:0\n  socks5: 127.0.0.1:0\n  dns: 127.0.0.1:3128\n  admin: 127.0.0.1:3129\nzones: []\n", "l.yaml", Need::Zones).unwrap();
}

#[test]
fn the_schema_requires_what_the_loader_requires() {
    let s = schema();
    assert_eq!(s["required"], serde_json::json!(["zones"]));
    let zone = &s["properties"]["zones"]["items"];
    assert_eq!(zone["required"], serde_json::json!(["name"]));
    assert_eq!(
        zone["properties"]["allow"]["items"]["required"],
        serde_json::json!(["ports"])
    );
    assert!(
        zone["properties"]["deny"]["items"]
            .get("required")
            .is_none()
    );
    // Sections whose keys all have defaults require none of them.
    for section in ["admin", "dns", "limits", "log", "listen"] {
        assert!(
            s["properties"][section].get("required").is_none(),
            "{section}"
        );
    }
}

#[test]
fn interim_and_alert_sink_keys_load_with_defaults_bounds_and_positions() {
    use crate::model::SyslogTransport;
    let c = parse_config("", "a.yaml").unwrap();
    assert_eq!(c.log.interim, std::time::Duration::from_secs(60));
    assert_eq!(c.detect.webhook.url, None);
    assert_eq!(c.detect.webhook.timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.detect.webhook.queue, 1000);
    assert_eq!(c.detect.syslog.address, None);
    let c = parse_config(
        "log:\n  interim: 250ms\ndetect:\n  webhook: {url: 'http://hooks.example:8080/a?b=1', queue: 3}\n  syslog: {address: 'udp://[::1]:5514'}\n",
        "a.yaml",
    )
    .unwrap();
    assert_eq!(c.log.interim, std::time::Duration::from_millis(250));
    assert_eq!(
        c.detect.webhook.url.as_deref(),
        Some("http://hooks.example:8080/a?b=1")
    );
    assert_eq!(c.detect.webhook.queue, 3);
    let a = c.detect.syslog.address.unwrap();
    assert_eq!(
        (a.transport, a.host.as_str(), a.port),
        (SyslogTransport::Udp, "::1", 5514)
    );
    assert_eq!(a.to_string(), "udp://[::1]:5514");
    for (text, want) in [
        (
            "log:\n  interim: 50ms\n",
            "b.yaml:2:12: expected log.interim of at least 100ms",
        ),
        (
            "log:\n  interim: 60\n",
            "b.yaml:2:12: expected a duration for log.interim such as `500ms`, `10s`, `5m`, `1h` or `7d`",
        ),
        (
            "detect:\n  webhook:\n    url: https://hooks.example/a\n",
            "b.yaml:3:10: detect.webhook.url: https is not supported (Sluice has no TLS client); use http://, e.g. to a local relay",
        ),
        (
            "detect:\n  webhook:\n    url: http://:80/a\n",
            "b.yaml:3:10: expected `http://host[:port][/path]` for detect.webhook.url (e.g. `http://127.0.0.1:8080/alerts`), found `http://:80/a`",
        ),
        (
            "detect:\n  webhook:\n    queue: 0\n",
            "b.yaml:3:12: expected a number above zero for detect.webhook.queue",
        ),
        (
            "detect:\n  syslog:\n    address: 127.0.0.1:514\n",
            "b.yaml:3:14: expected `udp://host:port` or `tcp://host:port` for detect.syslog.address (e.g. `udp://127.0.0.1:514`), found `127.0.0.1:514`",
        ),
        (
            "detect:\n  syslog:\n    address: tcp://127.0.0.1\n",
            "b.yaml:3:14: expected `udp://host:port` or `tcp://host:port` for detect.syslog.address (e.g. `udp://127.0.0.1:514`), found `tcp://127.0.0.1`",
        ),
        (
            "detect:\n  sysl0g: {}\n",
            "b.yaml:2:3: unknown key `sysl0g` in detect; expected one of: embedded, geoip, state_dir, learn, max_lateness, max_sources, volume, new-destination, geo, beaconing, dns-tunnel, denied-burst, webhook, syslog",
        ),
    ] {
        let errs = parse_config(text, "b.yaml").unwrap_err().to_string();
        assert_eq!(errs, want);
    }
}

#[test]
fn indentation_mistakes_are_explained_in_words_with_the_parser_message_kept() {
    for (text, at, plain, parser) in [
        (
            "zones:\n  - name: a\n    allow:\n      - host: a.com\n       ports: [443]\n",
            "5:8",
            "not indented like the list above it",
            "did not find expected '-' indicator",
        ),
        (
            "listen:\n  http: 127.0.0.1:0\n zones: []\n",
            "3:2",
            "indented differently from the keys above it",
            "did not find expected key",
        ),
        (
            "zones:\n  - name: a\n     mode: open\n",
            "3:10",
            "indented deeper than the keys around it",
            "mapping values are not allowed in this context",
        ),
        (
            "listen:\n\thttp: 127.0.0.1:0\n",
            "2:2",
            "YAML indents with spaces only",
            "tabs disallowed",
        ),
    ] {
        let e = parse_config(text, "y.yaml").unwrap_err().to_string();
        assert!(e.starts_with(&format!("y.yaml:{at}: ")), "{e}");
        assert!(
            e.contains(plain) && e.contains("(YAML parser: ") && e.contains(parser),
            "{e}"
        );
    }
}

#[test]
fn rule_lifecycle_keys_load_and_a_bad_expiry_is_a_positioned_error() {
    let text = "zones:\n  - name: a\n    allow:\n      - host: x.example\n        ports: [443]\n        owner: alice\n        ticket: OPS-7\n        expires: 2026-03-31T12:00:00+02:00\n";
    let c = parse_config(text, "l.yaml").unwrap();
    let r = &c.zones[0].allow[0];
    assert_eq!(r.owner.as_deref(), Some("alice"));
    assert_eq!(r.ticket.as_deref(), Some("OPS-7"));
    let e = r.expires.as_ref().unwrap();
    assert_eq!(e.unix_ms, 1_775_210_400_000 - 3 * 24 * 3600 * 1000);
    assert_eq!((e.line, e.column), (8, 18));
    for bad in [
        "2026-03-31",
        "2026-13-01T00:00:00Z",
        "tomorrow",
        "2026-03-31T00:00:00",
    ] {
        let err = parse_config(&text.replace("2026-03-31T12:00:00+02:00", bad), "l.yaml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "l.yaml:8:18: invalid time `{bad}`: expected RFC 3339, e.g. `2026-03-31T00:00:00Z`"
            ),
        );
    }
}

#[test]
fn bus_loads_with_its_defaults_and_refuses_bad_values() {
    let c = parse_config("", "a.yaml").unwrap();
    assert_eq!(c.bus.url, None);
    assert_eq!(c.bus.stream, "SLUICE");
    assert_eq!(c.bus.partitions, 8);
    assert_eq!(c.bus.queue, 10_000);
    let c = parse_config(
        "bus:\n  url: nats://a:4222, tls://u:p@b:4222\n  partitions: 4\n",
        "a.yaml",
    )
    .unwrap();
    assert_eq!(
        c.bus.url.as_deref(),
        Some("nats://a:4222, tls://u:p@b:4222")
    );
    assert_eq!(c.bus.partitions, 4);
    for (text, want) in [
        (
            "bus:\n  url: http://a:4222\n",
            "expected `nats://host:port` or `tls://host:port` (comma-separated for a cluster) for bus.url, found `http://a:4222`",
        ),
        ("bus:\n  url: nats://\n", "found `nats://`"),
        ("bus:\n  url: nats://a:1,b:2\n", "found `b:2`"),
        (
            "bus:\n  stream: SLUICE\n",
            "bus.url is required when `bus` is set",
        ),
        (
            "bus:\n  url: nats://a\n  stream: a.b\n",
            "expected a stream name of 1 to 64 letters, digits, `_` or `-` for bus.stream, found `a.b`",
        ),
        (
            "bus:\n  url: nats://a\n  partitions: 0\n",
            "expected a number above zero for bus.partitions",
        ),
        (
            "bus:\n  url: nats://a\n  partitions: 1025\n",
            "expected at most 1024 for bus.partitions",
        ),
        (
            "bus:\n  url: nats://a\n  queue: x\n",
            "expected a decimal whole number for bus.queue",
        ),
        (
            "bus:\n  url: nats://a\n  subject: x\n",
            "unknown key `subject` in bus; expected one of: url, stream, partitions, queue",
        ),
    ] {
        let e = parse_config(text, "b.yaml").unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
        assert!(e.contains("b.yaml:"), "positioned: {e}");
    }
}

#[test]
fn detect_keys_load_with_defaults_and_bad_values_are_positioned_errors() {
    let c = parse_config("", "a.yaml").unwrap();
    assert_eq!(c.detect.learn, std::time::Duration::from_secs(7 * 86_400));
    assert_eq!(c.detect.max_lateness, std::time::Duration::from_secs(300));
    assert!(c.detect.embedded, "embedded detection is the default");
    let c = parse_config("detect:\n  embedded: false\n", "a.yaml").unwrap();
    assert!(!c.detect.embedded);
    let e = parse_config("detect:\n  embedded: maybe\n", "b.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("b.yaml:2:13: ") && e.contains("detect.embedded"),
        "{e}"
    );
    let c = parse_config(
        "detect:\n  learn: 2d\n  volume:\n    floor: 2GB\nzones:\n  - name: a\n    countries: [DE, FR, DE]\n    detect: off\n",
        "a.yaml",
    )
    .unwrap();
    assert_eq!(c.detect.learn, std::time::Duration::from_secs(2 * 86_400));
    assert_eq!(c.detect.volume.floor, 2_000_000_000);
    assert_eq!(
        c.zones[0].countries.as_deref(),
        Some(&["DE".to_owned(), "FR".to_owned()][..])
    );
    assert_eq!(c.zones[0].detect, crate::model::Switch::Off);
    let text = "detect:\n  volume:\n    floor: 10\n  new-destination:\n    min_flows: 0\n  webhook: {queue: 0}\nzones:\n  - name: a\n    countries: [de]\n    detect: maybe\n";
    let errs = parse_config(text, "b.yaml").unwrap_err().to_string();
    assert_eq!(
        errs,
        "b.yaml:3:12: expected an amount of bytes above zero for detect.volume.floor such as `64KB`, `100MB` or `2GB`\n\
         b.yaml:5:16: expected a number above zero for detect.new-destination.min_flows\n\
         b.yaml:6:20: expected a number above zero for detect.webhook.queue\n\
         b.yaml:9:17: expected an ISO 3166 alpha-2 country code in zones[].countries (two upper-case letters such as `DE`), found `de`\n\
         b.yaml:10:13: expected `on` or `off` for zones[].detect"
    );
}

#[test]
fn inspect_keys_are_read_and_checked_across_sections() {
    let good = "
inspect:
  clamd: {address: 'tcp://127.0.0.1:3310', max_size: 2MiB}
  icap: {reqmod: 'icap://av.local/req', preview: 0B}
  dlp:
    patterns:
      - {name: employee, regex: 'EMP-[0-9]{6}'}
zones:
  - name: web
    sources: [10.0.0.0/8]
    inspect:
      dlp: {aws: block, employee: alert, card: log}
      malware: alert
      icap: true
      fail: open
";
    let c = parse_config(good, "i.yaml").unwrap();
    assert_eq!(c.inspect.clamd.max_size, 2 << 20);
    assert_eq!(c.inspect.icap.preview, 0);
    let z = &c.zones[0].inspect;
    assert_eq!(z.dlp.0.len(), 3);
    assert_eq!(z.fail, crate::model::FailMode::Open);
    assert!(z.any());
    assert!(
        !c.zones.is_empty()
            && parse_config("zones: []\n", "i.yaml")
                .unwrap()
                .zones
                .is_empty()
    );

    let bad = "
inspect:
  clamd: {address: nowhere, max_size: 10}
  icap: {reqmod: 'http://x/'}
  dlp:
    patterns:
      - {name: card, regex: 'x'}
      - {name: wide, regex: 'a+'}
zones:
  - name: web
    sources: [10.0.0.0/8]
    inspect:
      dlp: {aws: block, awz: block, wide: maybe}
      malware: quarantine
      fail: sometimes
";
    let e = parse_config(bad, "i.yaml").unwrap_err().to_string();
    for want in [
        "i.yaml:3:20: expected `unix:/path`, `tcp://host:port` or `host:port`",
        "expected a size for inspect.clamd.max_size",
        "expected `icap://host[:port]/service` for inspect.icap.reqmod",
        "DLP pattern name `card` is a built-in detector's",
        "DLP pattern `wide`: matches of unbounded or excessive length",
        "i.yaml:13:25: unknown DLP detector `awz` in zone `web`",
        "expected `block`, `alert` or `log` for detector `wide`",
        "expected `block` or `alert` for zones[].inspect.malware",
        "expected `closed` or `open` for zones[].inspect.fail",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let e = parse_config(
        "zones:\n  - name: web\n    inspect: {malware: block, icap: true}\n",
        "i.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("sets inspect.malware but inspect.clamd.address is not set"),
        "{e}"
    );
    assert!(e.contains("sets inspect.icap but neither"), "{e}");
}

#[test]
fn inspect_tls_needs_a_ca_and_require_tls_is_for_allow_rules() {
    let e = parse_config(
        "zones:\n  - name: a\n    inspect:\n      tls: [x.test]\n    deny:\n      - host: y.test\n        require_tls: true\n",
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("t.yaml:4:7: zone `a`: inspect.tls intercepts TLS, which needs a CA"),
        "{e}"
    );
    assert!(
        e.contains("t.yaml:7:22: `require_tls` is for allow rules"),
        "{e}"
    );
    let c = parse_config(
        "inspect:\n  ca:\n    cert_file: c.pem\n    key_file: c.key\nzones:\n  - name: a\n    require_tls: true\n    inspect:\n      tls: [\"*.x.test\"]\n",
        "t.yaml",
    )
    .unwrap();
    assert!(c.zones[0].require_tls);
    assert_eq!(c.zones[0].inspect.tls, ["*.x.test"]);
    let e = parse_config(
        "inspect:\n  ca:\n    cert_file: c.pem\nzones: []\n",
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("t.yaml:3:16: inspect.ca needs both"), "{e}");
}
