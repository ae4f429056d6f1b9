//! Browser sessions and API tokens: how a request proves who it is.
//!
//! **Sessions** ([`SESSIONS_BUCKET`]): a login makes a 256-bit random session id, sent once in
//! the `wg_session` cookie. The store keeps only SHA-256 of it (domain-separated), with the user,
//! the user's `generation` at login, and the times. A session is valid while
//! - now < login + `session_absolute_secs` (also the bucket's `max_age`, which collects it),
//! - now < last use + `session_idle_secs` (last use written back at most every
//!   `session_refresh_secs`),
//! - the user exists, is enabled and still has the same `generation` (a password change,
//!   disabling or deletion bumps it, and also deletes the user's sessions).
//!
//! The CSRF token is derived from the session id (SHA-256 with another domain), so it needs no
//! storage and a reader of the store cannot compute it.
//!
//! **API tokens** ([`API_TOKENS_BUCKET`]): `wgapi_` + 256 random bits (base64url), stored as
//! SHA-256 only, with the owner, optional narrower bindings, and a required expiry (at most
//! `api_token_max_days`). A token acts with the intersection of its bindings and its user's
//! *current* bindings ([`intersect`]); a disabled or deleted user's tokens stop working.
//!
//! If the store is unreachable, every lookup fails with [`AuthorityError`]; the HTTP layer
//! answers 503 (there is no local fallback: a cached session could outlive its revocation).

use crate::{
    audit::AuditEntry,
    authority::{Authority, AuthorityError, kv_values, store_err},
    rbac::{Binding, Principal, Scope},
    users::{UserError, UserRecord},
};
use async_nats::jetstream::kv;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wegweiser_shared::{enroll::hex, ids::UserName, secret::SecretString, time};

/// The KV bucket of sessions (key: hash of the session id).
pub const SESSIONS_BUCKET: &str = "wg_sessions";
/// The KV bucket of API tokens (key: SHA-256 of the token).
pub const API_TOKENS_BUCKET: &str = "wg_api_tokens";
/// Prefix of every API token.
pub const API_TOKEN_PREFIX: &str = "wgapi_";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn digest(domain: &str, secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// The store key of a session id.
fn session_key(id: &str) -> String {
    hex(&digest("wegweiser session", id))
}

/// The CSRF token of a session id.
pub fn csrf_token(session_id: &str) -> String {
    B64.encode(digest("wegweiser csrf", session_id))
}

/// Constant-time equality of two secrets (length is not hidden).
pub fn secret_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The store key of an API token.
fn token_key(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// A stored session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The user.
    pub user: UserName,
    /// The user's generation at login.
    pub generation: u64,
    /// Login time, Unix seconds.
    pub created_at: i64,
    /// Absolute end, Unix seconds.
    pub expires_at: i64,
    /// Last use (written back at most every `session_refresh_secs`).
    pub last_seen: i64,
    /// Address of the login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A new session: the id goes into the cookie, the CSRF token to the client.
#[derive(Debug)]
pub struct NewSession {
    /// The session id (cookie value). Shown only now.
    pub id: SecretString,
    /// Its CSRF token.
    pub csrf_token: String,
    /// Absolute end, Unix seconds.
    pub expires_at: i64,
}

/// A stored API token (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// Short id: the first 16 hex characters of its hash.
    pub id: String,
    /// The user it acts for.
    pub owner: UserName,
    /// Free text.
    #[serde(default)]
    pub label: String,
    /// Narrower bindings (none: the user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<Vec<Binding>>,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// The owner's [`crate::users::UserRecord::uid`]: a later user of the same name is another.
    #[serde(default)]
    pub owner_uid: u64,
}

/// A new API token.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    /// The user it acts for.
    pub owner: UserName,
    /// Free text.
    pub label: String,
    /// Narrower bindings; each must lie within one of the user's.
    pub bindings: Option<Vec<Binding>>,
    /// Lifetime, seconds (required; at most `api_token_max_days`).
    pub ttl_secs: i64,
}

/// How a request authenticated.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A session cookie.
    Session {
        /// The session's store key (not the id).
        key: String,
        /// Its CSRF token.
        csrf_token: String,
        /// Absolute end, Unix seconds.
        expires_at: i64,
    },
    /// An API token.
    ApiToken {
        /// Its id.
        id: String,
        /// Its expiry.
        expires_at: i64,
    },
}

/// An authenticated request: who and how.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who, with the bindings that apply.
    pub principal: Principal,
    /// How.
    pub credential: Credential,
}

/// Whether `inner` grants nothing `outer` does not: its scope lies within and its role is not
/// higher.
fn covered(inner: &Binding, outer: &Binding) -> bool {
    inner.role <= outer.role && inner.scope.within(&outer.scope)
}

/// The bindings an API token acts with: each pairing of a token binding and a user binding
/// whose scopes nest gives the narrower scope at the lesser role.
pub fn intersect(user: &[Binding], token: &[Binding]) -> Vec<Binding> {
    let mut out: Vec<Binding> = Vec::new();
    for t in token {
        for u in user {
            let scope: Option<&Scope> = if t.scope.within(&u.scope) {
                Some(&t.scope)
            } else if u.scope.within(&t.scope) {
                Some(&u.scope)
            } else {
                None
            };
            if let Some(scope) = scope {
                let b = Binding {
                    role: t.role.min(u.role),
                    scope: scope.clone(),
                };
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
    }
    out
}

impl Authority {
    fn auth_cfg(&self) -> &crate::users::AuthConfig {
        &self.inner.cfg.auth
    }

    /// Starts a session for `user` (after its password was checked).
    pub async fn create_session(
        &self,
        user: &UserRecord,
        ip: Option<String>,
    ) -> Result<NewSession, AuthorityError> {
        let id = SecretString::new(B64.encode(rand::random::<[u8; 32]>()));
        let now = time::now();
        let rec = SessionRecord {
            user: user.name.clone(),
            generation: user.generation,
            created_at: now,
            expires_at: now + self.auth_cfg().session_absolute_secs,
            last_seen: now,
            ip,
        };
        self.inner
            .authn
            .sessions
            .create(
                session_key(id.expose()),
                serde_json::to_vec(&rec).map_err(store_err)?.into(),
            )
            .await
            .map_err(store_err)?;
        Ok(NewSession {
            csrf_token: csrf_token(id.expose()),
            id,
            expires_at: rec.expires_at,
        })
    }

    /// The user of a live session and its current bindings; `None` for an unknown, expired or
    /// revoked session. With `touch`, counts as use: moves the session's last use (written back
    /// at most every `session_refresh_secs`); requests a page makes on its own (refreshes, live
    /// streams) do not, so an unattended dashboard still ends at the idle timeout.
    pub async fn session(
        &self,
        session_id: &str,
        now: i64,
        touch: bool,
    ) -> Result<Option<Authenticated>, AuthorityError> {
        let cfg = self.auth_cfg();
        let key = session_key(session_id);
        let store = &self.inner.authn.sessions;
        let Some(e) = store.entry(key.as_str()).await.map_err(store_err)? else {
            return Ok(None);
        };
        if e.operation != kv::Operation::Put {
            return Ok(None);
        }
        let Ok(mut rec) = serde_json::from_slice::<SessionRecord>(&e.value) else {
            return Ok(None);
        };
        if now >= rec.expires_at || now >= rec.last_seen + cfg.session_idle_secs {
            let _ = store.delete_expect_revision(&key, Some(e.revision)).await;
            return Ok(None);
        }
        let user = match self.user_entry(&rec.user).await {
            Ok(Some((u, _))) => u,
            Ok(None) => return Ok(None),
            Err(UserError::Store(e)) => return Err(e),
            Err(e) => return Err(store_err(e)),
        };
        if user.disabled || user.generation != rec.generation {
            return Ok(None);
        }
        if touch && now - rec.last_seen >= cfg.session_refresh_secs {
            rec.last_seen = now;
            if let Ok(body) = serde_json::to_vec(&rec) {
                // A concurrent refresh of the same session is as good as this one.
                let _ = store.update(&key, body.into(), e.revision).await;
            }
        }
        Ok(Some(Authenticated {
            principal: Principal {
                user: user.name.to_string(),
                bindings: user.bindings,
            },
            credential: Credential::Session {
                key,
                csrf_token: csrf_token(session_id),
                expires_at: rec.expires_at,
            },
        }))
    }

    /// Ends one session by its store key (logout).
    pub async fn end_session(&self, key: &str) -> Result<(), AuthorityError> {
        self.inner
            .authn
            .sessions
            .delete(key)
            .await
            .map_err(store_err)
    }

    /// Ends every session of `user`; returns how many.
    pub async fn end_sessions_of(&self, user: &UserName) -> Result<usize, AuthorityError> {
        let store = &self.inner.authn.sessions;
        let mut n = 0;
        for (key, v) in kv_values(&self.inner.cp, store, ">").await? {
            if serde_json::from_slice::<SessionRecord>(&v).is_ok_and(|r| &r.user == user) {
                store.delete(&key).await.map_err(store_err)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Creates an API token (shown once; only its hash is stored).
    pub async fn create_api_token(
        &self,
        new: NewApiToken,
        actor: &str,
    ) -> Result<(SecretString, ApiTokenRecord), UserError> {
        let max = self.auth_cfg().api_token_max_days * 86_400;
        if !(60..=max).contains(&new.ttl_secs) {
            return Err(UserError::BadToken(format!(
                "an API token's lifetime must be 60 s to {} days",
                self.auth_cfg().api_token_max_days
            )));
        }
        let user = self.user(&new.owner).await?;
        if user.disabled {
            return Err(UserError::BadToken(format!(
                "user {} is disabled",
                new.owner
            )));
        }
        if let Some(bs) = &new.bindings {
            if bs.is_empty() {
                return Err(UserError::BadToken(
                    "narrower bindings, if given, must not be empty".into(),
                ));
            }
            if let Some(b) = bs
                .iter()
                .find(|b| !user.bindings.iter().any(|u| covered(b, u)))
            {
                return Err(UserError::BadToken(format!(
                    "binding {} at {} is not within the bindings of user {}",
                    serde_json::to_string(&b.role).unwrap_or_default(),
                    serde_json::to_string(&b.scope).unwrap_or_default(),
                    new.owner
                )));
            }
        }
        let token = SecretString::new(format!(
            "{API_TOKEN_PREFIX}{}",
            B64.encode(rand::random::<[u8; 32]>())
        ));
        let key = token_key(token.expose());
        let now = time::now();
        let rec = ApiTokenRecord {
            id: key[..16].to_owned(),
            owner: new.owner,
            label: new.label,
            bindings: new.bindings,
            created_at: now,
            expires_at: now + new.ttl_secs,
            owner_uid: user.uid,
        };
        self.inner
            .authn
            .api_tokens
            .create(&key, serde_json::to_vec(&rec).map_err(store_err)?.into())
            .await
            .map_err(store_err)?;
        let mut a = AuditEntry::new("api_token.create", actor, "ok");
        a.detail =
            serde_json::json!({"token": rec.id, "user": rec.owner, "expires_at": rec.expires_at});
        self.audit().record(a).await;
        Ok((token, rec))
    }

    async fn api_token_entries(
        &self,
        owner: Option<&UserName>,
    ) -> Result<Vec<(String, ApiTokenRecord)>, AuthorityError> {
        let mut out: Vec<_> = kv_values(&self.inner.cp, &self.inner.authn.api_tokens, ">")
            .await?
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_slice::<ApiTokenRecord>(&v).ok()?)))
            .filter(|(_, r)| owner.is_none_or(|o| &r.owner == o))
            .collect();
        out.sort_by(|a, b| (&a.1.owner, a.1.created_at).cmp(&(&b.1.owner, b.1.created_at)));
        Ok(out)
    }

    /// API tokens (of one user, or all).
    pub async fn api_tokens(
        &self,
        owner: Option<&UserName>,
    ) -> Result<Vec<ApiTokenRecord>, AuthorityError> {
        Ok(self
            .api_token_entries(owner)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Revokes an API token by id (of `owner` only, when given).
    pub async fn revoke_api_token(
        &self,
        id: &str,
        owner: Option<&UserName>,
        actor: &str,
    ) -> Result<ApiTokenRecord, UserError> {
        let (key, rec) = self
            .api_token_entries(owner)
            .await?
            .into_iter()
            .find(|(_, r)| r.id == id)
            .ok_or_else(|| UserError::TokenNotFound(id.chars().take(32).collect()))?;
        self.inner
            .authn
            .api_tokens
            .delete(&key)
            .await
            .map_err(store_err)?;
        let mut a = AuditEntry::new("api_token.revoke", actor, "ok");
        a.detail = serde_json::json!({"token": rec.id, "user": rec.owner});
        self.audit().record(a).await;
        Ok(rec)
    }

    /// Revokes every API token of `owner`; returns how many.
    pub async fn revoke_api_tokens_of(&self, owner: &UserName) -> Result<usize, AuthorityError> {
        let entries = self.api_token_entries(Some(owner)).await?;
        for (key, _) in &entries {
            self.inner
                .authn
                .api_tokens
                .delete(key)
                .await
                .map_err(store_err)?;
        }
        Ok(entries.len())
    }

    /// The principal of a valid API token; `None` for an unknown, expired or revoked token or
    /// one whose user is gone or disabled.
    pub async fn api_token(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Option<Authenticated>, AuthorityError> {
        if !token.starts_with(API_TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let Some(v) = self
            .inner
            .authn
            .api_tokens
            .get(token_key(token))
            .await
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let Ok(rec) = serde_json::from_slice::<ApiTokenRecord>(&v) else {
            return Ok(None);
        };
        if now >= rec.expires_at {
            return Ok(None);
        }
        let user = match self.user_entry(&rec.owner).await {
            Ok(Some((u, _))) => u,
            Ok(None) => return Ok(None),
            Err(UserError::Store(e)) => return Err(e),
            Err(e) => return Err(store_err(e)),
        };
        // A token of an earlier user of the name does not act for this one.
        if user.disabled || rec.owner_uid != user.uid {
            return Ok(None);
        }
        let bindings = match &rec.bindings {
            None => user.bindings,
            Some(t) => intersect(&user.bindings, t),
        };
        Ok(Some(Authenticated {
            principal: Principal {
                user: user.name.to_string(),
                bindings,
            },
            credential: Credential::ApiToken {
                id: rec.id,
                expires_at: rec.expires_at,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::Role;

    fn tenant(t: &str) -> Scope {
        Scope::Tenant {
            tenant: t.parse().unwrap(),
        }
    }
    fn org(t: &str, o: &str) -> Scope {
        Scope::Organization {
            tenant: t.parse().unwrap(),
            organization: o.into(),
        }
    }
    fn b(role: Role, scope: Scope) -> Binding {
        Binding { role, scope }
    }

    #[test]
    fn a_token_never_exceeds_its_user() {
        let user = vec![b(Role::Manager, tenant("acme"))];
        // Narrower scope, higher role: the user's role at the token's scope.
        assert_eq!(
            intersect(&user, &[b(Role::Admin, org("acme", "o1"))]),
            vec![b(Role::Manager, org("acme", "o1"))]
        );
        // Wider scope: the user's scope.
        assert_eq!(
            intersect(&user, &[b(Role::Viewer, Scope::Global)]),
            vec![b(Role::Viewer, tenant("acme"))]
        );
        // Elsewhere: nothing.
        assert!(intersect(&user, &[b(Role::Viewer, tenant("other"))]).is_empty());
        // The user lost its binding: the token has nothing.
        assert!(intersect(&[], &[b(Role::Viewer, tenant("acme"))]).is_empty());
        assert!(covered(&b(Role::Viewer, org("acme", "o1")), &user[0]));
        assert!(!covered(&b(Role::Admin, org("acme", "o1")), &user[0]));
    }

    #[test]
    fn keys_and_csrf_tokens_are_separate_hashes() {
        let id = "session-id";
        assert_ne!(session_key(id), hex(&Sha256::digest(id.as_bytes())));
        assert_ne!(csrf_token(id), B64.encode(Sha256::digest(id.as_bytes())));
        assert!(secret_eq(&csrf_token(id), &csrf_token(id)));
        assert!(!secret_eq(&csrf_token(id), &csrf_token("other")));
        assert!(!secret_eq("a", "ab"));
    }
}
