//! What the HTTP proxy answers on its own: a refusal as an HTTP response
//! (400, 403, 407, 500, 502, 503, 504) with `Sluice-Rule`, `Sluice-Reason`
//! and `Sluice-Request-Id`, and the small bodies every answer uses.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    Response, StatusCode,
    header::{self, HeaderName, HeaderValue},
};
use sluice_policy::ids;

use super::ProxyBody;
use crate::{flow::Flow, refusal::Refusal};

/// The answer to a refused flow (the refusal already applied to `flow`).
pub(super) fn refusal(r: &Refusal, flow: &Flow) -> Response<ProxyBody> {
    let mut resp = match r {
        Refusal::BadRequest(why) => close(text(
            StatusCode::BAD_REQUEST,
            &format!("Bad request: {why}\n"),
        )),
        Refusal::InvalidDestination(why) => text(
            StatusCode::BAD_REQUEST,
            &format!("Bad destination: {why}\n"),
        ),
        Refusal::AuthRequired(reason) => auth_required(ids::NO_ZONE, reason),
        Refusal::AuthFailed {
            retry_after: None, ..
        } => auth_required(ids::AUTH_FAILED, &r.message()),
        Refusal::AuthFailed {
            retry_after: Some(wait),
            ..
        } => throttled(*wait, &r.message()),
        Refusal::Denied(_) | Refusal::Inspected { .. } => denied(flow),
        Refusal::Unscanned { .. } => {
            let mut r = denied(flow);
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
        Refusal::Resolve { host, .. } => text(
            StatusCode::BAD_GATEWAY,
            &format!("Bad gateway: cannot resolve {host}\n"),
        ),
        Refusal::Connect { addr, .. } => text(
            StatusCode::BAD_GATEWAY,
            &format!("Bad gateway: {addr} refused or is unreachable\n"),
        ),
        Refusal::Timeout(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway timeout: the destination did not answer in time\n",
        ),
        Refusal::NoResponse(_) => close(text(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway timeout: the origin sent no response within limits.response_timeout\n",
        )),
        Refusal::UpstreamClosed(why) => {
            text(StatusCode::BAD_GATEWAY, &format!("Bad gateway: {why}\n"))
        }
        Refusal::UpstreamCertificate(why) => text(
            StatusCode::BAD_GATEWAY,
            &format!(
                "Bad gateway: the origin's certificate did not verify, so Sluice did not send \
                 the request.\nrule: {}\nreason: {why}\nrequest id: {}\n",
                ids::INSPECT_UPSTREAM_CERTIFICATE,
                flow.id()
            ),
        ),
        Refusal::Draining => close(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sluice is draining; retry on another replica.\n",
        )),
        Refusal::Internal(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sluice failed on its own account; see its log.\n",
        ),
        Refusal::NoDescriptors(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable: Sluice is out of file descriptors (open-file limit reached); retry later.\n",
        ),
    };
    add_id(&mut resp, flow.id());
    resp
}

/// 403 with the rule, reason and zone that denied.
fn denied(flow: &Flow) -> Response<ProxyBody> {
    let body = format!(
        "Sluice denied this request.\nrule: {}\nreason: {}\nzone: {}\nrequest id: {}\n",
        flow.rule(),
        flow.reason(),
        flow.zone().unwrap_or("-"),
        flow.id(),
    );
    let mut resp = text(StatusCode::FORBIDDEN, &body);
    let h = resp.headers_mut();
    h.insert("sluice-rule", header_value(flow.rule()));
    h.insert("sluice-reason", header_value(flow.reason()));
    resp
}

fn auth_required(rule: &'static str, reason: &str) -> Response<ProxyBody> {
    let mut resp = text(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        &format!("Proxy authentication required: {reason}\n"),
    );
    let h = resp.headers_mut();
    h.insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"sluice\""),
    );
    h.insert("sluice-rule", HeaderValue::from_static(rule));
    h.insert("sluice-reason", header_value(reason));
    resp
}

/// 429 to a source that failed to log in too often: it is not asked for
/// credentials again (no `Proxy-Authenticate`) until `Retry-After`.
fn throttled(wait: std::time::Duration, reason: &str) -> Response<ProxyBody> {
    let mut resp = close(text(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Too many requests: {reason}\n"),
    ));
    let h = resp.headers_mut();
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(wait.as_secs().max(1)),
    );
    h.insert("sluice-rule", HeaderValue::from_static(ids::AUTH_FAILED));
    h.insert("sluice-reason", header_value(reason));
    resp
}

fn close(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A header value from any text: non-printable characters become `?`,
/// at most 512 characters.
fn header_value(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Names the flow's record in the answer (`Sluice-Request-Id`).
pub(super) fn add_id<B>(resp: &mut Response<B>, id: &str) {
    if let Some(v) = id_header(id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
}

/// The `Sluice-Request-Id` header.
pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static("sluice-request-id");

/// A flow id as the `Sluice-Request-Id` value (`None` when empty).
pub(super) fn id_header(id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(id).ok().filter(|_| !id.is_empty())
}

/// A plain-text answer.
pub(super) fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An empty body.
pub(super) fn empty() -> ProxyBody {
    // `Empty` has no size: boxing it allocates nothing (an empty `Full`
    // did, once per answer without a body).
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}
