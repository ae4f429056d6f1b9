//! The audit trail: an append-only JetStream stream in the control-plane account (delete and
//! purge are denied by the stream itself).
//!
//! Every entry is one JSON object on `wgcp.audit.<kind>`. Entries never carry a secret: tokens
//! appear only by their id (a prefix of their hash), keys only as public keys.

use crate::authority::{AuthorityError, store_err};
use async_nats::jetstream;
use serde::Serialize;

/// The stream's name.
pub const AUDIT_STREAM: &str = "WG_AUDIT";
/// Subject prefix of audit entries.
pub const AUDIT_PREFIX: &str = "wgcp.audit";

/// One audit entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub ts: i64,
    /// What happened (`enroll`, `enroll.refused`, `ip.blocked`, `device.revoke`, …).
    pub kind: String,
    /// Outcome: `ok` or a refusal code.
    pub outcome: String,
    /// Tenant, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Device, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Remote address, for network requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Who acted (`cli`, `enrollment`, `renewal`, …).
    pub actor: String,
    /// Anything else worth keeping.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl AuditEntry {
    /// An entry of `kind` by `actor` with `outcome`, stamped now.
    pub fn new(kind: &str, actor: &str, outcome: &str) -> Self {
        Self {
            ts: wegweiser_shared::time::now(),
            kind: kind.to_owned(),
            outcome: outcome.to_owned(),
            tenant: None,
            device: None,
            ip: None,
            actor: actor.to_owned(),
            detail: serde_json::Value::Null,
        }
    }
}

/// Appends to the audit stream.
#[derive(Debug, Clone)]
pub struct Audit {
    js: jetstream::Context,
}

impl Audit {
    /// Opens (or creates) the stream.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, AuthorityError> {
        if js.get_stream(AUDIT_STREAM).await.is_err() {
            js.create_stream(jetstream::stream::Config {
                name: AUDIT_STREAM.into(),
                description: Some("Wegweiser audit trail (append-only)".into()),
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
        Ok(Self { js: js.clone() })
    }

    /// Appends an entry and waits for the stream to store it. A failure is logged, never
    /// returned: the operation it records has already happened.
    pub async fn record(&self, entry: AuditEntry) {
        let subject = format!(
            "{AUDIT_PREFIX}.{}",
            entry.kind.replace(['.', ' ', '*', '>'], "_")
        );
        let body = match serde_json::to_vec(&entry) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode an audit entry.");
                return;
            }
        };
        match self.js.publish(subject, body.into()).await {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    tracing::error!(kind = %entry.kind, error = %e, "Audit entry not stored.");
                }
            }
            Err(e) => tracing::error!(kind = %entry.kind, error = %e, "Audit entry not sent."),
        }
    }
}
