use super::*;
use crate::dsse::generate_key;
use ed25519_dalek::SigningKey;

pub(crate) const NOW: i64 = 1_800_000_000;

/// A control plane's trust material, for tests.
pub(crate) struct World {
    pub roots: Vec<(RootDoc, Vec<SigningKey>, Envelope)>,
    pub command_keys: Vec<(SigningKey, KeyStatus)>,
    pub keyset_version: u64,
}

impl World {
    pub fn new(t: u32, n: usize) -> Self {
        let keys: Vec<SigningKey> = (0..n).map(|_| generate_key()).collect();
        let doc = root_doc(1, t, &keys);
        let refs: Vec<&SigningKey> = keys.iter().take(t as usize).collect();
        let env = doc.sign(&refs);
        Self {
            roots: vec![(doc, keys, env)],
            command_keys: vec![(generate_key(), KeyStatus::Active)],
            keyset_version: 1,
        }
    }

    pub fn root(&self) -> &(RootDoc, Vec<SigningKey>, Envelope) {
        self.roots.last().unwrap()
    }

    /// Rotates the root to fresh keys, signed by `t` of the old and `t` of the new.
    pub fn rotate_root(&mut self, t: u32, n: usize) {
        let (old_doc, old_keys, _) = self.root();
        let keys: Vec<SigningKey> = (0..n).map(|_| generate_key()).collect();
        let doc = root_doc(old_doc.version + 1, t, &keys);
        let mut signers: Vec<&SigningKey> =
            old_keys.iter().take(old_doc.threshold as usize).collect();
        signers.extend(keys.iter().take(t as usize));
        let env = doc.sign(&signers);
        self.roots.push((doc, keys, env));
    }

    pub fn keyset_doc(&self, expires_at: i64) -> KeysetDoc {
        KeysetDoc {
            v: 1,
            version: self.keyset_version,
            root_version: self.root().0.version,
            issued_at: NOW - 10,
            expires_at,
            keys: self
                .command_keys
                .iter()
                .map(|(k, status)| CommandKeyEntry {
                    key: PublicKeyEntry::of(&k.verifying_key()),
                    status: *status,
                })
                .collect(),
        }
    }

    pub fn keyset(&self) -> Envelope {
        let (doc, keys, _) = self.root();
        let signers: Vec<&SigningKey> = keys.iter().take(doc.threshold as usize).collect();
        self.keyset_doc(NOW + 86_400).sign(&signers)
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle {
            roots: self.roots.iter().map(|r| r.2.clone()).collect(),
            keyset: self.keyset(),
        }
    }

    pub fn state(&self) -> TrustState {
        TrustState::pin(&self.bundle(), NOW).unwrap()
    }
}

fn root_doc(version: u64, t: u32, keys: &[SigningKey]) -> RootDoc {
    RootDoc {
        v: 1,
        version,
        threshold: t,
        keys: keys
            .iter()
            .map(|k| PublicKeyEntry::of(&k.verifying_key()))
            .collect(),
        issued_at: NOW - 100,
    }
}

#[test]
fn pin_and_save_round_trip() {
    let w = World::new(2, 3);
    let s = w.state();
    assert_eq!((s.root_version(), s.keyset_version()), (1, 1));
    assert_eq!(s.command_keys().len(), 1);
    let saved = s.saved();
    let bytes = saved.to_vec();
    let back = TrustState::load(&TrustBundle::parse(&bytes).unwrap()).unwrap();
    assert_eq!(back.keyset_version(), 1);
}

#[test]
fn a_root_below_its_threshold_is_refused() {
    let keys: Vec<SigningKey> = (0..3).map(|_| generate_key()).collect();
    let doc = root_doc(1, 2, &keys);
    let env = doc.sign(&[&keys[0], &keys[0]]); // the same key twice counts once
    let w = World::new(1, 1);
    let bundle = TrustBundle {
        roots: vec![env],
        keyset: w.keyset(),
    };
    let e = TrustState::pin(&bundle, NOW).unwrap_err();
    assert!(
        matches!(e, TrustError::RootSignatures { which: "own", .. }),
        "{e}"
    );
}

#[test]
fn bad_thresholds_are_refused() {
    let keys: Vec<SigningKey> = (0..2).map(|_| generate_key()).collect();
    for t in [0, 3] {
        let doc = root_doc(1, t, &keys);
        let env = doc.sign(&[&keys[0], &keys[1]]);
        let e = open_root(&env).unwrap_err();
        assert_eq!(e.code(), "invalid", "{e}");
    }
}

#[test]
fn walking_two_root_rotations() {
    let mut w = World::new(1, 1);
    let mut s = w.state();
    w.rotate_root(2, 3);
    w.rotate_root(1, 2);
    w.keyset_version = 2;
    let u = s.update(&w.bundle(), NOW).unwrap();
    assert_eq!(u.root, (1, 3));
    assert_eq!(u.keyset, (1, 2));
    assert!(u.changed());
    // Applying the same bundle again changes nothing.
    let again = s.update(&w.bundle(), NOW).unwrap();
    assert!(!again.changed());
    // A device enrolling now walks the whole chain too.
    let fresh = TrustState::pin(&w.bundle(), NOW).unwrap();
    assert_eq!(fresh.root_version(), 3);
}

#[test]
fn a_forged_root_rotation_is_refused() {
    let mut w = World::new(1, 1);
    let mut s = w.state();
    // An attacker's "root 2", signed only by its own keys.
    let keys: Vec<SigningKey> = (0..1).map(|_| generate_key()).collect();
    let doc = root_doc(2, 1, &keys);
    let env = doc.sign(&[&keys[0]]);
    w.roots.push((doc, keys, env));
    w.keyset_version = 2;
    let e = s.update(&w.bundle(), NOW).unwrap_err();
    assert!(
        matches!(
            e,
            TrustError::RootSignatures {
                which: "previous",
                version: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.root_version(), 1, "nothing applied");
    assert_eq!(s.keyset_version(), 1);
}

#[test]
fn a_rotation_signed_only_by_the_old_root_is_refused() {
    let mut w = World::new(1, 1);
    let mut s = w.state();
    let old = w.root().1[0].clone();
    let keys = vec![generate_key()];
    let doc = root_doc(2, 1, &keys);
    let env = doc.sign(&[&old]);
    w.roots.push((doc, keys, env));
    w.keyset_version = 2;
    let e = s.update(&w.bundle(), NOW).unwrap_err();
    assert!(
        matches!(e, TrustError::RootSignatures { which: "own", .. }),
        "{e}"
    );
}

#[test]
fn a_skipped_root_version_is_refused() {
    let mut w = World::new(1, 1);
    let mut s = w.state();
    w.rotate_root(1, 1);
    w.rotate_root(1, 1);
    w.keyset_version = 2;
    let mut b = w.bundle();
    b.roots.remove(1);
    let e = s.update(&b, NOW).unwrap_err();
    assert_eq!(e, TrustError::RootGap { have: 1, got: 3 });
}

#[test]
fn keyset_rollback_equivocation_and_expiry() {
    let mut w = World::new(1, 1);
    w.keyset_version = 5;
    let mut s = w.state();
    w.keyset_version = 4;
    let e = s.update(&w.bundle(), NOW).unwrap_err();
    assert_eq!(e, TrustError::Rollback { have: 5, got: 4 });
    // Same version, other content.
    w.keyset_version = 5;
    w.command_keys.push((generate_key(), KeyStatus::Active));
    let e = s.update(&w.bundle(), NOW).unwrap_err();
    assert_eq!(e, TrustError::Equivocation(5));
    // Newer but expired: a freeze.
    w.keyset_version = 6;
    let (doc, keys, _) = w.root();
    let expired = w.keyset_doc(NOW - 1).sign(&[&keys[0]]);
    let b = TrustBundle {
        roots: vec![w.roots[0].2.clone()],
        keyset: expired,
    };
    let e = s.update(&b, NOW).unwrap_err();
    assert_eq!(e.code(), "keyset_expired");
    assert_eq!(doc.version, 1);
    assert_eq!(s.keyset_version(), 5);
    // Newer and valid.
    assert_eq!(s.update(&w.bundle(), NOW).unwrap().keyset, (5, 6));
}

#[test]
fn keysets_must_be_signed_by_the_current_root() {
    let mut w = World::new(1, 1);
    let mut s = w.state();
    w.keyset_version = 2;
    // Signed by a command key instead of the root.
    let forged = w.keyset_doc(NOW + 100).sign(&[&w.command_keys[0].0]);
    let b = TrustBundle {
        roots: vec![w.roots[0].2.clone()],
        keyset: forged,
    };
    assert_eq!(s.update(&b, NOW).unwrap_err().code(), "keyset_signatures");
    // After a root rotation, a keyset signed by the old root is refused.
    w.rotate_root(1, 1);
    let old = w.roots[0].1[0].clone();
    let mut doc = w.keyset_doc(NOW + 100);
    doc.root_version = 2;
    let b = TrustBundle {
        roots: w.roots.iter().map(|r| r.2.clone()).collect(),
        keyset: doc.sign(&[&old]),
    };
    assert_eq!(s.update(&b, NOW).unwrap_err().code(), "keyset_signatures");
    // And a keyset naming the old root version is refused too.
    let mut doc = w.keyset_doc(NOW + 100);
    doc.root_version = 1;
    let new_root = w.root().1[0].clone();
    let b = TrustBundle {
        roots: w.roots.iter().map(|r| r.2.clone()).collect(),
        keyset: doc.sign(&[&new_root]),
    };
    assert_eq!(s.update(&b, NOW).unwrap_err().code(), "keyset_root");
    assert_eq!((s.root_version(), s.keyset_version()), (1, 1));
}

#[test]
fn wrong_document_types_are_refused() {
    let w = World::new(1, 1);
    let mut b = w.bundle();
    b.keyset.payload_type = ROOT_TYPE.into();
    assert_eq!(TrustState::pin(&b, NOW).unwrap_err().code(), "wrong_type");
    let mut b = w.bundle();
    b.roots[0].payload_type = KEYSET_TYPE.into();
    assert_eq!(TrustState::pin(&b, NOW).unwrap_err().code(), "wrong_type");
}

#[test]
fn malformed_and_oversized_bundles_are_refused() {
    assert_eq!(TrustBundle::parse(b"{]").unwrap_err().code(), "malformed");
    let big = vec![b' '; MAX_BUNDLE_BYTES + 1];
    assert_eq!(TrustBundle::parse(&big).unwrap_err().code(), "oversized");
    let empty = br#"{"roots":[],"keyset":{"payloadType":"x","payload":"","signatures":[]}}"#;
    assert_eq!(TrustBundle::parse(empty).unwrap_err().code(), "invalid");
    let w = World::new(1, 1);
    let mut b = w.bundle();
    b.keyset.payload = "%%%".into();
    assert_eq!(TrustState::pin(&b, NOW).unwrap_err().code(), "malformed");
}
