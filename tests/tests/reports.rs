//! Reports end to end (library level): acknowledged by the history stream, kept as latest,
//! watched through technician credentials in scope only, purged per device.
#![allow(clippy::unwrap_used)]

use async_nats::HeaderMap;
use futures::StreamExt;
use std::{sync::Arc, time::Duration};
use wegweiser_cp::tenant::TechnicianScope;
use wegweiser_shared::{ids::DeviceId, telemetry::Kind};
use wegweiser_tests::{Platform, UserConn, enroll_body};

async fn device(
    p: &Platform,
    tenant: &wegweiser_shared::ids::TenantId,
    machine: &str,
) -> (DeviceId, UserConn) {
    let tok = p.token(tenant, 1).await.unwrap();
    let kp = Arc::new(nkeys::KeyPair::new_user());
    let facts = wegweiser_tests::facts(machine);
    let (s, v) = p
        .post_enroll(enroll_body(tok.expose(), &kp, &facts, None))
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let id: DeviceId = v["device_id"].as_str().unwrap().parse().unwrap();
    let conn = p
        .connect_user(v["jwt"].as_str().unwrap().into(), kp, id.as_str())
        .await
        .unwrap();
    (id, conn)
}

/// Sends a report as the agent does: a request with a message id, answered by the stream.
async fn report(
    c: &UserConn,
    account: &str,
    dev: &DeviceId,
    kind: Kind,
    seq: u64,
) -> serde_json::Value {
    let mut h = HeaderMap::new();
    h.insert(
        "Nats-Msg-Id",
        wegweiser_shared::telemetry::message_id(dev, seq).as_str(),
    );
    let body =
        serde_json::json!({"v": 1, "seq": seq, "ts": 1, "agent_version": "t", "jwt_expires_at": 0});
    let r = c
        .client
        .request_with_headers(
            format!("wg.{account}.up.{dev}.tel.{}", kind.token()),
            h,
            body.to_string().into(),
        )
        .await
        .unwrap();
    serde_json::from_slice(&r.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_acknowledged_watched_in_scope_and_purged_per_device() {
    let p = Platform::start().await.unwrap();
    let t = p.tenant("acme").await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let (d1, c1) = device(&p, &t.id, "m1").await;
    let (d2, c2) = device(&p, &t.id, "m2").await;
    let account = t.account.to_string();

    let all = p
        .auth
        .technician_client(
            &t.id,
            &"alice".parse().unwrap(),
            &TechnicianScope::AllDevices,
        )
        .await
        .unwrap();
    let only1 = p
        .auth
        .technician_client(
            &t.id,
            &"bob".parse().unwrap(),
            &TechnicianScope::Devices(vec![d1.clone()]),
        )
        .await
        .unwrap();
    let mut sub_all = all
        .subscribe(format!("wg.{account}.up.*.tel.>"))
        .await
        .unwrap();
    let mut sub_one = only1
        .subscribe(format!("wg.{account}.up.{d1}.tel.>"))
        .await
        .unwrap();
    // Bob asking for every device is refused by the server (his template names d1 only).
    let mut sub_bob_all = only1
        .subscribe(format!("wg.{account}.up.*.tel.>"))
        .await
        .unwrap();
    all.flush().await.unwrap();
    only1.flush().await.unwrap();
    // Bob's refused subscription never registers; the two allowed ones must have.
    p.wait_subscribed(
        &t.account,
        &[
            format!("wg.{account}.up.*.tel.>"),
            format!("wg.{account}.up.{d1}.tel.>"),
        ],
    )
    .await
    .unwrap();

    // Acknowledged by the history stream; a replay with the same id is a duplicate.
    let ack = report(&c1, &account, &d1, Kind::Heartbeat, 1).await;
    assert_eq!(
        ack["stream"],
        wegweiser_cp::ingest::TELEMETRY_STREAM,
        "{ack}"
    );
    let again = report(&c1, &account, &d1, Kind::Heartbeat, 1).await;
    assert_eq!(again["duplicate"], true, "{again}");
    report(&c1, &account, &d1, Kind::Metrics, 2).await;
    report(&c2, &account, &d2, Kind::Heartbeat, 1).await;

    let mut seen_all = Vec::new();
    while seen_all.len() < 4 {
        let m = tokio::time::timeout(Duration::from_secs(5), sub_all.next())
            .await
            .unwrap()
            .unwrap();
        seen_all.push(m.subject.to_string());
    }
    assert!(seen_all.iter().any(|s| s.contains(d2.as_str())));
    let m = tokio::time::timeout(Duration::from_secs(5), sub_one.next())
        .await
        .unwrap()
        .unwrap();
    assert!(m.subject.contains(d1.as_str()));
    // Bob sees nothing of d2, through any subscription.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), sub_one.next()).await {
        assert!(m.subject.contains(d1.as_str()), "{}", m.subject);
    }
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub_bob_all.next()).await
    {
        panic!("a wildcard beyond bob's scope delivered {}", m.subject);
    }

    // Latest reports are kept per device.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p
        .auth
        .latest(&t.id, &d1, Kind::Metrics)
        .await
        .unwrap()
        .is_none()
        || p.auth
            .latest(&t.id, &d2, Kind::Heartbeat)
            .await
            .unwrap()
            .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "latest reports missing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Purge d1: its history and latest go, d2 keeps its own; the purge is audited.
    let purged = p
        .auth
        .purge_reports(&t.id, Some(&d1), "test")
        .await
        .unwrap();
    assert_eq!(purged.reports, 2, "{purged:?}");
    assert_eq!(purged.latest, 2, "{purged:?}");
    assert!(
        p.auth
            .latest(&t.id, &d1, Kind::Heartbeat)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        p.auth
            .latest(&t.id, &d2, Kind::Heartbeat)
            .await
            .unwrap()
            .is_some()
    );
    let js = async_nats::jetstream::new(p.auth.cp_client().clone());
    let mut audit = js
        .get_stream(wegweiser_cp::audit::AUDIT_STREAM)
        .await
        .unwrap();
    let last = audit.info().await.unwrap().state.last_sequence;
    let entry = audit.get_raw_message(last).await.unwrap();
    assert_eq!(
        entry.subject.as_str(),
        format!("wgcp.audit.{}.reports_purge", t.id)
    );
    // The audit stream refuses to be purged.
    assert!(audit.purge().await.is_err());
}
