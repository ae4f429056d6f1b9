//! Tenant records and the pure parts of issuing: account JWTs and user JWTs.
//!
//! Nothing here does I/O, so the benchmarks and unit tests drive it directly.

use crate::{config::TenantLimits, seal::MasterKey, seal::SealError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wegweiser_shared::{
    ids::{AccountKey, DeviceId, TenantId, UserKey, UserName},
    jwt::{
        AccountNats, Claims, ExportType, Import, JetStreamLimits, JwtError, OperatorLimits,
        Permission, Permissions, ScopeKind, SigningKey, UNLIMITED, UserNats, UserPermissionLimits,
        UserScope,
    },
    subject,
};
use zeroize::Zeroize;

/// Most devices one technician credential may name (the server's template expansion cap is 4096).
pub const MAX_TECHNICIAN_DEVICES: usize = 4000;
/// Subscriptions a device connection may hold.
pub const DEVICE_MAX_SUBS: i64 = 128;
/// Subscriptions a technician connection may hold.
pub const TECHNICIAN_MAX_SUBS: i64 = 1024;

/// What a scoped signing key signs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Devices: confined to their own subjects by the template.
    Device,
    /// Technicians: subscribe-only on the devices in their `device:` tags.
    Technician,
}

impl Role {
    /// Both roles.
    pub const ALL: [Role; 2] = [Role::Device, Role::Technician];

    /// The role name in the account JWT.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Technician => "technician",
        }
    }

    /// The permission template the server applies to every user this role's key signs.
    pub fn template(self) -> UserPermissionLimits {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        match self {
            Self::Device => UserPermissionLimits {
                permissions: Permissions {
                    publish: Permission {
                        allow: s(&[subject::template::DEVICE_PUB]),
                        deny: Vec::new(),
                    },
                    subscribe: Permission {
                        allow: s(&[
                            subject::template::DEVICE_SUB_DOWN,
                            subject::template::OWN_INBOX,
                        ]),
                        deny: Vec::new(),
                    },
                    resp: None,
                },
                subs: Some(DEVICE_MAX_SUBS),
                data: Some(UNLIMITED),
                payload: Some(UNLIMITED),
                ..Default::default()
            },
            Self::Technician => UserPermissionLimits {
                permissions: Permissions {
                    publish: Permission {
                        allow: Vec::new(),
                        deny: s(&[">"]),
                    },
                    subscribe: Permission {
                        // No inbox: technicians cannot publish, so they never make requests, and an
                        // inbox named after them could collide with a device's.
                        allow: s(&[subject::template::TECHNICIAN_SUB_UP]),
                        deny: s(&[subject::EXPORT_DOWN, "_INBOX.>"]),
                    },
                    resp: None,
                },
                subs: Some(TECHNICIAN_MAX_SUBS),
                data: Some(UNLIMITED),
                payload: Some(UNLIMITED),
                ..Default::default()
            },
        }
    }
}

/// Lifecycle of a tenant record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// Reserved; the account is being pushed.
    Creating,
    /// In service.
    Active,
    /// Being removed.
    Deleting,
}

/// A scoped signing key of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    /// Its role.
    pub role: Role,
    /// Public key.
    pub key: String,
    /// When it was created.
    pub created_at: i64,
    /// Set once a newer key of the same role took over issuance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_since: Option<i64>,
}

/// A tenant as stored in the `wg_tenants` bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Id (the KV key).
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// The tenant's NATS account.
    pub account: AccountKey,
    /// Lifecycle state.
    pub state: TenantState,
    /// Creation time.
    pub created_at: i64,
    /// Account limits.
    pub limits: TenantLimits,
    /// Scoped signing keys (active and retiring).
    pub signing_keys: Vec<SigningKeyRecord>,
    /// Revoked user keys → revocation time (what the account JWT carries; pruned once no JWT
    /// issued before it can still be valid).
    #[serde(default)]
    pub revocations: BTreeMap<String, i64>,
    /// User keys that are never issued a JWT again (not pruned).
    #[serde(default)]
    pub banned_users: std::collections::BTreeSet<String>,
    /// The latest account JWT (what the server must hold).
    pub jwt: String,
    /// `iat` of that JWT; the next one gets a strictly larger one.
    pub last_iat: i64,
    /// Sealed [`TenantSecrets`].
    pub sealed: String,
    /// How long the tenant's reports are kept (`None`: `telemetry_retention_days` from the
    /// configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<crate::retention::RetentionDays>,
}

/// The tenant's seeds; sealed under the master key in the record.
#[derive(Serialize, Deserialize)]
pub struct TenantSecrets {
    /// Account identity seed.
    pub account_seed: String,
    /// Signing key public key → seed.
    pub signing: BTreeMap<String, String>,
}

impl Drop for TenantSecrets {
    fn drop(&mut self) {
        self.account_seed.zeroize();
        self.signing.values_mut().for_each(Zeroize::zeroize);
    }
}

impl std::fmt::Debug for TenantSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantSecrets(***)")
    }
}

impl TenantRecord {
    /// Associated data binding the sealed secrets to this tenant and account.
    pub fn seal_aad(id: &TenantId, account: &AccountKey) -> String {
        format!("wegweiser/tenant/{id}/{account}")
    }

    /// Opens the sealed secrets.
    pub fn secrets(&self, master: &MasterKey) -> Result<TenantSecrets, SealError> {
        let plain = master.open(&Self::seal_aad(&self.id, &self.account), &self.sealed)?;
        serde_json::from_slice(&plain).map_err(|_| SealError::Malformed)
    }

    /// Seals `secrets` into the record.
    pub fn set_secrets(&mut self, master: &MasterKey, secrets: &TenantSecrets) {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(secrets).unwrap_or_default());
        self.sealed = master.seal(&Self::seal_aad(&self.id, &self.account), &plain);
    }

    /// The key that signs new users of `role`.
    pub fn active_key(&self, role: Role) -> Option<&SigningKeyRecord> {
        self.signing_keys
            .iter()
            .rev()
            .find(|k| k.role == role && k.retiring_since.is_none())
    }

    /// The account claims this record describes (imports of its own slots, limits, scoped
    /// signing keys, revocations).
    pub fn account_nats(&self, cp_account: &AccountKey) -> AccountNats {
        let l = &self.limits;
        let js_on = l.jetstream_disk != 0 || l.jetstream_memory != 0;
        let limits = OperatorLimits {
            subs: l.max_subscriptions,
            data: UNLIMITED,
            payload: l.max_payload,
            imports: 2,
            exports: 0,
            wildcards: false,
            disallow_bearer: true,
            conn: l.max_connections,
            leaf: 0,
            jetstream: if js_on {
                JetStreamLimits {
                    mem_storage: l.jetstream_memory,
                    disk_storage: l.jetstream_disk,
                    streams: UNLIMITED,
                    consumer: UNLIMITED,
                    max_ack_pending: UNLIMITED,
                    ..Default::default()
                }
            } else {
                JetStreamLimits::default()
            },
            tiered_limits: BTreeMap::new(),
        };
        let mut nats = AccountNats::new(limits);
        nats.imports = vec![
            Import {
                name: "wegweiser-up".into(),
                subject: subject::import_up(&self.account),
                account: cp_account.to_string(),
                token: String::new(),
                local_subject: String::new(),
                kind: ExportType::Service,
                share: true,
            },
            Import {
                name: "wegweiser-down".into(),
                subject: subject::import_down(&self.account),
                account: cp_account.to_string(),
                token: String::new(),
                local_subject: String::new(),
                kind: ExportType::Stream,
                share: false,
            },
        ];
        nats.signing_keys = self
            .signing_keys
            .iter()
            .map(|k| {
                SigningKey::Scoped(Box::new(UserScope {
                    kind: ScopeKind::UserScope,
                    key: k.key.clone(),
                    role: k.role.as_str().to_owned(),
                    template: k.role.template(),
                    description: String::new(),
                }))
            })
            .collect();
        nats.revocations = self.revocations.clone();
        nats
    }

    /// Re-signs the account JWT with a strictly larger `iat` and a fresh `jti`, storing both.
    pub fn resign(
        &mut self,
        cp_account: &AccountKey,
        operator_signing: &nkeys::KeyPair,
        now: i64,
    ) -> Result<(), JwtError> {
        let iat = now.max(self.last_iat + 1);
        self.jwt = Claims::new(
            self.account.to_string(),
            self.id.as_str(),
            self.account_nats(cp_account),
        )
        .issued_at(iat)
        .encode(operator_signing)?;
        self.last_iat = iat;
        Ok(())
    }
}

/// Which devices a technician credential may watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TechnicianScope {
    /// Every device of the tenant.
    AllDevices,
    /// These devices only.
    Devices(Vec<DeviceId>),
}

/// Signs user JWTs for one tenant: holds the active scoped keys, opened from the record.
#[derive(Debug)]
pub struct TenantSigner {
    account: AccountKey,
    device: nkeys::KeyPair,
    technician: nkeys::KeyPair,
}

/// Why a user JWT was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The record has no active key of the role (damaged record).
    #[error("tenant has no active {0} signing key; run `wegweiser tenant rotate-keys`")]
    NoActiveKey(&'static str),
    /// The sealed secrets do not open.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// A secret in the record is not a valid seed.
    #[error("tenant secrets are damaged (invalid seed)")]
    BadSeed,
    /// Too many devices for one technician credential.
    #[error(
        "a technician credential may name at most {MAX_TECHNICIAN_DEVICES} devices ({0} given); use --all-devices"
    )]
    TooManyDevices(usize),
    /// Signing failed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

impl TenantSigner {
    /// Opens the active keys of `record`.
    pub fn open(record: &TenantRecord, master: &MasterKey) -> Result<Self, IssueError> {
        let secrets = record.secrets(master)?;
        let key = |role: Role| -> Result<nkeys::KeyPair, IssueError> {
            let k = record
                .active_key(role)
                .ok_or(IssueError::NoActiveKey(role.as_str()))?;
            let seed = secrets.signing.get(&k.key).ok_or(IssueError::BadSeed)?;
            let kp = nkeys::KeyPair::from_seed(seed).map_err(|_| IssueError::BadSeed)?;
            if kp.public_key() != k.key {
                return Err(IssueError::BadSeed);
            }
            Ok(kp)
        };
        Ok(Self {
            account: record.account.clone(),
            device: key(Role::Device)?,
            technician: key(Role::Technician)?,
        })
    }

    /// The public key that signs devices now.
    pub fn device_signing_key(&self) -> String {
        self.device.public_key()
    }

    /// A device user JWT for `user`, named after the device, valid `ttl` seconds. It carries no
    /// permissions: the scoped key's template confines it to `wg.<account>.{up,down}.<device>.>`.
    pub fn issue_device(
        &self,
        device: &DeviceId,
        user: &UserKey,
        ttl: i64,
    ) -> Result<String, JwtError> {
        Ok(self.issue_device_with_expiry(device, user, ttl)?.0)
    }

    /// Like [`TenantSigner::issue_device`], also returning the JWT's expiry.
    pub fn issue_device_with_expiry(
        &self,
        device: &DeviceId,
        user: &UserKey,
        ttl: i64,
    ) -> Result<(String, i64), JwtError> {
        let mut nats = UserNats::scoped();
        nats.issuer_account = Some(self.account.to_string());
        let claims = Claims::new(user.as_str(), device.as_str(), nats).expires_in(ttl);
        let exp = claims.exp.unwrap_or_default();
        Ok((claims.encode(&self.device)?, exp))
    }

    /// A technician user JWT: subscribe-only on the devices in `scope`.
    pub fn issue_technician(
        &self,
        name: &UserName,
        scope: &TechnicianScope,
        user: &UserKey,
        ttl: i64,
    ) -> Result<String, IssueError> {
        let tag = subject::TECHNICIAN_DEVICE_TAG;
        let tags = match scope {
            TechnicianScope::AllDevices => vec![format!("{tag}:*")],
            TechnicianScope::Devices(d) if d.len() > MAX_TECHNICIAN_DEVICES => {
                return Err(IssueError::TooManyDevices(d.len()));
            }
            TechnicianScope::Devices(d) => d.iter().map(|d| format!("{tag}:{d}")).collect(),
        };
        let mut nats = UserNats::scoped();
        nats.issuer_account = Some(self.account.to_string());
        nats.tags = tags;
        Ok(Claims::new(user.as_str(), name.as_str(), nats)
            .expires_in(ttl)
            .encode(&self.technician)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wegweiser_shared::jwt::{self, OperatorNats};

    pub(crate) fn record(master: &MasterKey) -> (TenantRecord, nkeys::KeyPair) {
        let op_sk = nkeys::KeyPair::new_operator();
        let acc = nkeys::KeyPair::new_account();
        let dev = nkeys::KeyPair::new_account();
        let tech = nkeys::KeyPair::new_account();
        let id: TenantId = "acme".parse().unwrap();
        let account: AccountKey = acc.public_key().parse().unwrap();
        let mut r = TenantRecord {
            id,
            name: "Acme".into(),
            account,
            state: TenantState::Active,
            created_at: 0,
            limits: TenantLimits::default(),
            signing_keys: vec![
                SigningKeyRecord {
                    role: Role::Device,
                    key: dev.public_key(),
                    created_at: 0,
                    retiring_since: None,
                },
                SigningKeyRecord {
                    role: Role::Technician,
                    key: tech.public_key(),
                    created_at: 0,
                    retiring_since: None,
                },
            ],
            revocations: BTreeMap::new(),
            banned_users: Default::default(),
            jwt: String::new(),
            last_iat: 0,
            sealed: String::new(),
            retention_days: None,
        };
        let secrets = TenantSecrets {
            account_seed: acc.seed().unwrap(),
            signing: [dev, tech]
                .iter()
                .map(|k| (k.public_key(), k.seed().unwrap()))
                .collect(),
        };
        r.set_secrets(master, &secrets);
        (r, op_sk)
    }

    #[test]
    fn account_jwt_imports_only_its_own_slots_and_iat_strictly_increases() {
        let master = MasterKey::generate();
        let (mut r, op_sk) = record(&master);
        let cp: AccountKey = nkeys::KeyPair::new_account().public_key().parse().unwrap();
        let now = wegweiser_shared::time::now();
        r.resign(&cp, &op_sk, now).unwrap();
        let first = (r.last_iat, r.jwt.clone());
        r.resign(&cp, &op_sk, now).unwrap();
        assert_eq!(
            r.last_iat,
            first.0 + 1,
            "same second still gets a larger iat"
        );
        let a: Claims<AccountNats> = jwt::decode(&r.jwt, now + 10).unwrap();
        let b: Claims<AccountNats> = jwt::decode(&first.1, now + 10).unwrap();
        assert_ne!(a.jti, b.jti);
        assert_eq!(a.nats.imports.len(), 2);
        for i in &a.nats.imports {
            assert!(
                i.subject.starts_with(&format!("wg.{}.", r.account)),
                "{}",
                i.subject
            );
            assert_eq!(i.account, cp.to_string());
        }
        assert_eq!(a.nats.limits.conn, 10_000);
        assert_eq!(
            a.nats.limits.jetstream.disk_storage, 0,
            "JetStream off by default"
        );
        assert!(
            a.nats
                .signing_keys
                .iter()
                .all(|k| matches!(k, SigningKey::Scoped(_)))
        );
        // The operator signing key is a trusted issuer of this account.
        let op = Claims::new(
            nkeys::KeyPair::new_operator().public_key(),
            "o",
            OperatorNats::new(vec![op_sk.public_key()], String::new()),
        );
        assert!(jwt::verify_account(&r.jwt, &op, now + 10).is_ok());
    }

    #[test]
    fn issued_users_verify_against_the_account_and_carry_no_permissions() {
        let master = MasterKey::generate();
        let (mut r, op_sk) = record(&master);
        let cp: AccountKey = nkeys::KeyPair::new_account().public_key().parse().unwrap();
        r.resign(&cp, &op_sk, wegweiser_shared::time::now())
            .unwrap();
        let account: Claims<AccountNats> = jwt::decode_untimed(&r.jwt).unwrap();
        let signer = TenantSigner::open(&r, &master).unwrap();
        let user: UserKey = nkeys::KeyPair::new_user().public_key().parse().unwrap();
        let dev: DeviceId = "dev-1".parse().unwrap();
        let t = signer.issue_device(&dev, &user, 60).unwrap();
        let c = jwt::verify_user(&t, &account, true, wegweiser_shared::time::now()).unwrap();
        assert_eq!(c.name, "dev-1");
        assert!(c.nats.limits.is_empty());
        let tech = signer
            .issue_technician(
                &"bob".parse().unwrap(),
                &TechnicianScope::Devices(vec![dev]),
                &user,
                60,
            )
            .unwrap();
        let c = jwt::verify_user(&tech, &account, true, wegweiser_shared::time::now()).unwrap();
        assert_eq!(c.nats.tags, vec!["device:dev-1".to_owned()]);
        let many = TechnicianScope::Devices(vec!["d".parse().unwrap(); MAX_TECHNICIAN_DEVICES + 1]);
        assert!(matches!(
            signer.issue_technician(&"bob".parse().unwrap(), &many, &user, 60),
            Err(IssueError::TooManyDevices(_))
        ));
        // Wrong master key: a clear error, no panic.
        assert!(matches!(
            TenantSigner::open(&r, &MasterKey::generate()),
            Err(IssueError::Seal(SealError::WrongKey))
        ));
    }
}
