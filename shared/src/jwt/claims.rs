//! NATS JWT v2 claim bodies (the `nats` object) for every claim kind Wegweiser issues.
//!
//! Field names and omission rules follow nats-io/jwt v2. Limits are literal: an omitted or zero
//! limit means zero, so unlimited must be written as [`UNLIMITED`] (-1).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The value that means "no limit".
pub const UNLIMITED: i64 = -1;

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn version_2() -> u8 {
    2
}

/// A claim kind: knows the `nats.type` string it must carry.
pub trait NatsClaim: Serialize + for<'de> Deserialize<'de> {
    /// The required value of `nats.type`.
    const TYPE: &'static str;
    /// The value of `nats.type` as decoded.
    fn claim_type(&self) -> &str;
    /// The value of `nats.version` as decoded.
    fn claim_version(&self) -> u8;
}

macro_rules! nats_claim {
    ($t:ty, $name:literal) => {
        impl NatsClaim for $t {
            const TYPE: &'static str = $name;
            fn claim_type(&self) -> &str {
                &self.kind
            }
            fn claim_version(&self) -> u8 {
                self.version
            }
        }
    };
}

/// Allow and deny lists of subjects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// Subjects allowed; empty means everything not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Subjects denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Permission {
    /// No allow and no deny entries.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Permission to publish on reply subjects of received requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponsePermission {
    /// Responses allowed per request.
    pub max: i64,
    /// How long the permission lasts, in nanoseconds.
    pub ttl: i64,
}

/// Publish and subscribe permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Publish permission.
    #[serde(rename = "pub", default, skip_serializing_if = "Permission::is_empty")]
    pub publish: Permission,
    /// Subscribe permission.
    #[serde(rename = "sub", default, skip_serializing_if = "Permission::is_empty")]
    pub subscribe: Permission,
    /// Response permission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<ResponsePermission>,
}

impl Permissions {
    /// No permission entries at all.
    pub fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.subscribe.is_empty() && self.resp.is_none()
    }
}

/// A time-of-day window in which a user may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    /// Start, `HH:MM:SS`.
    pub start: String,
    /// End, `HH:MM:SS`.
    pub end: String,
}

/// The permissions and limits of a user, or of a scoped signing key's template.
///
/// For a user signed by a scoped key every field must stay empty (the server refuses the user
/// otherwise); [`UserPermissionLimits::is_empty`] tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPermissionLimits {
    /// Publish, subscribe and response permissions.
    #[serde(flatten)]
    pub permissions: Permissions,
    /// Source networks (CIDR) allowed to connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src: Vec<String>,
    /// Times of day allowed to connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub times: Vec<TimeRange>,
    /// Time zone of `times`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub times_location: String,
    /// Maximum subscriptions (-1 unlimited; omitted means zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subs: Option<i64>,
    /// Maximum bytes (-1 unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<i64>,
    /// Maximum message payload (-1 unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<i64>,
    /// Whether the JWT is a bearer token (no nonce signature needed). Never set by Wegweiser.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bearer_token: bool,
    /// Whether the user must connect through a proxy (2.12+).
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy_required: bool,
    /// Connection types allowed (`STANDARD`, `WEBSOCKET`, `LEAFNODE`, `MQTT`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_connection_types: Vec<String>,
}

impl UserPermissionLimits {
    /// True when nothing is set: what a scoped-key user must carry.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `nats` of a user JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNats {
    /// Permissions and limits (empty for scoped-key users).
    #[serde(flatten)]
    pub limits: UserPermissionLimits,
    /// The account identity key, set when a signing key signed the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_account: Option<String>,
    /// Tags (`key:value`), used by scoped templates through `{{tag(key)}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Always `user`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 2.
    #[serde(default = "version_2")]
    pub version: u8,
}
nats_claim!(UserNats, "user");

impl UserNats {
    /// A user for a scoped signing key: no permissions, no limits (the template supplies them).
    pub fn scoped() -> Self {
        Self::with_limits(UserPermissionLimits::default())
    }

    /// A user with explicit permissions and limits (for an unscoped signing key).
    pub fn with_limits(limits: UserPermissionLimits) -> Self {
        Self {
            limits,
            issuer_account: None,
            tags: Vec::new(),
            kind: Self::TYPE.to_owned(),
            version: 2,
        }
    }
}

/// Signing key scope kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScopeKind {
    /// A user scope: users it signs get the template's permissions and limits.
    #[serde(rename = "user_scope")]
    UserScope,
}

/// A scoped signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserScope {
    /// Always `user_scope`.
    pub kind: ScopeKind,
    /// The signing key's public key.
    pub key: String,
    /// A role name.
    pub role: String,
    /// Permissions and limits every user signed by this key gets.
    pub template: UserPermissionLimits,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// An account signing key: plain (users carry their own permissions) or scoped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SigningKey {
    /// A plain signing key.
    Plain(String),
    /// A scoped signing key.
    Scoped(Box<UserScope>),
}

impl SigningKey {
    /// The signing key's public key.
    pub fn key(&self) -> &str {
        match self {
            Self::Plain(k) => k,
            Self::Scoped(s) => &s.key,
        }
    }
}

/// Stream or service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportType {
    /// Messages flow from exporter to importer.
    Stream,
    /// Requests flow from importer to exporter, replies back.
    Service,
}

/// An account export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// Name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Exported subject (may hold wildcards).
    pub subject: String,
    /// Stream or service.
    #[serde(rename = "type")]
    pub kind: ExportType,
    /// Whether importers need an activation token.
    #[serde(default, skip_serializing_if = "is_false")]
    pub token_req: bool,
    /// Revoked activations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, i64>,
    /// `Singleton`, `Stream` or `Chunked` (services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_type: Option<String>,
    /// The token (1-based) that must equal the importing account's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_token_position: Option<u32>,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// An account import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Import {
    /// Name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The subject in the exporter's namespace.
    pub subject: String,
    /// The exporting account's public key.
    pub account: String,
    /// Activation token, when the export requires one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Subject in the importer's namespace (defaults to `subject`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_subject: String,
    /// Stream or service.
    #[serde(rename = "type")]
    pub kind: ExportType,
    /// Share the requester's identity with the service (`Nats-Request-Info`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub share: bool,
}

/// JetStream limits of an account (or of one tier).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JetStreamLimits {
    /// Memory storage bytes (0 = JetStream off for memory).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mem_storage: i64,
    /// Disk storage bytes (0 = JetStream off for disk).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk_storage: i64,
    /// Streams.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub streams: i64,
    /// Consumers.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consumer: i64,
    /// Max ack pending per consumer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_ack_pending: i64,
    /// Max bytes of one memory stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mem_max_stream_bytes: i64,
    /// Max bytes of one disk stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk_max_stream_bytes: i64,
    /// Every stream must set max bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub max_bytes_required: bool,
}

/// The `limits` object of an account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorLimits {
    /// Subscriptions.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub subs: i64,
    /// Bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub data: i64,
    /// Max payload of one message.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub payload: i64,
    /// Imports.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub imports: i64,
    /// Exports.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exports: i64,
    /// Wildcards allowed in exports.
    #[serde(default, skip_serializing_if = "is_false")]
    pub wildcards: bool,
    /// Refuse bearer-token users.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disallow_bearer: bool,
    /// Active connections.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conn: i64,
    /// Leaf node connections.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub leaf: i64,
    /// JetStream limits.
    #[serde(flatten)]
    pub jetstream: JetStreamLimits,
    /// JetStream limits per tier (`R1`, `R3`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiered_limits: BTreeMap<String, JetStreamLimits>,
}

impl OperatorLimits {
    /// Everything unlimited, JetStream included.
    pub fn unlimited() -> Self {
        Self {
            subs: UNLIMITED,
            data: UNLIMITED,
            payload: UNLIMITED,
            imports: UNLIMITED,
            exports: UNLIMITED,
            wildcards: true,
            disallow_bearer: true,
            conn: UNLIMITED,
            leaf: UNLIMITED,
            jetstream: JetStreamLimits {
                mem_storage: UNLIMITED,
                disk_storage: UNLIMITED,
                streams: UNLIMITED,
                consumer: UNLIMITED,
                max_ack_pending: UNLIMITED,
                mem_max_stream_bytes: 0,
                disk_max_stream_bytes: 0,
                max_bytes_required: false,
            },
            tiered_limits: BTreeMap::new(),
        }
    }
}

/// `nats` of an account JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountNats {
    /// Imports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<Import>,
    /// Exports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<Export>,
    /// Limits.
    #[serde(default)]
    pub limits: OperatorLimits,
    /// Signing keys (plain or scoped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKey>,
    /// Revoked users: public key (or `*`) to the time before which their JWTs are revoked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, i64>,
    /// Permissions of users that carry none.
    #[serde(default, skip_serializing_if = "Permissions::is_empty")]
    pub default_permissions: Permissions,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Always `account`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 2.
    #[serde(default = "version_2")]
    pub version: u8,
}
nats_claim!(AccountNats, "account");

impl AccountNats {
    /// An account with the given limits and nothing else.
    pub fn new(limits: OperatorLimits) -> Self {
        Self {
            imports: Vec::new(),
            exports: Vec::new(),
            limits,
            signing_keys: Vec::new(),
            revocations: BTreeMap::new(),
            default_permissions: Permissions::default(),
            description: String::new(),
            tags: Vec::new(),
            kind: Self::TYPE.to_owned(),
            version: 2,
        }
    }

    /// The signing key with this public key, if the account lists it.
    pub fn signing_key(&self, public_key: &str) -> Option<&SigningKey> {
        self.signing_keys.iter().find(|k| k.key() == public_key)
    }

    /// Whether a JWT for `user` issued at `iat` is revoked by this account.
    pub fn is_revoked(&self, user: &str, iat: i64) -> bool {
        [user, "*"]
            .iter()
            .filter_map(|k| self.revocations.get(*k))
            .any(|t| iat <= *t)
    }
}

/// `nats` of an operator JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorNats {
    /// Operator signing keys (these sign accounts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
    /// Account server URL (not used with a full resolver).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account_server_url: String,
    /// URLs of the operator's NATS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_service_urls: Vec<String>,
    /// The system account's public key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_account: String,
    /// Minimum server version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub assert_server_version: String,
    /// Identity keys may not sign (accounts must be signed by signing keys, users too).
    #[serde(default, skip_serializing_if = "is_false")]
    pub strict_signing_key_usage: bool,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Always `operator`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 2.
    #[serde(default = "version_2")]
    pub version: u8,
}
nats_claim!(OperatorNats, "operator");

impl OperatorNats {
    /// An operator with these signing keys and system account, strict signing key usage on.
    pub fn new(signing_keys: Vec<String>, system_account: String) -> Self {
        Self {
            signing_keys,
            account_server_url: String::new(),
            operator_service_urls: Vec::new(),
            system_account,
            assert_server_version: String::new(),
            strict_signing_key_usage: true,
            tags: Vec::new(),
            kind: Self::TYPE.to_owned(),
            version: 2,
        }
    }
}

/// `nats` of an activation JWT (grants an account an import of a token-required export).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationNats {
    /// The subject being granted.
    pub subject: String,
    /// Stream or service.
    #[serde(rename = "kind")]
    pub import_type: ExportType,
    /// The exporting account identity key, set when a signing key signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_account: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Always `activation`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 2.
    #[serde(default = "version_2")]
    pub version: u8,
}
nats_claim!(ActivationNats, "activation");

impl ActivationNats {
    /// An activation of `subject` of the given kind.
    pub fn new(subject: String, import_type: ExportType) -> Self {
        Self {
            subject,
            import_type,
            issuer_account: None,
            tags: Vec::new(),
            kind: Self::TYPE.to_owned(),
            version: 2,
        }
    }
}

/// `nats` of the generic claim that asks a full resolver to delete accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAccountsNats {
    /// Accounts to delete.
    pub accounts: Vec<String>,
    /// Always `generic`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 2.
    #[serde(default = "version_2")]
    pub version: u8,
}
nats_claim!(DeleteAccountsNats, "generic");

impl DeleteAccountsNats {
    /// A request to delete these accounts.
    pub fn new(accounts: Vec<String>) -> Self {
        Self {
            accounts,
            kind: Self::TYPE.to_owned(),
            version: 2,
        }
    }
}
