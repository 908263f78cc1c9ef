//! The lists whose items are mappings — zones, their rules, users — and the
//! checks that look at an item as a whole or across items: a rule has
//! exactly one of `host` and `cidr`, names are unique, a zone that earlier
//! zones make unreachable is an error.

use std::collections::HashMap;

use ipnet::IpNet;
use serde_json::{Value as Json, json};

use super::{
    Cx,
    catalog::{ROUTE, RULE, USER, ZONE},
    kinds::Kind,
    table::{Nested, Table},
    yaml::{Node, Pos},
};
use crate::model::{HopKind, RouteDef, Rule, Select, User, Zone};

/// `zones`: network segments and identities, first match wins.
pub(crate) struct Zones;

impl Kind for Zones {
    type Out = Vec<Zone>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<Zone>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        let mut out: Vec<Zone> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for item in items {
            let item = &item;
            let mut zone = Zone::default();
            let Some(seen) = cx.section_into(&ZONE, item, &mut zone) else {
                continue;
            };
            let Some(name_at) = seen.at("name") else {
                cx.err(item, "a zone needs a `name`");
                continue;
            };
            if let Some(at) = seen.at("inspect") {
                zone.inspect.line = at.line;
                zone.inspect.column = at.column;
            }
            if !valid_zone_name(&zone.name) {
                cx.err_at(
                    name_at,
                    format!(
                        "invalid zone name `{}`: expected [a-z0-9_-]{{1,63}}",
                        zone.name
                    ),
                );
            } else if ["guard", "default", "inspect"].contains(&zone.name.as_str()) {
                cx.err_at(name_at, format!("zone name `{}` is reserved", zone.name));
            }
            if let Some(prev) = names.insert(zone.name.clone(), name_at.line) {
                cx.err_at(
                    name_at,
                    format!(
                        "duplicate zone `{}` (first defined on line {prev})",
                        zone.name
                    ),
                );
            }
            match shadowed_by(&out, &zone).as_slice() {
                [] => {}
                [earlier] => cx.err_at(
                    name_at,
                    format!(
                        "zone `{}` can never be selected: earlier zone `{earlier}` covers every source and user it names",
                        zone.name
                    ),
                ),
                several => cx.err_at(
                    name_at,
                    format!(
                        "zone `{}` can never be selected: earlier zones `{}` together cover every source and user it names",
                        zone.name,
                        several.join("`, `")
                    ),
                ),
            }
            out.push(zone);
        }
        Some(out)
    }
    fn schema(&self) -> Json {
        let mut item = ZONE.schema();
        if let Json::Object(o) = &mut item {
            o.insert("required".to_owned(), json!(["name"]));
        }
        json!({ "type": "array", "items": item })
    }
    fn nested(&self) -> Nested {
        Nested::List(&ZONE)
    }
}

/// A zone's `allow` or `deny` rules.
pub(crate) struct Rules {
    /// Allow rules need `ports`; deny rules without them cover every port.
    pub allow: bool,
}

impl Kind for Rules {
    type Out = Vec<Rule>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<Rule>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let item = &item;
            if let Some(rule) = self.rule(cx, item) {
                out.push(rule);
            }
        }
        Some(out)
    }
    fn schema(&self) -> Json {
        // What `rule` checks: exactly one of `host` and `cidr`; an allow
        // rule also needs `ports`.
        let mut item = RULE.schema();
        if let Json::Object(o) = &mut item {
            o.insert(
                "oneOf".to_owned(),
                json!([{ "required": ["host"] }, { "required": ["cidr"] }]),
            );
            if self.allow {
                o.insert("required".to_owned(), json!(["ports"]));
            }
        }
        json!({ "type": "array", "items": item })
    }
    fn nested(&self) -> Nested {
        Nested::List(&RULE)
    }
}

impl Rules {
    /// One rule, or `None` if anything in it is wrong.
    fn rule(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Rule> {
        let mut rule = Rule::default();
        let seen = cx.section_into(&RULE, n, &mut rule)?;
        let mut ok = seen.ok;
        match (seen.has("host"), seen.has("cidr")) {
            (true, true) => {
                cx.err(
                    n,
                    "a rule takes exactly one of `host` and `cidr`, found both",
                );
                ok = false;
            }
            (false, false) => {
                cx.err(
                    n,
                    "a rule needs exactly one of `host` and `cidr`, found neither",
                );
                ok = false;
            }
            _ => {}
        }
        if !self.allow && seen.has("route") {
            cx.err(
                n,
                "a deny rule takes no `route`: nothing it matches is dialed (put `route` on an allow rule or the zone)",
            );
            ok = false;
        }
        if !self.allow && rule.require_tls {
            if let Some(at) = seen.at("require_tls") {
                cx.err_at(
                    at,
                    "`require_tls` is for allow rules (and zones): a deny rule lets nothing out",
                );
                ok = false;
            }
        }
        if self.allow && ok && rule.ports.is_none() {
            cx.err(
                n,
                "an allow rule needs `ports` (a list of ports and \"a-b\" ranges, or `any`)",
            );
            ok = false;
        }
        if let (false, Some(at)) = (self.allow, seen.at("bypass")) {
            cx.err_at(
                at,
                "`bypass` is for allow rules: it says a zone may reach an allowed destination without the gateway",
            );
            ok = false;
        }
        if let (true, Some(host), Some(at)) = (ok, &rule.host, seen.at("host")) {
            self.warn_host(cx, host, at);
        }
        ok.then_some(rule)
    }

    /// Warns about host rules that load but cannot mean what they say.
    fn warn_host(&self, cx: &mut Cx<'_>, host: &str, at: Pos) {
        let name = host.strip_prefix("*.").unwrap_or(host);
        if name == "localhost" || name.ends_with(".localhost") {
            cx.warn_at(
                at,
                format!(
                    "`{host}` only ever means loopback (127.0.0.1 and ::1), which the guard denies whatever a host rule says; to reach a local service, allow its loopback address with a `cidr` rule (e.g. `cidr: 127.0.0.1/32`)"
                ),
            );
        } else if self.allow && host.starts_with("*.") && is_public_suffix(name) {
            cx.warn_at(
                at,
                format!(
                    "`{host}` allows every name under the public suffix `{name}`, which anyone can register; name the domains instead (e.g. `*.example.{name}`)"
                ),
            );
        }
    }
}

/// Whether `name` is a public suffix (`com`, `co.uk`, `github.io`) in the
/// list compiled into the `psl` crate, rather than a registrable domain.
fn is_public_suffix(name: &str) -> bool {
    // `is_known`: a name under a TLD missing from the list (`*.internal`)
    // matches only the list's implicit `*` rule.
    psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
}

/// `users`: proxy users, each with a password hash.
pub(crate) struct Users;

impl Kind for Users {
    type Out = Vec<User>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<User>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        let mut out: Vec<User> = Vec::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        for item in items {
            let item = &item;
            let mut user = User::default();
            let Some(seen) = cx.section_into(&USER, item, &mut user) else {
                continue;
            };
            let Some(name_at) = seen.at("name") else {
                cx.err(item, "a user needs a `name`");
                continue;
            };
            if user.name.is_empty()
                || user.name.len() > 128
                || user.name.contains(':')
                || user.name.chars().any(char::is_control)
            {
                cx.err_at(
                    name_at,
                    "expected a user name of 1 to 128 characters without `:` or control characters",
                );
            }
            match (&user.password_hash, &user.password_hash_file) {
                (None, None) => {
                    cx.err(item, "a user needs `password_hash` or `password_hash_file`")
                }
                (Some(_), Some(_)) => cx.err(
                    item,
                    "a user takes one of `password_hash` and `password_hash_file`, not both",
                ),
                _ => {}
            }
            if let Some(prev) = seen_names.insert(user.name.clone(), name_at.line) {
                cx.err_at(
                    name_at,
                    format!(
                        "duplicate user `{}` (first defined on line {prev})",
                        user.name
                    ),
                );
                continue;
            }
            out.push(user);
        }
        Some(out)
    }
    fn schema(&self) -> Json {
        let mut item = USER.schema();
        if let Json::Object(o) = &mut item {
            o.insert("required".to_owned(), json!(["name"]));
            o.insert(
                "oneOf".to_owned(),
                json!([
                    { "required": ["password_hash"] },
                    { "required": ["password_hash_file"] }
                ]),
            );
        }
        json!({ "type": "array", "items": item })
    }
    fn nested(&self) -> Nested {
        Nested::List(&USER)
    }
}

/// `routes`: named ways out.
pub(crate) struct Routes;

impl Kind for Routes {
    type Out = Vec<RouteDef>;
    fn read(&self, cx: &mut Cx<'_>, n: &Node<'_>) -> Option<Vec<RouteDef>> {
        let what = cx.label();
        let items = cx.seq(n, &what)?;
        let mut out: Vec<RouteDef> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for item in items {
            let item = &item;
            let mut route = RouteDef::default();
            let Some(seen) = cx.section_into(&ROUTE, item, &mut route) else {
                continue;
            };
            let Some(name_at) = seen.at("name") else {
                cx.err(item, "a route needs a `name`");
                continue;
            };
            if !seen.has("via") {
                cx.err(item, "a route needs `via`: a list of hops (`direct`, `http://host:port`, `socks5://host:port`)");
            }
            if !valid_zone_name(&route.name) {
                cx.err_at(
                    name_at,
                    format!(
                        "invalid route name `{}`: expected [a-z0-9_-]{{1,63}}",
                        route.name
                    ),
                );
            } else if route.name == "direct" {
                cx.err_at(
                    name_at,
                    "route name `direct` is built in (straight out, from any address); name this route otherwise",
                );
            }
            if let Some(prev) = names.insert(route.name.clone(), name_at.line) {
                cx.err_at(
                    name_at,
                    format!(
                        "duplicate route `{}` (first defined on line {prev})",
                        route.name
                    ),
                );
            }
            if let (Some(src), Some(at)) = (route.source, seen.at("source")) {
                if src.is_unspecified() || src.is_multicast() {
                    cx.err_at(
                        at,
                        format!("source {src} is not an address a connection can leave from"),
                    );
                }
            }
            if route.select == Select::Failover && route.via.iter().any(|h| h.weight != 1) {
                if let Some(at) = seen.at("via") {
                    cx.warn_at(
                        at,
                        format!(
                            "route `{}`: `#weight` only counts under `select: weighted`",
                            route.name
                        ),
                    );
                }
            }
            let hc = &route.health_check;
            if hc.timeout > hc.interval {
                if let Some(at) = seen.at("health_check") {
                    cx.err_at(at, format!("route `{}`: health_check.timeout ({}ms) is longer than its interval ({}ms)", route.name, hc.timeout.as_millis(), hc.interval.as_millis()));
                }
            }
            if route.via.iter().all(|h| h.kind == HopKind::Direct) && seen.has("health_check") {
                if let Some(at) = seen.at("health_check") {
                    cx.warn_at(
                        at,
                        format!(
                            "route `{}` has no parent proxy: its health_check checks nothing",
                            route.name
                        ),
                    );
                }
            }
            out.push(route);
        }
        Some(out)
    }
    fn schema(&self) -> Json {
        let mut item = ROUTE.schema();
        if let Json::Object(o) = &mut item {
            o.insert("required".to_owned(), json!(["name", "via"]));
        }
        json!({ "type": "array", "items": item })
    }
    fn nested(&self) -> Nested {
        Nested::List(&ROUTE)
    }
}

/// Reports routes that zones and rules name but `routes` does not define
/// (once all are known); `direct` is built in.
pub(crate) fn check_route_refs(cx: &mut Cx<'_>, routes: &[RouteDef]) {
    for (name, at) in std::mem::take(&mut cx.route_refs) {
        if name != "direct" && !routes.iter().any(|r| r.name == name) {
            let defined: Vec<&str> = std::iter::once("direct")
                .chain(
                    routes
                        .iter()
                        .map(|r| r.name.as_str())
                        .filter(|n| *n != "direct"),
                )
                .collect();
            cx.err_at(
                at,
                format!(
                    "route `{name}` is not defined under `routes:`; expected one of: {}",
                    defined.join(", ")
                ),
            );
        }
    }
}

/// Reports zone users that `users` does not define (once all are known).
pub(crate) fn check_user_refs(cx: &mut Cx<'_>, users: &[User]) {
    for (name, at) in std::mem::take(&mut cx.user_refs) {
        if !users.iter().any(|u| u.name == name) {
            cx.err_at(at, format!("user `{name}` is not defined under `users:`"));
        }
    }
}

fn valid_zone_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The earlier zones that make `z` unreachable (in file order; empty if it
/// is reachable). `z` is unreachable when every (source, user) case it
/// admits is admitted by earlier zones, which are selected first: by one
/// zone, or by several whose sources together cover the case.
fn shadowed_by<'z>(earlier: &'z [Zone], z: &Zone) -> Vec<&'z str> {
    // Source cases: each of z's nets, or "any source" (all of v4 and v6).
    let src_cases: Vec<IpNet> = match &z.sources {
        Some(nets) if !nets.is_empty() => nets.clone(),
        Some(_) => return Vec::new(),
        None => vec![IpNet::V4(Default::default()), IpNet::V6(Default::default())],
    };
    // User cases: each of z's users, or "any user, or none".
    let user_cases: Vec<Option<&str>> = match &z.users {
        Some(u) if !u.is_empty() => u.iter().map(|s| Some(s.as_str())).collect(),
        Some(_) => return Vec::new(),
        None => vec![None],
    };
    let mut covering: Vec<usize> = Vec::new();
    for s in &src_cases {
        for u in &user_cases {
            let admits_user = |a: &Zone| match (&a.users, u) {
                (None, _) => true,
                (Some(list), Some(name)) => list.iter().any(|x| x == name),
                (Some(_), None) => false,
            };
            let candidates = || earlier.iter().enumerate().filter(|(_, a)| admits_user(a));
            let single = candidates().find(|(_, a)| match &a.sources {
                None => true,
                Some(nets) => nets.iter().any(|n| n.contains(s)),
            });
            if let Some((i, _)) = single {
                covering.push(i);
                continue;
            }
            let mut parts = Vec::new();
            for (i, a) in candidates() {
                for n in a.sources.iter().flatten() {
                    if n.contains(s) || s.contains(n) {
                        parts.push(span(*n));
                        covering.push(i);
                    }
                }
            }
            if !covers(parts, span(*s)) {
                return Vec::new();
            }
        }
    }
    covering.sort_unstable();
    covering.dedup();
    covering
        .into_iter()
        .map(|i| earlier[i].name.as_str())
        .collect()
}

/// A block as an inclusive range of numbers, v4 and v6 kept apart.
fn span(net: IpNet) -> (bool, u128, u128) {
    match net {
        IpNet::V4(n) => (
            false,
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        IpNet::V6(n) => (true, n.network().into(), n.broadcast().into()),
    }
}

/// Whether the union of `parts` covers `whole`.
fn covers(mut parts: Vec<(bool, u128, u128)>, whole: (bool, u128, u128)) -> bool {
    parts.retain(|p| p.0 == whole.0);
    parts.sort_unstable();
    let mut next = whole.1;
    for (_, lo, hi) in parts {
        if lo > next {
            return false;
        }
        if hi >= whole.2 {
            return true;
        }
        next = next.max(hi + 1);
    }
    false
}
