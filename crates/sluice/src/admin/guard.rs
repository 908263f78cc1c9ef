//! Who may talk to the admin listener: the checks every request passes
//! before it is routed. Pure functions of the request head, so each rule is
//! tested alone.
//!
//! - `Host` must name this listener: `localhost`, the address the
//!   connection arrived on, or a configured `admin.hosts` name. A web page
//!   that rebinds its own name to 127.0.0.1 (DNS rebinding) still sends its
//!   own name, and is refused.
//! - A cross-site request (an `Origin` other than the `Host`, or
//!   `Sec-Fetch-Site: cross-site`/`same-site`) is refused on the API and on
//!   every method that is not GET or HEAD, so a page in a local browser can
//!   neither read the API nor post to it.
//! - With `admin.token_file`, everything but the dashboard's static assets
//!   and `admin.open_paths` needs `Authorization: Bearer <token>`.

use std::net::{IpAddr, SocketAddr};

use hyper::{HeaderMap, Method, header};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` header names something else (or is missing).
    Host,
    /// A cross-site request.
    Origin,
    /// The bearer token is missing or wrong.
    Token,
}

/// The admin listener's access settings.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token, when `admin.token_file` is set.
    pub token: Option<String>,
    /// Paths served without the token.
    pub open_paths: Vec<String>,
    /// Extra accepted `Host` names (`name` or `name:port`, lower-case).
    pub hosts: Vec<String>,
}

/// Static assets of the dashboard: public (they are in the binary), so the
/// page can load and then ask for the token.
pub fn is_asset(path: &str) -> bool {
    matches!(
        path,
        "/" | "/index.html" | "/assets/app.js" | "/assets/app.css" | "/favicon.svg"
    )
}

// === impl Access ===

impl Access {
    /// Checks one request head that arrived on `local`.
    pub fn check(
        &self,
        local: SocketAddr,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        let host = header_str(headers, header::HOST).ok_or(Refusal::Host)?;
        if !self.host_allowed(local, host) {
            return Err(Refusal::Host);
        }
        let api = path.starts_with("/api/");
        let safe = method == Method::GET || method == Method::HEAD;
        if (api || !safe) && cross_site(headers, host) {
            return Err(Refusal::Origin);
        }
        if is_asset(path) || self.open_paths.iter().any(|p| p == path) {
            return Ok(());
        }
        if self.token_ok(headers) {
            Ok(())
        } else {
            Err(Refusal::Token)
        }
    }

    /// Whether `host` (a `Host` header value) names this listener.
    fn host_allowed(&self, local: SocketAddr, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if self.hosts.contains(&host) {
            return true;
        }
        let Some(name) = host_part(&host) else {
            return false;
        };
        if self.hosts.iter().any(|h| h == name) {
            return true;
        }
        if name == "localhost" {
            return true;
        }
        let name = name.trim_start_matches('[').trim_end_matches(']');
        // Only the address itself: a browser puts a name in `Host` whenever
        // the page used one, and names are what rebinding attacks use.
        name.parse::<IpAddr>()
            .is_ok_and(|ip| ip == local.ip() || canonical(ip) == canonical(local.ip()))
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let sent = header_str(headers, header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compare without an early exit so timing does not reveal a prefix.
        sent.len() == token.len()
            && sent
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn header_str<K: header::AsHeaderName>(headers: &HeaderMap, name: K) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The host of a `host[:port]` authority, without the port.
fn host_part(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        if !rest.is_empty() && !rest.starts_with(':') {
            return None;
        }
        return Some(&authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => None,
        Some((h, _)) => Some(h),
        None => Some(authority),
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the browser says this request comes from another site.
fn cross_site(headers: &HeaderMap, host: &str) -> bool {
    if let Some(site) = header_str(headers, "sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    match header_str(headers, header::ORIGIN) {
        None => false,
        Some(origin) => {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            // `Origin: null` (sandboxed frames, file://) is cross-site too.
            authority.is_none_or(|a| !a.eq_ignore_ascii_case(host.trim()))
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn access(token: Option<&str>) -> Access {
        Access {
            token: token.map(str::to_owned),
            open_paths: vec!["/healthz".into(), "/readyz".into()],
            hosts: vec!["sluice.internal".into(), "gw.example:8443".into()],
        }
    }

    fn check(a: &Access, method: Method, path: &str, hs: &[(&str, &str)]) -> Result<(), Refusal> {
        let local: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let mut headers = HeaderMap::new();
        for (k, v) in hs {
            headers.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        a.check(local, &method, path, &headers)
    }

    #[test]
    fn host_must_name_this_listener() {
        let a = access(None);
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "localhost:9901",
            "LOCALHOST",
            "localhost:8080",
            "sluice.internal:1234",
            "gw.example:8443",
        ] {
            assert_eq!(
                check(&a, Method::GET, "/api/v1/flows", &[("host", ok)]),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:9901",
            "127.0.0.2:9901",
            "gw.example:9901",
            "localhost.evil.example",
            "[::1]:9901",
            "",
        ] {
            assert_eq!(
                check(&a, Method::GET, "/api/v1/flows", &[("host", bad)]),
                Err(Refusal::Host),
                "{bad}"
            );
        }
        assert_eq!(check(&a, Method::GET, "/healthz", &[]), Err(Refusal::Host));
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let a = access(None);
        let host = ("host", "127.0.0.1:9901");
        let same = ("origin", "http://127.0.0.1:9901");
        let other = ("origin", "http://evil.example");
        assert_eq!(
            check(&a, Method::POST, "/api/v1/check", &[host, same]),
            Ok(())
        );
        assert_eq!(
            check(&a, Method::POST, "/api/v1/check", &[host, other]),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(
                &a,
                Method::GET,
                "/api/v1/flows",
                &[host, ("origin", "null")]
            ),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(
                &a,
                Method::GET,
                "/api/v1/flows",
                &[host, ("sec-fetch-site", "cross-site")]
            ),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(
                &a,
                Method::GET,
                "/api/v1/flows",
                &[host, ("sec-fetch-site", "same-origin")]
            ),
            Ok(())
        );
        // Following a link to the dashboard from elsewhere is fine: the page
        // holds no data; its API calls are same-origin.
        assert_eq!(
            check(
                &a,
                Method::GET,
                "/",
                &[host, ("sec-fetch-site", "cross-site")]
            ),
            Ok(())
        );
    }

    #[test]
    fn token_guards_all_but_assets_and_open_paths() {
        let a = access(Some("s3cret"));
        let host = ("host", "localhost:9901");
        assert_eq!(
            check(&a, Method::GET, "/api/v1/flows", &[host]),
            Err(Refusal::Token)
        );
        assert_eq!(
            check(&a, Method::GET, "/metrics", &[host]),
            Err(Refusal::Token)
        );
        assert_eq!(
            check(
                &a,
                Method::GET,
                "/api/v1/flows",
                &[host, ("authorization", "Bearer s3cre")]
            ),
            Err(Refusal::Token)
        );
        assert_eq!(
            check(
                &a,
                Method::GET,
                "/api/v1/flows",
                &[host, ("authorization", "Bearer s3cret")]
            ),
            Ok(())
        );
        assert_eq!(check(&a, Method::GET, "/healthz", &[host]), Ok(()));
        assert_eq!(check(&a, Method::GET, "/", &[host]), Ok(()));
        assert_eq!(check(&a, Method::GET, "/assets/app.js", &[host]), Ok(()));
    }
}
