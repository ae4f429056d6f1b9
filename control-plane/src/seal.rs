//! Sealing tenant secrets (account and signing-key seeds) for storage in JetStream KV.
//!
//! XChaCha20-Poly1305 under the master key, with a random 192-bit nonce and the record's key
//! as associated data, so a sealed value copied to another record does not open. Layout:
//! `v1.` + base64(key id (4 bytes) ‖ nonce (24) ‖ ciphertext+tag). The key id (a hash of the
//! master key) turns "wrong master key" into a clear error instead of a generic failure.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Not in the sealed layout.
    #[error("sealed secret is malformed (damaged record?)")]
    Malformed,
    /// Sealed under another master key.
    #[error(
        "sealed secret was made with another master key; set WEGWEISER_MASTER_KEY or restore master.key"
    )]
    WrongKey,
    /// Authentication failed: altered, or moved from another record.
    #[error("sealed secret failed authentication (altered, or copied from another record)")]
    Tampered,
}

/// The 32-byte master key. Never printed; wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// Parses base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(B64.decode(text.trim()).ok()?);
        let arr: [u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(Self(arr))
    }

    /// A random key (tests and `init`).
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// A key for one other use, derived from this one: SHA-256 of `label` and the key (the key
    /// is uniformly random, so its hash under a distinct label is an independent key).
    pub fn derive(&self, label: &str) -> Self {
        let h = Sha256::new()
            .chain_update(label.as_bytes())
            .chain_update([0u8])
            .chain_update(self.0)
            .finalize();
        Self(h.into())
    }

    fn id(&self) -> [u8; 4] {
        let h = Sha256::new()
            .chain_update(b"wegweiser master key id")
            .chain_update(self.0)
            .finalize();
        [h[0], h[1], h[2], h[3]]
    }

    /// Seals `plain`, bound to `aad` (the record key).
    pub fn seal(&self, aad: &str, plain: &[u8]) -> String {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(4 + 24 + ct.len());
        out.extend_from_slice(&self.id());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        format!("v1.{}", B64.encode(out))
    }

    /// Opens a value sealed by [`MasterKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let body = sealed.strip_prefix("v1.").ok_or(SealError::Malformed)?;
        let raw = B64.decode(body).map_err(|_| SealError::Malformed)?;
        if raw.len() < 4 + 24 + 16 {
            return Err(SealError::Malformed);
        }
        if raw[..4] != self.id() {
            return Err(SealError::WrongKey);
        }
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        cipher
            .decrypt(
                XNonce::from_slice(&raw[4..28]),
                Payload {
                    msg: &raw[28..],
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Tampered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_everything_else() {
        let k = MasterKey::generate();
        let s = k.seal("tenant.acme", b"SAsecret");
        assert!(!s.contains("SAsecret"));
        assert_eq!(&*k.open("tenant.acme", &s).unwrap(), b"SAsecret");
        assert_eq!(k.open("tenant.other", &s).unwrap_err(), SealError::Tampered);
        assert_eq!(
            MasterKey::generate().open("tenant.acme", &s).unwrap_err(),
            SealError::WrongKey
        );
        let mut raw = B64.decode(&s[3..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let flipped = format!("v1.{}", B64.encode(raw));
        assert_eq!(
            k.open("tenant.acme", &flipped).unwrap_err(),
            SealError::Tampered
        );
        assert_eq!(k.open("x", "v2.abc").unwrap_err(), SealError::Malformed);
        assert_eq!(k.open("x", "v1.!!").unwrap_err(), SealError::Malformed);
        assert_eq!(format!("{k:?}"), "MasterKey(***)");
        // Two seals of the same secret differ (random nonce).
        assert_ne!(k.seal("a", b"x"), k.seal("a", b"x"));
    }

    #[test]
    fn master_key_parsing() {
        assert!(MasterKey::from_base64(&B64.encode([7u8; 32])).is_some());
        assert!(MasterKey::from_base64(&B64.encode([7u8; 31])).is_none());
        assert!(MasterKey::from_base64("not base64!").is_none());
    }
}
