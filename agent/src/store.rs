//! The device's credentials on disk, and loading a whole enrollment.
//!
//! The seed (`device.nk`) and the JWT (`device.jwt`) are written owner-only and atomically. A seed
//! that group or others can read is refused. Key rotation writes the new seed to
//! `device.nk.next` first, then the JWT issued for it, then renames `device.nk.next` over
//! `device.nk`; [`load`] finishes a rotation that was interrupted between the last two steps, so
//! a crash never leaves a JWT without its key.

use crate::{
    config::{AgentConfig, ConfigError},
    paths::Paths,
    platform,
};
use std::{fmt, fs, path::Path, sync::Arc};
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
        "{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` and enroll again if someone else may have copied it"
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
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

/// Whether anything of an enrollment exists at `paths`.
pub fn is_enrolled(paths: &Paths) -> bool {
    paths.config_file().exists() || paths.seed_file().exists()
}

/// Loads and checks everything `run` needs. Finishes an interrupted key rotation.
pub fn load(paths: &Paths) -> Result<Enrollment, StoreError> {
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
                // A rotation stopped before its JWT was stored: the old pair is still valid.
                fs::remove_file(&next_file).map_err(io(&next_file))?;
                tracing::warn!(file = %next_file.display(), "Removed the key of an unfinished rotation.");
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

/// Reads a user seed, refusing a file that group or others can read (Unix).
pub fn load_seed(path: &Path) -> Result<nkeys::KeyPair, StoreError> {
    if path.exists()
        && let Some(mode) = platform::too_open(path).map_err(io(path))?
    {
        return Err(StoreError::TooOpen {
            path: path.display().to_string(),
            mode,
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

/// Stores renewed credentials. With a new key (rotation): the seed goes to `device.nk.next`
/// first, then the JWT, then `device.nk.next` replaces `device.nk`.
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
        assert!(matches!(e, StoreError::TooOpen { mode: 0o640, .. }), "{e}");
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
    fn interrupted_rotations_are_finished_or_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let issuer = Issuer::new();
        let old = nkeys::KeyPair::new_user();
        let enrollment = issuer.enroll(&paths, &old);
        let loaded = load(&paths).unwrap();
        assert_eq!(loaded.credentials.public_key(), old.public_key());
        assert_eq!(loaded.config, enrollment.config);

        // Crash after the new seed, before the JWT: the old pair stays, the new seed goes.
        let new = nkeys::KeyPair::new_user();
        save_seed(&paths.next_seed_file(), &new).unwrap();
        assert_eq!(
            load(&paths).unwrap().credentials.public_key(),
            old.public_key()
        );
        assert!(!paths.next_seed_file().exists());

        // Crash after the JWT, before the rename: the new pair is completed.
        save_seed(&paths.next_seed_file(), &new).unwrap();
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
