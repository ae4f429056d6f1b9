//! The long-running parts of `wegweiser serve`: the renewal responder on NATS, the HTTPS server,
//! and the periodic reconciliation of tenant accounts.

use crate::{audit::AuditEntry, authority::Authority, enrollment::EnrollError, metrics::Metrics};
use futures::StreamExt;
use serde::Deserialize;
use std::sync::{Arc, atomic::Ordering};
use tokio::sync::Semaphore;
use wegweiser_shared::{
    enroll::{ErrorBody, MAX_RENEW_BODY, RENEW_TOKEN, RenewRequest, RenewResponse},
    ids::{AccountKey, DeviceId},
};

/// Queue group shared by every control-plane replica answering renewals.
pub const RENEW_QUEUE: &str = "wg-renew";
/// Renewals handled at the same time by one replica.
pub const RENEW_CONCURRENCY: usize = 256;

#[derive(Deserialize)]
struct RequestInfo {
    #[serde(default)]
    acc: String,
    #[serde(default)]
    user: String,
}

/// Queue group shared by every control-plane replica answering trust requests.
pub const TRUST_QUEUE: &str = "wg-trust";

/// Answers trust requests (`wg.<account>.up.<device>.trust`) with the current bundle (whole
/// root chain and keyset) until the subscription ends.
pub async fn run_trust_responder(auth: Authority) -> anyhow::Result<()> {
    let client = auth.cp_client().clone();
    let mut sub = client
        .queue_subscribe(
            format!("wg.*.up.*.{}", wegweiser_shared::trust::TRUST_TOKEN),
            TRUST_QUEUE.into(),
        )
        .await?;
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        match auth.trust_bundle().await {
            Ok(bundle) => {
                if let Err(e) = client.publish(reply, bundle.to_vec().into()).await {
                    tracing::warn!(error = %e, "Cannot answer a trust request.");
                }
            }
            Err(e) => tracing::error!(error = %e, "Cannot load the trust bundle."),
        }
    }
    Ok(())
}

/// Runs the trust driver: every `trust.check_secs`, advances command key rotations and
/// re-signs the keyset before it expires (see [`crate::trust`]).
pub async fn run_trust_driver(auth: Authority, root_dir: std::path::PathBuf) -> anyhow::Result<()> {
    let every = std::time::Duration::from_secs(auth.config().trust.check_secs);
    loop {
        match auth.trust_tick(&root_dir).await {
            Ok(done) => {
                for d in done {
                    tracing::info!(action = %d, "Trust driver.");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Trust driver step failed."),
        }
        tokio::time::sleep(every).await;
    }
}

/// Answers renewal requests (`wg.<account>.up.<device>.renew`) until the subscription ends.
///
/// The account and device tokens of the subject are trustworthy: the export binds the account
/// token to the importing account, and the device's template lets it publish only under its own
/// name. The requesting user key comes from the server's `Nats-Request-Info` header.
pub async fn run_renewals(auth: Authority) -> anyhow::Result<()> {
    let client = auth.cp_client().clone();
    let mut sub = client
        .queue_subscribe(format!("wg.*.up.*.{RENEW_TOKEN}"), RENEW_QUEUE.into())
        .await?;
    let limit = Arc::new(Semaphore::new(RENEW_CONCURRENCY));
    while let Some(msg) = sub.next().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let auth = auth.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(reply) = msg.reply.clone() else {
                return;
            };
            let response = match answer(&auth, &msg).await {
                Ok(r) => {
                    auth.metrics().renew_ok.fetch_add(1, Ordering::Relaxed);
                    r
                }
                Err(e) => {
                    Metrics::refused(&auth.metrics().renew_refused, e.code());
                    if let EnrollError::Internal(inner) = &e {
                        tracing::error!(error = %inner, subject = %msg.subject, "Renewal failed.");
                    }
                    // Too-soon refusals are only counted: a device repeating requests must not
                    // be able to fill the audit trail.
                    if !matches!(e, EnrollError::TooSoon) {
                        let mut a = AuditEntry::new("renew.refused", "renewal", e.code());
                        a.detail = serde_json::json!({"subject": msg.subject.as_str()});
                        auth.audit().record(a).await;
                    }
                    RenewResponse::Refused(ErrorBody {
                        code: e.code().to_owned(),
                        message: e.to_string(),
                    })
                }
            };
            match serde_json::to_vec(&response) {
                Ok(body) => {
                    if let Err(e) = client.publish(reply, body.into()).await {
                        tracing::warn!(error = %e, "Cannot send a renewal reply.");
                    }
                }
                Err(e) => tracing::error!(error = %e, "Cannot encode a renewal reply."),
            }
        });
    }
    Ok(())
}

async fn answer(auth: &Authority, msg: &async_nats::Message) -> Result<RenewResponse, EnrollError> {
    let tokens: Vec<&str> = msg.subject.split('.').collect();
    let [_, account, _, device, _] = tokens[..] else {
        return Err(EnrollError::BadRequest("unexpected renewal subject".into()));
    };
    let account: AccountKey = account
        .parse()
        .map_err(|_| EnrollError::BadRequest("bad account in subject".into()))?;
    let device: DeviceId = device
        .parse()
        .map_err(|_| EnrollError::BadRequest("bad device in subject".into()))?;
    if msg.payload.len() > MAX_RENEW_BODY {
        return Err(EnrollError::BadRequest(format!(
            "renewal request larger than {MAX_RENEW_BODY} bytes"
        )));
    }
    let req: RenewRequest = if msg.payload.is_empty() {
        RenewRequest::default()
    } else {
        serde_json::from_slice(&msg.payload)
            .map_err(|_| EnrollError::BadRequest("malformed renewal request".into()))?
    };
    let info = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Request-Info"))
        .and_then(|v| serde_json::from_str::<RequestInfo>(v.as_str()).ok());
    let presented = match &info {
        Some(i) if i.acc == account.as_str() && !i.user.is_empty() => i.user.as_str(),
        _ => {
            return Err(EnrollError::BadRequest(
                "request info missing or not matching".into(),
            ));
        }
    };
    let r = auth.renew(&account, &device, presented, req).await?;
    let mut a = AuditEntry::new("renew", "renewal", "ok");
    a.device = Some(device.to_string());
    auth.audit().record(a).await;
    Ok(r)
}
