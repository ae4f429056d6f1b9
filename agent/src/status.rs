//! `status.json`, which `run` keeps current, and the report `wegweiser-agent status` prints.
//!
//! The file holds no secret: state, times, the last error and the process id, so `status` can
//! tell a running agent from one that stopped or crashed.

use crate::{paths::Paths, platform, store};
use serde::{Deserialize, Serialize};
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};
use wegweiser_shared::jwt::{self, Claims, UserNats};

/// Connection state, as `run` last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Started, not connected yet.
    Starting,
    /// Connected to a NATS server.
    Connected,
    /// Lost the connection; reconnecting.
    Disconnected,
    /// Stopped cleanly.
    Stopped,
    /// Stopped because the control plane refused the device (revoked or unknown).
    ReenrollRequired,
}

impl State {
    /// The state as a word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Stopped => "stopped",
            Self::ReenrollRequired => "reenroll_required",
        }
    }
}

/// What `status.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Process id of the agent that wrote it.
    pub pid: u32,
    /// Its version.
    pub agent_version: String,
    /// The device.
    pub device_id: String,
    /// Connection state.
    pub state: State,
    /// When the state last changed (unix seconds).
    pub since: i64,
    /// When the file was last written.
    pub updated_at: i64,
    /// The last error (connection, authorization, renewal), if any since the last connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the current JWT expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_expires_at: Option<i64>,
    /// When the JWT was last renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renewal: Option<i64>,
    /// When the last heartbeat was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<i64>,
    /// Heartbeats sent by this process.
    #[serde(default)]
    pub heartbeats_sent: u64,
    /// Reports waiting in the offline spool (not yet acknowledged).
    #[serde(default)]
    pub spool_depth: u64,
    /// Signed commands executed by this process.
    #[serde(default)]
    pub commands_executed: u64,
    /// Commands refused by this process (every reason).
    #[serde(default)]
    pub commands_rejected: u64,
    /// The trusted command keyset's version (absent until one is pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyset_version: Option<u64>,
    /// The trusted root's version (absent until one is pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_version: Option<u64>,
}

/// Reads `status.json`; `None` when it does not exist or cannot be parsed.
pub fn read(path: &Path) -> Option<Status> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The running agent's status, shared by its tasks; every update rewrites the file.
#[derive(Debug, Clone)]
pub struct StatusFile {
    path: PathBuf,
    status: Arc<Mutex<Status>>,
}

impl StatusFile {
    /// Starts a status for this process (state `starting`) and writes it.
    pub fn start(path: PathBuf, device_id: &str, jwt_expires_at: Option<i64>) -> Self {
        let now = wegweiser_shared::time::now();
        let file = Self {
            path,
            status: Arc::new(Mutex::new(Status {
                pid: std::process::id(),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                device_id: device_id.to_owned(),
                state: State::Starting,
                since: now,
                updated_at: now,
                last_error: None,
                jwt_expires_at,
                last_renewal: None,
                last_heartbeat: None,
                heartbeats_sent: 0,
                spool_depth: 0,
                commands_executed: 0,
                commands_rejected: 0,
                keyset_version: None,
                root_version: None,
            })),
        };
        file.update(|_| {});
        file
    }

    /// Applies `change` and writes the file. A failed write is logged, never fatal.
    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        change(&mut status);
        status.updated_at = wegweiser_shared::time::now();
        let text = match serde_json::to_vec_pretty(&*status) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot serialize the status.");
                return;
            }
        };
        // Written under the lock, so the file always holds the latest update.
        if let Err(e) = platform::write_atomic(&self.path, &text) {
            tracing::warn!(file = %self.path.display(), error = %e, "Cannot write the status file.");
        }
    }

    /// Moves to `state` (and records when), with `error` as the last error when given.
    pub fn set_state(&self, state: State, error: Option<String>) {
        self.update(|s| {
            if s.state != state {
                s.state = state;
                s.since = wegweiser_shared::time::now();
            }
            if state == State::Connected {
                s.last_error = None;
            }
            if error.is_some() {
                s.last_error = error;
            }
        });
    }

    /// A copy of the current status.
    pub fn snapshot(&self) -> Option<Status> {
        self.status.lock().ok().map(|s| s.clone())
    }
}

/// What `wegweiser-agent status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether `agent.toml` exists and loads.
    pub enrolled: bool,
    /// `agent.toml`.
    pub config_file: PathBuf,
    /// Directory of the secrets and state.
    pub state_dir: PathBuf,
    /// Tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Device id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Control-plane URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane_url: Option<String>,
    /// NATS servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nats_urls: Vec<String>,
    /// The device's public key (from its JWT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// When the stored JWT expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_expires_at: Option<i64>,
    /// Whether it has expired.
    pub jwt_expired: bool,
    /// Whether an agent process is running (per `status.json` and, on Linux, `/proc`).
    pub running: bool,
    /// `connected`, `disconnected`, `starting`, `stopped`, `reenroll_required` or `not running`.
    pub connection: String,
    /// Since when (unix seconds), from `status.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// The running agent's process id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its last heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<i64>,
    /// Reports waiting in the offline spool, from `status.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_depth: Option<u64>,
    /// Signed commands the running agent executed, from `status.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands_executed: Option<u64>,
    /// Commands the running agent refused, from `status.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commands_rejected: Option<u64>,
    /// The trusted command keyset version, from `status.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyset_version: Option<u64>,
    /// The trusted root version, from `status.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_version: Option<u64>,
    /// Problems reading the enrollment (bad config, unreadable JWT).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Builds the report for the files at `paths`, at time `now`.
pub fn report(paths: &Paths, now: i64) -> Report {
    let mut r = Report {
        enrolled: false,
        config_file: paths.config_file(),
        state_dir: paths.state_dir().to_owned(),
        tenant: None,
        device_id: None,
        control_plane_url: None,
        nats_urls: Vec::new(),
        public_key: None,
        jwt_expires_at: None,
        jwt_expired: false,
        running: false,
        connection: "not running".to_owned(),
        since: None,
        pid: None,
        last_error: None,
        last_heartbeat: None,
        spool_depth: None,
        commands_executed: None,
        commands_rejected: None,
        keyset_version: None,
        root_version: None,
        problems: Vec::new(),
    };
    if paths.config_file().exists() {
        match crate::config::AgentConfig::load(&paths.config_file()) {
            Ok(c) => {
                r.enrolled = true;
                r.tenant = Some(c.tenant.to_string());
                r.device_id = Some(c.device_id.to_string());
                r.control_plane_url = Some(c.control_plane_url);
                r.nats_urls = c.nats_urls;
            }
            Err(e) => r.problems.push(e.to_string()),
        }
        match store::load_jwt(&paths.jwt_file()) {
            Ok(jwt) => match jwt::decode_untimed::<UserNats>(jwt.expose()) {
                Ok(Claims { sub, exp, .. }) => {
                    r.public_key = Some(sub);
                    r.jwt_expires_at = exp;
                    r.jwt_expired = exp.is_some_and(|e| e > 0 && e < now);
                }
                Err(e) => r
                    .problems
                    .push(format!("{}: {e}", paths.jwt_file().display())),
            },
            Err(e) => r.problems.push(e.to_string()),
        }
    }
    if let Some(s) = read(&paths.status_file()) {
        let alive = platform::pid_alive(s.pid).unwrap_or(true);
        let live_state = matches!(
            s.state,
            State::Starting | State::Connected | State::Disconnected
        );
        r.running = alive && live_state;
        r.connection = if r.running {
            s.state.as_str().to_owned()
        } else if live_state {
            // The process is gone without writing `stopped`: it crashed or was killed.
            "not running".to_owned()
        } else {
            format!("not running ({})", s.state.as_str())
        };
        r.since = Some(s.since);
        r.pid = r.running.then_some(s.pid);
        r.last_error = s.last_error;
        r.last_heartbeat = s.last_heartbeat;
        r.spool_depth = Some(s.spool_depth);
        r.commands_executed = Some(s.commands_executed);
        r.commands_rejected = Some(s.commands_rejected);
        r.keyset_version = s.keyset_version;
        r.root_version = s.root_version;
    }
    r
}

impl Report {
    /// The report as text.
    pub fn to_text(&self, now: i64) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<17}{v}\n"));
        if !self.enrolled {
            line("enrolled:", "no");
            line("config file:", &self.config_file.display().to_string());
        } else {
            line("enrolled:", "yes");
            line("tenant:", self.tenant.as_deref().unwrap_or("-"));
            line("device id:", self.device_id.as_deref().unwrap_or("-"));
            line(
                "control plane:",
                self.control_plane_url.as_deref().unwrap_or("-"),
            );
            line("nats servers:", &self.nats_urls.join(", "));
            line("public key:", self.public_key.as_deref().unwrap_or("-"));
            let expiry = match self.jwt_expires_at {
                Some(e) if e < now => format!("{e} (expired {} ago)", human(now - e)),
                Some(e) => format!("{e} (in {})", human(e - now)),
                None => "never".to_owned(),
            };
            line("credentials exp:", &expiry);
        }
        let conn = match (self.since, self.pid) {
            (Some(since), Some(pid)) => format!(
                "{} for {} (pid {pid})",
                self.connection,
                human(now.saturating_sub(since))
            ),
            _ => self.connection.clone(),
        };
        line("connection:", &conn);
        if let Some(e) = &self.last_error {
            line("last error:", e);
        }
        if let Some(h) = self.last_heartbeat {
            line(
                "last heartbeat:",
                &format!("{} ago", human(now.saturating_sub(h))),
            );
        }
        if let Some(d) = self.spool_depth {
            line("spool:", &format!("{d} report(s) waiting"));
        }
        if let (Some(done), Some(refused)) = (self.commands_executed, self.commands_rejected) {
            line("commands:", &format!("{done} executed, {refused} rejected"));
        }
        if let Some(k) = self.keyset_version {
            let root = self
                .root_version
                .map_or_else(String::new, |r| format!(", root version {r}"));
            line("command trust:", &format!("keyset version {k}{root}"));
        }
        for p in &self.problems {
            line("problem:", p);
        }
        out.trim_end().to_owned()
    }
}

/// `3d 4h`, `5m 2s`: durations for people.
pub(crate) fn human(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Issuer;

    #[test]
    fn status_file_round_trips_and_tracks_state() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("status.json");
        let f = StatusFile::start(path.clone(), "dev-1", Some(99));
        assert_eq!(read(&path).unwrap().state, State::Starting);
        f.set_state(State::Disconnected, Some("no route".into()));
        f.set_state(State::Connected, None);
        let s = read(&path).unwrap();
        assert_eq!(s.state, State::Connected);
        assert_eq!(s.last_error, None);
        assert_eq!(s.pid, std::process::id());
        assert_eq!(Some(s), f.snapshot());
    }

    #[test]
    fn report_of_an_enrolled_device() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let now = wegweiser_shared::time::now();
        let r = report(&paths, now);
        assert!(!r.enrolled && !r.running);
        assert_eq!(r.connection, "not running");
        assert!(r.to_text(now).contains("enrolled:        no"));

        let issuer = Issuer::new();
        let key = nkeys::KeyPair::new_user();
        issuer.enroll(&paths, &key);
        let r = report(&paths, now);
        assert!(r.enrolled, "{r:?}");
        assert_eq!(r.device_id.as_deref(), Some(issuer.device.as_str()));
        assert_eq!(r.public_key, Some(key.public_key()));
        assert!(!r.jwt_expired);
        assert_eq!(r.connection, "not running");

        // This process "runs" the agent.
        let f = StatusFile::start(paths.status_file(), "dev-1", None);
        f.set_state(State::Connected, None);
        f.update(|s| {
            s.spool_depth = 7;
            s.commands_executed = 4;
            s.commands_rejected = 2;
            s.keyset_version = Some(3);
            s.root_version = Some(1);
        });
        let r = report(&paths, now);
        assert!(r.running);
        assert_eq!(r.spool_depth, Some(7));
        assert_eq!(
            (r.commands_executed, r.commands_rejected),
            (Some(4), Some(2))
        );
        let text = r.to_text(now);
        assert!(
            text.contains("commands:        4 executed, 2 rejected"),
            "{text}"
        );
        assert!(
            text.contains("command trust:   keyset version 3, root version 1"),
            "{text}"
        );
        assert!(
            r.to_text(now)
                .contains("spool:           7 report(s) waiting"),
            "{}",
            r.to_text(now)
        );
        assert_eq!(r.connection, "connected");
        assert!(
            r.to_text(now).contains("connected for"),
            "{}",
            r.to_text(now)
        );
        f.set_state(State::Stopped, None);
        assert_eq!(report(&paths, now).connection, "not running (stopped)");

        // A status left by a process that no longer exists.
        if cfg!(target_os = "linux") {
            f.update(|s| {
                s.state = State::Connected;
                s.pid = u32::MAX - 1;
            });
            let r = report(&paths, now);
            assert!(!r.running);
            assert_eq!(r.connection, "not running");
        }
        // Far in the future the JWT has expired.
        assert!(report(&paths, now + 10 * 86_400).jwt_expired);
        let text = report(&paths, now).to_text(now);
        let stored = store::load_jwt(&paths.jwt_file()).unwrap();
        assert!(!text.contains(stored.expose()));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(5), "5s");
        assert_eq!(human(125), "2m 5s");
        assert_eq!(human(3 * 3600 + 60), "3h 1m");
        assert_eq!(human(2 * 86_400 + 3600), "2d 1h");
        assert_eq!(human(-3), "0s");
    }
}
