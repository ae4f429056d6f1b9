//! The control plane's configuration: `<data-dir>/wegweiser.toml`, then environment overrides.
//!
//! Every problem is reported at once; the binary exits with code 64 (EX_USAGE) on bad config.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Environment variable naming the data directory.
pub const ENV_DATA_DIR: &str = "WEGWEISER_DATA_DIR";
/// Environment override of `nats_url`.
pub const ENV_NATS_URL: &str = "WEGWEISER_NATS_URL";
/// Environment override of `nats_ca`.
pub const ENV_NATS_CA: &str = "WEGWEISER_NATS_CA";
/// The config file's name inside the data directory.
pub const CONFIG_FILE: &str = "wegweiser.toml";
/// The shortest user JWT lifetime the configuration may set (10 s: for tests of renewal).
pub const MIN_JWT_TTL_SECS: i64 = 10;
/// The longest user JWT lifetime the configuration may allow (30 days).
pub const MAX_JWT_TTL_SECS: i64 = 30 * 24 * 3600;

/// The default data directory (relative to the working directory) for local runs.
pub const DEFAULT_DATA_DIR: &str = ".wegweiser";

/// Limits a new tenant's NATS account gets unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Concurrent connections (devices + technicians).
    pub max_connections: i64,
    /// Subscriptions across the account.
    pub max_subscriptions: i64,
    /// Largest message payload in bytes.
    pub max_payload: i64,
    /// JetStream disk storage in the tenant's own account, bytes (0 = JetStream off there;
    /// telemetry is stored in the control-plane account).
    pub jetstream_disk: i64,
    /// JetStream memory storage in the tenant's own account, bytes (0 = off).
    pub jetstream_memory: i64,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_subscriptions: 1_000_000,
            max_payload: 1024 * 1024,
            jetstream_disk: 0,
            jetstream_memory: 0,
        }
    }
}

impl TenantLimits {
    /// Every problem with these limits.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let check = |p: &mut Vec<String>, name: &str, v: i64, min: i64| {
            if v != -1 && v < min {
                p.push(format!(
                    "{name} must be -1 (unlimited) or at least {min}, not {v}"
                ));
            }
        };
        check(&mut p, "max_connections", self.max_connections, 1);
        check(&mut p, "max_subscriptions", self.max_subscriptions, 1);
        check(&mut p, "max_payload", self.max_payload, 1024);
        check(&mut p, "jetstream_disk", self.jetstream_disk, 0);
        check(&mut p, "jetstream_memory", self.jetstream_memory, 0);
        p
    }
}

/// `wegweiser.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS server URL(s), comma-separated (`nats://…` or `tls://…`).
    pub nats_url: String,
    /// CA certificate (PEM) to verify the NATS server's TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_ca: Option<PathBuf>,
    /// Lifetime of device user JWTs, seconds (default 24 h).
    #[serde(default = "default_device_ttl")]
    pub device_jwt_ttl_secs: i64,
    /// Lifetime of technician user JWTs, seconds (default 8 h).
    #[serde(default = "default_technician_ttl")]
    pub technician_jwt_ttl_secs: i64,
    /// Replicas of the control plane's KV buckets (1 for a single server, 3 for a cluster).
    #[serde(default = "default_replicas")]
    pub kv_replicas: usize,
    /// Limits of new tenants.
    #[serde(default)]
    pub tenant_defaults: TenantLimits,
    /// How long device reports are kept in the telemetry history, days.
    #[serde(default = "default_retention_days")]
    pub telemetry_retention_days: u64,
    /// Shortest time between two renewals of one device, seconds (capped at a quarter of the
    /// device JWT lifetime).
    #[serde(default = "default_renew_min_interval")]
    pub renew_min_interval_secs: i64,
    /// NATS URLs handed to devices at enrollment (default: `nats_url`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nats_urls: Vec<String>,
    /// The HTTPS server (enrollment, health, metrics); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
    /// Enrollment policy: token defaults, rate limits, blocking, allow and deny lists.
    #[serde(default)]
    pub enrollment: EnrollmentConfig,
    /// Signed commands: keyset lifetime, rotation grace, command lifetime.
    #[serde(default)]
    pub trust: TrustConfig,
    /// API users, sessions, API tokens, login protection.
    #[serde(default)]
    pub auth: crate::users::AuthConfig,
}

/// `[trust]`: command keys and signed commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Lifetime of a signed keyset, seconds (default 30 days); re-signed at half of it.
    #[serde(default = "default_keyset_ttl")]
    pub keyset_ttl_secs: i64,
    /// Longest wait in a command key rotation for online devices to report the new keyset
    /// before signing with the new key anyway, seconds (default 1 h).
    #[serde(default = "default_rotation_grace")]
    pub rotation_grace_secs: i64,
    /// Lifetime of a signed command, seconds (default 300, at most 900).
    #[serde(default = "default_command_lifetime")]
    pub command_lifetime_secs: i64,
    /// How often the trust driver checks rotations and expiry, seconds (default 10).
    #[serde(default = "default_trust_check")]
    pub check_secs: u64,
}

fn default_keyset_ttl() -> i64 {
    30 * 86_400
}
fn default_rotation_grace() -> i64 {
    3600
}
fn default_command_lifetime() -> i64 {
    wegweiser_shared::command::DEFAULT_LIFETIME_SECS
}
fn default_trust_check() -> u64 {
    10
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            keyset_ttl_secs: default_keyset_ttl(),
            rotation_grace_secs: default_rotation_grace(),
            command_lifetime_secs: default_command_lifetime(),
            check_secs: default_trust_check(),
        }
    }
}

impl TrustConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(60..=365 * 86_400).contains(&self.keyset_ttl_secs) {
            p.push("trust.keyset_ttl_secs must be 60..=31536000".to_owned());
        }
        if !(0..=30 * 86_400).contains(&self.rotation_grace_secs) {
            p.push("trust.rotation_grace_secs must be 0..=2592000".to_owned());
        }
        if !(10..=wegweiser_shared::command::MAX_LIFETIME_SECS)
            .contains(&self.command_lifetime_secs)
        {
            p.push(format!(
                "trust.command_lifetime_secs must be 10..={}",
                wegweiser_shared::command::MAX_LIFETIME_SECS
            ));
        }
        if !(1..=3600).contains(&self.check_secs) {
            p.push("trust.check_secs must be 1..=3600".to_owned());
        }
        p
    }
}

/// `[http]`: the control plane's HTTPS server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `127.0.0.1:8443`.
    pub listen: std::net::SocketAddr,
    /// Server certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// Server private key (PEM).
    pub tls_key: PathBuf,
    /// The URL agents and technicians use to reach this server.
    pub public_url: String,
    /// Addresses allowed to read `/metrics` (default: loopback only).
    #[serde(default = "loopback")]
    pub metrics_allow: Vec<ipnet::IpNet>,
}

impl HttpConfig {
    /// Loopback only.
    pub fn default_metrics_allow() -> Vec<ipnet::IpNet> {
        loopback()
    }
}

fn loopback() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `[enrollment]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentConfig {
    /// Default lifetime of a new enrollment token, seconds.
    pub token_ttl_secs: i64,
    /// Requests per minute one address may make to the enrollment endpoint.
    pub rate_per_minute: u32,
    /// Requests one address may make in a burst.
    pub burst: u32,
    /// Failed enrollments from one address, within `failure_window_secs`, that block it.
    pub max_failures: u32,
    /// Window in which failures are counted, seconds.
    pub failure_window_secs: i64,
    /// How long a block lasts, seconds.
    pub block_secs: i64,
    /// Addresses or networks never rate-limited or blocked.
    pub allow: Vec<ipnet::IpNet>,
    /// Addresses or networks always refused.
    pub deny: Vec<ipnet::IpNet>,
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: 24 * 3600,
            rate_per_minute: 120,
            burst: 30,
            max_failures: 10,
            failure_window_secs: 600,
            block_secs: 900,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

fn default_device_ttl() -> i64 {
    24 * 3600
}
fn default_technician_ttl() -> i64 {
    8 * 3600
}
fn default_retention_days() -> u64 {
    30
}
fn default_renew_min_interval() -> i64 {
    30
}
fn default_replicas() -> usize {
    1
}

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing.
    #[error(
        "{0} not found: run `wegweiser init` first, or pass --data-dir / set WEGWEISER_DATA_DIR"
    )]
    Missing(String),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path} is not valid: {message}")]
    Parse {
        /// The path.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// Values are out of range.
    #[error("{path} has {} problem(s):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Invalid {
        /// The path.
        path: String,
        /// Every problem found.
        problems: Vec<String>,
    },
}

impl Config {
    /// The configuration `init` writes for a server listening on `nats_url`.
    pub fn new(nats_url: String, nats_ca: Option<PathBuf>) -> Self {
        Self {
            nats_url,
            nats_ca,
            device_jwt_ttl_secs: default_device_ttl(),
            technician_jwt_ttl_secs: default_technician_ttl(),
            kv_replicas: 1,
            tenant_defaults: TenantLimits::default(),
            renew_min_interval_secs: default_renew_min_interval(),
            telemetry_retention_days: default_retention_days(),
            device_nats_urls: Vec::new(),
            http: None,
            enrollment: EnrollmentConfig::default(),
            trust: TrustConfig::default(),
            auth: Default::default(),
        }
    }

    /// The NATS URLs devices get.
    pub fn device_urls(&self) -> Vec<String> {
        if self.device_nats_urls.is_empty() {
            self.nats_url
                .split(',')
                .map(|u| u.trim().to_owned())
                .collect()
        } else {
            self.device_nats_urls.clone()
        }
    }

    /// Loads `<data_dir>/wegweiser.toml`, applies environment overrides, validates.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(ConfigError::Missing(shown));
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        cfg.apply_env(|k| std::env::var(k).ok());
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: shown,
                problems,
            });
        }
        Ok(cfg)
    }

    /// Applies environment overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(url) = get(ENV_NATS_URL) {
            self.nats_url = url;
        }
        if let Some(ca) = get(ENV_NATS_CA) {
            self.nats_ca = Some(PathBuf::from(ca));
        }
    }

    /// Every problem with this configuration.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.nats_url.trim().is_empty() {
            p.push("nats_url is empty".to_owned());
        }
        for url in self.nats_url.split(',') {
            let url = url.trim();
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                p.push(format!(
                    "nats_url entry {url:?} must start with nats:// or tls://"
                ));
            }
        }
        if let Some(ca) = &self.nats_ca
            && !ca.is_file()
        {
            p.push(format!("nats_ca {} does not exist", ca.display()));
        }
        for (name, v) in [
            ("device_jwt_ttl_secs", self.device_jwt_ttl_secs),
            ("technician_jwt_ttl_secs", self.technician_jwt_ttl_secs),
        ] {
            if !(MIN_JWT_TTL_SECS..=MAX_JWT_TTL_SECS).contains(&v) {
                p.push(format!(
                    "{name} must be between {MIN_JWT_TTL_SECS} and {MAX_JWT_TTL_SECS} seconds, not {v}"
                ));
            }
        }
        if !(1..=5).contains(&self.kv_replicas) {
            p.push(format!(
                "kv_replicas must be 1 to 5, not {}",
                self.kv_replicas
            ));
        }
        if !(1..=3650).contains(&self.telemetry_retention_days) {
            p.push("telemetry_retention_days must be 1 to 3650".to_owned());
        }
        if self.renew_min_interval_secs < 0 {
            p.push("renew_min_interval_secs must not be negative".to_owned());
        }
        if self.http.is_some() && self.nats_ca.is_none() {
            p.push("[http] needs nats_ca: enrolling devices are given the CA that signed nats-server's certificate".to_owned());
        }
        if let Some(h) = &self.http {
            for (name, f) in [("http.tls_cert", &h.tls_cert), ("http.tls_key", &h.tls_key)] {
                if !f.is_file() {
                    p.push(format!("{name} {} does not exist", f.display()));
                }
            }
            if !h.public_url.starts_with("https://") {
                p.push(format!(
                    "http.public_url {:?} must start with https://",
                    h.public_url
                ));
            }
        }
        let e = &self.enrollment;
        if !(60..=365 * 24 * 3600).contains(&e.token_ttl_secs) {
            p.push("enrollment.token_ttl_secs must be between 60 and 31536000".to_owned());
        }
        if e.rate_per_minute == 0 || e.burst == 0 || e.max_failures == 0 {
            p.push(
                "enrollment.rate_per_minute, burst and max_failures must be at least 1".to_owned(),
            );
        }
        if !(1..=86_400).contains(&e.failure_window_secs)
            || !(1..=7 * 86_400).contains(&e.block_secs)
        {
            p.push(
                "enrollment.failure_window_secs must be 1 to 86400 and block_secs 1 to 604800"
                    .to_owned(),
            );
        }
        p.extend(
            self.tenant_defaults
                .problems()
                .into_iter()
                .map(|s| format!("tenant_defaults.{s}")),
        );
        p.extend(self.trust.problems());
        p.extend(self.auth.problems());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(CONFIG_FILE),
            "nats_url = \"http://x\"\ndevice_jwt_ttl_secs = 1\nkv_replicas = 9\n[tenant_defaults]\nmax_payload = 5\n",
        )
        .unwrap();
        let e = Config::load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("4 problem(s)"), "{e}");
        assert!(
            e.contains("nats_url") && e.contains("device_jwt_ttl_secs"),
            "{e}"
        );
        assert!(
            e.contains("kv_replicas") && e.contains("max_payload"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_missing_files_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let e = Config::load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("wegweiser init"), "{e}");
        std::fs::write(
            tmp.path().join(CONFIG_FILE),
            "nats_url = \"nats://a:1\"\nnats_urll = 1\n",
        )
        .unwrap();
        let e = Config::load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("nats_urll"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = Config::new("nats://a:1".into(), None);
        c.apply_env(|k| (k == ENV_NATS_URL).then(|| "tls://b:2".to_owned()));
        assert_eq!(c.nats_url, "tls://b:2");
        assert!(c.problems().is_empty());
        let round: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }
}
