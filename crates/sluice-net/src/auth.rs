//! Proxy authentication against the `users:` argon2 hashes.
//!
//! argon2 is deliberately slow, so verified credentials are cached (bounded)
//! and argon2 runs once per credential, not per connection, on the blocking
//! pool (`spawn_blocking`, at most two at once), never on the runtime's
//! workers. Unknown users are verified against a dummy hash with the default
//! parameters so that a reply takes the same path whether or not the user
//! exists.
//!
//! Failed logins are throttled per source ([`LoginThrottle`]): after
//! [`MAX_FAILURES`] within [`FAILURE_WINDOW`] from one address (one /64 for
//! IPv6), its attempts are refused for [`BACKOFF`] without running argon2,
//! so that guessing passwords cannot burn the gateway's CPU.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Most cached verified credentials; the cache is emptied when full.
const CACHE_MAX: usize = 4096;

/// Failed logins from one source within [`FAILURE_WINDOW`] before its
/// attempts are refused unchecked.
pub const MAX_FAILURES: u32 = 5;
/// The window failed logins are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a source that reached [`MAX_FAILURES`] is refused unchecked.
pub const BACKOFF: Duration = Duration::from_secs(60);
/// Most sources tracked at once (bounded memory); past it, the entries
/// whose window and back-off are over go first, then the oldest.
const THROTTLE_MAX: usize = 4096;

/// Result of checking a `Proxy-Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// No credentials were sent.
    Missing,
    /// The header is not `Basic base64(user:password)`.
    Malformed,
    /// Wrong user or password (indistinguishable on purpose); the user
    /// name that was tried.
    Failed(String),
    /// Too many failed logins from this source: refused without checking,
    /// for `retry_after` more.
    Throttled {
        /// The user name that was tried.
        user: String,
        /// How long until the source may try again.
        retry_after: Duration,
    },
    /// Verified user name.
    User(String),
}

/// Failed logins per source, to refuse a source that keeps failing
/// without running argon2 for it. A pure state machine over the `now`
/// it is given.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    sources: HashMap<IpAddr, Failures>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// When the current window began.
    since: Instant,
    /// Failures within it.
    count: u32,
    /// Refused unchecked until then.
    blocked_until: Option<Instant>,
}

/// The users of one policy version (name → argon2 PHC string).
#[derive(Debug, Clone, Default)]
pub struct Users(pub HashMap<String, String>);

/// Verifies credentials; shared across policy versions.
pub struct Authenticator {
    cache: Mutex<HashSet<[u8; 32]>>,
    throttle: Mutex<LoginThrottle>,
    /// Computed on first use (argon2 is slow; start-up should not wait).
    dummy: Arc<OnceLock<String>>,
    /// argon2 is memory-hard: bound how many run at once.
    gate: Semaphore,
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl Authenticator {
    /// A new authenticator with an empty cache.
    pub fn new() -> Authenticator {
        Authenticator {
            cache: Mutex::new(HashSet::new()),
            throttle: Mutex::new(LoginThrottle::default()),
            dummy: Arc::new(OnceLock::new()),
            gate: Semaphore::new(2),
        }
    }

    /// Checks a `Proxy-Authorization` header value from `src` against
    /// `users`.
    pub async fn check(
        &self,
        users: &Arc<Users>,
        header: Option<&str>,
        src: IpAddr,
    ) -> AuthOutcome {
        let Some(header) = header else {
            return AuthOutcome::Missing;
        };
        let Some((user, pass)) = parse_basic(header) else {
            return AuthOutcome::Malformed;
        };
        self.verify(users, &user, &pass, src).await
    }

    /// Verifies one user name and password sent from `src`. A source that
    /// failed too often is refused without checking (even a right
    /// password: guesses must not be free while it is blocked).
    pub async fn verify(
        &self,
        users: &Arc<Users>,
        user: &str,
        pass: &str,
        src: IpAddr,
    ) -> AuthOutcome {
        let throttled = |retry_after| AuthOutcome::Throttled {
            user: user.to_owned(),
            retry_after,
        };
        if let Some(wait) = self.blocked(src) {
            return throttled(wait);
        }
        let known = users.0.get(user).cloned();
        if let Some(phc) = &known {
            if self.cached(&cache_key(user, pass, phc)) {
                return AuthOutcome::User(user.to_owned());
            }
        }
        let Ok(_permit) = self.gate.acquire().await else {
            return AuthOutcome::Failed(user.to_owned());
        };
        // Attempts queued behind the gate are looked at again: a burst
        // from one source runs argon2 at most MAX_FAILURES (+ the gate's
        // two) times before the rest are refused unchecked.
        if let Some(wait) = self.blocked(src) {
            return throttled(wait);
        }
        let owned_pass = pass.to_owned();
        let dummy = self.dummy.clone();
        let phc = known.clone();
        let ok = tokio::task::spawn_blocking(move || {
            // Unknown users are verified against the dummy hash: same work.
            let phc = phc.unwrap_or_else(|| dummy.get_or_init(dummy_hash).clone());
            PasswordHash::new(&phc).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(owned_pass.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if let (true, Some(phc)) = (ok, &known) {
            self.remember(cache_key(user, pass, phc));
            AuthOutcome::User(user.to_owned())
        } else {
            if let Ok(mut t) = self.throttle.lock() {
                t.failed(src, Instant::now());
            }
            AuthOutcome::Failed(user.to_owned())
        }
    }

    /// How long `src` is still refused unchecked, if it is.
    fn blocked(&self, src: IpAddr) -> Option<Duration> {
        self.throttle
            .lock()
            .ok()
            .and_then(|mut t| t.blocked(src, Instant::now()))
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        self.cache.lock().is_ok_and(|c| c.contains(key))
    }

    fn remember(&self, key: [u8; 32]) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.clear();
            }
            c.insert(key);
        }
    }

    /// How many verified credentials are cached (for tests and metrics).
    pub fn cached_len(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }
}

// === impl LoginThrottle ===

impl LoginThrottle {
    /// How long `src` is still refused at `now`, if it is.
    pub fn blocked(&mut self, src: IpAddr, now: Instant) -> Option<Duration> {
        let key = source_key(src);
        let f = self.sources.get(&key)?;
        match f.blocked_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                // The back-off is over: the source starts afresh.
                self.sources.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Counts a failed login from `src` at `now`; the one that reaches
    /// [`MAX_FAILURES`] within [`FAILURE_WINDOW`] starts the back-off.
    pub fn failed(&mut self, src: IpAddr, now: Instant) {
        let key = source_key(src);
        if !self.sources.contains_key(&key) && self.sources.len() >= THROTTLE_MAX {
            self.evict(now);
        }
        let f = self.sources.entry(key).or_insert(Failures {
            since: now,
            count: 0,
            blocked_until: None,
        });
        if now.saturating_duration_since(f.since) > FAILURE_WINDOW {
            *f = Failures {
                since: now,
                count: 0,
                blocked_until: None,
            };
        }
        f.count = f.count.saturating_add(1);
        if f.count >= MAX_FAILURES && f.blocked_until.is_none() {
            f.blocked_until = Some(now + BACKOFF);
        }
    }

    /// How many sources are tracked.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Makes room: entries that no longer matter first, then the oldest
    /// window that is not blocked, then the oldest of all.
    fn evict(&mut self, now: Instant) {
        self.sources.retain(|_, f| match f.blocked_until {
            Some(until) => until > now,
            None => now.saturating_duration_since(f.since) <= FAILURE_WINDOW,
        });
        if self.sources.len() < THROTTLE_MAX {
            return;
        }
        let oldest = self
            .sources
            .iter()
            .min_by_key(|(_, f)| (f.blocked_until.is_some(), f.since))
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.sources.remove(&k);
        }
    }
}

/// The address a source is counted by: IPv4 as is (IPv4-mapped IPv6
/// too), IPv6 by its /64, which one host usually holds whole.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

fn dummy_hash() -> String {
    SaltString::encode_b64(b"sluice-dummy-salt")
        .ok()
        .and_then(|salt| {
            Argon2::default()
                .hash_password(b"sluice-dummy-password", &salt)
                .ok()
                .map(|h| h.to_string())
        })
        .unwrap_or_default()
}

fn cache_key(user: &str, pass: &str, phc: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user, pass, phc] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// `Basic base64(user:password)` → (user, password).
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Arc<Users> {
        let salt = SaltString::encode_b64(b"test-salt-bytes!").unwrap();
        let phc = Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        Arc::new(Users([("ci".to_owned(), phc)].into_iter().collect()))
    }

    #[tokio::test]
    async fn verify_and_cache() {
        let a = Authenticator::new();
        let u = users();
        let hdr = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let src: IpAddr = [127, 0, 0, 1].into();
        assert_eq!(a.check(&u, None, src).await, AuthOutcome::Missing);
        assert_eq!(
            a.check(&u, Some("Bearer x"), src).await,
            AuthOutcome::Malformed
        );
        assert_eq!(
            a.check(&u, Some(&hdr("ci:wrong")), src).await,
            AuthOutcome::Failed("ci".into())
        );
        assert_eq!(a.cached_len(), 0);
        // Unknown users go through argon2 with the dummy hash and fail the same way.
        assert_eq!(
            a.check(&u, Some(&hdr("nobody:s3cret")), src).await,
            AuthOutcome::Failed("nobody".into())
        );
        assert!(a.dummy.get().is_some_and(|d| d.starts_with("$argon2id$")));
        assert_eq!(
            a.check(&u, Some(&hdr("ci:s3cret")), src).await,
            AuthOutcome::User("ci".into())
        );
        assert_eq!(a.cached_len(), 1);
        assert_eq!(
            a.check(&u, Some(&hdr("ci:s3cret")), src).await,
            AuthOutcome::User("ci".into())
        );
        assert_eq!(a.cached_len(), 1);
    }

    #[test]
    fn a_source_is_blocked_after_max_failures_within_the_window() {
        let mut t = LoginThrottle::default();
        let t0 = Instant::now();
        let a: IpAddr = [192, 0, 2, 7].into();
        let b: IpAddr = [192, 0, 2, 8].into();
        for i in 0..MAX_FAILURES - 1 {
            t.failed(a, t0 + Duration::from_secs(u64::from(i)));
            assert_eq!(t.blocked(a, t0 + Duration::from_secs(u64::from(i))), None);
        }
        let at = t0 + Duration::from_secs(10);
        t.failed(a, at);
        assert_eq!(t.blocked(a, at), Some(BACKOFF));
        assert_eq!(t.blocked(b, at), None, "another source is not affected");
        assert_eq!(
            t.blocked(a, at + BACKOFF - Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(t.blocked(a, at + BACKOFF), None, "the back-off ends");
        assert!(t.is_empty(), "and the source starts afresh");
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_block() {
        let mut t = LoginThrottle::default();
        let t0 = Instant::now();
        let a: IpAddr = [192, 0, 2, 7].into();
        for i in 0..u64::from(MAX_FAILURES) * 2 {
            let now = t0 + (FAILURE_WINDOW / 2) * u32::try_from(i).unwrap();
            t.failed(a, now);
            assert_eq!(t.blocked(a, now), None, "failure {i}");
        }
    }

    #[test]
    fn ipv6_sources_count_by_their_64_and_memory_is_bounded() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..MAX_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            t.failed(ip, now);
        }
        let other: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(t.blocked(other, now), Some(BACKOFF));
        assert_eq!(t.len(), 1);
        for i in 0..(THROTTLE_MAX as u32 + 100) {
            t.failed(IpAddr::V4(i.into()), now);
        }
        assert!(t.len() <= THROTTLE_MAX, "{}", t.len());
    }
}
