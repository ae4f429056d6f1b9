//! Telemetry ingest: the stream that stores every device report, and the consumer that keeps
//! the latest report of each kind per device (presence and "show device" read from it).
//!
//! The stream `WG_TELEMETRY` captures `wg.*.up.*.tel.>` in the control-plane account (reports
//! arrive there through each tenant's service import; a report sent as a request gets the
//! stream's acknowledgement as its reply). It keeps reports for `telemetry_retention_days` and
//! drops a replayed report whose `Nats-Msg-Id` it saw within the duplicate window.

use crate::authority::{Authority, AuthorityError, store_err};
use async_nats::jetstream::{self, consumer::pull, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use wegweiser_shared::{
    ids::{AccountKey, DeviceId, TenantId},
    telemetry::{Kind, TELEMETRY_TOKEN},
};

/// The telemetry history stream.
pub const TELEMETRY_STREAM: &str = "WG_TELEMETRY";
/// The KV bucket of latest reports (`<tenant>.<device>.<kind>`).
pub const LATEST_BUCKET: &str = "wg_latest";
/// Durable consumer shared by every replica.
pub const INGEST_CONSUMER: &str = "wg-ingest";
/// How long a replayed report is recognised as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);

/// A device's latest report of one kind, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latest {
    /// When the control plane stored it (unix seconds, control-plane clock).
    pub received_at: i64,
    /// The report as sent.
    pub report: serde_json::Value,
}

/// Opens (or creates) the stream and the latest-report bucket.
pub async fn open(
    js: &jetstream::Context,
    retention_days: u64,
    replicas: usize,
) -> Result<(jetstream::stream::Stream, kv::Store), AuthorityError> {
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: TELEMETRY_STREAM.into(),
            description: Some("Device reports (history)".into()),
            subjects: vec![format!("wg.*.up.*.{TELEMETRY_TOKEN}.>")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            max_age: Duration::from_secs(retention_days * 86_400),
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(store_err)?;
    let latest = match js.get_key_value(LATEST_BUCKET).await {
        Ok(s) => s,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: LATEST_BUCKET.into(),
                description: "Latest report per device and kind".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(store_err)?,
    };
    Ok((stream, latest))
}

/// The KV key of a device's latest report of `kind`.
pub fn latest_key(tenant: &TenantId, device: &DeviceId, kind: Kind) -> String {
    format!("{tenant}.{device}.{}", kind.token())
}

/// Parses `wg.<account>.up.<device>.tel.<kind>`.
pub fn parse_subject(subject: &str) -> Option<(AccountKey, DeviceId, Kind)> {
    let t: Vec<&str> = subject.split('.').collect();
    let ["wg", account, "up", device, TELEMETRY_TOKEN, kind] = t[..] else {
        return None;
    };
    Some((
        account.parse().ok()?,
        device.parse().ok()?,
        Kind::from_token(kind)?,
    ))
}

/// Runs the ingest consumer until the stream of messages ends.
pub async fn run(auth: Authority) -> anyhow::Result<()> {
    let js = jetstream::new(auth.cp_client().clone());
    let (stream, latest) = open(
        &js,
        auth.config().telemetry_retention_days,
        auth.config().kv_replicas,
    )
    .await?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            INGEST_CONSUMER,
            pull::Config {
                durable_name: Some(INGEST_CONSUMER.into()),
                description: Some("Keeps the latest report per device".into()),
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await?;
    // Take whatever has arrived (up to a batch) at once: the latest entry of a key is written
    // once per batch however many of its reports the batch holds, and the writes of different
    // keys are in flight together.
    let mut batches = consumer.messages().await?.ready_chunks(INGEST_BATCH);
    while let Some(batch) = batches.next().await {
        let mut messages = Vec::with_capacity(batch.len());
        for m in batch {
            match m {
                Ok(m) => messages.push(m),
                Err(e) => tracing::warn!(error = %e, "Ingest consumer error; continuing."),
            }
        }
        index_batch(&auth, &latest, &messages).await;
        for m in &messages {
            if let Err(e) = m.ack().await {
                tracing::warn!(error = %e, "Cannot acknowledge a report to the ingest consumer.");
            }
        }
    }
    Ok(())
}

/// Reports indexed together at most.
pub const INGEST_BATCH: usize = 512;
/// Latest-entry writes in flight at once.
const INGEST_WRITES: usize = 64;

/// Writes the latest entry of every key the batch touches (the last report of each key wins:
/// the stream delivers in order). Failures are logged; the reports stay in the history.
async fn index_batch(auth: &Authority, latest: &kv::Store, messages: &[jetstream::Message]) {
    let received_at = wegweiser_shared::time::now();
    let mut newest: std::collections::HashMap<String, bytes::Bytes> =
        std::collections::HashMap::new();
    let mut accounts: std::collections::HashMap<AccountKey, Option<TenantId>> =
        std::collections::HashMap::new();
    for m in messages {
        let Some((account, device, kind)) = parse_subject(&m.subject) else {
            continue;
        };
        if kind == Kind::Event {
            continue;
        }
        let tenant = match accounts.get(&account) {
            Some(t) => t.clone(),
            None => {
                let t = match auth.tenant_by_account(&account).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, subject = %m.subject, "Report not indexed.");
                        None
                    }
                };
                accounts.insert(account, t.clone());
                t
            }
        };
        if let Some(tenant) = tenant {
            newest.insert(latest_key(&tenant, &device, kind), m.payload.clone());
        }
    }
    let writes = futures::stream::iter(newest)
        .map(|(key, payload)| {
            let latest = latest.clone();
            write_latest(latest, key, payload, received_at)
        })
        .buffer_unordered(INGEST_WRITES);
    writes.collect::<Vec<()>>().await;
}

async fn write_latest(latest: kv::Store, key: String, payload: bytes::Bytes, received_at: i64) {
    // Only JSON objects are kept; anything else stays in the history only.
    let Ok(report @ serde_json::Value::Object(_)) = serde_json::from_slice(&payload) else {
        return;
    };
    let entry = Latest {
        received_at,
        report,
    };
    let result = match serde_json::to_vec(&entry) {
        Ok(bytes) => latest
            .put(&key, bytes.into())
            .await
            .map(|_| ())
            .map_err(store_err),
        Err(e) => Err(store_err(e)),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, key = %key, "Latest report not stored.");
    }
}

impl Authority {
    /// The latest report of `kind` of a device, if any.
    pub async fn latest(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        kind: Kind,
    ) -> Result<Option<Latest>, AuthorityError> {
        let js = jetstream::new(self.cp_client().clone());
        let Ok(kv) = js.get_key_value(LATEST_BUCKET).await else {
            return Ok(None);
        };
        match kv
            .get(latest_key(tenant, device, kind))
            .await
            .map_err(store_err)?
        {
            Some(b) => Ok(serde_json::from_slice(&b).ok()),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_subjects_parse_and_others_do_not() {
        let a = nkeys::KeyPair::new_account().public_key();
        let (acc, dev, kind) = parse_subject(&format!("wg.{a}.up.d1.tel.hb")).unwrap();
        assert_eq!(
            (acc.as_str(), dev.as_str(), kind),
            (a.as_str(), "d1", Kind::Heartbeat)
        );
        for bad in [
            format!("wg.{a}.up.d1.renew"),
            format!("wg.{a}.up.d1.tel.xyz"),
            format!("wg.{a}.up.d1.tel.hb.extra"),
            "wg.NOTAKEY.up.d1.tel.hb".to_owned(),
        ] {
            assert!(parse_subject(&bad).is_none(), "{bad}");
        }
    }
}

/// What a purge removed.
#[derive(Debug, Clone, Serialize)]
pub struct Purged {
    /// Reports removed from the history.
    pub reports: u64,
    /// Latest-report entries removed.
    pub latest: usize,
}

impl Authority {
    /// Removes a device's reports from the history and its latest reports (audited). With
    /// `device` `None`, the whole tenant's.
    pub async fn purge_reports(
        &self,
        tenant: &TenantId,
        device: Option<&DeviceId>,
        actor: &str,
    ) -> Result<Purged, AuthorityError> {
        let record = self.tenant(tenant).await?;
        let js = jetstream::new(self.cp_client().clone());
        let (stream, latest) = open(
            &js,
            self.config().telemetry_retention_days,
            self.config().kv_replicas,
        )
        .await?;
        let filter = match device {
            Some(d) => format!("wg.{}.up.{d}.{TELEMETRY_TOKEN}.>", record.account),
            None => format!("wg.{}.up.*.{TELEMETRY_TOKEN}.>", record.account),
        };
        let reports = stream
            .purge()
            .filter(filter)
            .await
            .map_err(store_err)?
            .purged;
        let prefix = match device {
            Some(d) => format!("{tenant}.{d}."),
            None => format!("{tenant}."),
        };
        let mut keys = latest.keys().await.map_err(store_err)?;
        let mut doomed = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(store_err)?;
            if k.starts_with(&prefix) {
                doomed.push(k);
            }
        }
        for k in &doomed {
            latest.purge(k).await.map_err(store_err)?;
        }
        let mut a = crate::audit::AuditEntry::new("reports.purge", actor, "ok");
        a.tenant = Some(tenant.to_string());
        a.device = device.map(|d| d.to_string());
        a.detail = serde_json::json!({"reports": reports, "latest": doomed.len()});
        self.audit().record(a).await;
        Ok(Purged {
            reports,
            latest: doomed.len(),
        })
    }

    /// A subscribe-only technician connection of `tenant` limited to `scope`, with a key that
    /// exists only in memory (for `wegweiser watch`).
    pub async fn technician_client(
        &self,
        tenant: &TenantId,
        name: &wegweiser_shared::ids::UserName,
        scope: &crate::tenant::TechnicianScope,
    ) -> Result<async_nats::Client, AuthorityError> {
        let creds = self
            .issue_technician_creds(tenant, name, scope, Some(3600))
            .await?;
        let opts = async_nats::ConnectOptions::with_credentials(creds.creds.expose())
            .map_err(|e| AuthorityError::Nats(e.to_string()))?
            .name("wegweiser-watch");
        crate::authority::connect_with(self.config(), opts).await
    }
}
