//! A simulated device: enrolled over HTTPS like the agent, connected with its own credentials,
//! verifying commands with the shared verifier and answering them with acknowledged results.
//! For control-plane tests and benchmarks that need many devices or exact control; the real
//! agent binary is tested in `agent_process.rs` and `commands_agent.rs`.

use crate::{Platform, UserConn, enroll_body};
use async_nats::HeaderMap;
use futures::StreamExt;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use wegweiser_shared::{
    command::{self, COMMAND_TOKEN, CommandResult, Expected, Outcome, Reject},
    enroll::EnrollResponse,
    ids::{AccountKey, DeviceId, TenantId},
    subject::{self, Token},
    telemetry::{Kind, TELEMETRY_TOKEN, message_id},
    time::now,
    trust::{TRUST_TOKEN, TrustBundle, TrustState},
};

/// What a simulated device saw.
#[derive(Debug, Default, Clone)]
pub struct SimLog {
    /// Ids of commands executed.
    pub executed: Vec<String>,
    /// Rejection reasons, in order.
    pub rejected: Vec<Reject>,
    /// Trust fetches made.
    pub fetches: u32,
}

/// A simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// Its id.
    pub id: DeviceId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its tenant's account.
    pub account: AccountKey,
    /// Its connection.
    pub conn: Arc<UserConn>,
    /// What it trusts.
    pub trust: Arc<Mutex<TrustState>>,
    /// What it saw.
    pub log: Arc<Mutex<SimLog>>,
    /// Whether it ignores trust pushes (as a device that missed them would).
    pub ignore_pushes: bool,
}

impl SimDevice {
    /// Enrolls a device with a fresh one-time token of `tenant` and connects it. It pins the
    /// trust bundle of the enrollment answer.
    pub async fn enroll(p: &Platform, tenant: &TenantId, machine: &str) -> anyhow::Result<Self> {
        let tok = p.token(tenant, 1).await?;
        Self::enroll_with(p, tok.expose(), machine).await
    }

    /// Enrolls a device with the enrollment token `token` and connects it.
    /// Enrolls into `org`/`group` of `tenant` (creating them when missing) with a single-use
    /// token.
    pub async fn enroll_in(
        p: &Platform,
        tenant: &TenantId,
        org: &str,
        group: &str,
        machine: &str,
    ) -> anyhow::Result<Self> {
        p.place(tenant, org, Some(group)).await?;
        let (tok, _) = p
            .auth
            .create_token(wegweiser_cp::enrollment::NewToken {
                tenant: tenant.clone(),
                organization: Some(org.into()),
                group: Some(group.into()),
                ttl_secs: None,
                max_uses: Some(1),
                label: "test".into(),
            })
            .await?;
        Self::enroll_with(p, tok.expose(), machine).await
    }

    pub async fn enroll_with(p: &Platform, token: &str, machine: &str) -> anyhow::Result<Self> {
        let tok = wegweiser_shared::secret::SecretString::new(token.to_owned());
        let kp = Arc::new(nkeys::KeyPair::new_user());
        let facts = crate::facts(machine);
        let (status, v) = p
            .post_enroll(enroll_body(tok.expose(), &kp, &facts, None))
            .await?;
        anyhow::ensure!(status == 200, "enrollment failed: {v}");
        let r: EnrollResponse = serde_json::from_value(v)?;
        let bundle = r
            .trust
            .ok_or_else(|| anyhow::anyhow!("the enrollment answer carries no trust bundle"))?;
        let trust = TrustState::pin(&bundle, now())?;
        let conn = p.connect_user(r.jwt, kp, r.device_id.as_str()).await?;
        Ok(Self {
            id: r.device_id,
            tenant: r.tenant,
            account: r.account,
            conn: Arc::new(conn),
            trust: Arc::new(Mutex::new(trust)),
            log: Arc::new(Mutex::new(SimLog::default())),
            ignore_pushes: false,
        })
    }

    /// The subject commands reach it on.
    pub fn command_subject(&self) -> String {
        subject::down(
            &self.account,
            &self.id,
            &[Token::from_static(COMMAND_TOKEN)],
        )
    }

    /// Asks the control plane for the trust bundle and applies it.
    pub async fn fetch_trust(&self) -> anyhow::Result<bool> {
        let subject = subject::up(&self.account, &self.id, &[Token::from_static(TRUST_TOKEN)]);
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.conn.client.request(subject, "".into()),
        )
        .await??;
        let bundle = TrustBundle::parse(&reply.payload)?;
        self.log
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .fetches += 1;
        let changed = self
            .trust
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .update(&bundle, now())?
            .changed();
        Ok(changed)
    }

    fn verify(&self, bytes: &[u8]) -> Result<command::VerifiedCommand, command::Rejection> {
        let expect = Expected {
            tenant: self.tenant.clone(),
            device: self.id.clone(),
            subject: self.command_subject(),
        };
        let trust = self.trust.lock().unwrap_or_else(|e| e.into_inner());
        command::verify(bytes, &trust, &expect, now())
    }

    /// Runs [`SimDevice::serve`] in a task and returns once nats-server has registered its
    /// subscriptions, so a command sent right after reaches it.
    pub async fn spawn_serve(
        &self,
        p: &crate::Platform,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let task = tokio::spawn(self.clone().serve());
        let trust = subject::down(&self.account, &self.id, &[Token::from_static(TRUST_TOKEN)]);
        p.wait_subscribed(&self.account, &[self.command_subject(), trust])
            .await?;
        Ok(task)
    }

    /// Serves commands until the task is aborted: verifies each (fetching trust once when the
    /// key is unknown), answers verified ones with an `ok` result, and keeps every trust push.
    pub async fn serve(self) -> anyhow::Result<()> {
        let mut cmds = self.conn.client.subscribe(self.command_subject()).await?;
        let mut pushes = self
            .conn
            .client
            .subscribe(subject::down(
                &self.account,
                &self.id,
                &[Token::from_static(TRUST_TOKEN)],
            ))
            .await?;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                Some(push) = pushes.next() => {
                    if !self.ignore_pushes
                        && let Ok(b) = TrustBundle::parse(&push.payload)
                        && let Ok(mut t) = self.trust.lock()
                    {
                        let _ = t.update(&b, now());
                    }
                }
                Some(msg) = cmds.next() => {
                    let mut verdict = self.verify(&msg.payload);
                    if matches!(&verdict, Err(r) if r.reason == Reject::UnknownKey)
                        && self.fetch_trust().await.unwrap_or(false)
                    {
                        verdict = self.verify(&msg.payload);
                    }
                    match verdict {
                        Ok(v) => {
                            seq += 1;
                            let result = CommandResult {
                                v: 1,
                                seq,
                                ts: now(),
                                id: v.id().to_owned(),
                                kind: v.command().kind().to_owned(),
                                outcome: Outcome::Ok,
                                output: serde_json::json!({"sim": true}),
                                error: None,
                                duration_us: 1,
                            };
                            // Logged before the result leaves: whoever sees the result may
                            // look at the log at once.
                            if let Ok(mut l) = self.log.lock() {
                                l.executed.push(v.id().to_owned());
                            }
                            self.send_result(&result).await?;
                        }
                        Err(r) => {
                            if let Ok(mut l) = self.log.lock() {
                                l.rejected.push(r.reason);
                            }
                        }
                    }
                }
                else => return Ok(()),
            }
        }
    }

    /// Sends a result as the agent does: a request with a message id, acknowledged by the
    /// telemetry stream.
    pub async fn send_result(&self, result: &CommandResult) -> anyhow::Result<()> {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", message_id(&self.id, result.seq).as_str());
        let subject = subject::up(
            &self.account,
            &self.id,
            &[
                Token::from_static(TELEMETRY_TOKEN),
                Token::from_static(Kind::Result.token()),
            ],
        );
        let ack = self
            .conn
            .client
            .request_with_headers(subject, h, serde_json::to_vec(result)?.into())
            .await?;
        anyhow::ensure!(
            !ack.payload.windows(7).any(|w| w == b"\"error\""),
            "result not acknowledged: {}",
            String::from_utf8_lossy(&ack.payload)
        );
        Ok(())
    }

    /// Sends a heartbeat reporting the keyset version it trusts.
    pub async fn heartbeat(&self, seq: u64) -> anyhow::Result<()> {
        let keyset = self
            .trust
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .keyset_version();
        let hb = wegweiser_shared::telemetry::Heartbeat {
            v: 1,
            seq,
            ts: now(),
            agent_version: "sim".into(),
            jwt_expires_at: 0,
            spool_depth: 0,
            keyset_version: Some(keyset),
            commands_rejected: 0,
        };
        let mut h = HeaderMap::new();
        // Apart from the results' sequence numbers, so no heartbeat is taken for a duplicate.
        h.insert(
            "Nats-Msg-Id",
            message_id(&self.id, 1_000_000_000 + seq).as_str(),
        );
        let subject = subject::up(
            &self.account,
            &self.id,
            &[
                Token::from_static(TELEMETRY_TOKEN),
                Token::from_static(Kind::Heartbeat.token()),
            ],
        );
        self.conn
            .client
            .request_with_headers(subject, h, serde_json::to_vec(&hb)?.into())
            .await?;
        Ok(())
    }

    /// A snapshot of what it saw.
    pub fn seen(&self) -> SimLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
