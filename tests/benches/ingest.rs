//! Telemetry ingest benchmarks; they print their figures (see docs/BENCHMARKS.md).
//!
//! `cargo bench -p wegweiser-tests --bench ingest` (add `-- --quick` for a short run)
//!
//! 1. Reports stored and acknowledged per second by the control plane: many devices, each on
//!    its own TLS connection with real device credentials, send metrics reports as requests
//!    with `Nats-Msg-Id` through their tenant's import into `WG_TELEMETRY`, and wait for every
//!    PubAck; the service (ingest consumer included) runs. Also how long the ingest consumer
//!    takes to have indexed all of them in `wg_latest`.
//! 2. Agent spool replay: reports per second from a filled on-disk spool to acknowledged
//!    storage, through the agent's own `Reporter::deliver`, once the device connects.
#![allow(clippy::unwrap_used)]

use async_nats::{HeaderMap, jetstream};
use futures::StreamExt;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use wegweiser_agent::{
    report::{Reporter, report_subject},
    spool::{DEFAULT_MAX_BYTES, Spool},
    status::StatusFile,
};
use wegweiser_cp::ingest::{INGEST_CONSUMER, TELEMETRY_STREAM};
use wegweiser_shared::{
    ids::{AccountKey, DeviceId},
    telemetry::{self, Kind},
};
use wegweiser_tests::{Platform, UserConn};

/// Devices publishing at once in the ingest benchmark.
const DEVICES: usize = 64;
/// Reports each device keeps in flight (sent, not yet acknowledged).
const IN_FLIGHT: usize = 32;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(quick));
}

/// A metrics report as the agent makes it (about 700 bytes of JSON).
fn metrics(seq: u64) -> Vec<u8> {
    let proc = |pid: u32, name: &str| serde_json::json!({"pid": pid, "name": name, "cpu": 7.5, "memory": 104_857_600});
    serde_json::to_vec(&serde_json::json!({
        "v": 1, "seq": seq, "ts": wegweiser_shared::time::now(),
        "cpu": 12.5, "cpu_per_core": [10.0, 15.0], "load": [0.42, 0.35, 0.30],
        "memory_used": 1_610_612_736u64, "memory_available": 23_664_685_056u64, "swap_used": 0,
        "disks": [{"mount": "/", "used": 184_683_593_728u64, "free": 85_899_345_920u64}],
        "network": [{"name": "eth0", "rx_bps": 5120, "tx_bps": 2048}],
        "process_count": 143,
        "top_cpu": [proc(812, "postgres"), proc(1, "systemd"), proc(977, "nginx"), proc(1201, "sshd"), proc(64, "journald")],
        "top_memory": [proc(812, "postgres"), proc(977, "nginx"), proc(1, "systemd"), proc(64, "journald"), proc(1201, "sshd")],
        "uptime": 118_760
    }))
    .unwrap()
}

async fn device(p: &Platform, tenant: &wegweiser_shared::ids::TenantId) -> (DeviceId, UserConn) {
    let kp = Arc::new(nkeys::KeyPair::new_user());
    let id = DeviceId::generate();
    let jwt = p
        .auth
        .issue_device_jwt(tenant, &id, &kp.public_key().parse().unwrap(), None)
        .await
        .unwrap();
    let conn = p.connect_user(jwt.jwt, kp, id.as_str()).await.unwrap();
    (id, conn)
}

async fn stored(js: &jetstream::Context) -> u64 {
    let mut s = js.get_stream(TELEMETRY_STREAM).await.unwrap();
    s.info().await.unwrap().state.messages
}

async fn run(quick: bool) {
    let p = Arc::new(Platform::start().await.unwrap());
    let t = p.tenant("bench").await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let js = jetstream::new(p.auth.cp_client().clone());
    let account: AccountKey = t.account.clone();

    // 1. Many publishers, PubAck for every report.
    let per_device = if quick { 300 } else { 3000 };
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(device(&p, &t.id).await);
    }
    let before = stored(&js).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (id, conn) in devices {
        let account = account.clone();
        tasks.push(tokio::spawn(async move {
            let subject = report_subject(&account, &id, Kind::Metrics);
            let acked = futures::stream::iter(1..=per_device as u64)
                .map(|seq| {
                    let mut h = HeaderMap::new();
                    h.insert("Nats-Msg-Id", telemetry::message_id(&id, seq).as_str());
                    conn.client
                        .request_with_headers(subject.clone(), h, metrics(seq).into())
                })
                .buffer_unordered(IN_FLIGHT)
                .map(|r| {
                    let ack = wegweiser_agent::report::parse_pub_ack(&r.unwrap().payload).unwrap();
                    assert!(!ack.duplicate);
                })
                .count()
                .await;
            assert_eq!(acked, per_device);
            conn
        }));
    }
    let mut conns = Vec::new();
    for task in tasks {
        conns.push(task.await.unwrap());
    }
    let took = start.elapsed();
    let total = (per_device * DEVICES) as u64;
    assert_eq!(stored(&js).await - before, total);
    println!(
        "ingest_puback: {total} reports stored and acknowledged in {:.2} s = {:.0}/s ({DEVICES} devices, {IN_FLIGHT} in flight each, {} bytes each; target >= 20000/s)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        metrics(1).len(),
    );
    // The ingest consumer (running all along) finishes indexing.
    let stream = js.get_stream(TELEMETRY_STREAM).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(INGEST_CONSUMER).await.unwrap();
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let indexed = start.elapsed();
    println!(
        "ingest_latest: the ingest consumer indexed all {total} in {:.2} s = {:.0}/s (from the first report sent)",
        indexed.as_secs_f64(),
        total as f64 / indexed.as_secs_f64()
    );
    for c in conns {
        let _ = c.client.drain().await;
    }

    // 2. Spool replay: fill a spool offline, then connect and let the agent deliver it.
    let n: u64 = if quick { 10_000 } else { 60_000 };
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let (id, conn) = device(&p, &t.id).await;
    {
        let (mut spool, _) = Spool::open(&spool_dir, DEFAULT_MAX_BYTES).unwrap();
        spool.set_sync_every(usize::MAX);
        let subject = report_subject(&account, &id, Kind::Metrics);
        for _ in 0..n {
            let seq = spool.next_seq();
            spool
                .push(&subject, &telemetry::message_id(&id, seq), &metrics(seq))
                .unwrap();
        }
        spool.sync().unwrap();
    }
    let status = StatusFile::start(dir.path().join("status.json"), id.as_str(), None);
    let reporter = Reporter::open(&spool_dir, account.clone(), id.clone(), status)
        .await
        .unwrap();
    assert_eq!(reporter.depth(), n);
    let before = stored(&js).await;
    let start = Instant::now();
    let delivery = tokio::spawn({
        let (reporter, client) = (reporter.clone(), conn.client.clone());
        async move { reporter.deliver(client).await }
    });
    while reporter.depth() > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    delivery.abort();
    let _ = delivery.await;
    drop(reporter);
    assert_eq!(stored(&js).await - before, n);
    println!(
        "spool_replay: {n} reports replayed from the on-disk spool to acknowledged storage in {:.2} s = {:.0}/s (one device; target >= 10000/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}
