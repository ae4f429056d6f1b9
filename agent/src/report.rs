//! Reports with acknowledged delivery: every report goes through the offline [`Spool`] first and
//! leaves it only once JetStream has acknowledged it.
//!
//! - [`Reporter::send`] (and [`Reporter::heartbeat`], [`Reporter::inventory`],
//!   [`Reporter::metrics`], [`Reporter::event`], [`Reporter::result`]) gives the report the spool's next sequence
//!   number (so the `seq` in the payload is the spool's), serializes it, refuses it above
//!   [`telemetry::MAX_REPORT_BYTES`] and pushes it with its subject
//!   `wg.<account>.up.<device>.tel.<kind>` and message id `<device>-<seq>`. When the spool had to
//!   drop old reports to make room, a `spool_overflow` event follows.
//! - [`Reporter::deliver`] sends the spooled reports in order, pipelined: each is published
//!   with a `Nats-Msg-Id` header and a reply subject `<inbox>.<seq>` that the stream answers
//!   with its acknowledgement, with up to [`MAX_IN_FLIGHT`] reports ([`MAX_IN_FLIGHT_BYTES`])
//!   awaiting theirs. Acknowledgements (also of duplicates) may come back in any order; the
//!   spool acknowledges the longest confirmed prefix once per round (one `ack` file write for up
//!   to [`PEEK_BATCH`] reports). An error reply, a timeout ([`ACK_TIMEOUT`] for the oldest
//!   report waiting), no responders or a lost connection ends the round; everything after the
//!   confirmed prefix is sent again after a full-jitter backoff (250 ms doubling to 30 s), reset
//!   by a success. Reports sent behind a failed one may already be stored; the stream drops
//!   them as duplicates on the retry, so every report is stored once, in order unless a report
//!   failed while later ones got through. It wakes when a report is pushed and when the client
//!   (re)connects ([`Reporter::waker`]).
//!
//! Spool I/O (file writes, fsync) runs in `spawn_blocking`; the spool sits behind a
//! `std::sync::Mutex` held only there.

use crate::{
    schedule,
    spool::{DEFAULT_MAX_BYTES, Record, Spool, SpoolError},
    status::StatusFile,
};
use async_nats::{Client, HeaderMap, connection::State as ConnState};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::{
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::Notify;
use wegweiser_shared::{
    command::CommandResult,
    ids::{AccountKey, DeviceId},
    subject::{self, Token},
    telemetry::{
        self, Event, EventKind, Heartbeat, Inventory, Kind, MAX_REPORT_BYTES, Metrics,
        TELEMETRY_TOKEN, VERSION,
    },
    time::now,
};

/// The header JetStream deduplicates by.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// How long one report waits for its acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Records read from the spool per delivery round.
pub const PEEK_BATCH: usize = 1024;
/// Bytes of reports read from the spool per delivery round (at least one report is read).
pub const PEEK_BYTES: usize = 4 * 1024 * 1024;
/// Reports sent and awaiting their acknowledgement at most.
pub const MAX_IN_FLIGHT: usize = 256;
/// Bytes of reports awaiting their acknowledgement at most (one larger report may go alone).
pub const MAX_IN_FLIGHT_BYTES: usize = 1024 * 1024;
/// While waiting for acknowledgements, how often the connection state is looked at.
const CONNECTION_RECHECK: Duration = Duration::from_millis(250);
/// First retry delay ceiling.
pub const RETRY_BASE: Duration = schedule::RECONNECT_BASE;
/// Largest retry delay.
pub const RETRY_CAP: Duration = schedule::RECONNECT_CAP;
/// How long delivery waits, while disconnected, before looking at the connection again (a
/// reconnect normally wakes it earlier).
const OFFLINE_RECHECK: Duration = Duration::from_secs(5);
/// Overflow events pushed in a row at most (each may itself push old records out).
const MAX_OVERFLOW_EVENTS: usize = 4;

/// Why a report was not spooled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The report is larger than [`MAX_REPORT_BYTES`].
    #[error("a {kind} report of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Its subject token.
        kind: &'static str,
        /// Its size.
        size: usize,
        /// [`MAX_REPORT_BYTES`].
        limit: usize,
    },
    /// The report could not be serialized.
    #[error("cannot encode a report: {0}")]
    Encode(#[from] serde_json::Error),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The blocking spool task failed (panicked or was cancelled).
    #[error("the spool task failed: {0}")]
    Task(String),
}

/// Why one report was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The client is not connected.
    #[error("not connected")]
    NotConnected,
    /// No acknowledgement within [`ACK_TIMEOUT`].
    #[error("no acknowledgement within {ACK_TIMEOUT:?}")]
    Timeout,
    /// Nothing stores reports on that subject (no stream, or no import).
    #[error("no responders (no stream stores this subject)")]
    NoResponders,
    /// The request failed otherwise.
    #[error("request failed: {0}")]
    Request(String),
    /// JetStream answered with an error.
    #[error("JetStream refused the report ({code}/{err_code}): {description}")]
    Refused {
        /// HTTP-like status code.
        code: u64,
        /// JetStream's error code.
        err_code: u64,
        /// Its description.
        description: String,
    },
    /// The reply was neither an acknowledgement nor an error.
    #[error("unexpected reply: {0}")]
    BadReply(String),
}

/// A JetStream publish acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// The stream that stored the report.
    pub stream: String,
    /// Its sequence number in the stream.
    pub seq: u64,
    /// The stream already had this message id (a replay): stored once.
    pub duplicate: bool,
}

#[derive(Deserialize)]
struct RawReply {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<RawApiError>,
}

#[derive(Deserialize)]
struct RawApiError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Parses a reply to a publish request: a [`PubAck`] (`{"stream":"S","seq":7}`, possibly with
/// `"duplicate":true`), or [`DeliveryError::Refused`] for an error reply (`{"error":{…}}`), or
/// [`DeliveryError::BadReply`] for anything else.
pub fn parse_pub_ack(payload: &[u8]) -> Result<PubAck, DeliveryError> {
    if payload.is_empty() {
        return Err(DeliveryError::BadReply("empty reply".to_owned()));
    }
    let raw: RawReply = serde_json::from_slice(payload).map_err(|e| {
        DeliveryError::BadReply(format!(
            "not JSON ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if let Some(e) = raw.error {
        return Err(DeliveryError::Refused {
            code: e.code,
            err_code: e.err_code,
            description: e.description,
        });
    }
    match (raw.stream, raw.seq) {
        (Some(stream), Some(seq)) if !stream.is_empty() => Ok(PubAck {
            stream,
            seq,
            duplicate: raw.duplicate,
        }),
        _ => Err(DeliveryError::BadReply(
            "no stream and sequence in the reply".to_owned(),
        )),
    }
}

/// The subject of a report of `kind`: `wg.<account>.up.<device>.tel.<kind token>`.
pub fn report_subject(account: &AccountKey, device: &DeviceId, kind: Kind) -> String {
    subject::up(
        account,
        device,
        &[
            Token::from_static(TELEMETRY_TOKEN),
            Token::from_static(kind.token()),
        ],
    )
}

/// What a heartbeat says about signed commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartbeatExtras {
    /// The trusted keyset's version, once one is pinned.
    pub keyset_version: Option<u64>,
    /// Commands refused since the agent started.
    pub commands_rejected: u64,
}

/// Sends reports through the offline spool. Share it in an [`Arc`].
#[derive(Debug)]
pub struct Reporter {
    spool: Arc<Mutex<Spool>>,
    account: AccountKey,
    device: DeviceId,
    /// Wakes [`Reporter::deliver`]: a report was pushed, or the client (re)connected.
    wake: Arc<Notify>,
    /// How many times the client has (re)connected ([`Reporter::connections`]).
    connects: Arc<AtomicU64>,
    /// Records waiting in the spool, as of the last spool operation.
    depth: Arc<AtomicU64>,
    /// The depth last written to `status.json`.
    shown_depth: AtomicU64,
    status: StatusFile,
}

impl Reporter {
    /// Opens the spool in `dir` ([`DEFAULT_MAX_BYTES`]) and reports what opening found: a
    /// `spool_corrupt` event per damaged segment set aside, a `spool_overflow` event for records
    /// dropped to fit.
    pub async fn open(
        dir: &Path,
        account: AccountKey,
        device: DeviceId,
        status: StatusFile,
    ) -> Result<Arc<Self>, ReportError> {
        let dir = dir.to_owned();
        let (spool, report) =
            tokio::task::spawn_blocking(move || Spool::open(&dir, DEFAULT_MAX_BYTES))
                .await
                .map_err(|e| ReportError::Task(e.to_string()))??;
        let depth = spool.len();
        if report.recovered_records > 0 {
            tracing::info!(
                records = report.recovered_records,
                "Reports from an earlier run are waiting in the spool."
            );
        }
        let reporter = Arc::new(Self {
            spool: Arc::new(Mutex::new(spool)),
            account,
            device,
            wake: Arc::new(Notify::new()),
            connects: Arc::new(AtomicU64::new(0)),
            depth: Arc::new(AtomicU64::new(depth)),
            shown_depth: AtomicU64::new(u64::MAX),
            status,
        });
        for file in &report.set_aside {
            let _ = reporter
                .event(EventKind::SpoolCorrupt {
                    file: file.display().to_string(),
                })
                .await;
        }
        // Dropped while opening (a smaller bound than what was on disk).
        let (account, device) = (reporter.account.clone(), reporter.device.clone());
        reporter
            .with_spool(move |s| report_overflow(s, &account, &device))
            .await?;
        reporter.show_depth();
        Ok(reporter)
    }

    /// What wakes [`Reporter::deliver`]; notify it when the client (re)connects.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The connect counter: increment it on every (re)connect. Replies to reports sent on an
    /// earlier connection may be lost with it, so delivery resends them at once instead of
    /// waiting out [`ACK_TIMEOUT`] (a renewal's reconnect takes well under the connection
    /// check interval, so the state alone does not show it).
    pub fn connections(&self) -> Arc<AtomicU64> {
        self.connects.clone()
    }

    /// Reports waiting in the spool.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::SeqCst)
    }

    /// Spools a report of `kind`: `build` gets its sequence number and returns the report
    /// (whose `seq` field must be that number). Returns the sequence number. A refused report
    /// (too large, spool failure) is logged and the error returned.
    pub async fn send<T, F>(&self, kind: Kind, build: F) -> Result<u64, ReportError>
    where
        T: Serialize,
        F: FnOnce(u64) -> T + Send + 'static,
    {
        self.push(kind, move |seq, _| build(seq)).await
    }

    /// Spools an inventory (its `v` and `seq` are set here).
    pub async fn inventory(&self, mut inventory: Inventory) -> Result<u64, ReportError> {
        self.send(Kind::Inventory, move |seq| {
            inventory.v = VERSION;
            inventory.seq = seq;
            inventory
        })
        .await
    }

    /// Spools metrics (their `v` and `seq` are set here).
    pub async fn metrics(&self, mut metrics: Metrics) -> Result<u64, ReportError> {
        self.send(Kind::Metrics, move |seq| {
            metrics.v = VERSION;
            metrics.seq = seq;
            metrics
        })
        .await
    }

    /// Spools an event, stamped now.
    pub async fn event(&self, what: EventKind) -> Result<u64, ReportError> {
        self.send(Kind::Event, move |seq| event(seq, what)).await
    }

    /// Spools a command result (its `v` and `seq` are set here) on `tel.res`.
    pub async fn result(&self, mut result: CommandResult) -> Result<u64, ReportError> {
        self.send(Kind::Result, move |seq| {
            result.v = VERSION;
            result.seq = seq;
            result
        })
        .await
    }

    /// Spools a heartbeat, with the spool's depth (before it) as `spool_depth`.
    pub async fn heartbeat(
        &self,
        jwt_expires_at: i64,
        extras: HeartbeatExtras,
    ) -> Result<u64, ReportError> {
        self.push(Kind::Heartbeat, move |seq, spool| Heartbeat {
            v: VERSION,
            seq,
            ts: now(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            jwt_expires_at,
            spool_depth: spool.len(),
            keyset_version: extras.keyset_version,
            commands_rejected: extras.commands_rejected,
        })
        .await
    }

    async fn push<T, F>(&self, kind: Kind, build: F) -> Result<u64, ReportError>
    where
        T: Serialize,
        F: FnOnce(u64, &Spool) -> T + Send + 'static,
    {
        let (account, device) = (self.account.clone(), self.device.clone());
        let result = self
            .with_spool(move |s| {
                let pushed = push_report(s, &account, &device, kind, build);
                report_overflow(s, &account, &device);
                pushed
            })
            .await
            .and_then(|r| r);
        match &result {
            Ok(seq) => {
                tracing::debug!(kind = kind.token(), seq, "Report spooled.");
                self.wake.notify_one();
            }
            Err(e) => tracing::warn!(kind = kind.token(), error = %e, "Report refused."),
        }
        result
    }

    /// Runs `f` on the spool in a blocking task, then records the spool's depth.
    async fn with_spool<R, F>(&self, f: F) -> Result<R, ReportError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Spool) -> R + Send + 'static,
    {
        let (spool, depth) = (self.spool.clone(), self.depth.clone());
        tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().unwrap_or_else(PoisonError::into_inner);
            let r = f(&mut spool);
            depth.store(spool.len(), Ordering::SeqCst);
            r
        })
        .await
        .map_err(|e| ReportError::Task(e.to_string()))
    }

    /// A handle that counts the spool's users: the spool (and its directory lock) is closed
    /// once its `strong_count` is 0.
    pub fn spool_handle(&self) -> std::sync::Weak<Mutex<Spool>> {
        Arc::downgrade(&self.spool)
    }

    /// Every record waiting in the spool (tests look at what was reported).
    #[cfg(test)]
    pub(crate) fn spooled(&self) -> Vec<Record> {
        self.spool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .peek(usize::MAX)
            .unwrap_or_default()
    }

    /// Writes the spool depth to `status.json` when it changed.
    fn show_depth(&self) {
        let depth = self.depth();
        if self.shown_depth.swap(depth, Ordering::SeqCst) != depth {
            self.status.update(|s| s.spool_depth = depth);
        }
    }

    /// Waits until the spool is empty, at most `within`; whether it is.
    pub async fn wait_empty(&self, within: Duration) -> bool {
        let empty = tokio::time::timeout(within, async {
            while self.depth() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok();
        self.show_depth();
        empty
    }

    /// Delivers spooled reports over `client`, in order, forever (abort the task to stop it).
    pub async fn deliver(&self, client: Client) {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut attempt = 0u32;
        loop {
            if client.connection_state() != ConnState::Connected {
                let _ = tokio::time::timeout(OFFLINE_RECHECK, self.wake.notified()).await;
                continue;
            }
            let failed = match self
                .with_spool(|s| s.peek_bounded(PEEK_BATCH, PEEK_BYTES))
                .await
            {
                Ok(Ok(batch)) if batch.is_empty() => {
                    self.show_depth();
                    self.wake.notified().await;
                    continue;
                }
                Ok(Ok(batch)) => self.deliver_batch(&client, batch, &mut attempt).await,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Cannot read the spool.");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the spool.");
                    true
                }
            };
            self.show_depth();
            if failed {
                let delay = schedule::full_jitter(attempt, RETRY_BASE, RETRY_CAP, &mut rng);
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Sends `batch` in order with up to [`MAX_IN_FLIGHT`] reports awaiting their
    /// acknowledgement, and acknowledges in the spool the longest prefix the stream confirmed.
    /// Whether a report failed (then the rest of the batch is retried from it).
    async fn deliver_batch(&self, client: &Client, batch: Vec<Record>, attempt: &mut u32) -> bool {
        let mut window = Window {
            connection: Some((self.connects.clone(), self.connects.load(Ordering::SeqCst))),
            ..Window::default()
        };
        let inbox = client.new_inbox();
        let (confirmed, failure) = match client.subscribe(format!("{inbox}.*")).await {
            Ok(replies) => window.run(client, &inbox, replies, &batch).await,
            Err(e) => (None, Some((None, DeliveryError::Request(e.to_string())))),
        };
        if let Some(seq) = confirmed {
            *attempt = 0;
            tracing::debug!(up_to = seq, "Reports acknowledged.");
            let failed = match self.with_spool(move |s| s.ack(seq)).await {
                Ok(Ok(())) => false,
                Ok(Err(e)) => {
                    tracing::warn!(seq, error = %e, "Cannot mark reports as delivered.");
                    true
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "Cannot mark reports as delivered.");
                    true
                }
            };
            if failed {
                return true;
            }
        }
        match failure {
            None => false,
            Some((record, e)) => {
                let record = record.and_then(|seq| batch.iter().find(|r| r.seq == seq));
                tracing::warn!(
                    seq = record.map(|r| r.seq),
                    subject = record.map(|r| r.subject.as_str()),
                    attempt = *attempt,
                    error = %e,
                    "A report was not acknowledged; will retry."
                );
                true
            }
        }
    }
}

/// Reports sent and not yet acknowledged, oldest first.
#[derive(Default)]
struct Window {
    /// Sequence number, send time and size of every report awaiting its reply.
    waiting: std::collections::VecDeque<(u64, tokio::time::Instant, usize)>,
    /// Replies received for reports behind the oldest one still waiting.
    early: std::collections::BTreeSet<u64>,
    /// Bytes of the reports waiting.
    bytes: usize,
    /// The last report of the confirmed prefix.
    confirmed: Option<u64>,
    /// The connect counter and its value when the round began.
    connection: Option<(Arc<AtomicU64>, u64)>,
}

/// What failed, and for which report if known.
type Failure = (Option<u64>, DeliveryError);

impl Window {
    /// Publishes `batch` in order (reply subjects `<inbox>.<seq>`, answered by the stream on
    /// `replies`) and collects the acknowledgements. Returns the last report of the confirmed
    /// prefix and the failure that ended the round, if any.
    async fn run(
        &mut self,
        client: &Client,
        inbox: &str,
        mut replies: async_nats::Subscriber,
        batch: &[Record],
    ) -> (Option<u64>, Option<Failure>) {
        let mut failure = None;
        for record in batch {
            while self.waiting.len() >= MAX_IN_FLIGHT
                || (!self.waiting.is_empty()
                    && self.bytes + record.payload.len() > MAX_IN_FLIGHT_BYTES)
            {
                if let Err(f) = self.receive(client, &mut replies).await {
                    failure = Some(f);
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
            if client.connection_state() != ConnState::Connected {
                failure = Some((Some(record.seq), DeliveryError::NotConnected));
                break;
            }
            let mut headers = HeaderMap::new();
            headers.insert(MSG_ID_HEADER, record.msg_id.as_str());
            if let Err(e) = client
                .publish_with_reply_and_headers(
                    record.subject.clone(),
                    format!("{inbox}.{}", record.seq),
                    headers,
                    record.payload.clone().into(),
                )
                .await
            {
                failure = Some((Some(record.seq), DeliveryError::Request(e.to_string())));
                break;
            }
            self.waiting.push_back((
                record.seq,
                tokio::time::Instant::now(),
                record.payload.len(),
            ));
            self.bytes += record.payload.len();
        }
        if failure.is_none() {
            while !self.waiting.is_empty() {
                if let Err(f) = self.receive(client, &mut replies).await {
                    failure = Some(f);
                    break;
                }
            }
        }
        let _ = replies.unsubscribe().await;
        (self.confirmed, failure)
    }

    /// Waits for one reply (or the oldest report's deadline) and records it.
    async fn receive(
        &mut self,
        client: &Client,
        replies: &mut async_nats::Subscriber,
    ) -> Result<(), Failure> {
        use futures::StreamExt as _;
        let Some(&(oldest, sent, _)) = self.waiting.front() else {
            return Ok(());
        };
        let deadline = sent + ACK_TIMEOUT;
        let reply = loop {
            // Look at the connection now and then: a lost one is not worth the whole timeout.
            let wait = deadline.min(tokio::time::Instant::now() + CONNECTION_RECHECK);
            match tokio::time::timeout_at(wait, replies.next()).await {
                Ok(Some(reply)) => break reply,
                Ok(None) => {
                    return Err((
                        Some(oldest),
                        DeliveryError::Request("reply subscription closed".into()),
                    ));
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err((Some(oldest), DeliveryError::Timeout));
                }
                Err(_)
                    if client.connection_state() != ConnState::Connected
                        || self
                            .connection
                            .as_ref()
                            .is_some_and(|(c, at)| c.load(Ordering::SeqCst) != *at) =>
                {
                    return Err((Some(oldest), DeliveryError::NotConnected));
                }
                Err(_) => {}
            }
        };
        let Some(seq) = reply
            .subject
            .rsplit('.')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Ok(());
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err((Some(seq), DeliveryError::NoResponders));
        }
        parse_pub_ack(&reply.payload).map_err(|e| (Some(seq), e))?;
        self.early.insert(seq);
        while let Some(&(front, _, size)) = self.waiting.front() {
            if !self.early.remove(&front) {
                break;
            }
            self.waiting.pop_front();
            self.bytes -= size;
            self.confirmed = Some(front);
        }
        Ok(())
    }
}

/// An event report.
fn event(seq: u64, what: EventKind) -> Event {
    Event {
        v: VERSION,
        seq,
        ts: now(),
        what,
    }
}

/// Builds, checks and pushes one report; the payload's `seq` is the spool's.
fn push_report<T, F>(
    spool: &mut Spool,
    account: &AccountKey,
    device: &DeviceId,
    kind: Kind,
    build: F,
) -> Result<u64, ReportError>
where
    T: Serialize,
    F: FnOnce(u64, &Spool) -> T,
{
    let seq = spool.next_seq();
    let payload = serde_json::to_vec(&build(seq, spool))?;
    if payload.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLarge {
            kind: kind.token(),
            size: payload.len(),
            limit: MAX_REPORT_BYTES,
        });
    }
    let subject = report_subject(account, device, kind);
    let pushed = spool.push(&subject, &telemetry::message_id(device, seq), &payload)?;
    debug_assert_eq!(pushed, seq);
    Ok(pushed)
}

/// Pushes a `spool_overflow` event when the spool dropped records.
fn report_overflow(spool: &mut Spool, account: &AccountKey, device: &DeviceId) {
    for _ in 0..MAX_OVERFLOW_EVENTS {
        let dropped = spool.take_dropped();
        if dropped == 0 {
            return;
        }
        tracing::warn!(
            dropped,
            "The spool was full: the oldest undelivered reports were dropped."
        );
        let what = EventKind::SpoolOverflow { dropped };
        if let Err(e) = push_report(spool, account, device, Kind::Event, |seq, _| {
            event(seq, what)
        }) {
            tracing::warn!(error = %e, "Cannot spool the overflow event.");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Issuer;

    async fn open(dir: &Path, issuer: &Issuer) -> Arc<Reporter> {
        let status = StatusFile::start(dir.join("status.json"), issuer.device.as_str(), None);
        Reporter::open(
            &dir.join("spool"),
            issuer.account.clone(),
            issuer.device.clone(),
            status,
        )
        .await
        .unwrap()
    }

    fn peek_all(r: &Reporter) -> Vec<Record> {
        r.spool.lock().unwrap().peek(1000).unwrap()
    }

    #[test]
    fn subjects_carry_the_kind_token() {
        let issuer = Issuer::new();
        let (a, d) = (&issuer.account, &issuer.device);
        for (kind, token) in [
            (Kind::Heartbeat, "hb"),
            (Kind::Inventory, "inv"),
            (Kind::Metrics, "met"),
            (Kind::Event, "evt"),
            (Kind::Result, "res"),
        ] {
            assert_eq!(
                report_subject(a, d, kind),
                format!("wg.{a}.up.{d}.tel.{token}")
            );
        }
    }

    #[tokio::test]
    async fn payload_seq_is_the_spool_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let issuer = Issuer::new();
        let r = open(tmp.path(), &issuer).await;
        r.event(EventKind::AgentStart {
            agent_version: "0.1.0".into(),
        })
        .await
        .unwrap();
        r.heartbeat(
            99,
            HeartbeatExtras {
                keyset_version: Some(4),
                commands_rejected: 2,
            },
        )
        .await
        .unwrap();
        let seq = r
            .send(Kind::Metrics, |seq| serde_json::json!({"v": 1, "seq": seq}))
            .await
            .unwrap();
        assert_eq!(seq, 3);
        assert_eq!(r.depth(), 3);
        let records = peek_all(&r);
        let kinds = ["evt", "hb", "met"];
        for (i, rec) in records.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_slice(&rec.payload).unwrap();
            assert_eq!(v["seq"], rec.seq, "{v}");
            assert_eq!(rec.msg_id, format!("{}-{}", issuer.device, rec.seq));
            assert!(rec.subject.ends_with(&format!(".tel.{}", kinds[i])));
        }
        let hb: Heartbeat = serde_json::from_slice(&records[1].payload).unwrap();
        assert_eq!((hb.spool_depth, hb.jwt_expires_at), (1, 99));
        assert_eq!((hb.keyset_version, hb.commands_rejected), (Some(4), 2));
        let ev: Event = serde_json::from_slice(&records[0].payload).unwrap();
        assert!(matches!(ev.what, EventKind::AgentStart { .. }));

        // Numbering continues after a restart, acknowledged or not.
        r.spool.lock().unwrap().ack(2).unwrap();
        drop(r);
        let r = open(tmp.path(), &issuer).await;
        assert_eq!(r.depth(), 1);
        assert_eq!(r.send(Kind::Event, |seq| seq).await.unwrap(), 4);
        let status = crate::status::read(&tmp.path().join("status.json")).unwrap();
        assert_eq!(status.spool_depth, 1);
    }

    #[tokio::test]
    async fn oversize_reports_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let issuer = Issuer::new();
        let r = open(tmp.path(), &issuer).await;
        let big = "x".repeat(MAX_REPORT_BYTES);
        let e = r
            .send(
                Kind::Inventory,
                move |seq| serde_json::json!({"seq": seq, "software": big}),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, ReportError::TooLarge { kind: "inv", .. }),
            "{e}"
        );
        assert_eq!(r.depth(), 0);
        // The number was not used up.
        assert_eq!(r.send(Kind::Event, |seq| seq).await.unwrap(), 1);
    }

    #[test]
    fn pub_acks_are_parsed() {
        assert_eq!(
            parse_pub_ack(br#"{"stream":"WG_TELEMETRY","seq":42}"#),
            Ok(PubAck {
                stream: "WG_TELEMETRY".into(),
                seq: 42,
                duplicate: false
            })
        );
        assert_eq!(
            parse_pub_ack(br#"{"stream":"WG_TELEMETRY","domain":"hub","seq":42,"duplicate":true}"#),
            Ok(PubAck {
                stream: "WG_TELEMETRY".into(),
                seq: 42,
                duplicate: true
            })
        );
        assert_eq!(
            parse_pub_ack(
                br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#
            ),
            Err(DeliveryError::Refused {
                code: 503,
                err_code: 10077,
                description: "maximum messages exceeded".into()
            })
        );
        for garbage in [&b""[..], b"ok", b"{}", b"[1]", br#"{"stream":"","seq":1}"#] {
            assert!(
                matches!(parse_pub_ack(garbage), Err(DeliveryError::BadReply(_))),
                "{garbage:?}"
            );
        }
    }
}
