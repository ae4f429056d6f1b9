//! Signed commands: receive, verify, refuse or execute, and answer.
//!
//! The control plane publishes DSSE envelopes on `wg.<account>.down.<device>.cmd` and trust
//! bundles on `wg.<account>.down.<device>.trust`; the agent asks for the current bundle on
//! `wg.<account>.up.<device>.trust` (request, empty payload). [`serve`] runs the task that
//! listens on both and feeds [`Commands`], the pipeline:
//!
//! 1. **Verify** with [`wegweiser_shared::command::verify`] against the pinned
//!    [`TrustState`] and what this device expects (tenant, device, the `cmd` subject). On
//!    `unknown_key` or `keyset_expired` (or before any trust is pinned) the agent fetches the
//!    current bundle once, at most every [`TRUST_REFETCH_MIN`], and if its trust changed
//!    verifies the same bytes again: a command signed by a key that was just rotated in is not
//!    lost.
//! 2. **Replay cache** ([`ReplayCache`]): the id is recorded durably before anything runs; an id
//!    seen before, a full cache or an unwritable file refuses the command.
//! 3. **Local policy**: the kind must be in `allowed_commands` of `agent.toml` (default: every
//!    kind except `run`).
//! 4. **Execute**: only a [`VerifiedCommand`] reaches an [`Executor`]; executions run
//!    concurrently, `run` and `processes` in at most [`MAX_CONCURRENT`] slots (a further one
//!    fails as busy) so a long script never blocks a ping. The result goes up as a
//!    [`CommandResult`] report (`tel.res`, spooled and acknowledged) with its duration.
//!
//! Every refusal is a `command_rejected` event (a security event), a warning in the log with the
//! reason code and, once the signature verified, the command id, and counts in `status.json` and
//! the heartbeats. A refusal after the signature verified (replay, wrong tenant, device or
//! subject, expired, not allowed, …) is also answered with a [`CommandResult`] of outcome
//! `rejected` and the reason code as `error`, so whoever waits for the command gets an answer.
//! Nothing a command carries can stop the agent.
//!
//! **Trust** moves only forward: a pushed or fetched bundle is applied with
//! [`TrustState::update`] (root rotations signed by the previous root, newer keysets), all or
//! nothing; success is saved to `trust.json` and reported as `trust_updated`, a refusal
//! (rollback, forged root, expired keyset, malformed) as `trust_rejected` with its code, and the
//! old state stays. When nothing is pinned yet (an enrollment without trust, or a damaged
//! `trust.json`), the first bundle fetched is pinned. Bundles are fetched at every (re)connect,
//! every [`TRUST_REFRESH_EVERY`] and on demand (step 1).

use crate::{
    collect,
    paths::Paths,
    replay::{ReplayCache, ReplayError},
    report::Reporter,
    status::StatusFile,
};
use async_nats::Client;
use futures::StreamExt;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::{Notify, Semaphore, mpsc, oneshot, watch},
    task::JoinSet,
    time::Instant,
};
use wegweiser_shared::{
    command::{
        COMMAND_TOKEN, CollectWhat, Command, CommandResult, Expected, Outcome, Reject, Rejection,
        VerifiedCommand, verify,
    },
    subject::{self, Token},
    telemetry::EventKind,
    time::now,
    trust::{TRUST_TOKEN, TrustBundle, TrustError, TrustState},
};

/// How long a trust request may take.
pub const TRUST_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two fetches caused by commands (unknown key, expired keyset).
pub const TRUST_REFETCH_MIN: Duration = Duration::from_secs(5);
/// How often trust is fetched while connected.
pub const TRUST_REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// Most `run` and `processes` executions at once.
pub const MAX_CONCURRENT: usize = 8;
/// Most bytes kept of a script's stdout, and of its stderr.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// How long a `collect` waits for its report to be queued.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(300);

/// Report intervals; `set_intervals` changes them until the agent restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// Between heartbeats.
    pub heartbeat: Duration,
    /// Between metrics reports.
    pub metrics: Duration,
}

/// A request to collect and queue a report now; `done` gets the report's sequence number.
#[derive(Debug)]
pub struct CollectRequest {
    /// Which report.
    pub what: CollectWhat,
    /// Answered once the report is spooled (or failed).
    pub done: oneshot::Sender<Result<u64, String>>,
}

/// How commands reach the rest of the agent.
#[derive(Debug, Clone)]
pub struct Hooks {
    /// To the collection loop.
    pub collect: mpsc::Sender<CollectRequest>,
    /// Read by the heartbeat and collection loops.
    pub intervals: Arc<watch::Sender<Intervals>>,
    /// Bumped to make the renewal loop renew now.
    pub renew: Arc<watch::Sender<u64>>,
}

/// What an execution produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// How it ended.
    pub outcome: Outcome,
    /// Kind-specific output.
    pub output: Value,
    /// Why it failed.
    pub error: Option<String>,
    /// What to do once the result is spooled.
    pub then: Option<After>,
}

/// Something to do after a command's result is spooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum After {
    /// Stop gracefully and start the agent again.
    Restart,
}

impl Execution {
    fn ok(output: Value) -> Self {
        Self {
            outcome: Outcome::Ok,
            output,
            error: None,
            then: None,
        }
    }

    fn failed(error: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failed,
            output: Value::Null,
            error: Some(error.into()),
            then: None,
        }
    }
}

/// Runs verified commands. The only input is a [`VerifiedCommand`], which only the verifier
/// makes.
pub trait Executor: Send + Sync + 'static {
    /// Executes `cmd`.
    fn execute(&self, cmd: &VerifiedCommand) -> impl Future<Output = Execution> + Send;
}

/// Where trust bundles come from on demand.
pub trait TrustSource: Send + Sync + 'static {
    /// The current bundle's bytes (not yet verified).
    fn fetch(&self) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

/// Trust bundles by request on `wg.<account>.up.<device>.trust`.
#[derive(Debug, Clone)]
pub struct NatsTrust {
    client: Client,
    subject: String,
}

impl NatsTrust {
    /// Requests go to `subject` over `client`.
    pub fn new(client: Client, subject: String) -> Self {
        Self { client, subject }
    }
}

impl TrustSource for NatsTrust {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let answer = tokio::time::timeout(
            TRUST_FETCH_TIMEOUT,
            self.client.request(self.subject.clone(), Vec::new().into()),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        Ok(answer.payload.to_vec())
    }
}

/// Counters for `status.json` and heartbeats.
#[derive(Debug, Default)]
pub struct CommandStats {
    executed: AtomicU64,
    rejected: AtomicU64,
    by_reason: Mutex<BTreeMap<&'static str, u64>>,
    /// (root version, keyset version) trusted now.
    trust: Mutex<Option<(u64, u64)>>,
}

impl CommandStats {
    /// Commands executed.
    pub fn executed(&self) -> u64 {
        self.executed.load(Ordering::SeqCst)
    }

    /// Commands refused.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::SeqCst)
    }

    /// Commands refused for `code`.
    pub fn rejected_for(&self, code: &str) -> u64 {
        self.by_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(code)
            .copied()
            .unwrap_or(0)
    }

    /// The trusted keyset version.
    pub fn keyset_version(&self) -> Option<u64> {
        self.trust_versions().map(|t| t.1)
    }

    /// The trusted (root, keyset) versions.
    pub fn trust_versions(&self) -> Option<(u64, u64)> {
        *self.trust.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The command pipeline of one device (see the [module docs](self)).
pub struct Commands<S: TrustSource, E: Executor> {
    expected: Expected,
    paths: Paths,
    trust: Option<TrustState>,
    replay: Result<ReplayCache, String>,
    allowed: Vec<String>,
    source: S,
    executor: Arc<E>,
    reporter: Arc<Reporter>,
    stats: Arc<CommandStats>,
    status: StatusFile,
    restart: Arc<Notify>,
    last_fetch: Option<Instant>,
    refetch_min: Duration,
    running: JoinSet<()>,
}

impl<S: TrustSource, E: Executor> std::fmt::Debug for Commands<S, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("expected", &self.expected)
            .field("trust", &self.stats.trust_versions())
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

/// What [`Commands::open`] needs besides the trust source and the executor.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The agent's files.
    pub paths: Paths,
    /// What every command must name.
    pub expected: Expected,
    /// `allowed_commands`.
    pub allowed: Vec<String>,
    /// Reports.
    pub reporter: Arc<Reporter>,
    /// `status.json`.
    pub status: StatusFile,
    /// Counters.
    pub stats: Arc<CommandStats>,
    /// Notified after a `restart` command's result is spooled.
    pub restart: Arc<Notify>,
}

impl<S: TrustSource, E: Executor> Commands<S, E> {
    /// Loads `trust.json` (a damaged one is reported as `trust_rejected` and replaced by the
    /// next bundle fetched) and opens the replay cache.
    pub async fn open(setup: Setup, source: S, executor: E) -> Self {
        let Setup {
            paths,
            expected,
            allowed,
            reporter,
            status,
            stats,
            restart,
        } = setup;
        let (p, n) = (paths.clone(), now());
        let (trust, replay) = tokio::task::spawn_blocking(move || {
            (
                crate::trust::load(&p),
                ReplayCache::open(&p.replay_file(), n),
            )
        })
        .await
        .unwrap_or_else(|e| {
            let failed = || std::io::Error::other(format!("loading task failed: {e}"));
            (
                Err(crate::trust::TrustFileError::Io {
                    path: paths.trust_file().display().to_string(),
                    source: failed(),
                }),
                Err(ReplayError::Io {
                    path: paths.replay_file().display().to_string(),
                    source: failed(),
                }),
            )
        });
        let trust = match trust {
            Ok(Some(t)) => {
                tracing::info!(
                    root_version = t.root_version(),
                    keyset_version = t.keyset_version(),
                    "Command trust loaded."
                );
                Some(t)
            }
            Ok(None) => {
                tracing::info!("No command trust pinned yet; it is fetched when connected.");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "The pinned command trust is unusable; fetching it again.");
                let _ = reporter
                    .event(EventKind::TrustRejected {
                        reason: e.code().to_owned(),
                        detail: e.to_string(),
                    })
                    .await;
                None
            }
        };
        let replay = replay.map_err(|e| {
            tracing::error!(error = %e, "The replay cache is unusable; commands are refused until it opens.");
            e.to_string()
        });
        let commands = Self {
            expected,
            paths,
            trust,
            replay,
            allowed,
            source,
            executor: Arc::new(executor),
            reporter,
            stats,
            status,
            restart,
            last_fetch: None,
            refetch_min: TRUST_REFETCH_MIN,
            running: JoinSet::new(),
        };
        commands.show_trust();
        commands
    }

    /// The trust state in use.
    pub fn trust(&self) -> Option<&TrustState> {
        self.trust.as_ref()
    }

    /// Handles one message from the `cmd` subject.
    pub async fn on_command(&mut self, bytes: &[u8], now: i64) {
        match self.admit(bytes, now).await {
            Ok(cmd) => self.start(cmd),
            Err((rejection, kind)) => self.reject(rejection, kind).await,
        }
    }

    /// Steps 1 to 3: a command that may run, or why not (with its kind once known).
    async fn admit(
        &mut self,
        bytes: &[u8],
        now: i64,
    ) -> Result<VerifiedCommand, (Rejection, Option<&'static str>)> {
        let verified = match self.verify(bytes, now) {
            Err(r) if matches!(r.reason, Reject::UnknownKey | Reject::KeysetExpired) => {
                if self.refresh_trust(true, now).await {
                    self.verify(bytes, now)
                } else {
                    Err(r)
                }
            }
            other => other,
        }
        .map_err(|r| (r, None))?;
        let kind = verified.command().kind();
        let refused = |reason, detail: String| {
            (
                Rejection {
                    reason,
                    detail,
                    id: Some(verified.id().to_owned()),
                },
                Some(kind),
            )
        };
        if self.replay.is_err() {
            // Try again: the disk may be back.
            self.replay =
                ReplayCache::open(&self.paths.replay_file(), now).map_err(|e| e.to_string());
        }
        match &mut self.replay {
            Ok(cache) => cache
                .record(verified.id(), verified.exp(), now)
                .map_err(|r| refused(r.reason, r.detail))?,
            Err(e) => {
                return Err(refused(
                    Reject::ReplayCacheFull,
                    format!("replay cache unavailable: {e}"),
                ));
            }
        }
        if !self.allowed.iter().any(|k| k == kind) {
            return Err(refused(
                Reject::NotAllowed,
                format!("kind {kind} is not in allowed_commands of this device"),
            ));
        }
        Ok(verified)
    }

    fn verify(&self, bytes: &[u8], now: i64) -> Result<VerifiedCommand, Rejection> {
        match &self.trust {
            Some(trust) => verify(bytes, trust, &self.expected, now),
            None => Err(Rejection {
                reason: Reject::UnknownKey,
                detail: "no command trust pinned yet".to_owned(),
                id: None,
            }),
        }
    }

    /// Fetches the current bundle and applies it; whether the trust changed. With
    /// `rate_limited` (fetches caused by commands, which anyone able to publish could send), at
    /// most one per [`TRUST_REFETCH_MIN`]; scheduled fetches (connect, hourly) are not limited.
    pub async fn refresh_trust(&mut self, rate_limited: bool, now: i64) -> bool {
        if rate_limited {
            if self
                .last_fetch
                .is_some_and(|at| at.elapsed() < self.refetch_min)
            {
                return false;
            }
            self.last_fetch = Some(Instant::now());
        }
        match self.source.fetch().await {
            Ok(bytes) => self.apply_bundle(&bytes, now, "fetch").await,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot fetch the command trust.");
                false
            }
        }
    }

    /// Handles one message from the `trust` subject.
    pub async fn on_trust_push(&mut self, bytes: &[u8], now: i64) {
        self.apply_bundle(bytes, now, "push").await;
    }

    /// Pins (nothing pinned yet) or applies a bundle; whether the trust changed.
    async fn apply_bundle(&mut self, bytes: &[u8], now: i64, source: &'static str) -> bool {
        let bundle = match TrustBundle::parse(bytes) {
            Ok(b) => b,
            Err(e) => {
                self.trust_rejected(&e, source).await;
                return false;
            }
        };
        let before = self.stats.trust_versions();
        let applied = match &mut self.trust {
            None => TrustState::pin(&bundle, now).map(|s| {
                self.trust = Some(s);
                true
            }),
            Some(state) => state.update(&bundle, now).map(|u| u.changed()),
        };
        match applied {
            Ok(false) => {
                tracing::debug!(source, "Command trust unchanged.");
                false
            }
            Ok(true) => {
                let Some(state) = self.trust.as_ref() else {
                    return false;
                };
                let (root_version, keyset_version) = (state.root_version(), state.keyset_version());
                tracing::info!(
                    source,
                    from = ?before,
                    root_version,
                    keyset_version,
                    "Command trust updated."
                );
                let (p, s) = (self.paths.clone(), state.clone());
                match tokio::task::spawn_blocking(move || crate::trust::save(&p, &s)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "Cannot save the command trust."),
                    Err(e) => tracing::warn!(error = %e, "Cannot save the command trust."),
                }
                self.show_trust();
                let _ = self
                    .reporter
                    .event(EventKind::TrustUpdated {
                        root_version,
                        keyset_version,
                    })
                    .await;
                true
            }
            Err(e) => {
                self.trust_rejected(&e, source).await;
                false
            }
        }
    }

    async fn trust_rejected(&self, e: &TrustError, source: &'static str) {
        tracing::warn!(source, reason = e.code(), error = %e, "Command trust refused; keeping the current one.");
        let _ = self
            .reporter
            .event(EventKind::TrustRejected {
                reason: e.code().to_owned(),
                detail: e.to_string(),
            })
            .await;
    }

    fn show_trust(&self) {
        let versions = self
            .trust
            .as_ref()
            .map(|t| (t.root_version(), t.keyset_version()));
        *self
            .stats
            .trust
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = versions;
        self.status.update(|s| {
            s.root_version = versions.map(|v| v.0);
            s.keyset_version = versions.map(|v| v.1);
        });
    }

    /// Counts, logs and reports a refusal; answers it when the command id is known.
    async fn reject(&self, r: Rejection, kind: Option<&'static str>) {
        let code = r.reason.code();
        // Before the signature verified, the detail may quote untrusted input.
        let detail = if r.id.is_none() && matches!(r.reason, Reject::Malformed | Reject::WrongType)
        {
            format!("{code} (details of unverified input are not shown)")
        } else {
            r.detail.clone()
        };
        self.stats.rejected.fetch_add(1, Ordering::SeqCst);
        *self
            .stats
            .by_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code)
            .or_default() += 1;
        let rejected = self.stats.rejected();
        self.status.update(|s| s.commands_rejected = rejected);
        tracing::warn!(
            reason = code,
            command_id = r.id.as_deref().unwrap_or("-"),
            kind = kind.unwrap_or("-"),
            detail = %detail,
            "Command rejected."
        );
        let _ = self
            .reporter
            .event(EventKind::CommandRejected {
                reason: code.to_owned(),
                detail,
                command_id: r.id.clone(),
            })
            .await;
        if let Some(id) = r.id {
            let _ = self
                .reporter
                .result(CommandResult {
                    v: 1,
                    seq: 0,
                    ts: now(),
                    id,
                    kind: kind.unwrap_or("unknown").to_owned(),
                    outcome: Outcome::Rejected,
                    output: Value::Null,
                    error: Some(code.to_owned()),
                    duration_us: 0,
                })
                .await;
        }
    }

    /// Step 4: runs `cmd` in a task of its own; its result is spooled when it ends.
    fn start(&mut self, cmd: VerifiedCommand) {
        tracing::info!(
            command_id = cmd.id(),
            kind = cmd.command().kind(),
            by = cmd.by(),
            keyid = cmd.keyid(),
            "Command accepted."
        );
        let executor = self.executor.clone();
        let reporter = self.reporter.clone();
        let stats = self.stats.clone();
        let status = self.status.clone();
        let restart = self.restart.clone();
        self.running.spawn(async move {
            let started = Instant::now();
            let ex = executor.execute(&cmd).await;
            let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let executed = stats.executed.fetch_add(1, Ordering::SeqCst) + 1;
            status.update(|s| s.commands_executed = executed);
            tracing::info!(
                command_id = cmd.id(),
                kind = cmd.command().kind(),
                outcome = ?ex.outcome,
                error = ex.error.as_deref().unwrap_or("-"),
                duration_us,
                "Command executed."
            );
            let _ = reporter
                .result(CommandResult {
                    v: 1,
                    seq: 0,
                    ts: now(),
                    id: cmd.id().to_owned(),
                    kind: cmd.command().kind().to_owned(),
                    outcome: ex.outcome,
                    output: ex.output,
                    error: ex.error,
                    duration_us,
                })
                .await;
            if ex.then == Some(After::Restart) {
                restart.notify_one();
            }
        });
    }

    /// Waits for every execution started so far.
    pub async fn settle(&mut self) {
        while self.running.join_next().await.is_some() {}
    }
}

/// The agent's executor: commands act through [`Hooks`].
#[derive(Debug)]
pub struct AgentExecutor {
    hooks: Hooks,
    slots: Arc<Semaphore>,
}

impl AgentExecutor {
    /// An executor acting through `hooks`.
    pub fn new(hooks: Hooks) -> Self {
        Self {
            hooks,
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT)),
        }
    }

    fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Execution> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            Execution::failed(format!(
                "busy: {MAX_CONCURRENT} commands are running; try again later"
            ))
        })
    }
}

impl Executor for AgentExecutor {
    async fn execute(&self, cmd: &VerifiedCommand) -> Execution {
        match cmd.command() {
            Command::Ping {} => Execution::ok(json!({
                "agent_version": env!("CARGO_PKG_VERSION"),
                "time": now(),
            })),
            Command::Collect { what } => {
                let (done, answer) = oneshot::channel();
                if self
                    .hooks
                    .collect
                    .try_send(CollectRequest { what: *what, done })
                    .is_err()
                {
                    return Execution::failed("busy: collections are already queued");
                }
                match tokio::time::timeout(COLLECT_TIMEOUT, answer).await {
                    Ok(Ok(Ok(seq))) => Execution::ok(json!({"what": what, "seq": seq})),
                    Ok(Ok(Err(e))) => Execution::failed(e),
                    Ok(Err(_)) => Execution::failed("the collector stopped"),
                    Err(_) => Execution::failed("collection timed out"),
                }
            }
            Command::SetIntervals {
                heartbeat_secs,
                metrics_secs,
            } => {
                self.hooks.intervals.send_modify(|i| {
                    if let Some(s) = heartbeat_secs {
                        i.heartbeat = Duration::from_secs(*s);
                    }
                    if let Some(s) = metrics_secs {
                        i.metrics = Duration::from_secs(*s);
                    }
                });
                let now_set = *self.hooks.intervals.borrow();
                Execution::ok(json!({
                    "heartbeat_secs": now_set.heartbeat.as_secs(),
                    "metrics_secs": now_set.metrics.as_secs(),
                    "until": "restart",
                }))
            }
            Command::Renew {} => {
                self.hooks.renew.send_modify(|n| *n = n.wrapping_add(1));
                Execution::ok(json!({"renewal": "started"}))
            }
            Command::Restart {} => Execution {
                outcome: Outcome::Ok,
                output: json!({"restart": "after this result"}),
                error: None,
                then: Some(After::Restart),
            },
            Command::Run {
                script,
                timeout_secs,
            } => {
                let _slot = match self.slot() {
                    Ok(s) => s,
                    Err(busy) => return busy,
                };
                run_script(script, Duration::from_secs(*timeout_secs), OUTPUT_CAP).await
            }
            Command::Processes { limit } => {
                let _slot = match self.slot() {
                    Ok(s) => s,
                    Err(busy) => return busy,
                };
                let limit = *limit;
                match tokio::task::spawn_blocking(move || collect::processes_by_cpu(limit)).await {
                    Ok(list) => Execution::ok(json!({"processes": list})),
                    Err(e) => Execution::failed(format!("process listing failed: {e}")),
                }
            }
        }
    }
}

/// Up to `cap` bytes of a stream, read to its end.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

async fn capture(reader: Option<impl AsyncRead + Unpin>, out: &mut Captured, cap: usize) {
    let Some(mut reader) = reader else {
        return;
    };
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = cap.saturating_sub(out.bytes.len());
                out.bytes.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    out.truncated = true;
                }
            }
        }
    }
}

fn shell(script: &str) -> tokio::process::Command {
    #[cfg(windows)]
    {
        let mut c = tokio::process::Command::new("cmd.exe");
        c.arg("/C").raw_arg(script);
        c
    }
    #[cfg(not(windows))]
    {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }
}

/// Runs `script` with the system shell (`/bin/sh -c`, `cmd.exe /C`), killed after `timeout`;
/// stdout and stderr are kept up to `cap` bytes each. Output:
/// `{exit_code, stdout, stderr, timed_out, truncated}`; a non-zero exit or a timeout fails.
/// Processes the script started in the background are not killed with it.
pub async fn run_script(script: &str, timeout: Duration, cap: usize) -> Execution {
    let mut cmd = shell(script);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Execution::failed(format!("cannot start the shell: {e}")),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (mut out, mut err) = (Captured::default(), Captured::default());
    let finished = tokio::time::timeout(timeout, async {
        let (_, _, status) = tokio::join!(
            capture(stdout, &mut out, cap),
            capture(stderr, &mut err, cap),
            child.wait()
        );
        status
    })
    .await;
    let (exit_code, timed_out, error) = match finished {
        Ok(Ok(status)) => match status.code() {
            Some(0) => (Some(0), false, None),
            Some(c) => (Some(c), false, Some(format!("exit code {c}"))),
            None => (None, false, Some("killed by a signal".to_owned())),
        },
        Ok(Err(e)) => (None, false, Some(format!("cannot wait for the shell: {e}"))),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            (
                None,
                true,
                Some(format!("timed out after {} s", timeout.as_secs())),
            )
        }
    };
    let output = json!({
        "exit_code": exit_code,
        "stdout": String::from_utf8_lossy(&out.bytes),
        "stderr": String::from_utf8_lossy(&err.bytes),
        "timed_out": timed_out,
        "truncated": out.truncated || err.truncated,
    });
    Execution {
        outcome: if error.is_none() {
            Outcome::Ok
        } else {
            Outcome::Failed
        },
        output,
        error,
        then: None,
    }
}

/// The subjects of one device: commands, trust pushes, trust requests.
pub fn subjects(
    account: &wegweiser_shared::ids::AccountKey,
    device: &wegweiser_shared::ids::DeviceId,
) -> (String, String, String) {
    (
        subject::down(account, device, &[Token::from_static(COMMAND_TOKEN)]),
        subject::down(account, device, &[Token::from_static(TRUST_TOKEN)]),
        subject::up(account, device, &[Token::from_static(TRUST_TOKEN)]),
    )
}

/// Listens for commands (on the subject the pipeline expects) and trust pushes (on
/// `trust_subject`) forever (abort the task to stop it); fetches trust when `connected` is
/// notified and every [`TRUST_REFRESH_EVERY`].
pub async fn serve<S: TrustSource, E: Executor>(
    mut commands: Commands<S, E>,
    subscriptions: Subscriptions,
    connected: Arc<Notify>,
) {
    let Subscriptions {
        commands: mut cmd_sub,
        trust: mut trust_sub,
    } = subscriptions;
    let mut hourly = tokio::time::interval(TRUST_REFRESH_EVERY);
    hourly.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    hourly.tick().await;
    enum Next {
        Command(Option<async_nats::Message>),
        Trust(Option<async_nats::Message>),
        Refresh,
        Joined,
    }
    loop {
        let next = tokio::select! {
            m = cmd_sub.next() => Next::Command(m),
            m = trust_sub.next() => Next::Trust(m),
            () = connected.notified() => Next::Refresh,
            _ = hourly.tick() => Next::Refresh,
            Some(_) = commands.running.join_next(), if !commands.running.is_empty() => Next::Joined,
        };
        match next {
            Next::Command(Some(m)) => commands.on_command(&m.payload, now()).await,
            Next::Trust(Some(m)) => commands.on_trust_push(&m.payload, now()).await,
            Next::Command(None) | Next::Trust(None) => {
                tracing::warn!("Command subscription ended.");
                commands.settle().await;
                return;
            }
            Next::Refresh => {
                commands.refresh_trust(false, now()).await;
            }
            Next::Joined => {}
        }
    }
}

/// The command and trust-push subscriptions.
#[derive(Debug)]
pub struct Subscriptions {
    /// `wg.<account>.down.<device>.cmd`.
    pub commands: async_nats::Subscriber,
    /// `wg.<account>.down.<device>.trust`.
    pub trust: async_nats::Subscriber,
}

/// Subscribes to the command and trust-push subjects, retrying until it can. `run` does this
/// before anything is published, so the server knows the subscriptions before the control plane
/// can see the agent (its first heartbeat or event): no command sent after that is missed.
pub async fn subscribe(client: &Client, cmd_subject: &str, trust_subject: &str) -> Subscriptions {
    loop {
        match (
            client.subscribe(cmd_subject.to_owned()).await,
            client.subscribe(trust_subject.to_owned()).await,
        ) {
            (Ok(commands), Ok(trust)) => return Subscriptions { commands, trust },
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "Cannot subscribe to commands; trying again.");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
