//! `run`: stay connected to NATS, send heartbeats, renew the credentials before they expire.
//!
//! - **Connection**: TLS trusting only `nats-ca.pem`; the auth callback signs the server's nonce
//!   with the *current* key and presents the *current* JWT, read from shared state on every
//!   (re)connect, so renewed credentials apply on the next reconnect; replies arrive under
//!   `_INBOX.<device>`; reconnects back off with full jitter (250 ms … 30 s), forever.
//! - **Reports** go through [`Reporter`] (offline spool in `<state dir>/spool`, delivered in
//!   order and removed once JetStream acknowledges them): an `agent_start` event at start,
//!   `spool_corrupt` / `spool_overflow` events when the spool loses records, `agent_stop` on
//!   shutdown.
//! - **Heartbeats** on `wg.<account>.up.<device>.tel.hb` at every connect and every
//!   `heartbeat_secs` while connected, with the spool's depth, the trusted command keyset's
//!   version and the count of refused commands.
//! - **Signed commands** ([`crate::commands`]): a task verifies, refuses or executes the commands
//!   on `wg.<account>.down.<device>.cmd` and keeps the command trust current (pushes on `.trust`,
//!   a fetch at every connect and every hour). Commands reach the rest of the agent through
//!   hooks: `collect` asks the collection loop for a report now, `set_intervals` changes the
//!   heartbeat and metrics intervals (a `watch` both loops read) until the agent restarts,
//!   `renew` wakes the renewal loop, and `restart` stops the agent the normal way with
//!   [`Stopped::Restart`] (the command line then runs it again in the same process).
//! - **Renewal** at about half of the remaining lifetime (±10 %), by request on
//!   `wg.<account>.up.<device>.renew`, optionally moving to a new key; the new credentials are
//!   stored, swapped in, and a reconnect makes the server see them. Transport failures are
//!   retried with backoff; a refusal with code `revoked`, `unknown_device` or `stale_key` stops
//!   the agent ([`RunError::ReenrollRequired`], exit code 78).
//! - **Key rotation retries**: the next key is made once per renewal and stored in
//!   `device.nk.next` before the first request ([`store::pending_key`]); every retry, and the
//!   first renewal after a restart, sends that same key and proof, and the control plane answers
//!   a repeated rotation idempotently. So a lost answer never leaves the control plane holding a
//!   key the device has lost.
//! - **Revocation**: revoking a device also revokes its key in the account JWT, so the server
//!   drops the connection ("User Authentication Revoked") and the device can no longer reach the
//!   renewal responder. When the server reports the key the connection presented as revoked,
//!   the agent stops the same way (code `revoked`, exit code 78) instead of retrying forever.
//! - **Shutdown** when the given future completes (or a `restart` command): spool `agent_stop`,
//!   give delivery up to [`DRAIN_GRACE`] to empty the spool, flush, drain, write `stopped`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wegweiser_agent::run::RunError> {
//! let paths = wegweiser_agent::paths::Paths::in_dir("/tmp/agent");
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let agent = tokio::spawn(async move {
//!     wegweiser_agent::run::run(&paths, async { let _ = stopped.await; }).await
//! });
//! // … later:
//! let _ = stop.send(());
//! # Ok(())
//! # }
//! ```

use crate::{
    commands::{self, AgentExecutor, CollectRequest, CommandStats, Hooks, Intervals},
    config::AgentConfig,
    paths::Paths,
    report::{HeartbeatExtras, ReportError, Reporter},
    schedule,
    status::{State, StatusFile},
    store::{self, Credentials, StoreError},
};
use async_nats::{AuthError, Client, ConnectOptions, Event, connection::State as ConnState};
use rand::SeedableRng;
use std::{
    future::Future,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, mpsc, watch};
use wegweiser_shared::{
    command::{CollectWhat, Expected},
    enroll::{NewKey, RENEW_TOKEN, RenewRequest, RenewResponse, new_key_proof_message, sign_proof},
    ids::{DeviceId, UserKey},
    secret::SecretString,
    subject::{self, Token},
    telemetry::EventKind,
    time::now,
};

/// Subject tokens of heartbeats: `wg.<account>.up.<device>.tel.hb`.
pub const HEARTBEAT_TOKENS: [&str; 2] = [wegweiser_shared::telemetry::TELEMETRY_TOKEN, "hb"];
/// How long a renewal request may take.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown gives delivery to empty the spool, and the connection to drain.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Renewal refusals after which the device can only enroll again (`stale_key`: the control
/// plane holds another key for this device, so it never renews this one again).
pub const REENROLL_CODES: [&str; 3] = ["revoked", "unknown_device", "stale_key"];
/// The refusal code for a key that is no longer the device's.
const STALE_KEY: &str = "stale_key";
/// Reconnect delay once `run` has returned (see `Shared::stopped`).
const STOPPED_RETRY_DELAY: Duration = Duration::from_secs(86_400);
/// Largest renewal answer accepted.
const MAX_RENEW_RESPONSE: usize = 64 * 1024;
/// Longest single sleep while waiting for a renewal: the wall clock is checked again after it,
/// so a machine that slept (suspend) renews on time.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How the agent stopped, when it was not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// The shutdown future completed (signal, service stop).
    Shutdown,
    /// A signed `restart` command: run the agent again.
    Restart,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The enrollment could not be loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another agent process runs on the same files.
    #[error(
        "another wegweiser-agent is already running with {path}; stop it first (two agents would fight over one identity)"
    )]
    AlreadyRunning {
        /// The lock file.
        path: String,
    },
    /// The lock file could not be opened.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The offline spool could not be opened.
    #[error("cannot open the report spool: {0}")]
    Spool(#[source] ReportError),
    /// The NATS client could not be set up (bad server URL).
    #[error("cannot start the NATS client: {0}")]
    Connect(String),
    /// The device's credentials were revoked or its record is gone: it must enroll again.
    #[error(
        "this device must be enrolled again ({code}: {message}); get a new token and run `wegweiser-agent enroll --force --url URL --token TOKEN`"
    )]
    ReenrollRequired {
        /// The refusal code (`revoked`, `unknown_device`, `stale_key`).
        code: String,
        /// The control plane's message.
        message: String,
    },
}

/// Why one renewal attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// The request did not get an answer (not connected, no responder, timeout).
    #[error("renewal request failed: {0}")]
    Transport(String),
    /// The answer was not a usable renewal response.
    #[error("unexpected renewal answer: {0}")]
    BadResponse(String),
    /// The control plane refused.
    #[error("renewal refused ({code}): {message}")]
    Refused {
        /// Stable code.
        code: String,
        /// Message.
        message: String,
    },
    /// The new credentials could not be stored (they are not used then).
    #[error("cannot store the renewed credentials: {0}")]
    Store(#[from] StoreError),
    /// A key could not be made or could not sign.
    #[error("key error: {0}")]
    Key(String),
}

/// The heartbeat report (`shared::telemetry::Heartbeat`, version 1).
pub use wegweiser_shared::telemetry::Heartbeat;

/// What the connection callbacks and the tasks share.
#[derive(Debug)]
struct Shared {
    /// The credentials the auth callback presents; replaced on renewal.
    credentials: RwLock<Credentials>,
    /// The public key presented on the latest (re)connect.
    presented: Mutex<Option<String>>,
    /// Set before a reconnect the agent asked for, so it is not reported as a failure.
    expect_reconnect: AtomicBool,
    /// Set when `run` returns: late events no longer touch the status, and a client that never
    /// connected stops retrying (async-nats keeps its connect loop alive otherwise).
    stopped: AtomicBool,
    /// Signalled on every connect (heartbeat at connect).
    connected: Notify,
    /// Wakes report delivery on every connect ([`Reporter::waker`]).
    delivery: Arc<Notify>,
    /// Counts connects for report delivery ([`Reporter::connections`]).
    connects: Arc<std::sync::atomic::AtomicU64>,
    /// Signalled when the connection is closed (end of drain).
    closed: Notify,
    /// Signalled when the server revoked the key the connection presented.
    revoked: Notify,
    /// Signalled on every connect: fetch the command trust.
    trust_refresh: Arc<Notify>,
    /// Signalled once a `restart` command's result is spooled.
    restart: Arc<Notify>,
    /// Bumped by a `renew` command.
    renew_now: Arc<watch::Sender<u64>>,
    /// Command counters and trusted versions (heartbeats, status).
    commands: Arc<CommandStats>,
    /// The file `status` reads.
    status: StatusFile,
    /// This device.
    device: DeviceId,
}

impl Shared {
    fn current(&self) -> Credentials {
        self.credentials
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, credentials: Credentials) {
        *self
            .credentials
            .write()
            .unwrap_or_else(PoisonError::into_inner) = credentials;
    }
}

/// Runs the agent from the files at `paths` until `shutdown` completes (then
/// `Ok(Stopped::Shutdown)`), a `restart` command arrives (`Ok(Stopped::Restart)`: call `run`
/// again) or the device must enroll again ([`RunError::ReenrollRequired`]).
pub async fn run(paths: &Paths, shutdown: impl Future<Output = ()>) -> Result<Stopped, RunError> {
    // Locked before loading: loading may finish an interrupted key rotation.
    let lock_path = paths.lock_file();
    let lock = if paths.state_dir().is_dir() {
        crate::platform::try_lock(&lock_path).map(Some)
    } else {
        Ok(None) // Not enrolled: loading says so.
    };
    let _lock = match lock {
        Ok(Some(Some(lock))) => Some(lock),
        Ok(None) => None,
        Ok(Some(None)) => {
            return Err(RunError::AlreadyRunning {
                path: lock_path.display().to_string(),
            });
        }
        Err(source) => {
            return Err(RunError::Lock {
                path: lock_path.display().to_string(),
                source,
            });
        }
    };
    let store::Enrollment {
        config,
        credentials,
    } = store::load(paths)?;
    let status = StatusFile::start(
        paths.status_file(),
        config.device_id.as_str(),
        credentials.expires_at(),
    );
    tracing::info!(
        device = %config.device_id,
        tenant = %config.tenant,
        servers = ?config.nats_urls,
        public_key = %credentials.public_key(),
        jwt_expires_at = ?credentials.expires_at(),
        "Starting."
    );
    warn_if_expired(&credentials, &status);

    let reporter = match Reporter::open(
        &paths.spool_dir(),
        config.account.clone(),
        config.device_id.clone(),
        status.clone(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Cannot open the report spool.");
            status.set_state(State::Stopped, Some(e.to_string()));
            return Err(RunError::Spool(e));
        }
    };
    let _ = reporter
        .event(EventKind::AgentStart {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .await;

    let shared = Arc::new(Shared {
        credentials: RwLock::new(credentials),
        presented: Mutex::new(None),
        expect_reconnect: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
        connected: Notify::new(),
        delivery: reporter.waker(),
        connects: reporter.connections(),
        closed: Notify::new(),
        revoked: Notify::new(),
        trust_refresh: Arc::new(Notify::new()),
        restart: Arc::new(Notify::new()),
        renew_now: Arc::new(watch::Sender::new(0)),
        commands: Arc::new(CommandStats::default()),
        status: status.clone(),
        device: config.device_id.clone(),
    });
    let options = connect_options(&config, paths, shared.clone());
    let client = match options.connect(config.nats_urls.as_slice()).await {
        Ok(c) => c,
        Err(e) => {
            status.set_state(State::Stopped, Some(e.to_string()));
            return Err(RunError::Connect(e.to_string()));
        }
    };

    // Before anything is published (see `commands::subscribe`).
    let (cmd_subject, trust_push, _) = commands::subjects(&config.account, &config.device_id);
    let subscriptions = commands::subscribe(&client, &cmd_subject, &trust_push).await;
    let delivery = tokio::spawn({
        let (reporter, client) = (reporter.clone(), client.clone());
        async move { reporter.deliver(client).await }
    });
    let intervals = Arc::new(watch::Sender::new(Intervals {
        heartbeat: Duration::from_secs(config.heartbeat_secs.max(1)),
        metrics: Duration::from_secs(config.metrics_secs.max(1)),
    }));
    let (collect_tx, collect_rx) = mpsc::channel(4);
    let heartbeats = tokio::spawn(heartbeat_loop(
        client.clone(),
        reporter.clone(),
        shared.clone(),
        intervals.subscribe(),
    ));
    let collectors = tokio::spawn(collect_loop(
        reporter.clone(),
        intervals.subscribe(),
        Duration::from_secs(config.inventory_check_secs),
        collect_rx,
    ));
    let command_task = tokio::spawn(command_loop(
        client.clone(),
        subscriptions,
        config.clone(),
        paths.clone(),
        reporter.clone(),
        shared.clone(),
        Hooks {
            collect: collect_tx,
            intervals,
            renew: shared.renew_now.clone(),
        },
    ));
    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("Shutting down.");
            Ok(Stopped::Shutdown)
        }
        () = shared.restart.notified() => {
            tracing::info!("Restarting (signed command).");
            Ok(Stopped::Restart)
        }
        e = renew_loop(client.clone(), config, paths.clone(), shared.clone()) => Err(e),
        () = shared.revoked.notified() => {
            tracing::error!(
                device = %shared.device,
                "The NATS server revoked this device's key: it must be enrolled again with a new token."
            );
            Err(RunError::ReenrollRequired {
                code: "revoked".to_owned(),
                message: "the NATS server revoked this device's key".to_owned(),
            })
        }
    };
    command_task.abort();
    let _ = command_task.await;
    heartbeats.abort();
    collectors.abort();
    let _ = heartbeats.await;
    let _ = collectors.await;
    if let Ok(stopped) = result {
        let reason = match stopped {
            Stopped::Restart => "restart",
            Stopped::Shutdown => "signal",
        };
        let _ = reporter
            .event(EventKind::AgentStop {
                reason: reason.to_owned(),
            })
            .await;
        if client.connection_state() == ConnState::Connected
            && !reporter.wait_empty(DRAIN_GRACE).await
        {
            tracing::warn!(
                waiting = reporter.depth(),
                "Reports still waiting; they are sent on the next start."
            );
        }
    }
    delivery.abort();
    let _ = delivery.await;

    let was_connected = client.connection_state() == ConnState::Connected;
    if was_connected {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    }
    match client.drain().await {
        Ok(()) if was_connected => {
            let _ = tokio::time::timeout(DRAIN_GRACE, shared.closed.notified()).await;
        }
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "Cannot drain the connection."),
    }
    shared.stopped.store(true, Ordering::SeqCst);
    match &result {
        Ok(_) => status.set_state(State::Stopped, None),
        Err(e) => status.set_state(State::ReenrollRequired, Some(e.to_string())),
    }
    // The spool (and its lock) closes with the last task that used it, so a `run` called
    // right after this one (restart) can open it.
    let spool = reporter.spool_handle();
    drop(reporter);
    let released = tokio::time::timeout(DRAIN_GRACE, async {
        while spool.strong_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if released.is_err() {
        tracing::warn!("The report spool is still in use after shutdown.");
    }
    tracing::info!("Stopped.");
    result
}

fn warn_if_expired(credentials: &Credentials, status: &StatusFile) {
    if let Some(exp) = credentials.expires_at()
        && exp <= now()
    {
        let msg = format!(
            "the device's credentials expired at {exp}; the servers will refuse them and they cannot be renewed without a connection: enroll again with a new token"
        );
        tracing::error!(expired_at = exp, "{msg}");
        status.set_state(State::Starting, Some(msg));
    }
}

fn connect_options(config: &AgentConfig, paths: &Paths, shared: Arc<Shared>) -> ConnectOptions {
    let auth_state = shared.clone();
    ConnectOptions::with_auth_callback(move |nonce| {
        let creds = auth_state.current();
        *auth_state
            .presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(creds.public_key());
        async move {
            let signature = creds
                .key()
                .sign(&nonce)
                .map_err(|e| AuthError::new(format!("cannot sign the server nonce: {e}")))?;
            let mut auth = async_nats::Auth::new();
            auth.jwt = Some(creds.jwt().expose().to_owned());
            auth.signature = Some(signature);
            Ok(auth)
        }
    })
    .name(format!("wegweiser-agent/{}", env!("CARGO_PKG_VERSION")))
    .custom_inbox_prefix(subject::inbox_prefix(config.device_id.as_str()))
    .add_root_certificates(paths.ca_file())
    .require_tls(true)
    .connection_timeout(Duration::from_secs(10))
    .retry_on_initial_connect()
    .max_reconnects(None)
    .reconnect_delay_callback({
        let shared = shared.clone();
        move |attempt| {
            if shared.stopped.load(Ordering::SeqCst) {
                return STOPPED_RETRY_DELAY;
            }
            schedule::reconnect_delay(attempt, &mut rand::thread_rng())
        }
    })
    .event_callback(move |event| {
        let shared = shared.clone();
        async move { on_event(event, &shared) }
    })
}

fn on_event(event: Event, shared: &Shared) {
    if shared.stopped.load(Ordering::SeqCst) {
        return;
    }
    let (status, device) = (&shared.status, &shared.device);
    match event {
        Event::Connected => {
            tracing::info!(device = %device, "Connected.");
            status.set_state(State::Connected, None);
            shared.connected.notify_one();
            shared.trust_refresh.notify_one();
            shared.connects.fetch_add(1, Ordering::SeqCst);
            shared.delivery.notify_one();
        }
        Event::Disconnected => {
            if shared.expect_reconnect.swap(false, Ordering::SeqCst) {
                tracing::info!(device = %device, "Reconnecting with the renewed credentials.");
            } else {
                tracing::warn!(device = %device, "Disconnected; reconnecting.");
            }
            status.set_state(State::Disconnected, None);
        }
        Event::ServerError(e) => {
            let msg = e.to_string();
            let current = shared.current();
            if msg.to_ascii_lowercase().contains("revoked") {
                // Only a revocation of the key this connection presented is final: after a
                // key rotation, the old connection may still be told about the old key.
                let presented = shared
                    .presented
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if presented.as_deref() == Some(current.public_key().as_str()) {
                    shared.revoked.notify_one();
                }
            }
            if current.expires_at().is_some_and(|exp| exp <= now()) {
                tracing::error!(error = %msg, "Server error; the device's credentials have expired: enroll again with a new token.");
            } else {
                tracing::warn!(error = %msg, "Server error.");
            }
            status.update(|s| s.last_error = Some(format!("server: {msg}")));
        }
        Event::ClientError(e) => {
            let msg = e.to_string();
            if shared
                .current()
                .expires_at()
                .is_some_and(|exp| exp <= now())
            {
                tracing::error!(error = %msg, "Cannot connect; the device's credentials have expired: enroll again with a new token.");
            } else {
                tracing::warn!(error = %msg, "Connection error.");
            }
            status.update(|s| s.last_error = Some(msg));
        }
        Event::LameDuckMode => tracing::info!("Server entering lame duck mode; will move."),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "Slow consumer."),
        Event::Draining => tracing::debug!("Draining."),
        Event::Closed => {
            tracing::debug!("Connection closed.");
            shared.closed.notify_one();
        }
    }
}

/// A ticker that first fires one `every` from now.
fn ticker(every: Duration) -> tokio::time::Interval {
    let every = every.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

async fn heartbeat_loop(
    client: Client,
    reporter: Arc<Reporter>,
    shared: Arc<Shared>,
    mut intervals: watch::Receiver<Intervals>,
) {
    let mut tick = ticker(intervals.borrow_and_update().heartbeat);
    let mut watching = true;
    loop {
        let on_connect = tokio::select! {
            () = shared.connected.notified() => true,
            _ = tick.tick() => false,
            changed = intervals.changed(), if watching => {
                if changed.is_err() {
                    // The commands task is gone: keep the current interval.
                    watching = false;
                } else {
                    let every = intervals.borrow_and_update().heartbeat;
                    tracing::info!(heartbeat_secs = every.as_secs(), "Heartbeat interval changed.");
                    tick = ticker(every);
                }
                continue;
            }
        };
        if on_connect {
            tick.reset();
        } else if client.connection_state() != ConnState::Connected {
            // Heartbeats spooled while offline would arrive late and stale.
            continue;
        }
        let jwt_expires_at = shared.current().expires_at().unwrap_or_default();
        let extras = HeartbeatExtras {
            keyset_version: shared.commands.keyset_version(),
            commands_rejected: shared.commands.rejected(),
        };
        // Refusals are logged by the reporter.
        if let Ok(seq) = reporter.heartbeat(jwt_expires_at, extras).await {
            tracing::debug!(seq, "Heartbeat spooled.");
            shared.status.update(|s| {
                s.last_heartbeat = Some(now());
                s.heartbeats_sent += 1;
            });
        }
    }
}

/// Sleeps until wall-clock time `at` (unix seconds), in steps that notice a suspended machine.
async fn sleep_until_unix(at: i64) {
    loop {
        let left = at.saturating_sub(now());
        if left <= 0 {
            return;
        }
        let left = Duration::from_secs(u64::try_from(left).unwrap_or(u64::MAX));
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

/// Renews forever; returns only when the device must enroll again.
async fn renew_loop(
    client: Client,
    config: AgentConfig,
    paths: Paths,
    shared: Arc<Shared>,
) -> RunError {
    let status = &shared.status;
    let subject = subject::up(
        &config.account,
        &config.device_id,
        &[Token::from_static(RENEW_TOKEN)],
    );
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut renew_now = shared.renew_now.subscribe();
    loop {
        let creds = shared.current();
        match creds.expires_at() {
            Some(exp) => {
                let at = schedule::renew_at(creds.issued_at(), exp, now(), &mut rng);
                tracing::info!(renew_at = at, expires_at = exp, "Renewal scheduled.");
                tokio::select! {
                    () = sleep_until_unix(at) => {}
                    _ = renew_now.changed() => tracing::info!("Renewing now (signed command)."),
                }
            }
            None => {
                tracing::info!("The device's JWT does not expire; renewing only when asked.");
                if renew_now.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }

        let mut attempt = 0u32;
        // Decided before the first attempt, then sent unchanged by every retry.
        let mut plan = RotationPlan::Undecided;
        loop {
            match renew_once(&client, &subject, &config, &paths, &shared, &mut plan).await {
                Ok((renewed, rotated)) => {
                    let expires_at = renewed.expires_at();
                    tracing::info!(
                        expires_at = ?expires_at,
                        rotated,
                        public_key = %renewed.public_key(),
                        "Credentials renewed."
                    );
                    shared.replace(renewed);
                    status.update(|s| {
                        s.jwt_expires_at = expires_at;
                        s.last_renewal = Some(now());
                        s.last_error = None;
                    });
                    // The server sees the new JWT (and key) on the next connect.
                    reconnect(&client, &shared).await;
                    // A `renew` command that came while this renewal ran is answered by it.
                    renew_now.mark_unchanged();
                    break;
                }
                Err(e) => {
                    let presented = shared
                        .presented
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let current = shared.current().public_key();
                    if let Some(stop) = reenroll_required(&e, presented.as_deref(), &current) {
                        tracing::error!(
                            error = %e,
                            "The control plane refused this device: it must be enrolled again with a new token."
                        );
                        return stop;
                    }
                    if matches!(&e, RenewError::Refused { code, .. } if code == STALE_KEY) {
                        // The connection still presents an earlier key: move it to the current
                        // one, then ask again.
                        reconnect(&client, &shared).await;
                    }
                    let delay = schedule::renew_retry_delay(attempt, &mut rng);
                    tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "Renewal failed; will retry.");
                    status.update(|s| s.last_error = Some(e.to_string()));
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

/// Forces a reconnect, so the server sees the current credentials.
async fn reconnect(client: &Client, shared: &Shared) {
    shared.expect_reconnect.store(true, Ordering::SeqCst);
    if let Err(e) = client.force_reconnect().await {
        shared.expect_reconnect.store(false, Ordering::SeqCst);
        tracing::warn!(error = %e, "Cannot reconnect with the renewed credentials.");
    }
}

/// The [`RunError::ReenrollRequired`] a failed renewal calls for, if any: a refusal with one of
/// [`REENROLL_CODES`]. `stale_key` is final only when the connection presented the device's
/// current key: right after a rotation, a connection that has not reconnected yet still presents
/// the previous one.
fn reenroll_required(e: &RenewError, presented: Option<&str>, current: &str) -> Option<RunError> {
    let RenewError::Refused { code, message } = e else {
        return None;
    };
    if !REENROLL_CODES.contains(&code.as_str()) {
        return None;
    }
    if code == STALE_KEY && presented.is_some_and(|p| p != current) {
        return None;
    }
    Some(RunError::ReenrollRequired {
        code: code.clone(),
        message: message.clone(),
    })
}

/// The key rotation of one renewal: decided before its first attempt, then sent unchanged by
/// every retry (same key, same proof).
#[derive(Default)]
enum RotationPlan {
    /// Not decided yet: before the first attempt, or storing the pending key failed.
    #[default]
    Undecided,
    /// Renew the current key.
    KeepKey,
    /// Move to the pending key (stored in `device.nk.next`).
    MoveTo {
        /// The pending key (boxed: a key pair is large).
        key: Box<nkeys::KeyPair>,
        /// Its public key and proof, as sent.
        new_key: NewKey,
    },
}

/// Decides the rotation of a renewal from the current key `old`: the pending key when one is
/// stored (an earlier attempt or an interrupted rotation may have reached the control plane, so
/// it must be finished even if rotation was switched off since), else a new key, stored before
/// it is used, when `rotate`; else none. Blocking (file I/O).
fn plan_rotation(
    paths: &Paths,
    device: &DeviceId,
    old: &str,
    rotate: bool,
) -> Result<RotationPlan, RenewError> {
    Ok(match store::pending_key(paths, rotate)? {
        Some(key) => {
            let new_key = prove(&key, device, old)?;
            RotationPlan::MoveTo {
                key: Box::new(key),
                new_key,
            }
        }
        None => RotationPlan::KeepKey,
    })
}

/// One renewal request. On success the new credentials are stored (not yet swapped in); the
/// bool tells whether the key was rotated. `plan` is decided on the first attempt and reused by
/// the retries.
async fn renew_once(
    client: &Client,
    subject: &str,
    config: &AgentConfig,
    paths: &Paths,
    shared: &Shared,
    plan: &mut RotationPlan,
) -> Result<(Credentials, bool), RenewError> {
    let old = shared.current();
    if matches!(plan, RotationPlan::Undecided) {
        let (p, device, old_key, rotate) = (
            paths.clone(),
            config.device_id.clone(),
            old.public_key(),
            config.rotate_key_on_renew,
        );
        *plan = tokio::task::spawn_blocking(move || plan_rotation(&p, &device, &old_key, rotate))
            .await
            .map_err(|e| RenewError::Key(format!("key task failed: {e}")))??;
    }
    let request = RenewRequest {
        new_key: match &*plan {
            RotationPlan::MoveTo { new_key, .. } => Some(new_key.clone()),
            RotationPlan::Undecided | RotationPlan::KeepKey => None,
        },
    };
    let payload =
        serde_json::to_vec(&request).map_err(|e| RenewError::BadResponse(e.to_string()))?;
    let answer = tokio::time::timeout(
        RENEW_TIMEOUT,
        client.request(subject.to_owned(), payload.into()),
    )
    .await
    .map_err(|_| RenewError::Transport("timed out".to_owned()))?
    .map_err(|e| RenewError::Transport(e.to_string()))?;
    if answer.payload.len() > MAX_RENEW_RESPONSE {
        return Err(RenewError::BadResponse(format!(
            "{} bytes, at most {MAX_RENEW_RESPONSE} expected",
            answer.payload.len()
        )));
    }
    let response: RenewResponse = serde_json::from_slice(&answer.payload).map_err(|e| {
        RenewError::BadResponse(format!(
            "not a renewal response ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let jwt = match response {
        RenewResponse::Ok { jwt, .. } => SecretString::new(jwt),
        RenewResponse::Refused(body) => {
            return Err(RenewError::Refused {
                code: body.code,
                message: body.message,
            });
        }
    };
    let (key, rotated) = match &*plan {
        RotationPlan::MoveTo { key, .. } => (key.as_ref().clone(), true),
        RotationPlan::Undecided | RotationPlan::KeepKey => (old.key().as_ref().clone(), false),
    };
    let renewed = Credentials::new(key, jwt, &config.device_id, &config.account)
        .map_err(|e| RenewError::BadResponse(e.to_string()))?;
    let (p, c) = (paths.clone(), renewed.clone());
    tokio::task::spawn_blocking(move || store::save_renewed(&p, &c, rotated))
        .await
        .map_err(|e| RenewError::Key(format!("storing task failed: {e}")))??;
    Ok((renewed, rotated))
}

/// The proof that the device holds `new`: its signature over the rotation message from the
/// current key `old`.
fn prove(new: &nkeys::KeyPair, device: &DeviceId, old: &str) -> Result<NewKey, RenewError> {
    let public_key: UserKey = new
        .public_key()
        .parse()
        .map_err(|e| RenewError::Key(format!("{e}")))?;
    let message = new_key_proof_message(device, old, &public_key);
    let proof = sign_proof(new, &message)
        .ok_or_else(|| RenewError::Key("the new key cannot sign its proof".to_owned()))?;
    Ok(NewKey { public_key, proof })
}

/// How often the inventory is sent even when it did not change.
pub const INVENTORY_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Runs the signed-command task ([`commands::serve`]).
async fn command_loop(
    client: Client,
    subscriptions: commands::Subscriptions,
    config: AgentConfig,
    paths: Paths,
    reporter: Arc<Reporter>,
    shared: Arc<Shared>,
    hooks: Hooks,
) {
    let (cmd_subject, _, trust_request) = commands::subjects(&config.account, &config.device_id);
    let setup = commands::Setup {
        paths,
        expected: Expected {
            tenant: config.tenant.clone(),
            device: config.device_id.clone(),
            subject: cmd_subject,
        },
        allowed: config.allowed_commands(),
        reporter,
        status: shared.status.clone(),
        stats: shared.commands.clone(),
        restart: shared.restart.clone(),
    };
    tracing::info!(allowed = ?setup.allowed, "Accepting signed commands.");
    let pipeline = commands::Commands::open(
        setup,
        commands::NatsTrust::new(client.clone(), trust_request),
        AgentExecutor::new(hooks),
    )
    .await;
    commands::serve(pipeline, subscriptions, shared.trust_refresh.clone()).await;
}

/// Collects inventory or metrics on the blocking pool: the report and the collectors' errors.
async fn collect_now(
    collector: &Arc<std::sync::Mutex<crate::collect::Collector>>,
    what: CollectWhat,
) -> Option<(
    Option<wegweiser_shared::telemetry::Inventory>,
    Option<wegweiser_shared::telemetry::Metrics>,
    Vec<crate::collect::CollectError>,
)> {
    let c = collector.clone();
    tokio::task::spawn_blocking(move || {
        let Ok(mut c) = c.lock() else {
            return None;
        };
        let ts = now();
        Some(match what {
            CollectWhat::Inventory => {
                let (inv, errors) = c.inventory(0, ts, env!("CARGO_PKG_VERSION"));
                (Some(inv), None, errors)
            }
            CollectWhat::Metrics => {
                let m = c.metrics(0, ts);
                (None, Some(m), c.take_errors())
            }
        })
    })
    .await
    .ok()
    .flatten()
}

/// Spools an inventory; one too large for a report sheds software entries (the rest still
/// matters more than a complete package list). Its sequence number, or why it was not queued.
async fn send_inventory(
    reporter: &Reporter,
    mut inv: wegweiser_shared::telemetry::Inventory,
) -> Result<u64, crate::report::ReportError> {
    loop {
        match reporter.inventory(inv.clone()).await {
            Ok(seq) => return Ok(seq),
            Err(crate::report::ReportError::TooLarge { .. }) if !inv.software.is_empty() => {
                let keep = inv.software.len() / 2;
                inv.software.truncate(keep);
                let _ = reporter
                    .event(EventKind::CollectionError {
                        collector: "software".to_owned(),
                        message: format!(
                            "inventory too large; software list cut to {keep} entries"
                        ),
                    })
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Inventory not queued.");
                return Err(e);
            }
        }
    }
}

/// Sends the inventory at start, when it changes (checked every `check`) and every 24 h, and
/// metrics every metrics interval (which `set_intervals` may change). A [`CollectRequest`]
/// collects and sends one report now (an inventory even when unchanged) and answers with its
/// sequence number. Collection runs on the blocking pool; failures become `collection_error`
/// events.
async fn collect_loop(
    reporter: Arc<crate::report::Reporter>,
    mut intervals: watch::Receiver<Intervals>,
    check: Duration,
    mut requests: mpsc::Receiver<CollectRequest>,
) {
    use crate::collect::{Collector, inventory_fingerprint};
    let collector = Arc::new(std::sync::Mutex::new(Collector::new()));
    let mut metrics_tick = tokio::time::interval(intervals.borrow_and_update().metrics);
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check_tick = tokio::time::interval(check.min(INVENTORY_EVERY));
    check_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_fingerprint = None;
    let mut last_sent = tokio::time::Instant::now();
    let mut watching = true;
    loop {
        let (what, request) = tokio::select! {
            _ = check_tick.tick() => (CollectWhat::Inventory, None),
            _ = metrics_tick.tick() => (CollectWhat::Metrics, None),
            Some(r) = requests.recv() => (r.what, Some(r.done)),
            changed = intervals.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                } else {
                    let every = intervals.borrow_and_update().metrics;
                    tracing::info!(metrics_secs = every.as_secs(), "Metrics interval changed.");
                    metrics_tick = ticker(every);
                }
                continue;
            }
        };
        let forced = request.is_some();
        let answer = move |r: Result<u64, String>| {
            if let Some(done) = request {
                let _ = done.send(r);
            }
        };
        let Some((inventory, metrics, errors)) = collect_now(&collector, what).await else {
            answer(Err("the collector failed".to_owned()));
            continue;
        };
        for e in errors {
            let _ = reporter.event(e.to_event()).await;
        }
        match (metrics, inventory) {
            (Some(m), _) => {
                let queued = reporter.metrics(m).await;
                if let Err(e) = &queued {
                    tracing::warn!(error = %e, "Metrics not queued.");
                }
                answer(queued.map_err(|e| e.to_string()));
            }
            (None, Some(inv)) => {
                let fingerprint = inventory_fingerprint(&inv);
                let stale = last_sent.elapsed() >= INVENTORY_EVERY;
                if !forced && last_fingerprint == Some(fingerprint) && !stale {
                    continue;
                }
                let queued = send_inventory(&reporter, inv).await;
                answer(queued.map_err(|e| e.to_string()));
                last_fingerprint = Some(fingerprint);
                last_sent = tokio::time::Instant::now();
            }
            (None, None) => answer(Err("nothing was collected".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Issuer;
    use wegweiser_shared::enroll::verify_proof;

    #[test]
    fn rotation_proof_verifies_with_the_new_key() {
        let issuer = Issuer::new();
        let (old, new) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
        let nk = prove(&new, &issuer.device, &old.public_key()).unwrap();
        assert_eq!(nk.public_key.as_str(), new.public_key());
        let msg = new_key_proof_message(&issuer.device, &old.public_key(), &nk.public_key);
        assert!(verify_proof(&nk.public_key, &msg, &nk.proof));
        // Signed by the old key it would not verify.
        let wrong = sign_proof(&old, &msg).unwrap();
        assert!(!verify_proof(&nk.public_key, &msg, &wrong));
    }

    fn moves_to(plan: &RotationPlan) -> (String, NewKey) {
        match plan {
            RotationPlan::MoveTo { key, new_key } => (key.public_key(), new_key.clone()),
            RotationPlan::Undecided | RotationPlan::KeepKey => panic!("no rotation planned"),
        }
    }

    #[test]
    fn a_retried_rotation_sends_the_same_pending_key_and_proof() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let issuer = Issuer::new();
        let old = nkeys::KeyPair::new_user();
        issuer.enroll(&paths, &old);
        let device = &issuer.device;
        let old_key = old.public_key();

        // Without rotation nothing is generated.
        assert!(matches!(
            plan_rotation(&paths, device, &old_key, false).unwrap(),
            RotationPlan::KeepKey
        ));
        assert!(!paths.next_seed_file().exists());

        // The first attempt stores the key before anything is sent.
        let (first_key, first) = moves_to(&plan_rotation(&paths, device, &old_key, true).unwrap());
        assert_eq!(
            store::load_seed(&paths.next_seed_file())
                .unwrap()
                .public_key(),
            first_key
        );
        let msg = new_key_proof_message(device, &old_key, &first.public_key);
        assert!(verify_proof(&first.public_key, &msg, &first.proof));

        // The answer was lost; the agent even restarted (its JWT is still the old key's) and
        // rotation was switched off meanwhile: the retry sends the same key and proof.
        let loaded = store::load(&paths).unwrap();
        assert_eq!(loaded.credentials.public_key(), old_key);
        let (key, again) = moves_to(&plan_rotation(&paths, device, &old_key, false).unwrap());
        assert_eq!(key, first_key);
        assert_eq!(again.public_key, first.public_key);
        assert_eq!(again.proof, first.proof);

        // The control plane answers (idempotently) with a JWT for the pending key: committed.
        let pending = store::pending_key(&paths, false).unwrap().unwrap();
        let renewed = Credentials::new(
            pending,
            issuer.jwt(&first_key, 600),
            device,
            &issuer.account,
        )
        .unwrap();
        store::save_renewed(&paths, &renewed, true).unwrap();
        assert!(!paths.next_seed_file().exists());
        assert_eq!(
            store::load(&paths).unwrap().credentials.public_key(),
            first_key
        );
        // The next rotation gets a new key.
        let (next_key, _) = moves_to(&plan_rotation(&paths, device, &first_key, true).unwrap());
        assert_ne!(next_key, first_key);
    }

    #[test]
    fn stale_key_requires_enrolling_again() {
        let refused = |code: &str| RenewError::Refused {
            code: code.into(),
            message: "m".into(),
        };
        let current = "UCURRENT";
        for code in ["revoked", "unknown_device", "stale_key"] {
            match reenroll_required(&refused(code), Some(current), current) {
                Some(RunError::ReenrollRequired { code: c, message }) => {
                    assert_eq!((c.as_str(), message.as_str()), (code, "m"));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        // A connection that still presents the previous key (just rotated) is not final.
        assert!(reenroll_required(&refused("stale_key"), Some("UPREVIOUS"), current).is_none());
        assert!(reenroll_required(&refused("revoked"), Some("UPREVIOUS"), current).is_some());
        // Other failures are retried.
        assert!(reenroll_required(&refused("internal"), Some(current), current).is_none());
        let e = RenewError::Transport("timed out".into());
        assert!(reenroll_required(&e, Some(current), current).is_none());
    }

    #[test]
    fn heartbeat_has_the_agreed_fields() {
        let hb = Heartbeat {
            v: 1,
            seq: 3,
            ts: 1700,
            agent_version: "0.1.0".into(),
            jwt_expires_at: 1800,
            spool_depth: 0,
            keyset_version: None,
            commands_rejected: 0,
        };
        let v = serde_json::to_value(&hb).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v":1,"seq":3,"ts":1700,"agent_version":"0.1.0","jwt_expires_at":1800,"spool_depth":0,"commands_rejected":0})
        );
        let hb = Heartbeat {
            keyset_version: Some(7),
            commands_rejected: 2,
            ..hb
        };
        let v = serde_json::to_value(&hb).unwrap();
        assert_eq!(
            (&v["keyset_version"], &v["commands_rejected"]),
            (&serde_json::json!(7), &serde_json::json!(2))
        );
    }

    #[tokio::test]
    async fn shutdown_without_a_server_writes_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(tmp.path());
        let issuer = Issuer::new();
        issuer.enroll(&paths, &nkeys::KeyPair::new_user());
        // Nothing listens on port 1: the agent keeps retrying until told to stop.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let paths = paths.clone();
            tokio::spawn(async move {
                run(&paths, async {
                    let _ = rx.await;
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A second agent on the same files is refused.
        let e = run(&paths, async {}).await.unwrap_err();
        assert!(matches!(e, RunError::AlreadyRunning { .. }), "{e}");
        let s = crate::status::read(&paths.status_file()).unwrap();
        assert!(
            matches!(s.state, State::Starting | State::Disconnected),
            "{s:?}"
        );
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let s = crate::status::read(&paths.status_file()).unwrap();
        assert_eq!(s.state, State::Stopped);
        // The lingering client no longer writes the status.
        let written = std::fs::read(paths.status_file()).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(std::fs::read(paths.status_file()).unwrap(), written);
        // Everything was released: the agent can run again at once in this process (what a
        // `restart` command does).
        let again = run(&paths, async {}).await.unwrap();
        assert_eq!(again, Stopped::Shutdown);
    }

    #[tokio::test]
    async fn not_enrolled_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let e = run(&Paths::in_dir(tmp.path()), async {}).await.unwrap_err();
        assert!(
            matches!(e, RunError::Store(StoreError::NotEnrolled { .. })),
            "{e}"
        );
    }
}
