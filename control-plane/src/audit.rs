//! The audit trail: an append-only JetStream stream in the control-plane account (delete and
//! purge are denied by the stream itself), every entry chained to the one before it by hash.
//!
//! Every entry is one JSON object on `wgcp.audit.<tenant>.<kind>` (`_` for entries of no
//! tenant), so a tenant's entries can be read without scanning everyone else's. Entries never
//! carry a secret: tokens appear only by their id (a prefix of their hash), keys only as public
//! keys.
//!
//! # The chain
//!
//! Each entry carries `seq` (its position in the chain, from 1), `prev` (the `hash` of the entry
//! before it, [`GENESIS`] for the first) and `hash`: hex SHA-256 of the entry's [canonical
//! encoding](canonical) without `hash` (keys sorted at every level, no whitespace). Appends are
//! serialised by the stream: each is published with `Nats-Expected-Last-Sequence` set to the
//! stream sequence of the entry it names as `prev`, so of two writers (tasks or replicas) that
//! read the same head only one is stored; the other re-reads the head and tries again. Within a
//! process appends take turns behind one lock, so they do not fight each other.
//!
//! [`ChainVerifier`] checks a sequence of raw stream messages: every hash recomputes, every
//! `prev` is the hash before it, `seq` counts up by one in stream order, and the stream
//! sequences have no gap (a message removed from the store shows as one even though the stream
//! denies delete). Entries written before the chain existed (no `hash`) are accepted only as a
//! prefix of the stream and reported as unchained.
//!
//! ```
//! use wegweiser_cp::audit::{AuditEntry, ChainVerifier, chain_entry};
//!
//! let first = chain_entry(&AuditEntry::new("token.create", "cli", "ok"), 1, wegweiser_cp::audit::GENESIS).unwrap();
//! let mut v = ChainVerifier::new();
//! v.push(1, &first.bytes).unwrap();
//! let report = v.finish(Some(1)).unwrap();
//! assert_eq!(report.entries, 1);
//! assert_eq!(report.head, first.hash);
//! ```

use crate::{
    authority::{AuthorityError, store_err},
    metrics::Metrics,
};
use async_nats::jetstream::{self, consumer::DeliverPolicy, message::PublishMessage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use wegweiser_shared::ids::TenantId;

/// The stream's name.
pub const AUDIT_STREAM: &str = "WG_AUDIT";
/// Subject prefix of audit entries.
pub const AUDIT_PREFIX: &str = "wgcp.audit";
/// The `prev` of the first entry of the chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The subject token of entries without a tenant (tenant ids never contain `_`).
pub const NO_TENANT: &str = "_";

/// Longest time one [`Audit::record`] may take, waiting for its turn included.
const RECORD_DEADLINE: Duration = Duration::from_secs(20);
/// Attempts of one append (conflicts with other writers and transient failures together).
const MAX_ATTEMPTS: u32 = 64;
/// How long after losing a race for the head a writer counts as contended (and so pauses
/// briefly after each append, leaving other replicas a turn).
const CONTENDED: Duration = Duration::from_secs(2);
/// Longest wait for one message while reading the stream.
const READ_IDLE: Duration = Duration::from_secs(10);

/// One audit entry. Callers fill in what happened; [`Audit::record`] sets `seq`, `prev` and
/// `hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain (from 1); 0 until recorded.
    #[serde(default)]
    pub seq: u64,
    /// Hash of the previous entry ([`GENESIS`] for the first); empty until recorded.
    #[serde(default)]
    pub prev: String,
    /// Unix seconds.
    pub ts: i64,
    /// What happened (`enroll`, `enroll.refused`, `ip.blocked`, `device.revoke`, …).
    pub kind: String,
    /// Outcome: `ok` or a refusal code.
    pub outcome: String,
    /// Tenant, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Device, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Remote address, for network requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Who acted (`cli`, `enrollment`, `renewal`, …).
    pub actor: String,
    /// Anything else worth keeping.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
    /// SHA-256 (hex) of the entry's canonical encoding without this field; empty until recorded.
    #[serde(default)]
    pub hash: String,
}

impl AuditEntry {
    /// An entry of `kind` by `actor` with `outcome`, stamped now.
    pub fn new(kind: &str, actor: &str, outcome: &str) -> Self {
        Self {
            seq: 0,
            prev: String::new(),
            ts: wegweiser_shared::time::now(),
            kind: kind.to_owned(),
            outcome: outcome.to_owned(),
            tenant: None,
            device: None,
            ip: None,
            actor: actor.to_owned(),
            detail: serde_json::Value::Null,
            hash: String::new(),
        }
    }

    /// The subject the entry is stored on.
    pub fn subject(&self) -> String {
        let tenant = self
            .tenant
            .as_deref()
            .filter(|t| t.parse::<TenantId>().is_ok())
            .unwrap_or(NO_TENANT);
        format!("{AUDIT_PREFIX}.{tenant}.{}", kind_token(&self.kind))
    }
}

/// The subject token of a kind (`enroll.refused` → `enroll_refused`).
pub fn kind_token(kind: &str) -> String {
    kind.replace(['.', ' ', '*', '>'], "_")
}

/// The canonical encoding hashed by the chain: JSON with the keys of every object sorted
/// (byte order), no whitespace, strings and numbers as `serde_json` writes them.
pub fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Writing a string, number, bool or null into a Vec cannot fail.
    let _ = serde_json::to_writer(out, v);
}

/// The hash of an entry object: SHA-256 (hex) of its canonical encoding without `hash`.
pub fn entry_hash(obj: &Map<String, Value>) -> String {
    let mut without = obj.clone();
    without.remove("hash");
    wegweiser_shared::enroll::hex(&Sha256::digest(canonical(&Value::Object(without))))
}

/// An entry ready to append.
#[derive(Debug, Clone)]
pub struct Chained {
    /// The stored bytes (canonical encoding, `hash` included).
    pub bytes: Vec<u8>,
    /// Its hash.
    pub hash: String,
    /// Its subject.
    pub subject: String,
}

/// Makes `entry` the `seq`-th entry of the chain after the entry whose hash is `prev`.
pub fn chain_entry(entry: &AuditEntry, seq: u64, prev: &str) -> Result<Chained, serde_json::Error> {
    let mut e = entry.clone();
    e.seq = seq;
    e.prev = prev.to_owned();
    e.hash = String::new();
    let Value::Object(mut obj) = serde_json::to_value(&e)? else {
        return Err(serde::ser::Error::custom("an audit entry is a JSON object"));
    };
    let hash = entry_hash(&obj);
    obj.insert("hash".into(), Value::String(hash.clone()));
    Ok(Chained {
        bytes: canonical(&Value::Object(obj)),
        hash,
        subject: e.subject(),
    })
}

/// The newest entry of the chain as this process last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    /// Its stream sequence (0: empty stream).
    stream_seq: u64,
    /// Its chain position (0: no chained entry yet).
    seq: u64,
    /// Its hash ([`GENESIS`] before the first).
    hash: String,
}

/// What a process keeps between appends.
#[derive(Debug, Default)]
struct Writer {
    /// The head as last seen (`None`: read it from the stream).
    head: Option<Head>,
    /// When an append last lost the race for the head to another writer.
    last_conflict: Option<Instant>,
}

/// Appends to the audit stream.
#[derive(Debug, Clone)]
pub struct Audit {
    js: jetstream::Context,
    /// The cached head; held across an append, so appends of this process take turns.
    head: Arc<tokio::sync::Mutex<Writer>>,
    metrics: Arc<Metrics>,
}

/// Why an append failed (after its retries).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The entry cannot be encoded.
    #[error("cannot encode the entry: {0}")]
    Encode(#[from] serde_json::Error),
    /// The head of the chain cannot be read.
    #[error("cannot read the head of the audit chain: {0}")]
    Head(String),
    /// The stream did not store the entry.
    #[error("the audit stream did not store the entry after {attempts} attempt(s): {last}")]
    NotStored {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Took longer than the deadline (waiting for the turn included).
    #[error("no audit append within {0:?}")]
    Deadline(Duration),
}

impl Audit {
    /// Opens (or creates) the stream.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuthorityError> {
        if js.get_stream(AUDIT_STREAM).await.is_err() {
            js.create_stream(jetstream::stream::Config {
                name: AUDIT_STREAM.into(),
                description: Some("Wegweiser audit trail (append-only, hash-chained)".into()),
                subjects: vec![format!("{AUDIT_PREFIX}.>")],
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                deny_delete: true,
                deny_purge: true,
                ..Default::default()
            })
            .await
            .map_err(store_err)?;
        }
        Ok(Self {
            js: js.clone(),
            head: Default::default(),
            metrics,
        })
    }

    /// Appends an entry and waits for the stream to store it. A failure is logged (with the
    /// entry, which holds no secret, so it is not lost) and counted, never returned: the
    /// operation it records has already happened.
    pub async fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.append(&entry).await {
            self.metrics
                .audit_append_failed
                .fetch_add(1, Ordering::Relaxed);
            let body = serde_json::to_string(&entry).unwrap_or_default();
            tracing::error!(kind = %entry.kind, error = %e, entry = %body, "Audit entry not stored.");
        }
    }

    /// Appends an entry to the chain; returns its chain position and stream sequence.
    pub async fn append(&self, entry: &AuditEntry) -> Result<(u64, u64), AppendError> {
        tokio::time::timeout(RECORD_DEADLINE, self.append_inner(entry))
            .await
            .map_err(|_| AppendError::Deadline(RECORD_DEADLINE))?
    }

    async fn append_inner(&self, entry: &AuditEntry) -> Result<(u64, u64), AppendError> {
        let mut w = self.head.lock().await;
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let head = match w.head.as_ref() {
                Some(h) => h.clone(),
                None => {
                    let h = read_head(&self.js, AUDIT_STREAM).await?;
                    w.head = Some(h.clone());
                    h
                }
            };
            let seq = head.seq + 1;
            let c = chain_entry(entry, seq, &head.hash)?;
            // The message id makes a retry of the very same append (after a lost ack) a
            // duplicate instead of a second entry.
            let publish = PublishMessage::build()
                .payload(c.bytes.into())
                .message_id(&c.hash)
                .expected_last_sequence(head.stream_seq);
            let outcome = match self.js.send_publish(c.subject, publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(ack) => {
                    w.head = Some(Head {
                        stream_seq: ack.sequence,
                        seq,
                        hash: c.hash,
                    });
                    self.metrics.audit_appended.fetch_add(1, Ordering::Relaxed);
                    if w.last_conflict.is_some_and(|t| t.elapsed() < CONTENDED) {
                        // Other replicas are appending too. A writer with a queue of entries
                        // would otherwise always be one round trip ahead of them (it knows the
                        // new head, they must read it) and starve them: pause a little, still
                        // holding the turn, so their next attempt can land.
                        tokio::time::sleep(jitter(2)).await;
                    }
                    return Ok((seq, ack.sequence));
                }
                Err(e) => {
                    use jetstream::context::PublishErrorKind as K;
                    if e.kind() == K::WrongLastSequence {
                        // Another writer appended first: read the new head, chain after it.
                        self.metrics
                            .audit_append_conflicts
                            .fetch_add(1, Ordering::Relaxed);
                        w.last_conflict = Some(Instant::now());
                        tokio::time::sleep(jitter(1 << attempt.min(5))).await;
                    } else {
                        tracing::warn!(kind = %entry.kind, attempt, error = %e, "Audit append failed; retrying.");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    w.head = None;
                    last = e.to_string();
                }
            }
        }
        Err(AppendError::NotStored {
            attempts: MAX_ATTEMPTS,
            last,
        })
    }

    /// Reads the whole stream in order and verifies the chain (see [`verify_stream`]).
    pub async fn verify(
        &self,
        progress: impl FnMut(u64, u64),
    ) -> Result<Result<ChainReport, ChainFault>, AuthorityError> {
        verify_stream(&self.js, AUDIT_STREAM, progress).await
    }

    /// A page of entries matching `q`.
    pub async fn query(&self, q: &AuditQuery) -> Result<AuditPage, AuthorityError> {
        query_stream(&self.js, AUDIT_STREAM, q).await
    }
}

/// A random pause of up to `max_ms` milliseconds.
fn jitter(max_ms: u64) -> Duration {
    Duration::from_micros(rand::random::<u64>() % (max_ms * 1000 + 1))
}

fn backoff(attempt: u32) -> Duration {
    let base = 25u64 << attempt.min(6);
    Duration::from_millis(base / 2 + rand::random::<u64>() % (base / 2 + 1))
}

/// Reads the newest entry of `stream` as the head to chain after.
async fn read_head(js: &jetstream::Context, stream: &str) -> Result<Head, AppendError> {
    use jetstream::stream::LastRawMessageErrorKind;
    let s = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| AppendError::Head(e.to_string()))?;
    match s.get_last_raw_message_by_subject(">").await {
        Ok(m) => {
            let entry = serde_json::from_slice::<Map<String, Value>>(&m.payload)
                .ok()
                .and_then(|o| {
                    let seq = o.get("seq")?.as_u64()?;
                    let hash = o.get("hash")?.as_str()?.to_owned();
                    Some((seq, hash))
                });
            Ok(match entry {
                Some((seq, hash)) => Head {
                    stream_seq: m.sequence,
                    seq,
                    hash,
                },
                // An entry from before the chain: the chain starts after it.
                None => Head {
                    stream_seq: m.sequence,
                    seq: 0,
                    hash: GENESIS.into(),
                },
            })
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Head {
            stream_seq: 0,
            seq: 0,
            hash: GENESIS.into(),
        }),
        Err(e) => Err(AppendError::Head(e.to_string())),
    }
}

/// What is wrong with the chain at the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// The stored bytes are not an audit entry.
    #[error("not a JSON audit entry ({reason})")]
    Unreadable {
        /// Why.
        reason: String,
    },
    /// The stored hash is not the hash of the entry.
    #[error(
        "the entry was changed: its hash does not recompute (stored {stored}, computed {computed})"
    )]
    HashMismatch {
        /// The `hash` field.
        stored: String,
        /// The hash of the entry as stored.
        computed: String,
    },
    /// `prev` is not the previous entry's hash.
    #[error("prev {found} is not the previous entry's hash {expected}")]
    PrevMismatch {
        /// The previous entry's hash.
        expected: String,
        /// The `prev` field.
        found: String,
    },
    /// `seq` does not follow the previous entry's.
    #[error("seq {found} where {expected} was expected")]
    SeqMismatch {
        /// The position expected.
        expected: u64,
        /// The `seq` field.
        found: u64,
    },
    /// Stream messages are missing before this one.
    #[error("stream sequence(s) {from}..={to} missing: entries were removed")]
    Gap {
        /// First missing stream sequence.
        from: u64,
        /// Last missing stream sequence.
        to: u64,
    },
    /// Stream sequences go backwards or repeat.
    #[error("stream sequence {found} after {after}: out of order")]
    OutOfOrder {
        /// The previous stream sequence.
        after: u64,
        /// This one.
        found: u64,
    },
    /// An entry without a hash after the chain began.
    #[error("entry without hash after the chain began")]
    Unchained,
    /// The stream ends before its last sequence.
    #[error(
        "the stream's last sequence is {expected} but entries end at {found}: entries were removed"
    )]
    Truncated {
        /// The stream's last sequence.
        expected: u64,
        /// The last sequence read.
        found: u64,
    },
}

/// The first bad entry of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("audit chain broken at stream sequence {stream_seq}{}{}: {problem}",
    .seq.map(|s| format!(", seq {s}")).unwrap_or_default(),
    .kind.as_deref().map(|k| format!(", kind {k}")).unwrap_or_default())]
pub struct ChainFault {
    /// Stream sequence of the bad entry (for a truncated stream: the stream's last sequence).
    pub stream_seq: u64,
    /// Its `seq`, if it has one.
    pub seq: Option<u64>,
    /// Its `kind`, if readable.
    pub kind: Option<String>,
    /// What is wrong.
    #[serde(flatten)]
    pub problem: Problem,
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Chained entries.
    pub entries: u64,
    /// Entries before the chain began (written before entries were chained; not protected).
    pub unchained: u64,
    /// Hash of the last entry ([`GENESIS`] for an empty chain).
    pub head: String,
    /// Stream sequence of the last entry (0 for an empty stream).
    pub last_stream_seq: u64,
}

/// Checks a chain one raw stream message at a time, in stream order.
#[derive(Debug)]
pub struct ChainVerifier {
    last_stream_seq: u64,
    seq: u64,
    head: String,
    unchained: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// A verifier expecting the stream to start at sequence 1.
    pub fn new() -> Self {
        Self {
            last_stream_seq: 0,
            seq: 0,
            head: GENESIS.into(),
            unchained: 0,
        }
    }

    /// Checks the message stored at `stream_seq` with `payload`.
    pub fn push(&mut self, stream_seq: u64, payload: &[u8]) -> Result<(), ChainFault> {
        let fault = |seq, kind, problem| ChainFault {
            stream_seq,
            seq,
            kind,
            problem,
        };
        if stream_seq <= self.last_stream_seq {
            return Err(fault(
                None,
                None,
                Problem::OutOfOrder {
                    after: self.last_stream_seq,
                    found: stream_seq,
                },
            ));
        }
        if stream_seq != self.last_stream_seq + 1 {
            return Err(fault(
                None,
                None,
                Problem::Gap {
                    from: self.last_stream_seq + 1,
                    to: stream_seq - 1,
                },
            ));
        }
        self.last_stream_seq = stream_seq;
        let obj = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err(fault(
                    None,
                    None,
                    Problem::Unreadable {
                        reason: "not an object".into(),
                    },
                ));
            }
            Err(e) => {
                return Err(fault(
                    None,
                    None,
                    Problem::Unreadable {
                        reason: e.to_string(),
                    },
                ));
            }
        };
        let kind = obj.get("kind").and_then(Value::as_str).map(str::to_owned);
        let Some(stored) = obj.get("hash").and_then(Value::as_str) else {
            if self.seq == 0 {
                self.unchained += 1;
                return Ok(());
            }
            return Err(fault(None, kind, Problem::Unchained));
        };
        let Some(seq) = obj.get("seq").and_then(Value::as_u64) else {
            return Err(fault(
                None,
                kind,
                Problem::Unreadable {
                    reason: "no seq".into(),
                },
            ));
        };
        let computed = entry_hash(&obj);
        if computed != stored {
            return Err(fault(
                Some(seq),
                kind,
                Problem::HashMismatch {
                    stored: stored.to_owned(),
                    computed,
                },
            ));
        }
        if seq != self.seq + 1 {
            return Err(fault(
                Some(seq),
                kind,
                Problem::SeqMismatch {
                    expected: self.seq + 1,
                    found: seq,
                },
            ));
        }
        let prev = obj.get("prev").and_then(Value::as_str).unwrap_or_default();
        if prev != self.head {
            return Err(fault(
                Some(seq),
                kind,
                Problem::PrevMismatch {
                    expected: self.head.clone(),
                    found: prev.to_owned(),
                },
            ));
        }
        self.seq = seq;
        self.head = computed;
        Ok(())
    }

    /// Ends the check. `last_stream_seq` is the stream's last sequence when reading began, if
    /// known: entries missing at the end (a truncated copy) are a fault too.
    pub fn finish(self, last_stream_seq: Option<u64>) -> Result<ChainReport, ChainFault> {
        if let Some(expected) = last_stream_seq
            && expected != self.last_stream_seq
        {
            return Err(ChainFault {
                stream_seq: expected,
                seq: None,
                kind: None,
                problem: Problem::Truncated {
                    expected,
                    found: self.last_stream_seq,
                },
            });
        }
        Ok(ChainReport {
            entries: self.seq,
            unchained: self.unchained,
            head: self.head,
            last_stream_seq: self.last_stream_seq,
        })
    }
}

/// Verifies raw stream messages `(stream sequence, payload)` in stream order; `last_stream_seq`
/// as in [`ChainVerifier::finish`].
pub fn verify_chain<I, B>(
    messages: I,
    last_stream_seq: Option<u64>,
) -> Result<ChainReport, ChainFault>
where
    I: IntoIterator<Item = (u64, B)>,
    B: AsRef<[u8]>,
{
    let mut v = ChainVerifier::new();
    for (seq, payload) in messages {
        v.push(seq, payload.as_ref())?;
    }
    v.finish(last_stream_seq)
}

/// Reads `stream` from its first message up to its last sequence at the start (entries
/// appended meanwhile are left for the next run) and verifies the chain. `progress` is called
/// with (messages read, messages to read) every 10,000 messages. The outer error is a failure to
/// read; the inner one a broken chain.
pub async fn verify_stream(
    js: &jetstream::Context,
    stream: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<Result<ChainReport, ChainFault>, AuthorityError> {
    let mut s = js.get_stream(stream).await.map_err(store_err)?;
    let state = s.info().await.map_err(store_err)?.state.clone();
    let mut v = ChainVerifier::new();
    let last = state.last_sequence;
    if last > 0 && state.messages > 0 {
        let mut read = 0u64;
        let mut messages = ordered(js, &s, String::new(), DeliverPolicy::All)
            .await?
            .take_while_le(last);
        loop {
            let Some((seq, payload)) = messages.next().await? else {
                break;
            };
            if let Err(f) = v.push(seq, &payload) {
                return Ok(Err(f));
            }
            read += 1;
            if read.is_multiple_of(10_000) {
                progress(read, state.messages);
            }
        }
    }
    Ok(v.finish(Some(last)))
}

/// A tenant-scoped audit query: entries whose `tenant` is `tenant`, in stream order.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    /// The tenant (`None`: the platform's own entries, stored under [`NO_TENANT`]).
    pub tenant: Option<TenantId>,
    /// Only this kind (exact, e.g. `enroll.refused`).
    pub kind: Option<String>,
    /// Only entries of this actor (exact).
    pub actor: Option<String>,
    /// Only entries stamped at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Only entries stamped at or before this time (Unix seconds).
    pub until: Option<i64>,
    /// Stream sequence to start at (`next` of the previous page; 0 for the beginning, or with
    /// `newest_first` for the end).
    pub start: u64,
    /// Most entries to return (at least 1; at most [`AuditQuery::MAX_LIMIT`]).
    pub limit: usize,
    /// Newest entries first: the page runs backwards from `start`.
    pub newest_first: bool,
}

impl AuditQuery {
    /// The largest page.
    pub const MAX_LIMIT: usize = 10_000;

    /// All entries of `tenant`, first page of 100.
    pub fn tenant(tenant: TenantId) -> Self {
        Self {
            tenant: Some(tenant),
            ..Self::platform()
        }
    }

    /// All entries of no tenant (the platform's own), first page of 100.
    pub fn platform() -> Self {
        Self {
            tenant: None,
            kind: None,
            actor: None,
            since: None,
            until: None,
            start: 0,
            limit: 100,
            newest_first: false,
        }
    }

    /// Whether `e` (stored under the tenant token `owner`) matches the filters.
    fn matches(&self, owner: &str, e: &AuditEntry) -> bool {
        let stored_under = e
            .tenant
            .as_deref()
            .filter(|t| t.parse::<TenantId>().is_ok())
            .unwrap_or(NO_TENANT);
        stored_under == owner
            && self.kind.as_ref().is_none_or(|k| *k == e.kind)
            && self.actor.as_ref().is_none_or(|a| *a == e.actor)
            && self.since.is_none_or(|t| e.ts >= t)
            && self.until.is_none_or(|t| e.ts <= t)
    }
}

/// One page of an audit query.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    /// The entries, in stream order (newest first when asked so).
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts (pass as [`AuditQuery::start`]); `None` when this was the last.
    pub next: Option<u64>,
}

async fn query_stream(
    js: &jetstream::Context,
    stream: &str,
    q: &AuditQuery,
) -> Result<AuditPage, AuthorityError> {
    let limit = q.limit.clamp(1, AuditQuery::MAX_LIMIT);
    let owner = q.tenant.as_ref().map_or(NO_TENANT, TenantId::as_str);
    let filter = format!(
        "{AUDIT_PREFIX}.{owner}.{}",
        q.kind
            .as_deref()
            .map(kind_token)
            .unwrap_or_else(|| ">".into())
    );
    let mut s = js.get_stream(stream).await.map_err(store_err)?;
    let last = s.info().await.map_err(store_err)?.state.last_sequence;
    if q.newest_first {
        return query_backwards(js, &s, q, owner, filter, last).await;
    }
    let mut page = AuditPage {
        entries: Vec::new(),
        next: None,
    };
    let start = q.start.max(1);
    if start > last {
        return Ok(page);
    }
    let policy = match q.since {
        // The store's time is never before the entry's own: start there, filter exactly below.
        Some(since) if start <= 1 => match time::OffsetDateTime::from_unix_timestamp(since) {
            Ok(t) => DeliverPolicy::ByStartTime { start_time: t },
            Err(_) => DeliverPolicy::All,
        },
        _ => DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
    };
    let mut messages = ordered(js, &s, filter, policy).await?.take_while_le(last);
    while let Some((seq, payload)) = messages.next().await? {
        let Ok(e) = serde_json::from_slice::<AuditEntry>(&payload) else {
            tracing::warn!(
                stream_seq = seq,
                "Unreadable audit entry skipped by a query."
            );
            continue;
        };
        if !q.matches(owner, &e) {
            continue;
        }
        page.entries.push(e);
        if page.entries.len() == limit {
            if messages.more() {
                page.next = Some(seq + 1);
            }
            break;
        }
    }
    Ok(page)
}

/// A page newest first: reads windows of the stream backwards from `q.start` (0: the end),
/// each twice as long as the one before, until the page is full or the stream's start is
/// reached. Stops early once entries are older than `q.since`.
async fn query_backwards(
    js: &jetstream::Context,
    s: &jetstream::stream::Stream,
    q: &AuditQuery,
    owner: &str,
    filter: String,
    last: u64,
) -> Result<AuditPage, AuthorityError> {
    let limit = q.limit.clamp(1, AuditQuery::MAX_LIMIT);
    let mut page = AuditPage {
        entries: Vec::new(),
        next: None,
    };
    let mut end = match q.start {
        0 => last,
        n => n.min(last),
    };
    let mut window = (limit as u64 * 2).max(256);
    while end >= 1 {
        let start = end.saturating_sub(window - 1).max(1);
        let mut messages = ordered(
            js,
            s,
            filter.clone(),
            DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
        )
        .await?
        .take_while_le(end);
        let mut found = Vec::new();
        let mut too_old = false;
        while let Some((seq, payload)) = messages.next().await? {
            let Ok(e) = serde_json::from_slice::<AuditEntry>(&payload) else {
                tracing::warn!(
                    stream_seq = seq,
                    "Unreadable audit entry skipped by a query."
                );
                continue;
            };
            // Entries are appended in time order give or take the replicas' clock skew.
            too_old |= q.since.is_some_and(|t| e.ts < t - 300);
            if q.matches(owner, &e) {
                found.push((seq, e));
            }
        }
        for (seq, e) in found.into_iter().rev() {
            page.entries.push(e);
            if page.entries.len() == limit {
                // More may lie before this entry, in this window or earlier ones.
                if seq > 1 {
                    page.next = Some(seq - 1);
                }
                return Ok(page);
            }
        }
        if too_old || start == 1 {
            break;
        }
        end = start - 1;
        window = window.saturating_mul(2).min(1 << 20);
    }
    Ok(page)
}

/// Raw messages of an ordered consumer, up to a last stream sequence.
struct Ordered {
    messages: Option<jetstream::consumer::push::Ordered>,
    last: u64,
    pending: u64,
}

async fn ordered(
    js: &jetstream::Context,
    s: &jetstream::stream::Stream,
    filter: String,
    deliver_policy: DeliverPolicy,
) -> Result<Ordered, AuthorityError> {
    let consumer = s
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: filter,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(store_err)?;
    let pending = consumer.cached_info().num_pending;
    let messages = if pending == 0 {
        None
    } else {
        Some(consumer.messages().await.map_err(store_err)?)
    };
    Ok(Ordered {
        messages,
        last: u64::MAX,
        pending,
    })
}

impl Ordered {
    fn take_while_le(mut self, last: u64) -> Self {
        self.last = last;
        self
    }

    /// Whether messages up to the last sequence may follow.
    fn more(&self) -> bool {
        self.messages.is_some() && self.pending > 0
    }

    async fn next(&mut self) -> Result<Option<(u64, bytes::Bytes)>, AuthorityError> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let m = match tokio::time::timeout(READ_IDLE, messages.next()).await {
            Ok(Some(m)) => m.map_err(store_err)?,
            Ok(None) => {
                self.messages = None;
                return Ok(None);
            }
            Err(_) => {
                return Err(AuthorityError::Store(format!(
                    "no message from the audit stream within {READ_IDLE:?}"
                )));
            }
        };
        let info = m.info().map_err(store_err)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > self.last {
            self.messages = None;
            self.pending = 0;
            return Ok(None);
        }
        self.pending = pending;
        if pending == 0 || seq == self.last {
            // Nothing more to read up to the last sequence.
            self.messages = None;
            self.pending = 0;
        }
        Ok(Some((seq, m.payload.clone())))
    }
}

impl crate::authority::Authority {
    /// A page of a tenant's audit entries (for `wegweiser audit list` and the API).
    pub async fn audit_query(&self, q: &AuditQuery) -> Result<AuditPage, AuthorityError> {
        self.audit().query(q).await
    }

    /// Reads the whole audit stream and verifies its chain (for `wegweiser audit verify`).
    pub async fn audit_verify(
        &self,
        progress: impl FnMut(u64, u64),
    ) -> Result<Result<ChainReport, ChainFault>, AuthorityError> {
        self.audit().verify(progress).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<(u64, Vec<u8>)> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|i| {
                let mut e = AuditEntry::new("enroll", "enrollment", "ok");
                e.tenant = Some("acme".into());
                e.detail = serde_json::json!({"n": i, "z": [1, {"b": 2, "a": 1.5}]});
                let c = chain_entry(&e, i, &prev).unwrap();
                prev = c.hash;
                (i, c.bytes)
            })
            .collect()
    }

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[{"y":1,"x":2}],"c":"é\n"}}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical(&v)).unwrap(),
            r#"{"a":{"c":"é\n","d":[{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn a_chain_verifies_and_reports_its_head() {
        let c = chain(5);
        let r = verify_chain(c.clone(), Some(5)).unwrap();
        assert_eq!(r.entries, 5);
        let last: Value = serde_json::from_slice(&c[4].1).unwrap();
        assert_eq!(r.head, last["hash"]);
        // Whitespace and key order are not part of the hash.
        let pretty: Vec<_> = c
            .iter()
            .map(|(s, b)| {
                let v: Value = serde_json::from_slice(b).unwrap();
                (*s, serde_json::to_vec_pretty(&v).unwrap())
            })
            .collect();
        assert_eq!(verify_chain(pretty, Some(5)).unwrap(), r);
    }

    #[test]
    fn an_empty_stream_verifies() {
        let r = verify_chain(Vec::<(u64, Vec<u8>)>::new(), Some(0)).unwrap();
        assert_eq!((r.entries, r.head.as_str()), (0, GENESIS));
    }

    #[test]
    fn unchained_entries_are_accepted_only_before_the_chain() {
        let old = br#"{"ts":1,"kind":"enroll","outcome":"ok","actor":"x"}"#.to_vec();
        let mut msgs = vec![(1, old.clone()), (2, old.clone())];
        msgs.extend(chain(3).into_iter().map(|(s, b)| (s + 2, b)));
        let r = verify_chain(msgs.clone(), Some(5)).unwrap();
        assert_eq!((r.entries, r.unchained), (3, 2));
        msgs.push((6, old));
        let f = verify_chain(msgs, None).unwrap_err();
        assert_eq!((f.stream_seq, f.problem), (6, Problem::Unchained));
    }

    #[test]
    fn a_changed_field_is_named() {
        let mut c = chain(4);
        let mut v: Value = serde_json::from_slice(&c[2].1).unwrap();
        v["outcome"] = "refused".into();
        c[2].1 = serde_json::to_vec(&v).unwrap();
        let f = verify_chain(c, Some(4)).unwrap_err();
        assert_eq!(
            (f.stream_seq, f.seq, f.kind.as_deref()),
            (3, Some(3), Some("enroll"))
        );
        assert!(matches!(f.problem, Problem::HashMismatch { .. }), "{f}");
    }

    #[test]
    fn an_added_field_is_a_change() {
        let mut c = chain(2);
        let mut v: Value = serde_json::from_slice(&c[0].1).unwrap();
        v["extra"] = 1.into();
        c[0].1 = serde_json::to_vec(&v).unwrap();
        let f = verify_chain(c, None).unwrap_err();
        assert!(matches!(f.problem, Problem::HashMismatch { .. }), "{f}");
    }

    #[test]
    fn a_removed_entry_is_a_gap() {
        let mut c = chain(4);
        c.remove(1);
        let f = verify_chain(c, Some(4)).unwrap_err();
        assert_eq!(f.stream_seq, 3);
        assert_eq!(f.problem, Problem::Gap { from: 2, to: 2 });
    }

    #[test]
    fn a_removed_entry_renumbered_breaks_seq() {
        // Someone rebuilt the stream without entry 2: no stream gap, but seq jumps.
        let c = chain(4);
        let msgs = vec![
            (1, c[0].1.clone()),
            (2, c[2].1.clone()),
            (3, c[3].1.clone()),
        ];
        let f = verify_chain(msgs, Some(3)).unwrap_err();
        assert_eq!(
            f.problem,
            Problem::SeqMismatch {
                expected: 2,
                found: 3
            }
        );
    }

    #[test]
    fn reordered_entries_are_named() {
        let c = chain(4);
        let msgs = vec![
            (1, c[0].1.clone()),
            (2, c[2].1.clone()),
            (3, c[1].1.clone()),
            (4, c[3].1.clone()),
        ];
        let f = verify_chain(msgs, Some(4)).unwrap_err();
        assert_eq!((f.stream_seq, f.seq), (2, Some(3)));
        let msgs = vec![(2, c[1].1.clone()), (1, c[0].1.clone())];
        assert!(verify_chain(msgs, None).is_err());
    }

    #[test]
    fn a_forged_hash_breaks_the_next_prev() {
        let mut c = chain(3);
        let mut v: Value = serde_json::from_slice(&c[1].1).unwrap();
        v["outcome"] = "refused".into();
        let Value::Object(o) = &mut v else { panic!() };
        let h = entry_hash(o);
        o.insert("hash".into(), h.into());
        c[1].1 = serde_json::to_vec(&v).unwrap();
        let f = verify_chain(c, Some(3)).unwrap_err();
        assert_eq!((f.stream_seq, f.seq), (3, Some(3)));
        assert!(matches!(f.problem, Problem::PrevMismatch { .. }), "{f}");
    }

    #[test]
    fn a_truncated_stream_is_named() {
        let c = chain(3);
        let f = verify_chain(c.into_iter().take(2), Some(3)).unwrap_err();
        assert_eq!(
            f.problem,
            Problem::Truncated {
                expected: 3,
                found: 2
            }
        );
    }

    #[test]
    fn garbage_is_unreadable() {
        let f = verify_chain(vec![(1, b"nope".to_vec())], None).unwrap_err();
        assert!(matches!(f.problem, Problem::Unreadable { .. }));
        assert!(f.to_string().contains("stream sequence 1"), "{f}");
    }

    #[test]
    fn entries_without_a_tenant_use_the_placeholder_token() {
        let mut e = AuditEntry::new("enroll.refused", "enrollment", "invalid_token");
        assert_eq!(e.subject(), "wgcp.audit._.enroll_refused");
        e.tenant = Some("acme".into());
        assert_eq!(e.subject(), "wgcp.audit.acme.enroll_refused");
        e.tenant = Some("a.b".into());
        assert_eq!(e.subject(), "wgcp.audit._.enroll_refused");
    }
}
