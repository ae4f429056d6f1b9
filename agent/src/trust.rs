//! `trust.json`: the command trust root and keyset this device pinned
//! ([`TrustState::saved`]: one root, one keyset), written atomically and owner-only.
//!
//! The state is pinned at enrollment from the bundle in the enrollment answer (authenticated by
//! the HTTPS connection the enrollment token travelled on) or, when the answer had none, from the
//! first bundle fetched over NATS. After that it only moves forward
//! ([`TrustState::update`]: root rotations signed by the previous root, newer keysets).

use crate::paths::Paths;
use std::path::Path;
use wegweiser_shared::trust::{MAX_BUNDLE_BYTES, TrustBundle, TrustError, TrustState};

/// Why `trust.json` could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustFileError {
    /// The file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold a valid trust state.
    #[error("{path} is damaged: {source}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        source: TrustError,
    },
}

impl TrustFileError {
    /// A stable code for `trust_rejected` events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "unreadable",
            Self::Damaged { source, .. } => source.code(),
        }
    }
}

/// Loads the pinned state; `Ok(None)` when none was pinned yet.
pub fn load(paths: &Paths) -> Result<Option<TrustState>, TrustFileError> {
    load_file(&paths.trust_file())
}

/// Loads a state saved at `path`; `Ok(None)` when the file does not exist.
pub fn load_file(path: &Path) -> Result<Option<TrustState>, TrustFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TrustFileError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let damaged = |source| TrustFileError::Damaged {
        path: path.display().to_string(),
        source,
    };
    let bundle = TrustBundle::parse(&bytes).map_err(damaged)?;
    TrustState::load(&bundle).map(Some).map_err(damaged)
}

/// The bytes [`save`] writes for `state`.
pub fn encode(state: &TrustState) -> Vec<u8> {
    let bytes = state.saved().to_vec();
    debug_assert!(bytes.len() <= MAX_BUNDLE_BYTES);
    bytes
}

/// Saves `state` to `trust.json` (atomic, owner-only).
pub fn save(paths: &Paths, state: &TrustState) -> Result<(), TrustFileError> {
    let path = paths.trust_file();
    crate::platform::write_owner_only(&path, &encode(state)).map_err(|source| TrustFileError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use wegweiser_shared::{
        dsse::generate_key,
        trust::{CommandKeyEntry, KeyStatus, KeysetDoc, PublicKeyEntry, RootDoc},
    };

    pub(crate) const NOW: i64 = 1_800_000_000;

    /// A control plane's trust material, built with the public API.
    pub(crate) struct World {
        pub root: SigningKey,
        pub root_version: u64,
        pub roots: Vec<wegweiser_shared::dsse::Envelope>,
        pub keys: Vec<(SigningKey, KeyStatus)>,
        pub keyset_version: u64,
        pub expires_at: i64,
    }

    impl World {
        pub fn new() -> Self {
            let root = generate_key();
            let doc = RootDoc {
                v: 1,
                version: 1,
                threshold: 1,
                keys: vec![PublicKeyEntry::of(&root.verifying_key())],
                issued_at: NOW - 100,
            };
            let env = doc.sign(&[&root]);
            Self {
                root,
                root_version: 1,
                roots: vec![env],
                keys: vec![(generate_key(), KeyStatus::Active)],
                keyset_version: 1,
                expires_at: NOW + 86_400,
            }
        }

        /// The active command key.
        pub fn key(&self) -> &SigningKey {
            &self
                .keys
                .iter()
                .rev()
                .find(|k| k.1 == KeyStatus::Active)
                .unwrap()
                .0
        }

        /// A new active key in a new keyset version; the others keep their status.
        pub fn add_key(&mut self) {
            self.keys.push((generate_key(), KeyStatus::Active));
            self.keyset_version += 1;
        }

        /// Rotates the root to a fresh key (signed by the old and the new).
        pub fn rotate_root(&mut self) {
            let next = generate_key();
            self.root_version += 1;
            let doc = RootDoc {
                v: 1,
                version: self.root_version,
                threshold: 1,
                keys: vec![PublicKeyEntry::of(&next.verifying_key())],
                issued_at: NOW - 50,
            };
            self.roots.push(doc.sign(&[&self.root, &next]));
            self.root = next;
        }

        pub fn bundle(&self) -> TrustBundle {
            let doc = KeysetDoc {
                v: 1,
                version: self.keyset_version,
                root_version: self.root_version,
                issued_at: NOW - 10,
                expires_at: self.expires_at,
                keys: self
                    .keys
                    .iter()
                    .map(|(k, status)| CommandKeyEntry {
                        key: PublicKeyEntry::of(&k.verifying_key()),
                        status: *status,
                    })
                    .collect(),
            };
            TrustBundle {
                roots: self.roots.clone(),
                keyset: doc.sign(&[&self.root]),
            }
        }

        pub fn state(&self) -> TrustState {
            TrustState::pin(&self.bundle(), NOW).unwrap()
        }
    }

    #[test]
    fn saved_state_loads_back_and_damage_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        assert!(load(&paths).unwrap().is_none());
        let mut w = World::new();
        w.rotate_root();
        w.add_key();
        let state = w.state();
        save(&paths, &state).unwrap();
        let loaded = load(&paths).unwrap().unwrap();
        assert_eq!(loaded.root_version(), 2);
        assert_eq!(loaded.keyset_version(), 2);
        #[cfg(unix)]
        assert_eq!(
            crate::platform::too_open(&paths.trust_file()).unwrap(),
            None
        );
        std::fs::write(paths.trust_file(), b"{not json").unwrap();
        let e = load(&paths).unwrap_err();
        assert_eq!(e.code(), "malformed");
        // A keyset signed by someone else.
        let mut forged = w.bundle();
        let other = World::new();
        forged.roots = vec![w.roots[1].clone()];
        forged.keyset = other.bundle().keyset;
        std::fs::write(paths.trust_file(), forged.to_vec()).unwrap();
        assert_eq!(load(&paths).unwrap_err().code(), "keyset_signatures");
    }
}
