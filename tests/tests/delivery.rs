//! The agent's pipelined delivery against a real nats-server: a spool of many reports (more
//! than one window and one round) is stored once each, in order; nothing leaves the spool that
//! the stream did not store.
#![allow(clippy::unwrap_used)]

use async_nats::jetstream;
use std::{sync::Arc, time::Duration};
use wegweiser_agent::{
    report::{MAX_IN_FLIGHT, PEEK_BATCH, Reporter, report_subject},
    spool::{DEFAULT_MAX_BYTES, Spool},
    status::StatusFile,
};
use wegweiser_cp::{
    ingest::{self, TELEMETRY_STREAM},
    retention::tenant_filter,
};
use wegweiser_shared::{
    ids::DeviceId,
    telemetry::{self, Kind},
};
use wegweiser_tests::Platform;

/// The report `seq` of every stored report of the tenant, in stream order.
async fn stored_seqs(js: &jetstream::Context, filter: &str) -> Vec<u64> {
    let stream = js.get_stream(TELEMETRY_STREAM).await.unwrap();
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        match stream.get_first_raw_message_by_subject(filter, from).await {
            Ok(m) => {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                out.push(v["seq"].as_u64().unwrap());
                from = m.sequence + 1;
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return out;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_is_delivered_once_in_order_and_kept_while_nothing_stores_it() {
    let p = Platform::start().await.unwrap();
    let t = p.tenant("acme").await.unwrap();
    let js = jetstream::new(p.auth.cp_client().clone());
    let filter = tenant_filter(&t.account);

    let kp = Arc::new(nkeys::KeyPair::new_user());
    let id = DeviceId::generate();
    let jwt = p
        .auth
        .issue_device_jwt(&t.id, &id, &kp.public_key().parse().unwrap(), None)
        .await
        .unwrap();
    let conn = p.connect_user(jwt.jwt, kp, id.as_str()).await.unwrap();

    // Filled while offline: more reports than one round and many windows.
    let n = (PEEK_BATCH + 3 * MAX_IN_FLIGHT + 7) as u64;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    {
        let (mut spool, _) = Spool::open(&spool_dir, DEFAULT_MAX_BYTES).unwrap();
        spool.set_sync_every(usize::MAX);
        let subject = report_subject(&t.account, &id, Kind::Heartbeat);
        for _ in 0..n {
            let seq = spool.next_seq();
            let body = serde_json::json!({"v": 1, "seq": seq, "ts": 1, "agent_version": "t", "jwt_expires_at": 0});
            spool
                .push(
                    &subject,
                    &telemetry::message_id(&id, seq),
                    body.to_string().as_bytes(),
                )
                .unwrap();
        }
        spool.sync().unwrap();
    }
    let status = StatusFile::start(dir.path().join("status.json"), id.as_str(), None);
    let reporter = Reporter::open(&spool_dir, t.account.clone(), id.clone(), status)
        .await
        .unwrap();
    assert_eq!(reporter.depth(), n);

    // No stream stores reports yet: nothing may leave the spool.
    let delivery = tokio::spawn({
        let (reporter, client) = (reporter.clone(), conn.client.clone());
        async move { reporter.deliver(client).await }
    });
    // Delivery has tried (no responders) once the connection saw the stream missing; give it
    // a few rounds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reporter.depth(), n);

    // The stream appears: everything is delivered, each report stored once, in order.
    ingest::open(&js, 30, 1).await.unwrap();
    reporter.waker().notify_one();
    assert!(
        reporter.wait_empty(Duration::from_secs(60)).await,
        "spool not emptied: {} left",
        reporter.depth()
    );
    delivery.abort();
    let _ = delivery.await;
    assert_eq!(stored_seqs(&js, &filter).await, (1..=n).collect::<Vec<_>>());
}
