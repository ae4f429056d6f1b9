//! Signed command benchmarks; they print their figures (see docs/BENCHMARKS.md).
//!
//! `cargo bench -p wegweiser-tests --bench commands` (add `-- --quick` for a short run)
//!
//! 1. Commands verified per second on one core (the agent's full check: envelope, key lookup,
//!    `verify_strict`, payload and bindings), next to raw `verify_strict`.
//! 2. Signed command round trip over a real nats-server: the control plane signs and
//!    publishes, a simulated device verifies and answers with a result that the telemetry
//!    stream acknowledges, the control plane sees the result (p50/p99), and the whole
//!    `send_command` call (tenant, device and keyset lookups, command log).
//! 3. One command fanned out to many simulated devices (10,000; 1,000 with `--quick`), each
//!    signed for its device, until every result is in. The devices are real enrolled device
//!    records; their side runs on two connections of a bench-only user of the control-plane
//!    account that receives the commands where the control plane publishes them, verifies each
//!    envelope for the device it names and publishes the result where the tenant import would
//!    deliver it (so the tenant account's import mapping is not part of this figure).
#![allow(clippy::unwrap_used)]

use async_nats::HeaderMap;
use futures::StreamExt;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use wegweiser_cp::{
    commands::{CommandRequest, Target},
    enrollment::NewToken,
};
use wegweiser_shared::{
    command::{self, Command, CommandPayload, CommandResult, Expected, Outcome},
    dsse::generate_key,
    ids::DeviceId,
    time::now,
    trust::{
        CommandKeyEntry, KeyStatus, KeysetDoc, PublicKeyEntry, RootDoc, TrustBundle, TrustState,
    },
};
use wegweiser_tests::{Platform, sim::SimDevice};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    verify_per_second(quick);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(over_nats(quick));
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn verify_per_second(quick: bool) {
    let root = generate_key();
    let key = generate_key();
    let t = now();
    let root_doc = RootDoc {
        v: 1,
        version: 1,
        threshold: 1,
        keys: vec![PublicKeyEntry::of(&root.verifying_key())],
        issued_at: t,
    };
    let keyset = KeysetDoc {
        v: 1,
        version: 1,
        root_version: 1,
        issued_at: t,
        expires_at: t + 3600,
        keys: vec![CommandKeyEntry {
            key: PublicKeyEntry::of(&key.verifying_key()),
            status: KeyStatus::Active,
        }],
    };
    let state = TrustState::pin(
        &TrustBundle {
            roots: vec![root_doc.sign(&[&root])],
            keyset: keyset.sign(&[&root]),
        },
        t,
    )
    .unwrap();
    let expect = Expected {
        tenant: "bench".parse().unwrap(),
        device: "dev-1".parse().unwrap(),
        subject: "wg.ABC.down.dev-1.cmd".into(),
    };
    let n = if quick { 5_000 } else { 50_000 };
    let envelopes: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            CommandPayload {
                v: command::VERSION,
                id: command::new_id(),
                iss: "wegweiser".into(),
                tenant: expect.tenant.clone(),
                device: expect.device.clone(),
                subject: expect.subject.clone(),
                iat: t,
                nbf: t,
                exp: t + 300,
                keyset: 1,
                command: Command::Ping {},
                by: "bench".into(),
            }
            .sign(&key)
            .to_vec()
        })
        .collect();
    let start = Instant::now();
    for e in &envelopes {
        command::verify(e, &state, &expect, t).unwrap();
    }
    let took = start.elapsed();
    println!(
        "command_verify: {n} commands in {:.3} s = {:.0}/s on one core (full check; target >= 28000/s), {} bytes each",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        envelopes[0].len()
    );
    // The same signed message (the PAE of a real command) without anything around it.
    let msg = wegweiser_shared::dsse::Envelope::parse(&envelopes[0], usize::MAX)
        .unwrap()
        .decode()
        .unwrap()
        .message;
    let sig = ed25519_dalek::Signer::sign(&key, &msg);
    let vk = key.verifying_key();
    let start = Instant::now();
    for _ in 0..n {
        vk.verify_strict(&msg, &sig).unwrap();
    }
    let raw = start.elapsed();
    println!(
        "raw_verify_strict: {n} in {:.3} s = {:.0}/s on one core (the same {}-byte signed message); the full check adds {:.1} µs per command",
        raw.as_secs_f64(),
        n as f64 / raw.as_secs_f64(),
        msg.len(),
        (took.as_secs_f64() - raw.as_secs_f64()) * 1e6 / n as f64
    );
}

async fn over_nats(quick: bool) {
    let p = Arc::new(Platform::start().await.unwrap());
    let t = p.tenant("bench").await.unwrap();
    let _tasks = p.serve().await.unwrap();

    // 2. Round trip to one simulated device.
    let d = SimDevice::enroll(&p, &t.id, "rt").await.unwrap();
    let _serving = d.spawn_serve(&p).await.unwrap();
    let rounds = if quick { 300 } else { 2_000 };
    let mut rtt = Vec::with_capacity(rounds);
    let mut call = Vec::with_capacity(rounds);
    for i in 0..rounds + 50 {
        let start = Instant::now();
        let r = p
            .auth
            .send_command(CommandRequest {
                tenant: t.id.clone(),
                target: Target::Device(d.id.clone()),
                command: Command::Ping {},
                by: "bench".into(),
                timeout: Duration::from_secs(5),
            })
            .await
            .unwrap();
        let whole = start.elapsed().as_micros() as u64;
        assert_eq!(r.devices[0].status(), "ok");
        if i >= 50 {
            rtt.push(r.devices[0].latency_us.unwrap());
            call.push(whole);
        }
    }
    rtt.sort_unstable();
    call.sort_unstable();
    println!(
        "command_round_trip: {rounds} pings: sign+publish → device verifies → acknowledged result seen: p50 {:.2} ms, p99 {:.2} ms (target p50 <= 0.5, p99 <= 2)",
        percentile(&rtt, 0.5) as f64 / 1000.0,
        percentile(&rtt, 0.99) as f64 / 1000.0
    );
    println!(
        "send_command_call: whole call incl. lookups and command log: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&call, 0.5) as f64 / 1000.0,
        percentile(&call, 0.99) as f64 / 1000.0
    );

    // 3. Fan-out.
    let n = if quick { 1_000 } else { 10_000 };
    let (token, _) = p
        .auth
        .create_token(NewToken {
            tenant: t.id.clone(),
            organization: None,
            group: Some("fleet".into()),
            ttl_secs: None,
            max_uses: Some(n as u32),
            label: "bench".into(),
        })
        .await
        .unwrap();
    let start = Instant::now();
    wegweiser_tests::enroll_many(&p, &[token.expose().to_owned()], n, "fleet-")
        .await
        .unwrap();
    println!(
        "fleet_setup: {n} devices enrolled in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let bundle = p.auth.trust_bundle().await.unwrap();
    let trust = Arc::new(TrustState::pin(&bundle, now()).unwrap());
    let account = t.account.to_string();
    let answered = Arc::new(AtomicU64::new(0));
    let mut fleet = Vec::new();
    for c in 0..2 {
        let conn = p
            .connect_cp_user(
                &format!("fleet{c}"),
                &[format!("wg.{account}.up.*.tel.res")],
                &[
                    format!("wg.{account}.down.*.cmd"),
                    format!("_INBOX.fleet{c}.>"),
                ],
            )
            .await
            .unwrap();
        let mut sub = conn
            .client
            .queue_subscribe(format!("wg.{account}.down.*.cmd"), "fleet".into())
            .await
            .unwrap();
        let (trust, tenant, account, answered) = (
            trust.clone(),
            t.id.clone(),
            account.clone(),
            answered.clone(),
        );
        fleet.push(tokio::spawn(async move {
            let conn = Arc::new(conn);
            while let Some(msg) = sub.next().await {
                let device: DeviceId = msg.subject.split('.').nth(3).unwrap().parse().unwrap();
                let expect = Expected {
                    tenant: tenant.clone(),
                    device: device.clone(),
                    subject: msg.subject.to_string(),
                };
                let v = command::verify(&msg.payload, &trust, &expect, now()).unwrap();
                let result = CommandResult {
                    v: 1,
                    seq: 1,
                    ts: now(),
                    id: v.id().to_owned(),
                    kind: "ping".into(),
                    outcome: Outcome::Ok,
                    output: serde_json::Value::Null,
                    error: None,
                    duration_us: 0,
                };
                let (conn, account, answered) = (conn.clone(), account.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut h = HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("{device}-{}", v.id()).as_str());
                    conn.client
                        .request_with_headers(
                            format!("wg.{account}.up.{device}.tel.res"),
                            h,
                            serde_json::to_vec(&result).unwrap().into(),
                        )
                        .await
                        .unwrap();
                    answered.fetch_add(1, Ordering::Relaxed);
                });
            }
        }));
    }
    let start = Instant::now();
    let r = p
        .auth
        .send_command(CommandRequest {
            tenant: t.id.clone(),
            target: Target::Group("fleet".into()),
            command: Command::Ping {},
            by: "bench".into(),
            timeout: Duration::from_secs(60),
        })
        .await
        .unwrap();
    let took = start.elapsed();
    let ok = r.devices.iter().filter(|d| d.status() == "ok").count();
    let mut lat: Vec<u64> = r.devices.iter().filter_map(|d| d.latency_us).collect();
    lat.sort_unstable();
    println!(
        "command_fanout: 1 command to {n} devices, each signed for its device: {ok} results in {:.2} s (target <= 2 s); last result {:.2} s after its send; acknowledged by the stream: {}",
        took.as_secs_f64(),
        *lat.last().unwrap_or(&0) as f64 / 1e6,
        answered.load(Ordering::Relaxed)
    );
    for f in fleet {
        f.abort();
    }
}
