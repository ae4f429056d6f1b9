//! Enrollment tokens, device records, enrollment, renewal and device revocation.
//!
//! Tokens are stored only as their SHA-256 (the KV key); the token itself is shown once, at
//! creation. A token is consumed with a compare-and-set on its record, so a single-use token
//! raced by many enrollments admits exactly one.
//!
//! Re-enrollment policy: a machine is known by its tenant and machine id. Enrolling a known
//! machine again (with a valid token) keeps its device id and record, moves it to the new key,
//! revokes the old key at once (its connections drop; no JWT is issued for it again), and
//! reactivates a revoked device. Every enrollment records the token that did it.

use crate::{
    audit::AuditEntry,
    authority::{Authority, AuthorityError, store_err},
};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wegweiser_shared::{
    enroll::{
        DeviceFacts, EnrollRequest, EnrollResponse, NewKey, RenewRequest, RenewResponse,
        TOKEN_PREFIX, enroll_proof_message, new_key_proof_message, verify_proof,
    },
    ids::{AccountKey, DeviceId, TenantId, UserKey},
    secret::SecretString,
    time,
};

/// A grouping label inside a tenant (organization or group): a lowercase slug.
pub type Scope = Option<String>;

/// An enrollment token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short id: the first 12 hex characters of the token's hash.
    pub id: String,
    /// Tenant it enrolls into.
    pub tenant: TenantId,
    /// Organization devices land in.
    #[serde(default)]
    pub organization: Scope,
    /// Group devices land in.
    #[serde(default)]
    pub group: Scope,
    /// Free text.
    #[serde(default)]
    pub label: String,
    /// Created.
    pub created_at: i64,
    /// Expires.
    pub expires_at: i64,
    /// Uses allowed.
    pub max_uses: u32,
    /// Uses so far.
    pub uses: u32,
    /// Set when revoked.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// A new token's parameters.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Tenant.
    pub tenant: TenantId,
    /// Organization.
    pub organization: Scope,
    /// Group.
    pub group: Scope,
    /// Lifetime in seconds (default from config).
    pub ttl_secs: Option<i64>,
    /// Uses allowed (default 1).
    pub max_uses: Option<u32>,
    /// Label.
    pub label: String,
}

/// What [`Authority::plan_enrollment`] decided.
#[derive(Debug)]
struct EnrollmentPlan {
    account: AccountKey,
    device: DeviceId,
    takeover: Option<(DeviceRecord, u64)>,
    machine_indexed: bool,
    indexed_active: bool,
    machine_key: String,
    jwt: String,
    expires_at: i64,
    ca: String,
}

/// Device lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Enrolled and allowed.
    Active,
    /// Revoked: disconnected, renewals refused, needs a new token.
    Revoked,
}

/// A device as stored in `wg_devices` (key `<tenant>.<device>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Id.
    pub id: DeviceId,
    /// Tenant.
    pub tenant: TenantId,
    /// Organization.
    #[serde(default)]
    pub organization: Scope,
    /// Group.
    #[serde(default)]
    pub group: Scope,
    /// Current user public key.
    pub public_key: UserKey,
    /// The key before the last rotation or re-enrollment (its JWT may still be valid).
    #[serde(default)]
    pub previous_key: Option<UserKey>,
    /// State.
    pub state: DeviceState,
    /// Facts reported at the last enrollment.
    pub facts: DeviceFacts,
    /// First enrollment.
    pub enrolled_at: i64,
    /// Id of the token of the last enrollment.
    pub enrolled_by: String,
    /// Address of the last enrollment.
    #[serde(default)]
    pub enrolled_from: String,
    /// Enrollments after the first.
    #[serde(default)]
    pub reenrollments: u32,
    /// Last renewal.
    #[serde(default)]
    pub renewed_at: Option<i64>,
    /// Revocation time.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// Why an enrollment or renewal was refused. Each maps to one HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The token is unknown (or malformed).
    #[error("the enrollment token is not valid; ask your administrator for a new one")]
    InvalidToken,
    /// The token expired.
    #[error("the enrollment token has expired; ask your administrator for a new one")]
    TokenExpired,
    /// The token was revoked.
    #[error("the enrollment token was revoked; ask your administrator for a new one")]
    TokenRevoked,
    /// The token has no uses left.
    #[error("the enrollment token has already been used; ask your administrator for a new one")]
    TokenUsed,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The tenant is not active.
    #[error("the tenant cannot accept enrollments right now")]
    TenantUnavailable,
    /// Unknown device.
    #[error("this device is not enrolled; enroll it with a new token")]
    UnknownDevice,
    /// Revoked device.
    #[error("this device was revoked; enroll it again with a new token")]
    Revoked,
    /// The key presented is not the device's current key.
    #[error("this key is no longer the device's key; enroll it again with a new token")]
    StaleKey,
    /// Renewed too recently.
    #[error("renewed moments ago; try again later")]
    TooSoon,
    /// Internal failure (details logged, not returned).
    #[error("internal error; try again later")]
    Internal(#[from] AuthorityError),
}

impl EnrollError {
    /// The stable code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
            Self::TokenUsed => "token_used",
            Self::BadRequest(_) => "bad_request",
            Self::TenantUnavailable => "tenant_unavailable",
            Self::UnknownDevice => "unknown_device",
            Self::Revoked => "revoked",
            Self::StaleKey => "stale_key",
            Self::TooSoon => "too_soon",
            Self::Internal(_) => "internal",
        }
    }

    /// Whether this counts as a failed attempt of the caller (toward an address block).
    pub fn is_caller_failure(&self) -> bool {
        matches!(
            self,
            Self::InvalidToken
                | Self::TokenExpired
                | Self::TokenRevoked
                | Self::TokenUsed
                | Self::BadRequest(_)
        )
    }
}

/// SHA-256 of a token, hex: its KV key.
pub fn token_hash(token: &str) -> String {
    wegweiser_shared::enroll::token_hash(token)
}

fn device_key(tenant: &TenantId, device: &DeviceId) -> String {
    format!("{tenant}.{device}")
}

pub(crate) fn machine_key(tenant: &TenantId, machine_id: &str) -> String {
    format!(
        "{tenant}.{}",
        wegweiser_shared::enroll::hex(&Sha256::digest(format!("{tenant}\n{machine_id}")))
    )
}

fn valid_scope(s: &Scope) -> bool {
    s.as_deref().is_none_or(|v| v.parse::<TenantId>().is_ok())
}

impl Authority {
    /// Creates an enrollment token. Returns the token (shown once) and its record.
    pub async fn create_token(
        &self,
        new: NewToken,
    ) -> Result<(SecretString, TokenRecord), AuthorityError> {
        self.create_token_as(new, "cli").await
    }

    /// [`Authority::create_token`], audited as done by `actor`.
    pub async fn create_token_as(
        &self,
        new: NewToken,
        actor: &str,
    ) -> Result<(SecretString, TokenRecord), AuthorityError> {
        self.signer(&new.tenant).await?;
        if !valid_scope(&new.organization) || !valid_scope(&new.group) {
            return Err(AuthorityError::Store(
                "organization and group must be lowercase slugs".into(),
            ));
        }
        // Devices must land in objects that exist.
        self.check_place(
            &new.tenant,
            new.organization.as_deref(),
            new.group.as_deref(),
        )
        .await?;
        let ttl = new
            .ttl_secs
            .unwrap_or(self.inner.cfg.enrollment.token_ttl_secs);
        if !(60..=365 * 24 * 3600).contains(&ttl) {
            return Err(AuthorityError::BadLifetime {
                ttl,
                max: 365 * 24 * 3600,
            });
        }
        let bytes: [u8; 20] = rand::random();
        let token = SecretString::new(format!(
            "{TOKEN_PREFIX}{}",
            wegweiser_shared::enroll::hex(&bytes)
        ));
        let hash = token_hash(token.expose());
        let now = time::now();
        let rec = TokenRecord {
            id: hash[..12].to_owned(),
            tenant: new.tenant.clone(),
            organization: new.organization,
            group: new.group,
            label: new.label,
            created_at: now,
            expires_at: now + ttl,
            max_uses: match new.max_uses {
                None => 1,
                Some(0) => {
                    return Err(AuthorityError::Store(
                        "a token needs at least one use (--max-uses 1 or more)".into(),
                    ));
                }
                Some(n) => n,
            },
            uses: 0,
            revoked_at: None,
        };
        self.inner
            .tokens
            .create(&hash, serde_json::to_vec(&rec).map_err(store_err)?.into())
            .await
            .map_err(store_err)?;
        let mut a = AuditEntry::new("token.create", actor, "ok");
        a.tenant = Some(rec.tenant.to_string());
        a.detail = serde_json::json!({"token": rec.id, "max_uses": rec.max_uses, "expires_at": rec.expires_at});
        self.inner.audit.record(a).await;
        Ok((token, rec))
    }

    /// Every token of a tenant (records only, keyed by their hash), newest first; read in one
    /// pass over the bucket.
    pub async fn tokens(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(String, TokenRecord)>, AuthorityError> {
        let mut out: Vec<(String, TokenRecord)> =
            crate::authority::kv_values(&self.inner.cp, &self.inner.tokens, ">")
                .await?
                .into_iter()
                .filter_map(|(k, v)| {
                    serde_json::from_slice::<TokenRecord>(&v)
                        .ok()
                        .filter(|r| r.tenant == *tenant)
                        .map(|r| (k, r))
                })
                .collect();
        out.sort_by_key(|(_, r)| std::cmp::Reverse(r.created_at));
        Ok(out)
    }

    /// Revokes a token by its id (or a longer prefix of its hash).
    pub async fn revoke_token(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<TokenRecord, AuthorityError> {
        self.revoke_token_as(tenant, id, "cli").await
    }

    /// [`Authority::revoke_token`], audited as done by `actor`.
    pub async fn revoke_token_as(
        &self,
        tenant: &TenantId,
        id: &str,
        actor: &str,
    ) -> Result<TokenRecord, AuthorityError> {
        if id.len() < 12 {
            return Err(AuthorityError::Store(
                "give at least the 12-character token id".into(),
            ));
        }
        let Some((hash, _)) = self
            .tokens(tenant)
            .await?
            .into_iter()
            .find(|(h, _)| h.starts_with(id))
        else {
            return Err(AuthorityError::Store(format!(
                "no token {id} in tenant {tenant}; `wegweiser token list --tenant {tenant}` shows them"
            )));
        };
        let rec = self
            .update_token(&hash, |r| {
                r.revoked_at.get_or_insert(time::now());
                Ok(())
            })
            .await?;
        let mut a = AuditEntry::new("token.revoke", actor, "ok");
        a.tenant = Some(tenant.to_string());
        a.detail = serde_json::json!({"token": rec.id});
        self.inner.audit.record(a).await;
        Ok(rec)
    }

    pub(crate) async fn update_token<F>(
        &self,
        hash: &str,
        mut change: F,
    ) -> Result<TokenRecord, AuthorityError>
    where
        F: FnMut(&mut TokenRecord) -> Result<(), AuthorityError>,
    {
        loop {
            let e = self
                .inner
                .tokens
                .entry(hash)
                .await
                .map_err(store_err)?
                .filter(|e| e.operation == kv::Operation::Put)
                .ok_or_else(|| AuthorityError::Store("token vanished".into()))?;
            let mut r: TokenRecord = serde_json::from_slice(&e.value).map_err(store_err)?;
            change(&mut r)?;
            match self
                .inner
                .tokens
                .update(
                    hash,
                    serde_json::to_vec(&r).map_err(store_err)?.into(),
                    e.revision,
                )
                .await
            {
                Ok(_) => return Ok(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    /// Consumes one use of a token (compare-and-set): exactly `max_uses` callers succeed.
    async fn consume_token(&self, token: &str) -> Result<(String, TokenRecord), EnrollError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 64 {
            return Err(EnrollError::InvalidToken);
        }
        let hash = token_hash(token);
        let now = time::now();
        loop {
            let Some(e) = self
                .inner
                .tokens
                .entry(&hash)
                .await
                .map_err(|e| EnrollError::Internal(store_err(e)))?
                .filter(|e| e.operation == kv::Operation::Put)
            else {
                return Err(EnrollError::InvalidToken);
            };
            let mut r: TokenRecord = serde_json::from_slice(&e.value)
                .map_err(|e| EnrollError::Internal(store_err(e)))?;
            if r.revoked_at.is_some() {
                return Err(EnrollError::TokenRevoked);
            }
            if now >= r.expires_at {
                return Err(EnrollError::TokenExpired);
            }
            if r.uses >= r.max_uses {
                return Err(EnrollError::TokenUsed);
            }
            r.uses += 1;
            let body = serde_json::to_vec(&r).map_err(|e| EnrollError::Internal(store_err(e)))?;
            match self
                .inner
                .tokens
                .update(&hash, body.into(), e.revision)
                .await
            {
                Ok(_) => return Ok((hash, r)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(EnrollError::Internal(store_err(e))),
            }
        }
    }

    /// A device record and its revision.
    pub async fn device_entry(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<Option<(DeviceRecord, u64)>, AuthorityError> {
        let Some(e) = self
            .inner
            .devices
            .entry(device_key(tenant, device))
            .await
            .map_err(store_err)?
            .filter(|e| e.operation == kv::Operation::Put)
        else {
            return Ok(None);
        };
        let r = serde_json::from_slice(&e.value).map_err(store_err)?;
        Ok(Some((r, e.revision)))
    }

    /// The devices a token enrolled (last enrollment), by token id.
    pub async fn token_devices(
        &self,
        tenant: &TenantId,
    ) -> Result<std::collections::BTreeMap<String, Vec<DeviceId>>, AuthorityError> {
        let mut out: std::collections::BTreeMap<String, Vec<DeviceId>> = Default::default();
        for d in self.devices(tenant).await? {
            out.entry(d.enrolled_by).or_default().push(d.id);
        }
        Ok(out)
    }

    /// Every device of a tenant, read in one pass over the bucket (latest value per key).
    pub async fn devices(&self, tenant: &TenantId) -> Result<Vec<DeviceRecord>, AuthorityError> {
        let mut out: Vec<DeviceRecord> = crate::authority::kv_values(
            &self.inner.cp,
            &self.inner.devices,
            &format!("{tenant}.*"),
        )
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<DeviceRecord>(&v).ok())
        .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Enrolls a device: checks the key proofs, consumes the token, creates or takes over the
    /// device record, issues its JWT.
    pub async fn enroll(
        &self,
        req: EnrollRequest,
        ip: &str,
    ) -> Result<EnrollResponse, EnrollError> {
        let problems = req.facts.problems();
        if !problems.is_empty() {
            return Err(EnrollError::BadRequest(problems.join("; ")));
        }
        let message = enroll_proof_message(&req.token, &req.facts.machine_id, &req.public_key);
        if !verify_proof(&req.public_key, &message, &req.proof) {
            return Err(EnrollError::BadRequest(
                "the key proof does not verify: sign the enrollment message with the new key"
                    .into(),
            ));
        }
        if let Some(cur) = &req.current
            && !verify_proof(&cur.public_key, &message, &cur.proof)
        {
            return Err(EnrollError::BadRequest(
                "the current-key proof does not verify".into(),
            ));
        }
        let (hash, token) = self.consume_token(&req.token).await?;
        let plan = match self.plan_enrollment(&token, &req).await {
            Ok(p) => p,
            Err(e) => {
                // Nothing was written: give the use back.
                let _ = self
                    .update_token(&hash, |r| {
                        r.uses = r.uses.saturating_sub(1);
                        Ok(())
                    })
                    .await;
                return Err(e);
            }
        };
        self.commit_enrollment(&token, &req, ip, plan).await
    }

    /// Everything an enrollment decides before it writes anything: which device, and its JWT.
    async fn plan_enrollment(
        &self,
        token: &TokenRecord,
        req: &EnrollRequest,
    ) -> Result<EnrollmentPlan, EnrollError> {
        let tenant_id = &token.tenant;
        let (tenant, signer) = self
            .signer(tenant_id)
            .await
            .map_err(|_| EnrollError::TenantUnavailable)?;
        let mkey = machine_key(tenant_id, &req.facts.machine_id);
        let indexed = self
            .inner
            .machines
            .entry(&mkey)
            .await
            .map_err(|e| EnrollError::Internal(store_err(e)))?
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<DeviceId>().ok());
        let existing = match &indexed {
            Some(d) => self.device_entry(tenant_id, d).await?,
            None => None,
        };
        // Take over the existing device only when the request proves it holds the device's
        // current key: a machine id alone is not secret (and cloned machines share one).
        let indexed_active = existing
            .as_ref()
            .is_some_and(|(r, _)| r.state == DeviceState::Active);
        let takeover = existing.filter(|(r, _)| {
            r.state == DeviceState::Active
                && req
                    .current
                    .as_ref()
                    .is_some_and(|c| c.public_key == r.public_key)
        });
        let device = takeover
            .as_ref()
            .map(|(r, _)| r.id.clone())
            .unwrap_or_else(DeviceId::generate);
        let issued = self
            .issue_device_with(&tenant, &signer, &device, &req.public_key, None)
            .map_err(|e| match e {
                AuthorityError::Revoked(_) => EnrollError::BadRequest(
                    "this public key was revoked; generate a new key".into(),
                ),
                other => EnrollError::Internal(other),
            })?;
        let ca = match &self.inner.cfg.nats_ca {
            Some(p) => std::fs::read_to_string(p).map_err(|e| {
                EnrollError::Internal(AuthorityError::Store(format!(
                    "cannot read the NATS CA: {e}"
                )))
            })?,
            None => String::new(),
        };
        Ok(EnrollmentPlan {
            account: tenant.account.clone(),
            device,
            takeover,
            machine_indexed: indexed.is_some(),
            indexed_active,
            machine_key: mkey,
            jwt: issued.jwt,
            expires_at: issued.expires_at,
            ca,
        })
    }

    async fn commit_enrollment(
        &self,
        token: &TokenRecord,
        req: &EnrollRequest,
        ip: &str,
        plan: EnrollmentPlan,
    ) -> Result<EnrollResponse, EnrollError> {
        let tenant_id = &token.tenant;
        let internal = |e: AuthorityError| EnrollError::Internal(e);
        let reenrolled = plan.takeover.is_some();
        match plan.takeover {
            Some((mut r, rev)) => {
                let old = r.public_key.clone();
                r.previous_key = Some(old.clone());
                r.public_key = req.public_key.clone();
                r.facts = req.facts.clone();
                r.enrolled_by = token.id.clone();
                r.enrolled_from = ip.to_owned();
                r.organization = token.organization.clone();
                r.group = token.group.clone();
                r.reenrollments += 1;
                let body = serde_json::to_vec(&r).map_err(|e| internal(store_err(e)))?;
                self.inner
                    .devices
                    .update(device_key(tenant_id, &r.id), body.into(), rev)
                    .await
                    .map_err(|e| internal(store_err(e)))?;
                if old != req.public_key {
                    // The machine moved to a new key: the old one stops working now.
                    self.revoke(tenant_id, &old).await?;
                }
            }
            None => {
                let r = DeviceRecord {
                    id: plan.device.clone(),
                    tenant: tenant_id.clone(),
                    organization: token.organization.clone(),
                    group: token.group.clone(),
                    public_key: req.public_key.clone(),
                    previous_key: None,
                    state: DeviceState::Active,
                    facts: req.facts.clone(),
                    enrolled_at: time::now(),
                    enrolled_by: token.id.clone(),
                    enrolled_from: ip.to_owned(),
                    reenrollments: 0,
                    renewed_at: None,
                    revoked_at: None,
                };
                let body = serde_json::to_vec(&r).map_err(|e| internal(store_err(e)))?;
                self.inner
                    .devices
                    .create(device_key(tenant_id, &r.id), body.into())
                    .await
                    .map_err(|e| internal(store_err(e)))?;
                let id = r.id.to_string().into_bytes();
                if plan.indexed_active {
                    // The machine id names an active device this request could not prove to be:
                    // keep the index on that device; this one stands on its own.
                } else if plan.machine_indexed {
                    self.inner
                        .machines
                        .put(&plan.machine_key, id.into())
                        .await
                        .map_err(|e| internal(store_err(e)))?;
                } else if let Err(e) = self
                    .inner
                    .machines
                    .create(&plan.machine_key, id.into())
                    .await
                    && e.kind() != kv::CreateErrorKind::AlreadyExists
                {
                    // (AlreadyExists: two first enrollments of one machine at once; the first
                    // index wins and this device stays on its own.)
                    return Err(internal(store_err(e)));
                }
                if plan.indexed_active {
                    let mut a =
                        AuditEntry::new("enroll.duplicate_machine", "enrollment", "new_device");
                    a.tenant = Some(tenant_id.to_string());
                    a.device = Some(r.id.to_string());
                    a.ip = Some(ip.to_owned());
                    self.inner.audit.record(a).await;
                }
            }
        }
        let mut a = AuditEntry::new("enroll", "enrollment", "ok");
        a.tenant = Some(tenant_id.to_string());
        a.device = Some(plan.device.to_string());
        a.ip = Some(ip.to_owned());
        a.detail = serde_json::json!({
            "token": token.id, "public_key": req.public_key, "reenrolled": reenrolled,
            "hostname": req.facts.hostname,
        });
        self.inner.audit.record(a).await;
        let trust = match self.trust_bundle().await {
            Ok(b) => Some((*b).clone()),
            Err(e) => {
                // The agent then fetches it over NATS at its first connect.
                tracing::warn!(error = %e, "Enrollment answered without trust material.");
                None
            }
        };
        Ok(EnrollResponse {
            device_id: plan.device,
            tenant: tenant_id.clone(),
            account: plan.account,
            jwt: plan.jwt,
            jwt_expires_at: plan.expires_at,
            nats_urls: self.inner.cfg.device_urls(),
            nats_ca_pem: plan.ca,
            reenrolled,
            trust,
        })
    }

    /// Revokes a device: marks it revoked (renewals refused) and revokes its key (its live
    /// connections drop at once). Coming back needs a new enrollment token.
    pub async fn revoke_device(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<DeviceRecord, AuthorityError> {
        self.revoke_device_as(tenant, device, "cli").await
    }

    /// [`Authority::revoke_device`], audited as done by `actor`.
    pub async fn revoke_device_as(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        actor: &str,
    ) -> Result<DeviceRecord, AuthorityError> {
        let record = loop {
            let Some((mut r, rev)) = self.device_entry(tenant, device).await? else {
                return Err(AuthorityError::Store(format!(
                    "no device {device} in tenant {tenant}; `wegweiser device list --tenant {tenant}` shows them"
                )));
            };
            r.state = DeviceState::Revoked;
            r.revoked_at = Some(time::now());
            let body = serde_json::to_vec(&r).map_err(store_err)?;
            match self
                .inner
                .devices
                .update(device_key(tenant, device), body.into(), rev)
                .await
            {
                Ok(_) => break r,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e)),
            }
        };
        self.revoke(tenant, &record.public_key).await?;
        if let Some(previous) = &record.previous_key {
            // Its JWT may not have lapsed yet.
            self.revoke(tenant, previous).await?;
        }
        let mut a = AuditEntry::new("device.revoke", actor, "ok");
        a.tenant = Some(tenant.to_string());
        a.device = Some(device.to_string());
        self.inner.audit.record(a).await;
        Ok(record)
    }

    /// The tenant whose account this is (cached).
    pub async fn tenant_by_account(
        &self,
        account: &AccountKey,
    ) -> Result<Option<TenantId>, AuthorityError> {
        if let Ok(c) = self.inner.accounts.lock()
            && let Some(t) = c.get(account)
        {
            return Ok(Some(t.clone()));
        }
        let all = self.tenants().await?;
        let found = all
            .iter()
            .find(|t| t.account == *account)
            .map(|t| t.id.clone());
        if let Ok(mut c) = self.inner.accounts.lock() {
            for t in all {
                c.insert(t.account, t.id);
            }
        }
        Ok(found)
    }

    /// Renews a device's JWT. `presented` is the user key the request came from (from the
    /// server's `Nats-Request-Info`, which a client cannot forge).
    pub async fn renew(
        &self,
        account: &AccountKey,
        device: &DeviceId,
        presented: &str,
        req: RenewRequest,
    ) -> Result<RenewResponse, EnrollError> {
        let tenant = self
            .tenant_by_account(account)
            .await?
            .ok_or(EnrollError::UnknownDevice)?;
        let min_interval = self
            .inner
            .cfg
            .renew_min_interval_secs
            .min(self.inner.cfg.device_jwt_ttl_secs / 4);
        loop {
            let Some((mut r, rev)) = self.device_entry(&tenant, device).await? else {
                return Err(EnrollError::UnknownDevice);
            };
            if r.state != DeviceState::Active {
                return Err(EnrollError::Revoked);
            }
            let now = time::now();
            // A rotation whose answer was lost: the device retries from its previous key with the
            // key it already moved to. Answer again, for the current key.
            let retried_rotation = r
                .previous_key
                .as_ref()
                .is_some_and(|p| p.as_str() == presented)
                && req
                    .new_key
                    .as_ref()
                    .is_some_and(|n| n.public_key == r.public_key);
            if presented != r.public_key.as_str() && !retried_rotation {
                return Err(EnrollError::StaleKey);
            }
            if !retried_rotation && r.renewed_at.is_some_and(|t| now - t < min_interval) {
                return Err(EnrollError::TooSoon);
            }
            let key = match &req.new_key {
                None => r.public_key.clone(),
                Some(NewKey { public_key, proof }) => {
                    let message = new_key_proof_message(device, presented, public_key);
                    if !verify_proof(public_key, &message, proof) {
                        return Err(EnrollError::BadRequest(
                            "new key proof does not verify".into(),
                        ));
                    }
                    public_key.clone()
                }
            };
            let issued = self
                .issue_device_jwt(&tenant, device, &key, None)
                .await
                .map_err(|e| match e {
                    AuthorityError::Revoked(_) => EnrollError::Revoked,
                    other => EnrollError::Internal(other),
                })?;
            if retried_rotation {
                return Ok(RenewResponse::Ok {
                    jwt: issued.jwt,
                    expires_at: issued.expires_at,
                });
            }
            if key != r.public_key {
                // The old key's short JWT lapses on its own; it is never renewed again, and
                // revoking the device revokes it too.
                r.previous_key = Some(r.public_key.clone());
                r.public_key = key;
            }
            r.renewed_at = Some(now);
            let body = serde_json::to_vec(&r).map_err(|e| EnrollError::Internal(store_err(e)))?;
            match self
                .inner
                .devices
                .update(device_key(&tenant, device), body.into(), rev)
                .await
            {
                Ok(_) => {
                    return Ok(RenewResponse::Ok {
                        jwt: issued.jwt,
                        expires_at: issued.expires_at,
                    });
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(EnrollError::Internal(store_err(e))),
            }
        }
    }
}
