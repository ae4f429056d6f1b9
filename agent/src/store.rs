//! The device's credentials on disk, and loading a whole enrollment.
//!
//! The seed (`device.nk`) and the JWT (`device.jwt`) are written owner-only and atomically. A seed
//! that group or others can read is refused. Two multi-file updates are crash-safe:
//!
//! - **Enrollment** ([`save_enrollment_files`]) stages every file first (`nats-ca.pem.new`,
//!   `agent.toml.new`, `device.jwt.new`, then `device.nk.new` last, so a staged seed means the set
//!   is complete), then renames them into place, the seed last. [`load`] (through
//!   [`finish_enrollment`]) rolls a set forward when the staged seed exists and deletes the staged
//!   files otherwise (the live files were not touched yet). So a new seed never meets an old JWT.
//! - **Key rotation** ([`pending_key`], [`save_renewed`]): the next key is stored in
//!   `device.nk.next` *before* the renewal is sent and reused by every retry; on success the JWT
//!   issued for it is written, then `device.nk.next` replaces `device.nk`. [`load`] finishes a
//!   rotation whose JWT was stored, and otherwise keeps the pending key for the next renewal
//!   (see there why it is not deleted).

use crate::{
    config::{AgentConfig, ConfigError},
    paths::Paths,
    platform,
};
use std::{
    fmt, fs,
    path::{Path, PathBuf},
    sync::Arc,
};
use wegweiser_shared::{
    ids::{AccountKey, DeviceId},
    jwt::{self, Claims, JwtError, UserNats},
    secret::SecretString,
};

/// Largest seed or JWT file read.
const MAX_CREDENTIAL_FILE: u64 = 64 * 1024;

/// Why stored credentials cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// There is no `agent.toml`: the device was never enrolled here.
    #[error(
        "not enrolled: {path} does not exist; run `wegweiser-agent enroll --url URL --token TOKEN` (with the same --state-dir/--system)"
    )]
    NotEnrolled {
        /// The configuration file looked for.
        path: String,
    },
    /// A file that enrollment writes is missing.
    #[error("{path} is missing ({what}); enroll again with `wegweiser-agent enroll --force`")]
    Missing {
        /// The file.
        path: String,
        /// What it holds.
        what: &'static str,
    },
    /// The seed file can be read by group or others.
    #[error(
        "{path} is readable by other users ({access}); run `{fix}` and enroll again if someone else may have copied it",
        fix = access.fix(path)
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Who else may read it (permission bits on Unix, principals on Windows).
        access: platform::Exposure,
    },
    /// The seed file does not hold a user nkey seed.
    #[error("{path} does not hold a valid user nkey seed; enroll again with `--force`")]
    InvalidSeed {
        /// The file.
        path: String,
    },
    /// The JWT file does not hold a valid JWT for this device and key.
    #[error("{path}: {source}; enroll again with `--force`")]
    InvalidJwt {
        /// The file.
        path: String,
        /// What is wrong with it.
        source: CredentialsError,
    },
    /// `agent.toml` is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Why a JWT does not belong to this device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The JWT is malformed or its signature does not verify.
    #[error("invalid user JWT: {0}")]
    Jwt(#[from] JwtError),
    /// The JWT was issued for another public key.
    #[error("the JWT was issued for key {subject}, not for this device's key {key}")]
    WrongKey {
        /// The JWT's subject.
        subject: String,
        /// The device's public key.
        key: String,
    },
    /// The JWT names another device.
    #[error("the JWT names device {name:?}, not {device}")]
    WrongDevice {
        /// The JWT's name.
        name: String,
        /// This device.
        device: String,
    },
    /// The JWT belongs to another account.
    #[error("the JWT belongs to account {found}, not {account}")]
    WrongAccount {
        /// The JWT's issuer account.
        found: String,
        /// This device's account.
        account: String,
    },
}

/// A key and the JWT issued for it. `Debug` shows the public key and the times only.
#[derive(Clone)]
pub struct Credentials {
    key: Arc<nkeys::KeyPair>,
    jwt: SecretString,
    issued_at: i64,
    expires_at: Option<i64>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("public_key", &self.key.public_key())
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Pairs `key` with `jwt` after checking that the JWT's signature verifies and that it was
    /// issued for this key, device and account. Expiry is not checked (an expired JWT is still
    /// the device's identity; the server decides).
    pub fn new(
        key: nkeys::KeyPair,
        jwt: SecretString,
        device: &DeviceId,
        account: &AccountKey,
    ) -> Result<Self, CredentialsError> {
        let claims: Claims<UserNats> = jwt::decode_untimed(jwt.expose())?;
        let public_key = key.public_key();
        if claims.sub != public_key {
            return Err(CredentialsError::WrongKey {
                subject: claims.sub,
                key: public_key,
            });
        }
        if claims.name != device.as_str() {
            return Err(CredentialsError::WrongDevice {
                name: claims.name,
                device: device.to_string(),
            });
        }
        let issuer_account = claims.nats.issuer_account.as_deref().unwrap_or(&claims.iss);
        if issuer_account != account.as_str() {
            return Err(CredentialsError::WrongAccount {
                found: issuer_account.to_owned(),
                account: account.to_string(),
            });
        }
        let jwt = SecretString::new(jwt.expose().trim().to_owned());
        Ok(Self {
            key: Arc::new(key),
            jwt,
            issued_at: claims.iat,
            expires_at: claims.exp.filter(|e| *e > 0),
        })
    }

    /// The key pair (signs connect nonces).
    pub fn key(&self) -> &Arc<nkeys::KeyPair> {
        &self.key
    }

    /// The public key.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The JWT (secret: never log it).
    pub fn jwt(&self) -> &SecretString {
        &self.jwt
    }

    /// When the JWT was issued (unix seconds).
    pub fn issued_at(&self) -> i64 {
        self.issued_at
    }

    /// When the JWT expires (unix seconds), if it does.
    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }
}

/// An enrolled device: its configuration and credentials.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// `agent.toml`.
    pub config: AgentConfig,
    /// Key and JWT.
    pub credentials: Credentials,
}

/// Whether anything of an enrollment exists at `paths` (a completely staged one counts: loading
/// finishes it).
pub fn is_enrolled(paths: &Paths) -> bool {
    enrolled_file(paths).is_some()
}

/// The first file that shows an enrollment at `paths`: `agent.toml`, `device.nk` or a staged
/// `device.nk.new`.
pub fn enrolled_file(paths: &Paths) -> Option<PathBuf> {
    [
        paths.config_file(),
        paths.seed_file(),
        staged(&paths.seed_file()),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// Loads and checks everything `run` needs. Finishes an interrupted enrollment
/// ([`finish_enrollment`]) and an interrupted key rotation.
pub fn load(paths: &Paths) -> Result<Enrollment, StoreError> {
    finish_enrollment(paths)?;
    let config_file = paths.config_file();
    if !config_file.exists() {
        return Err(StoreError::NotEnrolled {
            path: config_file.display().to_string(),
        });
    }
    let config = AgentConfig::load(&config_file)?;
    let jwt_file = paths.jwt_file();
    let jwt = load_jwt(&jwt_file)?;
    let key = load_seed(&paths.seed_file())?;
    let next_file = paths.next_seed_file();
    let credentials = match Credentials::new(key, jwt.clone(), &config.device_id, &config.account) {
        Ok(c) => {
            if next_file.exists() {
                // A rotation stopped before its JWT was stored. The old pair is still valid, but
                // the request may have reached the control plane, which then already holds the
                // pending key as the device's key: deleting it would leave the device with a
                // key the control plane no longer renews (`stale_key`). So it is kept, and the
                // next renewal sends the same key and proof again (`pending_key`), which the
                // control plane answers idempotently. Read now so a bad file is reported at start.
                let pending = load_seed(&next_file)?;
                tracing::info!(
                    pending_key = %pending.public_key(),
                    "A key rotation was interrupted; the next renewal finishes it with the same key."
                );
            }
            c
        }
        Err(CredentialsError::WrongKey { .. }) if next_file.exists() => {
            let next = load_seed(&next_file)?;
            let c = Credentials::new(next, jwt, &config.device_id, &config.account).map_err(
                |source| StoreError::InvalidJwt {
                    path: jwt_file.display().to_string(),
                    source,
                },
            )?;
            let seed_file = paths.seed_file();
            fs::rename(&next_file, &seed_file).map_err(io(&seed_file))?;
            tracing::info!(public_key = %c.public_key(), "Finished an interrupted key rotation.");
            c
        }
        Err(source) => {
            return Err(StoreError::InvalidJwt {
                path: jwt_file.display().to_string(),
                source,
            });
        }
    };
    let ca = paths.ca_file();
    if !ca.exists() {
        return Err(StoreError::Missing {
            path: ca.display().to_string(),
            what: "the CA certificate of the NATS servers",
        });
    }
    Ok(Enrollment {
        config,
        credentials,
    })
}

fn read_limited(path: &Path, what: &'static str) -> Result<SecretString, StoreError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing {
                path: path.display().to_string(),
                what,
            });
        }
        Err(e) => return Err(io(path)(e)),
    };
    if meta.len() > MAX_CREDENTIAL_FILE {
        return Err(StoreError::Io {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_CREDENTIAL_FILE} bytes"),
            ),
        });
    }
    Ok(SecretString::new(
        fs::read_to_string(path).map_err(io(path))?,
    ))
}

/// Reads a user seed, refusing a file that others can read (group/other bits on Unix, other
/// principals in the DACL on Windows).
pub fn load_seed(path: &Path) -> Result<nkeys::KeyPair, StoreError> {
    if path.exists()
        && let Some(access) = platform::too_open(path).map_err(io(path))?
    {
        return Err(StoreError::TooOpen {
            path: path.display().to_string(),
            access,
        });
    }
    let text = read_limited(path, "the device's key")?;
    let seed = text.expose().trim();
    let invalid = || StoreError::InvalidSeed {
        path: path.display().to_string(),
    };
    if !seed.starts_with("SU") {
        return Err(invalid());
    }
    nkeys::KeyPair::from_seed(seed).map_err(|_| invalid())
}

/// Writes a user seed, owner-only and atomically.
pub fn save_seed(path: &Path, key: &nkeys::KeyPair) -> Result<(), StoreError> {
    let seed = SecretString::new(key.seed().map_err(|_| StoreError::InvalidSeed {
        path: path.display().to_string(),
    })?);
    platform::write_owner_only(path, seed.expose().as_bytes()).map_err(io(path))
}

/// Reads the JWT file.
pub fn load_jwt(path: &Path) -> Result<SecretString, StoreError> {
    let text = read_limited(path, "the device's JWT")?;
    Ok(SecretString::new(text.expose().trim().to_owned()))
}

/// Writes the JWT, owner-only and atomically.
pub fn save_jwt(path: &Path, jwt: &SecretString) -> Result<(), StoreError> {
    platform::write_owner_only(path, jwt.expose().as_bytes()).map_err(io(path))
}

/// The key of the rotation in progress (`device.nk.next`), if any. When there is none and
/// `generate` is set, a new key is made and stored there (owner-only, atomically) before it is
/// returned, so every retry of the renewal, and the first renewal after a restart, sends the
/// same key.
pub fn pending_key(paths: &Paths, generate: bool) -> Result<Option<nkeys::KeyPair>, StoreError> {
    let next = paths.next_seed_file();
    if next.exists() {
        return load_seed(&next).map(Some);
    }
    if !generate {
        return Ok(None);
    }
    let key = nkeys::KeyPair::new_user();
    save_seed(&next, &key)?;
    Ok(Some(key))
}

/// Stores renewed credentials. With a new key (rotation): the seed goes to `device.nk.next`
/// (again: [`pending_key`] put it there before the request), then the JWT, then `device.nk.next`
/// replaces `device.nk`.
pub fn save_renewed(
    paths: &Paths,
    credentials: &Credentials,
    rotated: bool,
) -> Result<(), StoreError> {
    if rotated {
        let next = paths.next_seed_file();
        save_seed(&next, credentials.key())?;
        save_jwt(&paths.jwt_file(), credentials.jwt())?;
        let seed = paths.seed_file();
        fs::rename(&next, &seed).map_err(io(&seed))
    } else {
        save_jwt(&paths.jwt_file(), credentials.jwt())
    }
}

/// The staged copy of `path` during an enrollment: `path` with `.new` appended.
pub fn staged(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Stores the files of one enrollment so that a crash leaves either the old set or the new one
/// (after [`load`]), never a mix:
///
/// 1. Finish or undo an earlier interrupted enrollment ([`finish_enrollment`]), so no stale staged
///    file joins this set.
/// 2. Stage: `nats-ca.pem.new`, `agent.toml.new`, `device.jwt.new`, `trust.json.new` (the
///    pinned command trust, or an empty file when the enrollment brought none: then the previous
///    identity's trust is removed on commit), and `device.nk.new` last.
///    Each write is atomic and synced, so the staged seed exists only when the set is complete.
///    A crash before it leaves the live files untouched; loading deletes the staged ones.
/// 3. Commit: rename the CA, the configuration and the JWT into place, drop
///    the previous identity's pending rotation key and status, and rename the seed last. A
///    crash in between leaves the staged seed, and loading renames what is still staged.
pub fn save_enrollment_files(
    paths: &Paths,
    credentials: &Credentials,
    ca_pem: &str,
    config: &AgentConfig,
    trust: Option<&[u8]>,
) -> Result<(), StoreError> {
    finish_enrollment(paths)?;
    let ca = staged(&paths.ca_file());
    platform::write_atomic(&ca, ca_pem.as_bytes()).map_err(io(&ca))?;
    config.save(&staged(&paths.config_file()))?;
    save_jwt(&staged(&paths.jwt_file()), credentials.jwt())?;
    let trust_file = staged(&paths.trust_file());
    platform::write_owner_only(&trust_file, trust.unwrap_or_default()).map_err(io(&trust_file))?;
    save_seed(&staged(&paths.seed_file()), credentials.key())?;
    commit_staged(paths)
}

/// Resolves an enrollment that was interrupted while its files were stored (see
/// [`save_enrollment_files`]): with a staged seed the set is complete and is rolled forward;
/// without one, staged files are an incomplete set and are deleted. Does nothing when no staged
/// file exists. The caller holds `run.lock` (or is enrolling into a new directory).
pub fn finish_enrollment(paths: &Paths) -> Result<(), StoreError> {
    if staged(&paths.seed_file()).exists() {
        commit_staged(paths)?;
        tracing::info!("Finished storing an interrupted enrollment.");
        return Ok(());
    }
    for live in [
        paths.ca_file(),
        paths.config_file(),
        paths.jwt_file(),
        paths.trust_file(),
    ] {
        let file = staged(&live);
        if file.exists() {
            fs::remove_file(&file).map_err(io(&file))?;
            tracing::warn!(file = %file.display(), "Removed a file of an unfinished enrollment.");
        }
    }
    Ok(())
}

/// Step 3 of [`save_enrollment_files`]; also how [`finish_enrollment`] rolls a set forward, so
/// files already renamed are skipped.
fn commit_staged(paths: &Paths) -> Result<(), StoreError> {
    for live in [paths.ca_file(), paths.config_file(), paths.jwt_file()] {
        let file = staged(&live);
        if file.exists() {
            fs::rename(&file, &live).map_err(io(&live))?;
        }
    }
    // An empty staged trust file: this enrollment brought none, and the previous identity's
    // does not apply to it (the agent fetches one when it connects).
    let trust = paths.trust_file();
    let staged_trust = staged(&trust);
    match fs::metadata(&staged_trust) {
        Ok(m) if m.len() == 0 => {
            if trust.exists() {
                fs::remove_file(&trust).map_err(io(&trust))?;
            }
            fs::remove_file(&staged_trust).map_err(io(&staged_trust))?;
        }
        Ok(_) => fs::rename(&staged_trust, &trust).map_err(io(&trust))?,
        Err(_) => {} // Not staged, or renamed already by an interrupted commit.
    }
    // The previous identity's pending rotation key and status describe another key or device.
    let next = paths.next_seed_file();
    if next.exists() {
        fs::remove_file(&next).map_err(io(&next))?;
    }
    let _ = fs::remove_file(paths.status_file());
    // The renames above must be durable before the seed's: its staged copy is what tells a later
    // `load` to finish the set.
    platform::sync_dir(paths.config_dir());
    platform::sync_dir(paths.state_dir());
    let seed = paths.seed_file();
    fs::rename(staged(&seed), &seed).map_err(io(&seed))?;
    platform::sync_dir(paths.state_dir());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Issuer;

    #[test]
    fn credentials_must_match_key_device_and_account() {
        let issuer = Issuer::new();
        let key = nkeys::KeyPair::new_user();
        let jwt = issuer.jwt(&key.public_key(), 600);
        let c =
            Credentials::new(key.clone(), jwt.clone(), &issuer.device, &issuer.account).unwrap();
        assert_eq!(c.public_key(), key.public_key());
        assert!(c.expires_at().unwrap() > c.issued_at());
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains(jwt.expose()) && !dbg.contains(&key.seed().unwrap()),
            "{dbg}"
        );

        let other = nkeys::KeyPair::new_user();
        let e = Credentials::new(other, jwt.clone(), &issuer.device, &issuer.account).unwrap_err();
        assert!(matches!(e, CredentialsError::WrongKey { .. }), "{e}");
        let e = Credentials::new(
            key.clone(),
            jwt.clone(),
            &"dev-2".parse().unwrap(),
            &issuer.account,
        )
        .unwrap_err();
        assert!(matches!(e, CredentialsError::WrongDevice { .. }), "{e}");
        let acc: AccountKey = nkeys::KeyPair::new_account().public_key().parse().unwrap();
        let e = Credentials::new(key.clone(), jwt, &issuer.device, &acc).unwrap_err();
        assert!(matches!(e, CredentialsError::WrongAccount { .. }), "{e}");
        let e = Credentials::new(key, SecretString::new("x.y.z".into()), &issuer.device, &acc)
            .unwrap_err();
        assert!(matches!(e, CredentialsError::Jwt(_)), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn seeds_are_owner_only_and_readable_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("device.nk");
        let key = nkeys::KeyPair::new_user();
        save_seed(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_seed(&path).unwrap().public_key(), key.public_key());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_seed(&path).unwrap_err();
        assert!(
            matches!(&e, StoreError::TooOpen { access, .. } if access.mode() == Some(0o640)),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("chmod 600 {}", path.display())),
            "{text}"
        );
        assert!(!text.contains(&key.seed().unwrap()), "{text}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        platform::write_owner_only(
            &path,
            nkeys::KeyPair::new_account().seed().unwrap().as_bytes(),
        )
        .unwrap();
        assert!(matches!(
            load_seed(&path),
            Err(StoreError::InvalidSeed { .. })
        ));
        assert!(matches!(
            load_seed(&tmp.path().join("none")),
            Err(StoreError::Missing { .. })
        ));
    }

    #[test]
    fn interrupted_rotations_are_finished_or_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let issuer = Issuer::new();
        let old = nkeys::KeyPair::new_user();
        let enrollment = issuer.enroll(&paths, &old);
        let loaded = load(&paths).unwrap();
        assert_eq!(loaded.credentials.public_key(), old.public_key());
        assert_eq!(loaded.config, enrollment.config);

        // Crash after the new seed, before the JWT: the old pair stays in use, and the pending
        // key is kept for the next renewal (the control plane may already hold it).
        let new = pending_key(&paths, true).unwrap().unwrap();
        assert_eq!(
            load(&paths).unwrap().credentials.public_key(),
            old.public_key()
        );
        assert_eq!(
            pending_key(&paths, false).unwrap().unwrap().public_key(),
            new.public_key()
        );

        // Crash after the JWT, before the rename: the new pair is completed.
        save_jwt(&paths.jwt_file(), &issuer.jwt(&new.public_key(), 600)).unwrap();
        assert_eq!(
            load(&paths).unwrap().credentials.public_key(),
            new.public_key()
        );
        assert!(!paths.next_seed_file().exists());
        assert_eq!(
            load_seed(&paths.seed_file()).unwrap().public_key(),
            new.public_key()
        );

        // A complete rotation.
        let newer = nkeys::KeyPair::new_user();
        let c = Credentials::new(
            newer.clone(),
            issuer.jwt(&newer.public_key(), 600),
            &issuer.device,
            &issuer.account,
        )
        .unwrap();
        save_renewed(&paths, &c, true).unwrap();
        assert_eq!(
            load(&paths).unwrap().credentials.public_key(),
            newer.public_key()
        );

        // A JWT for a key that is nowhere is refused.
        save_jwt(&paths.jwt_file(), &issuer.jwt(&old.public_key(), 600)).unwrap();
        assert!(matches!(load(&paths), Err(StoreError::InvalidJwt { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn pending_key_is_made_once_and_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        assert!(pending_key(&paths, false).unwrap().is_none());
        assert!(!paths.next_seed_file().exists());
        let first = pending_key(&paths, true).unwrap().unwrap();
        let mode = fs::metadata(paths.next_seed_file())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A retry (or a restart) gets the same key, whether or not rotation is still on.
        for generate in [true, false] {
            let again = pending_key(&paths, generate).unwrap().unwrap();
            assert_eq!(again.public_key(), first.public_key());
        }
    }

    /// Stages the files of an enrollment of `key` by `issuer` without committing them.
    fn stage(paths: &Paths, issuer: &Issuer, key: &nkeys::KeyPair, with_seed: bool) {
        let config = AgentConfig {
            control_plane_url: "https://cp.example.net".into(),
            tenant: issuer.tenant.clone(),
            device_id: issuer.device.clone(),
            account: issuer.account.clone(),
            nats_urls: vec!["tls://127.0.0.1:1".into()],
            heartbeat_secs: 30,
            rotate_key_on_renew: false,
            metrics_secs: 60,
            inventory_check_secs: 3600,
            allowed_commands: None,
        };
        platform::write_atomic(
            &staged(&paths.ca_file()),
            crate::testutil::CA_PEM.as_bytes(),
        )
        .unwrap();
        config.save(&staged(&paths.config_file())).unwrap();
        save_jwt(
            &staged(&paths.jwt_file()),
            &issuer.jwt(&key.public_key(), 600),
        )
        .unwrap();
        if with_seed {
            save_seed(&staged(&paths.seed_file()), key).unwrap();
        }
    }

    fn staged_files(paths: &Paths) -> Vec<PathBuf> {
        [
            paths.ca_file(),
            paths.config_file(),
            paths.jwt_file(),
            paths.seed_file(),
        ]
        .iter()
        .map(|p| staged(p))
        .filter(|p| p.exists())
        .collect()
    }

    #[test]
    fn interrupted_enrollments_are_finished_or_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let (a, b) = (Issuer::new(), Issuer::new());
        let old = nkeys::KeyPair::new_user();
        a.enroll(&paths, &old);
        // The old identity has a pending rotation key: a new enrollment drops it.
        pending_key(&paths, true).unwrap();

        // Crash while staging (no staged seed yet): the old identity stays, the staged files go.
        let new = nkeys::KeyPair::new_user();
        stage(&paths, &b, &new, false);
        let loaded = load(&paths).unwrap();
        assert_eq!(loaded.credentials.public_key(), old.public_key());
        assert_eq!(loaded.config.device_id, a.device);
        assert!(staged_files(&paths).is_empty());
        assert!(paths.next_seed_file().exists());

        // Crash after staging, before any rename: the new identity is completed.
        stage(&paths, &b, &new, true);
        let loaded = load(&paths).unwrap();
        assert_eq!(loaded.credentials.public_key(), new.public_key());
        assert_eq!(loaded.config.device_id, b.device);
        assert!(staged_files(&paths).is_empty());
        assert!(!paths.next_seed_file().exists());

        // Crash mid-commit, with the new JWT live and the old seed still in place: completed.
        let newer = nkeys::KeyPair::new_user();
        stage(&paths, &a, &newer, true);
        for f in [paths.ca_file(), paths.config_file(), paths.jwt_file()] {
            fs::rename(staged(&f), &f).unwrap();
        }
        assert_eq!(
            load_seed(&paths.seed_file()).unwrap().public_key(),
            new.public_key()
        );
        let loaded = load(&paths).unwrap();
        assert_eq!(loaded.credentials.public_key(), newer.public_key());
        assert_eq!(loaded.config.device_id, a.device);
        assert!(staged_files(&paths).is_empty());
    }

    #[test]
    fn a_first_enrollment_interrupted_after_staging_counts_and_is_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let issuer = Issuer::new();
        let key = nkeys::KeyPair::new_user();
        stage(&paths, &issuer, &key, false);
        // Incomplete: not enrolled, and loading cleans up.
        assert!(!is_enrolled(&paths));
        assert!(matches!(load(&paths), Err(StoreError::NotEnrolled { .. })));
        assert!(staged_files(&paths).is_empty());
        // Complete: enrolled, and loading finishes it.
        stage(&paths, &issuer, &key, true);
        assert_eq!(enrolled_file(&paths), Some(staged(&paths.seed_file())));
        assert_eq!(
            load(&paths).unwrap().credentials.public_key(),
            key.public_key()
        );
        assert_eq!(enrolled_file(&paths), Some(paths.config_file()));
    }

    #[test]
    fn not_enrolled_says_how_to_enroll() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        assert!(!is_enrolled(&paths));
        let e = load(&paths).unwrap_err();
        assert!(matches!(e, StoreError::NotEnrolled { .. }));
        assert!(e.to_string().contains("wegweiser-agent enroll"), "{e}");
    }
}
