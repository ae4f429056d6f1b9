//! Users of the control-plane API: names, argon2id password hashes and role bindings, kept in
//! the KV bucket [`USERS_BUCKET`] (key: the user name).
//!
//! - Passwords are at least [`MIN_PASSWORD_CHARS`] characters, hashed with argon2id at the cost
//!   of [`AuthConfig`] (default m = 19 MiB, t = 2, p = 1), in a blocking thread, at most
//!   [`AuthConfig::max_concurrent_hashes`] at a time (each hash holds its memory).
//! - A password change and a disabling bump the user's `generation`: every session and device
//!   cookie made under an older generation stops working at once (see [`crate::sessions`]). A
//!   deletion removes the record; a user made again under the name has another random `uid`
//!   (which API tokens and device cookies carry) and starts at a random generation (which
//!   sessions carry), so nothing of the old user works for the new one.
//! - The first `wegweiser serve` creates the platform operator `admin` (global Admin) when no
//!   user exists ([`Authority::bootstrap_admin`]); its password comes from
//!   [`ENV_ADMIN_PASSWORD`] or is generated and written once to [`INITIAL_PASSWORD_FILE`]
//!   (owner-only) in the data directory. It is never logged.
//! - The last enabled global Admin can be neither deleted, disabled nor stripped of that binding.
//!   Such changes to a user who is one run one at a time, under a lease in the users bucket,
//!   so two Admins taking each other away at the same moment cannot both pass the check. A
//!   holder that stalls past the lease (10 s) and is taken over gives way when it resumes,
//!   unless the stall falls between its last look at the lease and its write.
//!
//! Every function here is what the CLI calls and what the API handlers call.

use crate::{
    audit::AuditEntry,
    authority::{Authority, AuthorityError, kv_values, store_err},
    rbac::{Binding, Role, Scope},
};
use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};
use wegweiser_shared::{ids::UserName, secret::SecretString, time};

/// The KV bucket of users (key: user name).
pub const USERS_BUCKET: &str = "wg_users";
/// The platform operator created by the first `serve`.
pub const ADMIN_USER: &str = "admin";
/// Environment variable holding the first admin's initial password.
pub const ENV_ADMIN_PASSWORD: &str = "WEGWEISER_ADMIN_PASSWORD";
/// File in the data directory that receives a generated initial admin password (mode 0600).
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";
/// The shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password, in bytes (longer input is refused before hashing).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// `[auth]`: users, sessions, API tokens and login protection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// argon2id memory cost, KiB (default 19456 = 19 MiB).
    pub argon2_memory_kib: u32,
    /// argon2id iterations (default 2).
    pub argon2_iterations: u32,
    /// argon2id lanes (default 1).
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (0: one per CPU); more wait.
    pub max_concurrent_hashes: usize,
    /// A session unused this long ends, seconds (default 1800).
    pub session_idle_secs: i64,
    /// A session ends this long after login whatever happens, seconds (default 43200).
    pub session_absolute_secs: i64,
    /// A session's last use is written back at most this often, seconds (default 60).
    pub session_refresh_secs: i64,
    /// Longest lifetime of an API token, days (default 365).
    pub api_token_max_days: i64,
    /// Login attempts per minute from one address.
    pub login_rate_per_minute: u32,
    /// Login attempts in a burst from one address.
    pub login_burst: u32,
    /// Failed logins from one address within `failure_window_secs` that block it.
    pub login_max_failures: u32,
    /// Login attempts per minute for one account name (from every address).
    pub account_rate_per_minute: u32,
    /// Login attempts in a burst for one account name.
    pub account_burst: u32,
    /// Failed logins of one account within `failure_window_secs` that lock it.
    pub account_max_failures: u32,
    /// Window in which failed logins are counted, seconds.
    pub failure_window_secs: i64,
    /// How long a block (address) or lock (account) lasts, seconds.
    pub block_secs: i64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            session_idle_secs: 30 * 60,
            session_absolute_secs: 12 * 3600,
            session_refresh_secs: 60,
            api_token_max_days: 365,
            login_rate_per_minute: 30,
            login_burst: 10,
            login_max_failures: 10,
            account_rate_per_minute: 10,
            account_burst: 5,
            account_max_failures: 5,
            failure_window_secs: 900,
            block_secs: 900,
        }
    }
}

impl AuthConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.params() {
            p.push(format!("auth.argon2_*: {e}"));
        }
        if !(1..=86_400).contains(&self.session_idle_secs) {
            p.push("auth.session_idle_secs must be 1 to 86400".to_owned());
        }
        if !(1..=30 * 86_400).contains(&self.session_absolute_secs) {
            p.push("auth.session_absolute_secs must be 1 to 2592000".to_owned());
        }
        if !(0..=3600).contains(&self.session_refresh_secs) {
            p.push("auth.session_refresh_secs must be 0 to 3600".to_owned());
        }
        if !(1..=3650).contains(&self.api_token_max_days) {
            p.push("auth.api_token_max_days must be 1 to 3650".to_owned());
        }
        if [
            self.login_rate_per_minute,
            self.login_burst,
            self.login_max_failures,
            self.account_rate_per_minute,
            self.account_burst,
            self.account_max_failures,
        ]
        .contains(&0)
        {
            p.push("auth login rates, bursts and max failures must be at least 1".to_owned());
        }
        if !(1..=86_400).contains(&self.failure_window_secs)
            || !(1..=7 * 86_400).contains(&self.block_secs)
        {
            p.push(
                "auth.failure_window_secs must be 1 to 86400 and block_secs 1 to 604800".to_owned(),
            );
        }
        p
    }

    fn params(&self) -> Result<Params, argon2::Error> {
        Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
    }
}

/// A new password: at least [`MIN_PASSWORD_CHARS`] characters, at most [`MAX_PASSWORD_BYTES`]
/// bytes. Never printed.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    /// Checks the policy.
    pub fn new(value: SecretString) -> Result<Self, UserError> {
        let s = value.expose();
        if s.chars().count() < MIN_PASSWORD_CHARS {
            return Err(UserError::WeakPassword(format!(
                "a password needs at least {MIN_PASSWORD_CHARS} characters"
            )));
        }
        if s.len() > MAX_PASSWORD_BYTES {
            return Err(UserError::WeakPassword(format!(
                "a password has at most {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        Ok(Self(value))
    }

    /// A random password: 24 characters of base64url (144 bits).
    pub fn generate() -> Self {
        use base64::Engine;
        let bytes: [u8; 18] = rand::random();
        Self(SecretString::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ))
    }

    /// The password itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// A stored user.
#[derive(Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// Name (the KV key).
    pub name: UserName,
    /// argon2id PHC string.
    pub(crate) password_hash: String,
    /// Role bindings.
    pub bindings: Vec<Binding>,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Last changed, Unix seconds.
    pub changed_at: i64,
    /// Last password change, Unix seconds.
    pub password_changed_at: i64,
    /// Bumped by every password change and disabling (random at creation); sessions and device
    /// cookies of older generations are void.
    pub generation: u64,
    /// A disabled user cannot log in; its sessions and API tokens stop working.
    #[serde(default)]
    pub disabled: bool,
    /// Random at creation, never changed: tells this user from an earlier one of the same name
    /// (API tokens and device cookies carry it). 0 for users made before it existed.
    #[serde(default)]
    pub uid: u64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("password_hash", &"***")
            .field("bindings", &self.bindings)
            .field("generation", &self.generation)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A user as listings and the API show it (no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    /// Name.
    pub name: UserName,
    /// Role bindings.
    pub bindings: Vec<Binding>,
    /// Created, Unix seconds.
    pub created_at: i64,
    /// Last changed, Unix seconds.
    pub changed_at: i64,
    /// Last password change, Unix seconds.
    pub password_changed_at: i64,
    /// Disabled.
    pub disabled: bool,
}

impl From<&UserRecord> for UserSummary {
    fn from(r: &UserRecord) -> Self {
        Self {
            name: r.name.clone(),
            bindings: r.bindings.clone(),
            created_at: r.created_at,
            changed_at: r.changed_at,
            password_changed_at: r.password_changed_at,
            disabled: r.disabled,
        }
    }
}

/// What went wrong with a user or credential operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// The name is taken.
    #[error("user {0} already exists")]
    Exists(UserName),
    /// No such user.
    #[error("unknown user {0}; `wegweiser user list` shows the users")]
    NotFound(UserName),
    /// The new password does not meet the policy.
    #[error("{0}")]
    WeakPassword(String),
    /// A binding that cannot be granted or removed.
    #[error("{0}")]
    BadBinding(String),
    /// The change would leave the platform without an enabled global Admin.
    #[error("refused: this would leave no enabled user with the global admin role")]
    LastAdmin,
    /// Another change that may take a global Admin away held the lease too long.
    #[error("another change to a global admin is in progress; try again")]
    Busy,
    /// A bad API token request.
    #[error("{0}")]
    BadToken(String),
    /// No such API token.
    #[error("unknown API token {0}")]
    TokenNotFound(String),
    /// The store (nats-server) failed or is unreachable.
    #[error(transparent)]
    Store(#[from] AuthorityError),
    /// Hashing failed (a bug or an impossible configuration).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// argon2id with the configured cost, a limit on concurrent hashes, and a dummy hash that
/// unknown users are verified against (so they take as long as known ones).
#[derive(Debug, Clone)]
pub struct Hasher {
    params: Params,
    permits: Arc<tokio::sync::Semaphore>,
    dummy: Arc<OnceLock<String>>,
}

impl Hasher {
    /// A hasher with the cost of `cfg` (which [`AuthConfig::problems`] has checked).
    pub fn new(cfg: &AuthConfig) -> Self {
        let params = cfg.params().unwrap_or_default();
        let n = match cfg.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Self {
            params,
            permits: Arc::new(tokio::sync::Semaphore::new(n)),
            dummy: Arc::default(),
        }
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, UserError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| UserError::Hash(e.to_string()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| UserError::Hash(e.to_string()))
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: &Password) -> Result<String, UserError> {
        let (pw, params) = (password.0.clone(), self.params.clone());
        self.blocking(move || hash_now(params, pw.expose())).await?
    }

    /// Whether `password` matches `phc`; with no `phc`, verifies against a dummy hash of the
    /// same cost and answers false (an unknown user costs what a known one does).
    pub async fn verify(&self, password: &SecretString, phc: Option<&str>) -> bool {
        if password.expose().len() > MAX_PASSWORD_BYTES {
            return false;
        }
        let phc = phc.map(str::to_owned);
        let (pw, params, dummy) = (password.clone(), self.params.clone(), self.dummy.clone());
        self.blocking(move || {
            let (phc, real) = match phc {
                Some(p) => (p, true),
                None => (
                    dummy
                        .get_or_init(|| {
                            hash_now(params.clone(), "wegweiser dummy password").unwrap_or_default()
                        })
                        .clone(),
                    false,
                ),
            };
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return false;
            };
            // The crate compares the outputs in constant time.
            let ok = Self::argon2(params)
                .verify_password(pw.expose().as_bytes(), &parsed)
                .is_ok();
            ok && real
        })
        .await
        .unwrap_or(false)
    }
}

fn hash_now(params: Params, password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Hasher::argon2(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// The KV buckets of users, sessions and API tokens, and the password hasher.
#[derive(Debug, Clone)]
pub struct AuthStores {
    pub(crate) users: kv::Store,
    pub(crate) sessions: kv::Store,
    pub(crate) api_tokens: kv::Store,
    pub(crate) hasher: Hasher,
}

impl AuthStores {
    /// Opens (or creates) the buckets. The session bucket's `max_age` follows
    /// `session_absolute_secs` (it is updated when the setting changes).
    pub(crate) async fn open(
        js: &jetstream::Context,
        replicas: usize,
        cfg: &AuthConfig,
    ) -> Result<Self, AuthorityError> {
        let users = crate::authority::bucket(
            js,
            USERS_BUCKET,
            "Control-plane users (argon2id hashes)",
            4,
            replicas,
            None,
        )
        .await?;
        let sessions = js
            .create_or_update_key_value(kv::Config {
                bucket: crate::sessions::SESSIONS_BUCKET.into(),
                description: "API sessions (hashes of session ids only)".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                max_age: Duration::from_secs(cfg.session_absolute_secs.max(1).unsigned_abs()),
                ..Default::default()
            })
            .await
            .map_err(store_err)?;
        let api_tokens = crate::authority::bucket(
            js,
            crate::sessions::API_TOKENS_BUCKET,
            "API tokens (SHA-256 hashes only)",
            1,
            replicas,
            None,
        )
        .await?;
        Ok(Self {
            users,
            sessions,
            api_tokens,
            hasher: Hasher::new(cfg),
        })
    }
}

/// What [`Authority::bootstrap_admin`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    /// The user created.
    pub user: UserName,
    /// Where the generated password was written (none when it came from the environment).
    pub password_file: Option<PathBuf>,
}

/// The key of the lease that serializes changes which may take a global Admin away (a user
/// name is one NATS token, so a key with a dot is never a user's).
const ADMIN_GUARD_KEY: &str = "guard.admins";
/// How long a lease may stay unchanged before another change takes it over (its holder died or
/// stalls), measured on the waiting process's own monotonic clock.
const ADMIN_GUARD_LEASE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a change waits for the lease before answering [`UserError::Busy`]: longer than
/// [`ADMIN_GUARD_LEASE`] (so a dead holder's lease is taken over), shorter than the API's 15 s
/// request timeout (so the caller hears `busy`, not `timeout`).
const ADMIN_GUARD_WAIT: std::time::Duration = std::time::Duration::from_secs(12);

/// Gives the Admin lease back when dropped (if it is still ours; otherwise it lapses on its
/// own), from a task of its own so a cancelled request gives it back too.
struct LeaseRelease {
    users: kv::Store,
    revision: u64,
}

impl Drop for LeaseRelease {
    fn drop(&mut self) {
        let (users, revision) = (self.users.clone(), self.revision);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = users
                    .delete_expect_revision(ADMIN_GUARD_KEY, Some(revision))
                    .await;
            });
        }
    }
}

fn decode(name: &UserName, bytes: &[u8]) -> Result<UserRecord, UserError> {
    serde_json::from_slice(bytes)
        .map_err(|e| UserError::Store(store_err(format!("user record {name}: {e}"))))
}

fn is_global_admin(r: &UserRecord) -> bool {
    !r.disabled
        && r.bindings.iter().any(|b| {
            b == &Binding {
                role: Role::Admin,
                scope: Scope::Global,
            }
        })
}

impl Authority {
    /// The password hasher.
    pub fn hasher(&self) -> &Hasher {
        &self.inner.authn.hasher
    }

    /// A user and its revision, if it exists.
    pub async fn user_entry(
        &self,
        name: &UserName,
    ) -> Result<Option<(UserRecord, u64)>, UserError> {
        match self
            .inner
            .authn
            .users
            .entry(name.as_str())
            .await
            .map_err(store_err)?
        {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((decode(name, &e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// A user.
    pub async fn user(&self, name: &UserName) -> Result<UserRecord, UserError> {
        self.user_entry(name)
            .await?
            .map(|(r, _)| r)
            .ok_or_else(|| UserError::NotFound(name.clone()))
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>, UserError> {
        let mut out = Vec::new();
        for (key, v) in kv_values(&self.inner.cp, &self.inner.authn.users, ">").await? {
            if key == ADMIN_GUARD_KEY {
                continue;
            }
            let name: UserName = key
                .parse()
                .map_err(|e| UserError::Store(store_err(format!("user key {key}: {e}"))))?;
            out.push(decode(&name, &v)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates a user. `actor` is who asks (for the audit trail).
    pub async fn create_user(
        &self,
        name: &UserName,
        password: &Password,
        bindings: Vec<Binding>,
        actor: &str,
    ) -> Result<UserRecord, UserError> {
        let hash = self.hasher().hash(password).await?;
        let now = time::now();
        let mut bindings_dedup: Vec<Binding> = Vec::new();
        for b in bindings {
            if !bindings_dedup.contains(&b) {
                bindings_dedup.push(b);
            }
        }
        let rec = UserRecord {
            name: name.clone(),
            password_hash: hash,
            bindings: bindings_dedup,
            created_at: now,
            changed_at: now,
            password_changed_at: now,
            // A random start: a user made again under a deleted user's name does not take
            // over the old one's sessions.
            generation: u64::from(rand::random::<u32>()),
            disabled: false,
            uid: rand::random::<u64>().max(1),
        };
        let body = serde_json::to_vec(&rec).map_err(store_err)?;
        match self
            .inner
            .authn
            .users
            .create(name.as_str(), body.into())
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(UserError::Exists(name.clone()));
            }
            Err(e) => return Err(store_err(e).into()),
        }
        let mut a = AuditEntry::new("user.create", actor, "ok");
        a.detail = serde_json::json!({"user": name, "bindings": rec.bindings});
        self.audit().record(a).await;
        Ok(rec)
    }

    /// Changes a user with `f` (compare-and-set on its revision, retried on conflict).
    pub async fn update_user<F>(&self, name: &UserName, mut f: F) -> Result<UserRecord, UserError>
    where
        F: FnMut(&mut UserRecord) -> Result<(), UserError>,
    {
        loop {
            let (mut rec, rev) = self
                .user_entry(name)
                .await?
                .ok_or_else(|| UserError::NotFound(name.clone()))?;
            f(&mut rec)?;
            rec.changed_at = time::now();
            let body = serde_json::to_vec(&rec).map_err(store_err)?;
            match self
                .inner
                .authn
                .users
                .update(name.as_str(), body.into(), rev)
                .await
            {
                Ok(_) => return Ok(rec),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e).into()),
            }
        }
    }

    /// Refuses a change that leaves no enabled global Admin.
    async fn keep_an_admin(
        &self,
        name: &UserName,
        after: impl Fn(&UserRecord) -> bool,
    ) -> Result<(), UserError> {
        let users = self.users().await?;
        let remaining = users
            .iter()
            .filter(|u| {
                if &u.name == name {
                    after(u)
                } else {
                    is_global_admin(u)
                }
            })
            .count();
        let before = users.iter().filter(|u| is_global_admin(u)).count();
        if before > 0 && remaining == 0 {
            return Err(UserError::LastAdmin);
        }
        Ok(())
    }

    /// Applies `change` to a user (`None`: deletes it) unless that would leave no enabled
    /// global Admin (`after` says whether the user would still be one).
    ///
    /// A user who is not an enabled global Admin is changed with a compare-and-set on the
    /// record as read, so it cannot turn into one meanwhile. For a user who is one, the check
    /// and the change run under the lease [`ADMIN_GUARD_KEY`], which every such change takes:
    /// two Admins taking each other away at the same moment are checked one after the other.
    /// Changes that add Admins need no lease.
    async fn change_keeping_an_admin<F>(
        &self,
        name: &UserName,
        after: impl Fn(&UserRecord) -> bool,
        mut change: Option<F>,
    ) -> Result<Option<UserRecord>, UserError>
    where
        F: FnMut(&mut UserRecord) -> Result<(), UserError>,
    {
        let users = &self.inner.authn.users;
        loop {
            let (mut rec, rev) = self
                .user_entry(name)
                .await?
                .ok_or_else(|| UserError::NotFound(name.clone()))?;
            if is_global_admin(&rec) {
                let lease = self.acquire_admin_guard().await?;
                // Given back however this ends, a cancelled request included.
                let _release = LeaseRelease {
                    users: users.clone(),
                    revision: lease,
                };
                let out = async {
                    self.keep_an_admin(name, &after).await?;
                    // Taken over while this stalled: another change may have passed its check
                    // counting on this user; give way and let the caller try again.
                    if !self.holds_admin_guard(lease).await? {
                        return Err(UserError::Busy);
                    }
                    match change.as_mut() {
                        Some(f) => self.update_user(name, f).await.map(Some),
                        None => {
                            users.delete(name.as_str()).await.map_err(store_err)?;
                            Ok(None)
                        }
                    }
                }
                .await;
                return out;
            }
            let written = match change.as_mut() {
                Some(f) => {
                    f(&mut rec)?;
                    rec.changed_at = time::now();
                    let body = serde_json::to_vec(&rec).map_err(store_err)?;
                    users
                        .update(name.as_str(), body.into(), rev)
                        .await
                        .map(|_| Some(rec))
                }
                None => users
                    .delete_expect_revision(name.as_str(), Some(rev))
                    .await
                    .map(|()| None),
            };
            match written {
                Ok(r) => return Ok(r),
                // Changed meanwhile (perhaps made an Admin): look again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e).into()),
            }
        }
    }

    /// Takes the lease on Admin-removing changes, waiting up to [`ADMIN_GUARD_WAIT`]. A lease
    /// seen unchanged for [`ADMIN_GUARD_LEASE`] of this process's own (monotonic) time is
    /// taken over: its holder died or stalls. No wall clocks are compared, so hosts whose
    /// clocks disagree still take turns. Returns the lease's revision.
    async fn acquire_admin_guard(&self) -> Result<u64, UserError> {
        let users = &self.inner.authn.users;
        let started = tokio::time::Instant::now();
        let mut seen: Option<(u64, tokio::time::Instant)> = None;
        loop {
            let holder = serde_json::json!({"pid": std::process::id(), "at": time::now()});
            let lease = holder.to_string();
            let current = users.entry(ADMIN_GUARD_KEY).await.map_err(store_err)?;
            let taken = match current {
                Some(e) if e.operation == kv::Operation::Put => {
                    let since = match seen {
                        Some((rev, since)) if rev == e.revision => since,
                        _ => {
                            let now = tokio::time::Instant::now();
                            seen = Some((e.revision, now));
                            now
                        }
                    };
                    if since.elapsed() >= ADMIN_GUARD_LEASE {
                        users
                            .update(ADMIN_GUARD_KEY, lease.into(), e.revision)
                            .await
                            .ok()
                    } else {
                        None
                    }
                }
                _ => users.create(ADMIN_GUARD_KEY, lease.into()).await.ok(),
            };
            if let Some(rev) = taken {
                return Ok(rev);
            }
            if started.elapsed() > ADMIN_GUARD_WAIT {
                return Err(UserError::Busy);
            }
            let pause = 10 + rand::random::<u64>() % 40;
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
    }

    /// Whether the lease of `revision` is still this change's (not taken over meanwhile).
    async fn holds_admin_guard(&self, revision: u64) -> Result<bool, UserError> {
        let e = self
            .inner
            .authn
            .users
            .entry(ADMIN_GUARD_KEY)
            .await
            .map_err(store_err)?;
        Ok(e.is_some_and(|e| e.operation == kv::Operation::Put && e.revision == revision))
    }

    /// Sets a new password; every session of the user ends.
    pub async fn set_password(
        &self,
        name: &UserName,
        password: &Password,
        actor: &str,
    ) -> Result<UserRecord, UserError> {
        let hash = self.hasher().hash(password).await?;
        let rec = self
            .update_user(name, |r| {
                r.password_hash = hash.clone();
                r.password_changed_at = time::now();
                r.generation += 1;
                Ok(())
            })
            .await?;
        let ended = self.end_sessions_of(name).await.unwrap_or(0);
        let mut a = AuditEntry::new("user.password", actor, "ok");
        a.detail = serde_json::json!({"user": name, "sessions_ended": ended});
        self.audit().record(a).await;
        Ok(rec)
    }

    /// Disables or enables a user; disabling ends its sessions and stops its API tokens.
    pub async fn set_disabled(
        &self,
        name: &UserName,
        disabled: bool,
        actor: &str,
    ) -> Result<UserRecord, UserError> {
        let set = |r: &mut UserRecord| {
            if disabled && !r.disabled {
                r.generation += 1;
            }
            r.disabled = disabled;
            Ok(())
        };
        let rec = if disabled {
            let rec = self
                .change_keeping_an_admin(name, |_| false, Some(set))
                .await?
                .ok_or_else(|| UserError::NotFound(name.clone()))?;
            let _ = self.end_sessions_of(name).await;
            rec
        } else {
            self.update_user(name, set).await?
        };
        let mut a = AuditEntry::new(
            if disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            actor,
            "ok",
        );
        a.detail = serde_json::json!({"user": name});
        self.audit().record(a).await;
        Ok(rec)
    }

    /// Adds a binding (no-op if the user holds it already).
    pub async fn grant(
        &self,
        name: &UserName,
        binding: Binding,
        actor: &str,
    ) -> Result<UserRecord, UserError> {
        let rec = self
            .update_user(name, |r| {
                if !r.bindings.contains(&binding) {
                    r.bindings.push(binding.clone());
                }
                Ok(())
            })
            .await?;
        let mut a = AuditEntry::new("user.grant", actor, "ok");
        a.tenant = binding.scope.tenant().map(ToString::to_string);
        a.detail = serde_json::json!({"user": name, "binding": binding});
        self.audit().record(a).await;
        Ok(rec)
    }

    /// Removes a binding. API tokens of the user lose whatever it granted at once (they act
    /// with the intersection of their bindings and the user's current ones).
    pub async fn revoke_binding(
        &self,
        name: &UserName,
        binding: &Binding,
        actor: &str,
    ) -> Result<UserRecord, UserError> {
        let rec = self
            .change_keeping_an_admin(
                name,
                |u| {
                    !u.disabled
                        && u.bindings
                            .iter()
                            .any(|b| b != binding && is_global_admin_binding(b))
                },
                Some(|r: &mut UserRecord| {
                    let before = r.bindings.len();
                    r.bindings.retain(|b| b != binding);
                    if r.bindings.len() == before {
                        return Err(UserError::BadBinding(format!(
                            "user {name} does not hold that binding"
                        )));
                    }
                    Ok(())
                }),
            )
            .await?
            .ok_or_else(|| UserError::NotFound(name.clone()))?;
        let mut a = AuditEntry::new("user.revoke_binding", actor, "ok");
        a.tenant = binding.scope.tenant().map(ToString::to_string);
        a.detail = serde_json::json!({"user": name, "binding": binding});
        self.audit().record(a).await;
        Ok(rec)
    }

    /// Deletes a user, its sessions and its API tokens.
    pub async fn delete_user(&self, name: &UserName, actor: &str) -> Result<(), UserError> {
        self.change_keeping_an_admin(
            name,
            |_| false,
            None::<fn(&mut UserRecord) -> Result<(), UserError>>,
        )
        .await?;
        let sessions = self.end_sessions_of(name).await.unwrap_or(0);
        let tokens = self.revoke_api_tokens_of(name).await.unwrap_or(0);
        let mut a = AuditEntry::new("user.delete", actor, "ok");
        a.detail = serde_json::json!({"user": name, "sessions_ended": sessions, "api_tokens_revoked": tokens});
        self.audit().record(a).await;
        Ok(())
    }

    /// Removes every binding in `tenant` from every user, once the tenant is deleted (its id may
    /// be taken again by a new tenant, which must not inherit them). Returns how many users
    /// lost bindings.
    pub async fn drop_tenant_bindings(
        &self,
        tenant: &wegweiser_shared::ids::TenantId,
        actor: &str,
    ) -> Result<usize, UserError> {
        self.drop_bindings(
            tenant,
            |b| b.scope.tenant() == Some(tenant),
            "tenant deleted",
            actor,
        )
        .await
    }

    /// Removes every binding on one of `devices` of `tenant` from every user, once they are
    /// deleted. Returns how many users lost bindings.
    pub async fn drop_device_bindings(
        &self,
        tenant: &wegweiser_shared::ids::TenantId,
        devices: &[wegweiser_shared::ids::DeviceId],
        actor: &str,
    ) -> Result<usize, UserError> {
        self.drop_bindings(
            tenant,
            |b| matches!(&b.scope, Scope::Device { tenant: t, device } if t == tenant && devices.contains(device)),
            "device deleted",
            actor,
        )
        .await
    }

    /// Removes the bindings `gone` says are gone from every user, audited once for `tenant`.
    async fn drop_bindings(
        &self,
        tenant: &wegweiser_shared::ids::TenantId,
        gone: impl Fn(&Binding) -> bool,
        reason: &str,
        actor: &str,
    ) -> Result<usize, UserError> {
        let mut users = Vec::new();
        for u in self.users().await? {
            if u.bindings.iter().any(&gone) {
                self.update_user(&u.name, |r| {
                    r.bindings.retain(|b| !gone(b));
                    Ok(())
                })
                .await?;
                users.push(u.name);
            }
        }
        if !users.is_empty() {
            let mut a = AuditEntry::new("user.bindings_dropped", actor, "ok");
            a.tenant = Some(tenant.to_string());
            a.detail = serde_json::json!({"users": users, "reason": reason});
            self.audit().record(a).await;
        }
        Ok(users.len())
    }

    /// Checks a user name and password. `None` for an unknown user, a disabled user or a wrong
    /// password, all taking the same time (one argon2id verification).
    pub async fn check_password(
        &self,
        name: &UserName,
        password: &SecretString,
    ) -> Result<Result<UserRecord, &'static str>, UserError> {
        let found = self.user_entry(name).await?.map(|(r, _)| r);
        let ok = self
            .hasher()
            .verify(password, found.as_ref().map(|r| r.password_hash.as_str()))
            .await;
        Ok(match found {
            None => Err("unknown_user"),
            Some(_) if !ok => Err("bad_password"),
            Some(r) if r.disabled => Err("disabled"),
            Some(r) => Ok(r),
        })
    }

    /// Creates the platform operator [`ADMIN_USER`] (global Admin) if no user exists. The
    /// password comes from [`ENV_ADMIN_PASSWORD`], or is generated and written to
    /// `<data_dir>/`[`INITIAL_PASSWORD_FILE`] (mode 0600, never replaced). `None` when users
    /// exist already.
    pub async fn bootstrap_admin(&self, data_dir: &Path) -> Result<Option<Bootstrap>, UserError> {
        if !self.users().await?.is_empty() {
            return Ok(None);
        }
        let name: UserName = ADMIN_USER
            .parse()
            .map_err(|e| UserError::Hash(format!("{e}")))?;
        let (password, file) = match std::env::var(ENV_ADMIN_PASSWORD) {
            Ok(p) => (Password::new(SecretString::new(p))?, None),
            Err(_) => (
                Password::generate(),
                Some(data_dir.join(INITIAL_PASSWORD_FILE)),
            ),
        };
        if let Some(f) = &file {
            write_owner_only(f, password.expose()).map_err(|e| {
                UserError::Store(store_err(format!("cannot write {}: {e}", f.display())))
            })?;
        }
        let binding = Binding {
            role: Role::Admin,
            scope: Scope::Global,
        };
        match self
            .create_user(&name, &password, vec![binding], "bootstrap")
            .await
        {
            Ok(_) => Ok(Some(Bootstrap {
                user: name,
                password_file: file,
            })),
            // Another replica was first; the file (if any) holds a password that is not used.
            Err(UserError::Exists(_)) => {
                if let Some(f) = &file {
                    let _ = std::fs::remove_file(f);
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

fn is_global_admin_binding(b: &Binding) -> bool {
    b.role == Role::Admin && b.scope == Scope::Global
}

/// Writes a new file readable by its owner only (refuses to replace one).
fn write_owner_only(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> AuthConfig {
        AuthConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..AuthConfig::default()
        }
    }

    #[test]
    fn password_policy() {
        assert!(Password::new(SecretString::new("short".into())).is_err());
        assert!(Password::new(SecretString::new("ä".repeat(11))).is_err());
        assert!(Password::new(SecretString::new("ä".repeat(12))).is_ok());
        assert!(Password::new(SecretString::new("x".repeat(MAX_PASSWORD_BYTES + 1))).is_err());
        assert!(Password::generate().expose().len() >= MIN_PASSWORD_CHARS);
        let e = Password::new(SecretString::new("hunter2".into())).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn defaults_are_valid() {
        assert!(AuthConfig::default().problems().is_empty());
        let bad = AuthConfig {
            session_idle_secs: 0,
            login_burst: 0,
            ..AuthConfig::default()
        };
        assert_eq!(bad.problems().len(), 2, "{:?}", bad.problems());
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = Hasher::new(&cheap());
        let pw = Password::new(SecretString::new("correct horse battery".into())).unwrap();
        let phc = h.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(h.verify(&pw.0, Some(&phc)).await);
        assert!(
            !h.verify(&SecretString::new("wrong horse battery".into()), Some(&phc))
                .await
        );
        // Unknown users: a dummy verification, always false.
        assert!(!h.verify(&pw.0, None).await);
        let rec = UserRecord {
            name: "u".parse().unwrap(),
            password_hash: phc.clone(),
            bindings: Vec::new(),
            created_at: 0,
            changed_at: 0,
            password_changed_at: 0,
            generation: 1,
            disabled: false,
            uid: 1,
        };
        assert!(!format!("{rec:?}").contains(&phc));
    }

    #[test]
    fn the_initial_password_file_is_owner_only_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(INITIAL_PASSWORD_FILE);
        write_owner_only(&f, "secret-secret").unwrap();
        assert!(write_owner_only(&f, "other").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
