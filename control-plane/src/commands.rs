//! Sending signed commands and collecting their results.
//!
//! For each target device the control plane signs a DSSE envelope bound to that device, its
//! tenant and the exact subject (`wg.<account>.down.<device>.cmd`), with a fresh 128-bit id and
//! a lifetime of minutes, and publishes it. Agents answer with a [`CommandResult`] report
//! (`wg.<account>.up.<device>.tel.res`), acknowledged by the telemetry stream; the control plane
//! listens on the same subjects and matches results by id *and* by the device token of the
//! subject (a device can only publish under its own name, so it cannot answer for another).
//!
//! Every request and every result is appended to the command log, the stream `WG_COMMANDS`
//! (`wgcp.cmd.<tenant>.req` / `.res`: request, signer key, result, latency), and each send is
//! audited. An empty target is an error, never "every device".

use crate::{
    audit::AuditEntry,
    authority::{Authority, AuthorityError, store_err},
    enrollment::{DeviceRecord, DeviceState},
};
use async_nats::jetstream;
use futures::StreamExt;
use serde::Serialize;
use std::{
    collections::HashMap,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};
use wegweiser_shared::{
    command::{COMMAND_TOKEN, Command, CommandPayload, CommandResult, Outcome, VERSION, new_id},
    ids::{DeviceId, TenantId},
    subject::{self, Token},
    telemetry::{Kind, TELEMETRY_TOKEN},
    time::now,
};

/// The command log stream.
pub const COMMANDS_STREAM: &str = "WG_COMMANDS";
/// Subject prefix of the command log.
pub const COMMANDS_PREFIX: &str = "wgcp.cmd";
/// How long the command log keeps entries.
pub const LOG_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// Most devices one command may target.
pub const MAX_TARGETS: usize = 100_000;
/// Command log entries waiting for their acknowledgement at most (the JetStream context
/// limits acknowledgements in flight; unpolled ones would stall further publishes).
pub const MAX_LOG_IN_FLIGHT: usize = 512;
/// Issuer name in command payloads.
pub const ISSUER: &str = "wegweiser";

/// Opens (or creates) the command log stream.
pub async fn open_log(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::stream::Stream, AuthorityError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: COMMANDS_STREAM.into(),
        description: Some("Command log: requests, signer keys, results, latency".into()),
        subjects: vec![format!("{COMMANDS_PREFIX}.>")],
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        max_age: LOG_RETENTION,
        deny_delete: true,
        ..Default::default()
    })
    .await
    .map_err(store_err)
}

/// Which devices of a tenant a command goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One device.
    Device(DeviceId),
    /// Every device of an organization.
    Organization(String),
    /// Every device of a group.
    Group(String),
    /// Every device of the tenant.
    All,
}

impl Target {
    fn matches(&self, d: &DeviceRecord) -> bool {
        match self {
            Self::Device(id) => &d.id == id,
            Self::Organization(o) => d.organization.as_deref() == Some(o.as_str()),
            Self::Group(g) => d.group.as_deref() == Some(g.as_str()),
            Self::All => true,
        }
    }
}

/// A command to send.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// The tenant.
    pub tenant: TenantId,
    /// Its devices to reach.
    pub target: Target,
    /// What to do.
    pub command: Command,
    /// Who asks.
    pub by: String,
    /// How long to wait for results.
    pub timeout: Duration,
}

/// What became of a command on one device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceOutcome {
    /// The device.
    pub device: DeviceId,
    /// The command id sent to it.
    pub id: String,
    /// Its result, if one came in time.
    pub result: Option<CommandResult>,
    /// Time from sending to the result, microseconds.
    pub latency_us: Option<u64>,
}

impl DeviceOutcome {
    /// `ok`, `failed`, `rejected` or `timeout`.
    pub fn status(&self) -> &'static str {
        match self.result.as_ref().map(|r| r.outcome) {
            Some(Outcome::Ok) => "ok",
            Some(Outcome::Failed) => "failed",
            Some(Outcome::Rejected) => "rejected",
            None => "timeout",
        }
    }
}

/// A sent command's summary.
#[derive(Debug, Clone, Serialize)]
pub struct CommandReport {
    /// The signing key.
    pub keyid: String,
    /// The keyset version it belongs to.
    pub keyset_version: u64,
    /// One entry per device, in device order.
    pub devices: Vec<DeviceOutcome>,
}

#[derive(Serialize)]
struct LogRequest<'a> {
    id: &'a str,
    device: &'a DeviceId,
    kind: &'a str,
    command: &'a Command,
    by: &'a str,
    keyid: &'a str,
    keyset: u64,
    iat: i64,
    exp: i64,
}

#[derive(Serialize)]
struct LogResult<'a> {
    id: &'a str,
    device: &'a DeviceId,
    status: &'a str,
    latency_us: Option<u64>,
    result: Option<&'a CommandResult>,
}

/// Waits for acknowledgements until at most `keep` are in flight; a failed one is logged (the
/// command itself was sent).
async fn settle_acks<F>(acks: &mut futures::stream::FuturesUnordered<F>, keep: usize)
where
    F: std::future::Future<
            Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
        >,
{
    while acks.len() > keep {
        if let Some(Err(e)) = acks.next().await {
            tracing::warn!(error = %e, "A command log entry was not stored.");
        }
    }
}

impl Authority {
    /// Signs `req.command` for each target device, sends it, and waits up to `req.timeout` for
    /// the results.
    pub async fn send_command(&self, req: CommandRequest) -> Result<CommandReport, AuthorityError> {
        let problems = req.command.problems();
        if !problems.is_empty() {
            return Err(AuthorityError::Command(format!(
                "bad {} arguments: {}",
                req.command.kind(),
                problems.join("; ")
            )));
        }
        let tenant = self.tenant(&req.tenant).await?;
        let devices: Vec<DeviceRecord> = match &req.target {
            Target::Device(id) => self
                .device_entry(&req.tenant, id)
                .await?
                .map(|(d, _)| d)
                .into_iter()
                .collect(),
            _ => self.devices(&req.tenant).await?,
        };
        let devices: Vec<DeviceRecord> = devices
            .into_iter()
            .filter(|d| d.state == DeviceState::Active && req.target.matches(d))
            .collect();
        if devices.is_empty() {
            return Err(AuthorityError::Command(format!(
                "no active device of tenant {} matches {:?}; `wegweiser device list {}` shows them",
                req.tenant, req.target, req.tenant
            )));
        }
        if devices.len() > MAX_TARGETS {
            return Err(AuthorityError::Command(format!(
                "{} devices match; at most {MAX_TARGETS} per command",
                devices.len()
            )));
        }
        let signer = self.command_signer().await?;
        let client = self.cp_client().clone();
        let js = jetstream::new(client.clone());
        // Listen before sending: results can be faster than the last publish.
        let mut results = client
            .subscribe(format!(
                "wg.{}.up.*.{TELEMETRY_TOKEN}.{}",
                tenant.account,
                Kind::Result.token()
            ))
            .await
            .map_err(|e| AuthorityError::Nats(e.to_string()))?;
        let lifetime = self.config().trust.command_lifetime_secs;
        let kind = req.command.kind();
        let iat = now();
        let mut pending: HashMap<String, usize> = HashMap::with_capacity(devices.len());
        let mut outcomes = Vec::with_capacity(devices.len());
        let mut sent_at = Vec::with_capacity(devices.len());
        let mut acks = futures::stream::FuturesUnordered::new();
        let log_req = format!("{COMMANDS_PREFIX}.{}.req", req.tenant);
        for d in &devices {
            let id = new_id();
            let subject =
                subject::down(&tenant.account, &d.id, &[Token::from_static(COMMAND_TOKEN)]);
            let payload = CommandPayload {
                v: VERSION,
                id: id.clone(),
                iss: ISSUER.to_owned(),
                tenant: req.tenant.clone(),
                device: d.id.clone(),
                subject: subject.clone(),
                iat,
                nbf: iat,
                exp: iat + lifetime,
                keyset: signer.keyset_version,
                command: req.command.clone(),
                by: req.by.clone(),
            };
            let envelope = payload.sign(&signer.key);
            let entry = serde_json::to_vec(&LogRequest {
                id: &id,
                device: &d.id,
                kind,
                command: &req.command,
                by: &req.by,
                keyid: &signer.keyid,
                keyset: signer.keyset_version,
                iat,
                exp: payload.exp,
            })
            .map_err(|e| AuthorityError::Command(e.to_string()))?;
            settle_acks(&mut acks, MAX_LOG_IN_FLIGHT).await;
            let ack = js
                .publish(log_req.clone(), entry.into())
                .await
                .map_err(|e| AuthorityError::Nats(e.to_string()))?;
            acks.push(ack.into_future());
            sent_at.push(Instant::now());
            client
                .publish(subject, envelope.to_vec().into())
                .await
                .map_err(|e| AuthorityError::Nats(e.to_string()))?;
            pending.insert(id.clone(), outcomes.len());
            outcomes.push(DeviceOutcome {
                device: d.id.clone(),
                id,
                result: None,
                latency_us: None,
            });
        }
        client
            .flush()
            .await
            .map_err(|e| AuthorityError::Nats(e.to_string()))?;
        self.metrics()
            .commands_sent
            .fetch_add(devices.len() as u64, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + req.timeout;
        while !pending.is_empty() {
            let msg = match tokio::time::timeout_at(deadline, results.next()).await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            let Some(device) = msg.subject.split('.').nth(3) else {
                continue;
            };
            let Ok(result) = serde_json::from_slice::<CommandResult>(&msg.payload) else {
                continue;
            };
            let Some(&i) = pending.get(&result.id) else {
                continue; // Another sender's command, or a repeat.
            };
            if outcomes[i].device.as_str() != device {
                tracing::warn!(device, command = %result.id, "A device answered another device's command; ignored.");
                continue;
            }
            pending.remove(&result.id);
            outcomes[i].latency_us =
                Some(u64::try_from(sent_at[i].elapsed().as_micros()).unwrap_or(u64::MAX));
            outcomes[i].result = Some(result);
        }
        let _ = results.unsubscribe().await;
        // The request log entries must be stored before the results are.
        settle_acks(&mut acks, 0).await;
        let log_res = format!("{COMMANDS_PREFIX}.{}.res", req.tenant);
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        for o in &outcomes {
            *counts.entry(o.status()).or_default() += 1;
            let entry = serde_json::to_vec(&LogResult {
                id: &o.id,
                device: &o.device,
                status: o.status(),
                latency_us: o.latency_us,
                result: o.result.as_ref(),
            })
            .map_err(|e| AuthorityError::Command(e.to_string()))?;
            settle_acks(&mut acks, MAX_LOG_IN_FLIGHT).await;
            let ack = js
                .publish(log_res.clone(), entry.into())
                .await
                .map_err(|e| AuthorityError::Nats(e.to_string()))?;
            acks.push(ack.into_future());
        }
        settle_acks(&mut acks, 0).await;
        for (status, n) in &counts {
            if let Ok(mut m) = self.metrics().command_results.lock() {
                *m.entry((*status).to_owned()).or_default() += n;
            }
        }
        let mut a = AuditEntry::new("command.send", &req.by, "ok");
        a.tenant = Some(req.tenant.to_string());
        if let Target::Device(d) = &req.target {
            a.device = Some(d.to_string());
        }
        a.detail = serde_json::json!({
            "kind": kind,
            "target": format!("{:?}", req.target),
            "devices": outcomes.len(),
            "keyid": signer.keyid,
            "keyset": signer.keyset_version,
            "results": counts,
        });
        self.audit().record(a).await;
        Ok(CommandReport {
            keyid: signer.keyid.clone(),
            keyset_version: signer.keyset_version,
            devices: outcomes,
        })
    }
}
