//! DSSE envelopes (Dead Simple Signing Envelope, v1) with Ed25519 signatures.
//!
//! An envelope is JSON: `{"payloadType": …, "payload": base64, "signatures": [{"keyid": …,
//! "sig": base64}]}` (standard base64 with padding). A signature covers the *pre-authentication
//! encoding* [`pae`] of the payload type and the raw payload bytes, never the JSON, so the
//! envelope's formatting does not matter and the type cannot be swapped.
//!
//! Verification uses Ed25519 `verify_strict` (no small-order keys, canonical signatures).
//! The `keyid` of a signature is only a hint: [`Decoded::verified_by`] tries the key it names
//! first, then every other candidate key.

use base64::{Engine, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Most signatures an envelope may carry (roots are signed by both old and new key sets).
pub const MAX_SIGNATURES: usize = 16;

/// The pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`,
/// lengths as ASCII decimal.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + body.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// The key id of an Ed25519 public key: the first 8 bytes of its SHA-256, lowercase hex.
pub fn key_id(key: &VerifyingKey) -> String {
    crate::enroll::hex(&sha2::Sha256::digest(key.as_bytes())[..8])
}

/// A public key in documents: standard base64 of its 32 bytes.
pub fn encode_public(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parses a public key written by [`encode_public`]; refuses weak (small-order) keys.
pub fn decode_public(text: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(text).ok()?.try_into().ok()?;
    let key = VerifyingKey::from_bytes(&bytes).ok()?;
    (!key.is_weak()).then_some(key)
}

/// A fresh Ed25519 signing key from the operating system's random source.
pub fn generate_key() -> SigningKey {
    use rand::RngCore;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(seed.as_mut());
    SigningKey::from_bytes(&seed)
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Hint: which key made it ([`key_id`]).
    #[serde(default)]
    pub keyid: String,
    /// Standard base64 of the 64-byte signature.
    pub sig: String,
}

/// A DSSE envelope as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// What the payload is (compared exactly).
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Standard base64 of the payload bytes.
    pub payload: String,
    /// Signatures over [`pae`]`(payload_type, payload bytes)`.
    pub signatures: Vec<EnvelopeSignature>,
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than allowed.
    #[error("envelope of {size} bytes is larger than the {limit} allowed")]
    Oversized {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not envelope JSON.
    #[error("malformed envelope JSON: {0}")]
    Json(String),
    /// The payload or a signature is not valid base64.
    #[error("malformed base64 in the envelope's {0}")]
    Base64(&'static str),
    /// No signatures, or more than [`MAX_SIGNATURES`].
    #[error("an envelope needs 1 to {MAX_SIGNATURES} signatures, this one has {0}")]
    SignatureCount(usize),
}

impl Envelope {
    /// Signs `body` as `payload_type` with each of `keys`.
    pub fn sign(payload_type: &str, body: &[u8], keys: &[&SigningKey]) -> Self {
        let message = pae(payload_type, body);
        Self {
            payload_type: payload_type.to_owned(),
            payload: STANDARD.encode(body),
            signatures: keys
                .iter()
                .map(|k| EnvelopeSignature {
                    keyid: key_id(&k.verifying_key()),
                    sig: STANDARD.encode(k.sign(&message).to_bytes()),
                })
                .collect(),
        }
    }

    /// Parses an envelope of at most `limit` bytes. Nothing in it is trusted yet.
    pub fn parse(bytes: &[u8], limit: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > limit {
            return Err(EnvelopeError::Oversized {
                size: bytes.len(),
                limit,
            });
        }
        let env: Self =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        if env.signatures.is_empty() || env.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::SignatureCount(env.signatures.len()));
        }
        Ok(env)
    }

    /// The envelope as JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising plain strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes the payload and the signatures (without checking them).
    pub fn decode(&self) -> Result<Decoded, EnvelopeError> {
        let body = STANDARD
            .decode(&self.payload)
            .map_err(|_| EnvelopeError::Base64("payload"))?;
        let signatures = self
            .signatures
            .iter()
            .map(|s| {
                let bytes: [u8; 64] = STANDARD
                    .decode(&s.sig)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(EnvelopeError::Base64("signature"))?;
                Ok((s.keyid.clone(), Signature::from_bytes(&bytes)))
            })
            .collect::<Result<Vec<_>, EnvelopeError>>()?;
        Ok(Decoded {
            message: pae(&self.payload_type, &body),
            body,
            signatures,
        })
    }
}

/// An envelope's payload and signatures, decoded but not yet verified.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The payload bytes (untrusted until a signature over [`Decoded::message`] verifies).
    pub body: Vec<u8>,
    /// The signed message: [`pae`] of the type and body.
    pub message: Vec<u8>,
    signatures: Vec<(String, Signature)>,
}

impl Decoded {
    /// The first of `candidates` whose key strictly verifies one of the signatures (`parts`
    /// gives a candidate's key id and key): a signature's key id is tried first, then every
    /// candidate.
    pub fn verified_by<'a, T>(
        &self,
        candidates: &'a [T],
        parts: impl Fn(&T) -> (&str, &VerifyingKey),
    ) -> Option<&'a T> {
        for (hint, sig) in &self.signatures {
            if let Some(c) = candidates.iter().find(|c| parts(c).0 == hint.as_str())
                && parts(c).1.verify_strict(&self.message, sig).is_ok()
            {
                return Some(c);
            }
        }
        candidates.iter().find(|c| {
            self.signatures
                .iter()
                .any(|(_, sig)| parts(c).1.verify_strict(&self.message, sig).is_ok())
        })
    }

    /// How many distinct keys of `keys` strictly verify a signature.
    pub fn count_signers(&self, keys: &[VerifyingKey]) -> usize {
        let mut seen: Vec<&VerifyingKey> = Vec::new();
        for key in keys {
            if seen.contains(&key) {
                continue;
            }
            if self
                .signatures
                .iter()
                .any(|(_, sig)| key.verify_strict(&self.message, sig).is_ok())
            {
                seen.push(key);
            }
        }
        seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032, TEST 1.
    const RFC8032_TEST1_SEED: &str =
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn seed(hex: &str) -> SigningKey {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        SigningKey::from_bytes(&bytes.try_into().unwrap())
    }

    fn pair(c: &(String, VerifyingKey)) -> (&str, &VerifyingKey) {
        (c.0.as_str(), &c.1)
    }

    #[test]
    fn pae_has_the_dsse_layout() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn the_design_test_vector() {
        let key = seed(RFC8032_TEST1_SEED);
        let env = Envelope::sign("http://example.com/HelloWorld", b"hello world", &[&key]);
        assert_eq!(
            env.signatures[0].sig,
            "4DHX3Zn4qpBKvEj7maE8O9u9bjXEnPLLnyXVUJ2PXJR8DSLcL3QDpFvfJOj3pB/SPHsl6Jg4boxsMb6KvuYABw=="
        );
        assert_eq!(env.payload, "aGVsbG8gd29ybGQ=");
        let d = env.decode().unwrap();
        let cands = [(key_id(&key.verifying_key()), key.verifying_key())];
        assert!(d.verified_by(&cands, pair).is_some());
    }

    #[test]
    fn keyid_is_only_a_hint() {
        let (a, b) = (generate_key(), generate_key());
        let mut env = Envelope::sign("t", b"x", &[&a]);
        env.signatures[0].keyid = key_id(&b.verifying_key()); // lies
        let cands = [
            (key_id(&b.verifying_key()), b.verifying_key()),
            (key_id(&a.verifying_key()), a.verifying_key()),
        ];
        let found = env.decode().unwrap();
        assert_eq!(
            found.verified_by(&cands, pair).unwrap().1,
            a.verifying_key()
        );
        // Not among the candidates: nothing verifies.
        assert!(found.verified_by(&cands[..1], pair).is_none());
    }

    #[test]
    fn the_type_is_signed() {
        let k = generate_key();
        let mut env = Envelope::sign("a", b"x", &[&k]);
        env.payload_type = "b".into();
        let cands = [(key_id(&k.verifying_key()), k.verifying_key())];
        assert!(env.decode().unwrap().verified_by(&cands, pair).is_none());
    }

    #[test]
    fn count_signers_counts_distinct_keys() {
        let (a, b, c) = (generate_key(), generate_key(), generate_key());
        let env = Envelope::sign("t", b"x", &[&a, &b, &a]);
        let d = env.decode().unwrap();
        let keys = [a.verifying_key(), b.verifying_key(), c.verifying_key()];
        assert_eq!(d.count_signers(&keys), 2);
        let dup = [a.verifying_key(), a.verifying_key()];
        assert_eq!(d.count_signers(&dup), 1);
    }

    #[test]
    fn parse_refuses_bad_input() {
        let k = generate_key();
        let good = Envelope::sign("t", b"x", &[&k]).to_vec();
        assert!(Envelope::parse(&good, good.len()).is_ok());
        assert!(matches!(
            Envelope::parse(&good, good.len() - 1),
            Err(EnvelopeError::Oversized { .. })
        ));
        assert!(matches!(
            Envelope::parse(b"{", 100),
            Err(EnvelopeError::Json(_))
        ));
        let none = br#"{"payloadType":"t","payload":"","signatures":[]}"#;
        assert_eq!(
            Envelope::parse(none, 100),
            Err(EnvelopeError::SignatureCount(0))
        );
        let bad64 =
            br#"{"payloadType":"t","payload":"!!","signatures":[{"keyid":"","sig":"AA=="}]}"#;
        let env = Envelope::parse(bad64, 200).unwrap();
        assert_eq!(env.decode().unwrap_err(), EnvelopeError::Base64("payload"));
        let short_sig =
            br#"{"payloadType":"t","payload":"","signatures":[{"keyid":"","sig":"AA=="}]}"#;
        let env = Envelope::parse(short_sig, 200).unwrap();
        assert_eq!(
            env.decode().unwrap_err(),
            EnvelopeError::Base64("signature")
        );
    }

    #[test]
    fn weak_public_keys_are_refused() {
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(decode_public(&STANDARD.encode(identity)).is_none());
        let k = generate_key().verifying_key();
        assert_eq!(decode_public(&encode_public(&k)), Some(k));
        assert!(decode_public("AAAA").is_none());
    }
}
