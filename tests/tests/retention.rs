//! Per-tenant retention against a real nats-server: a sweep removes a tenant's reports older
//! than its retention and leaves everything else (its newer reports, other tenants' reports).
//! The sweep takes "now" as a parameter, so no test waits days.
#![allow(clippy::unwrap_used)]

use async_nats::{HeaderMap, jetstream};
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};
use wegweiser_cp::{
    authority::NewTenant,
    ingest::TELEMETRY_STREAM,
    retention::{RetentionDays, tenant_filter},
    tenant::TenantRecord,
};
use wegweiser_shared::{ids::DeviceId, telemetry};
use wegweiser_tests::{Platform, UserConn};

const DAY: Duration = Duration::from_secs(86_400);

struct Device {
    id: DeviceId,
    conn: UserConn,
    account: String,
    next: u64,
}

async fn device(p: &Platform, t: &TenantRecord) -> Device {
    let kp = Arc::new(nkeys::KeyPair::new_user());
    let id = DeviceId::generate();
    let jwt = p
        .auth
        .issue_device_jwt(&t.id, &id, &kp.public_key().parse().unwrap(), None)
        .await
        .unwrap();
    let conn = p.connect_user(jwt.jwt, kp, id.as_str()).await.unwrap();
    Device {
        id,
        conn,
        account: t.account.to_string(),
        next: 1,
    }
}

/// Sends `n` reports as the agent does and returns the stream sequence of each.
async fn send(d: &mut Device, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for _ in 0..n {
        let seq = d.next;
        d.next += 1;
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", telemetry::message_id(&d.id, seq).as_str());
        let body = serde_json::json!({"v": 1, "seq": seq, "ts": 1, "agent_version": "t", "jwt_expires_at": 0});
        let r = d
            .conn
            .client
            .request_with_headers(
                format!("wg.{}.up.{}.tel.hb", d.account, d.id),
                h,
                body.to_string().into(),
            )
            .await
            .unwrap();
        let ack: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(ack["stream"], TELEMETRY_STREAM, "{ack}");
        seqs.push(ack["seq"].as_u64().unwrap());
    }
    seqs
}

/// The stream sequences of every stored report of a tenant.
async fn stored(js: &jetstream::Context, t: &TenantRecord) -> Vec<u64> {
    let stream = js.get_stream(TELEMETRY_STREAM).await.unwrap();
    let filter = tenant_filter(&t.account);
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        match stream
            .get_first_raw_message_by_subject(filter.as_str(), from)
            .await
        {
            Ok(m) => {
                out.push(m.sequence);
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
async fn a_sweep_removes_only_reports_older_than_each_tenants_retention() {
    let p = Platform::start().await.unwrap();
    let short = p
        .auth
        .create_tenant(NewTenant {
            id: "short".parse().unwrap(),
            name: None,
            limits: None,
            retention_days: Some(RetentionDays::try_from(1).unwrap()),
        })
        .await
        .unwrap();
    let default = p.tenant("default").await.unwrap();
    let long = p.tenant("long").await.unwrap();
    let (long, purged) = p
        .auth
        .set_retention(&long.id, RetentionDays::try_from(90).unwrap(), "test")
        .await
        .unwrap();
    assert_eq!(purged, 0);
    assert_eq!(p.auth.retention_of(&short), 1);
    assert_eq!(p.auth.retention_of(&default), 30);
    assert_eq!(p.auth.retention_of(&long), 90);

    // The history keeps reports as long as the longest retention.
    let js = jetstream::new(p.auth.cp_client().clone());
    let mut stream = js.get_stream(TELEMETRY_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_age, 90 * DAY);
    // The change is audited.
    let mut audit = js
        .get_stream(wegweiser_cp::audit::AUDIT_STREAM)
        .await
        .unwrap();
    let last = audit.info().await.unwrap().state.last_sequence;
    let entry = audit.get_raw_message(last).await.unwrap();
    assert_eq!(entry.subject.as_str(), "wgcp.audit.long.tenant_retention");
    let entry: serde_json::Value = serde_json::from_slice(&entry.payload).unwrap();
    assert_eq!(
        (entry["tenant"].as_str(), &entry["detail"]["retention_days"]),
        (Some("long"), &serde_json::json!(90))
    );

    let mut devices = Vec::new();
    for t in [&short, &default, &long] {
        devices.push(device(&p, t).await);
    }
    let mut old = Vec::new();
    for d in devices.iter_mut() {
        old.push(send(d, 3).await);
    }
    let mut new = Vec::new();
    for d in devices.iter_mut() {
        new.push(send(d, 2).await);
    }
    // The boundary: when the first of the newer reports was stored.
    let boundary = stream.get_raw_message(new[0][0]).await.unwrap().time;
    let last_old = stream.get_raw_message(old[2][2]).await.unwrap().time;
    assert!(last_old < boundary, "{last_old} !< {boundary}");
    let boundary = SystemTime::from(boundary);
    let all = |i: usize| [old[i].clone(), new[i].clone()].concat();

    // A day later: "short" loses exactly its older reports; the others keep everything.
    let swept = p.auth.sweep_retention(boundary + DAY).await.unwrap();
    let purged: Vec<_> = swept
        .iter()
        .map(|s| (s.tenant.as_str(), s.purged))
        .collect();
    assert_eq!(purged, [("default", 0), ("short", 3)], "{swept:?}");
    assert_eq!(stored(&js, &short).await, new[0]);
    assert_eq!(stored(&js, &default).await, all(1));
    assert_eq!(stored(&js, &long).await, all(2));

    // Thirty days later: "default" loses its older reports, "short" everything, "long" nothing.
    let swept = p.auth.sweep_retention(boundary + 30 * DAY).await.unwrap();
    let purged: Vec<_> = swept
        .iter()
        .map(|s| (s.tenant.as_str(), s.purged))
        .collect();
    assert_eq!(purged, [("default", 3), ("short", 2)], "{swept:?}");
    assert_eq!(stored(&js, &short).await, Vec::<u64>::new());
    assert_eq!(stored(&js, &default).await, new[1]);
    assert_eq!(stored(&js, &long).await, all(2));

    // Reports newer than the cutoff are kept; a repeated sweep removes nothing more.
    let after = send(&mut devices[0], 1).await;
    let swept = p.auth.sweep_retention(boundary + DAY).await.unwrap();
    assert!(swept.iter().all(|s| s.purged == 0), "{swept:?}");
    assert_eq!(stored(&js, &short).await, after);
    assert_eq!(stored(&js, &long).await, all(2));

    // Shortening a retention applies at once (as of now: nothing here is a day old yet).
    let (_, purged) = p
        .auth
        .set_retention(&long.id, RetentionDays::try_from(1).unwrap(), "test")
        .await
        .unwrap();
    assert_eq!(purged, 0);
    assert_eq!(stored(&js, &long).await, all(2));
    let swept = p.auth.sweep_retention(boundary + DAY).await.unwrap();
    assert!(
        swept
            .iter()
            .any(|s| s.tenant.as_str() == "long" && s.purged == 3),
        "{swept:?}"
    );
    assert_eq!(stored(&js, &long).await, new[2]);
}
