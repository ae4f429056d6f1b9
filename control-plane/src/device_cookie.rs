//! Device cookies: a browser that has logged in as a user before keeps logging in while that
//! user's account is locked by somebody else's guesses.
//!
//! The per-account lock stops password guessing spread over many addresses, but anybody who
//! knows a user name can keep that account locked. A successful login therefore also sets
//! [`COOKIE`], sealed (XChaCha20-Poly1305, see [`crate::seal`]) under a key derived from the
//! master key, naming the user (its name, random id and generation), a random cookie id and its
//! expiry. A login that presents a valid device cookie for the same user is not subject to the
//! account's lock and rate limit; instead its failures count against that cookie, which is
//! locked on its own after the same number of failures (and then counts as absent). The
//! per-address limits apply either way. Every successful login sets a new cookie; earlier ones stay valid until they
//! expire, the user's generation moves on (a password change, a disabling) or the user is
//! deleted (a user made again under the name has another id). Nothing is stored per cookie but
//! its failures.

use crate::{seal::MasterKey, users::UserRecord};
use axum::http::HeaderValue;
use serde::{Deserialize, Serialize};

/// The cookie's name (the `__Secure-` prefix: browsers accept it only with `Secure`, from
/// HTTPS).
pub const COOKIE: &str = "__Secure-wg_device";
/// Where the browser sends it: the login and password endpoints only.
pub const PATH: &str = "/v1/auth";
/// How long a device cookie is honoured, seconds (90 days).
pub const LIFETIME_SECS: i64 = 90 * 86_400;
/// Longest cookie value looked at; anything longer is ignored unread.
pub const MAX_LEN: usize = 512;

/// Binds sealed values to this use: a sealed tenant secret never opens as a cookie.
const AAD: &str = "wegweiser device cookie v1";
const KEY_LABEL: &str = "wegweiser device cookie key";

#[derive(Serialize, Deserialize)]
struct Payload {
    /// The user name.
    u: String,
    /// The user's generation when it was issued.
    g: u64,
    /// The user's random id: a user made again under a deleted user's name is another.
    c: u64,
    /// The cookie's random id (hex), the unit its failures are counted under.
    n: String,
    /// Expiry, unix seconds.
    e: i64,
}

/// Issues and opens device cookies.
#[derive(Clone)]
pub struct DeviceCookies {
    key: MasterKey,
}

impl std::fmt::Debug for DeviceCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceCookies(***)")
    }
}

impl DeviceCookies {
    /// Under a key derived from `master` for this use only.
    pub fn new(master: &MasterKey) -> Self {
        Self {
            key: master.derive(KEY_LABEL),
        }
    }

    /// A fresh cookie value for `user` at `now`.
    pub fn issue(&self, user: &UserRecord, now: i64) -> String {
        let id: [u8; 16] = rand::random();
        let p = Payload {
            u: user.name.to_string(),
            g: user.generation,
            c: user.uid,
            n: wegweiser_shared::enroll::hex(&id),
            e: now.saturating_add(LIFETIME_SECS),
        };
        // Serializing a struct of strings and an integer cannot fail.
        let plain = serde_json::to_vec(&p).unwrap_or_default();
        self.key.seal(AAD, &plain)
    }

    /// The cookie's id when `value` is a cookie this server issued for `user` as it is now
    /// (same name, id and generation) that has not expired at `now`; `None` for anything
    /// else (malformed, oversized, altered, sealed under another key, another user's, of an
    /// earlier generation or an earlier user of the name, expired).
    pub fn open(&self, value: &str, user: &UserRecord, now: i64) -> Option<String> {
        if value.len() > MAX_LEN {
            return None;
        }
        let plain = self.key.open(AAD, value).ok()?;
        let p: Payload = serde_json::from_slice(&plain).ok()?;
        (p.u == user.name.as_str() && p.g == user.generation && p.c == user.uid && now < p.e)
            .then_some(p.n)
    }

    /// The `Set-Cookie` header carrying `value`.
    pub fn header(value: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{COOKIE}={value}; Path={PATH}; Max-Age={LIFETIME_SECS}; Secure; HttpOnly; SameSite=Strict"
        ))
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, generation: u64, uid: u64) -> UserRecord {
        UserRecord {
            name: name.parse().unwrap(),
            password_hash: String::new(),
            bindings: Vec::new(),
            created_at: 0,
            changed_at: 0,
            password_changed_at: 0,
            generation,
            disabled: false,
            uid,
        }
    }

    #[test]
    fn opens_only_its_own_unexpired_cookies_for_the_same_user() {
        let master = MasterKey::generate();
        let c = DeviceCookies::new(&master);
        let alice = user("alice", 3, 10);
        let v = c.issue(&alice, 1_000);
        assert!(!v.contains("alice"), "the user name is not readable");
        let id = c.open(&v, &alice, 1_000).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(c.open(&v, &alice, 1_000 + LIFETIME_SECS - 1), Some(id));
        // Expired, another user's, of an earlier generation (the password changed since), of
        // an earlier user of the same name, replayed to another server, or under the master
        // key itself.
        assert_eq!(c.open(&v, &alice, 1_000 + LIFETIME_SECS), None);
        assert_eq!(c.open(&v, &user("bob", 3, 10), 1_000), None);
        assert_eq!(c.open(&v, &user("alice", 4, 10), 1_000), None);
        assert_eq!(c.open(&v, &user("alice", 3, 11), 1_000), None);
        let other = DeviceCookies::new(&MasterKey::generate());
        assert_eq!(other.open(&v, &alice, 1_000), None);
        assert!(
            master.open(AAD, &v).is_err(),
            "the derived key is not the master key"
        );
        // Two cookies for one user are told apart.
        assert_ne!(
            c.open(&c.issue(&alice, 1_000), &alice, 1_000),
            c.open(&v, &alice, 1_000)
        );
    }

    #[test]
    fn malformed_tampered_and_oversized_values_are_refused() {
        let c = DeviceCookies::new(&MasterKey::generate());
        let alice = user("alice", 1, 0);
        let v = c.issue(&alice, 0);
        // Every single-character change of the sealed part.
        let body = v.strip_prefix("v1.").unwrap();
        for i in 0..body.len() {
            let mut b = body.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = format!("v1.{}", String::from_utf8(b).unwrap());
            if t != v {
                assert_eq!(c.open(&t, &alice, 0), None, "changed at {i}");
            }
        }
        for bad in [
            "",
            "v1.",
            "v1.!!!",
            "v2.AAAA",
            "wg_session=x",
            &"A".repeat(MAX_LEN + 1),
        ] {
            assert_eq!(c.open(bad, &alice, 0), None, "{bad:.20}");
        }
        // A sealed value that is not a cookie payload.
        let not_json = c.key.seal(AAD, b"not json");
        assert_eq!(c.open(&not_json, &alice, 0), None);
        let header = DeviceCookies::header(&v).unwrap();
        let h = header.to_str().unwrap();
        for part in ["Path=/v1/auth", "Secure", "HttpOnly", "SameSite=Strict"] {
            assert!(h.contains(part), "{h}");
        }
    }
}
