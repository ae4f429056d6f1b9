//! The control plane's side of command trust: the root of trust, the command keyset, and
//! command key rotation.
//!
//! - **Root** (`keys/root/`): `root-<v>-<i>.key` (Ed25519 seeds, 0600) and `root-<v>.json` (the
//!   signed root document). `wegweiser init` makes version 1 (`t` of `n`, default 1 of 1). The
//!   root keys sign keysets and root rotations only; they may be kept offline (move the `.key`
//!   files away and pass `--root-keys DIR` to the commands that need them; the control plane
//!   then cannot re-sign the keyset before it expires and says so in its log and metrics).
//! - **Keyset record** (KV `wg_trust`, key `keyset`): the signed keyset, the command keys with
//!   their seeds sealed under the master key, which key signs, and the rotation in progress.
//!   Root envelopes are kept as `root.<v>`. Every change is compare-and-set.
//! - **Rotation** (`wegweiser keys rotate`): publish a keyset with the next key beside the
//!   current one → once every online device reports that keyset version in its heartbeat, or
//!   after the grace period, sign with the next key → once every command the old key signed has
//!   expired (command lifetime plus the allowed clock skew), a keyset with the old key retired. Agents that missed the push fetch the keyset when they
//!   meet an unknown key, so no command fails.
//! - **Revocation** (`wegweiser keys revoke`): a keyset with the key revoked, at once; if it was
//!   the signing key, a new key signs from now on.
//! - **Root rotation** (`wegweiser keys rotate-root`): root N+1 with new keys, signed by `t` of
//!   N and `t` of N+1, the keyset re-signed by N+1, the old root keys deleted.

use crate::{
    audit::AuditEntry,
    authority::{Authority, AuthorityError, store_err},
    keystore::{read_private, write_new_private},
};
use async_nats::jetstream::kv;
use base64::{Engine, engine::general_purpose::STANDARD};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};
use wegweiser_shared::{
    command::MAX_SKEW_SECS,
    dsse::{self, Envelope},
    subject::{self, Token},
    telemetry::Kind,
    time::now,
    trust::{
        CommandKeyEntry, KeyStatus, KeysetDoc, PublicKeyEntry, RootDoc, TRUST_TOKEN, TrustBundle,
        TrustState,
    },
};

/// The KV bucket of trust state.
pub const TRUST_BUCKET: &str = "wg_trust";
/// Key of the keyset record.
pub const KEYSET_KEY: &str = "keyset";
/// Most retired or revoked keys kept listed (so agents name the reason when they meet one).
pub const MAX_INACTIVE_KEYS: usize = 8;
/// A device counts as online for a rotation when its last heartbeat is this recent.
pub const ONLINE_WINDOW_SECS: i64 = 120;

/// The directory of the root keys in a data directory.
pub fn root_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("root")
}

fn trust_err(msg: impl Into<String>) -> AuthorityError {
    AuthorityError::Trust(msg.into())
}

fn root_doc_file(dir: &Path, version: u64) -> PathBuf {
    dir.join(format!("root-{version}.json"))
}

/// Writes `n` new root keys of `version` into `dir` (0600 each).
fn new_root_keys(dir: &Path, version: u64, n: usize) -> Result<Vec<SigningKey>, AuthorityError> {
    std::fs::create_dir_all(dir).map_err(|e| trust_err(format!("{}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| trust_err(format!("{}: {e}", dir.display())))?;
    }
    (0..n)
        .map(|i| {
            let key = dsse::generate_key();
            let text = zeroize::Zeroizing::new(STANDARD.encode(key.to_bytes()) + "\n");
            write_new_private(
                &dir.join(format!("root-{version}-{i}.key")),
                text.as_bytes(),
            )?;
            Ok(key)
        })
        .collect()
}

/// Creates root version 1 (`threshold` of `n` keys) in `dir` unless it exists. Returns whether
/// it was created now.
pub fn create_root(dir: &Path, threshold: u32, n: usize) -> Result<bool, AuthorityError> {
    if root_doc_file(dir, 1).exists() {
        return Ok(false);
    }
    check_threshold(threshold, n)?;
    let keys = new_root_keys(dir, 1, n)?;
    let doc = RootDoc {
        v: 1,
        version: 1,
        threshold,
        keys: keys
            .iter()
            .map(|k| PublicKeyEntry::of(&k.verifying_key()))
            .collect(),
        issued_at: now(),
    };
    let refs: Vec<&SigningKey> = keys.iter().take(threshold as usize).collect();
    write_json(&root_doc_file(dir, 1), &doc.sign(&refs))?;
    Ok(true)
}

fn check_threshold(threshold: u32, n: usize) -> Result<(), AuthorityError> {
    if n == 0
        || n > wegweiser_shared::trust::MAX_ROOT_KEYS
        || threshold == 0
        || threshold as usize > n
    {
        return Err(trust_err(format!(
            "a root needs 1..={} keys and a threshold of 1..=keys (got {threshold} of {n})",
            wegweiser_shared::trust::MAX_ROOT_KEYS
        )));
    }
    Ok(())
}

fn write_json(path: &Path, env: &Envelope) -> Result<(), AuthorityError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, env.to_vec())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| trust_err(format!("cannot write {}: {e}", path.display())))
}

fn parse_root(env: &Envelope) -> Result<RootDoc, AuthorityError> {
    let body = env
        .decode()
        .map_err(|e| trust_err(format!("stored root: {e}")))?
        .body;
    serde_json::from_slice(&body).map_err(|e| trust_err(format!("stored root: {e}")))
}

/// Loads `threshold` root keys of `doc` from `dir` (every `*.key` file there whose public key
/// the root lists).
pub fn load_root_signers(dir: &Path, doc: &RootDoc) -> Result<Vec<SigningKey>, AuthorityError> {
    let mut found: Vec<SigningKey> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("key") {
                continue;
            }
            let text = read_private(&path)?;
            let Some(bytes) = STANDARD
                .decode(text.expose().trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                return Err(trust_err(format!(
                    "{} is not a root key (base64 of 32 bytes)",
                    path.display()
                )));
            };
            let key = SigningKey::from_bytes(&bytes);
            let public = PublicKeyEntry::of(&key.verifying_key());
            if doc.keys.contains(&public)
                && !found
                    .iter()
                    .any(|k| k.verifying_key() == key.verifying_key())
            {
                found.push(key);
            }
        }
    }
    if found.len() < doc.threshold as usize {
        return Err(trust_err(format!(
            "{} of the {} keys of root version {} are in {}, {} are needed: pass --root-keys DIR with the offline root keys",
            found.len(),
            doc.keys.len(),
            doc.version,
            dir.display(),
            doc.threshold
        )));
    }
    found.truncate(doc.threshold as usize);
    Ok(found)
}

/// A command key as stored (seed sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// Key id.
    pub keyid: String,
    /// Public key.
    pub public_key: String,
    /// The seed, sealed under the master key.
    pub sealed_seed: String,
    /// Status.
    pub status: KeyStatus,
    /// When it was made.
    pub created_at: i64,
    /// When its status last changed.
    pub changed_at: i64,
}

/// The phase of a command key rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The next key is published; the old one still signs.
    Publishing,
    /// The next key signs; the old one is retired after the longest command lifetime.
    Switched,
}

/// A command key rotation in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotation {
    /// The key being retired.
    pub old: String,
    /// The key taking over.
    pub next: String,
    /// Phase.
    pub phase: Phase,
    /// When the phase began.
    pub since: i64,
    /// Longest wait for devices before switching anyway, seconds.
    pub grace_secs: i64,
    /// The keyset version that published the next key.
    pub published_version: u64,
}

/// The keyset record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustRecord {
    /// The current root version.
    pub root_version: u64,
    /// The current keyset.
    pub keyset: KeysetDoc,
    /// Its envelope.
    pub envelope: Envelope,
    /// Every listed key with its sealed seed.
    pub keys: Vec<StoredKey>,
    /// The key that signs commands now.
    pub signing: String,
    /// The rotation in progress.
    #[serde(default)]
    pub rotation: Option<Rotation>,
}

/// The key that signs commands now.
#[derive(Debug)]
pub struct Signer {
    /// Its id.
    pub keyid: String,
    /// The key.
    pub key: SigningKey,
    /// The keyset version that lists it.
    pub keyset_version: u64,
}

/// Caches of the trust record (by KV revision).
#[derive(Debug, Default)]
pub(crate) struct TrustCache {
    bundle: Option<(u64, Arc<TrustBundle>)>,
    signer: Option<(u64, Arc<Signer>)>,
}

fn seal_aad(keyid: &str) -> String {
    format!("trust/command-key/{keyid}")
}

impl Authority {
    fn trust_kv(&self) -> &kv::Store {
        &self.inner.trust
    }

    /// The keyset record and its revision.
    pub async fn trust_record(&self) -> Result<(TrustRecord, u64), AuthorityError> {
        let entry = self
            .trust_kv()
            .entry(KEYSET_KEY)
            .await
            .map_err(store_err)?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or_else(|| {
                trust_err("no command keyset yet: `wegweiser serve` creates it at its first start")
            })?;
        let rec = serde_json::from_slice(&entry.value)
            .map_err(|e| trust_err(format!("stored keyset record: {e}")))?;
        Ok((rec, entry.revision))
    }

    /// The root envelopes, version 1 up to `through`.
    async fn root_chain(&self, through: u64) -> Result<Vec<Envelope>, AuthorityError> {
        let mut out = Vec::new();
        for v in 1..=through {
            let e = self
                .trust_kv()
                .get(format!("root.{v}"))
                .await
                .map_err(store_err)?
                .ok_or_else(|| trust_err(format!("root version {v} is missing from the store")))?;
            out.push(
                serde_json::from_slice(&e).map_err(|e| trust_err(format!("stored root: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Stores root versions from `dir` that the store lacks, and creates the first keyset
    /// (signed by the root keys in `dir`) if there is none. Returns whether it created one.
    pub async fn trust_bootstrap(&self, dir: &Path) -> Result<bool, AuthorityError> {
        let mut latest: Option<RootDoc> = None;
        for v in 1.. {
            let file = root_doc_file(dir, v);
            let stored = self
                .trust_kv()
                .get(format!("root.{v}"))
                .await
                .map_err(store_err)?;
            let env: Envelope = match (stored, file.exists()) {
                (Some(bytes), _) => serde_json::from_slice(&bytes)
                    .map_err(|e| trust_err(format!("stored root: {e}")))?,
                (None, true) => {
                    let bytes = std::fs::read(&file)
                        .map_err(|e| trust_err(format!("{}: {e}", file.display())))?;
                    let env: Envelope = serde_json::from_slice(&bytes)
                        .map_err(|e| trust_err(format!("{}: {e}", file.display())))?;
                    let _ = self
                        .trust_kv()
                        .create(format!("root.{v}"), bytes.into())
                        .await;
                    env
                }
                (None, false) => break,
            };
            latest = Some(parse_root(&env)?);
        }
        let Some(root) = latest else {
            return Err(trust_err(format!(
                "no trust root in the store or in {}; run `wegweiser init` first",
                dir.display()
            )));
        };
        if self
            .trust_kv()
            .get(KEYSET_KEY)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Ok(false);
        }
        let signers = load_root_signers(dir, &root)?;
        let t = now();
        let key = dsse::generate_key();
        let stored = self.store_key(&key, t);
        let mut rec = TrustRecord {
            root_version: root.version,
            keyset: KeysetDoc {
                v: 1,
                version: 0,
                root_version: root.version,
                issued_at: t,
                expires_at: t,
                keys: Vec::new(),
            },
            envelope: Envelope {
                payload_type: String::new(),
                payload: String::new(),
                signatures: Vec::new(),
            },
            signing: stored.keyid.clone(),
            keys: vec![stored],
            rotation: None,
        };
        self.resign(&mut rec, &signers, t);
        let body = serde_json::to_vec(&rec).map_err(|e| trust_err(e.to_string()))?;
        match self.trust_kv().create(KEYSET_KEY, body.into()).await {
            Ok(_) => {
                let mut a = AuditEntry::new("keys.create", "serve", "ok");
                a.detail = serde_json::json!({"keyid": rec.signing, "keyset_version": 1});
                self.audit().record(a).await;
                Ok(true)
            }
            // Another replica was first.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    fn store_key(&self, key: &SigningKey, t: i64) -> StoredKey {
        let public = PublicKeyEntry::of(&key.verifying_key());
        StoredKey {
            sealed_seed: self
                .inner
                .master
                .seal(&seal_aad(&public.keyid), &key.to_bytes()),
            keyid: public.keyid,
            public_key: public.public_key,
            status: KeyStatus::Active,
            created_at: t,
            changed_at: t,
        }
    }

    /// Signs the next keyset version of `rec` (its keys as they are) with `signers`.
    fn resign(&self, rec: &mut TrustRecord, signers: &[SigningKey], t: i64) {
        // Keep every active key and the newest inactive ones.
        let mut inactive: Vec<usize> = (0..rec.keys.len())
            .filter(|&i| rec.keys[i].status != KeyStatus::Active)
            .collect();
        inactive.sort_by_key(|&i| std::cmp::Reverse(rec.keys[i].changed_at));
        let drop: Vec<String> = inactive
            .iter()
            .skip(MAX_INACTIVE_KEYS)
            .map(|&i| rec.keys[i].keyid.clone())
            .collect();
        rec.keys.retain(|k| !drop.contains(&k.keyid));
        rec.keyset = KeysetDoc {
            v: 1,
            version: rec.keyset.version + 1,
            root_version: rec.root_version,
            issued_at: t,
            expires_at: t + self.config().trust.keyset_ttl_secs,
            keys: rec
                .keys
                .iter()
                .map(|k| CommandKeyEntry {
                    key: PublicKeyEntry {
                        keyid: k.keyid.clone(),
                        public_key: k.public_key.clone(),
                    },
                    status: k.status,
                })
                .collect(),
        };
        let refs: Vec<&SigningKey> = signers.iter().collect();
        rec.envelope = rec.keyset.sign(&refs);
    }

    /// Changes the keyset record with `f` (compare-and-set, retried on conflict). `f` returns
    /// whether it changed anything.
    async fn update_trust<F>(&self, mut f: F) -> Result<(TrustRecord, bool), AuthorityError>
    where
        F: FnMut(&mut TrustRecord) -> Result<bool, AuthorityError>,
    {
        loop {
            let (mut rec, revision) = self.trust_record().await?;
            if !f(&mut rec)? {
                return Ok((rec, false));
            }
            let body = serde_json::to_vec(&rec).map_err(|e| trust_err(e.to_string()))?;
            match self
                .trust_kv()
                .update(KEYSET_KEY, body.into(), revision)
                .await
            {
                Ok(_) => return Ok((rec, true)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    /// `t` keys of the current root, from `dir`.
    async fn current_signers(&self, dir: &Path) -> Result<Vec<SigningKey>, AuthorityError> {
        let (rec, _) = self.trust_record().await?;
        load_root_signers(dir, &self.current_root(&rec).await?)
    }

    /// The current root document.
    async fn current_root(&self, rec: &TrustRecord) -> Result<RootDoc, AuthorityError> {
        let bytes = self
            .trust_kv()
            .get(format!("root.{}", rec.root_version))
            .await
            .map_err(store_err)?
            .ok_or_else(|| trust_err("the current root is missing from the store"))?;
        let env: Envelope =
            serde_json::from_slice(&bytes).map_err(|e| trust_err(format!("stored root: {e}")))?;
        parse_root(&env)
    }

    fn trust_cache(&self) -> std::sync::MutexGuard<'_, TrustCache> {
        self.inner
            .trust_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What devices get: the whole root chain and the current keyset.
    pub async fn trust_bundle(&self) -> Result<Arc<TrustBundle>, AuthorityError> {
        let (rec, revision) = self.trust_record().await?;
        if let Some((rev, b)) = &self.trust_cache().bundle
            && *rev == revision
        {
            return Ok(b.clone());
        }
        let bundle = Arc::new(TrustBundle {
            roots: self.root_chain(rec.root_version).await?,
            keyset: rec.envelope.clone(),
        });
        self.trust_cache().bundle = Some((revision, bundle.clone()));
        Ok(bundle)
    }

    /// The key that signs commands now.
    pub async fn command_signer(&self) -> Result<Arc<Signer>, AuthorityError> {
        let (rec, revision) = self.trust_record().await?;
        if let Some((rev, s)) = &self.trust_cache().signer
            && *rev == revision
        {
            return Ok(s.clone());
        }
        let stored = rec
            .keys
            .iter()
            .find(|k| k.keyid == rec.signing && k.status == KeyStatus::Active)
            .ok_or_else(|| trust_err("the signing key is not an active key of the keyset"))?;
        let seed = self
            .inner
            .master
            .open(&seal_aad(&stored.keyid), &stored.sealed_seed)?;
        let bytes: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| trust_err("a stored command key is not 32 bytes"))?;
        let signer = Arc::new(Signer {
            keyid: stored.keyid.clone(),
            key: SigningKey::from_bytes(&bytes),
            keyset_version: rec.keyset.version,
        });
        self.trust_cache().signer = Some((revision, signer.clone()));
        Ok(signer)
    }

    /// Starts a command key rotation: publishes a keyset with a new key beside the current one.
    pub async fn keys_rotate(
        &self,
        dir: &Path,
        grace_secs: Option<i64>,
    ) -> Result<TrustRecord, AuthorityError> {
        self.keys_rotate_as(dir, grace_secs, "cli").await
    }

    /// [`Authority::keys_rotate`], audited as done by `actor`.
    pub async fn keys_rotate_as(
        &self,
        dir: &Path,
        grace_secs: Option<i64>,
        actor: &str,
    ) -> Result<TrustRecord, AuthorityError> {
        let (probe, _) = self.trust_record().await?;
        if probe.rotation.is_some() {
            return Err(trust_err(
                "a rotation is already in progress; `wegweiser keys show` tells its phase",
            ));
        }
        let signers = self.current_signers(dir).await?;
        let grace = grace_secs.unwrap_or(self.config().trust.rotation_grace_secs);
        let (rec, _) = self
            .update_trust(|rec| {
                if rec.rotation.is_some() {
                    return Err(trust_err("a rotation is already in progress"));
                }
                let t = now();
                let key = self.store_key(&dsse::generate_key(), t);
                rec.rotation = Some(Rotation {
                    old: rec.signing.clone(),
                    next: key.keyid.clone(),
                    phase: Phase::Publishing,
                    since: t,
                    grace_secs: grace,
                    published_version: rec.keyset.version + 1,
                });
                rec.keys.push(key);
                self.resign(rec, &signers, t);
                Ok(true)
            })
            .await?;
        self.after_trust_change("keys.rotate", actor, &rec).await;
        Ok(rec)
    }

    /// Revokes a command key at once. If it signs now, a new key takes over.
    pub async fn keys_revoke(
        &self,
        dir: &Path,
        keyid: &str,
    ) -> Result<TrustRecord, AuthorityError> {
        let signers = self.current_signers(dir).await?;
        let (rec, _) = self
            .update_trust(|rec| {
                let t = now();
                let Some(k) = rec.keys.iter_mut().find(|k| k.keyid == keyid) else {
                    return Err(trust_err(format!(
                        "no command key {keyid}; `wegweiser keys show` lists them"
                    )));
                };
                if k.status == KeyStatus::Revoked {
                    return Ok(false);
                }
                k.status = KeyStatus::Revoked;
                k.changed_at = t;
                let signing_revoked =
                    rec.signing == keyid || rec.rotation.as_ref().is_some_and(|r| r.next == keyid);
                if signing_revoked {
                    // Whatever rotation was under way, a fresh key signs from now on.
                    let fresh = self.store_key(&dsse::generate_key(), t);
                    for k in &mut rec.keys {
                        if k.status == KeyStatus::Active && k.keyid != fresh.keyid {
                            k.status = KeyStatus::Retired;
                            k.changed_at = t;
                        }
                    }
                    rec.signing = fresh.keyid.clone();
                    rec.keys.push(fresh);
                    rec.rotation = None;
                }
                self.resign(rec, &signers, t);
                Ok(true)
            })
            .await?;
        self.after_trust_change("keys.revoke", "cli", &rec).await;
        Ok(rec)
    }

    /// Re-signs the keyset (new version, new expiry) with the root keys in `dir`.
    pub async fn keys_resign(&self, dir: &Path) -> Result<TrustRecord, AuthorityError> {
        let signers = self.current_signers(dir).await?;
        let (rec, _) = self
            .update_trust(|rec| {
                self.resign(rec, &signers, now());
                Ok(true)
            })
            .await?;
        self.after_trust_change("keys.resign", "cli", &rec).await;
        Ok(rec)
    }

    /// Rotates the root: version N+1 with `n` new keys and threshold `threshold`, signed by
    /// `t` keys of N and `t` of N+1; the keyset is re-signed by N+1; the keys of N are deleted
    /// from `dir`.
    pub async fn rotate_root(
        &self,
        dir: &Path,
        threshold: u32,
        n: usize,
    ) -> Result<TrustRecord, AuthorityError> {
        check_threshold(threshold, n)?;
        let (probe, _) = self.trust_record().await?;
        let old = self.current_root(&probe).await?;
        let old_signers = load_root_signers(dir, &old)?;
        let version = old.version + 1;
        let keys = new_root_keys(dir, version, n)?;
        let doc = RootDoc {
            v: 1,
            version,
            threshold,
            keys: keys
                .iter()
                .map(|k| PublicKeyEntry::of(&k.verifying_key()))
                .collect(),
            issued_at: now(),
        };
        let mut refs: Vec<&SigningKey> = old_signers.iter().collect();
        refs.extend(keys.iter().take(threshold as usize));
        let env = doc.sign(&refs);
        write_json(&root_doc_file(dir, version), &env)?;
        match self
            .trust_kv()
            .create(format!("root.{version}"), env.to_vec().into())
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(trust_err(format!(
                    "root version {version} exists already (a concurrent rotation?)"
                )));
            }
            Err(e) => return Err(store_err(e)),
        }
        let new_signers: Vec<SigningKey> = keys.iter().take(threshold as usize).cloned().collect();
        let (rec, _) = self
            .update_trust(|rec| {
                rec.root_version = version;
                self.resign(rec, &new_signers, now());
                Ok(true)
            })
            .await?;
        // The old keys could sign a rival version N+1 for devices still at N: delete them.
        let prefix = format!("root-{}-", old.version);
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".key") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        self.after_trust_change("keys.rotate_root", "cli", &rec)
            .await;
        Ok(rec)
    }

    /// Audits a trust change and pushes the new bundle to every device.
    async fn after_trust_change(&self, kind: &str, actor: &str, rec: &TrustRecord) {
        let mut a = AuditEntry::new(kind, actor, "ok");
        a.detail = serde_json::json!({
            "root_version": rec.root_version,
            "keyset_version": rec.keyset.version,
            "signing": rec.signing,
        });
        self.audit().record(a).await;
        match self.push_trust().await {
            Ok(n) => tracing::info!(devices = n, keyset = rec.keyset.version, "Trust pushed."),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot push the trust bundle; devices fetch it on their next connect.")
            }
        }
    }

    /// Publishes the current trust bundle to every device of every active tenant. Returns how
    /// many devices it was sent to.
    pub async fn push_trust(&self) -> Result<usize, AuthorityError> {
        let bundle = self.trust_bundle().await?;
        let body: bytes::Bytes = bundle.to_vec().into();
        let mut sent = 0;
        for tenant in self.tenants().await? {
            for d in self.devices(&tenant.id).await? {
                if d.revoked_at.is_some() {
                    continue;
                }
                let subject =
                    subject::down(&tenant.account, &d.id, &[Token::from_static(TRUST_TOKEN)]);
                self.cp_client()
                    .publish(subject, body.clone())
                    .await
                    .map_err(|e| AuthorityError::Nats(e.to_string()))?;
                sent += 1;
            }
        }
        self.cp_client()
            .flush()
            .await
            .map_err(|e| AuthorityError::Nats(e.to_string()))?;
        Ok(sent)
    }

    /// The online devices (heartbeat within [`ONLINE_WINDOW_SECS`]) that do not report keyset
    /// version `version` or later yet.
    pub async fn devices_behind(&self, version: u64) -> Result<usize, AuthorityError> {
        let t = now();
        let mut behind = 0;
        for tenant in self.tenants().await? {
            for d in self.devices(&tenant.id).await? {
                if d.revoked_at.is_some() {
                    continue;
                }
                let Some(hb) = self.latest(&tenant.id, &d.id, Kind::Heartbeat).await? else {
                    continue;
                };
                if t - hb.received_at > ONLINE_WINDOW_SECS {
                    continue;
                }
                let reported = hb.report.get("keyset_version").and_then(|v| v.as_u64());
                if reported.is_none_or(|v| v < version) {
                    behind += 1;
                }
            }
        }
        Ok(behind)
    }

    /// One step of the trust driver as of now ([`Authority::trust_tick_at`]).
    pub async fn trust_tick(&self, dir: &Path) -> Result<Vec<String>, AuthorityError> {
        self.trust_tick_at(dir, now()).await
    }

    /// One step of the trust driver as of `t` (unix seconds): switches a rotation's signing key
    /// once no online device is behind (or the grace period is over), retires the old key once
    /// every command it signed has expired, and re-signs a keyset that passed half its
    /// lifetime. Returns what it did.
    pub async fn trust_tick_at(&self, dir: &Path, t: i64) -> Result<Vec<String>, AuthorityError> {
        let mut done = Vec::new();
        let (rec, _) = self.trust_record().await?;
        let retire_after = self.config().trust.command_lifetime_secs + MAX_SKEW_SECS;
        if let Some(r) = &rec.rotation {
            match r.phase {
                Phase::Publishing => {
                    let behind = self.devices_behind(r.published_version).await?;
                    if behind == 0 || t - r.since >= r.grace_secs {
                        let (next, old) = (r.next.clone(), r.old.clone());
                        let (rec, changed) = self
                            .update_trust(|rec| match &mut rec.rotation {
                                Some(r) if r.phase == Phase::Publishing && r.next == next => {
                                    r.phase = Phase::Switched;
                                    r.since = t;
                                    rec.signing = next.clone();
                                    Ok(true)
                                }
                                _ => Ok(false),
                            })
                            .await?;
                        if changed {
                            let mut a = AuditEntry::new("keys.switch", "serve", "ok");
                            a.detail = serde_json::json!({"old": old, "signing": rec.signing, "devices_behind": behind});
                            self.audit().record(a).await;
                            done.push(format!("signing with {}", rec.signing));
                        }
                    }
                }
                Phase::Switched if t - r.since > retire_after => {
                    let signers = self.current_signers(dir).await?;
                    let old = r.old.clone();
                    let (rec, changed) = self
                        .update_trust(|rec| {
                            let Some(r) = &rec.rotation else {
                                return Ok(false);
                            };
                            if r.phase != Phase::Switched || r.old != old {
                                return Ok(false);
                            }
                            for k in &mut rec.keys {
                                if k.keyid == old && k.status == KeyStatus::Active {
                                    k.status = KeyStatus::Retired;
                                    k.changed_at = t;
                                }
                            }
                            rec.rotation = None;
                            self.resign(rec, &signers, t);
                            Ok(true)
                        })
                        .await?;
                    if changed {
                        self.after_trust_change("keys.retire", "service", &rec)
                            .await;
                        done.push(format!("retired {old}"));
                    }
                }
                Phase::Switched => {}
            }
        }
        let (rec, _) = self.trust_record().await?;
        let half = (rec.keyset.expires_at - rec.keyset.issued_at) / 2;
        if rec.keyset.expires_at - t <= half {
            let root = self.current_root(&rec).await?;
            match load_root_signers(dir, &root) {
                Ok(signers) => {
                    let (rec, _) = self
                        .update_trust(|r| {
                            if r.keyset.version != rec.keyset.version {
                                return Ok(false);
                            }
                            self.resign(r, &signers, t);
                            Ok(true)
                        })
                        .await?;
                    self.after_trust_change("keys.resign", "service", &rec)
                        .await;
                    done.push(format!(
                        "keyset re-signed as version {}",
                        rec.keyset.version
                    ));
                }
                Err(e) => {
                    self.metrics()
                        .keyset_resign_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(
                        expires_at = rec.keyset.expires_at,
                        error = %e,
                        "The command keyset must be re-signed before it expires; devices refuse commands after that."
                    );
                }
            }
        }
        Ok(done)
    }
}

/// Checks that a bundle is what a device would accept from scratch (used by `keys show`).
pub fn check_bundle(
    bundle: &TrustBundle,
) -> Result<TrustState, wegweiser_shared::trust::TrustError> {
    TrustState::pin(bundle, now())
}
