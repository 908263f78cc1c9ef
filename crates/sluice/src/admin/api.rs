//! The JSON API under `/api/v1/`, as described by `docs/openapi.yaml`.
//! Handlers parse and check their parameters (a bad one is a 400 naming
//! it), read the [`FlowView`](sluice_observe::FlowView) or the running
//! policy, and answer JSON.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use serde::{Deserialize, Serialize};
use sluice_net::Gateway;
use sluice_observe::{Alert, AlertFilter, AlertKind, FlowFilter, FlowRecord, Severity, TopBy};
use sluice_policy::{Destination, Request as PolicyRequest, Verdict};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{At, Body, Status, error, json, not_allowed};

/// Largest `POST /api/v1/check` body.
const MAX_BODY: usize = 64 * 1024;

/// Time allowed to send that body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest `limit` of flow lists.
const MAX_FLOWS: usize = 1000;

/// Largest `limit` of alert lists.
const MAX_ALERTS: usize = 1000;

/// Largest `limit` of top lists.
const MAX_TOP: usize = 100;

/// Largest number of `addrs` in one check.
const MAX_ADDRS: usize = 64;

/// Routes one `/api/...` request (already past the access checks).
pub async fn route(at: At<'_>, req: Request<Incoming>) -> Response<Body> {
    let At { gw, status, .. } = at;
    let path = req.uri().path().to_owned();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let query = match Query::parse(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let result = match path.as_str() {
        "/api/v1/flows" if get => flows(status, &query),
        "/api/v1/flows/stream" if get => stream(at, &query, last_event_id(req.headers())),
        "/api/v1/denials" if get => denials(status, &query),
        "/api/v1/top" if get => top(status, &query),
        "/api/v1/traffic" if get => traffic(status, &query),
        "/api/v1/rules" if get => rules(gw, status, &query),
        "/api/v1/alerts" if get => alerts(status, &query),
        "/api/v1/alerts/stream" if get => alert_stream(at, &query, last_event_id(req.headers())),
        "/api/v1/config" if get => config(gw, &query),
        "/api/v1/check" if req.method() == Method::POST => check(gw, req).await,
        "/api/v1/check" => return not_allowed("POST"),
        "/api/v1/flows"
        | "/api/v1/flows/stream"
        | "/api/v1/denials"
        | "/api/v1/top"
        | "/api/v1/traffic"
        | "/api/v1/rules"
        | "/api/v1/alerts"
        | "/api/v1/alerts/stream"
        | "/api/v1/config" => {
            return not_allowed("GET, HEAD");
        }
        _ => return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    result.unwrap_or_else(|(code, msg)| error(code, msg))
}

type Answer = Result<Response<Body>, (StatusCode, String)>;

fn bad(msg: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, msg.into())
}

// === query parameters ===

/// Query parameters, each at most once, only those an endpoint knows.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Query, String> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(format!("query parameter `{k}` given twice"));
            }
        }
        Ok(Query(map))
    }

    /// Refuses parameters the endpoint does not know.
    fn only(&self, known: &[&str]) -> Result<(), (StatusCode, String)> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) if known.is_empty() => Err(bad(format!(
                "unknown query parameter `{k}`: this endpoint takes none"
            ))),
            Some(k) => Err(bad(format!(
                "unknown query parameter `{k}`; expected: {}",
                known.join(", ")
            ))),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn number(
        &self,
        k: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, (StatusCode, String)> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n) && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad(format!("`{k}` must be a whole number from {min} to {max}"))),
        }
    }

    /// Seconds (`300`) or a number and a unit (`90s`, `5m`, `1h`, `7d`),
    /// from 1 s on.
    fn duration(&self, k: &str, default: Duration) -> Result<Duration, (StatusCode, String)> {
        let Some(v) = self.get(k) else {
            return Ok(default);
        };
        let split = v
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(v.len());
        let (n, unit) = v.split_at(split);
        let scale = match unit {
            "" | "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86_400),
            _ => None,
        };
        // Only digits before the unit; past u64 is as good as "all of the
        // window" (the caller caps it).
        let n = (!n.is_empty()).then(|| n.parse::<u64>().unwrap_or(u64::MAX));
        n.zip(scale)
            .map(|(n, s)| n.saturating_mul(s))
            .filter(|&secs| secs >= 1)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                bad(format!(
                    "`{k}` must be seconds (`300`) or a duration such as `90s`, `5m`, `1h` or `7d`, at least 1 s"
                ))
            })
    }

    fn time(&self, k: &str) -> Result<Option<SystemTime>, (StatusCode, String)> {
        self.get(k)
            .map(|v| {
                OffsetDateTime::parse(v, &Rfc3339)
                    .map(SystemTime::from)
                    .map_err(|_| {
                        bad(format!(
                            "`{k}` must be an RFC 3339 time such as 2025-01-31T12:00:00Z"
                        ))
                    })
            })
            .transpose()
    }

    fn filter(&self, verdict: bool) -> Result<FlowFilter, (StatusCode, String)> {
        let v = match self.get("verdict") {
            Some("allow") if verdict => Some(Verdict::Allow),
            Some("deny") if verdict => Some(Verdict::Deny),
            Some(_) => return Err(bad("`verdict` must be `allow` or `deny`")),
            None => None,
        };
        Ok(FlowFilter {
            zone: self.get("zone").map(str::to_owned),
            verdict: v,
            host: self.get("host").map(str::to_owned),
            since: self.time("since")?,
            until: self.time("until")?,
        })
    }
}

// === endpoints ===

#[derive(Serialize)]
struct Flows<'a> {
    flows: Vec<&'a FlowRecord>,
}

fn flows(status: &Status, q: &Query) -> Answer {
    q.only(&["zone", "verdict", "host", "since", "until", "limit"])?;
    let filter = q.filter(true)?;
    let limit = q.number("limit", 100, 1, MAX_FLOWS as u64)? as usize;
    let found = status.view.flows(&filter, limit);
    Ok(json(
        StatusCode::OK,
        &Flows {
            flows: found.iter().map(|r| &**r).collect(),
        },
    ))
}

/// The `Last-Event-ID` a reconnecting `EventSource` sends: the sequence
/// number of the last event it saw. Anything else (an id from an older
/// version) starts a fresh stream.
fn last_event_id(headers: &header::HeaderMap) -> Option<u64> {
    let v = headers.get("last-event-id")?.to_str().ok()?.trim();
    v.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| v.parse().ok())
        .flatten()
}

fn stream(at: At<'_>, q: &Query, after: Option<u64>) -> Answer {
    q.only(&["zone", "verdict", "host"])?;
    let filter = q.filter(true)?;
    let max = at.gw.version().policy.config().admin.max_streams;
    let body = at
        .live
        .stream(&at.status.view, filter, after, max, at.conn.busy());
    Ok(event_stream(body, max))
}

/// New alerts as Server-Sent Events (`event: alert`), under the same
/// `admin.max_streams` as the flow streams; `kind`, `severity` and `zone`
/// filter as in `/api/v1/alerts`.
fn alert_stream(at: At<'_>, q: &Query, after: Option<u64>) -> Answer {
    q.only(&["kind", "severity", "zone"])?;
    let filter = alert_filter(q)?;
    let max = at.gw.version().policy.config().admin.max_streams;
    let body = at
        .live
        .alert_stream(&at.status.recorder, filter, after, max, at.conn.busy());
    Ok(event_stream(body, max))
}

/// A live stream's answer: the event stream, or 503 past `max` streams.
fn event_stream(body: Option<super::sse::SseBody>, max: u32) -> Response<Body> {
    let Some(body) = body else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many live streams: admin.max_streams is {max}; retry later"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return r;
    };
    let mut r = Response::new(http_body_util::BodyExt::boxed(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

#[derive(Serialize)]
struct Denials<'a> {
    denials: Vec<&'a FlowRecord>,
}

fn denials(status: &Status, q: &Query) -> Answer {
    q.only(&["zone", "host", "since", "until", "limit"])?;
    let filter = q.filter(false)?;
    let limit = q.number("limit", 100, 1, MAX_FLOWS as u64)? as usize;
    let found = status.view.denials(&filter, limit);
    Ok(json(
        StatusCode::OK,
        &Denials {
            denials: found.iter().map(|r| &**r).collect(),
        },
    ))
}

fn top(status: &Status, q: &Query) -> Answer {
    q.only(&["zone", "window", "by", "limit"])?;
    let full = status.view.limits().window;
    let window = q.duration("window", full)?.min(full);
    let by = match q.get("by") {
        None | Some("flows") => TopBy::Flows,
        Some("bytes") => TopBy::Bytes,
        Some("bytes_out") => TopBy::BytesOut,
        Some("bytes_in") => TopBy::BytesIn,
        Some(_) => {
            return Err(bad(
                "`by` must be `flows`, `bytes`, `bytes_out` or `bytes_in`",
            ));
        }
    };
    let limit = q.number("limit", 10, 1, MAX_TOP as u64)? as usize;
    let zones = status
        .view
        .top(SystemTime::now(), window, q.get("zone"), by, limit);
    let by = match by {
        TopBy::Flows => "flows",
        TopBy::Bytes => "bytes",
        TopBy::BytesOut => "bytes_out",
        TopBy::BytesIn => "bytes_in",
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "window_seconds": window.as_secs(),
            "by": by,
            "zones": zones,
        }),
    ))
}

fn traffic(status: &Status, q: &Query) -> Answer {
    q.only(&[])?;
    let view = &status.view;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "window_seconds": view.limits().window.as_secs(),
            "bucket_seconds": view.bucket_width().as_secs(),
            "buckets": view.traffic(SystemTime::now()),
        }),
    ))
}

#[derive(Serialize)]
struct RuleRow<'a> {
    id: &'a str,
    zone: Option<&'a str>,
    kind: &'a str,
    text: &'a str,
    explicit_id: bool,
    owner: Option<&'a str>,
    ticket: Option<&'a str>,
    expires: Option<&'a str>,
    expired: bool,
    expiring_soon: bool,
    hits: u64,
    last_hit: Option<String>,
    stale: bool,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn rules(gw: &Gateway, status: &Status, q: &Query) -> Answer {
    q.only(&[])?;
    let version = gw.version();
    let policy = &version.policy;
    let mut stats = status.view.rule_stats();
    let now = SystemTime::now();
    let stale_after = policy.config().admin.stale_after;
    let mut rows = Vec::new();
    for r in policy.rules() {
        let s = stats.remove(r.id);
        let last = s.map(|s| s.last_hit);
        rows.push(RuleRow {
            id: r.id,
            zone: Some(r.zone),
            kind: r.kind,
            text: r.text,
            explicit_id: r.explicit_id,
            owner: r.owner,
            ticket: r.ticket,
            expires: r.expires,
            expired: r.expired,
            // Judged now: the policy's own time is its last compile.
            expiring_soon: !r.expired
                && r.expires_ms.is_some_and(|e| {
                    e.saturating_sub(unix_ms(now)) <= sluice_policy::policy::EXPIRING_SOON_MS
                }),
            hits: s.map_or(0, |s| s.hits),
            last_hit: last.map(rfc3339),
            stale: last.is_none_or(|t| now.duration_since(t).unwrap_or_default() > stale_after),
        });
    }
    // Guard and fallback ids, and rules of earlier policy versions.
    let mut other: Vec<_> = stats.into_iter().collect();
    other.sort_by(|a, b| a.0.cmp(&b.0));
    let other: Vec<_> = other
        .iter()
        .map(|(id, s)| {
            serde_json::json!({
                "id": id,
                "hits": s.hits,
                "last_hit": rfc3339(s.last_hit),
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "policy_hash": policy.hash().as_ref(),
            "stale_after_seconds": stale_after.as_secs(),
            "rules": rows,
            "other": other,
        }),
    ))
}

#[derive(Serialize)]
struct Alerts {
    alerts: Vec<Alert>,
}

/// Recent alerts, newest first. `kind` is exact; `severity` is a minimum
/// (`warning` also gives `critical`); `since` compares with when an alert
/// first fired (its `ts`).
fn alerts(status: &Status, q: &Query) -> Answer {
    q.only(&["kind", "severity", "zone", "since", "limit"])?;
    let filter = alert_filter(q)?;
    let limit = q.number("limit", 100, 1, MAX_ALERTS as u64)? as usize;
    let alerts = status.recorder.alerts().query(&filter, limit);
    Ok(json(StatusCode::OK, &Alerts { alerts }))
}

/// `kind`, `severity`, `zone` and `since` of an alert query.
fn alert_filter(q: &Query) -> Result<AlertFilter, (StatusCode, String)> {
    let kind = match q.get("kind") {
        None => None,
        Some(k) => Some(AlertKind::from_name(k).ok_or_else(|| {
            let names: Vec<_> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
            bad(format!("`kind` must be one of {}", names.join(", ")))
        })?),
    };
    let severity = match q.get("severity") {
        None => None,
        Some(s) => Some(
            Severity::from_name(s)
                .ok_or_else(|| bad("`severity` must be `info`, `warning` or `critical`"))?,
        ),
    };
    let filter = AlertFilter {
        kind,
        severity,
        zone: q.get("zone").map(str::to_owned),
        since: q.time("since")?,
    };
    Ok(filter)
}

fn config(gw: &Gateway, q: &Query) -> Answer {
    q.only(&[])?;
    let version = gw.version();
    // The model's serializer redacts password hashes; token files are
    // paths, never their contents.
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "policy_hash": version.policy.hash().as_ref(),
            "config": version.policy.config(),
        }),
    ))
}

/// The body of `POST /api/v1/check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    from: String,
    #[serde(default)]
    user: Option<String>,
    target: String,
    #[serde(default)]
    addrs: Vec<String>,
    #[serde(default)]
    resolve: bool,
}

async fn check(gw: &Gateway, req: Request<Incoming>) -> Answer {
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(bad("this endpoint takes no query parameters"));
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json".to_owned(),
        ));
    }
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Err(_) => {
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                "request body too slow".to_owned(),
            ));
        }
        Ok(Err(_)) => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes or broken"),
            ));
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    let c: CheckRequest = parse_json(&body)?;
    let from: IpAddr = c
        .from
        .parse()
        .map_err(|_| bad(format!("`from` must be an IP address, found `{}`", c.from)))?;
    if c.addrs.len() > MAX_ADDRS {
        return Err(bad(format!("at most {MAX_ADDRS} `addrs`")));
    }
    if c.resolve && !c.addrs.is_empty() {
        return Err(bad("give `addrs` or `resolve`, not both"));
    }
    let mut addrs = c
        .addrs
        .iter()
        .map(|a| {
            a.parse::<IpAddr>()
                .map_err(|_| bad(format!("`addrs` item `{a}` is not an IP address")))
        })
        .collect::<Result<Vec<IpAddr>, _>>()?;
    let (host, port) = crate::parse_target(&c.target).map_err(bad)?;
    let version = gw.version();
    let policy = &version.policy;
    let user = c.user.as_deref();
    let dest = match Destination::parse(&host) {
        Ok(d) => d,
        Err(e) => {
            let d = policy.invalid_destination(from, user, format!("invalid destination: {e}"));
            return Ok(json(
                StatusCode::OK,
                &crate::decision_json(&host, port, &d, None),
            ));
        }
    };
    if c.resolve && dest.name().is_some() {
        addrs = gw.dialer().resolve(&dest).await.map_err(|e| {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("cannot resolve {dest}: {e}"),
            )
        })?;
    }
    let req = PolicyRequest {
        src: from,
        user,
        dest: &dest,
        port,
    };
    let (decision, check) = policy.explain(&req, &addrs);
    let mut v = crate::decision_json(&dest.to_string(), port, &decision, check.as_ref());
    crate::add_port_miss(&mut v, policy, &decision, &dest, &addrs);
    Ok(json(StatusCode::OK, &v))
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid request body: {e}")))
}

/// RFC 3339 UTC with milliseconds, as in the flow records.
fn rfc3339(t: SystemTime) -> String {
    sluice_observe::rfc3339(t)
}
