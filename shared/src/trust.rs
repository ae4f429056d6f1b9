//! The trust root and the command keyset: what decides which keys may sign commands.
//!
//! - A **root** ([`RootDoc`]) is a versioned set of Ed25519 keys with a threshold `t` of `n`.
//!   Version 1 is signed by `t` of its own keys. Version N+1 must be signed by `t` of the keys
//!   of version N *and* by `t` of its own keys, so a device that pinned any version can walk the
//!   chain forward, and nobody holding only new keys can forge a rotation.
//! - A **keyset** ([`KeysetDoc`]) lists the command keys with their status (active, retired,
//!   revoked). It is signed by `t` keys of the current root, names that root's version, has a
//!   version that only ever grows (a lower one is a rollback) and an expiry (an expired keyset
//!   is a freeze: commands are refused until a fresh one arrives).
//! - A [`TrustBundle`] carries roots and a keyset, at enrollment and over NATS. A device keeps
//!   a [`TrustState`]: created from the first bundle it sees (trust on first use, over the
//!   enrollment's authenticated HTTPS), then only ever moved forward by [`TrustState::update`],
//!   which applies a bundle entirely or not at all.

use crate::dsse::{self, Envelope, EnvelopeError};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// Payload type of a root document.
pub const ROOT_TYPE: &str = "application/vnd.wegweiser.root.v1+json";
/// Payload type of a keyset document.
pub const KEYSET_TYPE: &str = "application/vnd.wegweiser.keyset.v1+json";
/// Largest trust bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;
/// Largest root or keyset envelope accepted.
pub const MAX_DOC_BYTES: usize = 32 * 1024;
/// Most keys in a root.
pub const MAX_ROOT_KEYS: usize = 16;
/// Most keys (of any status) in a keyset.
pub const MAX_KEYSET_KEYS: usize = 32;
/// Most roots in one bundle.
pub const MAX_CHAIN: usize = 64;
/// Subject token of trust bundles: pushed on `wg.<account>.down.<device>.trust`, requested on
/// `wg.<account>.up.<device>.trust`.
pub const TRUST_TOKEN: &str = "trust";

/// A public key with its id ([`dsse::key_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyEntry {
    /// [`dsse::key_id`] of the key.
    pub keyid: String,
    /// [`dsse::encode_public`] of the key.
    pub public_key: String,
}

impl PublicKeyEntry {
    /// The entry of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        Self {
            keyid: dsse::key_id(key),
            public_key: dsse::encode_public(key),
        }
    }

    fn key(&self) -> Result<VerifyingKey, TrustError> {
        let key = dsse::decode_public(&self.public_key)
            .ok_or_else(|| TrustError::Invalid(format!("key {} is not valid", self.keyid)))?;
        if dsse::key_id(&key) != self.keyid {
            return Err(TrustError::Invalid(format!(
                "key id {} does not match its key",
                self.keyid
            )));
        }
        Ok(key)
    }
}

/// A version of the trust root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootDoc {
    /// Schema version (1).
    pub v: u32,
    /// Root version, from 1, each rotation +1.
    pub version: u64,
    /// Signatures needed from these keys.
    pub threshold: u32,
    /// The root keys.
    pub keys: Vec<PublicKeyEntry>,
    /// When it was made (unix seconds).
    pub issued_at: i64,
}

impl RootDoc {
    /// Signs this root with `keys` (for a rotation: `t` of the previous keys and `t` of its own).
    pub fn sign(&self, keys: &[&ed25519_dalek::SigningKey]) -> Envelope {
        Envelope::sign(
            ROOT_TYPE,
            &serde_json::to_vec(self).unwrap_or_default(),
            keys,
        )
    }
}

impl KeysetDoc {
    /// Signs this keyset with `t` keys of the root it names.
    pub fn sign(&self, keys: &[&ed25519_dalek::SigningKey]) -> Envelope {
        Envelope::sign(
            KEYSET_TYPE,
            &serde_json::to_vec(self).unwrap_or_default(),
            keys,
        )
    }
}

/// The status of a command key in a keyset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Commands signed by it are accepted.
    Active,
    /// Rotated out: commands signed by it are refused.
    Retired,
    /// Revoked in an emergency: commands signed by it are refused.
    Revoked,
}

/// A command key in a keyset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandKeyEntry {
    /// The key.
    #[serde(flatten)]
    pub key: PublicKeyEntry,
    /// Its status.
    pub status: KeyStatus,
}

/// A version of the command keyset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetDoc {
    /// Schema version (1).
    pub v: u32,
    /// Keyset version; only ever grows.
    pub version: u64,
    /// The version of the root that signed it.
    pub root_version: u64,
    /// When it was signed (unix seconds).
    pub issued_at: i64,
    /// After this (unix seconds) it is not trusted any more.
    pub expires_at: i64,
    /// The command keys.
    pub keys: Vec<CommandKeyEntry>,
}

/// Roots (oldest first) and a keyset, as they travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    /// Root envelopes, each version once, ascending.
    pub roots: Vec<Envelope>,
    /// The keyset envelope.
    pub keyset: Envelope,
}

impl TrustBundle {
    /// Parses a bundle of at most [`MAX_BUNDLE_BYTES`].
    pub fn parse(bytes: &[u8]) -> Result<Self, TrustError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(TrustError::Envelope(EnvelopeError::Oversized {
                size: bytes.len(),
                limit: MAX_BUNDLE_BYTES,
            }));
        }
        let b: Self = serde_json::from_slice(bytes)
            .map_err(|e| TrustError::Envelope(EnvelopeError::Json(e.to_string())))?;
        if b.roots.is_empty() || b.roots.len() > MAX_CHAIN {
            return Err(TrustError::Invalid(format!(
                "a bundle carries 1 to {MAX_CHAIN} roots, this one {}",
                b.roots.len()
            )));
        }
        Ok(b)
    }

    /// The bundle as JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Why trust material was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The envelope could not be read.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A document of the wrong type.
    #[error("expected a {expected} document, got {got:?}")]
    WrongType {
        /// The expected payload type.
        expected: &'static str,
        /// The one found.
        got: String,
    },
    /// A document that does not make sense (bad keys, threshold, dates).
    #[error("invalid trust document: {0}")]
    Invalid(String),
    /// A root version was skipped.
    #[error("root version {got} does not follow version {have}")]
    RootGap {
        /// The version trusted now.
        have: u64,
        /// The version offered.
        got: u64,
    },
    /// A root rotation without enough signatures from the previous or the new keys.
    #[error("root version {version} lacks {needed} valid signatures from the {which} root keys")]
    RootSignatures {
        /// The offered version.
        version: u64,
        /// `previous` or `own`.
        which: &'static str,
        /// The threshold.
        needed: u32,
    },
    /// A keyset without enough signatures from the current root.
    #[error("keyset version {version} lacks {needed} valid signatures from root version {root}")]
    KeysetSignatures {
        /// The keyset version.
        version: u64,
        /// The root version.
        root: u64,
        /// The threshold.
        needed: u32,
    },
    /// A keyset made for another root version.
    #[error("keyset version {version} names root version {names}, the current root is {root}")]
    KeysetRoot {
        /// The keyset version.
        version: u64,
        /// The root version it names.
        names: u64,
        /// The current root version.
        root: u64,
    },
    /// A keyset older than the one trusted.
    #[error("keyset version {got} is older than the trusted version {have} (rollback)")]
    Rollback {
        /// The trusted version.
        have: u64,
        /// The offered version.
        got: u64,
    },
    /// A different keyset under a version already trusted.
    #[error("a different keyset claims the trusted version {0}")]
    Equivocation(u64),
    /// An expired keyset.
    #[error("keyset version {version} expired at {expires_at}")]
    Expired {
        /// The keyset version.
        version: u64,
        /// Its expiry.
        expires_at: i64,
    },
}

impl TrustError {
    /// A stable code for events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Envelope(EnvelopeError::Oversized { .. }) => "oversized",
            Self::Envelope(_) => "malformed",
            Self::WrongType { .. } => "wrong_type",
            Self::Invalid(_) => "invalid",
            Self::RootGap { .. } => "root_gap",
            Self::RootSignatures { .. } => "root_signatures",
            Self::KeysetSignatures { .. } => "keyset_signatures",
            Self::KeysetRoot { .. } => "keyset_root",
            Self::Rollback { .. } => "keyset_rollback",
            Self::Equivocation(_) => "keyset_equivocation",
            Self::Expired { .. } => "keyset_expired",
        }
    }
}

/// A root that verified, with its decoded keys.
#[derive(Debug, Clone)]
struct Root {
    doc: RootDoc,
    envelope: Envelope,
    keys: Vec<VerifyingKey>,
}

/// A keyset that verified, with its decoded keys.
#[derive(Debug, Clone)]
struct Keyset {
    doc: KeysetDoc,
    envelope: Envelope,
    keys: Vec<TrustedKey>,
}

/// A command key a device knows, with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// [`dsse::key_id`].
    pub keyid: String,
    /// The key.
    pub key: VerifyingKey,
    /// Its status in the current keyset.
    pub status: KeyStatus,
}

/// What a device trusts: one root version and one keyset signed by it.
#[derive(Debug, Clone)]
pub struct TrustState {
    root: Root,
    keyset: Keyset,
}

/// What [`TrustState::update`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    /// Root version before and after.
    pub root: (u64, u64),
    /// Keyset version before and after.
    pub keyset: (u64, u64),
}

impl Updated {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.root.0 != self.root.1 || self.keyset.0 != self.keyset.1
    }
}

fn open(env: &Envelope, expected: &'static str) -> Result<(Vec<u8>, dsse::Decoded), TrustError> {
    if env.payload_type != expected {
        return Err(TrustError::WrongType {
            expected,
            got: env.payload_type.chars().take(100).collect(),
        });
    }
    if env.payload.len() > MAX_DOC_BYTES {
        return Err(EnvelopeError::Oversized {
            size: env.payload.len(),
            limit: MAX_DOC_BYTES,
        }
        .into());
    }
    let decoded = env.decode()?;
    Ok((decoded.body.clone(), decoded))
}

/// Decodes a root's keys and checks its shape (not its signatures).
fn root_keys(doc: &RootDoc) -> Result<Vec<VerifyingKey>, TrustError> {
    if doc.v != 1 {
        return Err(TrustError::Invalid(format!(
            "root schema version {} is not supported",
            doc.v
        )));
    }
    if doc.keys.is_empty() || doc.keys.len() > MAX_ROOT_KEYS {
        return Err(TrustError::Invalid(format!(
            "a root has 1 to {MAX_ROOT_KEYS} keys"
        )));
    }
    let t = usize::try_from(doc.threshold).unwrap_or(usize::MAX);
    if t == 0 || t > doc.keys.len() {
        return Err(TrustError::Invalid(format!(
            "root threshold {} of {} keys",
            doc.threshold,
            doc.keys.len()
        )));
    }
    let keys = doc
        .keys
        .iter()
        .map(PublicKeyEntry::key)
        .collect::<Result<Vec<_>, _>>()?;
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].contains(k) {
            return Err(TrustError::Invalid("a root lists a key twice".into()));
        }
    }
    Ok(keys)
}

/// Opens a root envelope: type, shape, and `t` signatures by its own keys.
fn open_root(env: &Envelope) -> Result<(Root, dsse::Decoded), TrustError> {
    let (body, decoded) = open(env, ROOT_TYPE)?;
    // Parsed before its signatures are checked because the keys that must sign it are in it;
    // nothing of it is used until they are.
    let doc: RootDoc =
        serde_json::from_slice(&body).map_err(|e| TrustError::Invalid(e.to_string()))?;
    let keys = root_keys(&doc)?;
    if decoded.count_signers(&keys) < doc.threshold as usize {
        return Err(TrustError::RootSignatures {
            version: doc.version,
            which: "own",
            needed: doc.threshold,
        });
    }
    Ok((
        Root {
            doc,
            envelope: env.clone(),
            keys,
        },
        decoded,
    ))
}

/// Opens a keyset envelope signed by `root` (its version, signatures and shape; not expiry).
fn open_keyset(env: &Envelope, root: &Root) -> Result<Keyset, TrustError> {
    let (_, decoded) = open(env, KEYSET_TYPE)?;
    if decoded.count_signers(&root.keys) < root.doc.threshold as usize {
        // The version is not known before the signature checks out.
        return Err(TrustError::KeysetSignatures {
            version: 0,
            root: root.doc.version,
            needed: root.doc.threshold,
        });
    }
    let doc: KeysetDoc =
        serde_json::from_slice(&decoded.body).map_err(|e| TrustError::Invalid(e.to_string()))?;
    if doc.v != 1 {
        return Err(TrustError::Invalid(format!(
            "keyset schema version {} is not supported",
            doc.v
        )));
    }
    if doc.root_version != root.doc.version {
        return Err(TrustError::KeysetRoot {
            version: doc.version,
            names: doc.root_version,
            root: root.doc.version,
        });
    }
    if doc.keys.len() > MAX_KEYSET_KEYS || doc.expires_at <= doc.issued_at {
        return Err(TrustError::Invalid(format!(
            "keyset version {} has {} keys (at most {MAX_KEYSET_KEYS}) and must expire after it is issued",
            doc.version,
            doc.keys.len()
        )));
    }
    let mut keys: Vec<TrustedKey> = Vec::with_capacity(doc.keys.len());
    for e in &doc.keys {
        let key = e.key.key()?;
        if keys.iter().any(|k| k.key == key) {
            return Err(TrustError::Invalid("a keyset lists a key twice".into()));
        }
        keys.push(TrustedKey {
            keyid: e.key.keyid.clone(),
            key,
            status: e.status,
        });
    }
    Ok(Keyset {
        doc,
        envelope: env.clone(),
        keys,
    })
}

impl TrustState {
    /// Pins the first root of `bundle` (signed by its own threshold: trust on first use) and
    /// applies the rest. The keyset must not be expired.
    pub fn pin(bundle: &TrustBundle, now: i64) -> Result<Self, TrustError> {
        let (first, _) = open_root(bundle.roots.first().ok_or_else(|| {
            TrustError::Invalid("a trust bundle carries at least one root".into())
        })?)?;
        let keyset = open_keyset(&bundle.keyset, &first);
        let mut state = match keyset {
            Ok(keyset) => Self {
                root: first.clone(),
                keyset,
            },
            // The keyset belongs to a later root: start with a placeholder that `update` replaces.
            Err(TrustError::KeysetRoot { .. } | TrustError::KeysetSignatures { .. })
                if bundle.roots.len() > 1 =>
            {
                Self {
                    root: first.clone(),
                    keyset: Keyset {
                        doc: KeysetDoc {
                            v: 1,
                            version: 0,
                            root_version: first.doc.version,
                            issued_at: 0,
                            expires_at: 0,
                            keys: Vec::new(),
                        },
                        envelope: bundle.keyset.clone(),
                        keys: Vec::new(),
                    },
                }
            }
            Err(e) => return Err(e),
        };
        state.update(bundle, now)?;
        Ok(state)
    }

    /// Loads a state saved with [`TrustState::saved`]: its one root (own signatures) and its
    /// keyset (root signatures). An expired keyset loads (commands are refused until an update).
    pub fn load(bundle: &TrustBundle) -> Result<Self, TrustError> {
        let [root] = bundle.roots.as_slice() else {
            return Err(TrustError::Invalid(
                "a saved trust state holds exactly one root".into(),
            ));
        };
        let (root, _) = open_root(root)?;
        let keyset = open_keyset(&bundle.keyset, &root)?;
        Ok(Self { root, keyset })
    }

    /// What to save: the current root and keyset.
    pub fn saved(&self) -> TrustBundle {
        TrustBundle {
            roots: vec![self.root.envelope.clone()],
            keyset: self.keyset.envelope.clone(),
        }
    }

    /// Applies `bundle`: walks root versions after the current one (each signed by the
    /// previous and its own threshold), then takes its keyset if it is newer. All or nothing.
    pub fn update(&mut self, bundle: &TrustBundle, now: i64) -> Result<Updated, TrustError> {
        let before = (self.root.doc.version, self.keyset.doc.version);
        let mut root = self.root.clone();
        for env in &bundle.roots {
            let (next, decoded) = open_root(env)?;
            let version = next.doc.version;
            if version <= root.doc.version {
                continue; // Known already (bundles carry the whole chain).
            }
            if version != root.doc.version + 1 {
                return Err(TrustError::RootGap {
                    have: root.doc.version,
                    got: version,
                });
            }
            if decoded.count_signers(&root.keys) < root.doc.threshold as usize {
                return Err(TrustError::RootSignatures {
                    version,
                    which: "previous",
                    needed: root.doc.threshold,
                });
            }
            root = next;
        }
        let rotated = root.doc.version != self.root.doc.version;
        let keyset = open_keyset(&bundle.keyset, &root)?;
        let have = self.keyset.doc.version;
        let got = keyset.doc.version;
        if !rotated && got < have {
            return Err(TrustError::Rollback { have, got });
        }
        if !rotated && got == have && have != 0 {
            if keyset.doc != self.keyset.doc {
                return Err(TrustError::Equivocation(got));
            }
            return Ok(Updated {
                root: (before.0, before.0),
                keyset: (have, have),
            });
        }
        if rotated && got <= have {
            return Err(TrustError::Rollback { have, got });
        }
        if keyset.doc.expires_at <= now {
            return Err(TrustError::Expired {
                version: got,
                expires_at: keyset.doc.expires_at,
            });
        }
        self.root = root;
        self.keyset = keyset;
        Ok(Updated {
            root: (before.0, self.root.doc.version),
            keyset: (before.1, got),
        })
    }

    /// The trusted root version.
    pub fn root_version(&self) -> u64 {
        self.root.doc.version
    }

    /// The trusted keyset version.
    pub fn keyset_version(&self) -> u64 {
        self.keyset.doc.version
    }

    /// When the trusted keyset expires.
    pub fn keyset_expires_at(&self) -> i64 {
        self.keyset.doc.expires_at
    }

    /// The command keys of the trusted keyset, every status.
    pub fn command_keys(&self) -> &[TrustedKey] {
        &self.keyset.keys
    }
}

#[cfg(test)]
pub(crate) mod tests;
