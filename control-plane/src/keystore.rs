//! The keystore: a directory (mode 0700) of key files (mode 0600) that only the control
//! plane's user can read.
//!
//! | file | what | needed by |
//! |---|---|---|
//! | `operator.nk` | operator identity seed: signs the operator JWT only | `init` (can be moved offline after) |
//! | `operator-signing.nk` | operator signing key: signs every account JWT | `serve`, tenant operations |
//! | `system-account.nk`, `system-signing.nk` | system account and its signing key | push and inspection users |
//! | `cp-account.nk`, `cp-signing.nk` | control-plane account and its signing key | the service user |
//! | `master.key` | 32 random bytes (base64) sealing tenant secrets in KV | unless `WEGWEISER_MASTER_KEY` is set |
//!
//! A keystore that group or others can read is refused, and existing keys are never
//! overwritten: [`Keystore::load_or_create_seed`] keeps what is there.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};
use wegweiser_shared::secret::SecretString;

/// Environment variable that supplies the master key (base64 of 32 bytes) instead of the file.
pub const ENV_MASTER_KEY: &str = "WEGWEISER_MASTER_KEY";

/// What went wrong with the keystore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The directory or a file can be read by group or others.
    #[error(
        "{path} is readable by other users (mode {mode:o}); run `chmod {want:o} {path}` and make sure no one else copied it"
    )]
    TooOpen {
        /// The path.
        path: String,
        /// Its mode.
        mode: u32,
        /// The mode it should have.
        want: u32,
    },
    /// A key file is missing.
    #[error(
        "{path} is missing: run `wegweiser init` first (or point --data-dir at the right place)"
    )]
    Missing {
        /// The path.
        path: String,
    },
    /// A key file does not hold a valid key.
    #[error("{path} does not hold a valid {what}; restore it from your backup")]
    Invalid {
        /// The path.
        path: String,
        /// What it should hold.
        what: &'static str,
    },
    /// Reading or writing failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Which kind of nkey a seed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedKind {
    /// `SO…`
    Operator,
    /// `SA…`
    Account,
}

impl SeedKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Operator => "SO",
            Self::Account => "SA",
        }
    }
    fn generate(self) -> nkeys::KeyPair {
        match self {
            Self::Operator => nkeys::KeyPair::new_operator(),
            Self::Account => nkeys::KeyPair::new_account(),
        }
    }
}

/// Key file names.
pub mod files {
    /// Operator identity seed.
    pub const OPERATOR: &str = "operator.nk";
    /// Operator signing seed.
    pub const OPERATOR_SIGNING: &str = "operator-signing.nk";
    /// System account identity seed.
    pub const SYSTEM_ACCOUNT: &str = "system-account.nk";
    /// System account signing seed.
    pub const SYSTEM_SIGNING: &str = "system-signing.nk";
    /// Control-plane account identity seed.
    pub const CP_ACCOUNT: &str = "cp-account.nk";
    /// Control-plane account signing seed.
    pub const CP_SIGNING: &str = "cp-signing.nk";
    /// Master key.
    pub const MASTER_KEY: &str = "master.key";
}

/// An opened keystore directory.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    /// Creates the directory (0700) if needed, then opens it.
    pub fn create(dir: &Path) -> Result<Self, KeystoreError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io(dir))?;
            set_mode(dir, 0o700)?;
        }
        Self::open(dir)
    }

    /// Opens an existing keystore, refusing one that others can read.
    pub fn open(dir: &Path) -> Result<Self, KeystoreError> {
        if !dir.is_dir() {
            return Err(KeystoreError::Missing {
                path: dir.display().to_string(),
            });
        }
        check_private(dir, 0o700)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads a seed, or creates and stores a new one if the file does not exist.
    /// Returns the key pair and whether it was created now.
    pub fn load_or_create_seed(
        &self,
        name: &str,
        kind: SeedKind,
    ) -> Result<(nkeys::KeyPair, bool), KeystoreError> {
        let path = self.dir.join(name);
        if path.exists() {
            return Ok((self.load_seed(name, kind)?, false));
        }
        let kp = kind.generate();
        let seed = SecretString::new(kp.seed().map_err(|_| KeystoreError::Invalid {
            path: path.display().to_string(),
            what: "seed",
        })?);
        write_new_private(&path, seed.expose().as_bytes())?;
        Ok((kp, true))
    }

    /// Loads a seed file.
    pub fn load_seed(&self, name: &str, kind: SeedKind) -> Result<nkeys::KeyPair, KeystoreError> {
        let path = self.dir.join(name);
        let text = read_private(&path)?;
        let seed = text.expose().trim();
        let invalid = || KeystoreError::Invalid {
            path: path.display().to_string(),
            what: match kind {
                SeedKind::Operator => "operator nkey seed",
                SeedKind::Account => "account nkey seed",
            },
        };
        if !seed.starts_with(kind.prefix()) {
            return Err(invalid());
        }
        nkeys::KeyPair::from_seed(seed).map_err(|_| invalid())
    }

    /// Creates the master key file unless it exists. Returns whether it was created now.
    pub fn create_master_key_file(&self) -> Result<bool, KeystoreError> {
        let path = self.dir.join(files::MASTER_KEY);
        if path.exists() {
            return Ok(false);
        }
        let key: [u8; 32] = rand::random();
        let text = zeroize::Zeroizing::new(
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key) + "\n",
        );
        write_new_private(&path, text.as_bytes())?;
        Ok(true)
    }

    /// Reads the master key: the environment variable if set, else `master.key`.
    pub fn master_key(&self, env: Option<&str>) -> Result<crate::seal::MasterKey, KeystoreError> {
        if let Some(value) = env {
            return crate::seal::MasterKey::from_base64(value).ok_or(KeystoreError::Invalid {
                path: format!("${ENV_MASTER_KEY}"),
                what: "master key (base64 of 32 bytes)",
            });
        }
        let path = self.dir.join(files::MASTER_KEY);
        let text = read_private(&path)?;
        crate::seal::MasterKey::from_base64(text.expose().trim()).ok_or(KeystoreError::Invalid {
            path: path.display().to_string(),
            what: "master key (base64 of 32 bytes)",
        })
    }
}

/// Reads a file that must be private (0600) and returns its content as a secret.
pub fn read_private(path: &Path) -> Result<SecretString, KeystoreError> {
    if !path.exists() {
        return Err(KeystoreError::Missing {
            path: path.display().to_string(),
        });
    }
    check_private(path, 0o600)?;
    let text = fs::read_to_string(path).map_err(io(path))?;
    Ok(SecretString::new(text))
}

/// Writes a new private file (0600); refuses to overwrite an existing one.
pub fn write_new_private(path: &Path, content: &[u8]) -> Result<(), KeystoreError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(content).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

/// Writes (or replaces) a private file (0600) atomically: temp file, fsync, rename.
pub fn write_private(path: &Path, content: &[u8]) -> Result<(), KeystoreError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_new_private(&tmp, content)?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), KeystoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), KeystoreError> {
    Ok(())
}

#[cfg(unix)]
fn check_private(path: &Path, want: u32) -> Result<(), KeystoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeystoreError::TooOpen {
            path: path.display().to_string(),
            mode,
            want,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _want: u32) -> Result<(), KeystoreError> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_private_files_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let ks = Keystore::create(&tmp.path().join("keys")).unwrap();
        let mode = fs::metadata(ks.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let (a, created) = ks.load_or_create_seed("x.nk", SeedKind::Account).unwrap();
        assert!(created);
        let mode = fs::metadata(ks.dir().join("x.nk"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = ks.load_or_create_seed("x.nk", SeedKind::Account).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        assert!(write_new_private(&ks.dir().join("x.nk"), b"overwrite").is_err());
    }

    #[test]
    fn refuses_readable_keystores_and_wrong_seeds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let ks = Keystore::create(&dir).unwrap();
        ks.load_or_create_seed("op.nk", SeedKind::Operator).unwrap();
        // Wrong kind of seed.
        let e = ks.load_seed("op.nk", SeedKind::Account).unwrap_err();
        assert!(e.to_string().contains("account nkey seed"), "{e}");
        // A file others can read.
        fs::set_permissions(dir.join("op.nk"), fs::Permissions::from_mode(0o644)).unwrap();
        let e = ks.load_seed("op.nk", SeedKind::Operator).unwrap_err();
        assert!(matches!(e, KeystoreError::TooOpen { .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // A directory others can read.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let e = Keystore::open(&dir).unwrap_err();
        assert!(e.to_string().contains("chmod 700"), "{e}");
        // The error never carries the seed.
        assert!(!e.to_string().contains("SO"));
        // Garbage seed.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        write_new_private(&dir.join("bad.nk"), b"SAnotaseed").unwrap();
        assert!(matches!(
            ks.load_seed("bad.nk", SeedKind::Account),
            Err(KeystoreError::Invalid { .. })
        ));
    }
}
