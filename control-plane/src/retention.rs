//! Per-tenant retention of the telemetry history.
//!
//! One stream, `WG_TELEMETRY`, holds every tenant's reports. A tenant keeps its reports for its
//! own [`RetentionDays`] (stored in its record; without one, `telemetry_retention_days` from the
//! configuration). The stream's `max_age` is the ceiling: the longest retention in force, raised
//! before a tenant is given a longer one and never lowered here, so JetStream alone enforces the
//! longest retention and everything beyond it (reports of accounts no tenant owns any more).
//! For every tenant whose retention is shorter than the ceiling, the sweeper
//! ([`Authority::sweep_retention`], run by `wegweiser serve` at start and every
//! [`SWEEP_INTERVAL`]) finds the first report of that tenant stored at or after its cutoff
//! (`now - retention`, one direct `STREAM.MSG.GET` by start time with the tenant's subject
//! filter) and purges the tenant's subjects below that sequence. Other tenants' reports are
//! never touched, and a report arriving during a sweep is newer than any cutoff, so it stays.

use crate::{
    audit::AuditEntry,
    authority::{Authority, AuthorityError, store_err},
    ingest::{self, TELEMETRY_STREAM},
    tenant::{TenantRecord, TenantState},
};
use async_nats::jetstream::{self, kv, response::Response};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use wegweiser_shared::{
    ids::{AccountKey, TenantId},
    telemetry::TELEMETRY_TOKEN,
};

/// Shortest retention a tenant may have, days.
pub const MIN_RETENTION_DAYS: u16 = 1;
/// Longest retention a tenant may have, days (ten years).
pub const MAX_RETENTION_DAYS: u16 = 3650;
/// How often `wegweiser serve` sweeps (retention is counted in days; an hour late is fine).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Seconds per retention day.
const DAY_SECS: u64 = 86_400;

/// How many days a tenant's reports are kept: 1 to 3650, checked wherever one is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct RetentionDays(u16);

/// A retention outside what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// Not a whole number of days.
    #[error("retention must be a whole number of days from 1 to 3650, not {0:?}")]
    NotANumber(String),
    /// Outside 1..=3650.
    #[error("retention must be from 1 to 3650 days, not {0}")]
    OutOfRange(u64),
}

impl RetentionDays {
    /// The number of days.
    pub fn days(self) -> u64 {
        u64::from(self.0)
    }

    /// The retention as a duration.
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.days() * DAY_SECS)
    }
}

impl TryFrom<u64> for RetentionDays {
    type Error = RetentionError;

    fn try_from(days: u64) -> Result<Self, Self::Error> {
        match u16::try_from(days) {
            Ok(d) if (MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&d) => Ok(Self(d)),
            _ => Err(RetentionError::OutOfRange(days)),
        }
    }
}

impl From<RetentionDays> for u64 {
    fn from(r: RetentionDays) -> u64 {
        r.days()
    }
}

impl std::str::FromStr for RetentionDays {
    type Err = RetentionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let days: u64 = s
            .trim()
            .parse()
            .map_err(|_| RetentionError::NotANumber(s.to_owned()))?;
        Self::try_from(days)
    }
}

impl std::fmt::Display for RetentionDays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} days", self.0)
    }
}

/// What a sweep removed from one tenant's history.
#[derive(Debug, Clone, Serialize)]
pub struct Swept {
    /// The tenant.
    pub tenant: TenantId,
    /// Its retention.
    pub retention_days: u64,
    /// Reports removed.
    pub purged: u64,
}

/// The subject filter of every report of a tenant's account.
pub fn tenant_filter(account: &AccountKey) -> String {
    format!("wg.{account}.up.*.{TELEMETRY_TOKEN}.>")
}

#[derive(Serialize)]
struct MsgGetRequest<'a> {
    #[serde(with = "time::serde::rfc3339")]
    start_time: time::OffsetDateTime,
    next_by_subj: &'a str,
}

#[derive(Deserialize)]
struct MsgGetResponse {
    message: StoredMessage,
}

#[derive(Deserialize)]
struct StoredMessage {
    seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    time: time::OffsetDateTime,
}

/// JetStream's "no message found".
const NO_MESSAGE_FOUND: u64 = 10037;

impl Authority {
    /// The retention in force for a tenant (its own, else the configured default).
    pub fn retention_of(&self, record: &TenantRecord) -> u64 {
        record
            .retention_days
            .map(RetentionDays::days)
            .unwrap_or(self.config().telemetry_retention_days)
    }

    /// Makes the history keep reports for at least `days` (raises the stream's `max_age`; never
    /// lowers it). Concurrent raises converge: each one checks afterwards that the stream holds
    /// at least what it needs and writes again if a smaller concurrent raise overtook it.
    pub async fn ensure_history_covers(&self, days: u64) -> Result<(), AuthorityError> {
        let js = jetstream::new(self.cp_client().clone());
        let (mut stream, _) = ingest::open(
            &js,
            self.config().telemetry_retention_days,
            self.config().kv_replicas,
        )
        .await?;
        let want = Duration::from_secs(days * DAY_SECS);
        for _ in 0..10 {
            let mut config = stream.info().await.map_err(store_err)?.config.clone();
            // 0 means "no limit": nothing to raise.
            if config.max_age.is_zero() || config.max_age >= want {
                return Ok(());
            }
            config.max_age = want;
            js.update_stream(&config).await.map_err(store_err)?;
            tracing::info!(
                days,
                "Telemetry history now kept up to the longest retention."
            );
        }
        Err(AuthorityError::Store(format!(
            "the telemetry history's age limit could not be raised to {days} days (concurrent changes)"
        )))
    }

    /// Sets a tenant's retention (audited as `tenant.retention`) and applies it at once: a longer
    /// one raises the history's ceiling first, a shorter one purges what it no longer covers.
    /// Returns the record and the reports purged.
    pub async fn set_retention(
        &self,
        tenant: &TenantId,
        days: RetentionDays,
        actor: &str,
    ) -> Result<(TenantRecord, u64), AuthorityError> {
        self.ensure_history_covers(days.days()).await?;
        let (record, previous) = loop {
            let (mut record, rev) = self.tenant_entry(tenant).await?;
            if record.state != TenantState::Active {
                return Err(AuthorityError::NotActive(tenant.clone(), record.state));
            }
            let previous = self.retention_of(&record);
            record.retention_days = Some(days);
            let bytes = serde_json::to_vec(&record).map_err(store_err)?;
            match self
                .inner
                .tenants
                .update(tenant.as_str(), bytes.into(), rev)
                .await
            {
                Ok(_) => break (record, previous),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e)),
            }
        };
        let mut a = AuditEntry::new("tenant.retention", actor, "ok");
        a.tenant = Some(tenant.to_string());
        a.detail = serde_json::json!({"retention_days": days.days(), "previous_days": previous});
        self.audit().record(a).await;
        tracing::info!(tenant = %tenant, days = days.days(), previous, "Retention set.");
        let purged = self
            .sweep_tenant(&record, SystemTime::now())
            .await?
            .map_or(0, |s| s.purged);
        Ok((record, purged))
    }

    /// Applies every tenant's retention as of `now`: raises the history's ceiling to the
    /// longest retention in force, then purges, for each active tenant with a shorter one, its
    /// reports stored before `now - retention`. The service calls it with the current time;
    /// tests pass a later one instead of waiting days.
    pub async fn sweep_retention(&self, now: SystemTime) -> Result<Vec<Swept>, AuthorityError> {
        let tenants: Vec<TenantRecord> = self
            .tenants()
            .await?
            .into_iter()
            .filter(|r| r.state == TenantState::Active)
            .collect();
        let longest = tenants
            .iter()
            .map(|r| self.retention_of(r))
            .chain([self.config().telemetry_retention_days])
            .max()
            .unwrap_or(self.config().telemetry_retention_days);
        self.ensure_history_covers(longest).await?;
        let mut swept = Vec::new();
        for record in &tenants {
            match self.sweep_tenant(record, now).await {
                Ok(Some(s)) => swept.push(s),
                Ok(None) => {}
                // One tenant's failure must not stop the others' retention.
                Err(e) => {
                    tracing::warn!(tenant = %record.id, error = %e, "Retention sweep of a tenant failed.");
                }
            }
        }
        Ok(swept)
    }

    /// Purges one tenant's reports older than its retention as of `now`, unless the stream's
    /// own age limit already covers it (`None` then).
    async fn sweep_tenant(
        &self,
        record: &TenantRecord,
        now: SystemTime,
    ) -> Result<Option<Swept>, AuthorityError> {
        let days = self.retention_of(record);
        let js = jetstream::new(self.cp_client().clone());
        let (mut stream, _) = ingest::open(
            &js,
            self.config().telemetry_retention_days,
            self.config().kv_replicas,
        )
        .await?;
        let max_age = stream.info().await.map_err(store_err)?.config.max_age;
        let retention = Duration::from_secs(days * DAY_SECS);
        if !max_age.is_zero() && retention >= max_age {
            return Ok(None);
        }
        let cutoff = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
        let purged = purge_before(&js, &mut stream, &record.account, cutoff).await?;
        if purged > 0 {
            tracing::info!(tenant = %record.id, days, purged, "Reports past the tenant's retention purged.");
        }
        Ok(Some(Swept {
            tenant: record.id.clone(),
            retention_days: days,
            purged,
        }))
    }
}

/// Purges the reports of `account` stored before `cutoff`: everything of that account below
/// the first sequence stored at or after it. Returns how many were removed.
pub async fn purge_before(
    js: &jetstream::Context,
    stream: &mut jetstream::stream::Stream,
    account: &AccountKey,
    cutoff: SystemTime,
) -> Result<u64, AuthorityError> {
    let filter = tenant_filter(account);
    // Observed before the lookup: anything stored later is newer than the cutoff.
    let last = stream.info().await.map_err(store_err)?.state.last_sequence;
    let start_time = time::OffsetDateTime::from(cutoff);
    let found: Response<MsgGetResponse> = js
        .request(
            format!("STREAM.MSG.GET.{TELEMETRY_STREAM}"),
            &MsgGetRequest {
                start_time,
                next_by_subj: &filter,
            },
        )
        .await
        .map_err(store_err)?;
    let keep_from = match found {
        Response::Ok(r) if r.message.time >= start_time => r.message.seq,
        Response::Ok(r) => {
            // A server without by-time lookups ignores `start_time` and answers the oldest.
            return Err(AuthorityError::Store(format!(
                "nats-server returned a report from {} for a lookup from {start_time}: per-tenant retention needs nats-server 2.11 or later",
                r.message.time
            )));
        }
        Response::Err { error } if error.error_code().0 == NO_MESSAGE_FOUND => last + 1,
        Response::Err { error } => return Err(store_err(error)),
    };
    if keep_from <= 1 {
        return Ok(0);
    }
    Ok(stream
        .purge()
        .filter(filter)
        .sequence(keep_from)
        .await
        .map_err(store_err)?
        .purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_one_to_3650_days() {
        assert_eq!("1".parse::<RetentionDays>().unwrap().days(), 1);
        assert_eq!(" 3650 ".parse::<RetentionDays>().unwrap().days(), 3650);
        for bad in ["0", "3651", "-1", "70000", "1.5", "", "ten"] {
            let e = bad.parse::<RetentionDays>().unwrap_err().to_string();
            assert!(e.contains("1 to 3650"), "{bad}: {e}");
        }
        assert_eq!(
            RetentionDays::try_from(65_537),
            Err(RetentionError::OutOfRange(65_537))
        );
    }

    #[test]
    fn stored_retention_is_checked_when_read() {
        let r: RetentionDays = serde_json::from_str("90").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "90");
        assert!(serde_json::from_str::<RetentionDays>("0").is_err());
        assert!(serde_json::from_str::<RetentionDays>("4000").is_err());
    }

    #[test]
    fn lookups_send_rfc3339_times() {
        let req = MsgGetRequest {
            start_time: time::OffsetDateTime::from(
                SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            ),
            next_by_subj: "wg.A.up.*.tel.>",
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"start_time":"2023-11-14T22:13:20.123456789Z","next_by_subj":"wg.A.up.*.tel.>"}"#
        );
    }
}
