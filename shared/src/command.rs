//! Signed commands: the payload the control plane signs for one device, and the verifier whose
//! only output is a [`VerifiedCommand`].
//!
//! A command travels on `wg.<account>.down.<device>.cmd` as a DSSE envelope ([`crate::dsse`])
//! of type [`PAYLOAD_TYPE`], signed by an active key of the device's keyset
//! ([`crate::trust`]). [`verify`] checks, in this order: size; exact payload type; a trusted,
//! active key verifies the PAE (the key id is only a hint); then, parsing only the verified
//! bytes: schema version, tenant, device and subject, time window with bounded skew and
//! lifetime, kind and arguments. The caller then checks the command id against its replay cache
//! and the kind against local policy, in that order.

use crate::{
    dsse::{Envelope, EnvelopeError},
    ids::{DeviceId, TenantId},
    trust::{KeyStatus, TrustState},
};
use serde::{Deserialize, Serialize};

/// Payload type of commands (compared exactly).
pub const PAYLOAD_TYPE: &str = "application/vnd.wegweiser.command.v1+json";
/// Schema version of [`CommandPayload`].
pub const VERSION: u32 = 1;
/// Largest command envelope accepted.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// Longest lifetime (`exp - nbf`) a command may have.
pub const MAX_LIFETIME_SECS: i64 = 15 * 60;
/// Lifetime of commands the control plane signs, unless told otherwise.
pub const DEFAULT_LIFETIME_SECS: i64 = 5 * 60;
/// Clock difference tolerated between the control plane and a device.
pub const MAX_SKEW_SECS: i64 = 60;
/// Subject token of commands: `wg.<account>.down.<device>.cmd`.
pub const COMMAND_TOKEN: &str = "cmd";
/// Longest script or shell command accepted.
pub const MAX_SCRIPT_BYTES: usize = 16 * 1024;
/// Longest a script may run.
pub const MAX_RUN_TIMEOUT_SECS: u64 = 3600;
/// Shortest report interval a command may set.
pub const MIN_INTERVAL_SECS: u64 = 5;
/// Longest report interval a command may set.
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// What the control plane signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandPayload {
    /// Schema version ([`VERSION`]).
    pub v: u32,
    /// Unique command id: 32 lowercase hex characters (128 random bits).
    pub id: String,
    /// Who signed it (the control plane's name).
    pub iss: String,
    /// The tenant of the device.
    pub tenant: TenantId,
    /// The one device it is for.
    pub device: DeviceId,
    /// The subject it is sent on.
    pub subject: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds).
    pub nbf: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
    /// Version of the keyset the signing key belongs to.
    pub keyset: u64,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
    /// Who asked (user name or `cli`).
    pub by: String,
}

/// Which report to collect now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectWhat {
    /// Inventory.
    Inventory,
    /// Metrics.
    Metrics,
}

/// The command kinds, with their arguments (`{"kind": …, "args": {…}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "args", rename_all = "snake_case")]
pub enum Command {
    /// Answer at once.
    Ping {},
    /// Collect and send a report now.
    Collect {
        /// Which one.
        what: CollectWhat,
    },
    /// Change report intervals (kept until the agent restarts).
    SetIntervals {
        /// Heartbeat interval.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat_secs: Option<u64>,
        /// Metrics interval.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metrics_secs: Option<u64>,
    },
    /// Renew the device's credentials now.
    Renew {},
    /// Restart the agent (the service manager starts it again).
    Restart {},
    /// Run a shell command (`/bin/sh -c` on Unix, `cmd.exe /C` on Windows); off unless the
    /// device's local policy enables it.
    Run {
        /// The command line.
        script: String,
        /// Seconds before it is killed.
        timeout_secs: u64,
    },
    /// List processes.
    Processes {
        /// At most this many, by CPU use.
        #[serde(default = "default_process_limit")]
        limit: usize,
    },
}

fn default_process_limit() -> usize {
    50
}

impl Command {
    /// The kind's name (`ping`, `collect`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ping {} => "ping",
            Self::Collect { .. } => "collect",
            Self::SetIntervals { .. } => "set_intervals",
            Self::Renew {} => "renew",
            Self::Restart {} => "restart",
            Self::Run { .. } => "run",
            Self::Processes { .. } => "processes",
        }
    }

    /// Every kind's name.
    pub const KINDS: [&'static str; 7] = [
        "ping",
        "collect",
        "set_intervals",
        "renew",
        "restart",
        "run",
        "processes",
    ];

    /// Problems with the arguments (bounds).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let interval = |name: &str, v: Option<u64>, p: &mut Vec<String>| {
            if let Some(v) = v
                && !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&v)
            {
                p.push(format!(
                    "{name} must be {MIN_INTERVAL_SECS}..={MAX_INTERVAL_SECS}"
                ));
            }
        };
        match self {
            Self::SetIntervals {
                heartbeat_secs,
                metrics_secs,
            } => {
                interval("heartbeat_secs", *heartbeat_secs, &mut p);
                interval("metrics_secs", *metrics_secs, &mut p);
                if heartbeat_secs.is_none() && metrics_secs.is_none() {
                    p.push("set_intervals needs heartbeat_secs or metrics_secs".into());
                }
            }
            Self::Run {
                script,
                timeout_secs,
            } => {
                if script.trim().is_empty() || script.len() > MAX_SCRIPT_BYTES {
                    p.push(format!("script must be 1..={MAX_SCRIPT_BYTES} bytes"));
                }
                if script.contains('\0') {
                    p.push("script must not contain NUL".into());
                }
                if !(1..=MAX_RUN_TIMEOUT_SECS).contains(timeout_secs) {
                    p.push(format!("timeout_secs must be 1..={MAX_RUN_TIMEOUT_SECS}"));
                }
            }
            Self::Processes { limit } => {
                if !(1..=1000).contains(limit) {
                    p.push("limit must be 1..=1000".into());
                }
            }
            Self::Ping {} | Self::Collect { .. } | Self::Renew {} | Self::Restart {} => {}
        }
        p
    }
}

/// Whether `id` is a command id: 32 lowercase hex characters.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh command id.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    crate::enroll::hex(&b)
}

impl CommandPayload {
    /// Signs this payload with `key` (`keyid` is [`crate::dsse::key_id`] of its public key).
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> Envelope {
        Envelope::sign(
            PAYLOAD_TYPE,
            &serde_json::to_vec(self).unwrap_or_default(),
            &[key],
        )
    }
}

/// What the device expects of every command.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Its tenant.
    pub tenant: TenantId,
    /// Itself.
    pub device: DeviceId,
    /// The subject it received the command on.
    pub subject: String,
}

/// Why a command was refused: [`Reject::code`] for events and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reject {
    /// Larger than [`MAX_ENVELOPE_BYTES`].
    Oversized,
    /// Not an envelope: JSON or base64.
    Malformed,
    /// Another payload type.
    WrongType,
    /// No key of the keyset made a signature.
    UnknownKey,
    /// Signed by a retired key.
    RetiredKey,
    /// Signed by a revoked key.
    RevokedKey,
    /// A signature names an active key but does not verify.
    BadSignature,
    /// The device's keyset has expired (commands wait for a fresh one).
    KeysetExpired,
    /// The verified payload is not a command.
    BadPayload,
    /// A schema version this agent does not know.
    UnsupportedVersion,
    /// For another tenant.
    WrongTenant,
    /// For another device.
    WrongDevice,
    /// Signed for another subject.
    WrongSubject,
    /// Its `nbf` is in the future.
    NotYetValid,
    /// Its `exp` has passed.
    Expired,
    /// `exp - nbf` longer than [`MAX_LIFETIME_SECS`], or not positive.
    LifetimeTooLong,
    /// Arguments out of bounds.
    BadArguments,
    /// Seen before (the caller's replay cache).
    Replay,
    /// The replay cache is full (the caller's).
    ReplayCacheFull,
    /// Local policy does not allow this kind (the caller's).
    NotAllowed,
}

impl Reject {
    /// Stable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::UnknownKey => "unknown_key",
            Self::RetiredKey => "retired_key",
            Self::RevokedKey => "revoked_key",
            Self::BadSignature => "bad_signature",
            Self::KeysetExpired => "keyset_expired",
            Self::BadPayload => "bad_payload",
            Self::UnsupportedVersion => "unsupported_version",
            Self::WrongTenant => "wrong_tenant",
            Self::WrongDevice => "wrong_device",
            Self::WrongSubject => "wrong_subject",
            Self::NotYetValid => "not_yet_valid",
            Self::Expired => "expired",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::BadArguments => "bad_arguments",
            Self::Replay => "replay",
            Self::ReplayCacheFull => "replay_cache_full",
            Self::NotAllowed => "not_allowed",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused command: the reason, a detail for people, and the command id when the signature
/// verified (so the sender can be answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reject,
    /// Detail (no secrets: it names keys by id and times).
    pub detail: String,
    /// The command id, once the signature verified.
    pub id: Option<String>,
}

impl Rejection {
    fn new(reason: Reject, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            id: None,
        }
    }
}

/// A command whose signature, binding and time window verified. Only [`verify`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCommand {
    payload: CommandPayload,
    keyid: String,
}

impl VerifiedCommand {
    /// The command id.
    pub fn id(&self) -> &str {
        &self.payload.id
    }
    /// What to do.
    pub fn command(&self) -> &Command {
        &self.payload.command
    }
    /// Expiry (unix seconds): how long its id must be remembered.
    pub fn exp(&self) -> i64 {
        self.payload.exp
    }
    /// Who asked.
    pub fn by(&self) -> &str {
        &self.payload.by
    }
    /// The key that signed it.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }
    /// The whole verified payload.
    pub fn payload(&self) -> &CommandPayload {
        &self.payload
    }
}

/// Verifies a command envelope against the device's trust state (see the module docs for the
/// order of checks).
pub fn verify(
    bytes: &[u8],
    trust: &TrustState,
    expect: &Expected,
    now: i64,
) -> Result<VerifiedCommand, Rejection> {
    let env = Envelope::parse(bytes, MAX_ENVELOPE_BYTES).map_err(|e| match e {
        EnvelopeError::Oversized { .. } => Rejection::new(Reject::Oversized, e.to_string()),
        other => Rejection::new(Reject::Malformed, other.to_string()),
    })?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(Rejection::new(
            Reject::WrongType,
            format!(
                "payload type {:?}",
                env.payload_type.chars().take(100).collect::<String>()
            ),
        ));
    }
    let decoded = env
        .decode()
        .map_err(|e| Rejection::new(Reject::Malformed, e.to_string()))?;
    if trust.keyset_expires_at() <= now {
        return Err(Rejection::new(
            Reject::KeysetExpired,
            format!(
                "keyset version {} expired at {}",
                trust.keyset_version(),
                trust.keyset_expires_at()
            ),
        ));
    }
    let keys = trust.command_keys();
    let active: Vec<_> = keys
        .iter()
        .filter(|k| k.status == KeyStatus::Active)
        .collect();
    let Some(signer) = decoded.verified_by(&active, |k| (k.keyid.as_str(), &k.key)) else {
        let inactive: Vec<_> = keys
            .iter()
            .filter(|k| k.status != KeyStatus::Active)
            .collect();
        if let Some(k) = decoded.verified_by(&inactive, |k| (k.keyid.as_str(), &k.key)) {
            let reason = if k.status == KeyStatus::Revoked {
                Reject::RevokedKey
            } else {
                Reject::RetiredKey
            };
            return Err(Rejection::new(reason, format!("signed by key {}", k.keyid)));
        }
        let named_active = env
            .signatures
            .iter()
            .find(|s| active.iter().any(|k| k.keyid == s.keyid));
        return Err(match named_active {
            Some(s) => Rejection::new(
                Reject::BadSignature,
                format!("signature for key {} does not verify", s.keyid),
            ),
            None => Rejection::new(
                Reject::UnknownKey,
                format!(
                    "no key of keyset version {} signed it",
                    trust.keyset_version()
                ),
            ),
        });
    };
    let keyid = signer.keyid.clone();
    // From here on, only verified bytes are read: straight into the payload type; only when
    // that fails, once more loosely, to name the reason and the id.
    let payload: CommandPayload = match serde_json::from_slice(&decoded.body) {
        Ok(p) => p,
        Err(e) => return Err(unusable(&decoded.body, &e)),
    };
    // Only a well-formed id is ever echoed back.
    let id = valid_id(&payload.id).then(|| payload.id.clone());
    let with_id = |mut r: Rejection| {
        r.id.clone_from(&id);
        r
    };
    if payload.v != VERSION {
        return Err(with_id(Rejection::new(
            Reject::UnsupportedVersion,
            format!("schema version {}", payload.v),
        )));
    }
    if !valid_id(&payload.id) {
        return Err(Rejection::new(
            Reject::BadPayload,
            "command id is not 32 hex characters",
        ));
    }
    if payload.tenant != expect.tenant {
        return Err(with_id(Rejection::new(
            Reject::WrongTenant,
            format!("for tenant {}", payload.tenant),
        )));
    }
    if payload.device != expect.device {
        return Err(with_id(Rejection::new(
            Reject::WrongDevice,
            format!("for device {}", payload.device),
        )));
    }
    if payload.subject != expect.subject {
        return Err(with_id(Rejection::new(
            Reject::WrongSubject,
            "signed for another subject",
        )));
    }
    let lifetime = payload.exp.saturating_sub(payload.nbf);
    if lifetime <= 0 || lifetime > MAX_LIFETIME_SECS || payload.iat > payload.nbf {
        return Err(with_id(Rejection::new(
            Reject::LifetimeTooLong,
            format!("lifetime {lifetime} s (at most {MAX_LIFETIME_SECS} s, issued before valid)"),
        )));
    }
    if payload.nbf > now.saturating_add(MAX_SKEW_SECS) {
        return Err(with_id(Rejection::new(
            Reject::NotYetValid,
            format!("valid from {}, now {now}", payload.nbf),
        )));
    }
    if payload.exp <= now.saturating_sub(MAX_SKEW_SECS) {
        return Err(with_id(Rejection::new(
            Reject::Expired,
            format!("expired at {}, now {now}", payload.exp),
        )));
    }
    let problems = payload.command.problems();
    if !problems.is_empty() {
        return Err(with_id(Rejection::new(
            Reject::BadArguments,
            problems.join("; "),
        )));
    }
    Ok(VerifiedCommand { payload, keyid })
}

/// The rejection of a verified payload that is not a [`CommandPayload`]: another schema
/// version, an unknown kind or bad arguments, or no command at all. Carries the id when there
/// is a valid one.
fn unusable(body: &[u8], error: &serde_json::Error) -> Rejection {
    #[derive(Deserialize)]
    struct Loose {
        v: Option<u64>,
        id: Option<String>,
        kind: Option<serde_json::Value>,
    }
    let Ok(loose) = serde_json::from_slice::<Loose>(body) else {
        return Rejection::new(Reject::BadPayload, error.to_string());
    };
    let reason = if loose.v.is_some_and(|v| v != u64::from(VERSION)) {
        Reject::UnsupportedVersion
    } else if loose.kind.is_some() {
        Reject::BadArguments
    } else {
        Reject::BadPayload
    };
    Rejection {
        reason,
        detail: error.to_string(),
        id: loose.id.filter(|id| valid_id(id)),
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It ran and succeeded.
    Ok,
    /// It ran and failed (see `error`).
    Failed,
    /// It was refused (see `error`: the reason code).
    Rejected,
}

/// The result of a command, sent up as report kind `res` (`wg.<account>.up.<device>.tel.res`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Schema version (1).
    pub v: u32,
    /// Report sequence of the agent.
    pub seq: u64,
    /// Unix seconds, device clock.
    pub ts: i64,
    /// The command id.
    pub id: String,
    /// The command kind.
    pub kind: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What it produced (kind-specific JSON).
    #[serde(default)]
    pub output: serde_json::Value,
    /// Error or rejection reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it ran, in microseconds.
    #[serde(default)]
    pub duration_us: u64,
}

#[cfg(test)]
mod tests;
