//! Locating, version-checking and running a local `nats-server` process.
//!
//! The repository pins nats-server [`PINNED_VERSION`]; `scripts/install-nats-server`
//! installs it into the git-ignored `tools/` folder at the repository root, where
//! [`locate`] finds it. [`NatsServerProcess`] runs a server with a given config
//! file and waits until it accepts client connections; it is used by tests and
//! local development setups, and never leaks the child process (it is killed on
//! drop).

use std::ffi::OsString;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The nats-server version this repository pins and tests against
/// (installed by `scripts/install-nats-server`).
pub const PINNED_VERSION: &str = "2.15.1";

/// The oldest nats-server version the control plane supports.
///
/// 2.10 is the first release with scoped signing-key templates that use
/// `{{account-subject()}}`-style functions, and with the `$SYS` account request
/// APIs (`$SYS.REQ.…`) that the control plane relies on.
pub const MIN_VERSION: &str = "2.10.0";

/// Environment variable that, when set (and non-empty), names the nats-server
/// binary to use; it takes precedence over every other location.
pub const ENV_BINARY: &str = "WEGWEISER_NATS_SERVER";

/// Binary name searched for in `tools/bin/` and on `PATH`.
const BINARY_NAME: &str = "nats-server";

/// How many trailing log lines an error report includes.
const LOG_TAIL_LINES: usize = 20;

/// At most this many bytes from the end of the log are read for a log tail.
const LOG_TAIL_MAX_BYTES: usize = 64 * 1024;

/// Upper bound on the size of the INFO line read from the server.
const INFO_MAX_BYTES: u64 = 64 * 1024;

/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Errors from locating, checking or running nats-server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsServerError {
    /// No nats-server binary was found in any of the searched locations.
    #[error(
        "nats-server not found: run `scripts/install-nats-server` (installs the pinned {} into tools/), or set {} to its path",
        PINNED_VERSION,
        ENV_BINARY
    )]
    NotFound,
    /// A nats-server binary was named or found but cannot be used.
    #[error("unusable nats-server binary {}: {reason}", path.display())]
    BadBinary {
        /// The binary in question.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A version string is not a dotted numeric version.
    #[error("cannot parse nats-server version {found:?} (expected something like \"2.15.1\")")]
    BadVersion {
        /// The version string as found.
        found: String,
    },
    /// The nats-server binary is older than [`MIN_VERSION`].
    #[error(
        "nats-server {found} is too old: at least {min} is required (run `scripts/install-nats-server` to install the pinned {})",
        PINNED_VERSION
    )]
    TooOld {
        /// The version the binary reported.
        found: String,
        /// The minimum supported version.
        min: String,
    },
    /// The log file for the server's output could not be created.
    #[error("cannot create nats-server log file {}: {source}", path.display())]
    LogFile {
        /// The log file path.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The nats-server process could not be started.
    #[error("failed to start nats-server: {0}")]
    Spawn(#[source] std::io::Error),
    /// The server did not accept client connections before the timeout.
    #[error(
        "nats-server did not become ready on 127.0.0.1:{port} before the timeout (does the config set that client port?); last log lines:\n{log_tail}"
    )]
    NotReady {
        /// The client port that was probed.
        port: u16,
        /// The last lines of the server's log.
        log_tail: String,
    },
    /// The server process exited before it became ready.
    #[error("nats-server exited before becoming ready ({status}); last log lines:\n{log_tail}")]
    ExitedEarly {
        /// The exit status of the process.
        status: ExitStatus,
        /// The last lines of the server's log.
        log_tail: String,
    },
}

/// Finds the nats-server binary to use.
///
/// Order: the [`ENV_BINARY`] environment variable (which must then name an
/// existing file); `tools/bin/nats-server` in the current executable's
/// directory or any parent of it; the same for the current working directory;
/// the same for this crate's manifest directory (so `<repo>/tools/bin/nats-server`);
/// then every directory on `PATH`.
pub fn locate() -> Result<PathBuf, NatsServerError> {
    let mut search_dirs = Vec::with_capacity(3);
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        search_dirs.push(dir);
    }
    if let Ok(dir) = std::env::current_dir() {
        search_dirs.push(dir);
    }
    search_dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    locate_from(
        std::env::var_os(ENV_BINARY),
        &search_dirs,
        std::env::var_os("PATH"),
    )
}

/// The logic of [`locate`], with its inputs passed in: the value of
/// [`ENV_BINARY`], the directories to walk up from looking for
/// `tools/bin/nats-server`, and the value of `PATH`.
fn locate_from(
    env_value: Option<OsString>,
    search_dirs: &[PathBuf],
    path_var: Option<OsString>,
) -> Result<PathBuf, NatsServerError> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && is_executable(&meta) => Ok(path),
            Ok(meta) if meta.is_file() => Err(NatsServerError::BadBinary {
                path,
                reason: format!("{ENV_BINARY} points at a file that is not executable"),
            }),
            Ok(_) => Err(NatsServerError::BadBinary {
                path,
                reason: format!("{ENV_BINARY} points at something that is not a file"),
            }),
            Err(err) => Err(NatsServerError::BadBinary {
                path,
                reason: format!("{ENV_BINARY} does not point at an existing file ({err})"),
            }),
        };
    }

    let tools_relative = Path::new("tools").join("bin").join(BINARY_NAME);
    for start in search_dirs {
        for dir in start.ancestors() {
            let candidate = dir.join(&tools_relative);
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
    }

    if let Some(path_var) = path_var {
        for dir in std::env::split_paths(&path_var) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let candidate = dir.join(BINARY_NAME);
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
    }

    Err(NatsServerError::NotFound)
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && is_executable(&meta))
}

#[cfg(unix)]
fn is_executable(meta: &Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &Metadata) -> bool {
    true
}

/// Runs `<binary> --version` and returns the reported version without the
/// leading `v` (`nats-server: v2.15.1` gives `"2.15.1"`).
pub fn version(binary: &Path) -> Result<String, NatsServerError> {
    let bad = |reason: String| NatsServerError::BadBinary {
        path: binary.to_path_buf(),
        reason,
    };
    let output = std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|err| bad(format!("cannot run `--version`: {err}")))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(bad(format!(
            "`--version` failed ({}): {}",
            output.status,
            excerpt(&text)
        )));
    }
    if !text.contains(BINARY_NAME) {
        return Err(bad(format!(
            "`--version` output does not look like nats-server: {:?}",
            excerpt(&text)
        )));
    }
    parse_version_output(&text).ok_or_else(|| {
        bad(format!(
            "no version found in `--version` output: {:?}",
            excerpt(&text)
        ))
    })
}

/// The trimmed start of a command's output, short enough for an error message.
fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    let text = text.trim();
    if text.chars().count() <= MAX_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_CHARS).collect();
        short.push('…');
        short
    }
}

/// Extracts `2.15.1` from output such as `nats-server: v2.15.1`.
fn parse_version_output(text: &str) -> Option<String> {
    text.split_whitespace()
        .filter_map(|token| token.strip_prefix('v'))
        .find(|candidate| parse_version(candidate).is_some())
        .map(str::to_owned)
}

/// Parses a dotted numeric version (`2.10.0`, optionally `v`-prefixed, with
/// any `-pre`/`+build` suffix ignored) into its numeric components.
fn parse_version(v: &str) -> Option<Vec<u64>> {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next().unwrap_or_default();
    if core.is_empty() {
        return None;
    }
    core.split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse::<u64>().ok()
            } else {
                None
            }
        })
        .collect()
}

/// Compares two parsed versions, treating missing components as zero.
fn compare_versions(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    let get = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| get(a, i).cmp(&get(b, i)))
        .find(|ord| ord.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// Checks that version `v` (e.g. `"2.15.1"`, as returned by [`version`]) is at
/// least [`MIN_VERSION`]. Pre-release suffixes are ignored, so `2.10.0-RC.1`
/// counts as `2.10.0`.
pub fn check_min_version(v: &str) -> Result<(), NatsServerError> {
    let found = parse_version(v).ok_or_else(|| NatsServerError::BadVersion {
        found: v.to_owned(),
    })?;
    let min = parse_version(MIN_VERSION).ok_or_else(|| NatsServerError::BadVersion {
        found: MIN_VERSION.to_owned(),
    })?;
    if compare_versions(&found, &min).is_lt() {
        return Err(NatsServerError::TooOld {
            found: v.to_owned(),
            min: MIN_VERSION.to_owned(),
        });
    }
    Ok(())
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0,
/// read the port, release it). Another process may take it in between.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(port)
}

/// A running `nats-server -c <config>` child process.
///
/// The process is killed when this value is dropped; prefer
/// [`NatsServerProcess::stop`], which also waits for it to exit.
#[derive(Debug)]
pub struct NatsServerProcess {
    child: Child,
    pid: u32,
    client_port: u16,
    log: PathBuf,
}

impl NatsServerProcess {
    /// Starts `binary -c config`, with stdout and stderr written to `log`
    /// (created or truncated), and waits until a TCP connection to
    /// `127.0.0.1:client_port` gets the server's `INFO` line. `client_port`
    /// must be the client port that `config` sets.
    ///
    /// Fails with the last lines of the log when the process exits early or
    /// is not ready within `timeout`; the process is killed in both cases.
    pub async fn start(
        binary: &Path,
        config: &Path,
        client_port: u16,
        log: &Path,
        timeout: Duration,
    ) -> Result<Self, NatsServerError> {
        let log_err = |source| NatsServerError::LogFile {
            path: log.to_path_buf(),
            source,
        };
        let stdout = std::fs::File::create(log).map_err(log_err)?;
        let stderr = stdout.try_clone().map_err(log_err)?;

        let mut child = Command::new(binary)
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(NatsServerError::Spawn)?;
        let Some(pid) = child.id() else {
            return Err(NatsServerError::Spawn(std::io::Error::other(
                "nats-server exited immediately after spawning",
            )));
        };
        tracing::debug!(pid, client_port, binary = %binary.display(), "started nats-server");

        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(NatsServerError::Spawn)? {
                return Err(NatsServerError::ExitedEarly {
                    status,
                    log_tail: log_tail(log).await,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                kill_and_wait(&mut child).await;
                return Err(NatsServerError::NotReady {
                    port: client_port,
                    log_tail: log_tail(log).await,
                });
            }
            if probe_info(client_port, deadline - now).await {
                // A foreign server already on the port would answer too, but
                // then this child fails to bind and exits: check once more.
                if let Some(status) = child.try_wait().map_err(NatsServerError::Spawn)? {
                    return Err(NatsServerError::ExitedEarly {
                        status,
                        log_tail: log_tail(log).await,
                    });
                }
                tracing::debug!(pid, client_port, "nats-server is ready");
                return Ok(Self {
                    child,
                    pid,
                    client_port,
                    log: log.to_path_buf(),
                });
            }
            tokio::time::sleep(
                PROBE_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The client port the server listens on (127.0.0.1).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The file the server's output goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills the server and waits until it has exited.
    pub async fn stop(mut self) {
        kill_and_wait(&mut self.child).await;
        tracing::debug!(
            pid = self.pid,
            client_port = self.client_port,
            "stopped nats-server"
        );
    }
}

impl Drop for NatsServerProcess {
    fn drop(&mut self) {
        // Only a still-running child needs killing (after `stop` it has exited).
        if matches!(self.child.try_wait(), Ok(None))
            && let Err(err) = self.child.start_kill()
        {
            tracing::warn!(pid = self.pid, error = %err, "failed to kill nats-server on drop");
        }
    }
}

/// Kills `child` (if still running) and waits for it to exit.
async fn kill_and_wait(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Err(err) = child.start_kill() {
        tracing::warn!(error = %err, "failed to kill nats-server");
    }
    if let Err(err) = child.wait().await {
        tracing::warn!(error = %err, "failed to wait for nats-server to exit");
    }
}

/// Connects to `127.0.0.1:port` and reads the first line; true when it is the
/// server's `INFO` line. Gives up after `budget` (capped at 2 s per probe).
async fn probe_info(port: u16, budget: Duration) -> bool {
    let budget = budget.min(Duration::from_secs(2));
    let probe = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut reader = BufReader::new(stream.take(INFO_MAX_BYTES));
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        Some(line.starts_with("INFO "))
    };
    matches!(tokio::time::timeout(budget, probe).await, Ok(Some(true)))
}

/// The last [`LOG_TAIL_LINES`] lines of the log file (or a note why there
/// are none).
async fn log_tail(log: &Path) -> String {
    match tokio::fs::read(log).await {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(LOG_TAIL_MAX_BYTES);
            let text = String::from_utf8_lossy(bytes.get(start..).unwrap_or_default());
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines.get(lines.len().saturating_sub(LOG_TAIL_LINES)..);
            match tail {
                Some(tail) if !tail.is_empty() => tail.join("\n"),
                _ => format!("(log {} is empty)", log.display()),
            }
        }
        Err(err) => format!("(cannot read log {}: {err})", log.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_none() -> Option<OsString> {
        None
    }

    /// Creates `path` (and its parents) as an executable file.
    fn make_executable(path: &Path) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dirs");
        }
        std::fs::write(path, "#!/bin/sh\n").expect("write file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }

    #[test]
    fn parses_version_output() {
        assert_eq!(
            parse_version_output("nats-server: v2.15.1\n").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(
            parse_version_output("nats-server: v2.11.0-RC.2").as_deref(),
            Some("2.11.0-RC.2")
        );
        assert_eq!(parse_version_output("nats-server: version"), None);
        assert_eq!(parse_version_output(""), None);
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("2.15.1"), Some(vec![2, 15, 1]));
        assert_eq!(parse_version("v2.10.0"), Some(vec![2, 10, 0]));
        assert_eq!(parse_version("2.10.0-RC.1"), Some(vec![2, 10, 0]));
        assert_eq!(parse_version("2.10"), Some(vec![2, 10]));
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("2..1"), None);
        assert_eq!(parse_version("2.x.1"), None);
        assert_eq!(parse_version("-1.2"), None);
    }

    #[test]
    fn version_comparison() {
        assert!(check_min_version(PINNED_VERSION).is_ok());
        assert!(check_min_version(MIN_VERSION).is_ok());
        assert!(check_min_version("2.10").is_ok());
        assert!(check_min_version("2.10.0-RC.1").is_ok());
        assert!(check_min_version("2.10.29").is_ok());
        assert!(check_min_version("2.11.0").is_ok());
        assert!(check_min_version("3.0.0").is_ok());
        // Numeric, not lexicographic: 2.9 < 2.10.
        assert!(matches!(
            check_min_version("2.9.25"),
            Err(NatsServerError::TooOld { .. })
        ));
        assert!(matches!(
            check_min_version("1.99.99"),
            Err(NatsServerError::TooOld { .. })
        ));
        assert!(matches!(
            check_min_version("banana"),
            Err(NatsServerError::BadVersion { .. })
        ));
        let err = check_min_version("2.9.0").expect_err("2.9.0 is too old");
        let msg = err.to_string();
        assert!(msg.contains("2.9.0") && msg.contains(MIN_VERSION), "{msg}");
    }

    #[test]
    fn locate_env_pointing_at_missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-nats-server");
        // Even with a usable binary elsewhere, a wrong env var is an error.
        make_executable(&dir.path().join("tools/bin/nats-server"));
        let err = locate_from(
            Some(missing.clone().into_os_string()),
            &[dir.path().to_path_buf()],
            None,
        )
        .expect_err("missing file must be an error");
        assert!(
            matches!(&err, NatsServerError::BadBinary { path, .. } if *path == missing),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(ENV_BINARY), "{msg}");
        assert!(msg.contains("does not point at an existing file"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
    }

    #[test]
    fn locate_env_pointing_at_directory_or_non_executable_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = locate_from(Some(dir.path().as_os_str().to_owned()), &[], None)
            .expect_err("a directory is not a binary");
        assert!(err.to_string().contains("not a file"), "{err}");

        #[cfg(unix)]
        {
            let plain = dir.path().join("plain");
            std::fs::write(&plain, "").expect("write");
            let err = locate_from(Some(plain.into_os_string()), &[], None)
                .expect_err("a non-executable file is not a binary");
            assert!(err.to_string().contains("not executable"), "{err}");
        }
    }

    #[test]
    fn locate_env_wins_when_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let custom = dir.path().join("custom-nats-server");
        make_executable(&custom);
        make_executable(&dir.path().join("tools/bin/nats-server"));
        let found = locate_from(
            Some(custom.clone().into_os_string()),
            &[dir.path().to_path_buf()],
            None,
        )
        .expect("env var binary");
        assert_eq!(found, custom);
    }

    #[test]
    fn locate_walks_up_to_tools_then_path() {
        let repo = tempfile::tempdir().expect("tempdir");
        let deep = repo.path().join("target/debug/deps");
        std::fs::create_dir_all(&deep).expect("mkdir");
        let on_path = tempfile::tempdir().expect("tempdir");
        let path_binary = on_path.path().join("nats-server");
        make_executable(&path_binary);
        let path_var = std::env::join_paths([Path::new(""), on_path.path()]).expect("join paths");

        // Empty env value counts as unset; nothing in tools/ yet: PATH is used.
        let found = locate_from(
            Some(OsString::new()),
            std::slice::from_ref(&deep),
            Some(path_var.clone()),
        )
        .expect("found on PATH");
        assert_eq!(found, path_binary);

        // tools/bin/nats-server in an ancestor wins over PATH.
        let tools_binary = repo.path().join("tools/bin/nats-server");
        make_executable(&tools_binary);
        let found = locate_from(env_none(), &[deep], Some(path_var)).expect("found in tools");
        assert_eq!(found, tools_binary);
    }

    #[test]
    fn locate_not_found_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = locate_from(
            env_none(),
            &[dir.path().to_path_buf()],
            Some(dir.path().as_os_str().to_owned()),
        )
        .expect_err("nothing to find");
        assert!(matches!(err, NatsServerError::NotFound), "{err:?}");
        assert_eq!(
            err.to_string(),
            "nats-server not found: run `scripts/install-nats-server` (installs the pinned 2.15.1 \
             into tools/), or set WEGWEISER_NATS_SERVER to its path"
        );
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("free port");
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free");
    }

    /// The real binary; fails the test (never skips) when it is missing.
    fn require_binary() -> PathBuf {
        match locate() {
            Ok(binary) => binary,
            Err(err) => panic!("{err}"),
        }
    }

    fn quoted(path: &Path) -> String {
        let s = path.display().to_string();
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }

    #[tokio::test]
    async fn starts_and_stops_a_real_server() {
        let binary = require_binary();
        let found = version(&binary).unwrap_or_else(|err| panic!("{err}"));
        check_min_version(&found).unwrap_or_else(|err| panic!("{err}"));

        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("free port");
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &config,
            format!(
                "port: {port}\nhost: \"127.0.0.1\"\njetstream {{ store_dir: {} }}\n",
                quoted(&store)
            ),
        )
        .expect("write config");
        let log = dir.path().join("nats.log");

        let server =
            NatsServerProcess::start(&binary, &config, port, &log, Duration::from_secs(20))
                .await
                .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(server.client_port(), port);
        assert!(server.pid() > 0);
        assert_eq!(server.log_path(), log);

        // A fresh connection gets the INFO line, naming the configured port.
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("read INFO");
        assert!(line.starts_with("INFO "), "{line}");
        assert!(line.contains(&format!("\"port\":{port}")), "{line}");
        assert!(line.contains("\"jetstream\":true"), "{line}");
        drop(reader);

        server.stop().await;
        assert!(
            TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "server still accepts connections after stop"
        );
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free after stop");
    }

    #[tokio::test]
    async fn drop_kills_the_server() {
        let binary = require_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("free port");
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, format!("port: {port}\nhost: \"127.0.0.1\"\n"))
            .expect("write config");
        let log = dir.path().join("nats.log");
        let server =
            NatsServerProcess::start(&binary, &config, port, &log, Duration::from_secs(20))
                .await
                .unwrap_or_else(|err| panic!("{err}"));
        drop(server);

        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(Instant::now() < deadline, "server survived drop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn bad_config_exits_early_with_log_tail() {
        let binary = require_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("free port");
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, "port: {{{ this is not a config\n").expect("write config");
        let log = dir.path().join("nats.log");
        let err = NatsServerProcess::start(&binary, &config, port, &log, Duration::from_secs(20))
            .await
            .expect_err("bad config must fail");
        match &err {
            NatsServerError::ExitedEarly { log_tail, .. } => {
                assert!(!log_tail.trim().is_empty(), "{err}");
            }
            other => panic!("expected ExitedEarly, got {other}"),
        }
    }

    #[tokio::test]
    async fn not_ready_when_port_never_opens() {
        let binary = require_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let server_port = free_port().expect("free port");
        let mut wrong_port = free_port().expect("free port");
        while wrong_port == server_port {
            wrong_port = free_port().expect("free port");
        }
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!("port: {server_port}\nhost: \"127.0.0.1\"\n"),
        )
        .expect("write config");
        let log = dir.path().join("nats.log");
        let err = NatsServerProcess::start(
            &binary,
            &config,
            wrong_port,
            &log,
            Duration::from_millis(1500),
        )
        .await
        .expect_err("probing the wrong port must time out");
        assert!(
            matches!(&err, NatsServerError::NotReady { port, .. } if *port == wrong_port),
            "{err}"
        );
        // The child was killed: its real port is closed again.
        assert!(
            TcpStream::connect(("127.0.0.1", server_port))
                .await
                .is_err()
        );
    }
}
