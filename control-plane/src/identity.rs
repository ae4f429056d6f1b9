//! The platform's own NATS identities: operator, system account, control-plane account, and
//! the short-lived service users the control plane connects as.

use crate::keystore::{Keystore, KeystoreError, SeedKind, files};
use wegweiser_shared::{
    ids::AccountKey,
    jwt::{
        AccountNats, Claims, Export, ExportType, JetStreamLimits, JwtError, OperatorLimits,
        OperatorNats, Permission, Permissions, ResponsePermission, SigningKey, UNLIMITED, UserNats,
        UserPermissionLimits,
    },
    subject,
};

/// Lifetime of the service users' JWTs. Connections mint a fresh one on every (re)connect.
pub const SERVICE_JWT_TTL_SECS: i64 = 7 * 24 * 3600;

/// The keys the running control plane needs (the operator identity key is not among them: it
/// only signs the operator JWT, at `init`, and can be kept offline).
#[derive(Debug)]
pub struct PlatformKeys {
    /// Operator signing key: signs every account JWT.
    pub operator_signing: nkeys::KeyPair,
    /// System account public key.
    pub system_account: AccountKey,
    /// System account signing key: signs the push and inspection users.
    pub system_signing: nkeys::KeyPair,
    /// Control-plane account public key.
    pub cp_account: AccountKey,
    /// Control-plane account signing key: signs the service user.
    pub cp_signing: nkeys::KeyPair,
}

fn account_key(kp: &nkeys::KeyPair) -> AccountKey {
    // A key pair made from an account seed always has a valid account public key.
    kp.public_key()
        .parse()
        .unwrap_or_else(|_| unreachable!("account key pair has an account public key"))
}

impl PlatformKeys {
    /// Loads the keys from the keystore.
    pub fn load(ks: &Keystore) -> Result<Self, KeystoreError> {
        Ok(Self {
            operator_signing: ks.load_seed(files::OPERATOR_SIGNING, SeedKind::Operator)?,
            system_account: account_key(&ks.load_seed(files::SYSTEM_ACCOUNT, SeedKind::Account)?),
            system_signing: ks.load_seed(files::SYSTEM_SIGNING, SeedKind::Account)?,
            cp_account: account_key(&ks.load_seed(files::CP_ACCOUNT, SeedKind::Account)?),
            cp_signing: ks.load_seed(files::CP_SIGNING, SeedKind::Account)?,
        })
    }
}

/// The operator JWT: strict signing key usage, one signing key, the system account.
pub fn operator_jwt(
    operator: &nkeys::KeyPair,
    signing: &nkeys::KeyPair,
    system_account: &AccountKey,
) -> Result<String, JwtError> {
    let mut nats = OperatorNats::new(vec![signing.public_key()], system_account.to_string());
    nats.assert_server_version = crate::nats_server::MIN_VERSION.to_owned();
    Claims::new(operator.public_key(), "wegweiser", nats).encode(operator)
}

/// The system account JWT.
pub fn system_account_jwt(
    account: &AccountKey,
    signing: &nkeys::KeyPair,
    operator_signing: &nkeys::KeyPair,
) -> Result<String, JwtError> {
    let mut limits = OperatorLimits::unlimited();
    limits.jetstream = JetStreamLimits::default();
    let mut nats = AccountNats::new(limits);
    nats.signing_keys
        .push(SigningKey::Plain(signing.public_key()));
    Claims::new(account.to_string(), "SYS", nats).encode(operator_signing)
}

/// The control-plane account JWT: exports the up service and the down stream, each with the
/// tenant token bound by `account_token_position`, so a tenant can import only its own slot.
pub fn cp_account_jwt(
    account: &AccountKey,
    signing: &nkeys::KeyPair,
    operator_signing: &nkeys::KeyPair,
) -> Result<String, JwtError> {
    let mut nats = AccountNats::new(OperatorLimits::unlimited());
    nats.exports = vec![
        Export {
            name: "wegweiser-up".into(),
            subject: subject::EXPORT_UP.into(),
            kind: ExportType::Service,
            token_req: false,
            revocations: Default::default(),
            response_type: Some("Singleton".into()),
            account_token_position: Some(subject::ACCOUNT_TOKEN_POSITION),
            description: "Everything devices send to the control plane".into(),
        },
        Export {
            name: "wegweiser-down".into(),
            subject: subject::EXPORT_DOWN.into(),
            kind: ExportType::Stream,
            token_req: false,
            revocations: Default::default(),
            response_type: None,
            account_token_position: Some(subject::ACCOUNT_TOKEN_POSITION),
            description: "Everything the control plane sends to devices".into(),
        },
    ];
    nats.signing_keys
        .push(SigningKey::Plain(signing.public_key()));
    Claims::new(account.to_string(), "wegweiser-cp", nats).encode(operator_signing)
}

/// Which service user to mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceUser {
    /// The control-plane service (CP account): JetStream, KV, down subjects, up requests.
    ControlPlane,
    /// The system-account push user: `$SYS.REQ.CLAIMS.{UPDATE,DELETE,LIST}` only.
    Push,
    /// The system-account inspection user: `$SYS.REQ.ACCOUNT.*.{INFO,CONNZ}` only.
    Inspect,
}

impl ServiceUser {
    /// The JWT name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ControlPlane => "wegweiser-cp",
            Self::Push => "wegweiser-push",
            Self::Inspect => "wegweiser-inspect",
        }
    }

    /// Least-privilege permissions of this user.
    pub fn permissions(self) -> UserPermissionLimits {
        let strings = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (publish, subscribe, resp) = match self {
            Self::ControlPlane => (
                strings(&[
                    "$JS.API.>",
                    "$KV.>",
                    "$JS.ACK.>",
                    "$JS.FC.>",
                    subject::EXPORT_DOWN,
                    "wgcp.audit.>",
                    "wgcp.cmd.>",
                    // Replies to requests that came in through the up service import: the
                    // server maps them to `_R_.…` subjects in this account.
                    "_R_.>",
                ]),
                strings(&[subject::EXPORT_UP, "_INBOX.>"]),
                Some(ResponsePermission {
                    max: 1,
                    ttl: 60_000_000_000,
                }),
            ),
            Self::Push => (
                strings(&subject::sys::PUSH_PUBLISH),
                strings(&["_INBOX.>"]),
                None,
            ),
            Self::Inspect => (
                strings(&subject::sys::INSPECT_PUBLISH),
                strings(&["_INBOX.>"]),
                None,
            ),
        };
        UserPermissionLimits {
            permissions: Permissions {
                publish: Permission {
                    allow: publish,
                    deny: Vec::new(),
                },
                subscribe: Permission {
                    allow: subscribe,
                    deny: Vec::new(),
                },
                resp,
            },
            subs: Some(UNLIMITED),
            data: Some(UNLIMITED),
            payload: Some(UNLIMITED),
            ..Default::default()
        }
    }

    /// Mints a JWT for `user_key` signed by the account's signing key.
    pub fn mint(self, keys: &PlatformKeys, user_key: &str) -> Result<String, JwtError> {
        let (account, signing) = match self {
            Self::ControlPlane => (&keys.cp_account, &keys.cp_signing),
            Self::Push | Self::Inspect => (&keys.system_account, &keys.system_signing),
        };
        let mut nats = UserNats::with_limits(self.permissions());
        nats.issuer_account = Some(account.to_string());
        Claims::new(user_key, self.name(), nats)
            .expires_in(SERVICE_JWT_TTL_SECS)
            .encode(signing)
    }
}
