//! The credential authority: tenant accounts and user credentials, kept in JetStream KV in the
//! control-plane account and pushed to nats-server through the system account.
//!
//! Every account change goes the same way ([`Authority::update_tenant`]): read the record, change
//! it, re-sign the account JWT with a strictly larger `iat` and a fresh `jti`, write the record
//! back with a compare-and-set on its revision (so concurrent CLI runs and replicas never lose
//! an update), push the JWT, and check the server really applied it.

use crate::{
    config::{Config, ConfigError, TenantLimits},
    identity::{PlatformKeys, ServiceUser},
    keystore::{ENV_MASTER_KEY, Keystore, KeystoreError},
    seal::{MasterKey, SealError},
    tenant::{
        IssueError, Role, SigningKeyRecord, TechnicianScope, TenantRecord, TenantSecrets,
        TenantSigner, TenantState,
    },
};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};
use wegweiser_shared::{
    creds::Creds,
    ids::{AccountKey, DeviceId, TenantId, UserKey, UserName},
    jwt::{Claims, DeleteAccountsNats, JwtError},
    secret::SecretString,
    subject, time,
};

/// The KV bucket of tenant records.
pub const TENANTS_BUCKET: &str = "wg_tenants";
/// The KV bucket of enrollment tokens (keyed by hash).
pub const TOKENS_BUCKET: &str = "wg_tokens";
/// The KV bucket of device records (`<tenant>.<device>`).
pub const DEVICES_BUCKET: &str = "wg_devices";
/// The KV bucket indexing devices by machine id (`<tenant>.<hash of machine id>`).
pub const MACHINES_BUCKET: &str = "wg_machines";
/// The KV bucket of enrollment failures and blocks per address.
pub const BLOCKS_BUCKET: &str = "wg_blocks";

/// Opens a KV bucket, creating it if needed.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    history: i64,
    replicas: usize,
    max_age: Option<Duration>,
) -> Result<kv::Store, AuthorityError> {
    if let Ok(s) = js.get_key_value(name).await {
        return Ok(s);
    }
    js.create_key_value(kv::Config {
        bucket: name.into(),
        description: description.into(),
        history,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        max_age: max_age.unwrap_or_default(),
        ..Default::default()
    })
    .await
    .map_err(store_err)
}

/// How far into the future a revocation reaches (covers clock skew between replicas).
pub const REVOCATION_SKEW_SECS: i64 = 120;
/// The longest lifetime any user JWT can have (the configuration cannot allow more).
pub const MAX_USER_JWT_TTL_SECS: i64 = crate::config::MAX_JWT_TTL_SECS;

/// How long a request to nats-server may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// Bad or missing configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Keystore problem.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// nats-server could not be reached.
    #[error(
        "cannot reach nats-server at {url}: {reason}. Is it running? (`wegweiser up` starts one locally)"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A NATS request failed.
    #[error("NATS request failed: {0}")]
    Nats(String),
    /// The tenant id is taken.
    #[error("tenant {0} already exists; pick another id or delete it first")]
    TenantExists(TenantId),
    /// No such tenant.
    #[error("unknown tenant {0}; `wegweiser tenant list` shows the tenants")]
    UnknownTenant(TenantId),
    /// The tenant is not in service.
    #[error("tenant {0} is not active (state {1:?})")]
    NotActive(TenantId, TenantState),
    /// nats-server refused the JWT.
    #[error("nats-server refused the account JWT: {0}")]
    PushRejected(String),
    /// nats-server answered, but does not hold what was pushed.
    #[error("nats-server did not apply the change: {0}")]
    NotApplied(String),
    /// The change is stored but nats-server does not hold it yet.
    #[error(
        "the change to tenant {tenant} is stored, but nats-server has not applied it ({reason}); run `wegweiser tenant sync {tenant}` once nats-server is reachable"
    )]
    NotPushed {
        /// The tenant.
        tenant: TenantId,
        /// Why.
        reason: String,
    },
    /// A lifetime outside what the configuration allows.
    #[error("lifetime {ttl} s is outside 10..={max} s (the configured maximum)")]
    BadLifetime {
        /// Requested.
        ttl: i64,
        /// Allowed maximum.
        max: i64,
    },
    /// Secrets do not open.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Issuing failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// Signing failed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The user key is revoked in this tenant.
    #[error("user {0} is revoked in this tenant; enroll with a new key")]
    Revoked(UserKey),
    /// A key cannot be retired yet.
    #[error(
        "signing key {key} still signs {connections} live connection(s); let them renew first, or pass --force"
    )]
    StillInUse {
        /// The key.
        key: String,
        /// Live connections it signed.
        connections: usize,
    },
    /// Nothing to retire.
    #[error("tenant {0} has no retiring signing key; run `wegweiser tenant rotate-keys` first")]
    NothingToRetire(TenantId),
    /// The KV store failed.
    #[error("control-plane store: {0}")]
    Store(String),
    /// Command trust (root, keyset, command keys).
    #[error("{0}")]
    Trust(String),
    /// A command could not be sent.
    #[error("{0}")]
    Command(String),
    /// An organization or group operation was refused.
    #[error(transparent)]
    Hierarchy(#[from] crate::hierarchy::HierarchyError),
}

/// A requested lifetime, defaulting to and capped by the configured one.
fn check_ttl(ttl: Option<i64>, max: i64) -> Result<i64, AuthorityError> {
    match ttl {
        None => Ok(max),
        Some(t) if (crate::config::MIN_JWT_TTL_SECS..=max).contains(&t) => Ok(t),
        Some(t) => Err(AuthorityError::BadLifetime { ttl: t, max }),
    }
}

/// The current value of every key of `store` matching `keys` (a KV key pattern such as
/// `acme.*`), read in one pass by an ordered consumer (last value per subject); deleted and
/// purged keys are left out.
pub(crate) async fn kv_values(
    client: &async_nats::Client,
    store: &kv::Store,
    keys: &str,
) -> Result<Vec<(String, bytes::Bytes)>, AuthorityError> {
    use futures::StreamExt;
    let consumer = store
        .stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{}{keys}", store.prefix),
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(store_err)?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(store_err)?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(store_err)?;
        let pending = m.info().map_err(store_err)?.pending;
        let deleted = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        if !deleted && let Some(key) = m.subject.strip_prefix(store.prefix.as_str()) {
            out.push((key.to_owned(), m.payload.clone()));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

pub(crate) fn store_err(e: impl std::fmt::Display) -> AuthorityError {
    AuthorityError::Store(e.to_string())
}

pub(crate) fn nats_err(e: impl std::fmt::Display) -> AuthorityError {
    AuthorityError::Nats(e.to_string())
}

/// A new tenant.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Id.
    pub id: TenantId,
    /// Display name (defaults to the id).
    pub name: Option<String>,
    /// Limits (defaults from the config).
    pub limits: Option<TenantLimits>,
    /// How long its reports are kept (default from the config).
    pub retention_days: Option<crate::retention::RetentionDays>,
}

/// A summary of a tenant for listings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantSummary {
    /// Id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// NATS account.
    pub account: AccountKey,
    /// State.
    pub state: TenantState,
    /// Created.
    pub created_at: i64,
    /// Limits.
    pub limits: TenantLimits,
    /// Signing keys.
    pub signing_keys: Vec<SigningKeyRecord>,
    /// Revoked users.
    pub revoked_users: usize,
    /// Its own retention of reports, days (absent: the configured default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<crate::retention::RetentionDays>,
}

impl From<&TenantRecord> for TenantSummary {
    fn from(r: &TenantRecord) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            account: r.account.clone(),
            state: r.state,
            created_at: r.created_at,
            limits: r.limits.clone(),
            signing_keys: r.signing_keys.clone(),
            revoked_users: r.revocations.len(),
            retention_days: r.retention_days,
        }
    }
}

/// An issued user JWT.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedJwt {
    /// The JWT.
    pub jwt: String,
    /// Its expiry.
    pub expires_at: i64,
    /// The signing key that signed it.
    pub signing_key: String,
}

/// Technician credentials: the creds file content (secret) and its expiry.
#[derive(Debug, Clone)]
pub struct TechnicianCreds {
    /// The armoured creds file.
    pub creds: SecretString,
    /// The user public key.
    pub user: UserKey,
    /// Expiry.
    pub expires_at: i64,
}

/// What a retirement did.
#[derive(Debug, Clone, Serialize)]
pub struct RetireReport {
    /// Keys removed from the account.
    pub retired: Vec<String>,
    /// Live connections still signed by them at the time (non-zero only with force).
    pub disconnected: usize,
}

/// The control plane's view of the NATS server(s): three least-privilege connections.
#[derive(Debug, Clone)]
pub struct Authority {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) keys: Arc<PlatformKeys>,
    pub(crate) master: MasterKey,
    pub(crate) cp: async_nats::Client,
    push: async_nats::Client,
    inspect: async_nats::Client,
    pub(crate) tenants: kv::Store,
    pub(crate) tokens: kv::Store,
    pub(crate) devices: kv::Store,
    pub(crate) machines: kv::Store,
    pub(crate) blocks: kv::Store,
    pub(crate) trust: kv::Store,
    pub(crate) hierarchy: kv::Store,
    pub(crate) trust_cache: std::sync::Mutex<crate::trust::TrustCache>,
    pub(crate) audit: crate::audit::Audit,
    pub(crate) signers:
        std::sync::Mutex<std::collections::HashMap<TenantId, (u64, Arc<TenantSigner>)>>,
    pub(crate) accounts: std::sync::Mutex<std::collections::HashMap<AccountKey, TenantId>>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) authn: crate::users::AuthStores,
}

/// Connects to NATS as one of the service users. The JWT is minted on every (re)connect from a
/// per-process user key, so no long-lived service credential exists on disk.
pub async fn connect_service(
    cfg: &Config,
    keys: Arc<PlatformKeys>,
    who: ServiceUser,
) -> Result<async_nats::Client, AuthorityError> {
    let user = Arc::new(nkeys::KeyPair::new_user());
    let opts = async_nats::ConnectOptions::with_auth_callback(move |nonce| {
        let keys = keys.clone();
        let user = user.clone();
        async move {
            let jwt = who
                .mint(&keys, &user.public_key())
                .map_err(|e| async_nats::AuthError::new(e.to_string()))?;
            let mut auth = async_nats::Auth::new();
            auth.jwt = Some(jwt);
            auth.signature = Some(
                user.sign(&nonce)
                    .map_err(|e| async_nats::AuthError::new(e.to_string()))?,
            );
            Ok(auth)
        }
    });
    let opts = opts
        .name(who.name())
        .event_callback(move |event| async move {
            match event {
                async_nats::Event::ServerError(e) => {
                    tracing::warn!(user = who.name(), error = %e, "nats-server reported an error.");
                }
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::warn!(
                        user = who.name(),
                        sid,
                        "Slow consumer: messages were dropped."
                    );
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!(
                        user = who.name(),
                        "Disconnected from nats-server; reconnecting."
                    );
                }
                async_nats::Event::Connected => {
                    tracing::info!(user = who.name(), "Connected to nats-server.");
                }
                other => tracing::debug!(user = who.name(), event = %other, "NATS event."),
            }
        });
    connect_with(cfg, opts).await
}

/// Applies the TLS settings of `cfg` and connects.
pub async fn connect_with(
    cfg: &Config,
    mut opts: async_nats::ConnectOptions,
) -> Result<async_nats::Client, AuthorityError> {
    if let Some(ca) = &cfg.nats_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    opts.connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(cfg.nats_url.as_str())
        .await
        .map_err(|e| AuthorityError::Unreachable {
            url: cfg.nats_url.clone(),
            reason: e.to_string(),
        })
}

/// The data directory's keystore.
pub fn keystore(data_dir: &Path) -> Result<Keystore, KeystoreError> {
    Keystore::open(&data_dir.join("keys"))
}

#[derive(Deserialize)]
struct ServerApiResponse<T> {
    data: Option<T>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct UpdateData {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct AccountInfo {
    #[serde(default)]
    jwt: String,
    #[serde(default)]
    imports: Vec<AccountInfoImport>,
    #[serde(default)]
    revoked_user: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct AccountInfoImport {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    account: String,
    #[serde(default)]
    invalid: bool,
}

#[derive(Deserialize)]
struct Connz {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    connections: Vec<ConnInfo>,
}

#[derive(Deserialize)]
struct ConnInfo {
    #[serde(default)]
    issuer_key: String,
}

impl Authority {
    /// Opens the data directory and connects.
    pub async fn open(data_dir: &Path) -> Result<Self, AuthorityError> {
        let cfg = Config::load(data_dir)?;
        let ks = keystore(data_dir)?;
        let keys = Arc::new(PlatformKeys::load(&ks)?);
        let master = ks.master_key(std::env::var(ENV_MASTER_KEY).ok().as_deref())?;
        Self::connect(cfg, keys, master).await
    }

    /// Connects with explicit parts.
    pub async fn connect(
        cfg: Config,
        keys: Arc<PlatformKeys>,
        master: MasterKey,
    ) -> Result<Self, AuthorityError> {
        let (cp, push, inspect) = tokio::try_join!(
            connect_service(&cfg, keys.clone(), ServiceUser::ControlPlane),
            connect_service(&cfg, keys.clone(), ServiceUser::Push),
            connect_service(&cfg, keys.clone(), ServiceUser::Inspect),
        )?;
        let js = jetstream::new(cp.clone());
        let replicas = cfg.kv_replicas;
        let tenants = bucket(
            &js,
            TENANTS_BUCKET,
            "Tenant records (secrets sealed)",
            8,
            replicas,
            None,
        )
        .await?;
        let tokens = bucket(
            &js,
            TOKENS_BUCKET,
            "Enrollment tokens (hashes only)",
            4,
            replicas,
            Some(Duration::from_secs(400 * 86_400)),
        )
        .await?;
        let devices = bucket(&js, DEVICES_BUCKET, "Device records", 4, replicas, None).await?;
        let machines = bucket(
            &js,
            MACHINES_BUCKET,
            "Machine id to device index",
            1,
            replicas,
            None,
        )
        .await?;
        let blocks = bucket(
            &js,
            BLOCKS_BUCKET,
            "Enrollment failures and IP blocks",
            1,
            replicas,
            Some(Duration::from_secs(8 * 86_400)),
        )
        .await?;
        let trust = bucket(
            &js,
            crate::trust::TRUST_BUCKET,
            "Trust root chain and command keyset (command keys sealed)",
            16,
            replicas,
            None,
        )
        .await?;
        let hierarchy = bucket(
            &js,
            crate::hierarchy::HIERARCHY_BUCKET,
            "Organizations and groups of each tenant",
            4,
            replicas,
            None,
        )
        .await?;
        crate::commands::open_log(&js, replicas).await?;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let audit = crate::audit::Audit::open(&js, replicas, metrics.clone()).await?;
        let authn = crate::users::AuthStores::open(&js, replicas, &cfg.auth).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                keys,
                master,
                cp,
                push,
                inspect,
                tenants,
                tokens,
                devices,
                machines,
                blocks,
                trust,
                hierarchy,
                trust_cache: Default::default(),
                audit,
                signers: Default::default(),
                accounts: Default::default(),
                metrics,
                authn,
            }),
        })
    }

    /// Drains and closes all three connections (pending publishes are flushed first).
    pub async fn close(&self) {
        let i = &self.inner;
        let _ = tokio::join!(i.cp.drain(), i.push.drain(), i.inspect.drain());
    }

    /// The metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The enrollment gate's shared state.
    pub fn blocks_store(&self) -> &kv::Store {
        &self.inner.blocks
    }

    /// The audit trail.
    pub fn audit(&self) -> &crate::audit::Audit {
        &self.inner.audit
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The control-plane account.
    pub fn cp_account(&self) -> &AccountKey {
        &self.inner.keys.cp_account
    }

    /// The control-plane service connection (for JetStream, subscriptions on up subjects,
    /// publishing down).
    pub fn cp_client(&self) -> &async_nats::Client {
        &self.inner.cp
    }

    /// Creates a tenant: account with limits and scoped signing keys, pushed and verified.
    /// On any failure nothing is left behind (record removed, account deleted from the resolver).
    pub async fn create_tenant(&self, new: NewTenant) -> Result<TenantRecord, AuthorityError> {
        if let Some(days) = new.retention_days {
            // The history must keep its reports that long before the tenant may send any.
            self.ensure_history_covers(days.days()).await?;
        }
        let now = time::now();
        let account_kp = nkeys::KeyPair::new_account();
        let account: AccountKey = account_kp
            .public_key()
            .parse()
            .map_err(|_| AuthorityError::Store("generated account key invalid".into()))?;
        let mut secrets = TenantSecrets {
            account_seed: account_kp.seed().map_err(store_err)?,
            signing: BTreeMap::new(),
        };
        let mut signing_keys = Vec::new();
        for role in Role::ALL {
            let kp = nkeys::KeyPair::new_account();
            secrets
                .signing
                .insert(kp.public_key(), kp.seed().map_err(store_err)?);
            signing_keys.push(SigningKeyRecord {
                role,
                key: kp.public_key(),
                created_at: now,
                retiring_since: None,
            });
        }
        let limits = new
            .limits
            .unwrap_or_else(|| self.inner.cfg.tenant_defaults.clone());
        let mut record = TenantRecord {
            name: new.name.unwrap_or_else(|| new.id.to_string()),
            id: new.id.clone(),
            account,
            state: TenantState::Creating,
            created_at: now,
            limits,
            signing_keys,
            revocations: BTreeMap::new(),
            banned_users: Default::default(),
            jwt: String::new(),
            last_iat: 0,
            sealed: String::new(),
            retention_days: new.retention_days,
        };
        record.set_secrets(&self.inner.master, &secrets);
        record.resign(
            &self.inner.keys.cp_account,
            &self.inner.keys.operator_signing,
            now,
        )?;
        let bytes = serde_json::to_vec(&record).map_err(store_err)?;
        let rev = match self
            .inner
            .tenants
            .create(new.id.as_str(), bytes.into())
            .await
        {
            Ok(rev) => rev,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(AuthorityError::TenantExists(new.id));
            }
            Err(e) => return Err(store_err(e)),
        };
        let result = async {
            self.push(&record.jwt).await?;
            self.verify_applied(&record).await?;
            record.state = TenantState::Active;
            let bytes = serde_json::to_vec(&record).map_err(store_err)?;
            self.inner
                .tenants
                .update(new.id.as_str(), bytes.into(), rev)
                .await
                .map_err(store_err)?;
            Ok::<_, AuthorityError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(tenant = %new.id, error = %e, "Tenant creation failed; removing what was made.");
            let _ = self.abandon_creation(&record).await;
            return Err(e);
        }
        tracing::info!(tenant = %record.id, account = %record.account, "Tenant created.");
        Ok(record)
    }

    /// Removes a tenant whose creation never finished: its account leaves the resolver and its
    /// record is purged.
    pub async fn abandon_creation(&self, record: &TenantRecord) -> Result<(), AuthorityError> {
        if record.state != TenantState::Creating {
            return Err(AuthorityError::NotActive(record.id.clone(), record.state));
        }
        let _ = self.delete_accounts(&[&record.account]).await;
        self.inner
            .tenants
            .purge(record.id.as_str())
            .await
            .map_err(store_err)
    }

    /// A tenant's record and its KV revision.
    pub async fn tenant_entry(&self, id: &TenantId) -> Result<(TenantRecord, u64), AuthorityError> {
        let entry = self
            .inner
            .tenants
            .entry(id.as_str())
            .await
            .map_err(store_err)?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or_else(|| AuthorityError::UnknownTenant(id.clone()))?;
        let record: TenantRecord = serde_json::from_slice(&entry.value)
            .map_err(|e| AuthorityError::Store(format!("tenant record {id} is damaged: {e}")))?;
        Ok((record, entry.revision))
    }

    /// A tenant's record.
    pub async fn tenant(&self, id: &TenantId) -> Result<TenantRecord, AuthorityError> {
        Ok(self.tenant_entry(id).await?.0)
    }

    /// Every tenant, sorted by id.
    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, AuthorityError> {
        let mut keys = self.inner.tenants.keys().await.map_err(store_err)?;
        let mut ids = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(store_err)?;
            if let Ok(id) = k.parse::<TenantId>() {
                ids.push(id);
            }
        }
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.tenant(&id).await {
                Ok(r) => out.push(r),
                Err(AuthorityError::UnknownTenant(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Applies `change` to an active tenant's record, re-signs, stores (compare-and-set, retried
    /// on conflict), pushes and verifies.
    pub async fn update_tenant<F>(
        &self,
        id: &TenantId,
        mut change: F,
    ) -> Result<TenantRecord, AuthorityError>
    where
        F: FnMut(&mut TenantRecord) -> Result<(), AuthorityError>,
    {
        let record = loop {
            let (mut record, rev) = self.tenant_entry(id).await?;
            if record.state != TenantState::Active {
                return Err(AuthorityError::NotActive(id.clone(), record.state));
            }
            change(&mut record)?;
            record.resign(
                &self.inner.keys.cp_account,
                &self.inner.keys.operator_signing,
                time::now(),
            )?;
            let bytes = serde_json::to_vec(&record).map_err(store_err)?;
            match self
                .inner
                .tenants
                .update(id.as_str(), bytes.into(), rev)
                .await
            {
                Ok(_) => break record,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e)),
            }
        };
        self.sync_tenant(id)
            .await
            .map_err(|e| AuthorityError::NotPushed {
                tenant: id.clone(),
                reason: e.to_string(),
            })?;
        Ok(record)
    }

    /// Makes nats-server hold the newest account JWT in the store, and checks it does.
    ///
    /// A push replaces whatever the server holds, newer or not, so two updates pushed out of
    /// order would leave the older JWT in force. Every updater therefore pushes the newest
    /// record it can read and checks again afterwards; the last one to finish leaves the newest.
    pub async fn sync_tenant(&self, id: &TenantId) -> Result<(), AuthorityError> {
        let mut last = Ok(());
        for attempt in 0..10u64 {
            let current = self.tenant(id).await?;
            if current.state != TenantState::Active {
                return Err(AuthorityError::NotActive(id.clone(), current.state));
            }
            self.push(&current.jwt).await?;
            let verified = self.verify_applied(&current).await;
            let after = self.tenant(id).await?;
            if after.jwt == current.jwt && verified.is_ok() {
                return Ok(());
            }
            // Either the record moved on, or another updater's older push landed after ours:
            // push the newest again.
            last = verified;
            tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
        }
        last
    }

    /// Pushes an account JWT to the resolver.
    async fn push(&self, jwt: &str) -> Result<(), AuthorityError> {
        let reply = self
            .inner
            .push
            .request(subject::sys::CLAIMS_UPDATE, jwt.to_owned().into())
            .await
            .map_err(nats_err)?;
        let resp: ServerApiResponse<UpdateData> = serde_json::from_slice(&reply.payload)
            .map_err(|e| AuthorityError::PushRejected(format!("unreadable reply: {e}")))?;
        if let Some(err) = resp.error {
            return Err(AuthorityError::PushRejected(format!(
                "{} (code {})",
                err.description, err.code
            )));
        }
        match resp.data {
            Some(d) if d.code == 200 => Ok(()),
            Some(d) => Err(AuthorityError::PushRejected(format!(
                "{} (code {})",
                d.message, d.code
            ))),
            None => Err(AuthorityError::PushRejected("empty reply".into())),
        }
    }

    async fn sys_request<T: for<'de> Deserialize<'de>>(
        &self,
        client: &async_nats::Client,
        subject: String,
        body: &'static str,
    ) -> Result<Result<T, String>, AuthorityError> {
        let reply = client
            .request(subject, body.into())
            .await
            .map_err(nats_err)?;
        let resp: ServerApiResponse<T> =
            serde_json::from_slice(&reply.payload).map_err(nats_err)?;
        Ok(match (resp.data, resp.error) {
            (Some(d), None) => Ok(d),
            (_, Some(e)) => Err(e.description),
            (None, None) => Err("empty reply".into()),
        })
    }

    /// Checks that nats-server holds exactly `record.jwt` for the account, with both imports
    /// valid and every revocation in force. The server answers "jwt updated" even for parts it
    /// drops (another tenant's import slot, an untrusted issuer), so this looks at what it holds.
    pub async fn verify_applied(&self, record: &TenantRecord) -> Result<(), AuthorityError> {
        let subj = subject::sys::account_info(&record.account);
        let mut info = self
            .sys_request::<AccountInfo>(&self.inner.inspect, subj.clone(), "")
            .await?;
        if info.is_err() {
            // The account is not loaded yet (no client has used it): load it with a probe.
            self.probe(record).await?;
            info = self
                .sys_request::<AccountInfo>(&self.inner.inspect, subj, "")
                .await?;
        }
        let info = info.map_err(AuthorityError::NotApplied)?;
        if info.jwt != record.jwt {
            return Err(AuthorityError::NotApplied(
                "the server holds another JWT for the account (a concurrent change?)".into(),
            ));
        }
        let cp = self.inner.keys.cp_account.as_str();
        for want in [
            subject::import_up(&record.account),
            subject::import_down(&record.account),
        ] {
            let ok = info
                .imports
                .iter()
                .any(|i| i.subject == want && i.account == cp && !i.invalid);
            if !ok {
                return Err(AuthorityError::NotApplied(format!(
                    "import of {want} is missing or invalid"
                )));
            }
        }
        if let Some(k) = record
            .revocations
            .keys()
            .find(|k| !info.revoked_user.contains_key(*k))
        {
            return Err(AuthorityError::NotApplied(format!(
                "revocation of {k} is not in force"
            )));
        }
        Ok(())
    }

    /// Connects a short-lived, powerless technician user to load the account on the server.
    async fn probe(&self, record: &TenantRecord) -> Result<(), AuthorityError> {
        let signer = TenantSigner::open(record, &self.inner.master)?;
        let user = nkeys::KeyPair::new_user();
        let user_key: UserKey = user.public_key().parse().map_err(store_err)?;
        let jwt = signer.issue_technician(
            &"wg-probe".parse().map_err(store_err)?,
            &TechnicianScope::Devices(Vec::new()),
            &user_key,
            60,
        )?;
        let seed = user.seed().map_err(store_err)?;
        let client = connect_with(
            &self.inner.cfg,
            async_nats::ConnectOptions::with_credentials(
                Creds::render(&jwt, &SecretString::new(seed)).expose(),
            )
            .map_err(nats_err)?
            .name("wegweiser-probe"),
        )
        .await?;
        client.drain().await.map_err(nats_err)?;
        Ok(())
    }

    /// Deletes accounts from the resolver (their clients are disconnected by the server).
    async fn delete_accounts(&self, accounts: &[&AccountKey]) -> Result<(), AuthorityError> {
        let op = &self.inner.keys.operator_signing;
        let claim = Claims::new(
            op.public_key(),
            "",
            DeleteAccountsNats::new(accounts.iter().map(|a| a.to_string()).collect()),
        )
        .expires_in(300)
        .encode(op)?;
        let resp: Result<UpdateData, String> = {
            let reply = self
                .inner
                .push
                .request(subject::sys::CLAIMS_DELETE, claim.into())
                .await
                .map_err(nats_err)?;
            let r: ServerApiResponse<UpdateData> =
                serde_json::from_slice(&reply.payload).map_err(nats_err)?;
            match (r.data, r.error) {
                (_, Some(e)) => Err(e.description),
                (Some(d), None) => Ok(d),
                (None, None) => Err("empty reply".into()),
            }
        };
        resp.map_err(AuthorityError::PushRejected)?;
        Ok(())
    }

    /// The accounts the resolver holds.
    pub async fn resolver_accounts(&self) -> Result<Vec<String>, AuthorityError> {
        let reply = self
            .inner
            .push
            .request(subject::sys::CLAIMS_LIST, "".into())
            .await
            .map_err(nats_err)?;
        let r: ServerApiResponse<Vec<String>> =
            serde_json::from_slice(&reply.payload).map_err(nats_err)?;
        r.data
            .ok_or_else(|| AuthorityError::Nats("CLAIMS.LIST gave no data".into()))
    }

    /// Deletes a tenant: account removed from the resolver (live clients dropped), record and
    /// sealed secrets purged from the store.
    pub async fn delete_tenant(&self, id: &TenantId) -> Result<(), AuthorityError> {
        self.delete_tenant_as(id, "cli").await
    }

    /// [`Authority::delete_tenant`], its report purge audited as done by `actor`.
    pub async fn delete_tenant_as(&self, id: &TenantId, actor: &str) -> Result<(), AuthorityError> {
        let (mut record, rev) = self.tenant_entry(id).await?;
        record.state = TenantState::Deleting;
        let bytes = serde_json::to_vec(&record).map_err(store_err)?;
        self.inner
            .tenants
            .update(id.as_str(), bytes.into(), rev)
            .await
            .map_err(store_err)?;
        // Its reports go first, while the record that names the account still exists.
        self.purge_reports(id, None, actor).await?;
        // Then everything else kept under its id, so that a tenant created later under the
        // same id starts empty: devices, machine index, enrollment tokens, organizations and
        // groups.
        for store in [
            &self.inner.devices,
            &self.inner.machines,
            &self.inner.hierarchy,
        ] {
            for (key, _) in kv_values(&self.inner.cp, store, &format!("{id}.>")).await? {
                store.purge(&key).await.map_err(store_err)?;
            }
        }
        // Tokens are keyed by their hash alone.
        for (key, _) in self.tokens(id).await? {
            self.inner.tokens.purge(&key).await.map_err(store_err)?;
        }
        self.delete_accounts(&[&record.account]).await?;
        if self
            .resolver_accounts()
            .await?
            .iter()
            .any(|a| a == record.account.as_str())
        {
            return Err(AuthorityError::NotApplied(
                "the resolver still lists the account".into(),
            ));
        }
        self.inner
            .tenants
            .purge(id.as_str())
            .await
            .map_err(store_err)?;
        tracing::info!(tenant = %id, account = %record.account, "Tenant deleted.");
        Ok(())
    }

    /// A signer for an active tenant.
    pub async fn signer(
        &self,
        id: &TenantId,
    ) -> Result<(TenantRecord, Arc<TenantSigner>), AuthorityError> {
        let (record, rev) = self.tenant_entry(id).await?;
        if record.state != TenantState::Active {
            return Err(AuthorityError::NotActive(id.clone(), record.state));
        }
        // Opening the sealed seeds costs more than signing: keep the signer of the record's
        // current revision (a rotation or any other change gives a new revision).
        if let Ok(cache) = self.inner.signers.lock()
            && let Some((r, signer)) = cache.get(id)
            && *r == rev
        {
            return Ok((record, signer.clone()));
        }
        let signer = Arc::new(TenantSigner::open(&record, &self.inner.master)?);
        if let Ok(mut cache) = self.inner.signers.lock() {
            cache.insert(id.clone(), (rev, signer.clone()));
        }
        Ok((record, signer))
    }

    /// Issues a device JWT for `user` (a key the device made; its seed never leaves it).
    pub async fn issue_device_jwt(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        user: &UserKey,
        ttl: Option<i64>,
    ) -> Result<IssuedJwt, AuthorityError> {
        let (record, signer) = self.signer(tenant).await?;
        self.issue_device_with(&record, &signer, device, user, ttl)
    }

    /// Issues a device JWT with a signer already at hand (see [`Authority::signer`]).
    pub fn issue_device_with(
        &self,
        record: &TenantRecord,
        signer: &TenantSigner,
        device: &DeviceId,
        user: &UserKey,
        ttl: Option<i64>,
    ) -> Result<IssuedJwt, AuthorityError> {
        let ttl = check_ttl(ttl, self.inner.cfg.device_jwt_ttl_secs)?;
        if record.banned_users.contains(user.as_str()) {
            return Err(AuthorityError::Revoked(user.clone()));
        }
        let (jwt, expires_at) = signer.issue_device_with_expiry(device, user, ttl)?;
        tracing::debug!(tenant = %record.id, device = %device, user = %user, "Device JWT issued.");
        Ok(IssuedJwt {
            jwt,
            expires_at,
            signing_key: signer.device_signing_key(),
        })
    }

    /// Issues technician credentials (a fresh key pair; the creds file is the only copy of the
    /// seed): subscribe-only on the devices in `scope`.
    pub async fn issue_technician_creds(
        &self,
        tenant: &TenantId,
        name: &UserName,
        scope: &TechnicianScope,
        ttl: Option<i64>,
    ) -> Result<TechnicianCreds, AuthorityError> {
        let ttl = check_ttl(ttl, self.inner.cfg.technician_jwt_ttl_secs)?;
        let (_, signer) = self.signer(tenant).await?;
        let kp = nkeys::KeyPair::new_user();
        let user: UserKey = kp.public_key().parse().map_err(store_err)?;
        let jwt = signer.issue_technician(name, scope, &user, ttl)?;
        let seed = SecretString::new(kp.seed().map_err(store_err)?);
        tracing::info!(tenant = %tenant, technician = %name, user = %user, "Technician credentials issued.");
        Ok(TechnicianCreds {
            creds: Creds::render(&jwt, &seed),
            user,
            expires_at: time::now() + ttl,
        })
    }

    /// Revokes a user: every JWT of `user` issued up to now stops working; the server drops its
    /// live connections when the account update lands. Returns the revocation time.
    pub async fn revoke(&self, tenant: &TenantId, user: &UserKey) -> Result<i64, AuthorityError> {
        self.revoke_all(tenant, std::slice::from_ref(user)).await
    }

    /// Revokes several users of a tenant in one account update (see [`Authority::revoke`]).
    pub async fn revoke_all(
        &self,
        tenant: &TenantId,
        users: &[UserKey],
    ) -> Result<i64, AuthorityError> {
        // Revoke a little into the future: a JWT for this key signed concurrently by another
        // replica (or one whose clock runs ahead) must not escape with a later `iat`.
        let now = time::now() + REVOCATION_SKEW_SECS;
        self.update_tenant(tenant, |r| {
            for user in users {
                r.revocations.insert(user.to_string(), now);
                r.banned_users.insert(user.to_string());
            }
            // No user JWT lives longer than MAX_USER_JWT_TTL_SECS: older entries guard nothing,
            // so drop them to keep the account JWT small. The ban list is never pruned.
            r.revocations
                .retain(|_, t| *t >= now - REVOCATION_SKEW_SECS - MAX_USER_JWT_TTL_SECS);
            Ok(())
        })
        .await?;
        for user in users {
            tracing::info!(tenant = %tenant, user = %user, "User revoked.");
        }
        Ok(now)
    }

    /// Starts a signing-key rotation: a new key per role is published in the account and signs
    /// every new user from now on; the old keys keep their users working until retired.
    pub async fn rotate_signing_keys(
        &self,
        tenant: &TenantId,
    ) -> Result<TenantRecord, AuthorityError> {
        let master = self.inner.master.clone();
        let record = self
            .update_tenant(tenant, |r| {
                let now = time::now();
                let mut secrets = r.secrets(&master)?;
                for k in r.signing_keys.iter_mut() {
                    k.retiring_since.get_or_insert(now);
                }
                for role in Role::ALL {
                    let kp = nkeys::KeyPair::new_account();
                    secrets
                        .signing
                        .insert(kp.public_key(), kp.seed().map_err(store_err)?);
                    r.signing_keys.push(SigningKeyRecord {
                        role,
                        key: kp.public_key(),
                        created_at: now,
                        retiring_since: None,
                    });
                }
                r.set_secrets(&master, &secrets);
                Ok(())
            })
            .await?;
        tracing::info!(tenant = %tenant, "Signing keys rotated; old keys retiring.");
        Ok(record)
    }

    /// Live connections of the tenant's account, counted by the key that signed them.
    pub async fn connections_by_signer(
        &self,
        account: &AccountKey,
    ) -> Result<BTreeMap<String, usize>, AuthorityError> {
        let mut counts = BTreeMap::new();
        let mut offset = 0usize;
        loop {
            let body = format!(r#"{{"auth":true,"limit":1024,"offset":{offset}}}"#);
            let reply = self
                .inner
                .inspect
                .request(subject::sys::account_connz(account), body.into())
                .await
                .map_err(nats_err)?;
            let r: ServerApiResponse<Connz> =
                serde_json::from_slice(&reply.payload).map_err(nats_err)?;
            let Some(page) = r.data else {
                // An account nobody is connected to may not be loaded: no connections.
                return Ok(counts);
            };
            let n = page.connections.len();
            for c in page.connections {
                *counts.entry(c.issuer_key).or_insert(0) += 1;
            }
            offset += n;
            if n == 0 || offset >= page.total {
                return Ok(counts);
            }
        }
    }

    /// Finishes a rotation: removes the retiring keys from the account, refusing while live
    /// connections still use them unless `force` (then the server disconnects those clients).
    pub async fn retire_signing_keys(
        &self,
        tenant: &TenantId,
        force: bool,
    ) -> Result<RetireReport, AuthorityError> {
        let record = self.tenant(tenant).await?;
        let retiring: Vec<String> = record
            .signing_keys
            .iter()
            .filter(|k| k.retiring_since.is_some())
            .map(|k| k.key.clone())
            .collect();
        if retiring.is_empty() {
            return Err(AuthorityError::NothingToRetire(tenant.clone()));
        }
        let live = self.connections_by_signer(&record.account).await?;
        let mut disconnected = 0;
        for k in &retiring {
            let n = live.get(k).copied().unwrap_or(0);
            if n > 0 && !force {
                return Err(AuthorityError::StillInUse {
                    key: k.clone(),
                    connections: n,
                });
            }
            disconnected += n;
        }
        let master = self.inner.master.clone();
        let retired = retiring.clone();
        self.update_tenant(tenant, |r| {
            let mut secrets = r.secrets(&master)?;
            r.signing_keys.retain(|k| !retired.contains(&k.key));
            secrets.signing.retain(|k, _| !retired.contains(k));
            r.set_secrets(&master, &secrets);
            Ok(())
        })
        .await?;
        tracing::info!(tenant = %tenant, keys = retiring.len(), "Retired signing keys.");
        Ok(RetireReport {
            retired: retiring,
            disconnected,
        })
    }
}
