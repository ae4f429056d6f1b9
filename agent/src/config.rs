//! `agent.toml`: what enrollment learned, plus the few settings an administrator may change.
//!
//! ```toml
//! control_plane_url = "https://cp.example.net"
//! tenant = "acme-it"
//! device_id = "d7q2…"
//! account = "AB…"
//! nats_urls = ["tls://nats.example.net:4222"]
//! heartbeat_secs = 30
//! rotate_key_on_renew = false
//! # Signed command kinds this device accepts. Default: every kind except "run".
//! allowed_commands = ["ping", "collect", "set_intervals", "renew", "restart", "processes"]
//! ```
//!
//! `allowed_commands` is local policy, checked after a command's signature, binding, time window
//! and replay check: the control plane cannot widen it. Kinds: `ping`, `collect`,
//! `set_intervals`, `renew`, `restart`, `processes` and `run` (a shell command: add it only on
//! devices where the MSP's technicians may run scripts as the agent's user, root for the
//! service).
//!
//! Unknown keys are refused (a typo must not silently fall back to a default), and every problem
//! is reported at once.

use serde::{Deserialize, Serialize};
use std::path::Path;
use wegweiser_shared::{
    command::Command,
    ids::{AccountKey, DeviceId, TenantId},
};

/// Default seconds between heartbeats.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;
/// Largest accepted `heartbeat_secs` (one day).
pub const MAX_HEARTBEAT_SECS: u64 = 86_400;
/// Largest accepted `agent.toml`.
pub const MAX_CONFIG_LEN: u64 = 64 * 1024;
/// Command kinds allowed when `allowed_commands` is not set: all but `run`.
pub const DEFAULT_ALLOWED_COMMANDS: [&str; 6] = [
    "ping",
    "collect",
    "set_intervals",
    "renew",
    "restart",
    "processes",
];

/// Why `agent.toml` could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is not valid TOML for this structure (syntax, unknown key, bad id).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The values parse but some are unusable.
    #[error("{path} has problems:\n  - {}", problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of the control plane (`https://…`), used for enrollment.
    pub control_plane_url: String,
    /// The tenant this device belongs to.
    pub tenant: TenantId,
    /// This device's id (its JWT name and subject token).
    pub device_id: DeviceId,
    /// The tenant's NATS account.
    pub account: AccountKey,
    /// NATS servers (`tls://host:port`), tried in random order.
    pub nats_urls: Vec<String>,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// Whether each renewal also moves the device to a new key.
    #[serde(default)]
    pub rotate_key_on_renew: bool,
    /// Seconds between metrics reports (default 60).
    #[serde(default = "default_metrics_secs")]
    pub metrics_secs: u64,
    /// Seconds between checks whether the inventory changed (default 3600; it is also sent at
    /// start and every 24 h).
    #[serde(default = "default_inventory_check_secs")]
    pub inventory_check_secs: u64,
    /// Signed command kinds this device accepts; `None` means
    /// [`DEFAULT_ALLOWED_COMMANDS`] (every kind except `run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_commands: Option<Vec<String>>,
}

fn default_heartbeat_secs() -> u64 {
    DEFAULT_HEARTBEAT_SECS
}

/// Default of `metrics_secs`.
pub fn default_metrics_secs() -> u64 {
    60
}

/// Default of `inventory_check_secs`.
pub fn default_inventory_check_secs() -> u64 {
    3600
}

impl AgentConfig {
    /// The command kinds this device accepts.
    pub fn allowed_commands(&self) -> Vec<String> {
        match &self.allowed_commands {
            Some(kinds) => kinds.clone(),
            None => DEFAULT_ALLOWED_COMMANDS.map(str::to_owned).to_vec(),
        }
    }

    /// Every problem with these values; empty when usable.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for kind in self.allowed_commands.iter().flatten() {
            if !Command::KINDS.contains(&kind.as_str()) {
                p.push(format!(
                    "allowed_commands: unknown command kind {kind:?} (known: {})",
                    Command::KINDS.join(", ")
                ));
            }
        }
        if !self.control_plane_url.starts_with("https://") {
            p.push("control_plane_url must start with https://".to_owned());
        }
        if !(1..=86_400).contains(&self.metrics_secs) {
            p.push("metrics_secs must be between 1 and 86400".to_owned());
        }
        if !(1..=86_400).contains(&self.inventory_check_secs) {
            p.push("inventory_check_secs must be between 1 and 86400".to_owned());
        }
        if self.nats_urls.is_empty() {
            p.push("nats_urls is empty; enroll again or add the NATS server URLs".to_owned());
        }
        for url in &self.nats_urls {
            let scheme_ok = url.starts_with("tls://") || url.starts_with("nats://");
            if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                p.push(format!(
                    "nats_urls entry {url:?} must look like tls://host:port (TLS is always required)"
                ));
            }
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > MAX_HEARTBEAT_SECS {
            p.push(format!(
                "heartbeat_secs must be between 1 and {MAX_HEARTBEAT_SECS}"
            ));
        }
        p
    }

    /// Parses and checks `text`; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                problems,
            });
        }
        Ok(config)
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_LEN {
            return Err(ConfigError::Parse {
                path: path.display().to_string(),
                message: format!("file is {len} bytes; at most {MAX_CONFIG_LEN} are allowed"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, path)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        // Every field is a string, a list of strings, an integer or a bool: this cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = format!(
            "# Written by `wegweiser-agent enroll`. heartbeat_secs, metrics_secs, inventory_check_secs,\n# rotate_key_on_renew and allowed_commands may be edited.\n{}",
            self.to_toml()
        );
        crate::platform::write_atomic(path, text.as_bytes()).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentConfig {
        AgentConfig {
            control_plane_url: "https://cp.example.net".into(),
            tenant: "acme-it".parse().unwrap(),
            device_id: "dev-1".parse().unwrap(),
            account: nkeys::KeyPair::new_account().public_key().parse().unwrap(),
            nats_urls: vec!["tls://127.0.0.1:4222".into()],
            heartbeat_secs: 30,
            rotate_key_on_renew: false,
            metrics_secs: 60,
            inventory_check_secs: 3600,
            allowed_commands: None,
        }
    }

    #[test]
    fn run_is_off_unless_allowed() {
        let mut c = sample();
        assert!(!c.allowed_commands().contains(&"run".to_owned()));
        assert!(c.allowed_commands().contains(&"ping".to_owned()));
        // Not written when not set, so a later default applies.
        assert!(!c.to_toml().contains("allowed_commands"));
        c.allowed_commands = Some(vec!["ping".into(), "run".into()]);
        let parsed = AgentConfig::parse(&c.to_toml(), Path::new("agent.toml")).unwrap();
        assert_eq!(parsed.allowed_commands(), ["ping", "run"]);
        c.allowed_commands = Some(vec!["rm_rf".into()]);
        let e = AgentConfig::parse(&c.to_toml(), Path::new("agent.toml")).unwrap_err();
        assert!(e.to_string().contains("rm_rf"), "{e}");
    }

    #[test]
    fn round_trips_through_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.toml");
        let c = sample();
        c.save(&path).unwrap();
        assert_eq!(AgentConfig::load(&path).unwrap(), c);
    }

    #[test]
    fn defaults_apply_and_unknown_fields_are_refused() {
        let c = sample();
        let minimal = format!(
            "control_plane_url = \"https://cp\"\ntenant = \"acme-it\"\ndevice_id = \"dev-1\"\naccount = \"{}\"\nnats_urls = [\"tls://h:4222\"]\n",
            c.account
        );
        let parsed = AgentConfig::parse(&minimal, Path::new("agent.toml")).unwrap();
        assert_eq!(parsed.heartbeat_secs, DEFAULT_HEARTBEAT_SECS);
        assert!(!parsed.rotate_key_on_renew);
        let typo = format!("{minimal}hearbeat_secs = 5\n");
        let e = AgentConfig::parse(&typo, Path::new("agent.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("hearbeat_secs"), "{e}");
        let bad_id = minimal.replace("dev-1", "dev.*");
        assert!(AgentConfig::parse(&bad_id, Path::new("agent.toml")).is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let mut c = sample();
        c.control_plane_url = "http://cp".into();
        c.nats_urls = vec!["ws://h".into()];
        c.heartbeat_secs = 0;
        let e = AgentConfig::parse(&c.to_toml(), Path::new("agent.toml")).unwrap_err();
        match e {
            ConfigError::Invalid { problems, .. } => assert_eq!(problems.len(), 3, "{problems:?}"),
            other => panic!("{other}"),
        }
        c.nats_urls.clear();
        assert!(
            c.problems()
                .iter()
                .any(|p| p.contains("nats_urls is empty"))
        );
    }
}
