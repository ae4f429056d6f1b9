//! Enrollment (HTTPS) and credential renewal (NATS) messages.
//!
//! Readers ignore unknown fields, so either side can add optional fields without breaking the
//! other. Every string a device sends is bounded; see [`DeviceFacts::problems`].

use crate::ids::{AccountKey, DeviceId, TenantId, UserKey};
use serde::{Deserialize, Serialize};

/// Path of the enrollment endpoint.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// Largest enrollment request body accepted.
pub const MAX_ENROLL_BODY: usize = 16 * 1024;
/// Largest renewal request accepted.
pub const MAX_RENEW_BODY: usize = 4 * 1024;
/// Subject token of renewal requests: `wg.<account>.up.<device>.renew`.
pub const RENEW_TOKEN: &str = "renew";
/// Prefix of enrollment tokens (so leaked tokens are recognisable by secret scanners).
pub const TOKEN_PREFIX: &str = "wgt_";

/// What the device tells about itself at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Host name.
    pub hostname: String,
    /// Operating system family (`linux`, `windows`, …).
    pub os: String,
    /// OS name and version, free text.
    #[serde(default)]
    pub os_version: String,
    /// CPU architecture.
    #[serde(default)]
    pub arch: String,
    /// Stable machine id (`/etc/machine-id`, the Windows MachineGuid).
    pub machine_id: String,
    /// Agent version.
    #[serde(default)]
    pub agent_version: String,
}

impl DeviceFacts {
    /// Every problem with these facts (empty or oversized fields, control characters).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (name, value, required, max) in [
            ("hostname", &self.hostname, true, 253),
            ("os", &self.os, true, 32),
            ("os_version", &self.os_version, false, 256),
            ("arch", &self.arch, false, 32),
            ("machine_id", &self.machine_id, true, 128),
            ("agent_version", &self.agent_version, false, 64),
        ] {
            if required && value.trim().is_empty() {
                p.push(format!("facts.{name} is empty"));
            }
            if value.len() > max {
                p.push(format!("facts.{name} is longer than {max} bytes"));
            }
            if value.chars().any(char::is_control) {
                p.push(format!("facts.{name} contains control characters"));
            }
        }
        p
    }
}

/// `POST /v1/enroll` body. `Debug` leaves the token out.
#[derive(Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The enrollment token (secret; never logged).
    pub token: String,
    /// The user public key the device generated.
    pub public_key: UserKey,
    /// Proof that the device holds that key: base64url (no padding) of its signature over
    /// [`enroll_proof_message`].
    pub proof: String,
    /// When the device is already enrolled (re-enrollment, `enroll --force`): its current key
    /// and that key's signature over the same message. Without it, a machine id that is already
    /// enrolled gets a new device instead of taking over the existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<KeyProof>,
    /// Facts about the device.
    pub facts: DeviceFacts,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"***")
            .field("public_key", &self.public_key)
            .field("current", &self.current.as_ref().map(|c| &c.public_key))
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// A public key and its signature over a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyProof {
    /// The user public key.
    pub public_key: UserKey,
    /// base64url (no padding) signature.
    pub proof: String,
}

/// What an enrolling device signs: binds the token (by hash, so the signature reveals nothing),
/// the machine and the new key.
pub fn enroll_proof_message(token: &str, machine_id: &str, new_key: &UserKey) -> Vec<u8> {
    let hash = token_hash(token);
    format!("wegweiser/enroll/v1\n{hash}\n{machine_id}\n{new_key}").into_bytes()
}

/// SHA-256 of an enrollment token, lowercase hex: what the control plane stores (its key) and
/// what the proof message carries, never the token itself.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(token.as_bytes()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Signs `message` with `key` (base64url, no padding), for [`EnrollRequest::proof`] and
/// [`NewKey::proof`].
pub fn sign_proof(key: &nkeys::KeyPair, message: &[u8]) -> Option<String> {
    use base64::Engine;
    let sig = key.sign(message).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig))
}

/// Checks a proof made by [`sign_proof`] against `public_key`.
pub fn verify_proof(public_key: &UserKey, message: &[u8], proof: &str) -> bool {
    use base64::Engine;
    let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(proof) else {
        return false;
    };
    nkeys::KeyPair::from_public_key(public_key.as_str())
        .and_then(|k| k.verify(message, &sig))
        .is_ok()
}

/// `POST /v1/enroll` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device's id (its JWT name and subject token).
    pub device_id: DeviceId,
    /// The tenant.
    pub tenant: TenantId,
    /// The tenant's NATS account.
    pub account: AccountKey,
    /// The device's user JWT.
    pub jwt: String,
    /// When it expires (unix seconds).
    pub jwt_expires_at: i64,
    /// NATS URLs to connect to.
    pub nats_urls: Vec<String>,
    /// CA certificate (PEM) to verify nats-server with.
    pub nats_ca_pem: String,
    /// Whether this machine was enrolled before (same tenant and machine id).
    #[serde(default)]
    pub reenrolled: bool,
    /// Trust material for signed commands: the root chain and the current keyset. The agent
    /// pins the first root (its channel is this authenticated HTTPS answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<crate::trust::TrustBundle>,
}

/// A JSON error body: a stable code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// Renewal request, sent on `wg.<account>.up.<device>.renew`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A new public key to move to (device key rotation), with its proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_key: Option<NewKey>,
}

/// A new device key and the proof that the device holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewKey {
    /// The new user public key.
    pub public_key: UserKey,
    /// base64url signature by the new key over [`new_key_proof_message`].
    pub proof: String,
}

/// What a new device key signs to prove possession: binds device, old and new key.
pub fn new_key_proof_message(device: &DeviceId, old_key: &str, new_key: &UserKey) -> Vec<u8> {
    format!("wegweiser/renew/v1\n{device}\n{old_key}\n{new_key}").into_bytes()
}

/// Renewal answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum RenewResponse {
    /// A fresh JWT.
    Ok {
        /// The JWT.
        jwt: String,
        /// Its expiry.
        expires_at: i64,
    },
    /// Refused.
    Refused(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }

    #[test]
    fn facts_are_bounded() {
        let mut f = DeviceFacts {
            hostname: "h".into(),
            os: "linux".into(),
            os_version: String::new(),
            arch: "x86_64".into(),
            machine_id: "abc".into(),
            agent_version: "0.1.0".into(),
        };
        assert!(f.problems().is_empty());
        f.hostname = "x".repeat(300);
        f.machine_id = String::new();
        f.os = "li\nnux".into();
        assert_eq!(f.problems().len(), 3, "{:?}", f.problems());
    }

    #[test]
    fn renew_response_is_tagged() {
        let r = RenewResponse::Refused(ErrorBody {
            code: "revoked".into(),
            message: "m".into(),
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "refused");
        assert_eq!(v["code"], "revoked");
        let back: RenewResponse =
            serde_json::from_str(r#"{"status":"ok","jwt":"j","expires_at":5,"extra":1}"#).unwrap();
        assert!(matches!(back, RenewResponse::Ok { expires_at: 5, .. }));
    }
}
