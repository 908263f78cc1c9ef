//! Proxy authentication against the `users:` argon2 hashes.
//!
//! argon2 is deliberately slow, so verified credentials are cached (bounded)
//! and argon2 runs once per credential, not per connection. Unknown users are
//! verified against a dummy hash with the default parameters so that a reply
//! takes the same path whether or not the user exists.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Most cached verified credentials; the cache is emptied when full.
const CACHE_MAX: usize = 4096;

/// Result of checking a `Proxy-Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// No credentials were sent.
    Missing,
    /// The header is not `Basic base64(user:password)`.
    Malformed,
    /// Wrong user or password (indistinguishable on purpose).
    Failed,
    /// Verified user name.
    User(String),
}

/// The users of one policy version (name → argon2 PHC string).
#[derive(Debug, Clone, Default)]
pub struct Users(pub HashMap<String, String>);

/// Verifies credentials; shared across policy versions.
pub struct Authenticator {
    cache: Mutex<HashSet<[u8; 32]>>,
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
            dummy: Arc::new(OnceLock::new()),
            gate: Semaphore::new(2),
        }
    }

    /// Checks a `Proxy-Authorization` header value against `users`.
    pub async fn check(&self, users: &Arc<Users>, header: Option<&str>) -> AuthOutcome {
        let Some(header) = header else {
            return AuthOutcome::Missing;
        };
        let Some((user, pass)) = parse_basic(header) else {
            return AuthOutcome::Malformed;
        };
        self.verify(users, &user, &pass).await
    }

    /// Verifies one user name and password.
    pub async fn verify(&self, users: &Arc<Users>, user: &str, pass: &str) -> AuthOutcome {
        let known = users.0.get(user).cloned();
        if let Some(phc) = &known {
            if self.cached(&cache_key(user, pass, phc)) {
                return AuthOutcome::User(user.to_owned());
            }
        }
        let Ok(_permit) = self.gate.acquire().await else {
            return AuthOutcome::Failed;
        };
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
            AuthOutcome::Failed
        }
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
        assert_eq!(a.check(&u, None).await, AuthOutcome::Missing);
        assert_eq!(a.check(&u, Some("Bearer x")).await, AuthOutcome::Malformed);
        assert_eq!(
            a.check(&u, Some(&hdr("ci:wrong"))).await,
            AuthOutcome::Failed
        );
        assert_eq!(a.cached_len(), 0);
        // Unknown users go through argon2 with the dummy hash and fail the same way.
        assert_eq!(
            a.check(&u, Some(&hdr("nobody:s3cret"))).await,
            AuthOutcome::Failed
        );
        assert!(a.dummy.get().is_some_and(|d| d.starts_with("$argon2id$")));
        assert_eq!(
            a.check(&u, Some(&hdr("ci:s3cret"))).await,
            AuthOutcome::User("ci".into())
        );
        assert_eq!(a.cached_len(), 1);
        assert_eq!(
            a.check(&u, Some(&hdr("ci:s3cret"))).await,
            AuthOutcome::User("ci".into())
        );
        assert_eq!(a.cached_len(), 1);
    }
}
