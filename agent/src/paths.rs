//! Where the agent keeps its files.
//!
//! | location | chosen by | config (`agent.toml`) | secrets and state |
//! |---|---|---|---|
//! | one directory | `--state-dir DIR` or `WEGWEISER_AGENT_STATE_DIR` | `DIR` | `DIR` |
//! | system (service) | `--system` | `/etc/wegweiser` (Windows: `%ProgramData%\Wegweiser`) | `/var/lib/wegweiser` (Windows: the same) |
//! | per user (default) | nothing | `directories` config dir (`~/.config/wegweiser`) | data dir (`~/.local/share/wegweiser`) |
//!
//! Files: `agent.toml`, `device.nk` (seed, owner-only), `device.jwt` (owner-only), `nats-ca.pem`,
//! `status.json` (written by `run`), `run.lock` (held by the running agent), `device.nk.next` (the
//! pending key of a key rotation, owner-only), `trust.json` (the pinned command trust root and
//! keyset, owner-only), `commands.seen` (the replay cache of command ids, owner-only), and while an enrollment is being stored the same
//! names with `.new` appended (see [`crate::store`]).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

/// Environment variable naming the state directory (same as `--state-dir`).
pub const ENV_STATE_DIR: &str = "WEGWEISER_AGENT_STATE_DIR";
/// The configuration file.
pub const CONFIG_FILE: &str = "agent.toml";
/// The device's nkey seed.
pub const SEED_FILE: &str = "device.nk";
/// A new seed during key rotation, until the JWT issued for it is stored.
pub const NEXT_SEED_FILE: &str = "device.nk.next";
/// The device's user JWT.
pub const JWT_FILE: &str = "device.jwt";
/// The CA that signed nats-server's certificate.
pub const CA_FILE: &str = "nats-ca.pem";
/// What `run` reports about itself.
pub const STATUS_FILE: &str = "status.json";
/// Held (locked) by the running agent, so two cannot run on the same identity.
pub const LOCK_FILE: &str = "run.lock";
/// The offline spool's directory, in the state directory.
pub const SPOOL_DIR: &str = "spool";
/// The trusted command root and keyset ([`wegweiser_shared::trust::TrustState::saved`]).
pub const TRUST_FILE: &str = "trust.json";
/// Ids of the commands seen and not yet expired (the replay cache).
pub const REPLAY_FILE: &str = "commands.seen";

/// Why no location could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathsError {
    /// Both `--system` and a state directory were given.
    #[error("--system and --state-dir (or {ENV_STATE_DIR}) exclude each other; give one of them")]
    Conflict,
    /// No home directory to put per-user files in.
    #[error("cannot find a home directory for per-user files; use --state-dir DIR or --system")]
    NoHome,
}

/// Which location the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Everything in one directory.
    Dir(PathBuf),
    /// The machine-wide service location.
    System,
    /// The current user's directories.
    User,
}

impl Location {
    /// The location the flags select; `state_dir` already includes the environment variable.
    pub fn from_flags(state_dir: Option<PathBuf>, system: bool) -> Result<Self, PathsError> {
        match (state_dir, system) {
            (Some(_), true) => Err(PathsError::Conflict),
            (Some(dir), false) => Ok(Self::Dir(dir)),
            (None, true) => Ok(Self::System),
            (None, false) => Ok(Self::User),
        }
    }
}

/// The agent's directories and the files in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    config_dir: PathBuf,
    state_dir: PathBuf,
}

impl Paths {
    /// The paths of `location` on this machine.
    pub fn resolve(location: &Location) -> Result<Self, PathsError> {
        match location {
            // Absolute, so printed hints and service files work from any directory.
            Location::Dir(dir) => Ok(Self::in_dir(
                std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            )),
            Location::System => Ok(Self::system_for(
                std::env::consts::OS,
                std::env::var_os("ProgramData"),
            )),
            Location::User => Self::user(),
        }
    }

    /// Everything in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            config_dir: dir.clone(),
            state_dir: dir,
        }
    }

    /// The system location for operating system `os` (`std::env::consts::OS`), given the value
    /// of `%ProgramData%` (Windows only; `C:\ProgramData` when unset).
    pub fn system_for(os: &str, program_data: Option<OsString>) -> Self {
        if os == "windows" {
            let base = program_data
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"));
            Self::in_dir(base.join("Wegweiser"))
        } else {
            Self {
                config_dir: PathBuf::from("/etc/wegweiser"),
                state_dir: PathBuf::from("/var/lib/wegweiser"),
            }
        }
    }

    /// The current user's directories (`directories::ProjectDirs`).
    pub fn user() -> Result<Self, PathsError> {
        let dirs = directories::ProjectDirs::from("", "", "wegweiser").ok_or(PathsError::NoHome)?;
        Ok(Self {
            config_dir: dirs.config_dir().to_owned(),
            state_dir: dirs.data_dir().to_owned(),
        })
    }

    /// Creates both directories (0700 on Unix) when missing.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        crate::platform::create_private_dir(&self.config_dir)?;
        crate::platform::create_private_dir(&self.state_dir)
    }

    /// The directory of `agent.toml`.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The directory of the secrets and the state.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `agent.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join(CONFIG_FILE)
    }

    /// `device.nk`.
    pub fn seed_file(&self) -> PathBuf {
        self.state_dir.join(SEED_FILE)
    }

    /// `device.nk.next`.
    pub fn next_seed_file(&self) -> PathBuf {
        self.state_dir.join(NEXT_SEED_FILE)
    }

    /// `device.jwt`.
    pub fn jwt_file(&self) -> PathBuf {
        self.state_dir.join(JWT_FILE)
    }

    /// `nats-ca.pem`.
    pub fn ca_file(&self) -> PathBuf {
        self.state_dir.join(CA_FILE)
    }

    /// `status.json`.
    pub fn status_file(&self) -> PathBuf {
        self.state_dir.join(STATUS_FILE)
    }

    /// `run.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join(LOCK_FILE)
    }

    /// The offline spool of reports not yet acknowledged (a directory).
    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join(SPOOL_DIR)
    }

    /// `trust.json`.
    pub fn trust_file(&self) -> PathBuf {
        self.state_dir.join(TRUST_FILE)
    }

    /// `commands.seen`.
    pub fn replay_file(&self) -> PathBuf {
        self.state_dir.join(REPLAY_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_select_one_location() {
        let d = PathBuf::from("/tmp/x");
        assert_eq!(
            Location::from_flags(Some(d.clone()), false),
            Ok(Location::Dir(d.clone()))
        );
        assert_eq!(Location::from_flags(None, true), Ok(Location::System));
        assert_eq!(Location::from_flags(None, false), Ok(Location::User));
        assert_eq!(
            Location::from_flags(Some(d), true),
            Err(PathsError::Conflict)
        );
    }

    #[test]
    fn state_dir_holds_everything() {
        let p = Paths::resolve(&Location::Dir("/srv/agent".into())).unwrap();
        // Absolute on every platform (on Windows `/srv/agent` is on the current drive).
        let base = std::path::absolute("/srv/agent").unwrap();
        assert_eq!(p.config_file(), base.join("agent.toml"));
        assert_eq!(p.seed_file(), base.join("device.nk"));
        assert_eq!(p.next_seed_file(), base.join("device.nk.next"));
        assert_eq!(p.jwt_file(), base.join("device.jwt"));
        assert_eq!(p.ca_file(), base.join("nats-ca.pem"));
        assert_eq!(p.status_file(), base.join("status.json"));
        assert_eq!(p.spool_dir(), base.join("spool"));
        assert_eq!(p.trust_file(), base.join("trust.json"));
        assert_eq!(p.replay_file(), base.join("commands.seen"));
    }

    #[test]
    fn system_locations() {
        let linux = Paths::system_for("linux", None);
        assert_eq!(linux.config_file(), Path::new("/etc/wegweiser/agent.toml"));
        assert_eq!(linux.seed_file(), Path::new("/var/lib/wegweiser/device.nk"));
        let win = Paths::system_for("windows", Some(OsString::from("D:\\Data")));
        assert_eq!(
            win.config_dir(),
            PathBuf::from("D:\\Data").join("Wegweiser")
        );
        assert_eq!(win.state_dir(), win.config_dir());
        let default = Paths::system_for("windows", None);
        assert_eq!(
            default.config_dir(),
            PathBuf::from(r"C:\ProgramData").join("Wegweiser")
        );
    }

    #[test]
    fn user_location_uses_project_dirs() {
        // HOME is set on CI and developer machines; ProjectDirs then always answers.
        if let Ok(p) = Paths::user() {
            // `…/wegweiser` on Linux, `…\\wegweiser\\config` and `…\\data` on Windows.
            let named = |d: &Path| d.components().any(|c| c.as_os_str() == "wegweiser");
            assert!(named(p.config_dir()), "{p:?}");
            assert!(named(p.state_dir()), "{p:?}");
            if cfg!(target_os = "linux") {
                assert_ne!(p.config_dir(), p.state_dir());
            }
        }
    }
}
